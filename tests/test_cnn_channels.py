"""Image models over channels on their own grids, CT and MR (issue 14, items 1 to 3):
train-cnn --phases portal,arterial,T2w resamples each channel onto the lesion map's grid,
handles MR intensities per image (z-score over the body) and records both in the card;
predict applies exactly the same and reproduces the validation predictions.

The arterial phase is synth's CT on a 3 mm grid with another origin (no motion); the
"T2w" channel is an MR-like image made from the CT (arbitrary units, 2.5 x HU + 900,
another in-plane grid), so every channel covers every lesion and the truth is known.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_extract_channels import make_arterial

from conftest import invoke
from metcli.core.errors import GeometryError
from metcli.io.files import read_json, read_tsv

ARGS = [
    "--phases",
    "portal,arterial,T2w",
    "--arch",
    "resnet18",
    "--size",
    "32",
    "--epochs",
    "1",
    "--val-patients",
    "2",
    "--test-patients",
    "0",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--seed",
    "3",
    "--no-progress",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """One PyTorch thread (conftest.torch_one_thread)."""


def make_t2w(portal_ct: Path) -> Path:
    """An MR-like channel of the same anatomy: other units, another in-plane grid."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(portal_ct))
    spacing, size = image.GetSpacing(), image.GetSize()
    grid = sitk.Image([int(size[0] / 1.5), int(size[1] / 1.5), size[2]], sitk.sitkFloat32)
    grid.SetSpacing((spacing[0] * 1.5, spacing[1] * 1.5, spacing[2]))
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    mr = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32) * 2.5 + 900, grid, sitk.Transform())
    target = Path(str(portal_ct).replace("_ce-portal_ct", "_T2w"))
    sitk.WriteImage(sitk.Clamp(mr, lowerBound=0.0), str(target), True)
    return target


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    from metcli.synth.synth import synth_cohort

    root = tmp_path_factory.mktemp("cnnchannels")
    synth_cohort(root / "synth", n_colorectal=3, n_pancreatic=3, seed=5)
    raw = root / "synth" / "rawdata"
    for ct in sorted(raw.rglob("*_ce-portal_ct.nii.gz")):
        make_arterial(ct, shift=(0.0, 0.0, 0.0))
        make_t2w(ct)
    return {"raw": raw, "lesions": root / "synth" / "derivatives" / "truth-lesions", "root": root}


@pytest.fixture(scope="module")
def trained(cohort) -> Path:
    from click.testing import CliRunner

    out = cohort["root"] / "train"
    invoke(
        CliRunner(),
        [
            "train-cnn",
            cohort["raw"],
            cohort["lesions"],
            out,
            "--labels",
            cohort["raw"] / "participants.tsv",
            *ARGS,
        ],
    )
    return out


def test_the_card_records_each_channels_grid_and_intensity_rule(trained):
    from metcli.io.schemas import validate

    card = read_json(trained / "model" / "model.json")
    validate(card, "cnn_card")
    assert card["input"]["channels"] == ["portal", "arterial", "T2w"]
    assert card["input"]["shape"] == ["batch", 3, 32, 32]
    intensity = card["preprocessing"]["channel_intensity"]
    assert intensity["portal"]["method"] == intensity["arterial"]["method"] == "hu"
    assert intensity["T2w"] == {
        "method": "zscore",
        "lower_percentile": 0.5,
        "upper_percentile": 99.5,
        "n4": False,
    }
    assert card["preprocessing"]["channel_registration"] == "none"
    assert "lesion map's grid" in card["preprocessing"]["channel_grids"]


def test_predict_reproduces_the_validation_predictions(trained, cohort, runner, tmp_path):
    out = tmp_path / "predict"
    invoke(
        runner,
        ["predict", trained / "model", cohort["raw"], cohort["lesions"], out, "--device", "cpu"],
    )
    expected = read_tsv(trained / "val_predictions.tsv")
    got = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(out / "predictions.tsv")
    }
    assert expected
    for row in expected:
        mine = got[(row["participant_id"], row["lesion_id"], row["level"])]
        for column in ("prob_colorectal", "prob_pancreatic"):
            assert abs(float(mine[column]) - float(row[column])) < 1e-5, (row, mine)


def test_channels_are_on_the_lesion_maps_grid_in_the_windows_values(cohort):
    """The inputs of each channel: the arterial phase resampled equals 0.8 x HU + 20 through
    the window; the MR channel z-scored over the body lands mid-window for the body's mean."""
    import SimpleITK as sitk

    from metcli.imaging.channel_images import read_channel_file
    from metcli.imaging.intensity import ChannelIntensity, zscore_stats
    from metcli.lesions.channel_inputs import prepare_channels

    anat = cohort["raw"] / "sub-001" / "anat"
    lesion_map = sitk.ReadImage(
        str(cohort["lesions"] / "sub-001" / "anat" / "sub-001_ce-portal_desc-lesions_dseg.nii.gz")
    )
    images = {
        "portal": read_channel_file(anat / "sub-001_ce-portal_ct.nii.gz", "portal"),
        "arterial": read_channel_file(anat / "sub-001_ce-arterial_ct.nii.gz", "arterial"),
        "T2w": read_channel_file(anat / "sub-001_T2w.nii.gz", "T2w"),
    }
    intensities = {
        "portal": ChannelIntensity(),
        "arterial": ChannelIntensity(),
        "T2w": ChannelIntensity.for_kind("mr"),
    }
    ids = sitk.GetArrayFromImage(lesion_map)
    prepared = prepare_channels(
        images, lesion_map, [int(i) for i in np.unique(ids) if i], intensities, window=(330.0, 10.0)
    )
    portal = sitk.GetArrayFromImage(prepared["portal"]).astype(float)
    arterial = sitk.GetArrayFromImage(prepared["arterial"]).astype(float)
    assert prepared["arterial"].GetSize() == lesion_map.GetSize()
    lesion = ids > 0
    assert abs(np.median(arterial[lesion]) - (0.8 * np.median(portal[lesion]) + 20)) < 8
    lo, hi, mean, sd = zscore_stats(
        sitk.GetArrayFromImage(images["T2w"]).astype(float), intensities["T2w"]
    )
    t2 = sitk.GetArrayFromImage(prepared["T2w"]).astype(float)
    # z = (x - mean) / sd in [-3, 3] fills the window [10 - 165, 10 + 165]
    resampled = sitk.GetArrayFromImage(sitk.Resample(images["T2w"], lesion_map, sitk.Transform()))
    z = (np.clip(resampled, lo, hi) - mean) / sd
    inside = np.isfinite(t2) & (np.abs(z) < 3)
    assert np.allclose(t2[inside], 10 - 165 + (z[inside] + 3) / 6 * 330, atol=0.05)


def test_a_channel_that_misses_a_lesion_is_an_error_naming_both_files(cohort):
    import SimpleITK as sitk

    from metcli.imaging.intensity import ChannelIntensity
    from metcli.lesions.channel_inputs import prepare_channels

    lesion_map_path = (
        cohort["lesions"] / "sub-002" / "anat" / "sub-002_ce-portal_desc-lesions_dseg.nii.gz"
    )
    lesion_map = sitk.ReadImage(str(lesion_map_path))
    ct = sitk.ReadImage(str(cohort["raw"] / "sub-002" / "anat" / "sub-002_ce-portal_ct.nii.gz"))
    ids = sitk.GetArrayFromImage(lesion_map)
    lesion_z = np.flatnonzero(ids.any(axis=(1, 2)))
    short = ct[:, :, : int(lesion_z[0])]  # ends below the first lesion
    with pytest.raises(GeometryError) as caught:
        prepare_channels(
            {"arterial": short},
            lesion_map,
            [int(i) for i in np.unique(ids) if i],
            {"arterial": ChannelIntensity()},
            window=(330.0, 10.0),
            paths={"arterial": Path("sub-002_ce-arterial_ct.nii.gz")},
            lesion_map_path=lesion_map_path,
        )
    line = caught.value.one_line()
    assert "sub-002_ce-arterial_ct.nii.gz" in line and "desc-lesions_dseg.nii.gz" in line


def test_a_missing_mr_channel_leaves_that_participant_out(cohort, runner, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(cohort["raw"], raw)
    (raw / "sub-006" / "anat" / "sub-006_T2w.nii.gz").unlink()
    result = invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort["lesions"],
            tmp_path / "out",
            "--labels",
            raw / "participants.tsv",
            *ARGS,
        ],
    )
    assert "sub-006 (no CT of phase(s) T2w for sub-006)" in result.stderr


def test_n4_removes_a_multiplicative_bias_field():
    """A homogeneous body times a smooth field (up to 1.6x across the image): after N4 the
    body's coefficient of variation falls by more than half (Tustison et al. 2010)."""
    import SimpleITK as sitk

    from metcli.imaging.intensity import n4_correct

    z, y, x = np.mgrid[0:24, 0:64, 0:64].astype(float)
    body = ((y - 32) ** 2 + (x - 32) ** 2 < 26**2) & (z > 2) & (z < 21)
    field = 1.0 + 0.6 * (x / 63.0) * (0.5 + 0.5 * y / 63.0)
    rng = np.random.default_rng(0)
    array = np.where(body, 800.0 * field, 0.0) + rng.normal(0, 5, body.shape).clip(0)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((2.0, 2.0, 4.0))
    corrected = sitk.GetArrayFromImage(n4_correct(image))

    def cv(values):
        return values[body].std() / values[body].mean()

    assert cv(corrected) < 0.5 * cv(array), (cv(array), cv(corrected))


def test_registration_aligns_a_moved_channel_before_resampling(cohort, tmp_path):
    """An arterial phase moved by (4, -3, 2) mm: registered, its lesion medians follow
    0.8 x portal + 20 far closer than without (measured: 8.5 HU against 24.5 HU)."""
    import SimpleITK as sitk

    from metcli.imaging.intensity import ChannelIntensity
    from metcli.lesions.channel_inputs import prepare_channels

    portal_path = cohort["raw"] / "sub-003" / "anat" / "sub-003_ce-portal_ct.nii.gz"
    copy = tmp_path / "sub-003_ce-portal_ct.nii.gz"
    shutil.copy(portal_path, copy)
    shutil.copy(str(portal_path).replace(".nii.gz", ".json"), tmp_path)
    arterial = sitk.ReadImage(str(make_arterial(copy, shift=(4.0, -3.0, 2.0))))
    portal = sitk.ReadImage(str(portal_path))
    lesion_map = sitk.ReadImage(
        str(cohort["lesions"] / "sub-003" / "anat" / "sub-003_ce-portal_desc-lesions_dseg.nii.gz")
    )
    ids = sitk.GetArrayFromImage(lesion_map)
    wanted = [int(i) for i in np.unique(ids) if i]
    errors = {}
    for register in ("none", "rigid"):
        out = prepare_channels(
            {"portal": portal, "arterial": arterial},
            lesion_map,
            wanted,
            {"portal": ChannelIntensity(), "arterial": ChannelIntensity()},
            window=(330.0, 10.0),
            register=register,
        )
        p = sitk.GetArrayFromImage(out["portal"]).astype(float)
        a = sitk.GetArrayFromImage(out["arterial"]).astype(float)
        errors[register] = np.mean(
            [abs(np.median(a[ids == i]) - (0.8 * np.median(p[ids == i]) + 20)) for i in wanted]
        )
    # every lesion, small ones included: the 3 mm slices' partial volume stays
    assert errors["rigid"] < 0.5 * errors["none"] and errors["rigid"] < 12, errors


def test_registration_intensity_and_n4_options_are_recorded_and_replayed(cohort, runner, tmp_path):
    out = tmp_path / "train"
    args = [a for a in ARGS if a != "--no-progress"]
    invoke(
        runner,
        [
            "train-cnn",
            cohort["raw"],
            cohort["lesions"],
            out,
            "--labels",
            cohort["raw"] / "participants.tsv",
            *args,
            "--register",
            "rigid",
            "--intensity",
            "T2w=zscore:1,99",
            "--n4",
            "T2w",
            "--no-progress",
        ],
    )
    card = read_json(out / "model" / "model.json")
    pre = card["preprocessing"]
    assert pre["channel_registration"] == "rigid"
    assert pre["channel_intensity"]["T2w"] == {
        "method": "zscore",
        "lower_percentile": 1.0,
        "upper_percentile": 99.0,
        "n4": True,
    }
    predicted = tmp_path / "predict"
    invoke(
        runner,
        ["predict", out / "model", cohort["raw"], cohort["lesions"], predicted, "--device", "cpu"],
    )
    got = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(predicted / "predictions.tsv")
    }
    for row in read_tsv(out / "val_predictions.tsv"):
        mine = got[(row["participant_id"], row["lesion_id"], row["level"])]
        assert abs(float(mine["prob_pancreatic"]) - float(row["prob_pancreatic"])) < 1e-5


@pytest.mark.parametrize(
    "options,message",
    [
        (["--intensity", "T2w=window"], "is not CHANNEL=hu or CHANNEL=zscore"),
        (["--n4", "portal"], "N4 bias-field correction is for MR channels"),
        (["--intensity", "T1w=zscore"], "name channel(s) T1w that are not inputs"),
    ],
)
def test_bad_channel_options_are_usage_errors(cohort, runner, tmp_path, options, message):
    result = invoke(
        runner,
        [
            "train-cnn",
            cohort["raw"],
            cohort["lesions"],
            tmp_path / "out",
            "--labels",
            cohort["raw"] / "participants.tsv",
            *ARGS,
            *options,
        ],
        expect=2,
    )
    assert message in " ".join(result.stderr.split())
