"""ONNX export of nnU-Net models and the ONNX backend (metcli.segmentation.export_onnx,
metcli.segmentation.onnx).

Quick tests check the numerical building blocks (against nnunetv2's own functions
where it is installed) and the backend's contract on a tiny hand-made ONNX network.
Slow tests build a tiny REAL nnU-Net v2 model once per session (nnU-Net's planning,
preprocessing and 3 training iterations on the CPU, in a subprocess; cached under
pytest's temporary root) and check the export and the agreement with nnU-Net's own
predictor. Run this file as a script (``python tests/test_onnx_segment.py build DIR``)
to build the tiny model by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import invoke, make_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "weights" / "demo" / "metcli-demo-nnunet"
TINY_DATASET = "Dataset901_TinyBlobs"
TINY_MODEL = f"results/{TINY_DATASET}/nnUNetTrainer__nnUNetPlans__3d_fullres"
#: Agreement of softmax probabilities with nnU-Net's: both sum the tiles and resample the
#: logits in float16, so a logit may differ by one float16 step (2^-7 near 8) where
#: ONNX Runtime's and torch's float32 outputs round differently. At the image's faces,
#: nnU-Net's float16 tile weights are subnormal (a few 1e-8) and such a step is a few
#: percent of a logit: there a handful of voxels differ more. Hence a quantile and a
#: fraction rather than the maximum (which is reported). One float16 step of a logit
#: (2^-7 near 8) moves a softmax probability by at most 2^-7 / 4 (the largest slope of
#: the logistic), about 2e-3: the quantile tolerance allows that step.
PROB_QUANTILE, PROB_QUANTILE_TOLERANCE = 0.9999, 2.5e-3
PROB_OUTLIER, PROB_OUTLIER_FRACTION = 1e-2, 1e-4


# ============================================================================ helpers
def tiny_conv_onnx(path: Path, *, heads: int = 3, patch=(8, 8, 8), seed: int = 0) -> str:
    """A one-layer 3D convolution as an ONNX file (input 'input', output 'logits')."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.4, (heads, 1, 3, 3, 3)).astype(np.float32)
    bias = np.linspace(0.5, -0.5, heads).astype(np.float32)
    node = helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 6)
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, *patch])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", heads, *patch])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_spec(
    sha: str,
    *,
    patch=(8, 8, 8),
    orientation="LPS",
    mirror_axes=(0, 1, 2),
    transpose=(0, 1, 2),
    spacing=(1.0, 1.0, 1.0),
    scheme="CTNormalization",
) -> dict:
    backward = [int(i) for i in np.argsort(transpose)]
    return {
        "format": "metcli-onnx-segmentation",
        "format_version": 1,
        "metcli_version": "test",
        "onnx": {
            "file": "model.onnx",
            "sha256": sha,
            "opset": 17,
            "input_name": "input",
            "output_name": "logits",
            "input_shape": ["batch", 1, *patch],
            "output_shape": ["batch", 3, *patch],
        },
        "source": {
            "kind": "nnunetv2",
            "configuration": "3d_fullres",
            "fold": 0,
            "trainer": "nnUNetTrainer",
            "files": {"dataset.json": sha, "plans.json": sha, "fold_0/checkpoint_final.pth": sha},
        },
        "labels": {"background": 0, "liver": 1, "lesion": 2},
        "axes": {
            "array_order": "zyx",
            "transpose_forward": list(transpose),
            "transpose_backward": backward,
            "orientation": orientation,
        },
        "target_spacing": list(spacing),
        "patch_size": list(patch),
        "crop_to_nonzero": True,
        "normalization": {
            "scheme": scheme,
            "use_mask_for_norm": False,
            "clip_lower": -200.0,
            "clip_upper": 300.0,
            "mean": 50.0,
            "std": 80.0,
        },
        "resampling": {
            "data": {
                "function": "resample_data_or_seg_to_shape",
                "order": 3,
                "order_z": 0,
                "force_separate_z": None,
            },
            "segmentation": {
                "function": "resample_data_or_seg_to_shape",
                "order": 1,
                "order_z": 0,
                "force_separate_z": None,
            },
            "probabilities": {
                "function": "resample_data_or_seg_to_shape",
                "order": 1,
                "order_z": 0,
                "force_separate_z": None,
            },
            "anisotropy_threshold": 3.0,
        },
        "inference": {
            "mirror_axes": list(mirror_axes) if mirror_axes is not None else None,
            "gaussian_sigma_scale": 0.125,
            "default_step_size": 0.5,
            "nonlinearity": "softmax",
        },
        "verification": {
            "passed": True,
            "max_abs_logit_difference": 0.0,
            "tolerance": 1e-4,
            "input_shape": [2, 1, *patch],
            "seed": 0,
        },
    }


def tiny_export(folder: Path, **spec_kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sha = tiny_conv_onnx(folder / "model.onnx", patch=spec_kwargs.get("patch", (8, 8, 8)))
    (folder / "preprocessing.json").write_text(json.dumps(tiny_spec(sha, **spec_kwargs)))
    return folder


def blob_ct(shape=(14, 18, 16), spacing=(1.0, 1.0, 1.0), seed=0, zero_rows=0):
    """A CT [z, y, x] in HU: noisy background, a bright ball with a darker core."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=float)
    centre = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    sz, sy, sx = spacing[2], spacing[1], spacing[0]
    dist = np.sqrt(
        ((z - centre[0]) * sz) ** 2 + ((y - centre[1]) * sy) ** 2 + ((x - centre[2]) * sx) ** 2
    )
    ball = min(shape[0] * sz, shape[1] * sy, shape[2] * sx) * 0.3
    image = rng.normal(-80, 25, shape)
    image[dist < ball] += 200
    image[dist < ball * 0.45] += 60
    image = np.round(image).astype(np.int16)
    if zero_rows:
        image[:, :zero_rows] = 0  # exact zeros: nnU-Net crops them away
    return make_image(image, spacing=spacing, origin=(-10.0, 4.0, 7.5))


def flipped_copy(image, axis_xyz: int):
    """The same physical image stored with one axis reversed (direction and origin adjusted)."""
    import SimpleITK as sitk

    flip = [False, False, False]
    flip[axis_xyz] = True
    return sitk.Flip(image, flip, flipAboutOrigin=False)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


# ============================================================================ building blocks
def test_orientation_transform_matches_dicomorient():
    import SimpleITK as sitk

    from metcli.segmentation.orientation import orientation_transform

    rng = np.random.default_rng(1)
    base = make_image(rng.normal(size=(4, 5, 6)).astype(np.float32), spacing=(0.7, 1.1, 2.5))
    directions = [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        (-1, 0, 0, 0, -1, 0, 0, 0, 1),
        (1, 0, 0, 0, -1, 0, 0, 0, -1),
        (0, 1, 0, 1, 0, 0, 0, 0, -1),
        (0, 0, 1, -1, 0, 0, 0, 1, 0),
    ]
    for direction in directions:
        image = sitk.Image(base)
        image.SetDirection(direction)
        array = sitk.GetArrayFromImage(image)
        for code in ("LPS", "RAS", "SAL"):
            expected = sitk.DICOMOrient(image, code)
            transform = orientation_transform(direction, code)
            oriented = transform.forward(array)
            np.testing.assert_array_equal(oriented, sitk.GetArrayFromImage(expected))
            assert transform.spacing_zyx(image.GetSpacing()[::-1]) == pytest.approx(
                expected.GetSpacing()[::-1]
            )
            np.testing.assert_array_equal(transform.backward(oriented), array)
    assert orientation_transform(directions[1], None).is_identity


def test_steps_bbox_and_shapes():
    from metcli.segmentation.preprocessing import compute_new_shape, nonzero_bbox
    from metcli.segmentation.sliding_window import sliding_window_steps

    # 110 voxels, patch 64, step 0.5 -> 3 tiles at 0, 23, 46 (nnU-Net's documented example)
    assert sliding_window_steps((110, 64, 64), (64, 64, 64), 0.5) == [[0, 23, 46], [0], [0]]
    assert sliding_window_steps((24, 38, 40), (16, 32, 32), 0.5) == [[0, 8], [0, 6], [0, 8]]
    data = np.zeros((1, 5, 6, 7))
    assert nonzero_bbox(data) == [[0, 5], [0, 6], [0, 7]]  # nothing nonzero: keep all
    data[0, 1:3, 2, 4:6] = 5
    assert nonzero_bbox(data) == [[1, 3], [2, 3], [4, 6]]
    assert compute_new_shape((10, 20, 30), (3.0, 1.0, 1.0), (1.5, 2.0, 1.0)) == [20, 10, 30]


def test_gaussian_weights_are_nnunets():
    from metcli.segmentation.sliding_window import gaussian_importance

    weights = gaussian_importance((16, 32, 32))
    assert weights.dtype == np.float32 and weights.min() > 0
    assert weights[8, 16, 16] == weights.max() == pytest.approx(10.0)
    assert np.all(weights.astype(np.float16).astype(np.float32) == weights)  # float16 values
    single = gaussian_importance((16, 32, 32), half=False)
    assert single.max() == 1.0 and single.min() < weights.min() / 10


def test_resampling_separates_the_thick_axis():
    from metcli.segmentation.preprocessing import resample_to_shape, separate_z

    assert separate_z((4.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == (True, 0)
    assert separate_z((1.0, 1.0, 1.0), (1.0, 3.5, 1.0)) == (True, 1)
    assert separate_z((2.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == (False, None)
    assert separate_z((4.0, 4.0, 1.0), (1.0, 1.0, 1.0)) == (False, None)  # two thick axes
    data = np.random.default_rng(0).normal(size=(1, 5, 8, 8)).astype(np.float32)
    out = resample_to_shape(data, (20, 8, 8), (4.0, 1.0, 1.0), (1.0, 1.0, 1.0), order=3, order_z=0)
    assert out.dtype == np.float32 and out.shape == (1, 20, 8, 8)
    # nearest neighbour along z, unchanged in plane: every output slice is an input slice
    assert all(any(np.array_equal(out[0, k], data[0, j]) for j in range(5)) for k in range(20))
    assert resample_to_shape(data, (5, 8, 8), (1, 1, 1), (1, 1, 1)) is data


def test_matches_nnunet_functions():
    pytest.importorskip("nnunetv2")
    import torch
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from metcli.segmentation.preprocessing import resample_to_shape
    from metcli.segmentation.sliding_window import gaussian_importance, sliding_window_steps

    rng = np.random.default_rng(3)
    data = rng.normal(size=(2, 6, 11, 9)).astype(np.float32)
    cases = [
        ((5.0, 1.0, 1.0), (1.0, 1.0, 1.0), (30, 11, 9), 3, 0),  # separate z, axis 0
        ((1.0, 4.0, 1.2), (1.0, 1.0, 1.0), (6, 44, 11), 3, 0),  # separate z, axis 1
        ((2.0, 1.0, 1.0), (1.0, 0.7, 1.3), (12, 16, 7), 3, 0),  # all at once
        ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (2, 11, 9), 1, 0),  # back to thick slices
        ((5.0, 1.0, 1.0), (1.0, 1.0, 1.0), (30, 13, 9), 1, 1),
    ]  # linear along z
    for current, new, shape, order, order_z in cases:
        expected = resample_data_or_seg_to_shape(
            data,
            shape,
            current,
            new,
            is_seg=False,
            order=order,
            order_z=order_z,
            force_separate_z=None,
        )
        actual = resample_to_shape(data, shape, current, new, order=order, order_z=order_z)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    half = data.astype(np.float16)
    np.testing.assert_array_equal(
        resample_to_shape(half, (20, 11, 9), (5.0, 1.0, 1.0), (1.0, 1.0, 1.0), order=1),
        resample_data_or_seg_to_shape(
            half,
            (20, 11, 9),
            (5.0, 1.0, 1.0),
            (1.0, 1.0, 1.0),
            is_seg=False,
            order=1,
            order_z=0,
            force_separate_z=None,
        ),
    )
    for size, patch, step in (
        ((110, 64, 70), (64, 64, 64), 0.5),
        ((37, 90, 91), (16, 32, 32), 0.3),
    ):
        assert sliding_window_steps(size, patch, step) == compute_steps_for_sliding_window(
            size, patch, step
        )
    reference = (
        compute_gaussian((16, 24, 20), 1 / 8, 10, dtype=torch.float16, device=torch.device("cpu"))
        .float()
        .numpy()
    )
    np.testing.assert_array_equal(gaussian_importance((16, 24, 20)), reference)


# ============================================================================ the segmenter
def test_segmenter_contract_on_a_tiny_network(tmp_path):
    import SimpleITK as sitk

    from metcli.segmentation.onnx import OnnxSegmenter

    model = tiny_export(tmp_path / "tiny")
    ct = blob_ct(zero_rows=2)
    segmenter = OnnxSegmenter(model, device="cpu", tta=True)
    assert segmenter.labels == {"background": 0, "liver": 1, "lesion": 2}
    assert segmenter.provider == "CPUExecutionProvider"
    calls = []
    labels, probs = segmenter.predict_with_probabilities(
        ct, progress=lambda done, total: calls.append((done, total))
    )
    assert calls and calls[-1][0] == calls[-1][1]
    assert labels.GetSize() == ct.GetSize() and labels.GetSpacing() == ct.GetSpacing()
    assert labels.GetOrigin() == ct.GetOrigin() and labels.GetDirection() == ct.GetDirection()
    array = sitk.GetArrayFromImage(labels)
    assert array.dtype == np.uint8 and set(np.unique(array)) <= {0, 1, 2}
    assert probs.shape == (3, *array.shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(probs, axis=0), array)
    # the zero rows were cropped away: background with certainty there
    assert np.all(array[:, :2] == 0) and np.all(probs[0][:, :2] == 1)
    assert len(np.unique(array[:, 2:])) > 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(segmenter.predict(ct)), array)


def test_flipped_axes_give_the_same_physical_labels(tmp_path):
    import SimpleITK as sitk

    from metcli.imaging.geometry import to_reference_grid
    from metcli.segmentation.onnx import OnnxSegmenter

    ct = blob_ct(shape=(12, 20, 17), spacing=(0.8, 1.0, 2.0), seed=4)
    for tta in (False, True):
        segmenter = OnnxSegmenter(tiny_export(tmp_path / f"m{tta}"), device="cpu", tta=tta)
        reference = segmenter.predict(ct)
        for axis in (0, 2):
            flipped = flipped_copy(ct, axis)
            assert flipped.GetDirection() != ct.GetDirection()
            labels = segmenter.predict(flipped)
            assert labels.GetDirection() == flipped.GetDirection()
            back = to_reference_grid(labels, reference)
            np.testing.assert_array_equal(
                sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reference)
            )


def test_as_stored_orientation_follows_the_array(tmp_path):
    """orientation null (nnU-Net's own behaviour): the network sees the stored array."""
    import SimpleITK as sitk

    from metcli.segmentation.onnx import OnnxSegmenter

    ct = blob_ct(seed=2)
    flipped = flipped_copy(ct, 0)
    segmenter = OnnxSegmenter(
        tiny_export(tmp_path / "m", orientation=None), device="cpu", tta=False
    )
    direct = sitk.GetArrayFromImage(segmenter.predict(flipped))
    moved = sitk.GetArrayFromImage(
        segmenter.predict(make_image(sitk.GetArrayFromImage(flipped), spacing=ct.GetSpacing()))
    )
    np.testing.assert_array_equal(direct, moved)


def test_segmenter_refuses_bad_input(tmp_path):
    import SimpleITK as sitk

    from metcli.core.errors import ImageError, InputError, UsageError
    from metcli.segmentation.onnx import OnnxSegmenter

    model = tiny_export(tmp_path / "m")
    segmenter = OnnxSegmenter(model, device="cpu")
    array = sitk.GetArrayFromImage(blob_ct()).astype(np.float32)
    array[3, 4, 5] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        segmenter.predict(make_image(array))
    with pytest.raises(ImageError, match="4D"):
        segmenter.predict(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32))
    with pytest.raises(UsageError, match="step_size"):
        OnnxSegmenter(model, step_size=0)
    with pytest.raises(UsageError, match="device"):
        OnnxSegmenter(model, device="gpu")
    # an nnU-Net folder instead of an export: says how to export it
    nnunet_like = tmp_path / "nnunet"
    nnunet_like.mkdir()
    (nnunet_like / "plans.json").write_text("{}")
    with pytest.raises(InputError, match="export-onnx"):
        OnnxSegmenter(nnunet_like)
    # a changed ONNX file is refused by its sha256
    with open(model / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(InputError, match="sha256"):
        OnnxSegmenter(model)


def test_cuda_request_without_cuda_is_a_usage_error(tmp_path, caplog):
    """--device cuda asks for the GPU: without one it stops (auto runs on the CPU)."""
    import onnxruntime as ort

    from metcli.core.errors import UsageError
    from metcli.segmentation.onnx import OnnxSegmenter

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    model = tiny_export(tmp_path / "m")
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        OnnxSegmenter(model, device="cuda")
    with caplog.at_level("INFO", logger="metcli.core.devices"):
        segmenter = OnnxSegmenter(model, device="auto")
    assert segmenter.provider == "CPUExecutionProvider"
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_backend_needs_neither_torch_nor_nnunetv2(tmp_path):
    model = tiny_export(tmp_path / "m")
    code = (
        "import sys, numpy as np, SimpleITK as sitk\n"
        "sys.modules['torch'] = None; sys.modules['nnunetv2'] = None\n"
        "from metcli.segmentation.onnx import OnnxSegmenter\n"
        "ct = sitk.GetImageFromArray(np.full((9, 10, 11), 40, np.int16))\n"
        f"labels = OnnxSegmenter({str(model)!r}, device='cpu').predict(ct)\n"
        "print(labels.GetSize())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(11, 10, 9)"


def test_spec_problems_are_named(tmp_path):
    from metcli.core.errors import InputError, SchemaError
    from metcli.segmentation.onnx import load_spec

    model = tiny_export(tmp_path / "m", scheme="SomeOtherNormalization")
    with pytest.raises(InputError, match="SomeOtherNormalization"):
        load_spec(model)
    spec = json.loads((model / "preprocessing.json").read_text())
    del spec["target_spacing"]
    (model / "preprocessing.json").write_text(json.dumps(spec))
    with pytest.raises(SchemaError, match="target_spacing"):
        load_spec(model)


def test_export_refuses_incomplete_model_folders(tmp_path):
    from metcli.core.errors import InputError, UsageError
    from metcli.segmentation.export_onnx import export_onnx

    folder = tmp_path / "model"
    (folder / "fold_1").mkdir(parents=True)
    (folder / "dataset.json").write_text("{}")
    with pytest.raises(InputError, match="plans.json"):
        export_onnx(folder, tmp_path / "out")
    (folder / "plans.json").write_text("{}")
    (folder / "fold_1" / "checkpoint_final.pth").write_bytes(b"x")
    with pytest.raises(InputError, match="fold_1"):
        export_onnx(folder, tmp_path / "out", fold=0)
    with pytest.raises(UsageError, match="orientation"):
        export_onnx(folder, tmp_path / "out", fold=1, orientation="LLS")
    with pytest.raises(UsageError, match="--fold"):
        export_onnx(folder, tmp_path / "out", fold="-1")


def test_checkpoints_load_weights_only(tmp_path):
    """Weights-only, with numpy scalars allowed; anything else is refused, never unpickled."""
    torch = pytest.importorskip("torch")
    from fractions import Fraction

    from metcli.core.errors import InputError
    from metcli.segmentation.checkpoints import load_checkpoint

    weights = {"network_weights": {"w": torch.zeros(2)}, "trainer_name": "nnUNetTrainer"}
    torch.save(weights, tmp_path / "plain.pth")
    assert load_checkpoint(tmp_path / "plain.pth")[1] == "weights_only"
    torch.save({**weights, "_best_ema": np.float32(0.5)}, tmp_path / "numpy.pth")
    checkpoint, how = load_checkpoint(tmp_path / "numpy.pth")
    assert how == "weights_only+numpy_scalars" and checkpoint["_best_ema"] == np.float32(0.5)
    torch.save({**weights, "extra": Fraction(1, 3)}, tmp_path / "object.pth")
    with pytest.raises(InputError, match="GLOBAL fractions.Fraction") as info:
        load_checkpoint(tmp_path / "object.pth")
    assert "object.pth" in str(info.value) and "strip" in str(info.value)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="network_weights"):
        load_checkpoint(tmp_path / "other.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "broken.pth")


def test_cli_export_without_plans_is_one_line(runner, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "dataset.json").write_text("{}")
    result = invoke(runner, ["export-onnx", folder, tmp_path / "out"], expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "plans.json" in lines[0] and lines[0].startswith("metcli: error:")


# ============================================================================ a real nnU-Net model
def _build_tiny_nnunet(root: Path) -> None:
    """nnU-Net's own planning, preprocessing and training (1 epoch, 3 iterations) on 6 blobs."""
    import SimpleITK as sitk

    raw = root / "raw"
    pre = root / "preprocessed"
    results = root / "results"
    for path in (raw, pre, results):
        path.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(pre),
        nnUNet_results=str(results),
        nnUNet_n_proc_DA="1",
        nnUNet_def_n_proc="1",
        nnUNet_compile="false",
    )
    dataset = raw / TINY_DATASET
    (dataset / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dataset / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = (40, 40, 24)  # [z, y, x]; x is the thick axis (2 mm): nnU-Net transposes it first
    z, y, x = np.indices(shape, dtype=float)
    for case in range(6):
        image = rng.normal(-80, 25, shape)
        labels = np.zeros(shape, np.uint8)
        centre = np.array(shape) / 2 + rng.uniform(-4, 4, 3)
        radius = rng.uniform(9, 12)
        labels[
            np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + ((x - centre[2]) * 2) ** 2)
            < radius
        ] = 1
        core = centre + rng.uniform(-2, 2, 3)
        labels[
            (
                np.sqrt((z - core[0]) ** 2 + (y - core[1]) ** 2 + ((x - core[2]) * 2) ** 2)
                < radius * 0.45
            )
            & (labels == 1)
        ] = 2
        image[labels == 1] += 200
        image[labels == 2] += 60
        for array, path in (
            (
                np.round(image).astype(np.int16),
                dataset / "imagesTr" / f"case{case:03d}_0000.nii.gz",
            ),
            (labels, dataset / "labelsTr" / f"case{case:03d}.nii.gz"),
        ):
            item = sitk.GetImageFromArray(array)
            item.SetSpacing((2.0, 1.0, 1.0))
            sitk.WriteImage(item, str(path))
    (dataset / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "blob": 1, "core": 2},
                "numTraining": 6,
                "file_ending": ".nii.gz",
            }
        )
    )

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([901], num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([901])
    plans_file = pre / TINY_DATASET / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["3d_fullres"]
    config.update(patch_size=[16, 32, 32], batch_size=2)
    config["architecture"]["arch_kwargs"].update(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    plans["configurations"] = {"3d_fullres": config}
    plans_file.write_text(json.dumps(plans, indent=1))
    preprocess([901], configurations=["3d_fullres"], num_processes=[1], verbose=False)
    (pre / TINY_DATASET / "splits_final.json").write_text(
        json.dumps([{"train": [f"case{i:03d}" for i in range(4)], "val": ["case004", "case005"]}])
    )

    os.environ["nnUNet_n_proc_DA"] = "0"  # single-threaded data augmentation for training
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.manual_seed(0)
    trainer = get_trainer_from_args(
        "901", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu")
    )
    trainer.num_epochs, trainer.num_iterations_per_epoch = 1, 3
    trainer.num_val_iterations_per_epoch = 1
    trainer.run_training()


@pytest.fixture(scope="module")
def tiny_nnunet(tmp_path_factory) -> Path:
    """A tiny nnU-Net v2 trained-model folder, built once and cached by the builder's source."""
    pytest.importorskip("nnunetv2")
    import inspect

    key = hashlib.sha256(inspect.getsource(_build_tiny_nnunet).encode()).hexdigest()[:12]
    cache = tmp_path_factory.getbasetemp().parent / f"metcli-tiny-nnunet-{key}"
    model = cache / TINY_MODEL
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        work = tmp_path_factory.mktemp("tiny-nnunet-build")
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        done = subprocess.run(
            [sys.executable, __file__, "build", str(work)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(work, cache)
    return model


@pytest.fixture(scope="module")
def tiny_export_dir(tiny_nnunet, tmp_path_factory) -> Path:
    from metcli.segmentation.export_onnx import export_onnx

    out = tmp_path_factory.mktemp("tiny-onnx")
    export_onnx(tiny_nnunet, out)
    return out


def nnunet_predictor(model_dir: Path, *, tta: bool):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=tta,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    return predictor


def nnunet_labels_and_probabilities(predictor, ct):
    """nnU-Net's own prediction of a CT as stored (its SimpleITKIO conventions)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(ct).astype(np.float32)[None]
    properties = {"spacing": [abs(s) for s in ct.GetSpacing()[::-1]]}
    return predictor.predict_single_npy_array(array, properties, None, None, True)


def agreement(segmenter, predictor, ct, values) -> dict:
    import SimpleITK as sitk

    labels, probs = segmenter.predict_with_probabilities(ct)
    ours = sitk.GetArrayFromImage(labels)
    theirs, their_probs = nnunet_labels_and_probabilities(predictor, ct)
    difference = np.max(np.abs(probs - their_probs), axis=0)
    return {
        "dice": {v: dice(ours == v, theirs == v) for v in values},
        "same_label_fraction": float(np.mean(ours == theirs)),
        "max_prob_difference": float(difference.max()),
        "prob_difference_quantile": float(np.quantile(difference, PROB_QUANTILE)),
        "prob_outlier_fraction": float(np.mean(difference > PROB_OUTLIER)),
    }


def assert_agreement(result: dict) -> None:
    assert min(result["dice"].values()) >= 0.99, result
    assert result["same_label_fraction"] >= 0.999, result
    assert result["prob_difference_quantile"] < PROB_QUANTILE_TOLERANCE, result
    assert result["prob_outlier_fraction"] <= PROB_OUTLIER_FRACTION, result


@pytest.mark.slow
def test_export_verifies_onnx_against_torch(tiny_nnunet, tiny_export_dir):
    from metcli.io.files import sha256_file
    from metcli.segmentation.onnx import load_spec

    spec = load_spec(tiny_export_dir)
    assert spec["verification"]["passed"]
    verification = spec["verification"]
    assert verification["relative_logit_difference"] <= verification["tolerance"] == 1e-4
    assert verification["labels_identical_beyond_ties"]
    assert verification["inputs"] == ["phantom", "random"]
    assert spec["onnx"]["sha256"] == sha256_file(tiny_export_dir / "model.onnx")
    assert spec["source"]["files"]["plans.json"] == sha256_file(tiny_nnunet / "plans.json")
    assert spec["source"]["checkpoint_loading"] == "weights_only+numpy_scalars"
    assert spec["axes"]["transpose_forward"] == [2, 0, 1]  # the thick x axis goes first
    assert spec["labels"] == {"background": 0, "blob": 1, "core": 2}
    assert spec["inference"]["mirror_axes"] == [0, 1, 2]
    plans = json.loads((tiny_nnunet / "plans.json").read_text())
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    norm = spec["normalization"]
    assert (norm["clip_lower"], norm["clip_upper"], norm["mean"], norm["std"]) == (
        props["percentile_00_5"],
        props["percentile_99_5"],
        props["mean"],
        props["std"],
    )
    import onnx

    graph = onnx.load(str(tiny_export_dir / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits"]  # deep supervision off: one output
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.slow
def test_cli_export_and_skip(tiny_nnunet, runner, tmp_path):
    out = tmp_path / "onnx"
    first = invoke(runner, ["export-onnx", tiny_nnunet, out, "--fold", "0"])
    assert "exported" in first.stdout and "max_abs_logit_difference" in first.stdout
    second = invoke(runner, ["export-onnx", tiny_nnunet, out])
    assert "skipped" in second.stdout
    result = invoke(runner, ["export-onnx", tiny_nnunet, tmp_path / "x", "--fold", "3"], expect=1)
    assert "fold_0" in result.stderr  # lists the folds that exist


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True], ids=["no-tta", "tta"])
def test_onnx_backend_agrees_with_nnunet(tiny_nnunet, tiny_export_dir, tta):
    from metcli.segmentation.onnx import OnnxSegmenter

    segmenter = OnnxSegmenter(tiny_export_dir, device="cpu", tta=tta)
    predictor = nnunet_predictor(tiny_nnunet, tta=tta)
    scans = [
        blob_ct((40, 40, 24), (2.0, 1.0, 1.0), seed=11),  # the training grid
        blob_ct((12, 44, 40), (1.0, 1.0, 4.0), seed=12, zero_rows=3),  # anisotropic, cropped
        blob_ct((30, 50, 26), (1.3, 0.9, 2.2), seed=13),
    ]  # all axes resampled
    if tta:
        scans = scans[:2]
    for ct in scans:
        assert_agreement(agreement(segmenter, predictor, ct, (0, 1, 2)))


@pytest.mark.slow
def test_real_model_flipped_ct_same_physical_labels(tiny_export_dir):
    import SimpleITK as sitk

    from metcli.imaging.geometry import to_reference_grid
    from metcli.segmentation.onnx import OnnxSegmenter

    segmenter = OnnxSegmenter(tiny_export_dir, device="cpu", tta=False)
    ct = blob_ct((40, 40, 24), (2.0, 1.0, 1.0), seed=21)
    reference = sitk.GetArrayFromImage(segmenter.predict(ct))
    assert len(np.unique(reference)) > 1
    for axis in (0, 1, 2):
        labels = segmenter.predict(flipped_copy(ct, axis))
        back = to_reference_grid(labels, segmenter.predict(ct))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), reference)


@pytest.mark.slow
def test_both_backends_agree_on_a_flipped_ct_in_the_exports_orientation(
    tiny_nnunet, tiny_export_dir
):
    """The export brings CTs to LPS; the nnU-Net backend told the same orientation (as
    segment does by default) labels a flipped CT like the ONNX backend."""
    import SimpleITK as sitk

    from metcli.core.errors import UsageError
    from metcli.segmentation.models import resolve_segmentation_model
    from metcli.segmentation.nnunet import NnunetSegmenter
    from metcli.segmentation.onnx import OnnxSegmenter

    model = resolve_segmentation_model(str(tiny_export_dir), backend="onnx")
    assert model.orientation == "LPS"
    with pytest.raises(UsageError, match="export-onnx --orientation RAS"):
        resolve_segmentation_model(str(tiny_export_dir), backend="onnx", orientation="RAS")
    ct = flipped_copy(blob_ct((40, 40, 24), (2.0, 1.0, 1.0), seed=22), 0)
    ours = OnnxSegmenter(tiny_export_dir, device="cpu", tta=False).predict(ct)
    theirs = NnunetSegmenter(tiny_nnunet, device="cpu", tta=False, orientation="LPS").predict(ct)
    a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
    assert len(np.unique(a)) > 1
    assert dice(a == 1, b == 1) >= 0.99 and np.mean(a == b) >= 0.999


@pytest.mark.slow
def test_demo_model_agrees_on_synthetic_scans(tmp_path):
    if not (DEMO_MODEL / "plans.json").is_file():
        pytest.skip("the demo model is not built yet (weights/recipes/train_demo_model.py)")
    pytest.importorskip("nnunetv2")
    from metcli.segmentation.export_onnx import export_onnx
    from metcli.segmentation.onnx import OnnxSegmenter
    from metcli.synth.phantom import make_phantom

    export_onnx(DEMO_MODEL, tmp_path / "onnx")
    segmenter = OnnxSegmenter(tmp_path / "onnx", device="cpu", tta=False)
    predictor = nnunet_predictor(DEMO_MODEL, tta=False)
    for seed in (7001, 7002):  # seeds the demo recipe does not train on
        ct, truth, _ = make_phantom(seed)
        assert_agreement(agreement(segmenter, predictor, ct, (0, 1, 2)))


if __name__ == "__main__":  # pragma: no cover - builds the tiny model in a fresh process
    if len(sys.argv) == 3 and sys.argv[1] == "build":
        _build_tiny_nnunet(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_onnx_segment.py build DIR")
