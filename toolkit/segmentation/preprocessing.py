"""nnU-Net v2's preprocessing, reproduced in numpy for the ONNX backend.

Cropping to the nonzero voxels (:func:`nonzero_bbox`), intensity normalisation
(:func:`normalize`) and resampling to a spacing (:func:`resample_to_shape`), each
as nnU-Net 2.x does it (``preprocessors/default_preprocessor.py``,
``normalization/default_normalization_schemes.py``,
``resampling/default_resampling.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metcli.core.errors import InputError

#: nnU-Net's default anisotropy threshold (nnunetv2.configuration.ANISO_THRESHOLD).
ANISOTROPY_THRESHOLD = 3.0


def nonzero_bbox(data: np.ndarray) -> list[list[int]]:
    """Half-open bounding box [[start, stop], ...] of voxels nonzero in any channel.

    nnU-Net crops every image to it (``crop_to_nonzero``); an image with no nonzero
    voxel keeps its full extent, as in nnU-Net.
    """
    mask = np.any(data != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return [[0, s] for s in mask.shape]
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def filled_nonzero_mask(data: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(np.any(data != 0, axis=0))


def normalize(
    channel: np.ndarray, normalization: dict, nonzero_mask: np.ndarray | None = None
) -> np.ndarray:
    """One channel normalised as nnU-Net's scheme ``normalization['scheme']`` does (float32)."""
    scheme = normalization["scheme"]
    image = channel.astype(np.float32, copy=True)
    eps = 1e-8
    if scheme == "CTNormalization":
        np.clip(image, normalization["clip_lower"], normalization["clip_upper"], out=image)
        image -= normalization["mean"]
        image /= max(normalization["std"], eps)
    elif scheme == "ZScoreNormalization":
        if normalization.get("use_mask_for_norm") and nonzero_mask is not None:
            values = image[nonzero_mask]
            mean, std = values.mean(), values.std()
            image[nonzero_mask] = (values - mean) / max(std, eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif scheme == "NoNormalization":
        pass
    else:  # pragma: no cover - refused by check_spec_supported
        raise InputError(f"normalisation scheme {scheme!r} is not reproduced")
    return image


def compute_new_shape(
    old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
) -> list[int]:
    """The shape after resampling, rounded as nnU-Net rounds it."""
    return [int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape)]


def _lowres_axes(spacing: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing, float)
    return np.where(max(spacing) / spacing == 1)[0]


def separate_z(
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    force_separate_z: bool | None = None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> tuple[bool, int | None]:
    """Whether (and along which axis) nnU-Net resamples the out-of-plane axis on its own.

    An axis is handled separately when one spacing (the current one first, else the
    new one) is anisotropic (largest / smallest > ``threshold``) and exactly one
    axis has the largest spacing.
    """

    def anisotropic(spacing):
        return (np.max(spacing) / np.min(spacing)) > threshold

    if force_separate_z is not None:
        do_separate = bool(force_separate_z)
        axes = _lowres_axes(current_spacing) if do_separate else None
    elif anisotropic(current_spacing):
        do_separate, axes = True, _lowres_axes(current_spacing)
    elif anisotropic(new_spacing):
        do_separate, axes = True, _lowres_axes(new_spacing)
    else:
        do_separate, axes = False, None
    if axes is None:
        return do_separate, None
    if len(axes) != 1:
        return False, None
    return do_separate, int(axes[0])


def _interpolate_axis(volume: np.ndarray, axis: int, new_length: int, order: int) -> np.ndarray:
    """Resample one axis with pixel-centre alignment and edge extension.

    The same coordinates as nnU-Net's ``map_coordinates`` call along the separate
    axis (``scale * (i + 0.5) - 0.5``, mode ``nearest``); the other axes keep their
    integer coordinates, so only this axis moves. Orders 0 and 1 are computed
    directly; higher orders go through ``scipy.ndimage.map_coordinates`` in 1D.
    """
    old_length = volume.shape[axis]
    coords = (old_length / new_length) * (np.arange(new_length) + 0.5) - 0.5
    if order == 0:
        from scipy.ndimage import map_coordinates

        index = map_coordinates(
            np.arange(old_length, dtype=float), [coords], order=0, mode="nearest"
        ).astype(np.intp)
        return np.take(volume, index, axis=axis)
    if order == 1:
        x = np.clip(coords, 0, old_length - 1)
        lower = np.floor(x).astype(np.intp)
        upper = np.minimum(lower + 1, old_length - 1)
        weight = (x - lower).reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
        return (
            np.take(volume, lower, axis=axis) * (1 - weight)
            + np.take(volume, upper, axis=axis) * weight
        )
    from scipy.ndimage import map_coordinates

    moved = np.moveaxis(volume, axis, -1)
    flat = moved.reshape(-1, old_length)
    out = np.empty((flat.shape[0], new_length), dtype=np.float64)
    for row in range(flat.shape[0]):
        out[row] = map_coordinates(flat[row], [coords], order=order, mode="nearest")
    return np.moveaxis(out.reshape(*moved.shape[:-1], new_length), -1, axis)


def resample_to_shape(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> np.ndarray:
    """Resample every channel of ``data`` (C, a, b, c) to ``new_shape`` as nnU-Net does.

    scikit-image's ``resize`` (spline of ``order``, edge mode, no anti-aliasing) on
    the whole volume, or, when :func:`separate_z` says so, slice by slice in the
    plane followed by order ``order_z`` along the separate axis. The output keeps
    ``data``'s dtype; an unchanged shape returns ``data`` itself.
    """
    from skimage.transform import resize

    new_shape = [int(s) for s in new_shape]
    shape = list(data.shape[1:])
    if shape == new_shape:
        return data
    do_separate, axis = separate_z(current_spacing, new_spacing, force_separate_z, threshold)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    kwargs = {"mode": "edge", "anti_aliasing": False}
    for c in range(data.shape[0]):
        channel = data[c].astype(np.float64, copy=False)
        if do_separate:
            assert axis is not None
            plane_shape = [s for a, s in enumerate(new_shape) if a != axis]
            stage_shape = list(new_shape)
            stage_shape[axis] = shape[axis]
            stage = np.zeros(stage_shape, dtype=np.float64)
            for index in range(shape[axis]):
                where = [slice(None)] * 3
                where[axis] = index
                stage[tuple(where)] = resize(channel[tuple(where)], plane_shape, order, **kwargs)
            if shape[axis] != new_shape[axis]:
                stage = _interpolate_axis(stage, axis, new_shape[axis], order_z)
            out[c] = stage
        else:
            out[c] = resize(channel, new_shape, order, **kwargs)
    return out
