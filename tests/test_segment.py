"""segment: label maps, model resolution, the nnU-Net backend with the demo model, the command.

Tests that run the demo model use CTs cropped to the model's patch around the
liver (one sliding-window tile, no mirroring), so that each prediction takes
about a second on a CPU; the quality of the model on whole scans is checked by
the slow test at the end (benchmarks/demo_model_quality.py on three scans).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, invoke, make_image
from metcli.core.errors import ImageError, InputError, UsageError
from metcli.io.bids import Entities
from metcli.io.files import read_json, read_tsv

DEMO = REPO / "weights" / "demo" / "metcli-demo-nnunet"
CROP_ZYX = (32, 48, 48)  # the demo model's patch: one tile per prediction


def _needs_nnunet():
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    if not (DEMO / "fold_0" / "checkpoint_final.pth").is_file():
        pytest.skip("the demo model is not built (weights/recipes/train_demo_model.py)")


# ----------------------------------------------------------------------------- data
def cropped_phantom(seed: int, cls: str = "colorectal"):
    """(CT, truth dseg) of a small synth phantom cropped to CROP_ZYX around its liver."""
    from metcli.synth.phantom import make_phantom

    ct, dseg, _lesions = make_phantom(seed, cls=cls)
    truth = sitk.GetArrayFromImage(dseg)
    zyx = np.argwhere(truth > 0)
    centre = (zyx.min(0) + zyx.max(0)) // 2
    start = [
        int(min(max(c - n // 2, 0), size - n)) for c, n, size in zip(centre, CROP_ZYX, truth.shape)
    ]
    index = start[::-1]  # SimpleITK's (x, y, z)
    size = CROP_ZYX[::-1]
    crop = sitk.RegionOfInterest
    return crop(ct, size, index), crop(dseg, size, index)


def write_ct(raw: Path, sub: str, image, *, ce: str = "portal") -> Path:
    path = raw / Entities(sub=sub, ce=ce, suffix="ct").relpath()
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def seg_path(out: Path, sub: str, ce: str = "portal") -> Path:
    return out / Entities(sub=sub, ce=ce, suffix="dseg").relpath()


def dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantoms():
    return {"001": cropped_phantom(11), "002": cropped_phantom(12, "pancreatic")}


@pytest.fixture
def raw(tmp_path, phantoms):
    root = tmp_path / "rawdata"
    for sub, (ct, _truth) in phantoms.items():
        write_ct(root, sub, ct)
    return root


@pytest.fixture(scope="module")
def demo_segmenter():
    _needs_nnunet()
    from metcli.segmentation.nnunet import NnunetSegmenter

    return NnunetSegmenter(DEMO, device="cpu", tta=False)


# ----------------------------------------------------------------------------- label maps
def test_label_map_by_name_number_and_synonym():
    from metcli.segmentation.labelmaps import resolve_label_map

    labels = {"background": 0, "liver": 1, "liver_tumor": 2, "vessel": 3}
    assert resolve_label_map(labels) == {1: 1, 2: 2}  # names: liver, and a lesion synonym
    assert resolve_label_map(labels, "liver=liver,liver_tumor=lesion") == {1: 1, 2: 2}
    assert resolve_label_map(labels, "1=1, 3=lesion") == {1: 1, 3: 2}
    assert resolve_label_map({"background": 0, "organ": 5}, manifest_map={5: 1}) == {5: 1}
    # --label-map wins over the manifest's map
    assert resolve_label_map(labels, "vessel=liver", manifest_map={1: 1}) == {3: 1}


@pytest.mark.parametrize(
    "spec, words",
    [
        ("liver", "MODEL=METCLI"),
        ("liver=kidney", "not a metcli label"),
        ("spleen=liver", "no label 'spleen'"),
        ("9=liver", "no label '9'"),
        ("liver=liver,liver=lesion", "twice"),
        ("vessel=background", "becomes liver or lesion"),
    ],
)
def test_bad_label_maps_are_usage_errors(spec, words):
    from metcli.segmentation.labelmaps import resolve_label_map

    with pytest.raises(UsageError, match=words):
        resolve_label_map({"background": 0, "liver": 1, "vessel": 3}, spec)


def test_a_model_without_liver_or_lesion_names_needs_a_label_map():
    from metcli.segmentation.labelmaps import resolve_label_map

    with pytest.raises(UsageError, match="--label-map"):
        resolve_label_map({"background": 0, "spleen": 1, "kidney": 2})


def test_apply_label_map_keeps_the_grid_and_drops_unmapped_labels():
    from metcli.segmentation.labelmaps import apply_label_map

    array = np.array([[[0, 1, 2, 3, 5]]], np.uint8)
    image = make_image(
        array, spacing=(0.7, 0.8, 2.5), origin=(1, 2, 3), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    out = apply_label_map(image, {5: 1, 2: 2})
    assert sitk.GetArrayFromImage(out).tolist() == [[[0, 0, 2, 0, 1]]]
    assert out.GetPixelID() == sitk.sitkUInt8
    from metcli.imaging.geometry import grid_difference

    assert grid_difference(out, image) is None


# ----------------------------------------------------------------------------- model folders
def test_model_digest_is_the_sha256_of_a_sha256sum_listing():
    import hashlib

    from metcli.segmentation.models import model_digest

    files = {"plans.json": "b" * 64, "dataset.json": "a" * 64}
    text = f"{'a' * 64}  dataset.json\n{'b' * 64}  plans.json\n"
    assert model_digest(files) == hashlib.sha256(text.encode()).hexdigest()
    assert model_digest(dict(reversed(list(files.items())))) == model_digest(files)


def test_a_model_folder_without_plans_json_is_refused(tmp_path):
    from metcli.segmentation.models import resolve_segmentation_model

    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}})
    )
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    with pytest.raises(InputError, match="no plans.json"):
        resolve_segmentation_model(folder)


def test_a_multichannel_model_is_refused(tmp_path):
    from metcli.segmentation.nnunet import read_model_folder

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    (folder / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "liver": 1}}
        )
    )
    with pytest.raises(InputError, match="2 input channels"):
        read_model_folder(folder)


def test_folds_are_found_and_checked(tmp_path):
    from metcli.segmentation.nnunet import resolve_folds

    for fold in ("0", "1", "all"):
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    (tmp_path / "fold_2").mkdir()  # no checkpoint
    assert resolve_folds(tmp_path, None) == ["0", "1"]
    assert resolve_folds(tmp_path, ["1", 0, "1"]) == ["1", "0"]
    assert resolve_folds(tmp_path, ["all"]) == ["all"]
    with pytest.raises(InputError, match="fold 2"):
        resolve_folds(tmp_path, [2])
    with pytest.raises(UsageError, match="not a fold"):
        resolve_folds(tmp_path, ["x"])


def test_an_unknown_model_name_lists_the_known_ones(runner, raw, tmp_path):
    result = invoke(
        runner, ["segment", raw, tmp_path / "seg", "--model", "no-such-model"], expect=2
    )
    assert "no-such-model" in result.stderr and "metcli-demo-nnunet" in result.stderr
    assert result.stdout == ""


def test_backend_and_model_kind_must_agree(tmp_path):
    from metcli.segmentation.models import resolve_segmentation_model

    if not DEMO.is_dir():
        pytest.skip("the demo model is not built")
    with pytest.raises(UsageError, match="not an ONNX export"):
        resolve_segmentation_model(None, backend="onnx")
    with pytest.raises(UsageError, match="--folds"):
        resolve_segmentation_model(None, backend="onnx", folds=[0])


def test_the_demo_model_matches_its_sha256sums():
    from metcli.segmentation.models import resolve_segmentation_model

    if not DEMO.is_dir():
        pytest.skip("the demo model is not built")
    model = resolve_segmentation_model(None)
    assert model.name == "metcli-demo-nnunet" and model.from_manifest
    sums = {
        line.split()[1]: line.split()[0]
        for line in (DEMO / "SHA256SUMS").read_text().splitlines()
        if line.strip()
    }
    assert model.files == sums
    assert model.path.resolve() == DEMO.resolve()


def test_a_changed_shipped_file_is_refused(tmp_path, monkeypatch):
    import shutil

    from metcli.io import weights
    from metcli.segmentation.models import resolve_segmentation_model

    if not DEMO.is_dir():
        pytest.skip("the demo model is not built")
    copy = tmp_path / "demo" / "metcli-demo-nnunet"
    shutil.copytree(DEMO, copy)
    (copy / "plans.json").write_text((copy / "plans.json").read_text() + "\n")
    monkeypatch.setattr(weights, "shipped_dir", lambda: tmp_path)
    monkeypatch.setattr(weights, "manifest_path", lambda: DEMO.parents[1] / "manifest.json")
    with pytest.raises(InputError, match="plans.json"):
        resolve_segmentation_model("metcli-demo-nnunet")


def test_the_demo_checkpoint_loads_without_unpickling_objects():
    torch = pytest.importorskip("torch")
    if not DEMO.is_dir():
        pytest.skip("the demo model is not built")
    checkpoint = torch.load(
        DEMO / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True
    )
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert "optimizer_state" not in checkpoint
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size <= 20e6
    assert "only knows synthetic" in (DEMO / "README.md").read_text()


def test_nnunet_environment_is_set_and_restored(monkeypatch):
    from metcli.segmentation.nnunet import NNUNET_FOLDERS, nnunet_environment

    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.setenv("nnUNet_results", "/somewhere")
    with nnunet_environment():
        assert all(os.environ.get(key) for key in NNUNET_FOLDERS)
        assert os.environ["nnUNet_results"] == "/somewhere"
        tmp = Path(os.environ["nnUNet_raw"]).parent
    assert "nnUNet_raw" not in os.environ and os.environ["nnUNet_results"] == "/somewhere"
    assert not tmp.exists()


# ----------------------------------------------------------------------------- CT checks
def test_cts_with_nans_or_the_wrong_dimension_are_refused():
    from metcli.segmentation.nnunet import check_ct

    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(ImageError, match="1 voxel"):
        check_ct(make_image(array))
    with pytest.raises(ImageError, match="2D"):
        check_ct(make_image(np.zeros((5, 6), np.float32)))
    assert check_ct(make_image(np.ones((4, 5, 6), np.int16))).dtype == np.float32


# ----------------------------------------------------------------------------- the backend
def test_backend_labels_and_prediction_on_the_cts_grid(demo_segmenter, phantoms):
    from metcli.imaging.geometry import grid_difference

    assert demo_segmenter.labels == {"background": 0, "liver": 1, "lesion": 2}
    assert demo_segmenter.folds == ["0"] and demo_segmenter.configuration == "3d_fullres"
    ct, truth = phantoms["001"]
    # An origin and spacing of its own: the label image must come back on exactly that grid.
    ct = sitk.Image(ct)
    ct.SetOrigin((12.25, -40.5, 7.0))
    seg = demo_segmenter.predict(ct)
    assert grid_difference(seg, ct) is None and seg.GetOrigin() == ct.GetOrigin()
    pred, true = sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(truth)
    assert set(np.unique(pred)) <= {0, 1, 2}
    assert dice(pred > 0, true > 0) > 0.9


def test_backend_follows_nnunets_axis_order(demo_segmenter, phantoms):
    """Without an orientation, a CT stored with x reversed (direction negated) is given
    to nnU-Net as its array, as nnU-Net's SimpleITKIO does; the mask comes back on that
    CT's grid and, on a crop around the liver, describes the same physical liver."""
    ct, _truth = phantoms["002"]
    assert demo_segmenter.orientation is None
    seg = sitk.GetArrayFromImage(demo_segmenter.predict(ct))
    flipped = sitk.Flip(ct, [True, False, False])  # voxels reversed, direction negated
    seg_flipped = demo_segmenter.predict(flipped)
    assert seg_flipped.GetDirection() == flipped.GetDirection()
    back = sitk.GetArrayFromImage(seg_flipped)[:, :, ::-1]
    assert dice(back > 0, seg > 0) > 0.95


def test_backend_with_an_orientation_gives_the_same_physical_labels(phantoms):
    """With orientation LPS (the demo model's), the same physical CT stored flipped and
    permuted gets exactly the same physical labels: the network sees the same array."""
    _needs_nnunet()
    from metcli.segmentation.nnunet import NnunetSegmenter

    segmenter = NnunetSegmenter(DEMO, device="cpu", tta=False, orientation="LPS")
    ct, _truth = phantoms["002"]
    seg = segmenter.predict(ct)
    stored_otherwise = sitk.PermuteAxes(sitk.Flip(ct, [True, False, True]), [1, 0, 2])
    seg_other = segmenter.predict(stored_otherwise)
    assert seg_other.GetDirection() == stored_otherwise.GetDirection()
    back = sitk.Resample(seg_other, seg, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(seg))
    with pytest.raises(UsageError, match="three-letter"):
        NnunetSegmenter(DEMO, device="cpu", tta=False, orientation="XYZ")


def test_the_demo_model_is_run_in_its_manifest_orientation():
    from metcli.segmentation.models import resolve_segmentation_model

    assert resolve_segmentation_model(None).orientation == "LPS"
    assert resolve_segmentation_model(None, orientation="as-stored").orientation is None
    assert resolve_segmentation_model(str(DEMO)).orientation is None  # a named folder
    assert resolve_segmentation_model(str(DEMO), orientation="ras").orientation == "RAS"


def test_backend_refuses_a_ct_with_nans(demo_segmenter, phantoms):
    ct = sitk.Cast(phantoms["001"][0], sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(ct)
    array[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(ct)
    with pytest.raises(ImageError, match="NaN"):
        demo_segmenter.predict(bad)


# ----------------------------------------------------------------------------- the command
def test_segment_writes_masks_on_the_ct_grid_with_provenance(
    runner, raw, tmp_path, phantoms, monkeypatch
):
    _needs_nnunet()
    from metcli.imaging.geometry import grid_difference
    from metcli.segmentation import nnunet as nnunet_backend
    from metcli.segmentation.models import resolve_segmentation_model

    loads = []
    original = nnunet_backend.NnunetSegmenter.__init__

    def counting(self, *args, **kwargs):
        loads.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(nnunet_backend.NnunetSegmenter, "__init__", counting)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    out = tmp_path / "seg"
    import torch

    threads_before = torch.get_num_threads()
    result = invoke(runner, ["segment", raw, out, "--no-tta", "--device", "cpu", "--threads", "1"])
    assert result.stdout == ""
    assert len(loads) == 1  # once for both participants
    assert loads[0]["threads"] == 1 and torch.get_num_threads() == threads_before
    assert "nnUNet_raw" not in os.environ
    model = resolve_segmentation_model(None)
    for sub, (ct, truth) in phantoms.items():
        seg = sitk.ReadImage(str(seg_path(out, sub)))
        assert grid_difference(seg, ct) is None
        assert seg.GetPixelID() == sitk.sitkUInt8
        pred, true = sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(truth)
        assert dice(pred > 0, true > 0) > 0.9
        sidecar = read_json(
            seg_path(out, sub).with_name(f"sub-{sub}_ce-portal_dseg.json"), schema="sidecar"
        )
        record = sidecar["Provenance"]["models"][0]
        assert record["name"] == "metcli-demo-nnunet" and record["sha256"] == model.sha256
        assert sidecar["Provenance"]["settings"]["tta"] is False
        assert sidecar["TorchThreads"] == 1  # recorded, not a setting
        assert "threads" not in json.dumps(sidecar["Provenance"]["settings"])
        assert sidecar["Sources"] == [f"bids:raw:sub-{sub}/anat/sub-{sub}_ce-portal_ct.nii.gz"]
    assert [row["name"] for row in read_tsv(out / "dseg.tsv")] == ["background", "liver", "lesion"]
    description = read_json(out / "dataset_description.json")
    assert description["DatasetType"] == "derivative"

    # Re-running skips both without loading the model; --overwrite redoes one.
    before = seg_path(out, "001").stat().st_mtime_ns
    result = invoke(runner, ["segment", raw, out, "--no-tta", "--device", "cpu", "--threads", "2"])
    assert "0 done, 2 skipped" in result.stderr and len(loads) == 1
    result = invoke(
        runner,
        [
            "segment",
            raw,
            out,
            "--no-tta",
            "--device",
            "cpu",
            "--overwrite",
            "--participant-label",
            "001",
            "--threads",
            "1",
        ],
    )
    assert "1 done, 0 skipped" in result.stderr and len(loads) == 2
    assert seg_path(out, "001").stat().st_mtime_ns != before
    # Other settings are other outputs: the skip rule redoes them.
    result = invoke(
        runner,
        [
            "segment",
            raw,
            out,
            "--no-tta",
            "--device",
            "cpu",
            "--step-size",
            "0.75",
            "--participant-label",
            "002",
            "--threads",
            "1",
        ],
    )
    assert "1 done" in result.stderr


def test_a_label_map_on_the_command_line(runner, raw, tmp_path, phantoms):
    _needs_nnunet()
    out = tmp_path / "seg"
    invoke(
        runner,
        [
            "segment",
            raw,
            out,
            "--no-tta",
            "--device",
            "cpu",
            "--participant-label",
            "001",
            "--label-map",
            "liver=lesion,lesion=liver",
        ],
    )
    swapped = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path(out, "001"))))
    truth = sitk.GetArrayFromImage(phantoms["001"][1])
    assert dice(swapped == 2, truth == 1) > 0.9
    sidecar = read_json(seg_path(out, "001").with_name("sub-001_ce-portal_dseg.json"))
    assert sidecar["Provenance"]["settings"]["label_map"] == {"1": 2, "2": 1}


@pytest.mark.parametrize(
    "problem, words",
    [
        ("corrupt", "cannot read the CT"),
        ("4d", "4D"),
        ("nan", "NaN"),
    ],
)
def test_a_bad_ct_fails_only_its_participant(runner, raw, tmp_path, phantoms, problem, words):
    _needs_nnunet()
    bad = raw / Entities(sub="003", ce="portal", suffix="ct").relpath()
    bad.parent.mkdir(parents=True)
    ct = phantoms["001"][0]
    if problem == "corrupt":
        bad.write_bytes(b"\x1f\x8b not really a gzip file")
    elif problem == "4d":
        sitk.WriteImage(sitk.JoinSeries([ct, ct]), str(bad))
        assert sitk.ReadImage(str(bad)).GetDimension() == 4
    else:
        array = sitk.GetArrayFromImage(ct).astype(np.float32)
        array[3, 4, 5] = np.nan
        write_ct(raw, "003", make_image(array, ct.GetSpacing(), ct.GetOrigin()))
    out = tmp_path / "seg"
    result = invoke(
        runner,
        [
            "segment",
            raw,
            out,
            "--no-tta",
            "--device",
            "cpu",
            "--participant-label",
            "001",
            "--participant-label",
            "003",
        ],
        expect=3,
    )
    assert "1 done, 0 skipped (already done), 1 failed" in result.stderr
    assert "sub-003" in result.stderr and words in result.stderr
    assert seg_path(out, "001").is_file() and not seg_path(out, "003").exists()


def test_user_model_folder_that_is_not_a_model_exits_1(runner, raw, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "dataset.json").write_text("{}")
    result = invoke(runner, ["segment", raw, tmp_path / "seg", "--model", folder], expect=1)
    assert "plans.json" in result.stderr


def test_output_inside_the_input_is_refused(runner, raw):
    result = invoke(runner, ["segment", raw, raw / "sub-001" / "seg"], expect=2)
    assert "inside the input" in result.stderr


def test_an_unknown_participant_is_a_usage_error(runner, raw, tmp_path):
    result = invoke(
        runner, ["segment", raw, tmp_path / "seg", "--participant-label", "099"], expect=2
    )
    assert "001" in result.stderr


def test_group_level_only_writes_the_label_table(runner, raw, tmp_path):
    out = tmp_path / "seg"
    invoke(runner, ["segment", raw, out, "--level", "group"])
    assert (out / "dseg.tsv").is_file() and not (out / "sub-001").exists()


# ----------------------------------------------------------------------------- quality
@pytest.mark.slow
def test_demo_model_quality_on_three_fresh_scans():
    """Issue 3's targets on whole scans of a cohort the model was not trained on."""
    _needs_nnunet()
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "demo_model_quality", REPO / "benchmarks" / "demo_model_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run(subjects=3, tta=False, device="cpu")
    assert summary["liver_dice"] >= 0.95
    assert summary["lesions_10mm"] >= 3
    assert summary["lesion_dice_10mm"] >= 0.80
    assert summary["detection_10mm"] >= 0.90
