"""import-dicom: finding, checking, sorting and converting CT series; the command line.

Synthetic series are written with pydicom by :func:`write_series` (shuffled file
names, scrambled InstanceNumbers, known HU values and geometry); the real series
come from the shared reference data (skipped where it is absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from conftest import invoke
from metcli.core.errors import DicomError, UsageError
from metcli.imaging.dicom.import_dicom import SETTINGS, import_dicom, series_sha256
from metcli.imaging.dicom.series import find_series, select_series
from metcli.imaging.dicom.volume import read_ct_series
from metcli.imaging.geometry import grid_difference, to_reference_grid
from metcli.io.schemas import validate

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID98765"
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.77"


# ----------------------------------------------------------------------------- helpers
def rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def known_hu(shape=(10, 16, 16), seed=0) -> np.ndarray:
    """HU values that differ in every voxel, so that any misordering shows."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=shape).astype(np.int32)
    hu[:, 0, 0] = np.arange(shape[0]) * 10  # slice k starts with 10 k HU
    return hu


def _dataset(
    *,
    modality,
    sop_class,
    series_uid,
    image_type,
    description,
    iop,
    ipp,
    spacing_rc,
    rows,
    columns,
    slope,
    intercept,
    instance,
    transfer_syntax,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19600101"
    ds.StudyDate = "20200202"
    ds.InstitutionName = "Sunnyvale General"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Scanner 3000"
    ds.KVP = "120"
    ds.ConvolutionKernel = "B30f"
    ds.SliceThickness = "3.0"  # deliberately not the spacing
    ds.ContrastBolusAgent = "Iomeprol"
    ds.SeriesDescription = description
    ds.SeriesNumber = 3
    ds.ImageType = list(image_type) if len(image_type) > 1 else image_type[0]
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.PixelSpacing = [f"{spacing_rc[0]}", f"{spacing_rc[1]}"]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = f"{slope}"
    ds.RescaleIntercept = f"{intercept}"
    return ds


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    step=2.0,
    spacing_rc=(0.5, 0.8),
    origin=(-10.0, -20.0, 30.0),
    rot=None,
    modality="CT",
    sop_class=CT_STORAGE,
    series_uid=None,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    slope=1.0,
    intercept=-1024.0,
    description="test CT",
    prefix="IM",
    seed=1,
    offsets=None,
    iops=None,
    encode=None,
) -> dict:
    """Write ``hu`` ([slice, row, column]) as a DICOM series; return what a reader must find.

    Slice k lies at origin + offsets[k] * normal (default offsets = k * step). File
    names are shuffled and InstanceNumbers scrambled, so neither gives the order.
    ``slope``/``intercept`` may be lists (one per slice). ``encode(stored) ->
    (pixel_bytes, transfer_syntax, attributes)`` compresses a slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, columns = hu.shape
    rot = np.eye(3) if rot is None else np.asarray(rot)
    row_cos, col_cos, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    series_uid = series_uid or generate_uid()
    offsets = [k * step for k in range(n)] if offsets is None else list(offsets)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    slopes = slope if isinstance(slope, (list, tuple)) else [slope] * n
    intercepts = intercept if isinstance(intercept, (list, tuple)) else [intercept] * n
    paths, positions = [], []
    for k in range(n):
        ipp = np.asarray(origin) + offsets[k] * normal
        iop = list(row_cos) + list(col_cos) if iops is None else list(iops[k])
        stored = np.rint((hu[k] - intercepts[k]) / slopes[k]).astype(np.int16)
        ds = _dataset(
            modality=modality,
            sop_class=sop_class,
            series_uid=series_uid,
            image_type=image_type,
            description=description,
            iop=iop,
            ipp=ipp,
            spacing_rc=spacing_rc,
            rows=rows,
            columns=columns,
            slope=slopes[k],
            intercept=intercepts[k],
            instance=(7 * k + 3) % n + 1,
            transfer_syntax=ExplicitVRLittleEndian,
        )
        if encode is None:
            ds.PixelData = stored.tobytes()
        else:
            data, syntax, attributes = encode(stored)
            ds.file_meta.TransferSyntaxUID = syntax
            for key, value in attributes.items():
                setattr(ds, key, value)
            ds.PixelData = data
            ds["PixelData"].VR = "OB"
        path = folder / f"{prefix}{order[k]:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        positions.append(ipp)
    return {
        "uid": series_uid,
        "paths": paths,
        "positions": positions,
        "row": row_cos,
        "col": col_cos,
        "normal": normal,
        "spacing_rc": spacing_rc,
        "hu": hu,
    }


def jpeg_lossless(stored: np.ndarray):
    """Compress one slice as JPEG lossless (process 14, SV1) with SimpleITK's GDCM."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "slice.dcm")
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(path)
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(stored[None]))
        ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    attributes = {
        k: ds.get(k) for k in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")
    }
    return ds.PixelData, JPEGLosslessSV1, attributes


def array(image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def check_against_truth(image, truth) -> None:
    """Every voxel's position and value against the series written."""
    n = len(truth["positions"])
    ps_row, ps_col = truth["spacing_rc"]
    assert image.GetSize() == (truth["hu"].shape[2], truth["hu"].shape[1], n)
    np.testing.assert_allclose(
        image.GetSpacing(),
        (
            ps_col,
            ps_row,
            abs(np.dot(truth["positions"][1] - truth["positions"][0], truth["normal"])),
        ),
        atol=1e-6,
    )
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], truth["row"], atol=1e-6)
    np.testing.assert_allclose(direction[:, 1], truth["col"], atol=1e-6)
    values = array(image)
    order = np.argsort([np.dot(p, truth["normal"]) for p in truth["positions"]])
    for index, k in enumerate(order):
        for i, j in ((0, 0), (5, 3), (15, 15)):
            expected = truth["positions"][k] + i * ps_col * truth["row"] + j * ps_row * truth["col"]
            np.testing.assert_allclose(
                image.TransformIndexToPhysicalPoint((i, j, index)), expected, atol=1e-4
            )
        np.testing.assert_array_equal(values[index], truth["hu"][k])


@pytest.fixture
def logs(caplog, monkeypatch):
    """Capture metcli's log records (the CLI turns propagation off in other tests)."""
    monkeypatch.setattr(logging.getLogger("metcli"), "propagate", True)
    caplog.set_level(logging.INFO, logger="metcli")
    return caplog


# ------------------------------------------------------------------ order, values, geometry
@pytest.mark.parametrize(
    "rot",
    [None, rotation(30, 0), rotation(200, 15), np.diag([1, -1, -1])],
    ids=["axial", "rotated", "oblique", "flipped"],
)
def test_order_geometry_and_values(tmp_path, rot):
    truth = write_series(tmp_path / "ct", known_hu(), rot=rot)
    image, info = read_ct_series(tmp_path / "ct")
    check_against_truth(image, truth)
    assert image.GetPixelID() == sitk.sitkInt16
    assert info.slice_step_mm == pytest.approx(2.0)
    assert info.metadata["SpacingBetweenSlices"] == pytest.approx(2.0)
    assert info.metadata["SliceThickness"] == 3.0
    # The sorted file list and UIDs follow the slices of the volume.
    index_of = {p: i for i, p in enumerate(truth["paths"])}
    values = array(image)
    for index, path in enumerate(info.files):
        assert values[index, 0, 0] == 10 * index_of[path]
    assert len(set(info.sop_instance_uids)) == len(info.files)


def test_file_list_input_and_physical_positions_not_names(tmp_path):
    # Slices written in reverse z order: the first file name holds the top slice.
    hu = known_hu((6, 16, 16))
    truth = write_series(tmp_path / "ct", hu, offsets=[10.0 - 2 * k for k in range(6)])
    image, info = read_ct_series(sorted((tmp_path / "ct").iterdir()))
    check_against_truth(image, truth)
    assert image.GetOrigin() == pytest.approx(tuple(truth["positions"][5]))


def test_rescale_per_slice_and_float_output(tmp_path):
    hu = known_hu((4, 16, 16)).astype(float)
    truth = write_series(tmp_path / "a", hu, intercept=[-1024.0, -1000.0, -1024.0, 0.0])
    image, _ = read_ct_series(tmp_path / "a")
    check_against_truth(image, truth)
    assert image.GetPixelID() == sitk.sitkInt16

    half = hu + 0.5
    write_series(tmp_path / "b", half, slope=0.5, intercept=-1024.0)
    image, info = read_ct_series(tmp_path / "b")
    assert image.GetPixelID() == sitk.sitkFloat32 and info.dtype == "float32"
    order = np.argsort([0, 1, 2, 3])
    np.testing.assert_array_equal(array(image), half[order].astype(np.float32))

    big = known_hu((3, 16, 16))
    big[1, 4, 4] = 40000 - 1024  # stored 40000 does not fit int16 storage: use slope 2
    write_series(tmp_path / "c", big, slope=2.0, intercept=-1024.0)
    image, _ = read_ct_series(tmp_path / "c")
    assert image.GetPixelID() == sitk.sitkFloat32
    assert array(image)[1, 4, 4] == 40000 - 1024


def test_padding_is_kept_and_recorded(tmp_path):
    hu = known_hu((3, 16, 16))
    hu[:, :2, :2] = -3024
    write_series(tmp_path / "ct", hu)
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
        ds.save_as(path)
    image, info = read_ct_series(tmp_path / "ct")
    assert array(image).min() == -3024
    assert info.padding_hu == -3024 and info.metadata["PixelPaddingValueHU"] == -3024


# ----------------------------------------------------------------------------- refusals
def test_missing_slice_is_refused_with_the_gap(tmp_path):
    truth = write_series(tmp_path / "ct", known_hu())
    truth["paths"][5].unlink()
    with pytest.raises(DicomError) as err:
        read_ct_series(tmp_path / "ct")
    message = str(err.value)
    assert "slices 5 and 6" in message and "4 mm apart where the others are 2 mm" in message
    assert "missing" in message and "Fix:" in message


def test_uneven_and_drifting_spacing_is_refused(tmp_path):
    write_series(tmp_path / "a", known_hu((5, 16, 16)), offsets=[0, 2, 4, 6.3, 8.3])
    with pytest.raises(DicomError, match="2.3 mm apart where the others are 2 mm"):
        read_ct_series(tmp_path / "a")


def test_duplicate_positions_are_refused(tmp_path):
    write_series(tmp_path / "ct", known_hu((5, 16, 16)), offsets=[0, 2, 4, 4, 6])
    with pytest.raises(DicomError, match="same position"):
        read_ct_series(tmp_path / "ct")


def test_gantry_tilt_is_refused(tmp_path):
    hu = known_hu((5, 16, 16))
    write_series(tmp_path / "ct", hu[:1], prefix="A", series_uid="1.2.3.4.5")
    for k in range(1, 5):  # same series, each slice shifted 0.5 mm in y per 2 mm in z
        write_series(
            tmp_path / "tmp",
            hu[k : k + 1],
            origin=(-10.0, -20.0 + 0.5 * k, 30.0 + 2 * k),
            series_uid="1.2.3.4.5",
            prefix=f"B{k}",
        )
    for path in (tmp_path / "tmp").iterdir():
        path.rename(tmp_path / "ct" / path.name)
    with pytest.raises(DicomError, match="not stacked along their normal"):
        read_ct_series(tmp_path / "ct")


def test_mixed_orientation_is_refused(tmp_path):
    iops = [(1, 0, 0, 0, 1, 0)] * 5 + [(1, 0, 0, 0, 0, -1)]
    truth = write_series(tmp_path / "ct", known_hu((6, 16, 16)), iops=iops)
    with pytest.raises(DicomError, match="mixed orientations"):
        read_ct_series(tmp_path / "ct")
    with pytest.raises(DicomError, match="mixes slice orientations"):
        read_ct_series(tmp_path / "ct", series_uid=truth["uid"])


def test_mr_series_is_refused(tmp_path):
    truth = write_series(
        tmp_path / "mr", known_hu((4, 16, 16)), modality="MR", sop_class=MR_STORAGE
    )
    with pytest.raises(DicomError, match="no axial CT image series.*modality MR"):
        read_ct_series(tmp_path / "mr")
    with pytest.raises(DicomError, match="is MR, not CT"):
        read_ct_series(tmp_path / "mr", series_uid=truth["uid"])


def test_single_slice_is_refused(tmp_path):
    truth = write_series(tmp_path / "one", known_hu((1, 16, 16)))
    # The same message whether the series is found, named, or given as a SeriesInfo.
    for kwargs in ({}, {"series_uid": truth["uid"]}):
        with pytest.raises(DicomError) as err:
            read_ct_series(tmp_path / "one", **kwargs)
        message = str(err.value)
        assert f"series {truth['uid']}" in message and "has only one slice (IM0000)" in message
        assert "a 3D volume needs at least 2 slices" in message
        assert "export the full series" in message and "--series-uid" not in message
    with pytest.raises(DicomError, match="has only one slice"):
        read_ct_series(find_series(tmp_path / "one")[0])


def test_cli_single_slice_series_says_so_and_names_a_usable_series(tmp_path, runner):
    raw = tmp_path / "raw"
    one = write_series(tmp_path / "dicom" / "scout", known_hu((1, 16, 16)), description="key")
    args = ["import-dicom", tmp_path / "dicom", raw, "--participant-label", "1"]
    # Found alone, or named with --series-uid: one message, and no advice that fails next.
    for extra in ([], ["--series-uid", one["uid"]]):
        result = invoke(runner, args + extra, expect=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert str(tmp_path / "dicom") in lines[0]
        assert "has only one slice" in lines[0] and "needs at least 2 slices" in lines[0]
        assert "export the full series" in lines[0] and "localiser/scout" in lines[0]
        assert "--series-uid" not in lines[0]
        assert not raw.exists()

    # With a volume beside it: named, and how to import it.
    ct = write_series(tmp_path / "dicom" / "ct", known_hu((4, 16, 16)))
    result = invoke(runner, args + ["--series-uid", one["uid"]], expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has only one slice" in lines[0], result.stderr
    assert f"the folder also holds an axial CT series: {ct['uid']}" in lines[0]
    assert f"import that series instead (--series-uid {ct['uid']})" in lines[0]
    assert not raw.exists()
    invoke(runner, args)  # without --series-uid the volume is taken
    assert (raw / "sub-1" / "anat" / "sub-1_ct.nii.gz").is_file()


def test_cli_several_single_slice_series_are_one_error(tmp_path, runner):
    hu = known_hu((3, 16, 16))
    for k in range(3):  # one scan exported with a SeriesInstanceUID per slice
        write_series(tmp_path / "dicom", hu[k : k + 1], origin=(0.0, 0.0, 2.0 * k), prefix=f"S{k}")
    result = invoke(
        runner,
        ["import-dicom", tmp_path / "dicom", tmp_path / "raw", "--participant-label", "1"],
        expect=1,
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the 3 CT series found have only one slice each" in lines[0]
    assert "one SeriesInstanceUID" in lines[0] and "Traceback" not in result.stderr


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    with pytest.raises(DicomError, match="no DICOM image files"):
        find_series(tmp_path)


# ----------------------------------------------------------------------------- finding series
def test_localizer_and_ct_the_ct_is_taken_the_other_listed(tmp_path, logs):
    ct = write_series(tmp_path / "study" / "ct", known_hu(), prefix="CT")
    loc = write_series(
        tmp_path / "study" / "ct",
        known_hu((3, 16, 16), seed=5),
        step=10.0,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        description="Topogram",
        prefix="LOC",
    )
    (tmp_path / "study" / "README.txt").write_text("exported from PACS\n")
    (tmp_path / "study" / "junk.bin").write_bytes(os.urandom(512))
    (tmp_path / "study" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    index = Dataset()  # a DICOMDIR under another name: skipped by its media storage class
    index.file_meta = FileMetaDataset()
    index.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    index.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    index.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index.SOPClassUID, index.Modality = "1.2.840.10008.1.3.10", "OT"
    index.save_as(tmp_path / "study" / "INDEX", enforce_file_format=True)

    series = find_series(tmp_path)
    assert {s.uid for s in series} == {ct["uid"], loc["uid"]}
    by_uid = {s.uid: s for s in series}
    assert by_uid[loc["uid"]].is_localizer and by_uid[loc["uid"]].not_a_candidate == "localizer"
    assert by_uid[ct["uid"]].n_files == 10 and by_uid[ct["uid"]].orientation == "axial"

    image, info = read_ct_series(tmp_path)
    assert info.series.uid == ct["uid"]
    check_against_truth(image, ct)
    listed = " ".join(r.getMessage() for r in logs.records if r.levelno == logging.INFO)
    assert loc["uid"] in listed and "localizer" in listed and "Topogram" in listed

    image, info = read_ct_series(tmp_path, series_uid=loc["uid"])
    assert image.GetSize()[2] == 3 and image.GetSpacing()[2] == pytest.approx(10.0)


def test_single_valued_image_type_marks_a_localizer(tmp_path):
    write_series(tmp_path / "ct", known_hu((4, 16, 16)), prefix="CT")
    loc = write_series(
        tmp_path / "ct", known_hu((5, 16, 16)), image_type=("LOCALIZER",), prefix="LOC"
    )
    series = {s.uid: s for s in find_series(tmp_path)}
    assert series[loc["uid"]].image_type == ("LOCALIZER",)
    _, info = read_ct_series(tmp_path)  # the larger localizer is not taken
    assert info.series.uid != loc["uid"] and len(info.files) == 4


def test_unknown_series_uid_lists_the_series(tmp_path):
    ct = write_series(tmp_path / "ct", known_hu())
    with pytest.raises(UsageError) as err:
        select_series(find_series(tmp_path), "1.2.3.999")
    message = str(err.value)
    assert ct["uid"] in message and "CT" in message and "10 files" in message
    assert "test CT" in message


def test_two_equal_ct_series_are_ambiguous(tmp_path):
    a = write_series(tmp_path / "a", known_hu((4, 16, 16)))
    b = write_series(tmp_path / "b", known_hu((4, 16, 16)))
    with pytest.raises(UsageError, match="--series-uid") as err:
        read_ct_series(tmp_path)
    assert a["uid"] in str(err.value) and b["uid"] in str(err.value)
    image, info = read_ct_series(tmp_path, series_uid=b["uid"])
    check_against_truth(image, b)


def test_larger_ct_series_wins_and_the_other_is_warned_about(tmp_path, logs):
    small = write_series(tmp_path / "a", known_hu((4, 16, 16)))
    large = write_series(tmp_path / "b", known_hu((6, 16, 16)))
    _, info = read_ct_series(tmp_path)
    assert info.series.uid == large["uid"]
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert any(small["uid"] in w for w in warnings)


# ----------------------------------------------------------------------------- decoding
def test_jpeg_lossless_is_decoded(tmp_path):
    truth = write_series(tmp_path / "ct", known_hu((4, 16, 16)), encode=jpeg_lossless)
    image, info = read_ct_series(tmp_path / "ct")
    check_against_truth(image, truth)
    assert info.transfer_syntax == JPEGLosslessSV1
    from pydicom.pixels import get_decoder

    # pydicom decodes it when it has a plug-in for it; GDCM (SimpleITK) otherwise.
    assert info.decoders == ["pydicom" if get_decoder(JPEGLosslessSV1).is_available else "gdcm"]


def test_undecodable_pixel_data_names_the_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate

    def garbage(stored):
        return encapsulate([b"\xff\xd8" + b"\x00" * 64]), JPEGLosslessSV1, {}

    write_series(tmp_path / "ct", known_hu((3, 16, 16)), encode=garbage)
    with pytest.raises(DicomError) as err:
        read_ct_series(tmp_path / "ct")
    message = str(err.value)
    assert "JPEG Lossless" in message and JPEGLosslessSV1 in message
    assert "Fix:" in message and ("pip install" in message or "damaged" in message)


# ----------------------------------------------------------------------------- real series
def test_ibsi_ct_phantom_equals_reference_nifti(data_dir):
    image, info = read_ct_series(data_dir / "ibsi1-ct-phantom" / "dicom" / "image")
    reference = sitk.ReadImage(str(data_dir / "ibsi1-ct-phantom" / "nifti" / "image.nii.gz"))
    assert grid_difference(image, reference) is None
    on_grid = to_reference_grid(image, reference)
    np.testing.assert_array_equal(array(on_grid), array(reference))
    assert image.GetPixelID() == sitk.sitkInt16
    assert len(info.files) == 60


def test_totalseg_jpeg2000_series_uses_measured_spacing(data_dir):
    folder = data_dir / "totalseg-example" / "example_ct_dicom"
    image, info = read_ct_series(folder)
    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0))
    assert info.metadata["SliceThickness"] == 3.0
    assert info.metadata["SpacingBetweenSlices"] == 2.0
    assert info.transfer_syntax == "1.2.840.10008.1.2.4.90"
    # Independent check of the geometry: the TotalSegmentator liver lies on the liver
    # once matched in physical space (its file has a flipped y axis).
    seg = sitk.ReadImage(str(data_dir / "totalseg-example" / "example_seg_dicom.nii.gz"))
    liver = array(to_reference_grid(seg, image)) == 5
    assert liver.sum() > 100000
    assert 60 < float(array(image)[liver].mean()) < 120
    # Independent check of the decoder: GDCM reads the same values in our order.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in info.files])
    gdcm = reader.Execute()
    assert grid_difference(gdcm, image) is None
    np.testing.assert_array_equal(array(gdcm), array(image))


@pytest.mark.parametrize("case,slices", [("CRLM-CT-1004", 41), ("CRLM-CT-1006", 51)])
def test_crlm_series_have_sensible_hu_and_geometry(data_dir, case, slices):
    image, info = read_ct_series(data_dir / "crlm-tcia" / case / "image")
    assert image.GetSize() == (512, 512, slices)
    spacing = image.GetSpacing()
    assert 0.75 < spacing[0] == spacing[1] < 0.85 and spacing[2] == pytest.approx(5.0)
    values = array(image)
    assert values.min() == -3024  # padding outside the reconstruction circle, kept
    assert values[:, :4, :4].max() == -3024
    body = values[values > -2048]
    air = np.histogram(body[body < -500], bins=60, range=(-1100, -500))
    assert -1050 <= air[1][np.argmax(air[0])] <= -950
    tissue = np.histogram(body[(body > -20) & (body < 300)], bins=32, range=(-20, 300))
    assert 0 <= tissue[1][np.argmax(tissue[0])] <= 200
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in info.files])
    assert grid_difference(reader.Execute(), image) is None


# ----------------------------------------------------------------------------- library import
def test_import_dicom_writes_image_sidecar_and_participant(tmp_path):
    truth = write_series(tmp_path / "dicom" / "study" / "ct", known_hu())
    raw = tmp_path / "raw"
    out = import_dicom(
        tmp_path / "dicom",
        raw,
        participant="sub-007",
        session="1",
        phase="portal",
        primary="colorectal",
    )
    assert out == raw / "sub-007" / "ses-1" / "anat" / "sub-007_ses-1_ce-portal_ct.nii.gz"
    check_against_truth(sitk.ReadImage(str(out)), truth)
    doc = json.loads(out.with_name("sub-007_ses-1_ce-portal_ct.json").read_text())
    validate(doc, "sidecar")
    validate(doc, "import_dicom")
    record = doc["Provenance"]["inputs"]
    assert record == [
        {"uri": "bids:dicom:study/ct", "sha256": series_sha256(truth["paths"]), "files": 10}
    ]
    assert doc["Provenance"]["settings"] == SETTINGS
    assert doc["SpacingBetweenSlices"] == 2.0 and doc["SliceThickness"] == 3.0
    assert doc["Manufacturer"] == "ACME" and doc["KVP"] == 120.0
    assert doc["ContrastBolusAgent"] == "Iomeprol"
    assert "SeriesInstanceUID" not in doc and len(doc["SeriesInstanceUIDSha256"]) == 64
    assert doc["SeriesInstanceUIDSha256"] == hashlib.sha256(truth["uid"].encode()).hexdigest()
    assert "FrameOfReferenceUID" not in doc  # the UIDs only as their sha256
    assert (
        doc["FrameOfReferenceUIDSha256"] == hashlib.sha256(FRAME_OF_REFERENCE.encode()).hexdigest()
    )
    # The UIDs themselves only inside DicomSource (a DICOM-SEG written from the CT must
    # name them: tests/test_dicom_seg_out.py), never a name, ID or date.
    assert doc["DicomSource"]["SeriesInstanceUID"] == truth["uid"]
    outside = json.dumps({k: v for k, v in doc.items() if k != "DicomSource"})
    assert truth["uid"] not in outside and FRAME_OF_REFERENCE not in outside
    assert PATIENT_ID not in json.dumps(doc) and "Doe" not in json.dumps(doc)
    rows = (raw / "participants.tsv").read_text().splitlines()
    assert rows == ["participant_id\tprimary", "sub-007\tcolorectal"]
    description = json.loads((raw / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"


def test_identifying_folder_names_are_not_recorded(tmp_path):
    write_series(tmp_path / "dicom" / f"{PATIENT_ID}_export" / "ct", known_hu((3, 16, 16)))
    out = import_dicom(tmp_path / "dicom", tmp_path / "raw", participant="1")
    doc = json.loads(out.with_name("sub-1_ct.json").read_text())
    assert doc["Provenance"]["inputs"][0]["uri"] == "bids:dicom:"
    assert PATIENT_ID not in json.dumps(doc)


def test_series_hash_ignores_names_and_order(tmp_path):
    truth = write_series(tmp_path / "ct", known_hu((3, 16, 16)))
    first = series_sha256(truth["paths"])
    renamed = []
    for index, path in enumerate(reversed(truth["paths"])):
        renamed.append(path.rename(path.with_name(f"x{index}.dcm")))
    assert series_sha256(renamed) == first
    data = bytearray(renamed[0].read_bytes())
    data[-1] ^= 1
    renamed[0].write_bytes(bytes(data))
    assert series_sha256(renamed) != first


# ----------------------------------------------------------------------------- command line
def _sidecar(raw: Path, label: str) -> Path:
    return raw / f"sub-{label}" / "anat" / f"sub-{label}_ct.json"


def test_cli_imports_skips_and_overwrites(tmp_path, runner):
    write_series(tmp_path / "dicom", known_hu())
    raw = tmp_path / "raw"
    result = invoke(
        runner,
        [
            "import-dicom",
            tmp_path / "dicom",
            raw,
            "--participant-label",
            "01",
            "--primary",
            "pancreatic",
        ],
    )
    out = raw / "sub-01" / "anat" / "sub-01_ct.nii.gz"
    assert result.stdout.strip() == str(out)
    assert out.is_file() and _sidecar(raw, "01").is_file()
    text = _sidecar(raw, "01").read_text()
    doc = json.loads(text)
    validate(doc, "sidecar")
    for secret in (
        str(tmp_path),
        PATIENT_NAME,
        "Doe",
        PATIENT_ID,
        "19600101",
        "20200202",
        "Sunnyvale",
    ):
        assert secret not in text
    assert not any(isinstance(v, str) and v.startswith("/") for v in _strings(doc))
    assert "sub-01\tpancreatic" in (raw / "participants.tsv").read_text()

    before = (out.stat().st_ino, _sidecar(raw, "01").stat().st_ino)
    invoke(
        runner,
        [
            "import-dicom",
            tmp_path / "dicom",
            raw,
            "--participant-label",
            "01",
            "--primary",
            "colorectal",
        ],
    )
    assert (out.stat().st_ino, _sidecar(raw, "01").stat().st_ino) == before  # skipped
    assert "sub-01\tcolorectal" in (raw / "participants.tsv").read_text()  # label updated
    invoke(
        runner,
        ["import-dicom", tmp_path / "dicom", raw, "--participant-label", "01", "--overwrite"],
    )
    assert out.stat().st_ino != before[0]


def _strings(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)
    else:
        yield obj


def test_cli_refuses_to_replace_an_image_from_another_series(tmp_path, runner):
    write_series(tmp_path / "a", known_hu((3, 16, 16)))
    write_series(tmp_path / "b", known_hu((3, 16, 16), seed=9))
    raw = tmp_path / "raw"
    invoke(runner, ["import-dicom", tmp_path / "a", raw, "--participant-label", "5"])
    first = _sidecar(raw, "5").read_text()
    result = invoke(
        runner, ["import-dicom", tmp_path / "b", raw, "--participant-label", "5"], expect=2
    )
    assert "another series" in result.stderr and "--overwrite" in result.stderr
    assert _sidecar(raw, "5").read_text() == first
    invoke(runner, ["import-dicom", tmp_path / "b", raw, "--participant-label", "5", "--overwrite"])
    assert _sidecar(raw, "5").read_text() != first


@pytest.mark.parametrize("label", ["../evil", "a/b", "sub_1", "bad label", ".."])
def test_cli_bad_label_is_a_usage_error(tmp_path, runner, label):
    write_series(tmp_path / "dicom", known_hu((3, 16, 16)))
    result = invoke(
        runner,
        ["import-dicom", tmp_path / "dicom", tmp_path / "raw", "--participant-label", label],
        expect=2,
    )
    assert "not a valid label" in result.stderr
    assert not (tmp_path / "raw").exists()


def test_cli_bad_primary_and_output_inside_input(tmp_path, runner):
    write_series(tmp_path / "dicom", known_hu((3, 16, 16)))
    invoke(
        runner,
        [
            "import-dicom",
            tmp_path / "dicom",
            tmp_path / "raw",
            "--participant-label",
            "1",
            "--primary",
            "colo rectal",
        ],
        expect=2,
    )
    result = invoke(
        runner,
        [
            "import-dicom",
            tmp_path / "dicom",
            tmp_path / "dicom" / "raw",
            "--participant-label",
            "1",
        ],
        expect=2,
    )
    assert "inside DICOM_DIR" in result.stderr
    assert not (tmp_path / "raw").exists() and not (tmp_path / "dicom" / "raw").exists()


@pytest.mark.parametrize("problem", ["missing-slice", "mr", "mixed", "no-dicom"])
def test_cli_bad_input_exits_1_with_one_line_and_writes_nothing(tmp_path, runner, problem):
    folder = tmp_path / "dicom"
    if problem == "missing-slice":
        truth = write_series(folder, known_hu())
        truth["paths"][3].unlink()
    elif problem == "mr":
        write_series(folder, known_hu((4, 16, 16)), modality="MR", sop_class=MR_STORAGE)
    elif problem == "mixed":
        write_series(
            folder,
            known_hu((3, 16, 16)),
            iops=[(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 1, 0)],
        )
    else:
        folder.mkdir()
        (folder / "readme.txt").write_text("nothing here\n")
    raw = tmp_path / "raw"
    result = invoke(runner, ["import-dicom", folder, raw, "--participant-label", "9"], expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metcli: error:"), result.stderr
    assert "Traceback" not in result.stderr and "Fix:" in lines[0]
    assert result.stdout == ""
    assert not raw.exists() or not any(raw.iterdir())


def test_cli_real_series_chosen_by_uid_among_two_patients(data_dir, tmp_path, runner):
    root = data_dir / "crlm-tcia"
    first = pydicom.dcmread(
        sorted((root / "CRLM-CT-1004" / "image").iterdir())[0], stop_before_pixels=True
    )
    raw = tmp_path / "raw"
    invoke(
        runner,
        [
            "import-dicom",
            root,
            raw,
            "--participant-label",
            "1004",
            "--phase",
            "portal",
            "--series-uid",
            first.SeriesInstanceUID,
            "--primary",
            "colorectal",
        ],
    )
    out = raw / "sub-1004" / "anat" / "sub-1004_ce-portal_ct.nii.gz"
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (512, 512, 41) and image.GetPixelID() == sitk.sitkInt16
    text = out.with_name("sub-1004_ce-portal_ct.json").read_text()
    doc = json.loads(text)
    validate(doc, "sidecar")
    assert doc["Provenance"]["inputs"][0]["files"] == 41
    # The folder CRLM-CT-1004/image carries the PatientID: the root is recorded instead.
    assert doc["Provenance"]["inputs"][0]["uri"] == "bids:dicom:"
    assert "CRLM-CT-1004" not in text and str(first.PatientName) not in text
    assert doc["DicomSource"]["SeriesInstanceUID"] == first.SeriesInstanceUID
    del doc["DicomSource"]  # the UIDs only there (see the synthetic test above)
    assert first.SeriesInstanceUID not in json.dumps(doc)
    assert doc["PixelPaddingValueHU"] == -3024 and doc["SpacingBetweenSlices"] == 5.0
