"""Channels on their own grids: one channel resampled onto the reference channel's grid.

CT phases and MR sequences are separate acquisitions, each with its own extent, slice
thickness and position. Every channel is brought onto the grid of one reference channel
(the one the lesion map belongs to), in physical space:

- the same grid within :data:`~metcli.imaging.geometry.TOLERANCE_MM`, or a flipped or
  permuted copy of it, is matched losslessly by
  :func:`~metcli.imaging.geometry.to_reference_grid` (no interpolation: the voxels are
  returned bit for bit);
- any other grid is resampled with SimpleITK (linear, cubic B-spline or nearest
  neighbour), optionally through a transform from
  :mod:`metcli.imaging.registration` (reference points -> channel points);
- reference voxels that map outside the channel's extent are "not covered": they get
  ``default_value`` and are False in :func:`coverage`; :func:`check_covers` refuses a
  channel that does not cover every lesion.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from metcli.core.errors import GeometryError, ImageError, UsageError
from metcli.imaging.geometry import TOLERANCE_MM, grid_difference, to_reference_grid
from metcli.imaging.registration import Registration, affine_parts

#: interpolation name -> SimpleITK interpolator attribute
INTERPOLATORS = {
    "linear": "sitkLinear",
    "bspline": "sitkBSpline",
    "nearest": "sitkNearestNeighbor",
}
#: Fix offered when a channel does not cover a lesion.
NOT_COVERED_FIX = (
    "acquire or export the full extent of that channel (phase or sequence), or leave it "
    "out with --channels"
)


def _check_3d(image, what: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            f"the {what} is a {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s); a 3D scalar image is needed",
            fix="give one 3D volume per channel (split a 4D series into its volumes first)",
        )


def _as_transform(transform):
    """A SimpleITK transform from None, a :class:`Registration` or a SimpleITK transform;
    None when it maps every point to itself."""
    if transform is None:
        return None
    if isinstance(transform, Registration):
        transform = transform.transform
    matrix, offset = affine_parts(transform)
    if np.max(np.abs(matrix - np.eye(3))) < 1e-12 and np.max(np.abs(offset)) < 1e-9:
        return None
    return transform


def _same_grid(image, reference):
    """``image`` on ``reference``'s grid by a lossless match (same grid, flipped or
    permuted axes), or None when the grids differ otherwise."""
    if grid_difference(image, reference, tol_mm=TOLERANCE_MM) is None:
        return to_reference_grid(image, reference)
    try:
        return to_reference_grid(image, reference)
    except GeometryError:
        return None


def _default_for(pixel_id: int, default_value: float | None) -> float:
    import SimpleITK as sitk

    if default_value is not None:
        return float(default_value)
    if pixel_id in (sitk.sitkFloat32, sitk.sitkFloat64):
        return math.nan
    dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype
    return float(np.iinfo(dtype).min)


def resample_to_reference(
    image,
    reference,
    *,
    interpolation: str = "linear",
    default_value: float | None = None,
    transform=None,
):
    """``image`` (a channel) on ``reference``'s grid, matched in physical space.

    Args:
        image, reference: 3D SimpleITK images.
        interpolation: ``linear``, ``bspline`` (cubic) or ``nearest`` (for label maps).
        default_value: the value of reference voxels outside the channel's extent
            ("not covered"). None: NaN for linear and B-spline (their output is float32, or
            float64 for a float64 channel) and for float images; the lowest value of the
            pixel type for ``nearest`` on an integer image. :func:`coverage` gives the same
            voxels as a mask.
        transform: None (the channel is where the scanner put it), a
            :class:`~metcli.imaging.registration.Registration` or a SimpleITK transform
            mapping reference (fixed) points to channel (moving) points.

    Returns the image itself on the reference's geometry, bit for bit and in its own pixel
    type, when the grids are the same within the tolerance or differ by flipped or
    permuted axes and there is no transform (or an identity); otherwise a resampled image.
    """
    import SimpleITK as sitk

    _check_3d(image, "channel")
    _check_3d(reference, "reference channel")
    if interpolation not in INTERPOLATORS:
        raise UsageError(
            f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATORS)}",
            fix="use linear for images, nearest for label maps",
        )
    transform = _as_transform(transform)
    if transform is None:
        matched = _same_grid(image, reference)
        if matched is not None:
            return matched
    pixel_id = image.GetPixelID()
    if interpolation != "nearest" and pixel_id != sitk.sitkFloat64:
        pixel_id = sitk.sitkFloat32
    return sitk.Resample(
        image,
        reference,
        transform if transform is not None else sitk.Transform(),
        getattr(sitk, INTERPOLATORS[interpolation]),
        _default_for(pixel_id, default_value),
        pixel_id,
    )


def coverage(image, reference, transform=None) -> np.ndarray:
    """Which voxels of ``reference`` map inside ``image``'s extent: a boolean array
    indexed [z, y, x] on the reference grid.

    A voxel is covered when its centre, mapped by ``transform`` (as in
    :func:`resample_to_reference`), lies within the channel's voxels (their centres plus
    half a voxel: the region where SimpleITK interpolates rather than filling
    ``default_value``).
    """
    import SimpleITK as sitk

    _check_3d(image, "channel")
    _check_3d(reference, "reference channel")
    transform = _as_transform(transform)
    shape = reference.GetSize()[::-1]
    if transform is None and _same_grid(image, reference) is not None:
        return np.ones(shape, dtype=bool)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.Resample(
        ones,
        reference,
        transform if transform is not None else sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    return sitk.GetArrayFromImage(inside).astype(bool)


def check_covers(
    coverage_mask: np.ndarray,
    lesion_map_array: np.ndarray,
    lesion_ids: Iterable[int] | None = None,
    *,
    channel_path: str | Path | None,
    reference_path: str | Path | None,
) -> None:
    """Raise :class:`GeometryError` unless the channel covers every voxel of each lesion.

    Args:
        coverage_mask: :func:`coverage` of the channel, on the reference grid.
        lesion_map_array: the lesion map (0 background, 1..N lesion ids) on the same grid.
        lesion_ids: the lesions to check (ids absent from the map are skipped); None: all.
        channel_path, reference_path: the files, for the message.
    """
    coverage_mask = np.asarray(coverage_mask, dtype=bool)
    lesion_map_array = np.asarray(lesion_map_array)
    if coverage_mask.shape != lesion_map_array.shape:
        raise GeometryError(
            f"the coverage of the channel {channel_path or ''} ({coverage_mask.shape}) and the "
            f"lesion map of {reference_path or 'the reference channel'} "
            f"({lesion_map_array.shape}) are not on the same grid",
            fix="compute the coverage on the reference channel's grid (the lesion map's)",
        )
    if lesion_ids is None:
        lesion_ids = [int(i) for i in np.unique(lesion_map_array) if i != 0]
    outside = lesion_map_array[~coverage_mask]
    ids, uncovered = [], []
    for lesion_id in sorted({int(i) for i in lesion_ids}):
        n_out = int(np.count_nonzero(outside == lesion_id))
        if n_out:
            n_all = int(np.count_nonzero(lesion_map_array == lesion_id))
            ids.append(str(lesion_id))
            uncovered.append(f"lesion {lesion_id}: {n_out} of {n_all} voxels outside")
    if uncovered:
        ids = ", ".join(ids)
        raise GeometryError(
            f"this channel does not cover lesion(s) {ids} of the lesion map of the reference "
            f"channel {reference_path or '(reference)'} ({'; '.join(uncovered)})",
            path=channel_path or "channel",
            fix=NOT_COVERED_FIX,
        )
