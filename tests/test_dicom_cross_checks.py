"""import-mask with DICOM masks: transfer syntaxes, UIDs checked against the CT, contours
outside the CT, --strict and --fractional-threshold.

Every file is real DICOM: the CT is written by :func:`metcli.imaging.dicom.writer.
ct_to_dicom_series` and imported with ``metcli import-dicom``; the DICOM-SEGs are written by
highdicom from those slices and re-encoded with pydicom; the RTSTRUCTs come from
``test_import_mask.write_rtstruct``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from test_import_mask import one_line_error, read_array, square, write_raw, write_rtstruct

from conftest import invoke, make_image

SHAPE = (4, 24, 20)  # z, y, x
OTHER_UID = "1.2.826.0.1.3680043.8.498.123456789"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def warnings_logged():
    """metcli's WARNING records during a test (the command line renders them with rich,
    which wraps long lines at the terminal's width)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("metcli")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def messages(records) -> list[str]:
    out = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert all("\n" not in m for m in out), out  # one line each
    return out


@pytest.fixture
def dicom_ct(tmp_path, runner):
    """A 4-slice CT written as DICOM and imported with import-dicom (sub-01)."""
    from metcli.imaging.dicom.writer import ct_to_dicom_series
    from metcli.io.files import OutputSet

    ct = make_image(np.zeros(SHAPE, dtype=np.int16), spacing=(1.0, 1.5, 2.0), origin=(10, -5, 3))
    folder = tmp_path / "dicom"
    folder.mkdir()
    with OutputSet() as outputs:
        ct_to_dicom_series(ct, folder, outputs=outputs, uid_sources=["x"], patient_id="p1")
    files = sorted(folder.glob("CT*.dcm"))
    raw = tmp_path / "raw"
    invoke(runner, ["import-dicom", folder, raw, "--participant-label", "01"])
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {
        "image": ct,
        "files": files,
        "raw": raw,
        "ct_path": raw / "sub-01" / "anat" / "sub-01_ct.nii.gz",
        "frame": str(first.FrameOfReferenceUID),
        "series": str(first.SeriesInstanceUID),
    }


def lesion_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1:3, 5:12, 4:9] = True
    return mask


def write_seg(path: Path, files, pixels: np.ndarray, *, fractional: bool = False) -> Path:
    """A DICOM-SEG of one segment 'GTV' on the CT slices ``files`` (highdicom)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in files]
    kind = hd.seg.SegmentationTypeValues
    hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels.astype(np.float32 if fractional else np.uint8),
        segmentation_type=kind.FRACTIONAL if fractional else kind.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="GTV",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Neoplasm,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="metcli tests",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    ).save_as(path)
    return path


def resave(source: Path, path: Path, syntax: str) -> Path:
    """``source`` written again in another transfer syntax, as pydicom writes it."""
    ds = pydicom.dcmread(source)
    if syntax == RLELossless and int(ds.BitsAllocated) == 1:
        # pydicom's encoder refuses 1-bit frames: encode each packed frame by hand, as a
        # writer that does it would (one RLE segment of literal runs per frame).
        frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
        encoded = []
        for frame in frames:
            packed = np.packbits(frame.ravel(), bitorder="little").tobytes()
            body = b"".join(
                bytes([len(packed[i : i + 128]) - 1]) + packed[i : i + 128]
                for i in range(0, len(packed), 128)
            )
            header = np.zeros(16, "<u4")
            header[:2] = (1, 64)
            encoded.append(header.tobytes() + body + b"\0" * (len(body) % 2))
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.save_as(path, enforce_file_format=True)
    elif syntax == RLELossless:
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    elif syntax == ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return path


def import_mask(runner, mask, ct, seg_dir, *extra, expect=0):
    return invoke(
        runner,
        ["import-mask", mask, ct["raw"], seg_dir, "--participant-label", "01", *extra],
        expect=expect,
    )


def outputs(seg_dir: Path):
    anat = seg_dir / "sub-01" / "anat"
    return anat / "sub-01_dseg.nii.gz", anat / "sub-01_dseg.json"


def nothing_written(seg_dir: Path) -> bool:
    return not seg_dir.exists() or not list(seg_dir.rglob("*_dseg*"))


# ----------------------------------------------------------------------------- transfer syntaxes
@pytest.mark.parametrize(
    "syntax,fractional",
    [
        (ImplicitVRLittleEndian, False),
        (DeflatedExplicitVRLittleEndian, False),
        (ExplicitVRBigEndian, False),
        (ExplicitVRBigEndian, True),
        (RLELossless, True),
    ],
    ids=["implicit", "deflated", "big-endian", "big-endian-fractional", "rle-8-bit"],
)
def test_seg_in_other_transfer_syntaxes_reads_back_equal(
    runner, dicom_ct, tmp_path, syntax, fractional
):
    mask = lesion_mask()
    pixels = mask * 0.8 if fractional else mask
    source = write_seg(tmp_path / "seg.dcm", dicom_ct["files"], pixels, fractional=fractional)
    other = resave(source, tmp_path / "other.dcm", syntax)
    seg_dir = tmp_path / "seg"
    result = import_mask(runner, other, dicom_ct, seg_dir)
    assert "Traceback" not in result.stderr and result.stderr.strip() == "", result.stderr
    image, sidecar = outputs(seg_dir)
    assert np.array_equal(read_array(image) == 2, mask)
    doc = json.loads(sidecar.read_text())
    assert doc["SegmentationType"] == ("FRACTIONAL" if fractional else "BINARY")


def test_rle_seg_of_1_bit_frames_is_refused_naming_the_syntax(runner, dicom_ct, tmp_path):
    source = write_seg(tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask())
    rle = resave(source, tmp_path / "seg_rle.dcm", RLELossless)
    seg_dir = tmp_path / "seg"
    result = import_mask(runner, rle, dicom_ct, seg_dir, expect=1)
    err = one_line_error(
        result,
        str(rle),
        "1-bit frames encoded as RLE Lossless (1.2.840.10008.1.2.5)",
        "cannot convert them either",
        "Fix: export the segmentation again",
        "Explicit VR Little Endian",
        "NIfTI or NRRD label image",
    )
    assert "regular 3D volume" not in err
    assert nothing_written(seg_dir)


def test_damaged_compressed_seg_names_the_syntax_and_a_conversion(tmp_path, dicom_ct):
    from metcli.core.errors import MaskError
    from metcli.imaging.dicom_seg import read_dicom_seg

    source = write_seg(
        tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask() * 0.8, fractional=True
    )
    rle = resave(source, tmp_path / "seg_rle.dcm", RLELossless)
    ds = pydicom.dcmread(rle)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + b"\x00" * 60 + b"\x80"] * 2)
    ds.save_as(rle, enforce_file_format=True)
    with pytest.raises(MaskError) as err:
        read_dicom_seg(rle, dicom_ct["image"])
    message = str(err.value)
    assert "8-bit, encoded as RLE Lossless (1.2.840.10008.1.2.5)" in message
    assert "gdcmconv --raw seg_rle.dcm seg_rle_le.dcm (GDCM)" in message


def test_truncated_seg_onto_a_dicom_ct_is_one_line(runner, dicom_ct, tmp_path):
    seg = write_seg(tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask())
    seg.write_bytes(seg.read_bytes()[:1200])
    seg_dir = tmp_path / "seg"
    result = import_mask(runner, seg, dicom_ct, seg_dir, expect=1)
    err = one_line_error(result, str(seg), "cannot read the DICOM-SEG")
    assert "unexpected" not in err
    assert nothing_written(seg_dir)


# ----------------------------------------------------------------------------- UIDs
def test_seg_of_the_same_series_matches_and_is_recorded(runner, dicom_ct, tmp_path):
    ct_doc = json.loads(dicom_ct["ct_path"].with_name("sub-01_ct.json").read_text())
    assert ct_doc["FrameOfReferenceUIDSha256"] == sha256(dicom_ct["frame"])
    assert ct_doc["SeriesInstanceUIDSha256"] == sha256(dicom_ct["series"])
    seg = write_seg(tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask())
    seg_dir = tmp_path / "seg"
    result = import_mask(runner, seg, dicom_ct, seg_dir)
    assert result.stderr.strip() == ""
    text = outputs(seg_dir)[1].read_text()
    checks = json.loads(text)["DicomChecks"]
    assert checks == {
        "frame_of_reference": {
            "checked": True,
            "mask": [sha256(dicom_ct["frame"])],
            "ct": sha256(dicom_ct["frame"]),
            "match": True,
        },
        "referenced_series": {
            "checked": True,
            "mask": [sha256(dicom_ct["series"])],
            "ct": sha256(dicom_ct["series"]),
            "match": True,
        },
    }
    assert dicom_ct["frame"] not in text and dicom_ct["series"] not in text  # no UIDs written
    inputs = [i["uri"] for i in json.loads(text)["Provenance"]["inputs"]]
    assert inputs == [
        "bids:raw:sub-01/anat/sub-01_ct.nii.gz",
        "bids:raw:sub-01/anat/sub-01_ct.json",
        "bids:mask:seg.dcm",
    ]


def _other_study(seg: Path, *, frame: bool = True, series: bool = True) -> Path:
    ds = pydicom.dcmread(seg)
    if frame:
        ds.FrameOfReferenceUID = OTHER_UID
    if series:
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = OTHER_UID + ".2"
    ds.save_as(seg, enforce_file_format=True)
    return seg


def test_seg_of_another_scan_warns_records_and_fails_with_strict(
    runner, dicom_ct, tmp_path, warnings_logged
):
    seg = _other_study(write_seg(tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask()))
    seg_dir = tmp_path / "seg"
    result = import_mask(runner, seg, dicom_ct, seg_dir, "--strict", expect=1)
    err = one_line_error(
        result,
        str(seg),
        "its FrameOfReferenceUID differs from that of the CT",
        str(dicom_ct["ct_path"]),
        f"{sha256(OTHER_UID)[:16]} vs {sha256(dicom_ct['frame'])[:16]}",
        "Fix: import it onto the CT it was drawn on",
        "leave out --strict",
    )
    assert "Traceback" not in err
    assert nothing_written(seg_dir)

    assert messages(warnings_logged) == []  # the error alone, no warning before it

    import_mask(runner, seg, dicom_ct, seg_dir)  # without --strict: warnings
    assert messages(warnings_logged) == [
        f"seg.dcm: its FrameOfReferenceUID differs from the CT's (sub-01_ct.nii.gz): mask "
        f"sha256 {sha256(OTHER_UID)[:16]}, CT sha256 {sha256(dicom_ct['frame'])[:16]} (sha256 "
        "of the UIDs); the mask may have been drawn on another scan",
        f"seg.dcm: its SeriesInstanceUID differs from the CT's (sub-01_ct.nii.gz): mask "
        f"sha256 {sha256(OTHER_UID + '.2')[:16]}, CT sha256 {sha256(dicom_ct['series'])[:16]} "
        "(sha256 of the UIDs); the mask may have been drawn on another series",
    ]
    checks = json.loads(outputs(seg_dir)[1].read_text())["DicomChecks"]
    assert checks["frame_of_reference"] == {
        "checked": True,
        "mask": [sha256(OTHER_UID)],
        "ct": sha256(dicom_ct["frame"]),
        "match": False,
    }
    assert checks["referenced_series"]["match"] is False
    assert checks["referenced_series"]["mask"] == [sha256(OTHER_UID + ".2")]


def test_another_referenced_series_alone_is_a_warning_even_with_strict(
    runner, dicom_ct, tmp_path, warnings_logged
):
    seg = write_seg(tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask())
    _other_study(seg, frame=False)
    seg_dir = tmp_path / "seg"
    import_mask(runner, seg, dicom_ct, seg_dir, "--strict")
    (warning,) = messages(warnings_logged)
    assert warning.startswith("seg.dcm: its SeriesInstanceUID differs from the CT's")
    checks = json.loads(outputs(seg_dir)[1].read_text())["DicomChecks"]
    assert checks["frame_of_reference"]["match"] is True
    assert checks["referenced_series"]["match"] is False
    settings = json.loads(outputs(seg_dir)[1].read_text())["Provenance"]["settings"]
    assert settings["strict"] is True


def test_ct_without_dicom_origin_is_recorded_as_not_checked(runner, dicom_ct, tmp_path):
    raw = tmp_path / "plain"
    write_raw(raw, dicom_ct["image"])  # a NIfTI CT without an import-dicom sidecar
    seg = _other_study(write_seg(tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask()))
    seg_dir = tmp_path / "seg"
    result = invoke(
        runner, ["import-mask", seg, raw, seg_dir, "--participant-label", "01", "--strict"]
    )
    assert result.stderr.strip() == ""
    checks = json.loads(outputs(seg_dir)[1].read_text())["DicomChecks"]
    reason = "the CT has no sidecar, so it has no DICOM origin on record"
    assert checks == {
        "frame_of_reference": {"checked": False, "reason": reason},
        "referenced_series": {"checked": False, "reason": reason},
    }


# ----------------------------------------------------------------------------- RTSTRUCT
def test_rtstruct_contours_outside_the_ct_are_counted_and_refused_with_strict(
    runner, dicom_ct, tmp_path, warnings_logged
):
    ct = dicom_ct["image"]  # 20 x 24 voxels, 4 slices
    contours = [
        square(ct, 1, 2, 8, 2, 8),  # inside
        square(ct, 2, 14, 25, 3, 9),  # reaches beyond x = 19: cut at the edge
        square(ct, 5, 2, 8, 2, 8),  # beyond the last slice: skipped
    ]
    rtstruct = write_rtstruct(
        tmp_path / "rs.dcm",
        {"GTV-1": contours, "Liver": [square(ct, 1, 1, 18, 1, 20)]},
        frame_uid=dicom_ct["frame"],
        series_uid=dicom_ct["series"],
    )
    seg_dir = tmp_path / "seg"
    result = import_mask(runner, rtstruct, dicom_ct, seg_dir, "--strict", expect=1)
    one_line_error(
        result,
        str(rtstruct),
        "2 of 3 contour(s) of ROI 'GTV-1' lie (partly) outside the CT",
        "(1 beyond its slices, 1 reaching outside its in-plane grid)",
        "Fix: import the RTSTRUCT onto the CT series it was drawn on",
    )
    assert nothing_written(seg_dir)

    assert messages(warnings_logged) == []

    import_mask(runner, rtstruct, dicom_ct, seg_dir)
    assert messages(warnings_logged) == [
        "rs.dcm: ROI 'GTV-1': 1 of 3 contour(s) lie beyond the image's slices and were skipped",
        "rs.dcm: ROI 'GTV-1': 1 of 3 contour(s) reach outside the image's in-plane grid and "
        "were cut at its edge",
    ]
    image, sidecar = outputs(seg_dir)
    dseg = read_array(image)
    assert int((dseg[2] == 2).sum()) == 7 * 6  # x 14..19 (cut at the edge), y 3..8
    checks = json.loads(sidecar.read_text())["DicomChecks"]
    assert checks["contours"] == {
        "Liver": {"contours": 1, "outside": 0, "beyond_slices": 0, "outside_grid": 0},
        "GTV-1": {"contours": 3, "outside": 2, "beyond_slices": 1, "outside_grid": 1},
    }
    assert checks["frame_of_reference"]["match"] and checks["referenced_series"]["match"]


def test_rtstruct_of_another_frame_of_reference_fails_with_strict(runner, dicom_ct, tmp_path):
    rtstruct = write_rtstruct(
        tmp_path / "rs.dcm",
        {"GTV-1": [square(dicom_ct["image"], 1, 2, 8, 2, 8)]},
        frame_uid=generate_uid(),
    )
    seg_dir = tmp_path / "seg"
    result = import_mask(runner, rtstruct, dicom_ct, seg_dir, "--strict", expect=1)
    one_line_error(result, str(rtstruct), "FrameOfReferenceUID differs", "--strict")
    assert nothing_written(seg_dir)
    import_mask(runner, rtstruct, dicom_ct, seg_dir)
    checks = json.loads(outputs(seg_dir)[1].read_text())["DicomChecks"]
    assert checks["frame_of_reference"]["match"] is False
    assert checks["referenced_series"] == {
        "checked": False,
        "reason": "the mask names no SeriesInstanceUID",
    }


# ----------------------------------------------------------------------------- threshold
def test_fractional_threshold_is_an_option_and_recorded(runner, dicom_ct, tmp_path):
    fractions = np.zeros(SHAPE, dtype=np.float32)
    fractions[1, 4:8, 4:8] = 0.3
    fractions[2, 4:8, 4:8] = 0.7
    seg = write_seg(tmp_path / "seg.dcm", dicom_ct["files"], fractions, fractional=True)
    seg_dir = tmp_path / "seg"
    import_mask(runner, seg, dicom_ct, seg_dir)
    image, sidecar = outputs(seg_dir)
    assert np.array_equal(read_array(image) == 2, fractions >= 0.5)
    doc = json.loads(sidecar.read_text())
    assert doc["SegmentationType"] == "FRACTIONAL" and doc["FractionalType"] == "PROBABILITY"
    assert doc["FractionalThreshold"] == 0.5
    assert doc["Provenance"]["settings"]["fractional_threshold"] == 0.5

    import_mask(runner, seg, dicom_ct, seg_dir, "--fractional-threshold", "0.25")
    assert np.array_equal(read_array(image) == 2, fractions > 0)
    doc = json.loads(sidecar.read_text())
    assert doc["FractionalThreshold"] == 0.25
    assert doc["Provenance"]["settings"]["fractional_threshold"] == 0.25

    for bad in ("0", "1.5"):
        result = import_mask(
            runner, seg, dicom_ct, seg_dir, "--fractional-threshold", bad, expect=2
        )
        assert "--fractional-threshold" in result.stderr and "0<x<=1" in result.stderr
    help_text = " ".join(invoke(runner, ["import-mask", "--help"]).stdout.split())
    assert "--fractional-threshold F DICOM-SEG of SegmentationType FRACTIONAL" in help_text
    assert "at least F, in (0, 1]" in help_text and "[default: 0.5; 0<x<=1]" in help_text
    assert "--strict" in help_text


def test_binary_seg_records_its_type_without_a_threshold(runner, dicom_ct, tmp_path):
    seg = write_seg(tmp_path / "seg.dcm", dicom_ct["files"], lesion_mask())
    seg_dir = tmp_path / "seg"
    import_mask(runner, seg, dicom_ct, seg_dir, "--fractional-threshold", "0.9")
    doc = json.loads(outputs(seg_dir)[1].read_text())
    assert doc["SegmentationType"] == "BINARY" and "FractionalThreshold" not in doc


# ----------------------------------------------------------------------------- real data
@pytest.mark.data
def test_ibsi_phantom_rtstruct_matches_its_imported_series(runner, data_dir, tmp_path):
    phantom = data_dir / "ibsi1-ct-phantom" / "dicom"
    raw = tmp_path / "raw"
    invoke(runner, ["import-dicom", phantom / "image", raw, "--participant-label", "ibsi"])
    seg_dir = tmp_path / "seg"
    args = ["import-mask", phantom / "mask", raw, seg_dir, "--participant-label", "ibsi"]
    result = invoke(runner, [*args, "--strict"])
    assert result.stderr.strip() == ""
    doc = json.loads((seg_dir / "sub-ibsi" / "anat" / "sub-ibsi_dseg.json").read_text())
    checks = doc["DicomChecks"]
    assert checks["frame_of_reference"]["checked"] and checks["frame_of_reference"]["match"]
    assert checks["referenced_series"]["checked"] and checks["referenced_series"]["match"]
    assert checks["contours"]["GTV-1"]["contours"] == 26
    assert checks["contours"]["GTV-1"]["outside"] == 0
    assert doc["VoxelCounts"]["lesion"] == 125_256
