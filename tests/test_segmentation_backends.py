"""The registry of segmentation backends: every entry's contract, and a backend added by a user.

Every registered backend opens a :class:`~metcli.segmentation.backends.Segmenter` from a
sample folder of its format and refuses a folder of another backend's format. A
temporary backend (a threshold on the HU values, registered by a fixture) runs
``metcli segment`` end to end and is listed in ``metcli segment --help``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, invoke, make_image
from metcli.core.errors import InputError, UsageError
from metcli.io.bids import Entities
from metcli.io.files import read_json
from metcli.segmentation.backends import backend_names

DEMO = REPO / "weights" / "demo" / "metcli-demo-nnunet"
#: The backends metcli registers itself (the parametrisations below run over them).
BUILT_IN = backend_names()


# ----------------------------------------------------------------------------- samples
def _nnunet_sample(tmp_path: Path) -> Path:
    if not (DEMO / "fold_0" / "checkpoint_final.pth").is_file():
        pytest.skip("the demo model is not built (weights/recipes/train_demo_model.py)")
    return DEMO


def _onnx_sample(tmp_path: Path) -> Path:
    pytest.importorskip("onnx")
    from test_onnx_segment import tiny_export

    return tiny_export(tmp_path / "tiny-export")


#: backend -> a function that gives a model folder of its format (or skips).
SAMPLES = {"nnunet": _nnunet_sample, "onnx": _onnx_sample}
#: backend -> what opening one needs besides metcli's own dependencies.
NEEDS = {"nnunet": ("torch", "nnunetv2"), "onnx": ("onnxruntime",)}


def small_ct(shape=(12, 18, 16)):
    """A CT in HU: background -100, a 'liver' box at 60 HU with a 200 HU 'lesion' inside."""
    array = np.full(shape, -100, np.int16)
    array[2:10, 3:15, 3:13] = 60
    array[4:7, 6:10, 5:9] = 200
    return make_image(array, spacing=(1.5, 1.5, 2.0), origin=(-10.0, 4.0, 7.5))


def test_every_built_in_backend_has_a_sample_folder_here():
    assert set(BUILT_IN) == set(SAMPLES) == set(NEEDS)


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", BUILT_IN)
def test_backend_opens_a_segmenter_that_conforms(name, tmp_path):
    from metcli.imaging.geometry import grid_difference
    from metcli.segmentation.backends import Segmenter, get_backend
    from metcli.segmentation.models import (
        load_segmenter,
        model_labels_of,
        resolve_segmentation_model,
    )

    backend = get_backend(name)
    assert backend.name == name and backend.description.strip()
    folder = SAMPLES[name](tmp_path)
    model = resolve_segmentation_model(Path(folder), backend=name)
    assert model.backend == name and model.files and len(model.sha256) == 64
    labels = model_labels_of(model)
    assert {"liver", "lesion"} <= set(labels)
    for module in NEEDS[name]:
        pytest.importorskip(module)
    segmenter = load_segmenter(model, device="cpu", tta=False)
    assert isinstance(segmenter, Segmenter)
    assert segmenter.labels == labels and str(segmenter.device) == "cpu"
    assert isinstance(segmenter.sidecar_fields(), dict)
    ct = small_ct()
    seg = segmenter.predict(ct)
    assert grid_difference(seg, ct) is None
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= set(labels.values())


@pytest.mark.parametrize("name, other", [(a, b) for a in BUILT_IN for b in BUILT_IN if a != b])
def test_backend_refuses_a_folder_of_another_format(name, other, tmp_path):
    from metcli.segmentation.models import resolve_segmentation_model

    folder = SAMPLES[other](tmp_path)
    with pytest.raises(UsageError, match=f"--backend {other}") as caught:
        resolve_segmentation_model(Path(folder), backend=name)
    assert "not an" in caught.value.what  # "X is an nnU-Net model folder, not an ONNX export"


def test_unknown_and_duplicate_backends_are_usage_errors():
    from metcli.segmentation.backends import get_backend, register, unregister

    with pytest.raises(UsageError, match="--backend 'nope' is not one of nnunet, onnx"):
        get_backend("nope")
    with pytest.raises(UsageError, match="already registered"):
        register(get_backend("onnx"))
    with pytest.raises(UsageError, match="nope"):
        unregister("nope")
    assert backend_names() == BUILT_IN


# ----------------------------------------------------------------------------- a user's backend
THRESHOLDS = {"liver_hu": 30, "lesion_hu": 150}
#: Model labels in an order of their own: the label map by names must translate them.
THRESHOLD_LABELS = {"background": 0, "tumour": 1, "liver": 2}


class ThresholdSegmenter:
    """Labels by HU thresholds from the folder's ``thresholds.json``."""

    labels = THRESHOLD_LABELS

    def __init__(self, folder: Path, device: str):
        self.thresholds = json.loads((folder / "thresholds.json").read_text())
        self.device = "cpu" if device == "auto" else device

    def predict(self, ct):
        array = sitk.GetArrayFromImage(ct)
        out = np.zeros(array.shape, np.uint8)
        out[array > self.thresholds["liver_hu"]] = THRESHOLD_LABELS["liver"]
        out[array > self.thresholds["lesion_hu"]] = THRESHOLD_LABELS["tumour"]
        image = sitk.GetImageFromArray(out)
        image.CopyInformation(ct)
        return image

    def sidecar_fields(self) -> dict:
        return {"Thresholds": self.thresholds}


def _threshold_folder(path, *, name, folds, orientation, manifest_orientation):
    from metcli.segmentation.backends import ModelFolder

    if folds:
        raise UsageError("--folds applies to the nnunet backend only")
    if not (path / "thresholds.json").is_file():
        raise InputError(
            "no thresholds.json in the model folder",
            path=path,
            fix="use --backend threshold with a thresholds folder",
        )
    return ModelFolder(
        files=["thresholds.json"], folds=None, orientation=orientation or "as-stored"
    )


@pytest.fixture
def threshold_backend():
    """A backend 'threshold', registered for one test and removed afterwards."""
    from metcli.segmentation.backends import Backend, register, unregister

    register(
        Backend(
            name="threshold",
            description="HU thresholds (a test backend)",
            check_folder=_threshold_folder,
            read_labels=lambda path: dict(THRESHOLD_LABELS),
            open=lambda model, *, device, tta, step_size, threads: ThresholdSegmenter(
                model.path, device
            ),
        )
    )
    yield "threshold"
    unregister("threshold")
    assert backend_names() == BUILT_IN


def test_a_registered_backend_runs_segment_end_to_end(threshold_backend, runner, tmp_path):
    from metcli.segmentation.backends import Segmenter

    folder = tmp_path / "thresholds"
    folder.mkdir()
    (folder / "thresholds.json").write_text(json.dumps(THRESHOLDS))
    assert isinstance(ThresholdSegmenter(folder, "cpu"), Segmenter)
    raw = tmp_path / "rawdata"
    ct = small_ct()
    ct_path = raw / Entities(sub="001", ce="portal", suffix="ct").relpath()
    ct_path.parent.mkdir(parents=True)
    sitk.WriteImage(ct, str(ct_path))

    help_text = invoke(runner, ["segment", "--help"]).stdout
    assert "threshold" in help_text and "HU thresholds (a test backend)" in " ".join(
        help_text.split()
    )
    out = tmp_path / "seg"
    invoke(
        runner,
        [
            "segment",
            raw,
            out,
            "--backend",
            "threshold",
            "--model",
            folder,
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    dseg_path = out / Entities(sub="001", ce="portal", suffix="dseg").relpath()
    dseg = sitk.GetArrayFromImage(sitk.ReadImage(str(dseg_path)))
    hu = sitk.GetArrayFromImage(ct)
    expected = np.where(hu > 150, 2, np.where(hu > 30, 1, 0))  # metcli's labels
    np.testing.assert_array_equal(dseg, expected)
    sidecar = read_json(dseg_path.with_name("sub-001_ce-portal_dseg.json"), schema="sidecar")
    assert sidecar["Backend"] == "threshold" and sidecar["Thresholds"] == THRESHOLDS
    assert sidecar["ModelLabelMap"] == {"1": 2, "2": 1}
    assert sidecar["LiverVoxels"] == int((expected == 1).sum())
    assert sidecar["Provenance"]["models"][0]["backend"] == "threshold"
    assert sidecar["Provenance"]["settings"]["backend"] == "threshold"
    result = invoke(
        runner,
        ["segment", raw, out, "--backend", "threshold", "--model", folder, "--folds", "0"],
        expect=2,
    )
    assert "--folds applies to the nnunet backend only" in result.stderr


def test_an_unregistered_backend_is_refused_by_the_command(runner, tmp_path):
    raw = tmp_path / "rawdata"
    (raw / "sub-001" / "anat").mkdir(parents=True)
    result = invoke(runner, ["segment", raw, tmp_path / "seg", "--backend", "threshold"], expect=2)
    assert "'threshold' is not one of 'nnunet', 'onnx'" in result.stderr
