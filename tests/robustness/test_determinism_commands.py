"""Determinism, command by command (issue 13, item 10): the same inputs and seed, the same bytes.

Every command runs twice on the same inputs with the same options (and seed) into
two folders at the same depth, at the same time, in two subprocesses with
PYTHONHASHSEED 1 and 2 (as two shells would: Python's hash seed is random unless set);
where it takes ``--jobs``, the first run has ``--jobs 1`` and the second ``--jobs 2``.
Every file of the two output folders is compared byte for byte, sidecars and
``dataset_description.json`` included (its DatasetLinks are paths relative to the
output folder, equal at the same depth), and no temporary file may be left.

The first run's outputs are the next command's inputs: synth's cohort (with
``--dicom``) for import-dicom, import-mask, split-lesions, extract and train-cnn;
extract's features for train-radiomics and predict; the models for predict; the
predictions for evaluate. segment and evaluate-seg run on a cohort of two CTs.

What differs, by name, and why (see test_kill_resume.BY_DESIGN and CHECKPOINT_DEFECT):

- ``model/model.json`` of train-cnn, by design: ``training.seconds_per_epoch`` is a
  duration, and ``card_sha256`` is the checksum of the card that holds it. Compared
  without those two keys;
- ``model/checkpoint.pt`` of train-cnn differed until the checkpoint was saved through
  memory (the records of its zip archive were named after the random temporary file);
  compared by its records and byte for byte.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner
from test_kill_resume import (
    Run,
    assert_same_files,
    digests,
    is_temporary,
    listing,
)

from conftest import REPO, invoke

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs use process groups"),
]

DEMO_MODEL = REPO / "weights" / "demo" / "metcli-demo-nnunet"
QUIET = ["--no-progress", "-q"]
CNN = [
    "--arch",
    "densenet121",
    "--size",
    "32",
    "--epochs",
    "2",
    "--val-patients",
    "1",
    "--test-patients",
    "1",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--seed",
    "3",
]
RADIOMICS = [
    "--classifiers",
    "logistic-regression,random-forest",
    "--sampler",
    "none,smote",
    "--cv-folds",
    "3",
    "--cv-repeats",
    "1",
    "--inner-folds",
    "2",
    "--importance-trees",
    "10",
    "--importance-repeats",
    "2",
    "--seed",
    "4",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("twice")


@pytest.fixture(scope="module")
def twice(work):
    """twice(name, args_of, first=(), second=()) runs ``metcli ARGS`` twice at once, into
    ``work/name-1/out`` and ``work/name-2/out`` (PYTHONHASHSEED 1 and 2; ``first`` and
    ``second`` are added to each); returns the two output folders, once both succeeded."""
    started: list[Run] = []

    def _twice(
        name: str, args_of: Callable[[Path], list], first=(), second=()
    ) -> tuple[Path, Path]:
        runs = []
        for seed, extra in ((1, first), (2, second)):
            env = {
                **os.environ,
                "PYTHONHASHSEED": str(seed),
                "METCLI_HOME": str(work / "metcli-home"),
            }
            out = work / f"{name}-{seed}" / "out"
            runs.append(Run([*args_of(out), *extra], out, work / f"{name}-{seed}" / "log.txt", env))
            started.extend(runs[-1:])
        return runs[0].wait(), runs[1].wait()

    yield _twice
    for run in started:  # nothing of this module goes on running
        run.kill()


def assert_same_outputs(pair: tuple[Path, Path], what: str) -> dict[str, str]:
    """Both folders hold the same files with the same bytes (as compared by
    test_kill_resume.canonical) and no temporary file; returns the first's digests."""
    for root in pair:
        left = [n for n in listing(root) if is_temporary(n)]
        assert not left, f"{what}: temporary files left in {root}: {left}"
    first, second = (digests(root) for root in pair)
    assert first, f"{what}: no output"
    assert_same_files(second, first, what)
    return first


# ----------------------------------------------------------------------------- the chain
@pytest.fixture(scope="module")
def synthed(twice) -> tuple[Path, Path]:
    """6 participants (3 colorectal, 3 pancreatic) with DICOM series."""
    return twice(
        "synth-dicom",
        lambda out: [
            "synth",
            out,
            "--colorectal",
            3,
            "--pancreatic",
            3,
            "--seed",
            21,
            "--dicom",
            *QUIET,
        ],
    )


@pytest.fixture(scope="module")
def cohort(synthed) -> Path:
    return synthed[0]


@pytest.fixture(scope="module")
def split(twice, cohort) -> tuple[Path, Path]:
    return twice(
        "split-lesions",
        lambda out: [
            "split-lesions",
            cohort / "derivatives" / "truth",
            out,
            "--min-diameter-mm",
            "5",
            *QUIET,
        ],
    )


@pytest.fixture(scope="module")
def extracted(twice, cohort, split) -> tuple[Path, Path]:
    return twice(
        "extract",
        lambda out: ["extract", cohort / "rawdata", split[0], out, *QUIET],
        first=["--jobs", "1"],
        second=["--jobs", "2"],
    )


@pytest.fixture(scope="module")
def two_cts(work) -> Path:
    root = work / "two-cts"
    invoke(CliRunner(), ["synth", root, "--subjects", 2, "--seed", 22, "-q"])
    return root


@pytest.fixture(scope="module")
def segmented(twice, two_cts) -> tuple[Path, Path]:
    return twice(
        "segment",
        lambda out: [
            "segment",
            two_cts / "rawdata",
            out,  # the default model: the shipped demo model
            "--no-tta",
            "--device",
            "cpu",
            "--threads",
            "1",
            *QUIET,
        ],
    )


@pytest.fixture(scope="module")
def radiomics_models(twice, cohort, extracted) -> tuple[Path, Path]:
    return twice(
        "train-radiomics",
        lambda out: [
            "train-radiomics",
            extracted[0],
            out,
            "--labels",
            cohort / "rawdata" / "participants.tsv",
            *RADIOMICS,
            *QUIET,
        ],
        first=["--jobs", "1"],
        second=["--jobs", "2"],
    )


@pytest.fixture(scope="module")
def cnn_models(twice, cohort, split) -> tuple[Path, Path]:
    return twice(
        "train-cnn",
        lambda out: [
            "train-cnn",
            cohort / "rawdata",
            split[0],
            out,
            "--labels",
            cohort / "rawdata" / "participants.tsv",
            *CNN,
            *QUIET,
        ],
    )


@pytest.fixture(scope="module")
def radiomics_predictions(twice, cohort, extracted, radiomics_models) -> tuple[Path, Path]:
    return twice(
        "predict-radiomics",
        lambda out: [
            "predict",
            radiomics_models[0] / "random-forest_smote",
            extracted[0],
            out,
            "--participants",
            cohort / "rawdata" / "participants.tsv",
            "--aggregate",
            "max",
            *QUIET,
        ],
    )


@pytest.fixture(scope="module")
def image_predictions(twice, cohort, split, cnn_models) -> tuple[Path, Path]:
    return twice(
        "predict-image",
        lambda out: [
            "predict",
            cnn_models[0] / "model",
            cohort / "rawdata",
            split[0],
            out,
            "--device",
            "cpu",
            "--threads",
            "1",
            *QUIET,
        ],
    )


# ----------------------------------------------------------------------------- tests
def test_synth_with_dicom(synthed):
    files = assert_same_outputs(synthed, "synth --dicom")
    assert any(n.startswith("sourcedata/dicom/sub-006/") for n in files)


def test_synth_without_dicom(twice):
    pair = twice("synth", lambda out: ["synth", out, "--subjects", 2, "--seed", 23, *QUIET])
    files = assert_same_outputs(pair, "synth")
    assert "rawdata/participants.tsv" in files


def test_import_dicom(twice, cohort):
    pair = twice(
        "import-dicom",
        lambda out: [
            "import-dicom",
            cohort / "sourcedata" / "dicom" / "sub-004",
            out,
            "--participant-label",
            "004",
            "--phase",
            "portal",
            "--primary",
            "pancreatic",
            *QUIET,
        ],
    )
    files = assert_same_outputs(pair, "import-dicom")
    assert "sub-004/anat/sub-004_ce-portal_ct.nii.gz" in files


def test_import_mask(twice, cohort):
    pair = twice(
        "import-mask",
        lambda out: [
            "import-mask",
            cohort / "derivatives" / "truth" / "sub-002" / "anat" / "sub-002_ce-portal_dseg.nii.gz",
            cohort / "rawdata",
            out,
            "--participant-label",
            "002",
            *QUIET,
        ],
    )
    files = assert_same_outputs(pair, "import-mask")
    assert "sub-002/anat/sub-002_ce-portal_dseg.nii.gz" in files


def test_split_lesions(split):
    files = assert_same_outputs(split, "split-lesions")
    assert {"lesions.tsv", "tumour_burden.tsv"} <= set(files)


def test_extract_with_one_and_two_jobs(extracted):
    files = assert_same_outputs(extracted, "extract --jobs 1 and --jobs 2")
    assert "features.tsv" in files


def test_segment_with_the_demo_model(segmented):
    files = assert_same_outputs(segmented, "segment")
    assert {"dseg.tsv", "sub-002/anat/sub-002_ce-portal_dseg.nii.gz"} <= set(files)


def test_evaluate_seg(twice, work, segmented, two_cts):
    lesions = work / "segment-lesions"
    invoke(CliRunner(), ["split-lesions", segmented[0], lesions, "-q"])
    pair = twice(
        "evaluate-seg",
        lambda out: [
            "evaluate-seg",
            segmented[0],
            two_cts / "derivatives" / "truth",
            out,
            "--lesions",
            lesions,
            "--reference-lesions",
            two_cts / "derivatives" / "truth-lesions",
            "--bootstrap",
            "200",
            "--seed",
            "6",
            *QUIET,
        ],
    )
    files = assert_same_outputs(pair, "evaluate-seg")
    assert {"overlap.tsv", "detection.tsv", "detection_summary.tsv"} <= set(files)


def test_train_radiomics_with_one_and_two_jobs(radiomics_models):
    files = assert_same_outputs(radiomics_models, "train-radiomics --jobs 1 and --jobs 2")
    assert {"results.tsv", "random-forest_smote/model.onnx"} <= set(files)


def test_train_cnn(cnn_models):
    files = assert_same_outputs(cnn_models, "train-cnn")
    assert {"training_log.tsv", "model/model.onnx", "model/checkpoint.pt"} <= set(files)


def test_train_cnn_checkpoint_bytes(cnn_models):
    names = ["model/checkpoint.pt", "model/model.json"]
    first, second = (digests(root, names, defects=False) for root in cnn_models)
    assert_same_files(second, first, "train-cnn's checkpoint and card")


def test_predict_with_a_radiomics_model(radiomics_predictions):
    files = assert_same_outputs(radiomics_predictions, "predict (radiomics model)")
    assert "predictions.tsv" in files


def test_predict_with_an_image_model(image_predictions):
    files = assert_same_outputs(image_predictions, "predict (image model)")
    assert "predictions.tsv" in files


def test_evaluate(twice, cohort, radiomics_predictions, image_predictions):
    pair = twice(
        "evaluate",
        lambda out: [
            "evaluate",
            radiomics_predictions[0] / "predictions.tsv",
            image_predictions[0] / "predictions.tsv",
            out,
            "--labels",
            cohort / "rawdata" / "participants.tsv",
            "--compare",
            "--level",
            "both",
            "--bootstrap",
            "200",
            "--seed",
            "8",
            *QUIET,
        ],
    )
    files = assert_same_outputs(pair, "evaluate")
    assert {"metrics.tsv", "comparisons.tsv", "report.html", "roc_patient.png"} <= set(files)


def test_export_onnx(twice):
    pair = twice("export-onnx", lambda out: ["export-onnx", DEMO_MODEL, out, *QUIET])
    files = assert_same_outputs(pair, "export-onnx")
    assert {"model.onnx", "preprocessing.json"} <= set(files)
