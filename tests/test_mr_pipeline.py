"""The MR must-show of issue 14: a non-contrast liver MRI cohort from DICOM to predictions.

``synth --modality mr --dicom`` (benign, HCC, metastasis; T2w and DWI on their own grids)
-> ``import-dicom`` of each participant's T2w and DWI series into a new raw dataset (the
labels through ``--primary``) -> ``extract --channels ... --reference T2w`` on the lesion
maps of synth's truth -> ``train-radiomics`` -> ``train-cnn --phases T2w,DWI-b800,ADC``
-> ``predict`` with the CNN reproduces its validation predictions, and the card records
each channel's normalisation. Everything runs through the command line.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import invoke
from metcli.io.files import read_json, read_tsv
from metcli.io.participants import read_participants
from metcli.io.schemas import validate

#: The whole chain takes about 45 s on 2 cores; it runs in every ``make test``.
pytestmark = pytest.mark.slow

CHANNELS = "T2w,DWI-b800,ADC"
CNN = ["--arch", "resnet18", "--size", "32", "--epochs", "1", "--val-patients", "3"]
CNN += ["--test-patients", "0", "--device", "cpu", "--threads", "1", "--seed", "3"]
RADIOMICS = ["--classifiers", "random-forest", "--sampler", "none", "--cv-folds", "3"]
RADIOMICS += ["--cv-repeats", "1", "--inner-folds", "2", "--importance-trees", "20"]
RADIOMICS += ["--importance-repeats", "2", "--max-features", "5"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """One PyTorch thread (conftest.torch_one_thread)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """synth's MR cohort with its DICOM series, imported series by series into a new raw
    dataset."""
    root = tmp_path_factory.mktemp("mrpipe")
    runner = CliRunner()
    synth = root / "synth"
    invoke(runner, ["synth", synth, "--modality", "mr", "--dicom", "--seed", 4, "-q"])
    raw = root / "raw"
    for row in read_participants(synth / "rawdata"):
        series = synth / "sourcedata" / "dicom" / row["participant_id"]
        label = row["participant_id"][4:]
        common = ["import-dicom", series, raw, "--participant-label", label, "-q"]
        invoke(runner, [*common, "--channel", "T2w", "--primary", row["primary"]])
        invoke(runner, [*common, "--channel", "DWI"])
    return {
        "root": root,
        "synth": synth,
        "raw": raw,
        "lesions": synth / "derivatives" / "truth-lesions",
    }


def test_the_imported_dataset_is_synths(world):
    mine = read_participants(world["synth"] / "rawdata")
    imported = read_participants(world["raw"])
    assert [(r["participant_id"], r["primary"]) for r in imported] == [
        (r["participant_id"], r["primary"]) for r in mine
    ]
    assert {r["primary"] for r in imported} == {"benign", "hcc", "metastasis"}
    for row in imported:
        sub = row["participant_id"]
        for rel in (f"anat/{sub}_T2w.nii.gz", f"dwi/{sub}_dwi.nii.gz", f"dwi/{sub}_dwi.bval"):
            assert (world["raw"] / sub / rel).is_file()
    assert not list(world["raw"].rglob("*_ADC.nii.gz"))  # the ADC is computed from the DWI


@pytest.mark.parametrize(
    "channels",
    [
        CHANNELS,
        "T2w,ADC",
    ],
    ids=["T2w-DWI-ADC", "T2w-ADC"],
)
def test_extract_over_the_channels_and_train_radiomics(world, channels, runner):
    features = world["root"] / f"features-{channels.replace(',', '-')}"
    invoke(
        runner,
        ["extract", world["raw"], world["lesions"], features, "--channels", channels,
         "--reference", "T2w", "--no-progress", "-q"],
    )  # fmt: skip
    rows = read_tsv(features / "features.tsv")
    assert rows and all(r["status"] == "ok" for r in rows)
    names = channels.split(",")
    for name in names:
        assert f"{name.replace('-', '_')}_original_firstorder_Median" in rows[0]
    settings = read_json(features / "sub-001" / "anat" / "sub-001_desc-radiomics_features.json")
    assert settings["Channels"]["T2w"]["registration"] == "reference"
    models = world["root"] / f"models-{channels.replace(',', '-')}"
    invoke(
        runner,
        ["train-radiomics", features, models, "--labels", world["raw"] / "participants.tsv",
         *RADIOMICS, "--no-progress", "-q"],
    )  # fmt: skip
    results = read_tsv(models / "results.tsv")
    assert {r["level"] for r in results} == {"patient", "lesion"}
    card = read_json(models / "random-forest_none" / "model.json")
    validate(card, "model_card")
    assert card["classes"] == ["benign", "hcc", "metastasis"]
    assert (models / "random-forest_none" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def cnn(world) -> dict:
    out = world["root"] / "cnn"
    invoke(
        CliRunner(),
        ["train-cnn", world["raw"], world["lesions"], out, "--labels",
         world["raw"] / "participants.tsv", "--phases", CHANNELS, *CNN, "--no-progress", "-q"],
    )  # fmt: skip
    return {"out": out, "card": read_json(out / "model" / "model.json")}


def test_the_card_records_each_channels_normalisation(cnn):
    card = cnn["card"]
    validate(card, "cnn_card")
    assert card["input"]["channels"] == CHANNELS.split(",")
    assert card["input"]["shape"] == ["batch", 3, 32, 32]
    assert card["classes"] == ["benign", "hcc", "metastasis"]
    zscore = {"method": "zscore", "lower_percentile": 0.5, "upper_percentile": 99.5, "n4": False}
    assert card["preprocessing"]["channel_intensity"] == dict.fromkeys(CHANNELS.split(","), zscore)
    assert "lesion map's grid" in card["preprocessing"]["channel_grids"]


def test_predict_with_the_cnn_reproduces_the_validation_predictions(world, cnn, runner):
    out = world["root"] / "predict"
    expected = read_tsv(cnn["out"] / "val_predictions.tsv")
    chosen = sorted({r["participant_id"] for r in expected})
    labels = [arg for pid in chosen for arg in ("--participant-label", pid)]
    invoke(
        runner,
        ["predict", cnn["out"] / "model", world["raw"], world["lesions"], out, "--device", "cpu",
         *labels, "--level", "both", "--no-progress", "-q"],
    )  # fmt: skip
    got = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(out / "predictions.tsv")
    }
    assert len(chosen) == 3
    for row in expected:
        mine = got[(row["participant_id"], row["lesion_id"], row["level"])]
        for column in ("prob_benign", "prob_hcc", "prob_metastasis"):
            assert abs(float(mine[column]) - float(row[column])) < 1e-5, (row, mine)
