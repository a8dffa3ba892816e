"""Physical grids: an image and its mask are matched in space, never by array index.

Two images describe the same grid when their size, spacing, origin and direction
agree (positions within :data:`TOLERANCE_MM`). Flipped or permuted axes of the
same grid are brought to the reference's orientation (an exact, lossless
reordering of voxels); any other difference is a :class:`GeometryError` that
names both files and the difference. A binary volume with its own affine (a
DICOM-SEG's) is put on a reference grid by :func:`place_on_grid`, which accepts
an exact voxel correspondence only. Nothing here resamples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metcli.core.errors import GeometryError, MaskError

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
        return (
            f"direction {np.round(direction_a, 4).tolist()} vs {np.round(direction_b, 4).tolist()}"
        )
    spacing_a, spacing_b = np.asarray(a["spacing"]), np.asarray(b["spacing"])
    extent = np.asarray(a["size"]) - 1
    # Largest displacement of any voxel centre caused by the spacing difference.
    if np.max(np.abs(spacing_a - spacing_b) * np.maximum(extent, 1)) > tol_mm:
        return f"spacing {fmt(spacing_a)} vs {fmt(spacing_b)} mm"
    origin_a, origin_b = np.asarray(a["origin"]), np.asarray(b["origin"])
    if np.linalg.norm(origin_a - origin_b) > tol_mm:
        return (
            f"origin {fmt(origin_a)} vs {fmt(origin_b)} mm "
            f"(shifted by {np.linalg.norm(origin_a - origin_b):.4g} mm)"
        )
    return None


def fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def orientation_code(image) -> str:
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_reference_grid(
    image,
    reference,
    *,
    image_path: str | Path | None = None,
    reference_path: str | Path | None = None,
    tol_mm: float = TOLERANCE_MM,
):
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
        "resample it yourself if you are sure it belongs to this image",
    )


def _is_oblique(image) -> bool:
    dim = image.GetDimension()
    direction = np.abs(np.asarray(image.GetDirection()).reshape(dim, dim))
    return bool(np.any((direction > 1e-6) & (direction < 1 - 1e-6)))


def voxel_volume_mm3(image) -> float:
    return float(np.prod(image.GetSpacing()))


# ----------------------------------------------------------------------------- masks on a grid
def load_reference(reference_image):
    """The reference image: a SimpleITK image, or read from a path."""
    if isinstance(reference_image, (str, Path)):
        from metcli.io.files import read_image

        return read_image(reference_image, what="reference image")
    return reference_image


def reference_name(reference_image, reference_path) -> str:
    """The reference image's name for messages."""
    if reference_path is not None:
        return str(reference_path)
    if isinstance(reference_image, (str, Path)):
        return str(reference_image)
    return "the reference image"


def index_to_physical(image) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 matrix, origin) with physical = origin + matrix @ (x, y, z) index."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)
    spacing = np.asarray(image.GetSpacing(), float)
    return direction * spacing[None, :], np.asarray(image.GetOrigin(), float)


def _zyx_affine(image) -> np.ndarray:
    """4x4 affine from numpy (z, y, x) indices of ``image`` to physical (LPS) mm."""
    matrix, origin = index_to_physical(image)
    affine = np.eye(4)
    affine[:3, :3] = matrix[:, ::-1]
    affine[:3, 3] = origin
    return affine


def place_on_grid(
    array: np.ndarray,
    affine: np.ndarray,
    reference_image,
    *,
    mask_path: str | Path | None = None,
    reference_path: str | Path | None = None,
    tol_mm: float = TOLERANCE_MM,
) -> np.ndarray:
    """Put a binary volume (indices -> mm by ``affine``) onto ``reference_image``'s grid.

    Only an exact voxel correspondence is accepted: the same spacing and axes
    (possibly permuted or flipped) and voxel centres within ``tol_mm``; the
    volume may cover part of the reference. Returns a boolean array indexed
    [z, y, x] of the reference. Anything else is a :class:`GeometryError`.
    """
    names = f"{mask_path or 'mask'} and {reference_path or 'reference'}"
    fix = (
        "give a mask made on this image's grid (metcli never resamples a mask silently); "
        "resample it yourself if you are sure it belongs to this image"
    )
    array = np.asarray(array)
    if array.ndim != 3:
        raise MaskError(
            f"the segmentation volume is {array.ndim}D; a 3D volume is needed", path=mask_path
        )
    ref_affine = _zyx_affine(reference_image)
    ref_shape = np.asarray(reference_image.GetSize()[::-1])
    transform = np.linalg.inv(ref_affine) @ np.asarray(affine, float)
    linear, shift = transform[:3, :3], transform[:3, 3]
    perm = np.rint(linear)
    is_signed_permutation = (
        np.all(np.isin(np.abs(perm), (0.0, 1.0)))
        and np.all(np.abs(perm).sum(axis=0) == 1)
        and np.all(np.abs(perm).sum(axis=1) == 1)
    )
    if not is_signed_permutation:
        mask_spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
        raise GeometryError(
            f"{names} do not describe the same physical grid: voxel axes or spacing differ "
            f"(mask spacing {fmt(mask_spacing)} mm vs {fmt(reference_image.GetSpacing()[::-1])} "
            "mm, z-y-x order)",
            fix=fix,
        )
    offset = np.rint(shift)
    corners = np.array(
        [
            [a, b, c, 1.0]
            for a in (0, array.shape[0] - 1)
            for b in (0, array.shape[1] - 1)
            for c in (0, array.shape[2] - 1)
        ]
    )
    target = corners[:, :3] @ perm.T + offset
    physical_mask = corners @ np.asarray(affine, float).T
    physical_ref = np.c_[target, np.ones(len(target))] @ ref_affine.T
    deviation = float(np.max(np.linalg.norm(physical_mask[:, :3] - physical_ref[:, :3], axis=1)))
    if deviation > tol_mm:
        raise GeometryError(
            f"{names} do not describe the same physical grid: the mask's voxel centres lie "
            f"up to {deviation:.4g} mm off the image's voxel centres",
            fix=fix,
        )
    voxels = np.argwhere(array)
    out = np.zeros(tuple(ref_shape), dtype=bool)
    if len(voxels) == 0:
        return out
    dest = (voxels @ perm.T + offset).astype(np.int64)
    inside = np.all((dest >= 0) & (dest < ref_shape), axis=1)
    if not inside.all():
        raise GeometryError(
            f"{names} do not describe the same physical grid: {int((~inside).sum())} of "
            f"{len(dest)} mask voxels lie outside the image",
            fix=fix,
        )
    out[tuple(dest.T)] = True
    return out
