"""The checks of an MR series before its pixels are decoded.

An MR series is converted only when that is faithful (each refusal is one
:class:`~metcli.core.errors.DicomError` naming the series and the fix):

- classic MR Image Storage (1.2.840.10008.5.1.4.1.1.4), one image per file; an Enhanced
  MR multi-frame object (...4.1) is refused (dcm2niix converts it);
- the geometry tags, one sample per pixel, one orientation, matrix size and pixel
  spacing (:func:`metcli.imaging.dicom.stack.check_slice_headers`, ``check_one_stack``);
- magnitude images only: phase, real or imaginary images (ImageType P/R/I, PHASE, REAL,
  IMAGINARY, Philips P_/R_/I_ values, or ComplexImageComponent) are refused;
- one RescaleSlope/RescaleIntercept for the whole series (or none): MR values are kept
  as the scanner scaled them, and a scaling that varies between images is refused;
- one image per slice position, except in a diffusion series (volumes by b-value and
  direction, :mod:`metcli.imaging.dicom.diffusion`): several images at one position
  (echoes, dynamics, contrast phases in one series) are a 4D series and are refused
  with what varies between them.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from metcli.core.errors import DicomError
from metcli.imaging.dicom.headers import ENHANCED_MR_IMAGE_STORAGE, MR_IMAGE_STORAGE, SliceHeader
from metcli.imaging.dicom.series import MIN_SLICES, SeriesInfo
from metcli.imaging.dicom.stack import (
    POSITION_TOLERANCE_MM,
    check_one_stack,
    check_slice_headers,
    slice_name,
)

_NOT_MAGNITUDE = {
    "P": "phase",
    "PHASE": "phase",
    "PHASE MAP": "phase",
    "R": "real",
    "REAL": "real",
    "I": "imaginary",
    "IMAGINARY": "imaginary",
}
_PHILIPS_COMPLEX = re.compile(r"^([PRI])_[A-Z]+$")


def check_mr_series(series: SeriesInfo, channel_name: str) -> None:
    """The series-level checks of the module docstring (not the 4D one)."""
    where, root = series.folder, series.root
    if series.modality != "MR":
        raise DicomError(
            f"the series {series.describe()} is {series.modality}, not MR; --channel "
            f"{channel_name} names an MR channel",
            path=where,
            fix="leave --channel out to import a CT series (its phase goes in --phase), or "
            "name an MR series",
        )
    frames = max(s.frames for s in series.slices)
    if series.sop_class_uid == ENHANCED_MR_IMAGE_STORAGE or frames > 1:
        raise DicomError(
            f"the series {series.describe()} is an Enhanced MR multi-frame object "
            f"({frames} frames in one file); metcli reads classic MR images, one per file",
            path=where,
            fix="convert it with dcm2niix, or export the series from the scanner or PACS as "
            "classic MR Image Storage (one file per image)",
        )
    if series.sop_class_uid and series.sop_class_uid != MR_IMAGE_STORAGE:
        raise DicomError(
            f"the series {series.describe()} is not an MR image series (SOP class "
            f"{series.sop_class_uid}: a secondary capture, report or other object)",
            path=where,
            fix="name the MR image series itself with --series-uid",
        )
    if series.n_files < MIN_SLICES:
        raise DicomError(
            f"the series {series.describe()} has only one image; a 3D volume needs at least "
            f"{MIN_SLICES} slices",
            path=where,
            fix="export the full series (every slice) from the scanner or PACS",
        )
    check_slice_headers(series.slices, where, root, kind="MR")
    check_one_stack(series.slices, where, root)
    _check_magnitude(series)
    _check_one_rescale(series)


def _check_magnitude(series: SeriesInfo) -> None:
    for item in series.slices:
        kinds = {_NOT_MAGNITUDE[v] for v in item.image_type if v in _NOT_MAGNITUDE}
        kinds |= {
            _NOT_MAGNITUDE[m.group(1)] for m in map(_PHILIPS_COMPLEX.match, item.image_type) if m
        }
        component = item.mr.complex_component if item.mr else ""
        if component in ("PHASE", "REAL", "IMAGINARY", "MIXED"):
            kinds.add(component.lower())
        if kinds:
            raise DicomError(
                f"{slice_name(item, series.root)} is a {'/'.join(sorted(kinds))} image "
                f"(ImageType {'/'.join(item.image_type)}"
                + (f", ComplexImageComponent {component}" if component else "")
                + "); metcli imports magnitude images only",
                path=series.folder,
                fix="import the magnitude series (ImageType with M), or move the phase, "
                "real and imaginary images out of the folder",
            )


def _check_one_rescale(series: SeriesInfo) -> None:
    pairs = {(s.slope, s.intercept) for s in series.slices}
    if len(pairs) > 1:
        slopes = sorted({1.0 if s is None else s for s, _ in pairs})
        intercepts = sorted({0.0 if i is None else i for _, i in pairs})
        raise DicomError(
            f"RescaleSlope/RescaleIntercept vary between the images of the series (slopes "
            f"{', '.join(f'{v:g}' for v in slopes[:6])}; intercepts "
            f"{', '.join(f'{v:g}' for v in intercepts[:6])}): the MR values would not be on "
            "one scale",
            path=series.folder,
            fix="export the series with one scaling (or convert it with dcm2niix, which "
            "documents how it rescales each image)",
        )


def normal_of(header: SliceHeader) -> np.ndarray:
    """The unit slice normal (row cosine x column cosine) of a slice."""
    orientation = np.asarray(header.orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def positions_of(slices: Sequence[SliceHeader]) -> list[list[SliceHeader]]:
    """The slices grouped by position along the normal (within 0.01 mm), ascending."""
    normal = normal_of(slices[0])
    ordered = sorted(slices, key=lambda s: (float(normal @ np.asarray(s.position)), str(s.path)))
    groups: list[list[SliceHeader]] = []
    last = None
    for item in ordered:
        where = float(normal @ np.asarray(item.position))
        if last is not None and where - last < POSITION_TOLERANCE_MM:
            groups[-1].append(item)
        else:
            groups.append([item])
        last = where
    return groups


def _varying(slices: Sequence[SliceHeader]) -> list[str]:
    """What differs between images of one position: 'EchoTime 2.4, 4.8 ms', ..."""
    fields = (
        ("EchoTime", " ms", lambda s: s.mr.echo_time if s.mr else None),
        ("EchoNumbers", "", lambda s: s.mr.echo_number if s.mr else None),
        ("TemporalPositionIdentifier", "", lambda s: s.mr.temporal_position if s.mr else None),
        ("TriggerTime", " ms", lambda s: s.mr.trigger_time if s.mr else None),
        ("AcquisitionNumber", "", lambda s: s.mr.acquisition_number if s.mr else None),
        ("ImageType", "", lambda s: "/".join(s.image_type) or None),
    )
    out = []
    for name, unit, get in fields:
        values = sorted({v for v in map(get, slices) if v is not None}, key=str)
        if len(values) > 1:
            shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:6])
            more = ", ..." if len(values) > 6 else ""
            out.append(f"{name} {shown}{more}{unit}")
    return out


def check_one_image_per_position(series: SeriesInfo) -> None:
    """A 3D MR series has one image at each slice position; else it is a 4D series."""
    groups = positions_of(series.slices)
    most = max(len(g) for g in groups)
    if most == 1:
        return
    crowded = [g for g in groups if len(g) > 1]
    varying = _varying([s for g in crowded for s in g])
    what = f"varying: {'; '.join(varying)}" if varying else "no header tells them apart"
    raise DicomError(
        f"the series {series.describe()} holds up to {most} images at one slice position "
        f"({series.n_files} images at {len(groups)} positions; {what}): a 4D series (echoes, "
        "dynamics or contrast phases in one series); metcli imports 3D MR series, and "
        "diffusion series as one 4D file",
        path=series.folder,
        fix="split it: export each phase, echo or dynamic as its own series and import each "
        "(choose it with --series-description TEXT or --series-uid UID, a contrast phase with "
        "--phase), or import a diffusion series with --channel DWI",
    )
