"""nnU-Net v2's sliding window, reproduced in numpy for the ONNX backend.

Tile positions (:func:`sliding_window_steps`), the Gaussian tile weights
(:func:`gaussian_importance`), padding to the patch (:func:`pad_to_patch`) and
the mirrored copies of test-time augmentation (:func:`mirror_combinations`), as
nnU-Net 2.x computes them (``inference/sliding_window_prediction.py``,
``inference/predict_from_raw_data.py``).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np


def sliding_window_steps(
    image_size: Sequence[int], patch_size: Sequence[int], step_size: float
) -> list[list[int]]:
    """Tile start positions per axis, as nnU-Net spreads them (evenly, first and last flush)."""
    steps = []
    for size, tile in zip(image_size, patch_size):
        target = tile * step_size
        count = int(np.ceil((size - tile) / target)) + 1
        if count > 1:
            stride = (size - tile) / (count - 1)
        else:
            stride = 99999999999
        steps.append([int(np.round(stride * i)) for i in range(count)])
    return steps


def gaussian_importance(
    patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, *, half: bool = True
) -> np.ndarray:
    """nnU-Net's tile weights: a Gaussian (sigma = patch * ``sigma_scale``) with no zeros.

    ``half=True`` gives nnU-Net's own map: peak 10, rounded to float16 (its far tails
    become float16 subnormals or zero, and zeros are raised to the smallest nonzero
    value), returned as float32 values. ``half=False`` gives the float32 map, peak 1.
    """
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(patch_size)
    delta[tuple(s // 2 for s in patch_size)] = 1
    weights = gaussian_filter(
        delta, [s * sigma_scale for s in patch_size], 0, mode="constant", cval=0
    )
    if half:
        weights = (weights / (np.max(weights) / 10)).astype(np.float16)
    else:
        weights = (weights / np.max(weights)).astype(np.float32)
    zero = weights == 0
    if zero.any():
        weights[zero] = np.min(weights[~zero])
    return weights.astype(np.float32)


def pad_to_patch(data: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple]:
    """Zero-pad (C, ...) to at least the patch, centred as nnU-Net pads; return the crop back."""
    old = np.array(data.shape[1:])
    new = np.maximum(old, np.asarray(patch_size))
    below = (new - old) // 2
    above = new - old - below
    if not np.any(new - old):
        return data, tuple(slice(0, s) for s in old)
    padded = np.pad(
        data,
        [(0, 0)] + [(int(b), int(a)) for b, a in zip(below, above)],
        mode="constant",
        constant_values=0,
    )
    return padded, tuple(slice(int(b), int(b + o)) for b, o in zip(below, old))


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The flips nnU-Net averages: none, then every non-empty subset of ``axes`` in its order."""
    axes = list(axes)
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
