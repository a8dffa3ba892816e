"""The study's lesion-slice preprocessing for 2D image models (train-cnn, predict).

For every kept lesion of a lesion map (split-lesions' ids), every axial slice
that contains the lesion becomes one square image, in this order:

1. **Window** (first, on Hounsfield units): width ``W`` and level ``L`` map
   ``[L - W/2, L + W/2]`` linearly to ``[0, 1]``; values outside are clipped.
   The study's abdominal window (330, 10) gives ``[-155, 175]`` HU.
2. **Blacken the surroundings**: pixels outside the lesion (in that slice) are
   set to black, the window's minimum (0 after scaling). With ``context_mm``
   > 0, pixels within that distance (in mm, in the slice plane, respecting the
   pixel spacing) of the lesion are kept as well.
3. **Square crop**: the bounding box of the kept pixels in that slice,
   enlarged to a square *in millimetres* (its longer side) with black padding,
   never stretched; the crop follows the pixel spacing, so anisotropic pixels
   cover the same distance in both directions. With ``fov_mm`` the crop is a
   fixed field of view of that many millimetres centred on the lesion's
   bounding box instead, so that the lesion's size is not hidden by the resize.
4. **Resize** to ``size`` x ``size`` with :func:`skimage.transform.resize`
   (bilinear, anti-aliased when shrinking; ``SliceSettings.resize`` ``bicubic``:
   cubic splines, as the MRI study's 299-pixel inputs; clipped to [0, 1]).

The lesion map is matched to the CT in physical space
(:func:`metcli.imaging.geometry.to_reference_grid`: the same grid, or flipped or
permuted axes of it); both are then brought to one orientation (LPS) so that
a flipped copy of the same data gives the same slices. Slices are ordered from
inferior to superior; rows run anterior to posterior, columns right to left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metcli.lesions.preprocess import (
    SliceSettings,
    keep_mask,
    oriented_arrays,
    resize_square,
    square_crop,
    wanted_ids,
    window,
)

log = logging.getLogger(__name__)


@dataclass
class LesionSlices:
    """The images of one lesion: ``images`` (n, size, size) float32 in [0, 1]."""

    lesion_id: int
    slice_indices: list[int]
    images: np.ndarray


def lesion_slices(
    ct,
    lesion_map,
    *,
    lesion_ids: Sequence[int] | None = None,
    settings: SliceSettings | None = None,
    ct_path=None,
    lesion_map_path=None,
) -> list[LesionSlices]:
    """The preprocessed axial slices of each lesion (see the module docstring).

    Args:
        ct: the CT (SimpleITK image, HU).
        lesion_map: split-lesions' map (0 background, 1..N lesion ids), on the
            CT's grid or a flipped/permuted copy of it.
        lesion_ids: the lesions to use (split-lesions' kept ones); default all
            ids present. An id missing from the map is a :class:`MaskError`.
        settings: :class:`SliceSettings` (default: the study's).
    """
    settings = settings or SliceSettings()
    hu, ids, spacing_zyx = oriented_arrays(
        ct, lesion_map, ct_path=ct_path, lesion_map_path=lesion_map_path
    )
    spacing_rc = spacing_zyx[1:]
    wanted = wanted_ids(ids, lesion_ids, lesion_map_path)
    result = []
    for lesion_id in wanted:
        mask = ids == lesion_id
        z_indices = np.flatnonzero(mask.any(axis=(1, 2)))
        images = []
        for z in z_indices:
            lesion = mask[z]
            windowed = window(hu[z], settings.window_width, settings.window_level)
            kept = keep_mask(lesion, spacing_rc, settings.context_mm)
            windowed[~kept] = 0.0
            crop = square_crop(windowed, kept, spacing_rc, settings.fov_mm)
            images.append(resize_square(crop, int(settings.size), settings.resize))
        stack = (
            np.stack(images) if images else np.zeros((0, settings.size, settings.size), np.float32)
        )
        result.append(LesionSlices(lesion_id, [int(z) for z in z_indices], stack))
    return result
