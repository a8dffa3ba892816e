"""The ONNX backend's labels on the CT's grid, slab by slab, without full-size logits.

nnU-Net resamples every channel of the logits from the model's grid back to the
(cropped) CT grid (:func:`~metcli.segmentation.preprocessing.resample_to_shape`,
first order, in float16 as its predictor does) and takes the argmax. On a
512 x 512 x 600 CT that is three full-size channels, each resampled through a
float64 copy, and an int64 index array: several GB. :class:`LabelResampler` gives
the same labels one slab of the CT grid at a time:

* where the interpolation is a weighted mean of its neighbours with non-negative
  weights (orders 0 and 1, and nnU-Net's separate out-of-plane axis with order 0
  or 1), every voxel's value lies between the smallest and the largest of the
  model-grid values it reads. A cell of the model grid whose values of one channel
  all exceed every other channel's values there (with a margin for the rounding to
  the logits' dtype) gives that channel's label to every CT voxel inside it,
  whatever the weights;
* every other voxel (near a boundary between labels, or every voxel for
  higher orders) is computed exactly: ``scipy.ndimage.map_coordinates`` at the
  coordinates ``scipy.ndimage.zoom`` uses, on the same (prefiltered) arrays, then
  the same clipping and rounding, and ``argmax`` (ties to the lower channel).

So the labels are those of resampling the whole volume, voxel for voxel
(``tests/test_streaming.py``), at a fraction of the memory and time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metcli.segmentation.preprocessing import ANISOTROPY_THRESHOLD, separate_z
from metcli.segmentation.streaming import SPLINE_PAD, support_start, zoom_coordinates

#: A cell whose label the corners do not decide.
UNDECIDED = 255


@dataclass
class _Axis:
    """How one axis of the CT grid reads the model grid.

    ``coords``: the input coordinate of each output index (for map_coordinates);
    ``lo``/``hi``: the first and last input index it reads (order <= 1);
    ``kind``: ``zoom`` (scipy's zoom), ``same`` (no resampling) or ``take``
    (nnU-Net's separate axis, :func:`~metcli.segmentation.preprocessing._interpolate_axis`);
    ``weight``: that axis's linear weight (``take`` with order 1).
    """

    kind: str
    coords: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    weight: np.ndarray | None = None


def _zoom_axis(n_in: int, n_out: int, order: int) -> _Axis:
    pad = SPLINE_PAD if order > 1 else 0
    coords = zoom_coordinates(n_in, n_out, pad)
    start = support_start(coords - pad, order)
    lo = np.clip(start, 0, n_in - 1)
    hi = np.clip(start + order, 0, n_in - 1)
    return _Axis("zoom", coords, lo, hi)


def _take_axis(n_in: int, n_out: int, order_z: int) -> _Axis:
    """The separate axis as ``_interpolate_axis`` resamples it (orders 0 and 1)."""
    if n_in == n_out:
        index = np.arange(n_out)
        return _Axis("same", index.astype(np.float64), index, index)
    coords = (n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5
    if order_z == 0:
        from scipy.ndimage import map_coordinates

        index = map_coordinates(
            np.arange(n_in, dtype=float), [coords], order=0, mode="nearest"
        ).astype(np.intp)
        return _Axis("take", coords, index, index)
    x = np.clip(coords, 0, n_in - 1)
    lower = np.floor(x).astype(np.intp)
    upper = np.minimum(lower + 1, n_in - 1)
    return _Axis("take", coords, lower, upper, weight=x - lower)


def _value_range(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) as float64 0-d arrays: the clip scikit-image's resize applies."""
    return np.asarray(np.float64(array.min())), np.asarray(np.float64(array.max()))


class LabelResampler:
    """``argmax`` of ``resample_to_shape(logits, ...)``, computed slab by slab.

    Args:
        logits: (channels, a, b, c) on the model's grid (float16 or float32).
        out_shape: the cropped CT grid.
        current_spacing, new_spacing, order, order_z, force_separate_z, threshold:
            as for :func:`~metcli.segmentation.preprocessing.resample_to_shape`.

    :attr:`supported` is False for what is not reproduced here (a separate axis
    with ``order_z`` above 1, or 255 channels or more); call ``resample_to_shape``
    then.
    """

    def __init__(
        self,
        logits: np.ndarray,
        out_shape: Sequence[int],
        current_spacing: Sequence[float],
        new_spacing: Sequence[float],
        *,
        order: int = 1,
        order_z: int = 0,
        force_separate_z: bool | None = None,
        threshold: float = ANISOTROPY_THRESHOLD,
    ):
        self.logits = logits
        self.dtype = logits.dtype
        self.out_shape = tuple(int(s) for s in out_shape)
        shape = logits.shape[1:]
        self.identity = tuple(shape) == self.out_shape
        do_separate, axis = separate_z(current_spacing, new_spacing, force_separate_z, threshold)
        self.separate = axis if do_separate and not self.identity else None
        self.order = order
        self.supported = len(logits) < UNDECIDED and (
            self.separate is None or order_z <= 1 or shape[axis] == self.out_shape[axis]
        )
        if self.identity or not self.supported:
            return
        self.axes = [
            _take_axis(n, m, order_z) if a == self.separate else _zoom_axis(n, m, order)
            for a, (n, m) in enumerate(zip(shape, self.out_shape))
        ]
        self._prepare_values()
        self.cells, self._cell_index = self._decided_cells()

    # ------------------------------------------------------------------ public
    def labels(self, first: int, stop: int) -> np.ndarray:
        """Channel index (uint8) of the largest resampled logit for CT rows [first, stop)."""
        if self.identity:
            return np.argmax(self.logits[:, first:stop], axis=0).astype(np.uint8)
        i0, i1, i2 = (self._cell_index[0][first:stop],) + tuple(self._cell_index[1:])
        out = self.cells[i0][:, i1][:, :, i2]
        points = np.nonzero(out == UNDECIDED)
        if points[0].size:
            where = (points[0] + first, points[1], points[2])
            values = np.stack([self._values(c, where) for c in range(len(self.logits))])
            out[points] = np.argmax(values, axis=0)
        return out

    # ------------------------------------------------------------------ exact values
    def _prepare_values(self) -> None:
        """Per channel, what the exact values are interpolated from, and the clip range."""
        from scipy import ndimage

        self._coef, self._range = [], []
        for channel in self.logits:
            # float32 holds float16 and float32 values exactly; scipy reads them as float64
            channel = channel.astype(np.float32)
            if self.separate is None:
                coef = channel
                if self.order > 1:
                    padded = np.pad(channel.astype(np.float64), SPLINE_PAD, mode="edge")
                    coef = ndimage.spline_filter(padded, self.order, mode="nearest")
                self._coef.append(coef)
                self._range.append(_value_range(channel))
                continue
            planes, ranges = [], []
            for index in range(channel.shape[self.separate]):
                plane = np.take(channel, index, axis=self.separate)
                if self.order > 1:
                    padded = np.pad(plane.astype(np.float64), SPLINE_PAD, mode="edge")
                    planes.append(ndimage.spline_filter(padded, self.order, mode="nearest"))
                else:
                    planes.append(plane)
                ranges.append(_value_range(plane))
            self._coef.append(planes)
            self._range.append(ranges)

    def _values(self, channel: int, where: tuple[np.ndarray, ...]) -> np.ndarray:
        """The resampled logits of ``channel`` at CT voxels ``where``, in the logits' dtype."""
        from scipy import ndimage

        kwargs = {"order": self.order, "mode": "nearest", "prefilter": False}
        if self.separate is None:
            coords = np.stack([axis.coords[w] for axis, w in zip(self.axes, where)])
            values = ndimage.map_coordinates(self._coef[channel], coords, **kwargs)
            low, high = self._range[channel]
            return np.clip(values, low, high, out=values).astype(self.dtype)
        s = self.separate
        plane_axes = [a for a in range(3) if a != s]
        coords = np.stack([self.axes[a].coords[where[a]] for a in plane_axes])
        along = self.axes[s]

        def stage(index: np.ndarray) -> np.ndarray:
            """Values of the in-plane resized slices ``index`` (one per point)."""
            out = np.empty(len(index), dtype=np.float64)
            for value in np.unique(index):
                chosen = index == value
                part = ndimage.map_coordinates(
                    self._coef[channel][value], coords[:, chosen], **kwargs
                )
                low, high = self._range[channel][value]
                out[chosen] = np.clip(part, low, high, out=part)
            return out

        position = where[s]
        if along.weight is None:  # no resampling along the axis, or order 0
            return stage(along.lo[position]).astype(self.dtype)
        weight = along.weight[position]
        lower, upper = stage(along.lo[position]), stage(along.hi[position])
        return (lower * (1 - weight) + upper * weight).astype(self.dtype)

    # ------------------------------------------------------------------ decided cells
    def _decided_cells(self):
        """(label per cell of distinct supports, each axis's CT index -> cell index).

        A cell's label is decided when one channel's smallest value over the cell
        exceeds every other channel's largest, after both are widened by a rounding
        margin and rounded to the logits' dtype (rounding never reverses an order);
        otherwise the cell is :data:`UNDECIDED`. Higher orders are not weighted means
        of their neighbours: every cell is undecided then.
        """
        pairs, index = [], []
        for axis in self.axes:
            unique, inverse = np.unique(np.stack([axis.lo, axis.hi]), axis=1, return_inverse=True)
            pairs.append(unique)
            index.append(inverse.reshape(-1).astype(np.intp))
        shape = tuple(p.shape[1] for p in pairs)
        if self.order > 1:
            return np.full(shape, UNDECIDED, dtype=np.uint8), index
        low, high = [], []
        for channel in self.logits:
            channel = channel.astype(np.float64)
            small, large = channel, channel
            for axis, (lo, hi) in enumerate(pairs):
                small = np.minimum(np.take(small, lo, axis=axis), np.take(small, hi, axis=axis))
                large = np.maximum(np.take(large, lo, axis=axis), np.take(large, hi, axis=axis))
            margin = 1e-9 * (1.0 + float(np.abs(channel).max()))
            low.append((small - margin).astype(self.dtype))
            high.append((large + margin).astype(self.dtype))
        low, high = np.stack(low), np.stack(high)
        best = np.argmax(low, axis=0)
        floor = np.take_along_axis(low, best[None], axis=0)[0]
        others = high.copy()
        np.put_along_axis(others, best[None], -np.inf, axis=0)
        decided = floor > others.max(axis=0)
        return np.where(decided, best, UNDECIDED).astype(np.uint8), index
