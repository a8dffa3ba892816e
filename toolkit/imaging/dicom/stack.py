"""The geometry of a DICOM series: check its headers and sort its slices.

Rules (each checked on the headers before any pixel is decoded):

- Slices are sorted by their position along the slice normal (the cross
  product of the row and column direction cosines of ImageOrientationPatient,
  dotted with ImagePositionPatient), never by file name, InstanceNumber or
  SliceThickness. The slice spacing written is the measured step between
  positions; SliceThickness is only recorded as stated.
- A series must be CT, have at least two slices
  (:data:`metcli.imaging.dicom.series.MIN_SLICES`), one orientation, one matrix
  size and pixel spacing, no two slices at the same position, evenly spaced
  slices (within ``max(0.01 mm, 1 % of the step)``; a missing slice is reported
  with the two slices around the gap) and slices stacked along their normal (no
  gantry tilt, which would need resampling). Anything else is a
  :class:`~metcli.core.errors.DicomError`: nothing is resampled or guessed.
- An MR series is checked by :mod:`metcli.imaging.dicom.mr_checks` and each of its
  volumes (one, or one per b-value and direction of a diffusion series) by
  :func:`slices_geometry`, the same rules without the CT-only ones.
- Geometry: origin = ImagePositionPatient of the first sorted slice;
  direction = (row cosine, column cosine, normal); spacing = (PixelSpacing[1],
  PixelSpacing[0], step), PixelSpacing being (between rows, between columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.errors import DicomError
from metcli.imaging.dicom.headers import ENHANCED_CT_IMAGE_STORAGE, SliceHeader
from metcli.imaging.dicom.series import (
    MIN_SLICES,
    ORIENTATION_TOLERANCE,
    SeriesInfo,
    orientation_name,
    relative_text,
    single_slice_error,
)

#: Slice positions may deviate from a regular grid by max(this, fraction * step) mm.
POSITION_TOLERANCE_MM = 0.01
POSITION_TOLERANCE_FRACTION = 0.01
#: Largest in-plane offset between slices (gantry tilt), as a fraction of a pixel.
INPLANE_TOLERANCE_FRACTION = 0.05


@dataclass
class StackGeometry:
    """Where the slices of a series lie, in the order of the output volume."""

    slices: list[SliceHeader]  # sorted along the normal
    positions: np.ndarray  # mm along the normal, ascending
    step: float  # mm between slices
    spacing: tuple[float, float, float]  # x (between columns), y (between rows), z
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major, columns = row cosine, column cosine, normal
    rows: int
    columns: int


def slice_name(header: SliceHeader, root: Path | None) -> str:
    """A slice's file, relative to ``root`` when given, for messages."""
    return relative_text(header.path, root) if root is not None else header.path.name


def fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def stack_geometry(series: SeriesInfo) -> StackGeometry:
    """Check a CT series' headers and sort its slices along the slice normal.

    Raises :class:`DicomError` for anything that would make the volume unfaithful
    (see the module docstring).
    """
    where = series.folder
    root = series.root
    _check_series_kind(series, where, root)
    check_slice_headers(series.slices, where, root)
    check_one_stack(series.slices, where, root)
    return slices_geometry(series.slices, where, root)


def slices_geometry(slices: Sequence[SliceHeader], where: Path, root: Path | None) -> StackGeometry:
    """Sort slices of one orientation and matrix along their normal and check the stack
    (distinct, evenly spaced, no tilt): the geometry of one volume of any modality."""
    first = slices[0]
    row_cosine, col_cosine, normal = _slice_axes(first, where, root)
    ordered = sorted(slices, key=lambda s: (float(np.dot(normal, s.position)), str(s.path)))
    positions = np.array([float(np.dot(normal, s.position)) for s in ordered])
    step = _even_step(ordered, positions, where, root)
    origin = np.asarray(ordered[0].position, dtype=float)
    _check_no_tilt(ordered, origin, normal, min(first.pixel_spacing), where, root)
    direction = np.column_stack([row_cosine, col_cosine, normal])
    row_spacing, col_spacing = first.pixel_spacing
    return StackGeometry(
        slices=ordered,
        positions=positions,
        step=step,
        spacing=(float(col_spacing), float(row_spacing), step),
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction.ravel()),
        rows=int(first.rows),
        columns=int(first.columns),
    )


def _check_series_kind(series: SeriesInfo, where: Path, root: Path | None) -> None:
    """A classic single-frame CT series of two slices or more."""
    slices = series.slices
    if series.modality != "CT":
        raise DicomError(
            f"the series is {series.modality}, not CT; metcli imports CT only",
            path=where,
            fix="give a CT series (or name one with --series-uid)",
        )
    if series.sop_class_uid == ENHANCED_CT_IMAGE_STORAGE or any(s.frames > 1 for s in slices):
        raise DicomError(
            "the series is an enhanced multi-frame CT object; metcli reads one slice per file",
            path=where,
            fix="export the series as classic single-frame CT images",
        )
    if len(slices) < MIN_SLICES:
        raise single_slice_error(series, where=where)


def check_slice_headers(
    slices: Sequence[SliceHeader], where: Path, root: Path | None, *, kind: str = "CT"
) -> None:
    """Every slice has the geometry tags (and for CT the rescale tags), one sample per pixel."""
    for item in slices:
        missing = [
            tag
            for tag, value in (
                ("ImageOrientationPatient", item.orientation),
                ("ImagePositionPatient", item.position),
                ("PixelSpacing", item.pixel_spacing),
                ("Rows", item.rows),
                ("Columns", item.columns),
                ("RescaleSlope", item.slope if kind == "CT" else 1),
                ("RescaleIntercept", item.intercept if kind == "CT" else 0),
            )
            if value is None
        ]
        if missing:
            raise DicomError(
                f"{slice_name(item, root)} lacks {', '.join(missing)} (or holds an invalid value)",
                path=where,
                fix=f"export the series again with complete {kind} image headers",
            )
        if item.samples_per_pixel != 1:
            raise DicomError(
                f"{slice_name(item, root)} has {item.samples_per_pixel} samples per "
                f"pixel (a colour image), not a {kind} slice",
                path=where,
                fix=f"give the original {kind} series, not a rendered one",
            )


def check_one_stack(slices: Sequence[SliceHeader], where: Path, root: Path | None) -> None:
    """Every slice has the first one's orientation, matrix size and pixel spacing."""
    first = slices[0]
    reference = np.asarray(first.orientation)
    for item in slices[1:]:
        if np.max(np.abs(np.asarray(item.orientation) - reference)) > ORIENTATION_TOLERANCE:
            raise DicomError(
                f"the series mixes slice orientations: {slice_name(first, root)} has "
                f"ImageOrientationPatient {fmt(first.orientation)} "
                f"({orientation_name(first.orientation)}) and {slice_name(item, root)} "
                f"{fmt(item.orientation)} "
                f"({orientation_name(item.orientation)})",
                path=where,
                fix="give a series of parallel slices (a localizer or a second reconstruction "
                "may share this SeriesInstanceUID: move those files out)",
            )
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise DicomError(
                f"slices differ in size: {slice_name(first, root)} is "
                f"{first.columns}x{first.rows} and {slice_name(item, root)} "
                f"{item.columns}x{item.rows} pixels",
                path=where,
                fix="give the files of one reconstruction only",
            )
        spacing_change = np.abs(np.subtract(item.pixel_spacing, first.pixel_spacing))
        if np.max(spacing_change) > 1e-4 * max(first.pixel_spacing):
            raise DicomError(
                f"slices differ in PixelSpacing: {slice_name(first, root)} has "
                f"{fmt(first.pixel_spacing)} mm and {slice_name(item, root)} "
                f"{fmt(item.pixel_spacing)} mm",
                path=where,
                fix="give the files of one reconstruction only",
            )


def _slice_axes(
    first: SliceHeader, where: Path, root: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row cosine, column cosine, normal), orthonormal, from ImageOrientationPatient."""
    row_cosine = np.asarray(first.orientation[:3], dtype=float)
    col_cosine = np.asarray(first.orientation[3:], dtype=float)
    norms = np.linalg.norm(row_cosine), np.linalg.norm(col_cosine)
    if min(norms) < 1e-6 or abs(float(row_cosine @ col_cosine)) > 1e-3 * norms[0] * norms[1]:
        raise DicomError(
            f"{slice_name(first, root)}: ImageOrientationPatient "
            f"{fmt(first.orientation)} is not two perpendicular directions",
            path=where,
            fix="repair the header or export the series again",
        )
    row_cosine, col_cosine = row_cosine / norms[0], col_cosine / norms[1]
    col_cosine = col_cosine - (col_cosine @ row_cosine) * row_cosine
    col_cosine /= np.linalg.norm(col_cosine)
    return row_cosine, col_cosine, np.cross(row_cosine, col_cosine)


def _even_step(
    ordered: Sequence[SliceHeader], positions: np.ndarray, where: Path, root: Path | None
) -> float:
    """The step between slices (mm), after checking that they are distinct and evenly spaced."""
    gaps = np.diff(positions)
    for index, gap in enumerate(gaps):
        if gap < POSITION_TOLERANCE_MM:
            a, b = ordered[index], ordered[index + 1]
            raise DicomError(
                f"{slice_name(a, root)} and {slice_name(b, root)} lie at the same "
                f"position ({positions[index]:.3f} mm along the slice normal)",
                path=where,
                fix="the folder holds a slice twice (a copy, or two acquisitions "
                "sharing one SeriesInstanceUID): remove the duplicates",
            )
    typical = float(np.median(gaps))
    tolerance = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * typical)
    uneven = np.flatnonzero(np.abs(gaps - typical) > tolerance)
    if uneven.size:
        _raise_uneven(ordered, gaps, uneven, typical, where, root)
    step = float((positions[-1] - positions[0]) / (len(positions) - 1))
    drift = np.abs(positions - (positions[0] + step * np.arange(len(positions))))
    if float(np.max(drift)) > tolerance:
        raise DicomError(
            f"the slice positions drift from a regular grid by up to "
            f"{float(np.max(drift)):.4g} mm (step {step:.4g} mm)",
            path=where,
            fix="resample the series to even spacing with another tool first",
        )
    return step


def _raise_uneven(
    ordered: Sequence[SliceHeader],
    gaps: np.ndarray,
    uneven: np.ndarray,
    typical: float,
    where: Path,
    root: Path | None,
) -> None:
    """The DicomError for the first uneven gap (with a guess at missing slices)."""
    index = int(uneven[0])
    gap = float(gaps[index])
    a, b = ordered[index], ordered[index + 1]
    ratio = gap / typical
    hint = ""
    if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
        missing = int(round(ratio)) - 1
        hint = f" ({missing} slice{'s' if missing > 1 else ''} missing?)"
    more = f", and {uneven.size - 1} other uneven gap(s)" if uneven.size > 1 else ""
    raise DicomError(
        f"slices {index + 1} and {index + 2} ({slice_name(a, root)} and {slice_name(b, root)}) "
        f"are {gap:.4g} mm apart where the others are {typical:.4g} mm{hint}{more}; the slices "
        "must be evenly spaced",
        path=where,
        fix="give the complete series (copy the missing files); a series with varying "
        "slice spacing has to be resampled by another tool first",
    )


def _check_no_tilt(
    ordered: Sequence[SliceHeader],
    origin: np.ndarray,
    normal: np.ndarray,
    pixel: float,
    where: Path,
    root: Path | None,
) -> None:
    """Every slice lies on the normal through the first one (no gantry tilt)."""
    inplane_tolerance = INPLANE_TOLERANCE_FRACTION * pixel
    for item in ordered[1:]:
        offset = np.asarray(item.position) - origin
        inplane = offset - float(offset @ normal) * normal
        if float(np.linalg.norm(inplane)) > max(inplane_tolerance, POSITION_TOLERANCE_MM):
            raise DicomError(
                f"the slices are not stacked along their normal: {slice_name(item, root)} is "
                f"shifted {float(np.linalg.norm(inplane)):.3g} mm sideways from "
                f"{slice_name(ordered[0], root)} (gantry tilt or a sheared stack)",
                path=where,
                fix="correct the gantry tilt with a converter that resamples (dcm2niix does), "
                "or choose another series",
            )
