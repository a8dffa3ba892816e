"""The almss scenario of metcli synth (``--scenario almss``): four phases on their own grids,
the true motion between them, class patterns of enhancement, age and sex, the hierarchy
file, the null cohort, determinism, DICOM series and the command line."""

from __future__ import annotations

import hashlib
from itertools import combinations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from conftest import invoke
from metcli.core.batch import BatchReport
from metcli.io import schemas
from metcli.io.files import read_image, read_json, read_tsv, sha256_file
from metcli.io.participants import read_participants
from metcli.radiomics import hierarchy as radiomics_hierarchy
from metcli.synth.almss import (
    ALMSS_CLASSES,
    CLASS_RATIO,
    ORIGINS,
    PHASES,
    AlmssParams,
    class_sequence,
)
from metcli.synth.almss_cohort import hierarchy_groups, synth_almss_cohort
from metcli.synth.almss_subjects import almss_row, participant_phantom
from metcli.synth.multiphase import almss_phantom
from metcli.synth.phantom import Grid, SynthParams, phantom_arrays
from metcli.synth.subjects import Subject
from metcli.synth.truth import ALMSS_TRUTH_COLUMNS, read_truth_lesions

SEED = 5
#: Coarse grids per phase that keep many phantoms fast (about 0.1 s each).
TINY = {
    "native": Grid((56, 56, 20), (3.5, 3.5, 6.0), 0.5),
    "arterial": Grid((60, 60, 30), (3.2, 3.2, 4.0), 0.5),
    "portal": Grid((64, 64, 40), (3.0, 3.0, 3.0), 0.5),
    "delayed": Grid((60, 60, 24), (3.2, 3.2, 5.0), 0.5),
}
HYPOVASCULAR = ("colorectal", "pancreatic", "gastric", "lung")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The default almss cohort (11 participants, small grids) with split-lesions' output."""
    out = tmp_path_factory.mktemp("almss") / "cohort"
    return synth_almss_cohort(out, seed=SEED)


def _path(root, label, phase, kind="ct"):
    if kind == "ct":
        return root / "rawdata" / f"sub-{label}" / "anat" / f"sub-{label}_ce-{phase}_ct.nii.gz"
    folder = root / "derivatives" / "truth" / f"sub-{label}" / "anat"
    return folder / f"sub-{label}_ce-{phase}_{kind}"


def _transform(record) -> sitk.Euler3DTransform:
    """The recorded transform (reference points -> phase points) as SimpleITK builds it."""
    spec = record["transform"]
    assert spec["class"] == "Euler3DTransform"
    transform = sitk.Euler3DTransform()
    transform.SetFixedParameters(spec["fixed_parameters"])
    transform.SetParameters(spec["parameters"])
    assert np.allclose(np.reshape(transform.GetMatrix(), (3, 3)), record["matrix"])
    assert np.allclose(transform.TransformPoint((0.0, 0.0, 0.0)), record["offset_mm"])
    return transform


def _centroid(image, mask) -> np.ndarray:
    """Physical centroid (x, y, z mm) of a mask [z, y, x] on an identity-direction grid."""
    index = np.argwhere(mask).mean(0)[::-1]
    return np.asarray(image.GetOrigin()) + index * np.asarray(image.GetSpacing())


def _phase_truth(truth, ct, record) -> np.ndarray:
    """The portal truth taken onto a phase's grid through the recorded transform."""
    inverse = _transform(record).GetInverse()  # phase points -> portal points
    moved = sitk.Resample(truth, ct, inverse, sitk.sitkNearestNeighbor, 0, truth.GetPixelID())
    return sitk.GetArrayFromImage(moved)


def _phases(root, label):
    """phase -> (CT image, HU array, TransformFromReference) of a participant."""
    out = {}
    for phase in PHASES:
        ct = read_image(_path(root, label, phase))
        sidecar = read_json(_path(root, label, phase).with_name(f"sub-{label}_ce-{phase}_ct.json"))
        assert sidecar["ContrastPhase"] == phase and sidecar["ReferencePhase"] == "portal"
        out[phase] = (
            ct,
            sitk.GetArrayFromImage(ct).astype(float),
            sidecar["TransformFromReference"],
        )
    return out


# ----------------------------------------------------------------------------- grids, motion
def test_four_phases_on_their_own_grids(cohort):
    rows = read_participants(cohort / "rawdata")
    assert [r["primary"] for r in rows] == class_sequence(CLASS_RATIO, total=11)
    assert sorted(r["primary"] for r in rows) == sorted(
        c for c, n in CLASS_RATIO.items() for _ in range(n)
    )
    for row in rows:
        label = row["participant_id"][4:]
        phases = _phases(cohort, label)
        grids = {
            p: (ct.GetSize(), ct.GetSpacing(), ct.GetOrigin()) for p, (ct, _, _) in phases.items()
        }
        for ct, _, _ in phases.values():
            assert ct.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        for a, b in combinations(PHASES, 2):  # size, slice thickness and origin all differ
            assert grids[a][0] != grids[b][0] and grids[a][1][2] != grids[b][1][2]
            assert grids[a][2] != grids[b][2]
        assert {p: g[1][2] for p, g in grids.items()} == {
            "native": 5.0,
            "arterial": 2.5,
            "portal": 2.0,
            "delayed": 4.0,
        }
        # the truth lies on the portal grid; the portal phase does not move
        truth = read_image(_path(cohort, label, "portal", "dseg.nii.gz"))
        assert (truth.GetSize(), truth.GetSpacing(), truth.GetOrigin()) == grids["portal"]
        assert np.allclose(phases["portal"][2]["matrix"], np.eye(3))
        assert phases["portal"][2]["offset_mm"] == [0.0, 0.0, 0.0]
        moved = [
            np.abs(phases[p][2]["translation_mm"]).max() for p in ("native", "arterial", "delayed")
        ]
        assert max(moved) > 1.0 and all(m < 12 for m in moved)  # a breath-hold apart


def test_recorded_transform_maps_the_portal_liver_onto_each_phase(cohort):
    """The library renders each phase's anatomy in physical space (the files' images,
    voxel for voxel): the liver it puts on each grid lies where the recorded transform
    takes the portal liver, within a fraction of a voxel."""
    rows = read_participants(cohort / "rawdata")
    for index in (0, 1):
        label, cls = rows[index]["participant_id"][4:], rows[index]["primary"]
        phantom = participant_phantom(SEED, index, cls, AlmssParams())
        truth = read_image(_path(cohort, label, "portal", "dseg.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(truth), phantom.reference.dseg)
        portal_liver = _centroid(truth, sitk.GetArrayFromImage(truth) > 0)
        for phase, (ct, hu, record) in _phases(cohort, label).items():
            assert np.array_equal(hu, phantom.phases[phase].hu)
            expected = _transform(record).TransformPoint(tuple(portal_liver))
            measured = _centroid(ct, phantom.phases[phase].dseg > 0)
            assert np.all(np.abs(measured - expected) < 0.25 * np.asarray(ct.GetSpacing())), phase


def _liver_by_threshold(hu, liver_hu) -> np.ndarray:
    smooth = ndimage.gaussian_filter(hu, 1.0)
    mask = ndimage.binary_opening((smooth > liver_hu - 12) & (smooth < liver_hu + 14), iterations=2)
    labels, _count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == sizes.argmax())


def test_the_liver_found_in_each_image_moves_as_recorded(cohort):
    """From the files alone: the liver thresholded in each phase's image lies where the
    recorded transform takes the liver thresholded in the portal image (within a voxel)."""
    for row in read_participants(cohort / "rawdata")[:4]:
        label = row["participant_id"][4:]
        truth = read_image(_path(cohort, label, "portal", "dseg.nii.gz"))
        phases = _phases(cohort, label)
        found = {}
        for phase, (ct, hu, record) in phases.items():
            liver = ndimage.binary_erosion(_phase_truth(truth, ct, record) == 1, iterations=2)
            found[phase] = _centroid(ct, _liver_by_threshold(hu, np.median(hu[liver])))
        for phase, (ct, _hu, record) in phases.items():
            expected = _transform(record).TransformPoint(tuple(found["portal"]))
            assert np.all(np.abs(found[phase] - expected) < np.asarray(ct.GetSpacing())), phase


# ----------------------------------------------------------------------------- class patterns
def _contrasts(root, label) -> dict[str, float]:
    """Lesion minus liver mean HU per phase, the lesions and liver taken from the portal truth
    through the recorded transforms."""
    truth = read_image(_path(root, label, "portal", "dseg.nii.gz"))
    out = {}
    for phase, (ct, hu, record) in _phases(root, label).items():
        labels = _phase_truth(truth, ct, record)
        lesion = labels == 2
        liver = ndimage.binary_erosion(labels == 1, iterations=1)
        liver &= ~ndimage.binary_dilation(lesion, iterations=2)
        if lesion.sum() >= 3:
            out[phase] = float(hu[lesion].mean() - hu[liver].mean())
    return out


def test_lesion_enhancement_follows_the_class_patterns(cohort):
    """Lesion - liver HU measured in each phase's image, less the patient's random offset
    (shared by its lesions and phases; from the truth table), follows the class pattern."""
    truth = read_truth_lesions(cohort / "derivatives" / "truth" / "lesions.tsv")
    seen = set()
    for row in read_participants(cohort / "rawdata"):
        offset = next(r for r in truth if r["participant_id"] == row["participant_id"])
        measured = _contrasts(cohort, row["participant_id"][4:])
        cls = row["primary"]
        c = {p: v - offset["patient_offset_hu"] for p, v in measured.items()}
        assert {"arterial", "portal", "delayed"} <= set(c), row
        seen.add(cls)
        if cls == "hcc":  # arterial hyperenhancement, washout
            assert c["arterial"] > 15 and c["portal"] < -5 and c["delayed"] < -5, c
        elif cls == "icc":  # rim enhancement, progressive (delayed) filling
            assert c["delayed"] > c["portal"] + 5 and c["portal"] < -5, c
        elif cls in HYPOVASCULAR:  # hypo-attenuating in the portal phase
            assert c["portal"] < -10 and c["portal"] < c["arterial"], c
        elif cls == "neuroendocrine":  # hypervascular, washout
            assert c["arterial"] > 20 and c["delayed"] < c["arterial"] - 20, c
        else:
            assert cls == "breast" and c["portal"] < 0, c
    assert seen == set(ALMSS_CLASSES)
    # the designed values of the truth table follow the same patterns
    for row in truth:
        assert row["lesion_hu"] == row["lesion_hu_portal"]
        if row["primary"] == "hcc":
            assert row["lesion_hu_arterial"] > row["lesion_hu_portal"] > row["lesion_hu_delayed"]


def test_age_and_sex_depend_on_the_class_and_not_under_the_null(cohort):
    for row in read_participants(cohort / "rawdata"):
        subject = Subject(
            int(row["participant_id"][4:]) - 1, row["participant_id"][4:], row["primary"]
        )
        assert almss_row(subject, SEED, AlmssParams()) == row

    def people(params, cls, k, n=300):
        rows = [almss_row(Subject(1000 * k + i, "x", cls), 0, params) for i in range(n)]
        return np.array([r["age"] for r in rows]), np.array([r["sex"] == "M" for r in rows])

    params = AlmssParams()
    hcc_age, hcc_male = people(params, "hcc", 0)
    breast_age, breast_male = people(params, "breast", 1)
    assert hcc_male.mean() > 0.7 and breast_male.mean() < 0.05
    assert stats.ttest_ind(hcc_age, breast_age).pvalue < 1e-6
    null = params.null()
    hcc_age, hcc_male = people(null, "hcc", 0)
    breast_age, breast_male = people(null, "breast", 1)
    assert stats.ks_2samp(hcc_age, breast_age).pvalue > 1e-3
    assert abs(hcc_male.mean() - breast_male.mean()) < 3 * np.sqrt(0.25 * 2 / 300)


# ----------------------------------------------------------------------------- hierarchy
def test_the_hierarchy_file_loads_with_metclis_loader(cohort):
    hierarchy = radiomics_hierarchy.read_hierarchy(cohort / "hierarchy.yaml")
    assert hierarchy.group_names == ["hcc", "icc", "metastasis"]
    assert hierarchy.groups["metastasis"] == tuple(sorted(ORIGINS))
    assert hierarchy.steps == ["step1", "step2-metastasis"]
    radiomics_hierarchy.check_labels(
        hierarchy, [r["primary"] for r in read_participants(cohort / "rawdata")]
    )
    sidecar = read_json(cohort / "hierarchy.json")
    schemas.validate(sidecar, "sidecar", where=cohort / "hierarchy.json")
    assert sidecar["Provenance"]["outputs"] == [
        {"name": "hierarchy.yaml", "sha256": sha256_file(cohort / "hierarchy.yaml")}
    ]
    # groups of the classes a cohort has; none when they make no hierarchy
    assert hierarchy_groups({"hcc": 2, "colorectal": 1, "lung": 1}) == {
        "hcc": ["hcc"],
        "metastasis": ["colorectal", "lung"],
    }
    assert hierarchy_groups({"colorectal": 3, "lung": 1}) is None
    assert hierarchy_groups({"hcc": 1, "icc": 1, "lung": 2}) is None


# ----------------------------------------------------------------------------- the null
def _patient_features(params, cls, k, n=8) -> np.ndarray:
    """Per patient: lesion count, mean log volume, lesion - liver HU in each phase (measured
    on the rendered images)."""
    out = []
    for i in range(n):
        ph = almss_phantom(np.random.SeedSequence(11, spawn_key=(k, i)), params, cls, TINY)
        volumes = [lesion.volume_mm3 for lesion in ph.lesions]
        row = [len(ph.lesions), np.mean(np.log(volumes))]
        for phase in PHASES:
            image = ph.phases[phase]
            row.append(image.hu[image.dseg == 2].mean() - image.hu[image.dseg == 1].mean())
        out.append(row)
    return np.asarray(out, float)


def test_the_null_cohort_has_identical_class_distributions():
    params, null = AlmssParams(), AlmssParams().null()
    for table in ("lesion_counts", "diameters", "enhancement", "demography"):
        assert len({repr(getattr(params, table)[c]) for c in ALMSS_CLASSES}) > 1, table
        assert len({repr(getattr(null, table)[c]) for c in ALMSS_CLASSES}) == 1, table
    a, b = _patient_features(params, "hcc", 0), _patient_features(params, "pancreatic", 1)
    assert stats.ttest_ind(a[:, 3], b[:, 3]).pvalue < 1e-4  # arterial: hyper vs hypo
    assert stats.ttest_ind(a[:, 0], b[:, 0]).pvalue < 1e-2  # pancreatic: more lesions
    a, b = _patient_features(null, "hcc", 0), _patient_features(null, "pancreatic", 1)
    for column in range(a.shape[1]):
        se = np.sqrt(a[:, column].var(ddof=1) / len(a) + b[:, column].var(ddof=1) / len(b))
        assert abs(a[:, column].mean() - b[:, column].mean()) < 3 * se + 1e-9, column


# ----------------------------------------------------------------------------- files
def test_every_file_follows_its_schema_and_records_the_settings(cohort):
    for path in sorted(cohort.rglob("*.json")):
        if path.name in ("dataset_description.json", "participants.json"):
            continue
        doc = read_json(path)
        schemas.validate(doc, "sidecar", where=path)
        settings = doc["Provenance"]["settings"]
        if "truth-lesions" in path.parts:
            continue
        assert settings["scenario"] == "almss" and settings["seed"] == SEED
        assert settings["class_counts"]["hcc"] == 3 and settings["phases"] == list(PHASES)
        assert settings["knobs"]["enhancement"]["hcc"]["core"]["arterial"] == 40
        assert set(settings["grids"]) == set(PHASES)
    for path in sorted((cohort / "derivatives" / "truth").rglob("*lesions.tsv")):
        rows = read_truth_lesions(path)
        schemas.validate_rows(rows, ALMSS_TRUTH_COLUMNS, "synth_lesions", where=path)
    rows = read_participants(cohort / "rawdata")
    schemas.validate_rows(rows, list(rows[0]), "participants", where=cohort / "rawdata")
    # split-lesions on the truth (portal grid) finds exactly the placed lesions
    truth = read_truth_lesions(cohort / "derivatives" / "truth" / "lesions.tsv")
    tables = sorted((cohort / "derivatives" / "truth-lesions").rglob("*_desc-lesions_dseg.tsv"))
    assert [p.name.split("_")[1] for p in tables] == ["ce-portal"] * len(rows)
    for path in tables:
        placed = [r for r in truth if r["participant_id"] == path.name.split("_")[0]]
        found = sorted((int(r["index"]), int(r["voxels"])) for r in read_tsv(path))
        assert found == [(r["lesion_id"], r["voxels"]) for r in placed]


def test_same_seed_same_bytes_and_a_dicom_series_per_phase(tmp_path):
    import pydicom

    kwargs = dict(class_counts={"hcc": 1, "neuroendocrine": 1}, size=TINY, dicom=True)
    one = synth_almss_cohort(tmp_path / "one", seed=3, truth_lesions=False, **kwargs)
    two = synth_almss_cohort(tmp_path / "two", seed=3, truth_lesions=False, **kwargs)
    other = synth_almss_cohort(tmp_path / "other", seed=4, truth_lesions=False, **kwargs)
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    for name in files:
        assert sha256_file(one / name) == sha256_file(two / name), name
    assert sha256_file(_path(one, "001", "arterial")) != sha256_file(
        _path(other, "001", "arterial")
    )
    reader = sitk.ImageSeriesReader()
    study, frames, series = set(), set(), set()
    for number, phase in enumerate(PHASES, start=1):
        folder = one / "sourcedata" / "dicom" / "sub-001" / f"ce-{phase}"
        names = reader.GetGDCMSeriesFileNames(str(folder))
        reader.SetFileNames(names)
        nifti = read_image(_path(one, "001", phase))
        assert np.array_equal(
            sitk.GetArrayFromImage(reader.Execute()).astype(np.int32),
            sitk.GetArrayFromImage(nifti).astype(np.int32),
        )
        first = pydicom.dcmread(names[0])
        assert phase in first.SeriesDescription and int(first.SeriesNumber) == number
        assert ("ContrastBolusAgent" in first) == (phase != "native")
        study.add(first.StudyInstanceUID)
        frames.add(first.FrameOfReferenceUID)
        series.add(first.SeriesInstanceUID)
        assert read_json(folder / "provenance.json")["ContrastPhase"] == phase
    assert len(study) == len(frames) == 1 and len(series) == 4


def test_dicom_added_later_leaves_the_cohort_alone(tmp_path):
    kwargs = dict(class_counts={"lung": 1}, size=TINY, truth_lesions=False)
    out = synth_almss_cohort(tmp_path / "out", **kwargs)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    report = BatchReport()
    synth_almss_cohort(out, dicom=True, report=report, **kwargs)
    assert report.counts()["done"] == 1
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    for phase, grid in TINY.items():
        series = out / "sourcedata" / "dicom" / "sub-001" / f"ce-{phase}"
        assert len(list(series.glob("CT*.dcm"))) == grid.shape[2]
    report = BatchReport()
    synth_almss_cohort(out, dicom=True, report=report, **kwargs)
    assert report.counts()["skipped"] == 1


def test_the_default_scenario_is_unchanged():
    """The 2023 scenario's phantoms, voxel for voxel, as before the almss scenario."""
    grid = Grid(shape=(64, 64, 32), spacing=(3.0, 3.0, 3.75), anatomy_scale=0.5)
    digest = hashlib.sha256()
    for seed, cls in ((3, "pancreatic"), (4, "colorectal")):
        ph = phantom_arrays(np.random.SeedSequence(seed), SynthParams(grid=grid), cls)
        digest.update(ph.hu.tobytes())
        digest.update(ph.dseg.tobytes())
        digest.update(repr([lesion.row("sub-1", cls) for lesion in ph.lesions]).encode())
    assert digest.hexdigest() == "17c66eeb0183235e2a06ea2e704c9a8d9538208ba5503a0b3ac671d06567bea7"


# ----------------------------------------------------------------------------- command line
def test_cli_almss_writes_skips_and_records_its_options(runner, tmp_path):
    out = tmp_path / "cohort"
    args = ["synth", out, "--scenario", "almss", "--class-counts", "hcc=1,colorectal=1,lung=1"]
    args += ["--lesion-counts", "lung=2", "--diameters", "hcc=24", "--max-lesions", 10]
    args += ["--no-truth-lesions", "--seed", 2, "--noise-sd", 10]
    result = invoke(runner, args)
    assert result.stdout.strip() == str(out) and "3 done, 0 skipped" in result.stderr
    rows = read_participants(out / "rawdata")
    assert sorted(r["primary"] for r in rows) == ["colorectal", "hcc", "lung"]
    settings = read_json(_path(out, "001", "native").with_name("sub-001_ce-native_ct.json"))[
        "Provenance"
    ]["settings"]
    assert settings["class_counts"] == {
        **dict.fromkeys(ALMSS_CLASSES, 0),
        "hcc": 1,
        "colorectal": 1,
        "lung": 1,
    }
    knobs = settings["knobs"]
    assert knobs["lesion_counts"]["lung"] == 2 and knobs["lesion_counts"]["hcc"] == 1.5
    assert knobs["diameters"]["hcc"] == 24 and knobs["max_lesions"] == 10
    assert knobs["noise_sd"] == 10
    assert radiomics_hierarchy.read_hierarchy(out / "hierarchy.yaml").groups == {
        "hcc": ("hcc",),
        "metastasis": ("colorectal", "lung"),
    }
    assert "0 done, 3 skipped" in invoke(runner, args).stderr
    # the help states the library's defaults
    help_text = " ".join(invoke(runner, ["synth", "--help"]).stdout.split())
    assert f"[default: {AlmssParams().max_lesions}]" in help_text
    assert f"(almss: {AlmssParams().patient_sd})" in help_text
    # the 2023 scenario takes --class-counts too
    plain = tmp_path / "plain"
    invoke(
        runner,
        ["synth", plain, "--class-counts", "colorectal=1,pancreatic=1", "--no-truth-lesions"],
    )
    assert [r["primary"] for r in read_participants(plain / "rawdata")] == [
        "colorectal",
        "pancreatic",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["--scenario", "almss", "--colorectal", 2, "--pancreatic", 1],
        ["--scenario", "almss", "--texture-signal", 1],
        ["--lesion-counts", "hcc=2"],
        ["--scenario", "almss", "--class-counts", "hcc=x"],
        ["--scenario", "almss", "--class-counts", "kidney=2"],
        ["--scenario", "almss", "--subjects", 3, "--class-counts", "hcc=1"],
        ["--scenario", "almss", "--lesion-counts", "hcc=40"],
        ["--scenario", "almss", "--class-counts", "hcc=0"],
    ],
)
def test_cli_almss_usage_errors_write_nothing(runner, tmp_path, args):
    out = tmp_path / "cohort"
    result = invoke(runner, ["synth", out, *args], expect=2)
    assert result.stderr.strip().startswith("metcli: error:")
    assert not out.exists()
