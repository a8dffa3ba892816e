"""DICOM headers: read one file's header into a :class:`SliceHeader`.

Files that are not DICOM, and DICOMDIR index files, read as None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


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
    )
