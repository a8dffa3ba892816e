"""Checks across DICOM objects: does a DICOM mask belong to the CT it is imported onto?

import-dicom keeps the sha256 of the CT series' SeriesInstanceUID and FrameOfReferenceUID
in the CT's sidecar (``SeriesInstanceUIDSha256``, ``FrameOfReferenceUIDSha256``; never
the UIDs themselves). import-mask compares them with the UIDs a DICOM-SEG or RTSTRUCT
names:

- **frame of reference**: the SEG's ``FrameOfReferenceUID``; an RTSTRUCT's
  ``ReferencedFrameOfReferenceSequence`` and its ROIs' ``ReferencedFrameOfReferenceUID``;
- **referenced series**: the SEG's ``ReferencedSeriesSequence``; an RTSTRUCT's
  ``RTReferencedSeriesSequence``.

A check matches when the CT's UID is among those the mask names. A mismatch is a
warning (one line naming the mask, the UID and both sha256 values) recorded in the
output sidecar under ``DicomChecks``; with ``--strict`` a frame of reference that
differs is an error. A CT not imported from DICOM, or a mask that names no such UID,
is recorded as not checked, with the reason. RTSTRUCT contours outside the CT
(:class:`metcli.imaging.rtstruct.ContourCounts`) are recorded there too, and are an
error with ``--strict``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from metcli.core.errors import InputError, MaskError
from metcli.imaging.dicom.metadata import uid_sha256
from metcli.imaging.mask_files import FORMAT_DICOM_SEG, FORMAT_RTSTRUCT
from metcli.imaging.rtstruct import ContourCounts

log = logging.getLogger(__name__)

#: The command whose CT sidecars record the DICOM UIDs (as sha256).
DICOM_IMPORT = "import-dicom"
FRAME_OF_REFERENCE = "frame_of_reference"
REFERENCED_SERIES = "referenced_series"
_UID_NAMES = {FRAME_OF_REFERENCE: "FrameOfReferenceUID", REFERENCED_SERIES: "SeriesInstanceUID"}
_CT_KEYS = {
    FRAME_OF_REFERENCE: "FrameOfReferenceUIDSha256",
    REFERENCED_SERIES: "SeriesInstanceUIDSha256",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CtOrigin:
    """What the CT's sidecar says about its DICOM origin."""

    sha256: dict[str, str | None]  # FRAME_OF_REFERENCE / REFERENCED_SERIES -> sha256 or None
    reason: str | None = None  # why the CT has no DICOM origin (None: imported from DICOM)
    sidecar: Path | None = None  # the import-dicom sidecar (an input of the import)


def ct_dicom_origin(ct_path: str | Path) -> CtOrigin:
    """The sha256 of the CT's DICOM UIDs, from the sidecar import-dicom wrote beside it."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import read_json

    sidecar = sidecar_path(Path(ct_path))
    none = {key: None for key in _CT_KEYS}
    if not sidecar.is_file():
        return CtOrigin(none, "the CT has no sidecar, so it has no DICOM origin on record")
    try:
        doc = read_json(sidecar)
        command = doc.get("Provenance", {}).get("command")
    except (InputError, AttributeError):
        return CtOrigin(none, f"the CT's sidecar {sidecar.name} cannot be read")
    if command != DICOM_IMPORT:
        return CtOrigin(
            none, f"the CT was not imported from DICOM (its sidecar was written by {command})"
        )
    found = {
        key: doc.get(name) if _SHA256.match(str(doc.get(name, ""))) else None
        for key, name in _CT_KEYS.items()
    }
    return CtOrigin(found, None, sidecar)


def _texts(values) -> list[str]:
    return [str(v).strip().rstrip("\0") for v in values if v and str(v).strip()]


def mask_uids(path: Path, mask_format: str) -> dict[str, list[str]]:
    """The frames of reference and series a DICOM mask names (empty lists when none)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        raise MaskError(
            f"cannot read the {mask_format} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]})",
            path=path,
            fix="check that the file is a complete DICOM file",
        ) from None
    frames, series = [], []
    if mask_format == FORMAT_DICOM_SEG:
        frames = _texts([ds.get("FrameOfReferenceUID")])
        series = _texts(
            item.get("SeriesInstanceUID") for item in ds.get("ReferencedSeriesSequence", [])
        )
    elif mask_format == FORMAT_RTSTRUCT:
        for ref in ds.get("ReferencedFrameOfReferenceSequence", []):
            frames += _texts([ref.get("FrameOfReferenceUID")])
            for study in ref.get("RTReferencedStudySequence", []):
                series += _texts(
                    item.get("SeriesInstanceUID")
                    for item in study.get("RTReferencedSeriesSequence", [])
                )
        frames += _texts(
            roi.get("ReferencedFrameOfReferenceUID")
            for roi in ds.get("StructureSetROISequence", [])
        )
    return {FRAME_OF_REFERENCE: sorted(set(frames)), REFERENCED_SERIES: sorted(set(series))}


def compare_uids(mask_path: Path, mask_format: str, origin: CtOrigin) -> dict:
    """``{frame_of_reference: ..., referenced_series: ...}`` for the sidecar.

    Each entry is ``{"checked": true, "mask": [sha256...], "ct": sha256, "match": bool}`` or
    ``{"checked": false, "reason": ...}``; :func:`warn_mismatches` logs those that differ.
    """
    if origin.reason is not None:
        return {key: {"checked": False, "reason": origin.reason} for key in _CT_KEYS}
    named = mask_uids(mask_path, mask_format)
    checks: dict[str, Any] = {}
    for key, uid_name in _UID_NAMES.items():
        ct = origin.sha256[key]
        if ct is None:
            checks[key] = {
                "checked": False,
                "reason": f"the CT's sidecar records no {uid_name} (imported by an older "
                "metcli, or its series has none; import-dicom --overwrite records it)",
            }
        elif not named[key]:
            checks[key] = {"checked": False, "reason": f"the mask names no {uid_name}"}
        else:
            mask = sorted(uid_sha256(uid) for uid in named[key])
            checks[key] = {"checked": True, "mask": mask, "ct": ct, "match": ct in mask}
    return checks


def warn_mismatches(checks: Mapping[str, Any], mask_path: Path, ct_name: str) -> None:
    """One warning line per UID that differs: the mask, the UID, both sha256 values."""
    for key, uid_name in _UID_NAMES.items():
        check = checks.get(key, {})
        if check.get("checked") and not check.get("match"):
            log.warning(
                "%s: its %s differs from the CT's (%s): mask sha256 %s, CT sha256 %s (sha256 "
                "of the UIDs); the mask may have been drawn on another %s",
                mask_path.name,
                uid_name,
                ct_name,
                ", ".join(m[:16] for m in check["mask"]),
                check["ct"][:16],
                "scan" if key == FRAME_OF_REFERENCE else "series",
            )


def contour_report(counts: Mapping[str, ContourCounts]) -> dict[str, dict[str, int]]:
    """Per imported ROI: its closed contours and how many lie (partly) outside the CT."""
    return {
        name: {
            "contours": c.contours,
            "outside": c.outside,
            "beyond_slices": c.beyond_slices,
            "outside_grid": c.outside_grid,
        }
        for name, c in counts.items()
    }


def check_strict(checks: Mapping[str, Any], mask_path: Path, ct_name: str) -> None:
    """``--strict``: a frame of reference that differs, or contours outside the CT, is an error."""
    frame = checks.get(FRAME_OF_REFERENCE, {})
    if frame.get("checked") and not frame.get("match"):
        raise MaskError(
            f"its FrameOfReferenceUID differs from that of the CT {ct_name} (sha256 "
            f"{', '.join(m[:16] for m in frame['mask'])} vs {frame['ct'][:16]}): the mask was "
            "drawn on another scan",
            path=mask_path,
            fix="import it onto the CT it was drawn on (check --participant-label, --session "
            "and --phase), or leave out --strict to import it with a warning",
        )
    outside = {n: c for n, c in checks.get("contours", {}).items() if c["outside"]}
    if outside:
        name, c = next(iter(outside.items()))
        more = f" (and contours of {len(outside) - 1} other ROI(s))" if len(outside) > 1 else ""
        raise MaskError(
            f"{c['outside']} of {c['contours']} contour(s) of ROI {name!r} lie (partly) outside "
            f"the CT {ct_name} ({c['beyond_slices']} beyond its slices, {c['outside_grid']} "
            f"reaching outside its in-plane grid){more}",
            path=mask_path,
            fix="import the RTSTRUCT onto the CT series it was drawn on, or leave out --strict "
            "to import the part inside the CT (the counts are recorded in the sidecar)",
        )
