"""DICOM-SEG output: import-dicom's DicomSource, the writer's geometry, and the chain
synth --dicom -> import-dicom -> segment / split-lesions --dicom-seg, read back.

Every SEG is read back with pydicom and placed voxel by voxel in physical space
(:func:`labels_from_seg`: each set pixel's position from the frame's
ImagePositionPatient, ImageOrientationPatient and PixelSpacing, found in the label
image by its physical point), never by frame order. Series written with
``test_import_dicom.write_series`` (shuffled names, rotated and flipped orientations)
check the mapping where the NIfTI's axes are not the patient's. The chain uses the demo
nnU-Net model (skipped where it is not built). ``dciodvfy`` (Debian's dicom3tools)
validates the files where it is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from test_import_dicom import PATIENT_ID, PATIENT_NAME, known_hu, rotation, write_series

from conftest import REPO, invoke
from metcli.core.errors import GeometryError, InputError
from metcli.imaging.dicom.import_dicom import import_dicom
from metcli.imaging.dicom.seg_out import (
    SegmentSpec,
    lesion_segments,
    source_frames,
    write_dicom_seg,
)
from metcli.imaging.dicom.source import read_dicom_source
from metcli.io.files import read_json, read_tsv
from metcli.io.schemas import validate

DEMO = REPO / "weights" / "demo" / "metcli-demo-nnunet"
ALGORITHM = {"name": "metcli test", "version": "0", "uid_seed": "test"}
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


# ----------------------------------------------------------------------------- helpers
def labels_from_seg(path: Path, reference, values: dict[str, int]) -> np.ndarray:
    """The SEG's segments as a label array [z, y, x] on ``reference``'s grid, each set
    pixel placed by its physical position (``values``: segment label -> label value)."""
    ds = pydicom.dcmread(path)
    frames = np.asarray(ds.pixel_array).reshape(-1, ds.Rows, ds.Columns)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    value_of = {int(s.SegmentNumber): values[s.SegmentLabel] for s in ds.SegmentSequence}
    affine = np.asarray(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing())
    inverse, origin = np.linalg.inv(affine), np.asarray(reference.GetOrigin())
    out = np.zeros(reference.GetSize()[::-1], dtype=np.int32)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        rows, cols = np.nonzero(frame)
        points = ipp + cols[:, None] * dc * iop[:3] + rows[:, None] * dr * iop[3:]
        index = inverse @ (points - origin).T
        assert np.allclose(index, np.rint(index), atol=1e-3)
        i, j, k = np.rint(index).astype(int)
        assert (out[k, j, i] == 0).all()  # segments of a label image do not overlap
        out[k, j, i] = value_of[number]
    return out


def check_references(path: Path, dicom_files: list[Path]) -> pydicom.Dataset:
    """Study, frame of reference, series and per-frame source images as the CT's files."""
    seg = pydicom.dcmread(path)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_files]
    first = headers[0]
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence}
    assert referenced == {h.SOPInstanceUID for h in headers}
    position = {h.SOPInstanceUID: np.asarray(h.ImagePositionPatient, float) for h in headers}
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPClassUID == first.SOPClassUID
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(ipp, position[source.ReferencedSOPInstanceUID], atol=1e-4)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate"):
        assert str(seg.get(keyword, "")) == ""  # metcli keeps no identity
    return seg


def check_dciodvfy(path: Path) -> None:
    """No "Error" line from dicom3tools' validator (skipped where it is absent)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
    assert errors == [], errors


def label_volume(ct, seed: int = 0) -> sitk.Image:
    """Labels 0, 1, 2 on the CT's grid: random blocks that differ in every direction."""
    rng = np.random.default_rng(seed)
    shape = ct.GetSize()[::-1]
    array = np.zeros(shape, dtype=np.uint8)
    array[1:-2, 2:9, 3:12] = 1
    array[2:4, 4:6, 5:8] = 2
    array[rng.random(shape) < 0.05] = 2
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    return image


def imported(tmp_path: Path, rot, hu_shape=(6, 14, 12)):
    """A series written with ``rot`` and imported: (CT path, CT image, truth)."""
    truth = write_series(tmp_path / "dicom", known_hu(hu_shape), rot=rot)
    ct_path = import_dicom(tmp_path / "dicom", tmp_path / "raw", participant="1")
    return ct_path, sitk.ReadImage(str(ct_path)), truth


# ----------------------------------------------------------------------------- DicomSource
def test_import_keeps_the_uids_and_slice_order_but_no_identity(tmp_path):
    ct_path, ct, truth = imported(tmp_path, np.diag([1, -1, -1]))
    text = ct_path.with_name("sub-1_ct.json").read_text()
    doc = json.loads(text)
    validate(doc, "import_dicom")
    source = read_dicom_source(ct_path)
    headers = {}
    for path in truth["paths"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        headers[ds.SOPInstanceUID] = ds
    first = next(iter(headers.values()))
    assert source["SeriesInstanceUID"] == truth["uid"] == first.SeriesInstanceUID
    assert source["StudyInstanceUID"] == first.StudyInstanceUID
    assert source["FrameOfReferenceUID"] == first.FrameOfReferenceUID
    assert source["Rows"] == 14 and source["Columns"] == 12 and source["Modality"] == "CT"
    assert sorted(i["SOPInstanceUID"] for i in source["Instances"]) == sorted(headers)
    for k, instance in enumerate(source["Instances"]):  # the NIfTI's slice k is instance k
        ds = headers[instance["SOPInstanceUID"]]
        assert instance["SOPClassUID"] == ds.SOPClassUID
        np.testing.assert_allclose(instance["ImagePositionPatient"], ds.ImagePositionPatient)
        np.testing.assert_allclose(
            ct.TransformIndexToPhysicalPoint((0, 0, k)), ds.ImagePositionPatient, atol=1e-4
        )
    for word in (*PATIENT_NAME.split("^"), PATIENT_ID, "19600101", "20200202", "Sunnyvale"):
        assert word not in text
    # The sha256 fields stay; the UIDs appear only inside DicomSource.
    assert len(doc["SeriesInstanceUIDSha256"]) == 64 and "SeriesInstanceUID" not in doc
    del doc["DicomSource"]
    assert truth["uid"] not in json.dumps(doc)


def test_a_ct_without_dicom_source_is_refused_with_the_fix(tmp_path):
    ct_path, _ct, _truth = imported(tmp_path, None, (3, 8, 8))
    sidecar = ct_path.with_name("sub-1_ct.json")
    doc = read_json(sidecar)
    del doc["DicomSource"]
    sidecar.write_text(json.dumps(doc))
    with pytest.raises(InputError) as info:
        read_dicom_source(ct_path)
    assert Path(info.value.path) == ct_path and "metcli import-dicom" in info.value.fix
    sidecar.unlink()
    with pytest.raises(InputError, match="no JSON sidecar"):
        read_dicom_source(ct_path)


def test_a_series_without_frame_of_reference_imports_without_dicom_source(tmp_path):
    truth = write_series(tmp_path / "dicom", known_hu((3, 8, 8)))
    for path in truth["paths"]:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path, enforce_file_format=True)
    ct_path = import_dicom(tmp_path / "dicom", tmp_path / "raw", participant="1")
    assert "DicomSource" not in read_json(ct_path.with_name("sub-1_ct.json"))
    with pytest.raises(InputError, match="no DicomSource"):
        read_dicom_source(ct_path)


def test_a_ct_imported_without_dicom_source_gets_it_on_the_next_import(tmp_path):
    """An import of an earlier version (other settings, no DicomSource) is redone."""
    from metcli.imaging.dicom.import_dicom import SETTINGS
    from metcli.io.files import sha256_json

    ct_path, _ct, _truth = imported(tmp_path, None, (3, 8, 8))
    sidecar = ct_path.with_name("sub-1_ct.json")
    doc = read_json(sidecar)
    del doc["DicomSource"]
    old = {k: v for k, v in SETTINGS.items() if k != "dicom_source"}
    doc["Provenance"]["settings"], doc["Provenance"]["settings_sha256"] = old, sha256_json(old)
    sidecar.write_text(json.dumps(doc))
    import_dicom(tmp_path / "dicom", tmp_path / "raw", participant="1")
    assert read_dicom_source(ct_path)["Rows"] == 8


# ----------------------------------------------------------------------------- the writer
@pytest.mark.parametrize(
    "rot",
    [None, np.diag([1, -1, -1]), np.diag([-1, -1, 1]), rotation(200, 15)],
    ids=["axial", "flipped", "rotated-180", "oblique"],
)
@pytest.mark.parametrize("stored", ["as-ct", "flipped", "flipped-permuted"])
def test_segments_read_back_voxel_for_voxel_in_physical_space(tmp_path, rot, stored):
    ct_path, ct, truth = imported(tmp_path, rot)
    labels = label_volume(ct)
    given = labels  # or the same physical labels stored along other axes:
    if stored == "flipped":
        given = sitk.Flip(labels, [True, True, True])
    elif stored == "flipped-permuted":
        given = sitk.PermuteAxes(sitk.Flip(labels, [True, False, True]), [1, 2, 0])
    out = tmp_path / "seg.dcm"
    specs = [SegmentSpec(1, "liver", "liver"), SegmentSpec(2, "lesion", "lesion")]
    record = write_dicom_seg(
        given,
        read_dicom_source(ct_path),
        specs,
        out,
        algorithm=ALGORITHM,
        series_description="test",
        series_number=5,
    )
    assert [s["SegmentLabel"] for s in record["Segments"]] == ["liver", "lesion"]
    back = labels_from_seg(out, ct, {"liver": 1, "lesion": 2})
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(labels))
    seg = check_references(out, truth["paths"])
    codes = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert codes == ["10200004", "52988006"]  # SNOMED CT liver, lesion
    check_dciodvfy(out)


def test_the_same_labels_give_the_same_uids_and_frames(tmp_path):
    ct_path, ct, _truth = imported(tmp_path, None)
    source = read_dicom_source(ct_path)
    specs = [SegmentSpec(2, "lesion", "lesion")]
    paths = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    for path in paths:
        write_dicom_seg(
            label_volume(ct),
            source,
            specs,
            path,
            algorithm=ALGORITHM,
            series_description="t",
            series_number=5,
        )
    a, b = (pydicom.dcmread(p) for p in paths)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.PixelData == b.PixelData


def test_labels_off_the_series_grid_are_refused(tmp_path):
    ct_path, ct, _truth = imported(tmp_path, rotation(30, 0))
    source = read_dicom_source(ct_path)
    shifted = label_volume(ct)
    shifted.SetOrigin(tuple(np.asarray(ct.GetOrigin()) + [0.2, 0, 0]))
    with pytest.raises(GeometryError, match="not on the CT series' grid"):
        source_frames(shifted, source)
    cropped = label_volume(ct)[:, :, 1:]
    with pytest.raises(GeometryError, match="slices"):
        source_frames(cropped, source)


def test_lesion_segments_are_the_kept_lesions_by_name():
    rows = [
        {"index": 1, "name": "lesion-001", "kept": True},
        {"index": 2, "name": "lesion-002", "kept": False},
        {"index": 3, "name": "lesion-003", "kept": True},
    ]
    specs = lesion_segments(rows)
    assert [(s.value, s.label, s.tracking_id) for s in specs] == [
        (1, "lesion-001", "lesion-001"),
        (3, "lesion-003", "lesion-003"),
    ]


# ----------------------------------------------------------------------------- the chain
def _needs_nnunet():
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    if not (DEMO / "fold_0" / "checkpoint_final.pth").is_file():
        pytest.skip("the demo model is not built (weights/recipes/train_demo_model.py)")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """synth --dicom (one participant) -> import-dicom -> segment and split-lesions with
    --dicom-seg, on the command line."""
    from click.testing import CliRunner

    _needs_nnunet()
    root = tmp_path_factory.mktemp("chain")
    paths = {
        "synth": root / "synth",
        "raw": root / "raw",
        "seg": root / "seg",
        "lesions": root / "lesions",
    }
    paths["dicom"] = paths["synth"] / "sourcedata" / "dicom" / "sub-001"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root))
        patch.setenv("METCLI_HOME", str(root / ".metcli"))
        runner = CliRunner()
        synth = ["synth", paths["synth"], "--colorectal", "1", "--pancreatic", "0", "--dicom"]
        invoke(runner, [*synth, "--no-truth-lesions"])
        invoke(runner, ["import-dicom", paths["dicom"], paths["raw"], "--participant-label", "001"])
        segment = ["segment", paths["raw"], paths["seg"], "--no-tta", "--device", "cpu"]
        paths["segment_args"] = [*segment, "--threads", "1", "--step-size", "1", "--dicom-seg"]
        invoke(runner, paths["segment_args"])
        invoke(runner, ["split-lesions", paths["seg"], paths["lesions"], "--dicom-seg"])
    paths["files"] = sorted(paths["dicom"].glob("*.dcm"))
    return paths


def _anat(root: Path, name: str) -> Path:
    return root / "sub-001" / "anat" / name


@pytest.mark.slow
def test_segment_writes_a_dicom_seg_equal_to_the_dseg(chain, runner, tmp_path):
    dcm = _anat(chain["seg"], "sub-001_dseg.dcm")
    dseg = sitk.ReadImage(str(_anat(chain["seg"], "sub-001_dseg.nii.gz")))
    truth = sitk.GetArrayFromImage(dseg)
    assert set(np.unique(truth)) == {0, 1, 2}
    back = labels_from_seg(dcm, dseg, {"liver": 1, "lesion": 2})
    np.testing.assert_array_equal(back, truth)
    check_references(dcm, chain["files"])
    sidecar = read_json(_anat(chain["seg"], "sub-001_dseg.json"), schema="sidecar")
    names = [o["name"] for o in sidecar["Provenance"]["outputs"]]
    assert names == ["sub-001_dseg.nii.gz", "sub-001_dseg.dcm"]
    assert sidecar["Provenance"]["settings"]["dicom_seg"] is True
    assert "bids:raw:sub-001/anat/sub-001_ct.json" in sidecar["Sources"]
    import highdicom as hd

    seg = hd.seg.segread(dcm)
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2)] == ["liver", "lesion"]
    # metcli's own DICOM-SEG reader (import-mask) gives the dseg back.
    invoke(
        runner, ["import-mask", dcm, chain["raw"], tmp_path / "mask", "--participant-label", "001"]
    )
    mask = sitk.ReadImage(str(_anat(tmp_path / "mask", "sub-001_dseg.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), truth)
    # Lesions split from an imported (manual) mask are SEMIAUTOMATIC segments.
    lesions = tmp_path / "lesions"
    invoke(runner, ["split-lesions", tmp_path / "mask", lesions, "--dicom-seg"])
    manual = pydicom.dcmread(_anat(lesions, "sub-001_desc-lesions_dseg.dcm"))
    assert {s.SegmentAlgorithmType for s in manual.SegmentSequence} == {"SEMIAUTOMATIC"}
    # A re-run skips it.
    before = dcm.stat().st_mtime_ns
    result = invoke(runner, chain["segment_args"])
    assert "0 done, 1 skipped" in result.stderr and dcm.stat().st_mtime_ns == before
    check_dciodvfy(dcm)


@pytest.mark.slow
def test_split_lesions_writes_one_segment_per_kept_lesion(chain):
    dcm = _anat(chain["lesions"], "sub-001_desc-lesions_dseg.dcm")
    lesion_map = sitk.ReadImage(str(_anat(chain["lesions"], "sub-001_desc-lesions_dseg.nii.gz")))
    rows = read_tsv(_anat(chain["lesions"], "sub-001_desc-lesions_dseg.tsv"))
    kept = [row for row in rows if row["kept"] == "true"]
    assert kept, "the demo model found no lesion to test with"
    seg = check_references(dcm, chain["files"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [row["name"] for row in kept]
    assert [s.TrackingID for s in seg.SegmentSequence] == [row["name"] for row in kept]
    assert [s.SegmentAlgorithmType for s in seg.SegmentSequence] == ["AUTOMATIC"] * len(kept)
    back = labels_from_seg(dcm, lesion_map, {row["name"]: int(row["index"]) for row in kept})
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(lesion_map))
    sidecar = read_json(_anat(chain["lesions"], "sub-001_desc-lesions_dseg.json"))
    assert sidecar["DicomSeg"]["Segments"][0]["SegmentLabel"] == kept[0]["name"]
    assert sidecar["Sources"][1] == "bids:raw:sub-001/anat/sub-001_ct.json"
    check_dciodvfy(dcm)


@pytest.mark.slow
def test_dicom_seg_of_a_ct_not_from_dicom_fails_naming_the_ct(chain, runner, tmp_path):
    raw = chain["synth"] / "rawdata"  # synth's own NIfTI CTs: no DicomSource
    result = invoke(
        runner,
        ["segment", raw, tmp_path / "seg", "--no-tta", "--device", "cpu", "--dicom-seg"],
        expect=1,
    )
    assert "sub-001_ce-portal_ct.nii.gz" in result.stderr
    assert "metcli import-dicom" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "seg" / "sub-001").exists()


def test_split_lesions_dicom_seg_needs_the_raw_dataset(runner, tmp_path):
    seg = tmp_path / "seg"
    path = _anat(seg, "sub-001_dseg.nii.gz")
    path.parent.mkdir(parents=True)
    image = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    sitk.WriteImage(image, str(path))
    result = invoke(runner, ["split-lesions", seg, tmp_path / "out", "--dicom-seg"], expect=1)
    assert "DatasetLinks" in result.stderr and "Fix:" in result.stderr
