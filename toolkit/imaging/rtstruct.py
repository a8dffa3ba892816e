"""RTSTRUCT masks: contours rasterised onto the grid of a CT.

Each contour's points are mapped to the CT's continuous voxel index; the contour
must lie in one slice plane of the CT (within :data:`SLICE_TOLERANCE` of a
slice, as a fraction of the slice spacing): it is matched to that slice by
position, not by ``ContourImageSequence`` (which real files often lack or point
at another series). A contour between two slices is a
:class:`~metcli.core.errors.GeometryError`, never snapped onto one. Pixel
inclusion rule: a voxel belongs to a contour when its centre lies inside the
polygon; centres exactly on an edge or vertex count as inside (scikit-image's
``polygon2mask``). Contours of the same ROI on the same slice combine by the
even-odd rule (XOR), so a contour inside another one is a hole, as the RTSTRUCT
convention has it. Only ``CLOSED_PLANAR`` contours are filled; points and open
contours are skipped with a warning.

Contours outside the CT are counted per ROI (:class:`ContourCounts`): a contour
beyond the first or last slice is skipped, one that reaches outside the in-plane
grid is cut at its edge; both are logged, and import-mask records the counts (and
refuses them under ``--strict``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli.core.errors import GeometryError, MaskError
from metcli.imaging.geometry import fmt, index_to_physical, load_reference, reference_name
from metcli.imaging.mask_labels import MaskEntry, select_entries

log = logging.getLogger(__name__)

#: Largest distance (as a fraction of the slice spacing) between an RTSTRUCT
#: contour's plane and the nearest CT slice centre. A contour further away was
#: drawn on another series; assigning it to the nearest slice would resample the
#: mask silently (and contours of a finer series would pile up on one slice).
SLICE_TOLERANCE = 0.1


def _read_dicom(path: Path, what: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError) as exc:
        raise MaskError(
            f"cannot read the {what} ({' '.join(str(exc).split())[:160]})",
            path=path,
            fix="check that the file is a complete DICOM file",
        ) from None


def rtstruct_rois(rtstruct) -> list[tuple[int, str]]:
    """(ROI number, ROI name) of every ROI of an RTSTRUCT (a path or a pydicom dataset)."""
    ds = _read_dicom(Path(rtstruct), "RTSTRUCT") if isinstance(rtstruct, (str, Path)) else rtstruct
    return [
        (int(item.ROINumber), str(item.get("ROIName", "") or f"ROI {item.ROINumber}"))
        for item in ds.get("StructureSetROISequence", [])
    ]


def rasterize_rtstruct(
    rtstruct_path: str | Path,
    reference_image,
    roi_names: Sequence[str] | None = None,
    *,
    slice_tolerance: float = SLICE_TOLERANCE,
    reference_path: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Rasterise RTSTRUCT ROIs onto the grid of ``reference_image``.

    Args:
        rtstruct_path: the RTSTRUCT file.
        reference_image: the CT (a SimpleITK image, or a path to one); only its
            grid is used.
        roi_names: ROIs to rasterise (names, case-insensitive, or ROI numbers);
            None for all.
        slice_tolerance: largest distance between a contour's plane and a slice
            centre, as a fraction of the slice spacing.
        reference_path: the CT's file name, for error messages.

    Returns:
        ``{ROI name: boolean array indexed [z, y, x] of the reference}``. See the
        module docstring for the inclusion rule and the even-odd rule for holes.
    """
    path = Path(rtstruct_path)
    reference = load_reference(reference_image)
    ds = read_rtstruct(path)
    entries = [MaskEntry(n, name) for n, name in rtstruct_rois(ds)]
    selected = select_entries(entries, roi_names, path=path, kind="ROI")
    arrays = rasterize_rois(
        ds,
        selected,
        reference,
        path=path,
        ref_name=reference_name(reference_image, reference_path),
        slice_tolerance=slice_tolerance,
    )
    out: dict[str, np.ndarray] = {}
    for entry, mask in zip(selected, arrays, strict=True):
        out[entry.name] = out[entry.name] | mask if entry.name in out else mask
    return out


def read_rtstruct(path: Path):
    """The RTSTRUCT's dataset; another DICOM object is a MaskError."""
    ds = _read_dicom(path, "RTSTRUCT")
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise MaskError(
            f"not an RTSTRUCT (Modality {ds.get('Modality', 'missing')!s})",
            path=path,
            fix="give the RTSTRUCT file",
        )
    return ds


#: How far (in voxels) a contour point may lie beyond the outer edge of the grid
#: and still count as inside (rounding of exported coordinates).
EDGE_TOLERANCE = 1e-3


@dataclass
class ContourCounts:
    """How many closed contours of one ROI lie (partly) outside the image."""

    contours: int = 0  # closed planar contours of the ROI
    beyond_slices: int = 0  # in a plane beyond the first or last slice: skipped
    outside_grid: int = 0  # in a slice, but reaching outside the in-plane grid: cut

    @property
    def outside(self) -> int:
        return self.beyond_slices + self.outside_grid

    def add(self, other: "ContourCounts") -> None:
        self.contours += other.contours
        self.beyond_slices += other.beyond_slices
        self.outside_grid += other.outside_grid


@dataclass(frozen=True)
class _VoxelGrid:
    """The CT's grid: physical = origin + matrix @ (x, y, z) index."""

    matrix: np.ndarray
    origin: np.ndarray
    to_index: np.ndarray
    size: np.ndarray  # voxels along x, y, z


def rasterize_rois(
    ds,
    entries: Sequence[MaskEntry],
    reference,
    *,
    path: Path,
    ref_name: str,
    slice_tolerance: float,
    counts: dict[str, ContourCounts] | None = None,
    warn: bool = True,
) -> list[np.ndarray]:
    """One boolean [z, y, x] array per entry (see :func:`rasterize_rtstruct`).

    ``counts``, when given, receives each ROI's :class:`ContourCounts` by name; ``warn``
    False leaves the warnings about contours outside the image to the caller.
    """
    contours_by_number: dict[int, list] = {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.get("ReferencedROINumber", -1))
        contours_by_number.setdefault(number, []).extend(item.get("ContourSequence", []))

    matrix, origin = index_to_physical(reference)
    grid = _VoxelGrid(matrix, origin, np.linalg.inv(matrix), np.asarray(reference.GetSize()))
    arrays = []
    for entry in entries:
        array, found = _rasterize_roi(
            entry,
            contours_by_number.get(entry.number, []),
            grid,
            path=path,
            ref_name=ref_name,
            slice_tolerance=slice_tolerance,
        )
        if warn:
            _warn_outside(path, entry, found)
        arrays.append(array)
        if counts is not None:
            counts.setdefault(entry.name, ContourCounts()).add(found)
    return arrays


def _rasterize_roi(
    entry: MaskEntry,
    contours: Sequence,
    grid: _VoxelGrid,
    *,
    path: Path,
    ref_name: str,
    slice_tolerance: float,
) -> tuple[np.ndarray, ContourCounts]:
    """The boolean [z, y, x] array of one ROI's contours (even-odd rule), and its counts."""
    from skimage.draw import polygon2mask

    size = grid.size
    volume = np.zeros(tuple(size), dtype=bool)  # indexed [x, y, z]
    skipped_kind = 0
    counts = ContourCounts()
    for number, item in enumerate(contours, start=1):
        kind = str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
        try:
            data = np.asarray([float(v) for v in item.get("ContourData", [])], dtype=float)
        except (TypeError, ValueError):
            raise MaskError(
                f"contour {number} of ROI {entry.name!r} has non-numeric ContourData",
                path=path,
                fix="export the RTSTRUCT again",
            ) from None
        if kind != "CLOSED_PLANAR" or data.size % 3 or data.size < 9:
            skipped_kind += 1
            continue
        points = data.reshape(-1, 3)
        index = (points - grid.origin) @ grid.to_index.T  # continuous (x, y, z) voxel index
        axis, slice_index = _contour_slice(
            index,
            grid,
            number,
            entry,
            path=path,
            ref_name=ref_name,
            slice_tolerance=slice_tolerance,
        )
        counts.contours += 1
        if not 0 <= slice_index < size[axis]:
            counts.beyond_slices += 1
            continue
        in_plane = [a for a in range(3) if a != axis]
        low, high = index[:, in_plane].min(axis=0), index[:, in_plane].max(axis=0)
        edge = 0.5 + EDGE_TOLERANCE
        if np.any(low < -edge) or np.any(high > size[in_plane] - 1 + edge):
            counts.outside_grid += 1
        filled = polygon2mask((int(size[in_plane[0]]), int(size[in_plane[1]])), index[:, in_plane])
        where: list[Any] = [slice(None)] * 3
        where[axis] = slice_index
        volume[tuple(where)] ^= filled  # even-odd rule: a contour inside another is a hole
    if skipped_kind:
        log.warning(
            "%s: ROI %r: %d contour(s) that are not closed polygons were skipped",
            path.name,
            entry.name,
            skipped_kind,
        )
    return np.ascontiguousarray(volume.transpose(2, 1, 0)), counts


def _warn_outside(path: Path, entry: MaskEntry, counts: ContourCounts) -> None:
    if counts.beyond_slices:
        log.warning(
            "%s: ROI %r: %d of %d contour(s) lie beyond the image's slices and were skipped",
            path.name,
            entry.name,
            counts.beyond_slices,
            counts.contours,
        )
    if counts.outside_grid:
        log.warning(
            "%s: ROI %r: %d of %d contour(s) reach outside the image's in-plane grid and "
            "were cut at its edge",
            path.name,
            entry.name,
            counts.outside_grid,
            counts.contours,
        )


def _contour_slice(
    index: np.ndarray,
    grid: _VoxelGrid,
    number: int,
    entry: MaskEntry,
    *,
    path: Path,
    ref_name: str,
    slice_tolerance: float,
) -> tuple[int, int]:
    """(slice axis, slice index) of a contour given in continuous voxel indices.

    A contour oblique to the slices, or between two slices, is a GeometryError.
    """
    spread = index.max(axis=0) - index.min(axis=0)
    axis = min((2, 1, 0), key=lambda a: spread[a])  # the slice axis first on ties
    if spread[axis] > slice_tolerance:
        raise GeometryError(
            f"{path} and {ref_name} do not describe the same physical grid: contour "
            f"{number} of ROI {entry.name!r} does not lie in a slice plane of the image "
            "(it is oblique to the slices)",
            fix="import it with the CT series it was drawn on",
        )
    position = float(index[:, axis].mean())
    slice_index = int(np.rint(position))
    if abs(position - slice_index) > slice_tolerance:
        plane = grid.origin + grid.matrix @ np.where(np.arange(3) == axis, position, 0.0)
        raise GeometryError(
            f"{path} and {ref_name} do not describe the same physical grid: contour "
            f"{number} of ROI {entry.name!r} lies between two slices "
            f"({abs(position - slice_index):.3g} slice spacings from the nearest; its "
            f"plane passes through {fmt(plane)} mm), so it was drawn on another series",
            fix="import it with the CT series it was drawn on (metcli never moves "
            "contours to another slice)",
        )
    return axis, slice_index
