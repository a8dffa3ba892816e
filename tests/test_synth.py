"""The synthetic cohort (metcli.synth.synth, ``metcli synth``): phantoms, class signal, files,
CLI."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, optimize, stats

from conftest import invoke
from metcli.core.batch import BatchReport
from metcli.core.errors import OutputError, UsageError
from metcli.io import schemas
from metcli.io.files import read_image, read_json, read_tsv, sha256_file
from metcli.io.participants import read_participants
from metcli.synth import anatomy as synth_anatomy
from metcli.synth import phantom as synth_phantom
from metcli.synth import synth
from metcli.synth.phantom import SIZES, Grid, SynthParams, make_phantom, phantom_arrays
from metcli.synth.truth import TRUTH_COLUMNS, read_truth_lesions

#: A coarse grid that keeps many phantoms fast (about 40 ms each).
TINY = Grid(shape=(64, 64, 32), spacing=(3.0, 3.0, 3.75), anatomy_scale=0.5)
CUBE = np.ones((3, 3, 3), bool)


def _cohort(tmp_path, name="out", **kwargs):
    kwargs.setdefault("n_colorectal", 2)
    kwargs.setdefault("n_pancreatic", 1)
    kwargs.setdefault("size", TINY)
    kwargs.setdefault("truth_lesions", False)
    return synth.synth_cohort(tmp_path / name, **kwargs)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _ct(root, label="001"):
    return root / "rawdata" / f"sub-{label}" / "anat" / f"sub-{label}_ce-portal_ct.nii.gz"


# ----------------------------------------------------------------------------- geometry
def test_size_presets():
    small, paper = SIZES["small"], SIZES["paper"]
    assert small.shape == (96, 96, 48) and small.spacing == (2.0, 2.0, 2.5)
    assert paper.shape[:2] == (512, 512)
    assert paper.spacing[:2] == pytest.approx((0.8, 0.8), abs=0.03)
    assert paper.spacing[2] == pytest.approx(1.5)
    assert 120 <= paper.shape[2] <= 160
    for grid in (small, paper):
        grid.validate()
        # centred on the origin; the liver (with its largest jitter) fits the z extent
        assert np.allclose(
            np.asarray(grid.origin) + (np.asarray(grid.shape) - 1) / 2 * np.asarray(grid.spacing),
            0.0,
        )
        liver_z = 2 * synth_anatomy.LIVER_SEMI_AXES[2] * 1.08 * grid.anatomy_scale
        assert liver_z < grid.shape[2] * grid.spacing[2]
    assert synth_phantom.grid_for("paper") is paper
    with pytest.raises(UsageError, match="huge"):
        synth_phantom.grid_for("huge")
    with pytest.raises(UsageError, match="does not fit"):
        Grid(shape=(32, 32, 32), spacing=(1.0, 1.0, 1.0), anatomy_scale=1.0).validate()


def test_make_phantom_images_have_the_grid():
    ct, dseg, lesions = make_phantom(np.random.default_rng(3), SynthParams(), "pancreatic")
    for image in (ct, dseg):
        assert image.GetSize() == (96, 96, 48)
        assert image.GetSpacing() == (2.0, 2.0, 2.5)
        assert image.GetOrigin() == pytest.approx((-95.0, -95.0, -58.75))
        assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert ct.GetPixelIDTypeAsString() == "16-bit signed integer"
    assert dseg.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    assert lesions and all(isinstance(lesion, synth_phantom.Lesion) for lesion in lesions)


@pytest.mark.slow
def test_paper_size_phantom():
    phantom = phantom_arrays(1, SynthParams(grid=SIZES["paper"]), "colorectal")
    assert phantom.hu.shape == (140, 512, 512)
    assert 1.0 < (phantom.dseg > 0).sum() * 0.78125**2 * 1.5 / 1e6 < 2.2  # liver litres
    assert phantom.lesions


# ----------------------------------------------------------------------------- Hounsfield units
def test_hounsfield_units_of_the_tissues():
    phantoms = [
        phantom_arrays(seed, SynthParams(), cls)
        for seed, cls in enumerate(["colorectal", "pancreatic"] * 3)
    ]
    for ph in phantoms:
        assert ph.hu.dtype == np.int16 and ph.dseg.dtype == np.uint8
        assert ph.hu.min() >= -1024 and ph.hu.max() <= 3071
        assert set(np.unique(ph.dseg)) == {0, 1, 2}

        def mean(codes):
            return float(ph.hu[np.isin(ph.tissue, codes)].mean())

        assert mean([synth_anatomy.AIR]) == pytest.approx(-1000, abs=15)
        assert mean([synth_anatomy.FAT]) == pytest.approx(-100, abs=20)
        assert 20 < mean([synth_anatomy.MUSCLE, synth_anatomy.CAVITY]) < 70
        assert mean([synth_anatomy.MARROW, synth_anatomy.CORTICAL_BONE]) > 300
        assert mean([synth_anatomy.AORTA]) > 120
        liver = ph.hu[ph.dseg == 1]
        assert float(liver.mean()) == pytest.approx(ph.liver_hu, abs=3)
        assert 8 < float(liver.std()) < 25  # noise and texture
    liver_means = [float(ph.hu[ph.dseg == 1].mean()) for ph in phantoms]
    assert np.mean(liver_means) == pytest.approx(90, abs=6)  # patients vary (SD 5 HU)
    assert all(70 < m < 110 for m in liver_means)
    lesion_means = [float(ph.hu[ph.dseg == 2].mean()) for ph in phantoms]
    assert np.mean(lesion_means) == pytest.approx(45, abs=10)
    # hypo-attenuating: every phantom's lesions are darker than its liver
    assert all(m < ph.hu[ph.dseg == 1].mean() - 15 for m, ph in zip(lesion_means, phantoms))


def test_lesions_are_apart_inside_the_liver_and_match_their_records():
    grid = SIZES["small"]
    for seed in range(4):
        ph = phantom_arrays(seed, SynthParams(lesions_pancreatic=8.0), "pancreatic")
        labels, count = ndimage.label(ph.dseg == 2, structure=CUBE)
        assert count == len(ph.lesions) >= 3
        assert [lesion.lesion_id for lesion in ph.lesions] == list(range(1, count + 1))
        assert [lesion.voxels for lesion in ph.lesions] == sorted(
            (lesion.voxels for lesion in ph.lesions), reverse=True
        )  # split-lesions' order
        boxes = ndimage.find_objects(labels)
        for lesion in ph.lesions:
            component = labels[lesion.first_voxel]
            box = tuple(slice(max(b.start - 3, 0), b.stop + 3) for b in boxes[component - 1])
            mask = labels[box] == component
            assert mask.sum() == lesion.voxels
            assert lesion.volume_mm3 == pytest.approx(lesion.voxels * 2 * 2 * 2.5)
            # surrounded by liver
            assert (ph.dseg[box] > 0)[ndimage.binary_dilation(mask, CUBE)].all()
            # at least two voxels from every other lesion
            near = ndimage.binary_dilation(mask, np.ones((5, 5, 5), bool))
            assert set(np.unique(labels[box][near]).tolist()) <= {0, component}
            # centroid and generating centre (LPS mm)
            zyx = np.argwhere(mask) + [b.start for b in box]
            xyz_mm = zyx[:, ::-1] * np.asarray(grid.spacing) + grid.origin
            assert np.allclose(xyz_mm.mean(0), lesion.centroid_mm)
            assert np.all(xyz_mm.min(0) - 2.5 <= lesion.centre_mm)
            assert np.all(lesion.centre_mm <= xyz_mm.max(0) + 2.5)
            assert lesion.equivalent_diameter_mm == pytest.approx(2 * lesion.radius_mm, rel=0.35)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_phantom_other_seed_other_phantom():
    a = phantom_arrays(np.random.SeedSequence(7), SynthParams(grid=TINY), "colorectal")
    b = phantom_arrays(np.random.SeedSequence(7), SynthParams(grid=TINY), "colorectal")
    c = phantom_arrays(np.random.SeedSequence(8), SynthParams(grid=TINY), "colorectal")
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.dseg, b.dseg)
    assert [x.row("sub-1", "colorectal") for x in a.lesions] == [
        x.row("sub-1", "colorectal") for x in b.lesions
    ]
    assert not np.array_equal(a.hu, c.hu)


def test_lesion_knobs_leave_anatomy_and_noise_alone():
    plain = phantom_arrays(5, SynthParams(grid=TINY), "colorectal")
    nulled = phantom_arrays(5, SynthParams(grid=TINY).null(), "colorectal")
    assert np.array_equal(plain.dseg == 0, nulled.dseg == 0)  # the same liver
    outside = plain.dseg == 0
    outside &= ndimage.binary_erosion(outside, np.ones((5, 5, 5), bool))  # away from blur
    assert np.array_equal(plain.hu[outside], nulled.hu[outside])


def test_same_seed_same_files(tmp_path):
    one = _cohort(tmp_path, "one", seed=4)
    two = _cohort(tmp_path, "two", seed=4)
    other = _cohort(tmp_path, "other", seed=5)
    files = _files(one)
    assert files == _files(two) and len(files) > 20
    for name in files:
        assert sha256_file(one / name) == sha256_file(two / name), name
    assert sha256_file(_ct(one)) != sha256_file(_ct(other))


def test_a_larger_cohort_starts_with_the_smaller_one(tmp_path):
    assert synth.class_counts(3) == (2, 1) and synth.class_counts(4) == (2, 2)
    small = _cohort(tmp_path, "three", n_colorectal=2, n_pancreatic=1)
    large = _cohort(tmp_path, "four", n_colorectal=2, n_pancreatic=2)
    for label in ("001", "002", "003"):
        a = read_image(_ct(small, label))
        b = read_image(_ct(large, label))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    small_rows = read_participants(small / "rawdata")
    assert small_rows == read_participants(large / "rawdata")[:3]


def test_class_assignment():
    assert synth.class_counts(12) == (7, 5)
    assert synth.class_counts(78) == (47, 31)
    for total in range(1, 90):
        classes = synth.cohort_classes(*synth.class_counts(total))
        assert classes.count("pancreatic") == synth.class_counts(total)[1]
        if total > 1:  # prefixes keep their classes
            assert classes[:-1] == synth.cohort_classes(*synth.class_counts(total - 1))
    assert synth.cohort_classes(3, 0) == ["colorectal"] * 3
    assert synth.cohort_classes(2, 4).count("pancreatic") == 4
    assert synth.participant_labels(12)[:2] == ["001", "002"]
    assert synth.participant_labels(1234)[-1] == "1234"


# ----------------------------------------------------------------------------- class signal
def test_lesion_plans_follow_the_study_and_the_null_removes_the_difference():
    def plans(params, cls, n=3000):
        rng = np.random.default_rng(11 if cls == "colorectal" else 12)
        diameters = [synth_phantom.lesion_plan(rng, params, cls) for _ in range(n)]
        return (np.array([len(d) for d in diameters], float), np.concatenate(diameters))

    def z(a, b):
        return (a.mean() - b.mean()) / np.sqrt(a.var() / a.size + b.var() / b.size)

    params = SynthParams()
    count_c, size_c = plans(params, "colorectal")
    count_p, size_p = plans(params, "pancreatic")
    assert count_c.mean() == pytest.approx(2.5, abs=0.1)
    assert count_p.mean() == pytest.approx(5.0, abs=0.15)
    assert size_c.mean() > size_p.mean() + 4
    assert size_c.min() >= params.diameter_min and size_c.max() <= params.diameter_max

    null = params.null()
    assert null.lesions_colorectal == null.lesions_pancreatic == 3.75
    assert null.diameter_colorectal == null.diameter_pancreatic == 13.0
    assert null.texture_signal == 0.0
    count_c, size_c = plans(null, "colorectal")
    count_p, size_p = plans(null, "pancreatic")
    assert abs(z(count_c, count_p)) < 3.5
    assert abs(z(size_c, size_p)) < 3.5
    assert null.hu_shift("colorectal") == null.hu_shift("pancreatic") == 0.0
    assert null.texture_sd("colorectal") == null.texture_sd("pancreatic")


def _patient_features(params, n_per_class=20):
    """Per-patient lesion statistics of measured phantoms, and the class (1: pancreatic)."""
    features, classes = [], []
    for cls in synth.CLASSES:
        for i in range(n_per_class):
            seed = np.random.SeedSequence(100, spawn_key=(synth.CLASSES.index(cls), i))
            ph = phantom_arrays(seed, params, cls)
            labels, count = ndimage.label(ph.dseg == 2, structure=CUBE)
            means = ndimage.mean(ph.hu, labels, range(1, count + 1))
            sds = ndimage.standard_deviation(ph.hu, labels, range(1, count + 1))
            volumes = np.bincount(labels.ravel())[1:] * np.prod(params.grid.spacing)
            features.append([count, np.log(volumes).mean(), np.mean(means), np.mean(sds)])
            classes.append(cls == "pancreatic")
    return np.asarray(features, float), np.asarray(classes, int)


def _auc(score, y):
    return stats.mannwhitneyu(score[y == 1], score[y == 0]).statistic / (
        (y == 1).sum() * (y == 0).sum()
    )


def _cross_validated_auc(x, y):
    """Two-fold cross-validated AUC of an L2 logistic regression (scipy only)."""
    folds = np.arange(len(y)) % 2
    scores = np.zeros(len(y))
    for fold in (0, 1):
        train, test = folds != fold, folds == fold
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
        xt = np.c_[np.ones(train.sum()), (x[train] - mu) / sd]

        def loss(w):
            z = xt @ w
            return np.sum(np.logaddexp(0, z) - y[train] * z) + 0.5 * w[1:] @ w[1:]

        w = optimize.minimize(loss, np.zeros(xt.shape[1]), method="BFGS").x
        scores[test] = np.c_[np.ones(test.sum()), (x[test] - mu) / sd] @ w
    return _auc(scores, y)


def test_images_carry_the_class_signal_by_default_and_none_under_the_null():
    params = SynthParams(grid=TINY)
    x, y = _patient_features(params)
    # defaults: pancreatic patients have more, smaller, darker and smoother lesions
    assert _auc(x[:, 0], y) > 0.75
    assert _auc(-x[:, 1], y) > 0.75
    assert _auc(-x[:, 2], y) > 0.6
    assert _cross_validated_auc(x, y) > 0.85

    x, y = _patient_features(params.null())
    for column in range(x.shape[1]):
        a, b = x[y == 0, column], x[y == 1, column]
        se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
        assert abs(a.mean() - b.mean()) < 3 * se + 1e-9, column
    assert 0.25 < _cross_validated_auc(x, y) < 0.75


# ----------------------------------------------------------------------------- files
def test_every_written_file_follows_its_schema(tmp_path):
    out = _cohort(tmp_path, n_colorectal=2, n_pancreatic=2, dicom=True)
    checked = set()
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(out).as_posix()
        if path.name == "dataset_description.json":
            schemas.validate(read_json(path), "dataset_description", where=path)
        elif path.name == "participants.json":  # BIDS' data dictionary of participants.tsv
            assert set(read_json(path)) <= set(read_participants(path.parent)[0])
        elif path.suffix == ".json":
            doc = read_json(path)
            schemas.validate(doc, "sidecar", where=path)
            assert doc["Provenance"]["command"] == "synth"
            assert doc["Provenance"]["settings"]["seed"] == 0
            for record in doc["Provenance"]["outputs"]:
                assert sha256_file(path.parent / record["name"]) == record["sha256"]
        elif path.name == "participants.tsv":
            rows = read_participants(path.parent)
            schemas.validate_rows(rows, list(rows[0]), "participants", where=path)
            assert [r["primary"] for r in rows] == synth.cohort_classes(2, 2)
        elif path.name == "dseg.tsv":
            rows = [{**r, "index": int(r["index"])} for r in read_tsv(path)]
            schemas.validate_rows(rows, list(rows[0]), "dseg_labels", where=path)
            assert [(r["index"], r["name"]) for r in rows] == [
                (0, "background"),
                (1, "liver"),
                (2, "lesion"),
            ]
        elif path.name.endswith("lesions.tsv"):
            rows = read_truth_lesions(path)
            schemas.validate_rows(rows, TRUTH_COLUMNS, "synth_lesions", where=path)
            assert rows
        elif path.name.endswith("_ct.nii.gz"):
            assert read_image(path).GetPixelIDTypeAsString() == "16-bit signed integer"
        elif path.name.endswith("_dseg.nii.gz"):
            assert read_image(path).GetPixelIDTypeAsString() == "8-bit unsigned integer"
        elif path.suffix == ".dcm":
            pass  # tested in test_dicom_series_round_trip
        elif name in ("rawdata/.bidsignore", "rawdata/README"):
            assert path.read_text().strip()  # tested in test_bids_validator
        else:
            raise AssertionError(f"unexpected file {name}")
        checked.add(name)
        if path.suffix in (".json", ".tsv"):
            assert str(tmp_path) not in path.read_text(), f"{name} holds an absolute path"
    assert {
        "rawdata/dataset_description.json",
        "rawdata/participants.tsv",
        "rawdata/sub-001/anat/sub-001_ce-portal_ct.nii.gz",
        "rawdata/sub-001/anat/sub-001_ce-portal_ct.json",
        "derivatives/truth/dataset_description.json",
        "derivatives/truth/dseg.tsv",
        "derivatives/truth/lesions.tsv",
        "derivatives/truth/lesions.json",
        "derivatives/truth/sub-004/anat/sub-004_ce-portal_dseg.nii.gz",
        "derivatives/truth/sub-004/anat/sub-004_ce-portal_dseg.json",
        "derivatives/truth/sub-004/anat/sub-004_ce-portal_lesions.tsv",
        "derivatives/truth/sub-004/anat/sub-004_ce-portal_lesions.json",
        "sourcedata/dicom/sub-004/provenance.json",
    } <= checked
    assert read_json(out / "rawdata" / "dataset_description.json")["DatasetType"] == "raw"
    truth = read_json(out / "derivatives" / "truth" / "dataset_description.json")
    assert truth["DatasetType"] == "derivative"
    assert truth["DatasetLinks"] == {"raw": "../../rawdata"}
    # the cohort table is the participants' tables, and it describes the masks
    cohort = read_truth_lesions(out / "derivatives" / "truth" / "lesions.tsv")
    per_participant = [
        row
        for p in sorted((out / "derivatives" / "truth").glob("sub-*/anat/*.tsv"))
        for row in read_truth_lesions(p)
    ]
    assert cohort == per_participant
    for label in ("001", "002", "003", "004"):
        dseg = read_image(
            out
            / "derivatives"
            / "truth"
            / f"sub-{label}"
            / "anat"
            / f"sub-{label}_ce-portal_dseg.nii.gz"
        )
        labels, count = ndimage.label(sitk.GetArrayFromImage(dseg) == 2, structure=CUBE)
        rows = [r for r in cohort if r["participant_id"] == f"sub-{label}"]
        assert count == len(rows) and [r["lesion_id"] for r in rows] == list(range(1, count + 1))
        assert sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True) == [
            r["voxels"] for r in rows
        ]


def test_ct_sidecar_records_seed_and_knobs_but_not_the_class(tmp_path):
    out = _cohort(tmp_path, seed=9, null=True, patient_sd=2.0)
    doc = read_json(_ct(out).with_name("sub-001_ce-portal_ct.json"))
    settings = doc["Provenance"]["settings"]
    assert settings["seed"] == 9 and settings["null"] is True
    assert settings["knobs"]["patient_sd"] == 2.0
    assert settings["knobs"]["texture_signal"] == 0.0
    assert set(settings["knobs"]) == set(synth.KNOBS)
    assert doc["Sources"] == []
    # the sidecars of a colorectal and a pancreatic participant differ only in their outputs
    other = read_json(_ct(out, "002").with_name("sub-002_ce-portal_ct.json"))
    assert [p["primary"] for p in read_participants(out / "rawdata")][:2] == [
        "colorectal",
        "pancreatic",
    ]
    del doc["Provenance"]["outputs"], other["Provenance"]["outputs"]
    assert doc == other


def test_dicom_series_round_trip(tmp_path):
    import pydicom

    out = _cohort(tmp_path, dicom=True, seed=2, n_colorectal=1)
    again = _cohort(tmp_path, "again", dicom=True, seed=2, n_colorectal=1)
    other = _cohort(tmp_path, "other", dicom=True, seed=3, n_colorectal=1)
    reader = sitk.ImageSeriesReader()
    for label in ("001", "002"):
        folder = out / "sourcedata" / "dicom" / f"sub-{label}"
        assert len(reader.GetGDCMSeriesIDs(str(folder))) == 1  # the sidecar is no DICOM
        files = reader.GetGDCMSeriesFileNames(str(folder))
        assert len(files) == TINY.shape[2]
        reader.SetFileNames(files)
        series = reader.Execute()
        nifti = read_image(_ct(out, label))
        assert np.array_equal(
            sitk.GetArrayFromImage(series).astype(np.int32),
            sitk.GetArrayFromImage(nifti).astype(np.int32),
        )
        assert series.GetSpacing() == pytest.approx(nifti.GetSpacing())
        assert series.GetOrigin() == pytest.approx(nifti.GetOrigin(), abs=1e-4)
        assert series.GetDirection() == pytest.approx(nifti.GetDirection())
        slices = [pydicom.dcmread(f) for f in files]
        first = slices[0]
        assert first.SOPClassUID == pydicom.uid.CTImageStorage
        assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert str(first.PatientName) == first.PatientID == f"sub-{label}"
        assert first.PatientBirthDate == "" and first.StudyDate == ""
        assert [float(v) for v in first.PixelSpacing] == [3.0, 3.0]
        assert float(first.SliceThickness) == 3.75
        assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(first.RescaleSlope) == 1 and float(first.RescaleIntercept) == -1024
        hu = first.pixel_array.astype(np.int32) * int(first.RescaleSlope) + int(
            first.RescaleIntercept
        )
        assert np.array_equal(hu, sitk.GetArrayFromImage(nifti)[0])
        uids = {s.SOPInstanceUID for s in slices}
        assert len(uids) == len(slices)
        assert len({s.SeriesInstanceUID for s in slices}) == 1
        # deterministic from the seed
        twin = pydicom.dcmread(again / "sourcedata" / "dicom" / f"sub-{label}" / "CT0001.dcm")
        assert twin.SOPInstanceUID == first.SOPInstanceUID
        assert twin.StudyInstanceUID == first.StudyInstanceUID
        stranger = pydicom.dcmread(other / "sourcedata" / "dicom" / f"sub-{label}" / "CT0001.dcm")
        assert stranger.StudyInstanceUID != first.StudyInstanceUID
    # participants do not share UIDs
    studies = {
        pydicom.dcmread(
            out / "sourcedata" / "dicom" / f"sub-{label}" / "CT0001.dcm"
        ).StudyInstanceUID
        for label in ("001", "002")
    }
    assert len(studies) == 2


def test_dicom_added_later_leaves_the_cohort_alone(tmp_path):
    out = _cohort(tmp_path)
    ct = _ct(out)
    before = ct.stat().st_mtime_ns
    report = BatchReport()
    _cohort(tmp_path, dicom=True, report=report)
    assert report.counts()["done"] == 3 and ct.stat().st_mtime_ns == before
    assert len(list((out / "sourcedata" / "dicom" / "sub-001").glob("CT*.dcm"))) == TINY.shape[2]
    report = BatchReport()
    _cohort(tmp_path, dicom=True, report=report)
    assert report.counts()["skipped"] == 3


def test_library_refuses_bad_values_before_writing(tmp_path):
    target = tmp_path / "never"
    bad = [
        dict(n_colorectal=0, n_pancreatic=0),
        dict(n_colorectal=-1),
        dict(n_colorectal=1.5),
        dict(seed=-1),
        dict(size="huge"),
        dict(lesions_pancreatic=0.5),
        dict(diameter_colorectal=40.0),
        dict(texture_signal=100.0),
        dict(noise_sd=-1.0),
        dict(unknown_knob=1.0),
        dict(noise_sd=float("nan")),
    ]
    for kwargs in bad:
        with pytest.raises(UsageError) as caught:
            synth.synth_cohort(target, **kwargs)
        message = caught.value.one_line()
        assert "\n" not in message
        name = next(iter(kwargs))
        if name not in ("n_colorectal", "size"):
            assert name.split("_")[0] in message, message
    assert not target.exists()
    with pytest.raises(UsageError, match="class 'lung'"):
        phantom_arrays(0, SynthParams(), "lung")


def test_foreign_raw_dataset_is_never_overwritten(tmp_path):
    raw = tmp_path / "theirs" / "rawdata"
    raw.mkdir(parents=True)
    (raw / "participants.tsv").write_text("participant_id\nsub-01\n")
    with pytest.raises(OutputError, match="did not write"):
        synth.synth_cohort(tmp_path / "theirs", size=TINY)
    assert (raw / "participants.tsv").read_text() == "participant_id\nsub-01\n"


# ----------------------------------------------------------------------------- command line
def test_cli_writes_the_cohort_and_skips_on_rerun(runner, tmp_path):
    out = tmp_path / "cohort"
    result = invoke(runner, ["synth", out, "--subjects", 3, "--no-truth-lesions", "--seed", 1])
    assert result.stdout.strip() == str(out)
    assert "3 done, 0 skipped" in result.stderr
    rows = read_participants(out / "rawdata")
    assert [r["participant_id"] for r in rows] == ["sub-001", "sub-002", "sub-003"]
    assert [r["primary"] for r in rows] == ["colorectal", "pancreatic", "colorectal"]
    assert read_image(_ct(out, "003")).GetSize() == SIZES["small"].shape
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    result = invoke(runner, ["synth", out, "--subjects", 3, "--no-truth-lesions", "--seed", 1])
    assert "0 done, 3 skipped" in result.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    result = invoke(
        runner, ["synth", out, "--subjects", 3, "--no-truth-lesions", "--seed", 1, "--overwrite"]
    )
    assert "3 done, 0 skipped" in result.stderr
    # another knob: redone
    result = invoke(
        runner,
        ["synth", out, "--subjects", 3, "--no-truth-lesions", "--seed", 1, "--texture-signal", 2],
    )
    assert "3 done" in result.stderr


def test_cli_class_counts_and_knobs(runner, tmp_path):
    out = tmp_path / "cohort"
    invoke(
        runner,
        [
            "synth",
            out,
            "--colorectal",
            1,
            "--pancreatic",
            2,
            "--no-truth-lesions",
            "--null",
            "--lesions-pancreatic",
            7,
            "--patient-sd",
            0,
            "-q",
        ],
    )
    rows = read_participants(out / "rawdata")
    assert sorted(r["primary"] for r in rows) == ["colorectal", "pancreatic", "pancreatic"]
    sidecar = read_json(_ct(out).with_name("sub-001_ce-portal_ct.json"))
    knobs = sidecar["Provenance"]["settings"]["knobs"]
    assert knobs["lesions_pancreatic"] == knobs["lesions_colorectal"] == (2.5 + 7) / 2
    assert knobs["patient_sd"] == 0 and knobs["texture_signal"] == 0


def test_cli_config_file(runner, tmp_path):
    config = tmp_path / "synth.yaml"
    config.write_text(
        'colorectal: 1\npancreatic: 1\nlesions-pancreatic: 6.0\n"null": true\n'
        "truth-lesions: false\n"
    )
    out = tmp_path / "cohort"
    invoke(runner, ["synth", out, "--config", config, "--seed", 3])
    settings = read_json(_ct(out).with_name("sub-001_ce-portal_ct.json"))["Provenance"]["settings"]
    assert settings["seed"] == 3 and settings["null"] is True
    assert (settings["n_colorectal"], settings["n_pancreatic"]) == (1, 1)
    assert settings["knobs"]["lesions_pancreatic"] == (2.5 + 6.0) / 2
    assert not (out / "derivatives" / "truth-lesions").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--subjects", 0],
        ["--colorectal", 3],
        ["--subjects", 3, "--colorectal", 2, "--pancreatic", 1],
        ["--colorectal", 0, "--pancreatic", 0],
        ["--lesions-colorectal", 0.2],
        ["--size", "huge"],
    ],
)
def test_cli_usage_errors_write_nothing(runner, tmp_path, args):
    out = tmp_path / "cohort"
    result = invoke(runner, ["synth", out, *args], expect=2)
    assert result.stderr.strip()
    assert not out.exists()


def test_cli_unwritable_output_is_one_clear_line(runner, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = invoke(runner, ["synth", blocker / "cohort", "--subjects", 2], expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metcli: error: ")
    assert "file.txt" in lines[0] and "Fix:" in lines[0]
    result = invoke(runner, ["synth", blocker, "--subjects", 2], expect=2)
    assert "is a file" in result.stderr
    with pytest.raises(OutputError, match="is a file"):
        synth.synth_cohort(blocker, size=TINY)
    assert blocker.read_text() == "not a folder"
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "home"]


def test_cli_help_states_the_library_defaults(runner):
    from metcli.cli import synth as cli_synth

    defaults = SynthParams()
    for _flag, name, _metavar, text in cli_synth._KNOB_OPTIONS:
        stated = float(re.search(r"\[default: ([0-9.]+)\]", text).group(1))
        assert stated == getattr(defaults, name), name
    result = invoke(runner, ["synth", "--help"])
    for flag in (
        "--subjects",
        "--colorectal",
        "--pancreatic",
        "--seed",
        "--size",
        "--dicom",
        "--null",
        "--texture-signal",
        "--patient-sd",
        "--overwrite",
    ):
        assert flag in result.stdout


def test_cli_default_run_writes_truth_lesions(runner, tmp_path):
    """The README's demo: synth, with split-lesions' output on the true masks."""
    out = tmp_path / "demo"
    invoke(runner, ["synth", out, "--subjects", 2])
    lesion_dir = out / "derivatives" / "truth-lesions"
    assert (lesion_dir / "dataset_description.json").is_file()
    truth = read_truth_lesions(out / "derivatives" / "truth" / "lesions.tsv")
    for label in ("001", "002"):
        path = (
            lesion_dir / f"sub-{label}" / "anat" / f"sub-{label}_ce-portal_desc-lesions_dseg.nii.gz"
        )
        ids = sitk.GetArrayFromImage(read_image(path))
        found = {
            int(r["index"]): r
            for r in read_tsv(path.with_name(path.name.replace(".nii.gz", ".tsv")))
        }
        rows = [r for r in truth if r["participant_id"] == f"sub-{label}"]
        # exactly the placed lesions, under the same ids
        assert sorted(found) == [r["lesion_id"] for r in rows]
        for row in rows:
            measured = found[row["lesion_id"]]
            assert int(measured["voxels"]) == row["voxels"]
            for axis in "xyz":
                assert float(measured[f"centroid_{axis}_mm"]) == pytest.approx(
                    row[f"centroid_{axis}_mm"], abs=1e-3
                )
            if measured["kept"] == "true":
                assert int((ids == row["lesion_id"]).sum()) == row["voxels"]
