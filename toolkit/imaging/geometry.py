"""Physical grids: an image and its mask are matched in space, never by array index.

Two images describe the same grid when their size, spacing, origin and direction
agree (positions within :data:`TOLERANCE_MM`). Flipped or permuted axes of the
same grid are brought to the reference's orientation (an exact, lossless
reordering of voxels); any other difference is a :class:`GeometryError` that
names both files and the difference. Nothing here resamples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metcli.core.errors import GeometryError

#: Largest distance (mm) between corresponding voxel centres of "the same grid".
TOLERANCE_MM = 1e-3
#: Largest difference between direction cosines of "the same grid".
DIRECTION_TOLERANCE = 1e-4


def grid_of(image) -> dict:
    """Size, spacing, origin and direction of a SimpleITK image, as plain lists."""
    return {
        "size": list(image.GetSize()),
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
    }


def grid_difference(image, reference, *, tol_mm: float = TOLERANCE_MM) -> str | None:
    """A short description of how two grids differ, or None if they are the same."""
    a, b = grid_of(image), grid_of(reference)
    if a["size"] != b["size"]:
        return f"size {'x'.join(map(str, a['size']))} vs {'x'.join(map(str, b['size']))}"
    dim = len(a["size"])
    direction_a = np.asarray(a["direction"]).reshape(dim, dim)
    direction_b = np.asarray(b["direction"]).reshape(dim, dim)
    if np.max(np.abs(direction_a - direction_b)) > DIRECTION_TOLERANCE:
        return (f"direction {np.round(direction_a, 4).tolist()} vs "
                f"{np.round(direction_b, 4).tolist()}")
    spacing_a, spacing_b = np.asarray(a["spacing"]), np.asarray(b["spacing"])
    extent = np.asarray(a["size"]) - 1
    # Largest displacement of any voxel centre caused by the spacing difference.
    if np.max(np.abs(spacing_a - spacing_b) * np.maximum(extent, 1)) > tol_mm:
        return f"spacing {fmt(spacing_a)} vs {fmt(spacing_b)} mm"
    origin_a, origin_b = np.asarray(a["origin"]), np.asarray(b["origin"])
    if np.linalg.norm(origin_a - origin_b) > tol_mm:
        return (f"origin {fmt(origin_a)} vs {fmt(origin_b)} mm "
                f"(shifted by {np.linalg.norm(origin_a - origin_b):.4g} mm)")
    return None


def fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def orientation_code(image) -> str:
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_reference_grid(image, reference, *, image_path: str | Path | None = None,
                      reference_path: str | Path | None = None, tol_mm: float = TOLERANCE_MM):
    """Return ``image`` on ``reference``'s grid, or raise :class:`GeometryError`.

    Only lossless operations are used: the same grid within ``tol_mm`` (the
    reference's geometry is then copied exactly), or a permutation/flip of axes
    that maps the image's voxel centres onto the reference's.
    """
    import SimpleITK as sitk

    difference = grid_difference(image, reference, tol_mm=tol_mm)
    if difference is None:
        out = sitk.Image(image)
        out.CopyInformation(reference)
        return out
    code = orientation_code(reference)
    if orientation_code(image) != code or _is_oblique(image) or _is_oblique(reference):
        try:
            reoriented = sitk.DICOMOrient(image, code)
        except RuntimeError:
            reoriented = None
        if reoriented is not None and grid_difference(reoriented, reference, tol_mm=tol_mm) is None:
            reoriented.CopyInformation(reference)
            return reoriented
    names = f"{image_path or 'image'} and {reference_path or 'reference'}"
    raise GeometryError(
        f"{names} do not describe the same physical grid: {difference}",
        fix="give a mask made on this image's grid (metcli never resamples a mask silently); "
            "resample it yourself if you are sure it belongs to this image")


def _is_oblique(image) -> bool:
    dim = image.GetDimension()
    direction = np.abs(np.asarray(image.GetDirection()).reshape(dim, dim))
    return bool(np.any((direction > 1e-6) & (direction < 1 - 1e-6)))


def voxel_volume_mm3(image) -> float:
    return float(np.prod(image.GetSpacing()))
