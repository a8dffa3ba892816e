"""DICOM headers: read one file's header into a :class:`SliceHeader`.

Files that are not DICOM, and DICOMDIR index files, read as None. An MR file's header
also carries what the MR import needs (:class:`MRHeader`: sequence, echo and diffusion
tags, and which vendor-private diffusion tags are present).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
#: Vendor-private tags that hold diffusion b-values/directions (read by dcm2niix, not metcli).
PRIVATE_DIFFUSION_TAGS = (
    ((0x0029, 0x1010), "Siemens CSA image header (0029,1010)"),
    ((0x0019, 0x100C), "Siemens (0019,100C)"),
    ((0x0043, 0x1039), "GE (0043,1039)"),
    ((0x2001, 0x1003), "Philips (2001,1003)"),
)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class MRHeader:
    """What the MR import needs from one MR file's header (times in ms, as DICOM has them)."""

    scanning_sequence: tuple[str, ...]  # (0018,0020): SE, GR, IR, EP, RM
    sequence_variant: tuple[str, ...]  # (0018,0021): SK, SP, MP, OSP...
    sequence_name: str
    echo_time: float | None
    repetition_time: float | None
    echo_number: int | None
    temporal_position: int | None  # (0020,0100)
    trigger_time: float | None
    acquisition_number: int | None
    b_value: float | None  # DiffusionBValue (0018,9087), s/mm2
    gradient: tuple[float, ...] | None  # DiffusionGradientOrientation (0018,9089), patient LPS
    directionality: str  # DiffusionDirectionality (0018,9075)
    complex_component: str  # ComplexImageComponent (0008,9208)
    private_diffusion: tuple[str, ...]  # vendor-private diffusion tags present (names)


@dataclass(frozen=True)
class SliceHeader:
    """What metcli needs from one DICOM file's header."""

    path: Path
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    image_type: tuple[str, ...]
    description: str
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6)
    position: tuple[float, ...] | None  # ImagePositionPatient (3)
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, ...] | None  # (between rows, between columns)
    frames: int
    samples_per_pixel: int
    transfer_syntax: str
    slope: float | None
    intercept: float | None
    mr: MRHeader | None = None


def _floats(value, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = list(value) if not isinstance(value, (str, bytes)) else [value]
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(out) != count or not all(np.isfinite(out)):
        return None
    return out


def float_value(value) -> float | None:
    """A header value as a finite float, or None."""
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def text_value(value) -> str:
    """A header value as stripped text (the values of a multi-valued element joined by \\)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def text_values(value) -> list[str]:
    """The values of a possibly multi-valued element as stripped texts."""
    if value is None:
        return []
    items = (
        [value]
        if isinstance(value, (str, bytes))
        else list(value)
        if hasattr(value, "__iter__")
        else [value]
    )
    return [str(v).strip() for v in items if str(v).strip()]


def _looks_like_dicom_without_preamble(path: Path) -> bool:
    """Old files without the 128-byte preamble usually start with group 0x0008."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head[:2] in (b"\x08\x00", b"\x02\x00")


def read_dataset(path: Path, *, stop_before_pixels: bool):
    """A pydicom dataset, or None for a file that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        if not _looks_like_dicom_without_preamble(path):
            return None
    except OSError as exc:
        log.warning("%s: cannot read the file (%s); skipped", path, exc.strerror or exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged header: skip, but say so
        log.warning("%s: cannot read the DICOM header (%s); skipped", path, exc)
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception:  # noqa: BLE001 - not DICOM after all
        return None
    return ds if "SOPClassUID" in ds and "Modality" in ds else None


def read_header(path: str | Path) -> SliceHeader | None:
    """The header of one file, or None when it is not a DICOM image file (or a DICOMDIR)."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return None
    ds = read_dataset(path, stop_before_pixels=True)
    if ds is None:
        return None
    meta = getattr(ds, "file_meta", None)
    media_class = text_value(meta.get("MediaStorageSOPClassUID")) if meta is not None else ""
    if media_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return None
    transfer_syntax = text_value(meta.get("TransferSyntaxUID")) if meta is not None else ""
    image_type = tuple(v.upper() for v in text_values(ds.get("ImageType")))
    return SliceHeader(
        path=path,
        series_uid=text_value(ds.get("SeriesInstanceUID")),
        sop_instance_uid=text_value(ds.get("SOPInstanceUID")),
        sop_class_uid=text_value(ds.get("SOPClassUID")) or media_class,
        modality=text_value(ds.get("Modality")).upper(),
        image_type=image_type,
        description=text_value(ds.get("SeriesDescription")),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        frames=_int(ds.get("NumberOfFrames")) or 1,
        samples_per_pixel=_int(ds.get("SamplesPerPixel")) or 1,
        transfer_syntax=transfer_syntax,
        slope=float_value(ds.get("RescaleSlope")),
        intercept=float_value(ds.get("RescaleIntercept")),
        mr=mr_header(ds) if text_value(ds.get("Modality")).upper() == "MR" else None,
    )


def _item(ds, keyword: str):
    """The first item of a sequence element, or None."""
    sequence = ds.get(keyword) if ds is not None else None
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def mr_header(ds) -> MRHeader:
    """The MR fields of a header; diffusion tags at the top level or in MRDiffusionSequence."""
    diffusion = _item(ds, "MRDiffusionSequence")
    b_value = float_value(ds.get("DiffusionBValue"))
    gradient = _floats(ds.get("DiffusionGradientOrientation"), 3)
    directionality = text_value(ds.get("DiffusionDirectionality")).upper()
    if diffusion is not None:
        if b_value is None:
            b_value = float_value(diffusion.get("DiffusionBValue"))
        directionality = (
            directionality or text_value(diffusion.get("DiffusionDirectionality")).upper()
        )
        direction_item = _item(diffusion, "DiffusionGradientDirectionSequence")
        if gradient is None and direction_item is not None:
            gradient = _floats(direction_item.get("DiffusionGradientOrientation"), 3)
    return MRHeader(
        scanning_sequence=tuple(v.upper() for v in text_values(ds.get("ScanningSequence"))),
        sequence_variant=tuple(v.upper() for v in text_values(ds.get("SequenceVariant"))),
        sequence_name=text_value(ds.get("SequenceName")),
        echo_time=float_value(ds.get("EchoTime")),
        repetition_time=float_value(ds.get("RepetitionTime")),
        echo_number=_int(text_value(ds.get("EchoNumbers")).split("\\")[0]),
        temporal_position=_int(ds.get("TemporalPositionIdentifier")),
        trigger_time=float_value(ds.get("TriggerTime")),
        acquisition_number=_int(ds.get("AcquisitionNumber")),
        b_value=b_value,
        gradient=gradient,
        directionality=directionality,
        complex_component=text_value(ds.get("ComplexImageComponent")).upper(),
        private_diffusion=tuple(name for tag, name in PRIVATE_DIFFUSION_TAGS if tag in ds),
    )
