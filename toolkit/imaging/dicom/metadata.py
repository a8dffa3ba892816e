"""Non-identifying acquisition metadata of a DICOM CT or MR series, for the sidecar.

:func:`acquisition_metadata` (CT) and :func:`mr_acquisition_metadata` (MR) keep
non-identifying acquisition metadata only; what the import records is described in
:mod:`metcli.imaging.dicom.import_dicom`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

from metcli.imaging.dicom.headers import float_value, read_dataset, text_value, text_values

_UID_LIKE = re.compile(r"\d+\.\d+\.\d+")
_DATE_LIKE = re.compile(
    r"(19|20)\d{2}[-_.]?[01]\d[-_.]?[0-3]\d"
    r"|[0-3]\d[-_.][01]\d[-_.](19|20)\d{2}"
)


def identifying_words(ds) -> list[str]:
    """Texts of a header that identify the patient or the study (to keep them out of outputs)."""
    words = []
    for tag in (
        "PatientName",
        "PatientID",
        "OtherPatientIDs",
        "AccessionNumber",
        "StudyID",
        "PatientBirthDate",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
    ):
        text = text_value(ds.get(tag)) if ds is not None else ""
        for word in re.split(r"[\^\\\s,]+", text):
            if len(word) >= 3:
                words.append(word.lower())
    return words


def identifying(text: str, identifiers: Sequence[str]) -> bool:
    low = text.lower()
    return (
        any(word in low for word in identifiers)
        or bool(_UID_LIKE.search(text))
        or bool(_DATE_LIKE.search(text))
    )


def uid_sha256(uid: str) -> str:
    """sha256 of a UID's text: how metcli records a UID without writing it."""
    return hashlib.sha256(str(uid).strip().rstrip("\0").encode()).hexdigest()


def acquisition_metadata(
    path: Path, *, step: float, padding_hu: float | None = None, series_uid: str = ""
) -> dict[str, Any]:
    """Non-identifying acquisition metadata for the sidecar (BIDS-like keys).

    Free-text values that contain the patient's name or ID, a date or a UID are
    left out. The SeriesInstanceUID and the FrameOfReferenceUID are kept only as
    their sha256 (:func:`uid_sha256`), so that import-mask can check that a mask
    belongs to this series without any UID being written.
    """
    ds = read_dataset(Path(path), stop_before_pixels=True)
    identifiers = identifying_words(ds)
    meta: dict[str, Any] = {"Modality": "CT"}
    for key, tag in (
        ("Manufacturer", "Manufacturer"),
        ("ManufacturersModelName", "ManufacturerModelName"),
        ("SeriesDescription", "SeriesDescription"),
        ("ContrastBolusAgent", "ContrastBolusAgent"),
        ("BodyPartExamined", "BodyPartExamined"),
    ):
        text = text_value(ds.get(tag))
        if text and not identifying(text, identifiers):
            meta[key] = text
    kernel = text_values(ds.get("ConvolutionKernel"))
    if kernel and not any(identifying(v, identifiers) for v in kernel):
        meta["ConvolutionKernel"] = kernel[0] if len(kernel) == 1 else kernel
    for key in ("KVP", "SliceThickness"):
        value = float_value(ds.get(key))
        if value is not None:
            meta[key] = value
    meta["SpacingBetweenSlices"] = round(float(step), 6)
    image_type = text_values(ds.get("ImageType"))
    if image_type and not any(identifying(v, identifiers) for v in image_type):
        meta["ImageType"] = image_type
    if padding_hu is not None:
        meta["PixelPaddingValueHU"] = padding_hu
    if series_uid:
        meta["SeriesInstanceUIDSha256"] = uid_sha256(series_uid)
    frame_of_reference = text_value(ds.get("FrameOfReferenceUID"))
    if frame_of_reference:
        meta["FrameOfReferenceUIDSha256"] = uid_sha256(frame_of_reference)
    return meta


def _seconds(ds, tag: str) -> float | None:
    """A time in ms in DICOM as seconds (BIDS' unit for EchoTime, RepetitionTime...)."""
    value = float_value(ds.get(tag))
    return None if value is None else round(value / 1000.0, 9)


def mr_acquisition_metadata(
    path: Path, *, step: float, series_uid: str = "", channel: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Non-identifying MR acquisition metadata, in BIDS' keys and units (times in s).

    As :func:`acquisition_metadata`: free texts that contain the patient's name or ID, a
    date or a UID are left out, and UIDs are kept only as their sha256. ``channel`` (the
    channel written and how it was chosen) is added as it is, its reason withheld when it
    quotes an identifying description.
    """
    ds = read_dataset(Path(path), stop_before_pixels=True)
    identifiers = identifying_words(ds)
    meta: dict[str, Any] = {"Modality": "MR"}
    for key, tag in (
        ("Manufacturer", "Manufacturer"),
        ("ManufacturersModelName", "ManufacturerModelName"),
        ("SeriesDescription", "SeriesDescription"),
        ("SequenceName", "SequenceName"),
        ("ContrastBolusAgent", "ContrastBolusAgent"),
        ("BodyPartExamined", "BodyPartExamined"),
    ):
        text = text_value(ds.get(tag))
        if text and not identifying(text, identifiers):
            meta[key] = text
    for key in ("ScanningSequence", "SequenceVariant"):
        values = text_values(ds.get(key))
        if values and not any(identifying(v, identifiers) for v in values):
            meta[key] = "_".join(values)
    for key in ("MagneticFieldStrength", "FlipAngle", "SliceThickness"):
        value = float_value(ds.get(key))
        if value is not None:
            meta[key] = value
    for key in ("EchoTime", "RepetitionTime", "InversionTime"):
        value = _seconds(ds, key)
        if value is not None:
            meta[key] = value
    meta["SpacingBetweenSlices"] = round(float(step), 6)
    image_type = text_values(ds.get("ImageType"))
    if image_type and not any(identifying(v, identifiers) for v in image_type):
        meta["ImageType"] = image_type
    if series_uid:
        meta["SeriesInstanceUIDSha256"] = uid_sha256(series_uid)
    frame_of_reference = text_value(ds.get("FrameOfReferenceUID"))
    if frame_of_reference:
        meta["FrameOfReferenceUIDSha256"] = uid_sha256(frame_of_reference)
    if channel:
        record = dict(channel)
        reason = str(record.get("ChannelReason", ""))
        if reason and identifying(reason, identifiers):
            record["ChannelReason"] = "(withheld: it quotes a description that may identify)"
        meta.update(record)
    return meta
