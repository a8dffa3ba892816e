"""The ONNX backend's preprocessing, computed block by block instead of on whole copies.

nnU-Net's preprocessing (:mod:`metcli.segmentation.preprocessing`) turns the CT into a
float32 copy, crops and normalises it into more copies, converts it to float64 and
pads it for the spline resampling: on a 512 x 512 x 600 CT that is several GB held
at once. Here the CT stays the array SimpleITK holds (a view, flipped and
transposed as the model wants it, :class:`CtSource`), and only the values each step
needs are normalised and converted, one block at a time. The results are the same
numbers, not approximations of them:

* normalisation is elementwise for nnU-Net's CT scheme (and ``none``), so normalising
  a block gives the values of the normalised whole; schemes that need whole-image
  statistics (z-score, rescaling) normalise the whole image once, as before;
* resampling to the model's spacing (:func:`resample_source`) is scikit-image's
  ``resize`` (``scipy.ndimage.zoom``: edge padding of 12 voxels, a spline prefilter
  along each axis in turn, then interpolation) reproduced with the same scipy
  functions on parts of the volume: the prefilter along the first axis works on
  whole lines in column blocks, and only the rows the interpolation reads are kept
  for the prefilter along the other two axes and for the interpolation itself
  (``scipy.ndimage.map_coordinates`` at the coordinates ``zoom`` computes). Every
  value goes through the same floating-point operations as before;
  ``tests/test_streaming.py`` checks that the results are identical.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metcli.core.errors import ImageError
from metcli.segmentation.preprocessing import (
    ANISOTROPY_THRESHOLD,
    _interpolate_axis,
    filled_nonzero_mask,
    normalize,
    separate_z,
)

#: About this many voxels per block of work (a 512 x 512 slice holds 262,144).
BLOCK_VOXELS = 1 << 22
#: Normalisation schemes that act on each voxel alone (a block normalises like the whole).
ELEMENTWISE_SCHEMES = ("CTNormalization", "NoNormalization")
#: The edge padding ``scipy.ndimage`` adds before a spline prefilter in mode ``nearest``.
SPLINE_PAD = 12


def count_nonfinite(array: np.ndarray) -> int:
    """Voxels of a 3D ``array`` that are NaN or infinite as float32 (what the network is
    given), counted slab by slab; 0 for integer arrays."""
    if array.dtype.kind != "f":
        return 0
    bad = 0
    step = max(1, BLOCK_VOXELS // max(1, array.shape[1] * array.shape[2]))
    for start in range(0, array.shape[0], step):
        with np.errstate(over="ignore"):  # too large for float32: infinite, counted
            part = array[start : start + step].astype(np.float32, copy=False)
        bad += int(part.size - np.count_nonzero(np.isfinite(part)))
    return bad


def check_ct_image(ct) -> None:
    """The checks of :func:`metcli.segmentation.nnunet.check_ct` without a copy of the
    voxels (an :class:`ImageError` for unusable images): integer voxels are always
    finite, floating-point ones are checked slab by slab."""
    import SimpleITK as sitk

    if ct.GetDimension() != 3:
        raise ImageError(
            f"the CT is {ct.GetDimension()}D (size "
            f"{'x'.join(map(str, ct.GetSize()))}); a 3D volume is needed",
            fix="give one 3D volume per file",
        )
    if ct.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            "the CT has several components per voxel; a scalar image is needed",
            fix="export a single-channel CT",
        )
    bad = count_nonfinite(sitk.GetArrayViewFromImage(ct))
    if bad:
        raise ImageError(
            f"the CT has {bad} voxel(s) that are NaN or infinite",
            fix="convert it again from DICOM, or replace those voxels",
        )


def streamed_nonzero_bbox(view: np.ndarray) -> list[list[int]]:
    """:func:`~metcli.segmentation.preprocessing.nonzero_bbox` of a 3D array, slab by slab.

    Voxels are compared after conversion to float32, as the preprocessing sees them.
    """
    any_axis = [np.zeros(n, dtype=bool) for n in view.shape]
    row = view.shape[1] * view.shape[2]
    step = max(1, BLOCK_VOXELS // max(1, row))
    for start in range(0, view.shape[0], step):
        part = view[start : start + step]
        if part.dtype.kind in "fc":
            part = part.astype(np.float32)
        mask = part != 0
        any_axis[0][start : start + step] = mask.any(axis=(1, 2))
        any_axis[1] |= mask.any(axis=(0, 2))
        any_axis[2] |= mask.any(axis=(0, 1))
    box = []
    for axis, hits in enumerate(any_axis):
        where = np.flatnonzero(hits)
        if where.size == 0:
            return [[0, s] for s in view.shape]
        box.append([int(where[0]), int(where[-1]) + 1])
    return box


class CtSource:
    """The cropped, normalised CT, read from the image's own array block by block.

    Args:
        view: the CT as the model sees it ([a, b, c] after orientation and
            ``transpose_forward``), usually a view of SimpleITK's buffer.
        normalization: the spec's ``normalization``.
        crop_to_nonzero: crop to the box of nonzero voxels (nnU-Net does).

    :meth:`block` gives the float32 normalised values of ``cropped[index]``, exactly
    those the whole normalised array would hold there.
    """

    def __init__(self, view: np.ndarray, normalization: dict, *, crop_to_nonzero: bool = True):
        box = streamed_nonzero_bbox(view) if crop_to_nonzero else [[0, s] for s in view.shape]
        self.crop = tuple(slice(a, b) for a, b in box)
        self.cropped = view[self.crop]
        self.shape = tuple(int(s) for s in self.cropped.shape)
        self.normalization = normalization
        self._whole = None
        if normalization["scheme"] not in ELEMENTWISE_SCHEMES:
            # whole-image statistics: normalise the whole image once, as before
            mask = None
            if normalization.get("use_mask_for_norm"):
                mask = filled_nonzero_mask(view[None].astype(np.float32))[self.crop]
            # (C order, as before: a float32 mean depends on the order it sums in)
            whole = np.ascontiguousarray(self.cropped, dtype=np.float32)
            self._whole = normalize(whole, normalization, mask)

    def block(self, index) -> np.ndarray:
        """Normalised float32 values of ``cropped[index]`` (basic or ``np.ix_`` indexing)."""
        if self._whole is not None:
            return np.array(self._whole[index], dtype=np.float32)
        return normalize(np.asarray(self.cropped[index]), self.normalization)

    def whole(self) -> np.ndarray:
        """The whole normalised array (float32)."""
        return self.block(tuple(slice(None) for _ in self.shape))

    def value_range(self) -> tuple[float, float]:
        """(min, max) of the normalised values, as float64."""
        low, high = np.inf, -np.inf
        row = self.shape[1] * self.shape[2]
        step = max(1, BLOCK_VOXELS // max(1, row))
        for start in range(0, self.shape[0], step):
            part = self.block((slice(start, start + step), slice(None), slice(None)))
            low, high = min(low, float(part.min())), max(high, float(part.max()))
        return low, high


# ============================================================================ resampling
def resample_source(
    source: CtSource,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> np.ndarray:
    """:func:`~metcli.segmentation.preprocessing.resample_to_shape` of the source, streamed.

    Returns the float32 array ``(1, *new_shape)`` that ``resample_to_shape`` gives
    for the whole normalised image (one channel), value for value.
    """
    new_shape = [int(s) for s in new_shape]
    if list(source.shape) == new_shape:
        return source.whole()[None]
    do_separate, axis = separate_z(current_spacing, new_spacing, force_separate_z, threshold)
    out = np.zeros((1, *new_shape), dtype=np.float32)
    if do_separate:
        assert axis is not None
        out[0] = _separate_axis(source, new_shape, axis, order, order_z)
    else:
        _zoom_into(source, new_shape, order, out[0])
    return out


def _separate_axis(source: CtSource, new_shape, axis: int, order: int, order_z: int):
    """The in-plane resize slice by slice, then ``order_z`` along ``axis`` (as before)."""
    from skimage.transform import resize

    shape = source.shape
    plane_shape = [s for a, s in enumerate(new_shape) if a != axis]
    stage_shape = list(new_shape)
    stage_shape[axis] = shape[axis]
    stage = np.zeros(stage_shape, dtype=np.float64)
    for index in range(shape[axis]):
        where = [slice(None)] * 3
        where[axis] = index
        plane = source.block(tuple(where)).astype(np.float64)
        stage[tuple(where)] = resize(plane, plane_shape, order, mode="edge", anti_aliasing=False)
    if shape[axis] != new_shape[axis]:
        stage = _interpolate_axis(stage, axis, new_shape[axis], order_z)
    return stage


def zoom_coordinates(in_length: int, out_length: int, pad: int) -> np.ndarray:
    """Input coordinates of ``scipy.ndimage.zoom`` (``grid_mode=True``) along one axis.

    The same operations, in the same order, as scipy's ``NI_ZoomShift``:
    ``((k + 0.5) * zoom - 0.5) + pad`` with ``zoom = in / out``.
    """
    zoom = np.divide(float(in_length), float(out_length)) if out_length else 1.0
    return ((np.arange(out_length, dtype=np.float64) + 0.5) * zoom - 0.5) + float(pad)


def support_start(coords: np.ndarray, order: int) -> np.ndarray:
    """First input index each coordinate's spline of ``order`` reads (scipy's rule)."""
    if order & 1:
        return np.floor(coords).astype(np.intp) - order // 2
    return np.floor(coords + 0.5).astype(np.intp) - order // 2


def _needed_rows(coords: np.ndarray, order: int, length: int):
    """(rows read, local coordinates): the rows of the first axis the interpolation
    reads, and the coordinates shifted onto an array of only those rows (by whole
    numbers, so their fractions, and with them the weights, stay bit for bit)."""
    start = support_start(coords, order)
    rows = np.unique(np.clip(start[:, None] + np.arange(order + 1), 0, length - 1))
    local_start = np.where(start >= 0, np.searchsorted(rows, np.maximum(start, 0)), start)
    return rows, coords - (start - local_start).astype(np.float64)


def _zoom_into(source: CtSource, new_shape, order: int, out: np.ndarray) -> None:
    """``resize(whole, new_shape, order, mode='edge', anti_aliasing=False)`` into ``out``."""
    from scipy import ndimage

    pad = SPLINE_PAD if order > 1 else 0
    coords = [zoom_coordinates(n, m, pad) for n, m in zip(source.shape, new_shape)]
    rows, local = _needed_rows(coords[0], order, source.shape[0] + 2 * pad)
    coef, (low, high) = _coefficients(source, rows, order, pad)
    if order > 1:
        for axis in (1, 2):
            ndimage.spline_filter1d(coef, order, axis, output=coef, mode="nearest")
    low, high = np.asarray(np.float64(low)), np.asarray(np.float64(high))
    plane = (len(coords[1]), len(coords[2]))
    step = max(1, BLOCK_VOXELS // max(1, plane[0] * plane[1]))
    for first in range(0, new_shape[0], step):
        count = min(step, new_shape[0] - first)
        grid = np.empty((3, count, *plane), dtype=np.float64)
        grid[0] = local[first : first + count, None, None]
        grid[1] = coords[1][None, :, None]
        grid[2] = coords[2][None, None, :]
        part = ndimage.map_coordinates(
            coef, grid, output=np.float64, order=order, mode="nearest", prefilter=False
        )
        np.clip(part, low, high, out=part)
        out[first : first + count] = part


def _coefficients(source: CtSource, rows: np.ndarray, order: int, pad: int):
    """(the rows ``rows`` of the edge-padded image after the spline prefilter along the
    first axis (none for orders 0 and 1), float64; (min, max) of the image)."""
    from scipy import ndimage

    a, b, c = source.shape
    if order <= 1:
        coef = source.block(np.ix_(rows, np.arange(b), np.arange(c))).astype(np.float64)
        return coef, source.value_range()

    def clamped(length: int, first: int, stop: int) -> np.ndarray:
        return np.clip(np.arange(first, stop) - pad, 0, length - 1)

    z_all, x_all = clamped(a, 0, a + 2 * pad), clamped(c, 0, c + 2 * pad)
    coef = np.empty((len(rows), b + 2 * pad, c + 2 * pad), dtype=np.float64)
    low, high = np.inf, -np.inf
    step = max(1, BLOCK_VOXELS // max(1, len(z_all) * len(x_all)))
    for first in range(0, b + 2 * pad, step):
        stop = min(first + step, b + 2 * pad)
        column = source.block(np.ix_(z_all, clamped(b, first, stop), x_all)).astype(np.float64)
        low, high = min(low, float(column.min())), max(high, float(column.max()))
        ndimage.spline_filter1d(column, order, 0, output=column, mode="nearest")
        coef[:, first:stop] = column[rows]
    return coef, (low, high)
