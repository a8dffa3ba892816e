"""The MR world of metcli synth (``--modality mr``): T2w and a 4D DWI per participant on
their own grids, named by metcli.io.channels; the class patterns of T2w signal and ADC
read back through metcli.imaging.channel_images; the ADC fitted on the written DWI against
the ADC the phantom was rendered with; the null; determinism; DICOM MR series read back
by import-dicom; the lesion maps found for --reference T2w; the BIDS validator."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import invoke
from metcli.core.batch import BatchReport
from metcli.core.errors import UsageError
from metcli.imaging.channel_images import read_channel
from metcli.imaging.channels_grid import resample_to_reference
from metcli.imaging.dicom.import_dicom import import_dicom
from metcli.io.channels import Channel
from metcli.io.files import read_json, read_tsv
from metcli.io.participants import read_participants
from metcli.io.schemas import validate
from metcli.lesions.maps import find_lesion_maps
from metcli.radiomics import channels as radiomics_channels
from metcli.synth.mri import LESION_TYPES, MriParams, lesion_types, mr_class_sequence
from metcli.synth.mri_cohort import synth_mri_cohort
from metcli.synth.mri_phantom import mri_phantom, volume_list
from metcli.synth.mri_subjects import mri_participant, mri_row
from metcli.synth.subjects import Subject
from metcli.synth.truth import read_truth_lesions

SEED = 7
SUBJECTS = 9  # three rounds of benign, hcc, metastasis: the benign ones haemangioma, cyst, FNH


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Nine participants with their DICOM series and split-lesions' output on the truth."""
    out = tmp_path_factory.mktemp("mr") / "cohort"
    return synth_mri_cohort(out, subjects=SUBJECTS, seed=SEED, dicom=True)


def _types():
    return lesion_types(mr_class_sequence({"benign": 1, "hcc": 1, "metastasis": 1}, SUBJECTS))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- files, grids
def test_files_are_named_by_the_channel_model(cohort):
    raw, truth = cohort / "rawdata", cohort / "derivatives" / "truth"
    rows = read_participants(raw)
    assert [r["primary"] for r in rows] == ["benign", "hcc", "metastasis"] * 3
    for k in range(1, SUBJECTS + 1):
        label = f"{k:03d}"
        t2w = raw / Channel("T2w").relpath(label)
        dwi = raw / Channel("DWI", bvalue=800).relpath(label)
        assert t2w == raw / f"sub-{label}" / "anat" / f"sub-{label}_T2w.nii.gz"
        assert dwi == raw / f"sub-{label}" / "dwi" / f"sub-{label}_dwi.nii.gz"
        for path in (t2w, dwi, t2w.with_suffix("").with_suffix(".json")):
            assert path.is_file(), path
        assert dwi.with_name(f"sub-{label}_dwi.bval").read_text() == "0 50 50 50 800 800 800\n"
        bvec = dwi.with_name(f"sub-{label}_dwi.bvec").read_text().splitlines()
        assert bvec == ["0 0 0 -1 0 0 -1", "0 0 1 0 0 1 0", "0 1 0 0 1 0 0"]
        assert not list(raw.rglob("*_ADC*"))  # metcli computes the ADC
        anat = truth / f"sub-{label}" / "anat"
        assert sorted(p.name for p in anat.iterdir()) == [
            f"sub-{label}_dseg.json",
            f"sub-{label}_dseg.nii.gz",
            f"sub-{label}_lesions.json",
            f"sub-{label}_lesions.tsv",
        ]
    for row in read_truth_lesions(truth / "lesions.tsv"):
        assert row["lesion_hu"] is None and row["adc_mm2s"] > 0
        assert row["lesion_type"] in LESION_TYPES
    validate(read_json(raw / "sub-001" / "dwi" / "sub-001_dwi.json"), "sidecar")


def test_t2w_and_dwi_lie_on_their_own_grids(cohort):
    raw = cohort / "rawdata"
    for label in ("001", "005"):
        t2w = sitk.ReadImage(str(raw / Channel("T2w").relpath(label)))
        dwi = sitk.ReadImage(str(raw / Channel("DWI", bvalue=0).relpath(label)))
        assert t2w.GetDimension() == 3 and dwi.GetDimension() == 4
        assert dwi.GetSize()[3] == len(volume_list()) == 7
        assert t2w.GetPixelID() == dwi.GetPixelID() == sitk.sitkInt16
        assert dwi.GetSpacing()[2] > t2w.GetSpacing()[2]  # thicker slices
        assert dwi.GetSpacing()[0] > t2w.GetSpacing()[0]  # coarser in-plane
        assert dwi.GetSize()[:3] != t2w.GetSize()
        assert abs(dwi.GetOrigin()[2] - t2w.GetOrigin()[2]) > 1.0  # another scan range
        transform = read_json(raw / f"sub-{label}" / "dwi" / f"sub-{label}_dwi.json")[
            "TransformFromReference"
        ]
        assert transform["reference"] == "T2w" and 0 < np.linalg.norm(transform["offset_mm"]) < 12
        dseg = sitk.ReadImage(
            str(
                cohort
                / "derivatives"
                / "truth"
                / f"sub-{label}"
                / "anat"
                / f"sub-{label}_dseg.nii.gz"
            )
        )
        assert dseg.GetSize() == t2w.GetSize() and dseg.GetOrigin() == t2w.GetOrigin()


def test_the_lesion_maps_are_found_for_the_t2w_reference(cohort):
    lesions = cohort / "derivatives" / "truth-lesions"
    maps = find_lesion_maps(lesions, None, [None])
    assert [m.path.name for m in maps] == [
        f"sub-{k:03d}_desc-lesions_dseg.nii.gz" for k in range(1, 10)
    ]
    spec = radiomics_channels.ChannelSpec.from_options("T2w,DWI-b800,ADC", "T2w")
    report = BatchReport()
    chosen = [f"{k:03d}" for k in range(1, SUBJECTS + 1)]
    jobs = radiomics_channels.plan_channel_jobs(
        cohort / "rawdata", lesions, None, chosen, spec, report
    )
    assert len(jobs) == SUBJECTS and not report.failed
    first = jobs[0]
    assert first.ct.path.name == "sub-001_T2w.nii.gz"
    assert {k: p.name for k, p in first.channels.items()} == {
        "T2w": "sub-001_T2w.nii.gz",
        "DWI-b800": "sub-001_dwi.nii.gz",
        "ADC": "sub-001_dwi.nii.gz",
    }
    assert {p.name for p in first.inputs_extra} >= {"sub-001_dwi.bval", "sub-001_dwi.bvec"}


# ----------------------------------------------------------------------------- class patterns
def _lesion_measures(cohort, label):
    """(type, T2w lesion/liver, lesion ADC, liver ADC) of the participant's largest lesion,
    the ADC fitted on the DWI and brought onto the T2w grid."""
    raw = cohort / "rawdata"
    lesion_map = sitk.ReadImage(
        str(
            cohort
            / "derivatives"
            / "truth-lesions"
            / f"sub-{label}"
            / "anat"
            / f"sub-{label}_desc-lesions_dseg.nii.gz"
        )
    )
    seg_path = (
        cohort / "derivatives" / "truth" / f"sub-{label}" / "anat" / f"sub-{label}_dseg.nii.gz"
    )
    liver = ndimage.binary_erosion(
        sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path))) == 1, iterations=2
    )
    t2 = sitk.GetArrayFromImage(read_channel(raw, Channel("T2w"), label)).astype(float)
    adc_image = read_channel(raw, Channel("ADC"), label)
    adc = sitk.GetArrayFromImage(resample_to_reference(adc_image, lesion_map))
    lesion = sitk.GetArrayFromImage(lesion_map) == 1  # the largest
    return (
        np.median(t2[lesion]) / np.median(t2[liver]),
        np.nanmedian(adc[lesion]),
        np.nanmedian(adc[liver]),
    )


def test_t2w_and_adc_follow_the_class_patterns(cohort):
    """Cysts and haemangiomas bright on T2w with free diffusion, FNH near liver, HCC and
    metastases moderately T2-bright with restricted diffusion; the liver's ADC 1.1-1.4e-3."""
    measured = {}
    for k, kind in enumerate(_types(), start=1):
        t2_ratio, adc, liver_adc = _lesion_measures(cohort, f"{k:03d}")
        assert 1.0e-3 < liver_adc < 1.5e-3
        measured.setdefault(kind, []).append((t2_ratio, adc, liver_adc))
    (cyst,), (haem,), (fnh,) = measured["cyst"], measured["haemangioma"], measured["fnh"]
    assert cyst[0] > 3.0 and cyst[1] > 1.7e-3, cyst  # partial volume on the DWI grid
    assert haem[0] > 2.3 and haem[1] > 1.5e-3, haem
    assert 0.8 < fnh[0] < 1.6 and abs(fnh[1] - fnh[2]) < 0.3e-3, fnh
    malignant = measured["hcc"] + measured["metastasis"]
    for t2_ratio, adc, liver_adc in malignant:
        assert 1.15 < t2_ratio < 2.3 and adc < liver_adc and adc < 1.3e-3, measured
    assert min(cyst[0], haem[0]) > max(r[0] for r in malignant) + 1.0
    assert min(cyst[1], haem[1]) > max(r[1] for r in malignant) + 0.3e-3


def test_the_adc_fitted_on_the_written_dwi_is_the_rendered_one(cohort):
    """The ADC metcli computes from the synthetic DWI (b = 0, 50, 800) equals the ADC map the
    phantom was rendered with, inside the liver and the lesions (away from edges, where the
    blur mixes tissues), within a few %."""
    raw = cohort / "rawdata"
    checked = 0
    for index, kind in enumerate(_types()[:6]):
        dwi = mri_participant(SEED, index, kind, MriParams()).sequences["dwi"]
        fitted = sitk.GetArrayFromImage(read_channel(raw, Channel("ADC"), f"{index + 1:03d}"))
        for label in (1, 2):
            inside = ndimage.binary_erosion(dwi.dseg == label)
            if inside.sum() < 20:
                continue
            ratio = np.median(fitted[inside] / dwi.adc[inside])
            assert abs(ratio - 1.0) < 0.03, (kind, label, ratio)
            checked += 1
    assert checked >= 9


def test_age_and_sex_follow_the_lesion_type():
    params = MriParams()
    rows = {
        kind: [mri_row(Subject(i, f"{i:03d}", "x"), 3, params, kind) for i in range(400)]
        for kind in ("fnh", "hcc", "haemangioma")
    }
    age = {k: np.mean([r["age"] for r in v]) for k, v in rows.items()}
    male = {k: np.mean([r["sex"] == "M" for r in v]) for k, v in rows.items()}
    assert age["fnh"] + 15 < age["hcc"] and male["fnh"] < 0.2 < 0.65 < male["hcc"]
    assert rows["hcc"][0]["primary"] == "hcc" and rows["fnh"][0]["primary"] == "benign"
    null = params.null()
    assert len({null.demography[t] for t in LESION_TYPES}) == 1


def test_under_the_null_the_images_do_not_depend_on_the_class():
    """Every class difference removed: a participant's images are the same whatever its
    class (benign, HCC or metastasis), so no classifier can beat chance."""
    params = MriParams().null()
    digests = set()
    for kind in ("cyst", "hcc", "metastasis"):
        phantom = mri_phantom(11, params, kind)
        digest = hashlib.sha256()
        for name in ("T2w", "dwi"):
            digest.update(phantom.sequences[name].values.tobytes())
        digest.update(phantom.reference.dseg.tobytes())
        digests.add(digest.hexdigest())
    assert len(digests) == 1
    assert len({params.looks[t] for t in LESION_TYPES}) == 1
    assert len({params.lesion_counts[t] for t in LESION_TYPES}) == 1
    assert len({params.diameters[t] for t in LESION_TYPES}) == 1
    assert (
        len({mri_phantom(11, None, k).sequences["T2w"].values.tobytes() for k in ("cyst", "hcc")})
        == 2
    )


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes(cohort, tmp_path):
    first = synth_mri_cohort(tmp_path / "a", subjects=2, seed=SEED, dicom=True, truth_lesions=False)
    second = synth_mri_cohort(
        tmp_path / "b", subjects=2, seed=SEED, dicom=True, truth_lesions=False
    )
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".dcm"]) == 2 * (36 + 7 * 28)
    for rel in files:
        assert _sha(first / rel) == _sha(second / rel), rel
    for rel in (
        "rawdata/sub-002/anat/sub-002_T2w.nii.gz",
        "rawdata/sub-002/dwi/sub-002_dwi.nii.gz",
    ):
        assert _sha(first / rel) == _sha(cohort / rel)  # a larger cohort starts with a smaller one
    report = BatchReport()
    synth_mri_cohort(first, subjects=2, seed=SEED, dicom=True, truth_lesions=False, report=report)
    assert report.counts()["skipped"] == 2
    later = synth_mri_cohort(tmp_path / "c", subjects=2, seed=SEED, truth_lesions=False)
    assert not (later / "sourcedata").exists()
    synth_mri_cohort(later, subjects=2, seed=SEED, dicom=True, truth_lesions=False)
    for rel in files:  # the DICOM series added later are those written at once
        assert _sha(later / rel) == _sha(first / rel), rel


# ----------------------------------------------------------------------------- DICOM
def test_dicom_series_read_back_by_import_dicom_equal_the_nifti(cohort, tmp_path, runner):
    raw, imported = cohort / "rawdata", tmp_path / "raw"
    series = cohort / "sourcedata" / "dicom" / "sub-003"
    assert len(list((series / "T2w").glob("MR*.dcm"))) == 36
    result = invoke(
        runner,
        ["import-dicom", series, imported, "--participant-label", "003", "--channel", "T2w",
         "--primary", "metastasis"],
    )  # fmt: skip
    assert result.stdout.strip().endswith("sub-003_T2w.nii.gz")
    import_dicom(series, imported, participant="003", channel="DWI")
    for channel in (Channel("T2w"), Channel("DWI", bvalue=0)):
        mine = sitk.ReadImage(str(raw / channel.relpath("003")))
        back = sitk.ReadImage(str(imported / channel.relpath("003")))
        assert back.GetPixelID() == mine.GetPixelID()
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mine))
        assert np.allclose(back.GetOrigin(), mine.GetOrigin(), atol=1e-4)
        assert np.allclose(back.GetSpacing(), mine.GetSpacing(), atol=1e-6)
        assert back.GetDirection() == mine.GetDirection()
    for suffix in (".bval", ".bvec"):
        name = f"sub-003/dwi/sub-003_dwi{suffix}"
        assert (imported / name).read_text() == (raw / name).read_text()
    doc = read_json(imported / "sub-003" / "dwi" / "sub-003_dwi.json")
    assert doc["DiffusionBValues"] == [0, 50, 800] and doc["DiffusionVolumes"] == 7
    assert doc["EchoTime"] == 0.06 and doc["ChannelSource"] == "--channel"
    assert read_participants(imported)[0]["primary"] == "metastasis"
    mine_adc = sitk.GetArrayFromImage(read_channel(raw, Channel("ADC"), "003"))
    assert np.array_equal(
        sitk.GetArrayFromImage(read_channel(imported, Channel("ADC"), "003")), mine_adc
    )


def test_the_bids_validator_reports_no_errors(cohort, tmp_path):
    from test_bids_validator import VALIDATOR
    from test_bids_validator import validate as bids_validate

    if VALIDATOR is None or shutil.which("node") is None:
        pytest.skip("the BIDS validator is not installed (make test installs it)")
    found = bids_validate(cohort / "rawdata", config=None)  # MR data: no CT exemption needed
    assert found["errors"] == [], found["errors"]
    broken = tmp_path / "rawdata"
    shutil.copytree(cohort / "rawdata", broken)
    (broken / "sub-001" / "dwi" / "sub-001_dwi.bval").write_text("0 50 800\n")
    assert "VOLUME_COUNT_MISMATCH" in {e["key"] for e in bids_validate(broken)["errors"]}


# ----------------------------------------------------------------------------- command line
def test_cli_mr_cohort_and_its_refusals(runner, tmp_path):
    out = tmp_path / "mr"
    args = ["synth", out, "--modality", "mr", "--class-counts", "benign=2,metastasis=1"]
    args += ["--lesion-counts", "metastasis=2", "--diameters", "cyst=10", "--no-truth-lesions"]
    result = invoke(runner, args)
    assert result.stdout.strip() == str(out) and "3 done, 0 skipped" in result.stderr
    assert [r["primary"] for r in read_participants(out / "rawdata")] == [
        "benign",
        "metastasis",
        "benign",
    ]
    settings = read_json(out / "rawdata" / "sub-001" / "anat" / "sub-001_T2w.json")["Provenance"][
        "settings"
    ]
    assert settings["scenario"] == "mri" and settings["modality"] == "MR"
    assert settings["knobs"]["lesion_counts"]["metastasis"] == 2.0
    assert settings["knobs"]["diameters"]["cyst"] == 10.0
    rows = read_tsv(out / "derivatives" / "truth" / "lesions.tsv")
    assert {r["lesion_type"] for r in rows} == {"haemangioma", "cyst", "metastasis"}
    for extra, message in (
        (["--scenario", "almss"], "--scenario almss is a CT scenario"),
        (["--colorectal", "2", "--pancreatic", "1"], "--colorectal, --pancreatic do(es) not"),
        (["--noise-sd", "5"], "--noise-sd do(es) not apply to --modality mr"),
        (["--class-counts", "colorectal=2"], "'colorectal=2' is not CLASS=VALUE"),
        (["--lesion-counts", "hcc=0.5"], "lesion_counts of hcc must be between 1"),
    ):
        bad = tmp_path / "bad"
        result = invoke(runner, ["synth", bad, "--modality", "mr", *extra], expect=2)
        assert message in result.stderr and "Fix:" in result.stderr, result.stderr
        assert not bad.exists()
    with pytest.raises(UsageError, match="not one of benign, hcc, metastasis"):
        synth_mri_cohort(tmp_path / "x", class_counts={"icc": 1})
