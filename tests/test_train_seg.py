"""train-seg: metcli folders as an nnU-Net raw dataset, refusals, splits, and real trainings.

The cohort is three tiny synth phantoms (48 x 48 x 24 voxels at 4 x 4 x 5 mm).
The trainings are nnU-Net's own, cut to one or two epochs of two iterations on a
tiny network: they check that the model folder is complete and that segment and
export-onnx take it, not its quality (benchmarks/train_seg_synth.py measures that).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import invoke
from metcli.core.errors import GeometryError, ImageError, InputError, UsageError
from metcli.io.bids import Acquisition, Entities

NNUNET_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA")


def _needs_nnunet():
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three tiny phantoms: rawdata/ and derivatives/truth/."""
    from metcli.synth.phantom import Grid
    from metcli.synth.synth import synth_cohort

    root = tmp_path_factory.mktemp("train-seg") / "cohort"
    grid = Grid(shape=(48, 48, 24), spacing=(4.0, 4.0, 5.0), anatomy_scale=0.45)
    return synth_cohort(
        root, n_colorectal=2, n_pancreatic=1, seed=5, size=grid, truth_lesions=False
    )


@pytest.fixture
def copy_of(cohort, tmp_path):
    """A copy of the cohort that a test may damage."""
    target = tmp_path / "cohort"
    shutil.copytree(cohort, target)
    return target


def _dseg(root: Path, sub: str) -> Path:
    return root / "derivatives" / "truth" / Entities(sub=sub, ce="portal", suffix="dseg").relpath()


def _tiny_plan(**changes):
    from metcli.segmentation import PlanSettings

    settings = dict(
        name="tiny",
        plans_name="nnUNetPlans_tiny",
        patch_size=(16, 32, 32),
        features_per_stage=(4, 8, 16),
        batch_size=2,
        epochs=1,
        iterations_per_epoch=2,
        val_iterations=1,
        save_every=1,
    )
    settings.update(changes)
    return PlanSettings(**settings)


# ----------------------------------------------------------------------------- dataset
def test_raw_dataset_holds_the_cts_and_their_masks(cohort, tmp_path):
    from metcli.segmentation import find_training_cases, write_raw_dataset

    cases = find_training_cases(cohort / "rawdata", cohort / "derivatives" / "truth")
    assert [c.case_id for c in cases] == [f"sub-00{i}_ce-portal_ct" for i in (1, 2, 3)]
    folder = tmp_path / "Dataset990_Test"
    info = write_raw_dataset(cases, folder, name="Test", description="tiny phantoms")
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["labels"] == {"background": 0, "liver": 1, "lesion": 2}
    assert dataset["numTraining"] == 3 and dataset["file_ending"] == ".nii.gz"
    assert info == {"orientations": ["LPS"], "phases": ["portal"], "n": 3}
    for case in cases:
        image = folder / "imagesTr" / f"{case.case_id}_0000.nii.gz"
        assert image.read_bytes() == case.ct.path.read_bytes()
        label = sitk.ReadImage(str(folder / "labelsTr" / f"{case.case_id}.nii.gz"))
        truth = sitk.ReadImage(str(case.dseg.path))
        assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(truth))
        assert label.GetOrigin() == truth.GetOrigin() and label.GetSpacing() == truth.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1, 2}


def test_a_flipped_mask_is_brought_onto_the_cts_grid(copy_of, tmp_path):
    from metcli.segmentation import find_training_cases, write_raw_dataset

    path = _dseg(copy_of, "001")
    truth = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.Flip(truth, [True, False, True]), str(path))  # same voxels in space
    cases = find_training_cases(copy_of / "rawdata", copy_of / "derivatives" / "truth", ["001"])
    write_raw_dataset(cases, tmp_path / "Dataset990_Test", name="Test", description="flip")
    label = sitk.ReadImage(str(tmp_path / "Dataset990_Test/labelsTr/sub-001_ce-portal_ct.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(truth))


# ----------------------------------------------------------------------------- refusals
def test_a_ct_without_a_mask_is_refused(copy_of, tmp_path, runner):
    _dseg(copy_of, "002").unlink()
    result = invoke(
        runner,
        ["train-seg", copy_of / "rawdata", copy_of / "derivatives" / "truth", tmp_path / "m"],
        expect=1,
    )
    assert "sub-002" in result.stderr and "has no mask" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "damage, error, words",
    [
        ("spacing", GeometryError, "same physical grid"),
        ("label", ImageError, "label(s) 3"),
    ],
)
def test_a_mask_on_another_grid_or_with_other_labels_is_refused(
    copy_of, tmp_path, damage, error, words
):
    from metcli.segmentation import find_training_cases, write_raw_dataset

    path = _dseg(copy_of, "003")
    mask = sitk.ReadImage(str(path))
    if damage == "spacing":
        mask.SetSpacing((4.0, 4.0, 4.0))
    else:
        array = sitk.GetArrayFromImage(mask)
        array[0, 0, 0] = 3
        fixed = sitk.GetImageFromArray(array)
        fixed.CopyInformation(mask)
        mask = fixed
    sitk.WriteImage(mask, str(path))
    cases = find_training_cases(copy_of / "rawdata", copy_of / "derivatives" / "truth")
    with pytest.raises(error) as caught:
        write_raw_dataset(cases, tmp_path / "Dataset990_Test", name="Test", description="bad")
    assert words in str(caught.value) and caught.value.fix


def test_a_refused_mask_leaves_no_output_folder(copy_of, tmp_path, runner):
    path = _dseg(copy_of, "002")
    mask = sitk.ReadImage(str(path))
    bad = sitk.Cast(mask, sitk.sitkFloat32) * 0.5
    sitk.WriteImage(bad, str(path))
    args = ["train-seg", copy_of / "rawdata", copy_of / "derivatives" / "truth", tmp_path / "m"]
    result = invoke(runner, [*args, "--fold", "all"], expect=1)
    assert "non-integer values" in result.stderr and "sub-002" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "options, code, words",
    [
        (["--participant-label", "001", "--fold", "all"], 1, "1 training case(s)"),
        (["--val-participants", "002", "--val-participants", "003"], 1, "training case(s)"),
        ([], 2, "needs at least 5 participants"),
        (["--val-participants", "009"], 2, "009"),
        (["--val-participants", "003", "--fold", "1"], 2, "one split"),
        (["--fold", "7"], 2, "not a fold number"),
    ],
)
def test_too_few_training_cases_and_bad_splits_are_refused(
    cohort, tmp_path, runner, options, code, words
):
    args = ["train-seg", cohort / "rawdata", cohort / "derivatives" / "truth", tmp_path / "m"]
    result = invoke(runner, [*args, *options], expect=code)
    assert words in result.stderr and "Fix:" in result.stderr
    assert not (tmp_path / "m").exists()


def test_an_output_folder_inside_the_raw_dataset_is_refused(copy_of, runner):
    raw = copy_of / "rawdata"
    result = invoke(
        runner, ["train-seg", raw, copy_of / "derivatives" / "truth", raw / "model"], expect=2
    )
    assert "inside the input folder" in result.stderr
    assert not (raw / "model").exists()


def test_splits_follow_nnunets_own_but_keep_a_participants_cts_together():
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from metcli.segmentation import TrainingCase
    from metcli.segmentation.train_seg import make_splits

    def case(sub, ce):
        ct = Acquisition(Entities(sub=sub, ce=ce), Path(f"sub-{sub}_ce-{ce}_ct.nii.gz"), Path())
        mask = Acquisition(Entities(sub=sub, ce=ce, suffix="dseg"), Path("m.nii.gz"), Path())
        return TrainingCase(ct, mask)

    subs = [f"00{i}" for i in range(1, 7)]
    one_each = [case(s, "portal") for s in subs]
    splits = make_splits(one_each, ["0", "3"], None)
    expected = generate_crossval_split([c.case_id for c in one_each], seed=12345, n_splits=5)
    assert [{k: sorted(v) for k, v in s.items()} for s in splits] == [
        {k: sorted(v) for k, v in s.items()} for s in expected
    ]
    two_phases = one_each + [case("001", "arterial")]
    for split in make_splits(two_phases, ["0"], None):
        sides = {side for side, ids in split.items() for i in ids if i.startswith("sub-001")}
        assert len(sides) == 1
    assert make_splits(one_each, ["0"], ["sub-002"]) == [
        {
            "train": [c.case_id for c in one_each if c.participant != "002"],
            "val": ["sub-002_ce-portal_ct"],
        }
    ]
    with pytest.raises(UsageError):
        make_splits(one_each, ["all"], ["002"])
    with pytest.raises(InputError):
        make_splits(one_each[:1], ["all"], None)


# ----------------------------------------------------------------------------- training
@pytest.mark.slow
def test_train_seg_writes_a_model_that_segment_and_export_onnx_take(
    cohort, tmp_path, runner, monkeypatch, torch_one_thread
):
    _needs_nnunet()
    import torch

    from metcli.io.schemas import validate

    monkeypatch.setenv("nnUNet_raw", "/nowhere/of/mine")
    for name in NNUNET_VARIABLES[1:]:
        monkeypatch.delenv(name, raising=False)
    before = {name: os.environ.get(name) for name in NNUNET_VARIABLES}
    model = tmp_path / "my-model"
    args = ["train-seg", cohort / "rawdata", cohort / "derivatives" / "truth", model]
    options = ["--fold", "all", "--epochs", "1", "--iterations-per-epoch", "2", "--jobs", "0"]
    options += ["--device", "cpu", "--threads", "1"]
    result = invoke(runner, [*args, *options])
    assert {name: os.environ.get(name) for name in NNUNET_VARIABLES} == before
    assert "\ttrained\tmy-model\tsha256=" in result.stdout
    assert not (model / ".train-seg-work").exists()  # removed after success
    checkpoint = torch.load(
        model / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=True
    )
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert checkpoint["init_args"] == {"configuration": "3d_fullres", "fold": "all"}
    assert 2 not in checkpoint["inference_allowed_mirroring_axes"]  # no left-right mirroring
    entry = json.loads((model / "manifest-entry.json").read_text())
    validate({"manifest_version": 1, "models": [entry]}, "weights_manifest")
    assert entry["label_map"] == {"0": 0, "1": 1, "2": 2}
    assert entry["input"]["orientation"] == "LPS" and entry["input"]["phase"] == "portal"
    sums = dict(line.split("  ")[::-1] for line in (model / "SHA256SUMS").read_text().splitlines())
    assert sums == entry["files"] and set(sums) == {
        "dataset.json",
        "plans.json",
        "fold_all/checkpoint_final.pth",
    }
    sidecar = json.loads((model / "train_seg.json").read_text())
    assert sidecar["Model"]["sha256"] in result.stdout
    assert len(sidecar["Training"]["all"]) == 1

    again = invoke(runner, [*args, *options])
    assert "already trained (skipped)" in again.stdout

    seg = tmp_path / "seg"
    invoke(runner, ["segment", cohort / "rawdata", seg, "--model", model, "--no-tta"])
    out = seg / Entities(sub="001", ce="portal", suffix="dseg").relpath()
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))) <= {0, 1, 2}
    recorded = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    assert recorded["Provenance"]["models"][0]["sha256"] == sidecar["Model"]["sha256"]
    invoke(runner, ["export-onnx", model, tmp_path / "onnx", "--fold", "all"])
    assert (tmp_path / "onnx" / "model.onnx").is_file()


@pytest.mark.slow
def test_a_killed_training_continues_from_nnunets_latest_checkpoint(
    cohort, tmp_path, torch_one_thread
):
    _needs_nnunet()
    import torch

    from metcli.segmentation.train_seg import train_seg

    class Killed(KeyboardInterrupt):
        pass

    epochs_seen = []

    def kill_after_first(fold, figures):
        epochs_seen.append(figures["epoch"])
        if len(epochs_seen) == 1:
            raise Killed()

    def run(on_epoch=None):
        return train_seg(
            cohort / "rawdata",
            cohort / "derivatives" / "truth",
            tmp_path / "model",
            folds=["all"],
            plan=_tiny_plan(epochs=2),
            device="cpu",
            workers=0,
            on_epoch=on_epoch,
        )

    before = {name: os.environ.get(name) for name in NNUNET_VARIABLES}
    with pytest.raises(Killed):
        run(kill_after_first)
    assert {name: os.environ.get(name) for name in NNUNET_VARIABLES} == before
    work = tmp_path / "model" / ".train-seg-work"
    assert list(work.rglob("checkpoint_latest.pth"))
    assert not (tmp_path / "model" / "SHA256SUMS").exists()
    result = run(lambda fold, figures: epochs_seen.append(figures["epoch"]))
    assert epochs_seen == [1, 2]  # the second run trained epoch 2 only
    assert not result.skipped and not work.exists()
    checkpoint = torch.load(
        tmp_path / "model" / "fold_all" / "checkpoint_final.pth", weights_only=True
    )
    assert checkpoint["current_epoch"] == 2
