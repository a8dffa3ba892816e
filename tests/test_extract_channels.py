"""extract --channels (issue 14, items 3 and 5): CT phases on their own grids, brought
onto the reference channel's grid (optionally registered), one row per lesion with every
channel's features, the liver's features, and the errors of a channel that is missing or
does not cover a lesion.

The second phase is made from synth's portal CT with SimpleITK: another slice thickness
(3 mm), another origin, a known shift of the anatomy and a known intensity change
(0.8 x HU + 20), so what the features must be is known.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from metcli.io.files import read_tsv

SHIFT_MM = (1.5, -2.0, 0.0)  # the arterial image at q shows the portal anatomy at q + SHIFT


def make_arterial(portal_ct: Path, *, shift=SHIFT_MM, z_keep: float = 1.0) -> Path:
    """A second phase of ``portal_ct`` on its own grid; ``z_keep`` < 1 cuts its z extent."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(portal_ct))
    spacing, size = image.GetSpacing(), image.GetSize()
    slices = int(size[2] * spacing[2] / 3.0 * z_keep) + (4 if z_keep == 1.0 else 0)
    grid = sitk.Image([size[0], size[1], slices], sitk.sitkInt16)
    grid.SetSpacing((spacing[0], spacing[1], 3.0))
    grid.SetDirection(image.GetDirection())
    origin = list(image.GetOrigin())
    origin[0] += 2.5
    origin[2] -= 6.0 if z_keep == 1.0 else 0.0
    grid.SetOrigin(origin)
    moved = sitk.Resample(
        image, grid, sitk.TranslationTransform(3, shift), sitk.sitkLinear, -1000, sitk.sitkInt16
    )
    remapped = sitk.Cast(sitk.Cast(moved, sitk.sitkFloat32) * 0.8 + 20, sitk.sitkInt16)
    target = Path(str(portal_ct).replace("ce-portal", "ce-arterial"))
    sitk.WriteImage(remapped, str(target), True)
    shutil.copy(str(portal_ct).replace(".nii.gz", ".json"), str(target).replace(".nii.gz", ".json"))
    return target


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("channels") / "cohort"
    invoke(CliRunner(), ["synth", out, "--subjects", 3, "-q"])
    for ct in sorted((out / "rawdata").rglob("*_ce-portal_ct.nii.gz")):
        make_arterial(ct)
    return out


def extract(runner, cohort: Path, out: Path, *extra, expect=0):
    return invoke(
        runner,
        [
            "extract",
            cohort / "rawdata",
            cohort / "derivatives" / "truth-lesions",
            out,
            "--channels",
            "arterial,portal",
            *extra,
        ],
        expect=expect,
    )


def test_channels_on_their_own_grids_give_one_row_per_lesion(runner, cohort, tmp_path):
    out = tmp_path / "features"
    extract(
        runner,
        cohort,
        out,
        "--register",
        "rigid",
        "--seg",
        cohort / "derivatives" / "truth",
        "--liver-features",
    )
    rows = read_tsv(out / "features.tsv")
    truth = read_tsv(cohort / "derivatives" / "truth-lesions" / "lesions.tsv")
    assert len(rows) == sum(r["kept"] == "true" for r in truth)
    assert {r["phase"] for r in rows} == {"portal"}  # the reference channel
    columns = list(rows[0])
    assert "portal_original_shape_MeshVolume" in columns
    assert not [c for c in columns if c.startswith("arterial_original_shape")]
    assert "arterial_original_glcm_Contrast" in columns
    assert "liver_arterial_original_firstorder_Mean" in columns
    # the registration recovered the shift: reference point p shows in arterial at p - SHIFT
    for sidecar in sorted(out.rglob("sub-*_features.json")):
        record = json.loads(sidecar.read_text())["Channels"]
        assert record["portal"] == {"registration": "reference"}
        found = record["arterial"]["transform"]
        assert np.allclose(found["translation_mm"], -np.asarray(SHIFT_MM), atol=0.5), found
        assert np.abs(found["rotation_deg"]).max() < 0.5
    # intensities through the right voxels: arterial = 0.8 x portal + 20 (partial volume of
    # the 3 mm slices aside), in the lesions and in the liver
    big = [r for r in rows if float(r["portal_original_shape_VoxelVolume"]) > 500]
    assert big
    for row in big:
        expected = 0.8 * float(row["portal_original_firstorder_Median"]) + 20
        assert abs(float(row["arterial_original_firstorder_Median"]) - expected) < 8, row
    liver = [
        (
            float(r["liver_arterial_original_firstorder_Median"]),
            float(r["liver_portal_original_firstorder_Median"]),
        )
        for r in rows
    ]
    assert all(abs(a - (0.8 * p + 20)) < 4 for a, p in liver), liver


def test_without_registration_the_grid_change_alone_is_resampled(runner, cohort, tmp_path):
    """A channel that only lies on another grid (no motion): no registration needed."""
    moved = tmp_path / "raw"
    shutil.copytree(cohort / "rawdata", moved)
    for ct in sorted(moved.rglob("*_ce-portal_ct.nii.gz")):
        make_arterial(ct, shift=(0.0, 0.0, 0.0))
    out = tmp_path / "features"
    invoke(
        runner,
        [
            "extract",
            moved,
            cohort / "derivatives" / "truth-lesions",
            out,
            "--channels",
            "portal,arterial",
        ],
    )
    rows = read_tsv(out / "features.tsv")
    for row in rows:
        if float(row["portal_original_shape_VoxelVolume"]) > 500:
            expected = 0.8 * float(row["portal_original_firstorder_Median"]) + 20
            assert abs(float(row["arterial_original_firstorder_Median"]) - expected) < 8
    sidecar = json.loads(next(out.rglob("sub-*_features.json")).read_text())
    assert sidecar["Channels"]["arterial"] == {"registration": "none", "resampled": True}
    assert sidecar["Provenance"]["settings"]["channels"] == ["portal", "arterial"]


def test_a_channel_that_misses_a_lesion_fails_that_participant(runner, cohort, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(cohort / "rawdata", raw)
    short = raw / "sub-001" / "anat" / "sub-001_ce-portal_ct.nii.gz"
    make_arterial(short, z_keep=0.3)  # covers only the first 30% of the slices
    result = invoke(
        runner,
        [
            "extract",
            raw,
            cohort / "derivatives" / "truth-lesions",
            tmp_path / "g",
            "--channels",
            "arterial,portal",
        ],
        expect=3,
    )
    text = " ".join(result.stderr.split())
    assert "sub-001_ce-arterial_ct.nii.gz" in text and "desc-lesions_dseg.nii.gz" in text
    assert "1 of 3 participant(s) failed: sub-001" in text
    assert not (tmp_path / "g" / "sub-001").exists()
    assert (tmp_path / "g" / "sub-002").is_dir()


def test_a_missing_channel_fails_that_participant_naming_the_file(runner, cohort, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(cohort / "rawdata", raw)
    (raw / "sub-002" / "anat" / "sub-002_ce-arterial_ct.nii.gz").unlink()
    result = invoke(
        runner,
        [
            "extract",
            raw,
            cohort / "derivatives" / "truth-lesions",
            tmp_path / "f",
            "--channels",
            "arterial,portal",
        ],
        expect=3,
    )
    text = " ".join(result.stderr.split())
    assert "no image of channel(s) arterial for sub-002" in text
    assert "sub-002_ce-arterial_ct.nii.gz" in text


@pytest.mark.parametrize(
    "options,message",
    [
        (["--reference", "delayed"], "--reference delayed is not one of --channels"),
        (["--liver-features"], "--liver-features needs --seg"),
        (["--register", "rigid", "--channels", "portal,portal"], "names a channel twice"),
    ],
)
def test_channel_options_are_usage_errors(runner, cohort, tmp_path, options, message):
    result = extract(runner, cohort, tmp_path / "f", *options, expect=2)
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "f").exists()


def test_the_channel_table_trains_without_choosing_a_phase(runner, cohort, tmp_path):
    from metcli.radiomics.data import read_features

    out = tmp_path / "features"
    extract(runner, cohort, out)
    table = read_features(out)
    assert table.phase == "portal"
    assert {n.split("_original_")[0] for n in table.feature_names} == {"arterial", "portal"}


def test_an_mr_channel_is_normalised_on_its_own_grid(runner, cohort, tmp_path):
    """A T2w channel (other units, another in-plane grid): pyradiomics' normalisation
    (z-score over the image, x100) on its own grid, then resampled; recorded."""
    import SimpleITK as sitk
    from test_cnn_channels import make_t2w

    raw = tmp_path / "raw"
    shutil.copytree(cohort / "rawdata", raw)
    t2 = {}
    for ct in sorted(raw.rglob("*_ce-portal_ct.nii.gz")):
        path = make_t2w(ct)
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(float)
        t2[ct.name.split("_")[0]] = (values.mean(), values.std())
    out = tmp_path / "features"
    invoke(
        runner,
        [
            "extract",
            raw,
            cohort / "derivatives" / "truth-lesions",
            out,
            "--channels",
            "portal,T2w",
        ],
    )
    sidecar = json.loads(next(out.rglob("sub-*_features.json")).read_text())
    settings = sidecar["Provenance"]["settings"]
    assert settings["mr_normalisation"] == {"T2w": {"normalize": True, "normalizeScale": 100}}
    checked = 0
    for row in read_tsv(out / "features.tsv"):
        if float(row["portal_original_shape_VoxelVolume"]) < 500:
            continue
        mean, sd = t2[row["participant_id"]]
        raw_median = 2.5 * float(row["portal_original_firstorder_Median"]) + 900
        expected = (raw_median - mean) / sd * 100
        assert abs(float(row["T2w_original_firstorder_Median"]) - expected) < 10, row
        checked += 1
    assert checked


def test_a_model_trained_on_channel_features_predicts_from_them(runner, cohort, tmp_path):
    """train-radiomics on a --channels table (10 participants), then predict on it: the
    card's inputs are channel columns, and every lesion gets a prediction."""
    six = tmp_path / "six"
    invoke(runner, ["synth", six, "--subjects", 10, "-q"])
    for ct in sorted((six / "rawdata").rglob("*_ce-portal_ct.nii.gz")):
        make_arterial(ct)
    cohort = six
    out = tmp_path / "features"
    extract(runner, cohort, out)
    models = tmp_path / "models"
    invoke(
        runner,
        ["train-radiomics", out, models, "--labels", cohort / "rawdata" / "participants.tsv",
         "--classifiers", "logistic-regression", "--sampler", "none", "--cv-folds", 3,
         "--cv-repeats", 1, "--inner-folds", 2, "--importance-trees", 10,
         "--importance-repeats", 2, "--max-features", 3, "--no-progress", "-q"],
    )  # fmt: skip
    card = json.loads((models / "logistic-regression_none" / "model.json").read_text())
    assert all(i["name"].startswith(("arterial_", "portal_")) for i in card["inputs"])
    predicted = tmp_path / "predicted"
    invoke(runner, ["predict", models / "logistic-regression_none", out, predicted, "-q"])
    rows = read_tsv(predicted / "predictions.tsv")
    lesions = read_tsv(out / "features.tsv")
    assert len([r for r in rows if r["level"] == "lesion"]) == len(lesions)
