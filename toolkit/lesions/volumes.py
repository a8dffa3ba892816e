"""The 3D variant of the lesion preprocessing (``train-cnn --dims 3``, predict).

For every kept lesion of a lesion map (split-lesions' ids), one cube around
the lesion becomes one volume, by the rules of :mod:`metcli.lesions.slices`
carried over to three dimensions, in this order:

1. **Window** (first, on Hounsfield units): width ``W`` and level ``L`` map
   ``[L - W/2, L + W/2]`` linearly to ``[0, 1]``; values outside are clipped.
2. **Blacken the surroundings**: voxels outside the lesion are set to black
   (0). With ``context_mm`` > 0, voxels within that distance (in mm, in 3D,
   respecting the voxel spacing) of the lesion are kept as well.
3. **Cube crop**: the bounding box of the kept voxels, enlarged to a cube *in
   millimetres* (its longest side) centred on it and padded with black, never
   stretched; with anisotropic voxels the crop has different numbers of voxels
   along each axis so that it covers the same distance. With ``fov_mm`` the
   cube is a fixed field of view of that many millimetres centred on the
   lesion's bounding box instead.
4. **Resize** to ``size`` x ``size`` x ``size`` with
   :func:`skimage.transform.resize` (trilinear; anti-aliased when every side
   shrinks, as in 2D).

The settings are :class:`metcli.lesions.slices.SliceSettings` (the same window,
size, context and field of view). The lesion map is matched to the CT in
physical space (the same grid, or flipped or permuted axes of it); both are
then brought to LPS orientation, so a flipped copy of the same data gives the
same volume. Volumes are indexed [z, y, x]: inferior to superior, anterior to
posterior, right to left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metcli.lesions.preprocess import (
    SliceSettings,
    oriented_arrays,
    resize_to,
    wanted_ids,
    window,
    window_1d,
)

log = logging.getLogger(__name__)

#: Version of the 3D preprocessing; model cards with ``dims`` 3 record it.
PREPROCESSING_VERSION = 1


@dataclass
class LesionVolume:
    """The volume of one lesion: ``image`` (size, size, size) float32 in [0, 1].

    ``slice_indices`` are the axial slices (z, LPS) that contain the lesion.
    """

    lesion_id: int
    slice_indices: list[int]
    image: np.ndarray


def take_box(volume: np.ndarray, starts: Sequence[int], counts: Sequence[int]) -> np.ndarray:
    """``volume[starts:starts+counts]`` on every axis, black (0) outside the volume."""
    out = np.zeros(tuple(int(c) for c in counts), dtype=volume.dtype)
    source, target = [], []
    for start, count, length in zip(starts, counts, volume.shape):
        lo, hi = max(int(start), 0), min(int(start) + int(count), length)
        if lo >= hi:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - int(start), hi - int(start)))
    out[tuple(target)] = volume[tuple(source)]
    return out


def keep_mask_3d(lesion: np.ndarray, spacing_zyx: Sequence[float], context_mm: float) -> np.ndarray:
    """Voxels kept: the lesion, plus those within ``context_mm`` of it (in mm, in 3D)."""
    lesion = np.asarray(lesion, dtype=bool)
    if context_mm <= 0:
        return lesion
    from scipy.ndimage import distance_transform_edt

    # Only a box around the lesion, grown by the margin, can hold kept voxels.
    found = [
        np.flatnonzero(lesion.any(axis=tuple(a for a in range(3) if a != axis)))
        for axis in range(3)
    ]
    margin = [int(np.ceil(context_mm / s)) + 1 for s in spacing_zyx]
    box = tuple(
        slice(max(f[0] - m, 0), min(f[-1] + m + 1, n))
        for f, m, n in zip(found, margin, lesion.shape)
    )
    kept = np.zeros(lesion.shape, dtype=bool)
    distance = distance_transform_edt(~lesion[box], sampling=tuple(spacing_zyx))
    kept[box] = distance <= context_mm
    return kept


def cube_crop(
    volume: np.ndarray,
    region: np.ndarray,
    spacing_zyx: Sequence[float],
    fov_mm: float | None = None,
) -> np.ndarray:
    """The cube (in mm) around ``region``'s bounding box, padded with black.

    Without ``fov_mm`` the side is the longest side of the bounding box in mm;
    with it, ``fov_mm``. Each axis gets as many voxels as cover that side at
    its spacing (a cube in mm, not always in voxels).
    """
    bounds = []
    for axis in range(3):
        found = np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append((int(found[0]), int(found[-1])))
    side = (
        fov_mm
        if fov_mm is not None
        else max((hi - lo + 1) * s for (lo, hi), s in zip(bounds, spacing_zyx))
    )
    windows = [window_1d(lo, hi, s, side) for (lo, hi), s in zip(bounds, spacing_zyx)]
    return take_box(volume, [w[0] for w in windows], [w[1] for w in windows])


def resize_cube(volume: np.ndarray, size: int) -> np.ndarray:
    """``volume`` resized to size x size x size (trilinear; anti-aliased when shrinking)."""
    return resize_to(volume, size)


def lesion_volumes(
    ct,
    lesion_map,
    *,
    lesion_ids: Sequence[int] | None = None,
    settings: SliceSettings | None = None,
    ct_path=None,
    lesion_map_path=None,
) -> list[LesionVolume]:
    """The preprocessed cube of each lesion (see the module docstring).

    Args:
        ct: the CT (SimpleITK image, HU).
        lesion_map: split-lesions' map (0 background, 1..N lesion ids), on the
            CT's grid or a flipped/permuted copy of it.
        lesion_ids: the lesions to use (split-lesions' kept ones); default all
            ids present. An id missing from the map is a :class:`MaskError`.
        settings: :class:`~metcli.lesions.slices.SliceSettings` (window, size,
            context_mm, fov_mm).
    """
    settings = settings or SliceSettings(size=64)
    hu, ids, spacing = oriented_arrays(
        ct, lesion_map, ct_path=ct_path, lesion_map_path=lesion_map_path
    )
    wanted = wanted_ids(ids, lesion_ids, lesion_map_path)
    result = []
    for lesion_id in wanted:
        mask = ids == lesion_id
        kept = keep_mask_3d(mask, spacing, settings.context_mm)
        # Window only the crop (the same values as windowing the whole CT first).
        crop_hu = cube_crop(hu.astype(np.float32), kept, spacing, settings.fov_mm)
        crop_kept = cube_crop(kept, kept, spacing, settings.fov_mm)
        windowed = window(crop_hu, settings.window_width, settings.window_level)
        windowed[~crop_kept] = 0.0
        z_indices = np.flatnonzero(mask.any(axis=(1, 2)))
        result.append(
            LesionVolume(
                lesion_id, [int(z) for z in z_indices], resize_cube(windowed, int(settings.size))
            )
        )
    return result
