"""Split the lesion label of one segmentation into single lesions, measure them, filter them.

:func:`label_lesions` gives each connected component of the lesion label an id,
measures it in physical space (:mod:`metcli.lesions.diameters`) and drops those
under the minimum diameter. The definitions (components, ids, lesion map, size
rule) are those of :mod:`metcli.lesions.split_lesions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metcli.core.errors import ImageError, UsageError
from metcli.lesions.diameters import index_to_physical, measure_components, slice_axis

DIAMETER_RULES = ("axial", "3d", "equivalent")
CONNECTIVITIES = (6, 18, 26)
BELOW_MIN_DIAMETER = "below_min_diameter"

_RULE_COLUMN = {
    "axial": "longest_axial_diameter_mm",
    "3d": "max_3d_diameter_mm",
    "equivalent": "equivalent_diameter_mm",
}


def lesion_name(index: int) -> str:
    """``lesion-001`` for id 1 (three digits at least)."""
    return f"lesion-{index:03d}"


# ----------------------------------------------------------------------------- settings
def check_settings(
    *,
    min_diameter_mm: float,
    diameter_rule: str,
    connectivity: int,
    lesion_label: int,
    liver_label: int,
) -> dict[str, Any]:
    """The resolved settings, or a :class:`UsageError` naming the bad one."""
    try:
        min_diameter = float(min_diameter_mm)
    except (TypeError, ValueError):
        raise UsageError(
            f"--min-diameter-mm must be a number of millimetres, got {min_diameter_mm!r}"
        ) from None
    if not math.isfinite(min_diameter) or min_diameter < 0:
        raise UsageError(
            f"--min-diameter-mm must be 0 or more (mm), got {min_diameter_mm!r}",
            fix="use 0 to keep every lesion",
        )
    if diameter_rule not in DIAMETER_RULES:
        raise UsageError(
            f"--diameter-rule must be one of {', '.join(DIAMETER_RULES)}, got {diameter_rule!r}"
        )
    if isinstance(connectivity, bool) or str(connectivity) not in {str(c) for c in CONNECTIVITIES}:
        raise UsageError(f"--connectivity must be 6, 18 or 26, got {connectivity!r}")
    labels = {}
    for option, value in (("--lesion-label", lesion_label), ("--liver-label", liver_label)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 1 <= int(value) <= 65535
        ):
            raise UsageError(
                f"{option} must be a whole number from 1 to 65535, got {value!r}",
                fix="0 is the background",
            )
        labels[option] = int(value)
    if labels["--lesion-label"] == labels["--liver-label"]:
        raise UsageError(
            f"--lesion-label and --liver-label are both {lesion_label}",
            fix="give the two labels of the segmentation (default 2 and 1)",
        )
    return {
        "min_diameter_mm": min_diameter,
        "diameter_rule": diameter_rule,
        "connectivity": int(connectivity),
        "lesion_label": labels["--lesion-label"],
        "liver_label": labels["--liver-label"],
    }


# ----------------------------------------------------------------------------- components
def _components(seg_image, array: np.ndarray, lesion_label: int, connectivity: int):
    """(connected components of the lesion label: uint32, 0 background, 1..N; the image
    that owns them, or None). 6 and 26 stay in SimpleITK (a view of its labels, no
    copy); 18 goes through cc3d."""
    import SimpleITK as sitk

    if connectivity == 18:
        import cc3d

        lesion = (array == lesion_label).astype(np.uint8)
        out = cc3d.connected_components(lesion, connectivity=18, out_dtype=np.uint32)
        return np.asarray(out), None
    binary = sitk.BinaryThreshold(seg_image, lesion_label, lesion_label, 1, 0)
    labelled = sitk.ConnectedComponent(binary, connectivity == 26)
    del binary
    if labelled.GetPixelID() != sitk.sitkUInt32:
        labelled = sitk.Cast(labelled, sitk.sitkUInt32)
    return sitk.GetArrayViewFromImage(labelled), labelled


def _slabs(array: np.ndarray):
    """Slabs of about four million voxels along the first axis (views)."""
    step = max(1, (1 << 22) // max(1, int(np.prod(array.shape[1:]))))
    for first in range(0, array.shape[0], step):
        yield array[first : first + step]


def _label_voxels(array: np.ndarray, lesion_label: int, liver_label: int) -> tuple[int, int]:
    """(lesion voxels, liver voxels), refusing any other label (see below), slab by slab."""
    lesion = liver = other = 0
    found = []
    for part in _slabs(array):
        is_lesion, is_liver = part == lesion_label, part == liver_label
        lesion += int(np.count_nonzero(is_lesion))
        liver += int(np.count_nonzero(is_liver))
        rest = (part != 0) & ~is_lesion & ~is_liver
        if rest.any():
            other += int(np.count_nonzero(rest))
            found.append(np.unique(part[rest]))
    if other:
        _refuse_other_labels(np.unique(np.concatenate(found)), other, lesion_label, liver_label)
    return lesion, liver


def _refuse_other_labels(found: np.ndarray, count: int, lesion_label: int, liver_label: int):
    """Refuse labels other than background, liver and lesion: dropping them silently
    would change the lesion count and the tumour burden (import-mask's rule)."""
    shown = ", ".join(f"{v:g}" for v in found[:8]) + (" ..." if len(found) > 8 else "")
    raise ImageError(
        f"the segmentation holds label(s) {shown} besides background (0), liver "
        f"({liver_label}) and lesion ({lesion_label}) in {count} voxels",
        fix="give --lesion-label and --liver-label for the labels it uses, or map its "
        "labels to 0/1/2 first (metcli import-mask MASK ... --label-map)",
    )


def _check_label_values(array: np.ndarray) -> None:
    if array.dtype.kind == "f":
        if not all(np.isfinite(part).all() for part in _slabs(array)):
            raise ImageError(
                "the segmentation holds NaN or infinite values; a label image "
                "of whole numbers (0 background, 1 liver, 2 lesion) is needed",
                fix="give a discrete segmentation (_dseg)",
            )
        for part in _slabs(array):
            fractional = part != np.floor(part)
            if fractional.any():
                example = float(part[fractional].flat[0])
                raise ImageError(
                    f"the segmentation holds non-integer values (for example "
                    f"{example:g}); a label image of whole numbers (0 background, "
                    "1 liver, 2 lesion) is needed",
                    fix="give a discrete segmentation (_dseg), not a probability map",
                )
    elif array.dtype.kind not in "iub":
        raise ImageError(
            f"the segmentation has voxels of type {array.dtype}; a label image is needed",
            fix="give a discrete segmentation (_dseg)",
        )
    if array.size and array.min() < 0:
        raise ImageError(
            f"the segmentation holds negative values (minimum {array.min():g}); "
            "labels are 0 or more",
            fix="give the segmentation, not the CT image",
        )


@dataclass
class LesionSplit:
    """What :func:`split_image` finds in one segmentation."""

    lesion_map: Any  # SimpleITK image, uint16
    rows: list[dict] = field(default_factory=list)
    liver_voxels: int = 0
    lesion_voxels: int = 0
    voxel_volume_mm3: float = 0.0
    slice_axis: int = 2


def split_image(
    seg_image,
    *,
    lesion_label: int = 2,
    liver_label: int = 1,
    connectivity: int = 26,
    min_diameter_mm: float = 5.0,
    diameter_rule: str = "axial",
) -> LesionSplit:
    """:func:`label_lesions` plus the voxel counts the tumour burden needs."""
    import SimpleITK as sitk

    settings = check_settings(
        min_diameter_mm=min_diameter_mm,
        diameter_rule=diameter_rule,
        connectivity=connectivity,
        lesion_label=lesion_label,
        liver_label=liver_label,
    )
    if seg_image.GetDimension() != 3:
        raise ImageError(
            f"the segmentation is {seg_image.GetDimension()}D; a 3D volume is needed",
            fix="give a 3D segmentation",
        )
    if seg_image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            "the segmentation has several components per voxel; a label image is needed",
            fix="give a discrete segmentation (_dseg)",
        )
    array = sitk.GetArrayViewFromImage(seg_image)  # [k, j, i]
    _check_label_values(array)
    lesion_voxels, liver_voxels = _label_voxels(
        array, settings["lesion_label"], settings["liver_label"]
    )
    matrix, origin = index_to_physical(seg_image)
    voxel_volume = float(abs(np.linalg.det(matrix)))
    axis = slice_axis(seg_image)

    owner = None  # the SimpleITK image behind ``labelled``, kept alive while it is used
    if lesion_voxels:
        labelled, owner = _components(
            seg_image, array, settings["lesion_label"], settings["connectivity"]
        )
    else:
        labelled = np.zeros(array.shape, dtype=np.uint32)
    n_components = int(labelled.max()) if labelled.size else 0
    if n_components > 65535:
        raise ImageError(
            f"the segmentation has {n_components} separate lesions; the lesion "
            "map (uint16) holds at most 65535",
            fix="check the segmentation; it looks like noise",
        )
    measured = measure_components(labelled, matrix, origin, axis, voxel_volume)
    lookup, rows = _rows(measured, settings)
    lesion_map = np.empty(array.shape, dtype=np.uint16)
    for part, source in zip(_slabs(lesion_map), _slabs(labelled)):
        part[...] = lookup[source]
    del labelled, owner
    lesion_map = sitk.GetImageFromArray(lesion_map)
    lesion_map.CopyInformation(seg_image)
    return LesionSplit(lesion_map, rows, liver_voxels, lesion_voxels, voxel_volume, axis)


def _rows(measured, settings) -> tuple[np.ndarray, list[dict]]:
    """(raw component label -> lesion id, 0 when dropped; the table's rows)."""
    threshold = settings["min_diameter_mm"]
    column = _RULE_COLUMN[settings["diameter_rule"]]
    lookup = np.zeros(len(measured) + 1, dtype=np.uint16)
    rows = []
    for index, (raw_label, stats) in enumerate(measured, start=1):
        kept = not stats[column] < threshold
        if kept:
            lookup[raw_label] = index
        rows.append(
            {
                "index": index,
                "name": lesion_name(index),
                **stats,
                "kept": kept,
                "reason": None if kept else BELOW_MIN_DIAMETER,
            }
        )
    return lookup, rows


def label_lesions(
    seg_image,
    *,
    lesion_label: int = 2,
    liver_label: int = 1,
    connectivity: int = 26,
    min_diameter_mm: float = 5.0,
    diameter_rule: str = "axial",
):
    """Split the lesion label of a segmentation into single lesions and measure them.

    Args:
        seg_image: a 3D SimpleITK label image (0 background, ``liver_label``,
            ``lesion_label``); whole numbers, any integer or float pixel type.
        lesion_label, liver_label: the labels of lesions and liver.
        connectivity: 6 (faces), 18 (faces and edges) or 26 (faces, edges and
            corners) neighbours connect lesion voxels.
        min_diameter_mm: lesions whose chosen diameter is smaller are dropped.
        diameter_rule: which diameter the size rule uses: ``axial`` (longest
            axial diameter), ``3d`` (largest 3D diameter) or ``equivalent``.

    Returns:
        ``(lesion_map, rows)``. ``lesion_map`` is a uint16 image on the
        segmentation's grid holding the KEPT lesions under their ids (dropped
        ones are 0). ``rows`` lists EVERY connected component, ids 1..N by
        decreasing volume (ties: physical centroid z, y, x, then raster order),
        with the columns of :data:`metcli.lesions.tables.LESION_COLUMNS`; ``kept``
        says whether it passed the size rule and ``reason`` why not
        (``below_min_diameter``).
        Diameters are distances between voxel centres in mm (a single voxel
        has 0): see :mod:`metcli.lesions.split_lesions` for every definition. An image
        without the lesion label gives an empty map and no rows.

    Raises:
        ImageError: not a 3D label image (non-integer, negative values...).
        UsageError: a bad setting.
    """
    result = split_image(
        seg_image,
        lesion_label=lesion_label,
        liver_label=liver_label,
        connectivity=connectivity,
        min_diameter_mm=min_diameter_mm,
        diameter_rule=diameter_rule,
    )
    return result.lesion_map, result.rows
