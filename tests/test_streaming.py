"""The ONNX backend streams its preprocessing and its resampling back (issue 13, "Large
scans"): the same labels as the whole-volume computation, with much less memory.

Every result is compared with a straightforward whole-volume computation written here
(scikit-image's ``resize`` on float64 copies of every channel, ``argmax``), as nnU-Net
and the ONNX backend did it before: not with metcli's own functions.
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_image  # noqa: E402

NORM = {
    "scheme": "CTNormalization",
    "use_mask_for_norm": False,
    "clip_lower": -200.0,
    "clip_upper": 300.0,
    "mean": 50.0,
    "std": 80.0,
}


# ============================================================================ references
def reference_resample(volume: np.ndarray, shape, current, new, order: int, order_z: int):
    """nnU-Net's resampling of one channel (float64), the plain way: the whole volume, or,
    when one axis is much coarser, the planes one by one and that axis by nearest
    neighbour (order_z 0) or linearly (order_z 1)."""
    from skimage.transform import resize

    shape = [int(s) for s in shape]
    if list(volume.shape) == shape:
        return volume
    kwargs = {"mode": "edge", "anti_aliasing": False}
    axis = None
    for spacing in (current, new):
        spacing = np.asarray(spacing, float)
        if spacing.max() / spacing.min() > 3:
            coarse = np.flatnonzero(spacing == spacing.max())
            axis = int(coarse[0]) if len(coarse) == 1 else None
            break
    if axis is None:
        return resize(volume, shape, order, **kwargs)
    planes = []
    for index in range(volume.shape[axis]):
        plane = np.take(volume, index, axis=axis)
        planes.append(resize(plane, [s for a, s in enumerate(shape) if a != axis], order, **kwargs))
    stage = np.stack(planes, axis=axis)
    n_in, n_out = volume.shape[axis], shape[axis]
    if n_in == n_out:
        return stage
    coords = (n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5
    if order_z == 0:
        return np.take(stage, np.clip(np.floor(coords + 0.5).astype(int), 0, n_in - 1), axis)
    x = np.clip(coords, 0, n_in - 1)
    lower = np.floor(x).astype(int)
    upper = np.minimum(lower + 1, n_in - 1)
    weight = (x - lower).reshape([-1 if a == axis else 1 for a in range(3)])
    return np.take(stage, lower, axis) * (1 - weight) + np.take(stage, upper, axis) * weight


def reference_normalize(values: np.ndarray, norm: dict) -> np.ndarray:
    image = values.astype(np.float32)
    if norm["scheme"] == "CTNormalization":
        image = np.clip(image, norm["clip_lower"], norm["clip_upper"])
        image -= norm["mean"]
        image /= norm["std"]
    elif norm["scheme"] == "ZScoreNormalization":
        image = (image - image.mean()) / max(image.std(), 1e-8)
    return image


def nonzero_box(array: np.ndarray) -> tuple[slice, ...]:
    where = np.nonzero(array)
    return tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)


def smooth_logits(shape, dtype, seed: int) -> np.ndarray:
    """Three channels of smooth random logits, with exact ties in a few rows."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    logits = np.stack([ndimage.gaussian_filter(rng.normal(0, 8, shape), 1.2) for _ in range(3)])
    logits = logits.astype(dtype)
    logits[1, 1:3] = logits[0, 1:3]  # ties: the lower channel wins
    return logits


def ct_volume(shape, seed: int) -> np.ndarray:
    """An int16 "CT": smooth structures and noise, with exact zeros at the borders."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    ct = ndimage.gaussian_filter(rng.normal(0, 300, shape), 2.0) + rng.normal(40, 20, shape)
    ct = np.clip(ct, -1000, 1500).astype(np.int16)
    ct[:2], ct[:, -3:], ct[..., :1] = 0, 0, 0
    return ct


# ============================================================================ building blocks
def test_streamed_bbox_and_nonfinite_count(monkeypatch):
    from metcli.segmentation import streaming

    monkeypatch.setattr(streaming, "BLOCK_VOXELS", 50)
    ct = ct_volume((9, 11, 13), 0)
    box = streaming.streamed_nonzero_bbox(ct)
    assert [[s.start, s.stop] for s in nonzero_box(ct)] == box
    assert streaming.streamed_nonzero_bbox(np.zeros((3, 4, 5))) == [[0, 3], [0, 4], [0, 5]]
    bad = ct.astype(np.float64)
    bad[4, 5, 6], bad[8, 0, 0], bad[0, 0, 1] = np.nan, np.inf, 1e300  # inf as float32
    assert streaming.count_nonfinite(bad) == 3
    assert streaming.count_nonfinite(ct) == 0


@pytest.mark.parametrize(
    "shape, new_shape, current, target, order, order_z",
    [
        ((30, 34, 31), (11, 14, 12), (0.8, 0.7, 0.75), (2.5, 2.0, 2.0), 3, 0),  # down
        ((30, 34, 31), (50, 40, 33), (0.8, 0.7, 0.75), (0.45, 0.55, 0.65), 3, 0),  # up
        ((9, 34, 31), (22, 14, 12), (5.0, 0.7, 0.75), (2.0, 2.0, 2.0), 3, 0),  # coarse z
        ((9, 34, 31), (22, 14, 12), (5.0, 0.7, 0.75), (2.0, 2.0, 2.0), 3, 1),
        ((30, 34, 31), (11, 14, 12), (0.8, 0.7, 0.75), (2.5, 2.0, 2.0), 1, 0),
        ((30, 34, 31), (None, 14, 12), (0.8, 0.7, 0.75), (0.8, 2.0, 2.0), 3, 0),  # z kept
    ],
)
def test_streamed_preprocessing_equals_the_whole_volume(
    monkeypatch, shape, new_shape, current, target, order, order_z
):
    from metcli.segmentation import streaming
    from metcli.segmentation.orientation import orientation_transform

    monkeypatch.setattr(streaming, "BLOCK_VOXELS", 700)  # many blocks
    ct = ct_volume(shape, 1)
    flip = orientation_transform((-1, 0, 0, 0, 1, 0, 0, 0, -1), "LPS")
    view = flip.forward(ct)  # a strided view, as the backend reads the CT
    source = streaming.CtSource(view, NORM)
    box = nonzero_box(view)
    assert source.shape == view[box].shape
    whole = reference_normalize(view[box], NORM).astype(np.float64)
    shape_out = [n or kept for n, kept in zip(new_shape, view[box].shape)]
    expected = reference_resample(whole, shape_out, current, target, order, order_z)
    got = streaming.resample_source(
        source, shape_out, current, target, order=order, order_z=order_z
    )
    assert got.shape == (1, *shape_out) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], expected.astype(np.float32))


def test_whole_image_normalisation_is_kept_for_zscore():
    from metcli.segmentation.streaming import CtSource, resample_source

    ct = ct_volume((20, 22, 24), 2)
    norm = {"scheme": "ZScoreNormalization", "use_mask_for_norm": False}
    source = CtSource(ct, norm)
    whole = reference_normalize(np.ascontiguousarray(ct[nonzero_box(ct)]), norm)
    np.testing.assert_array_equal(source.whole(), whole)
    got = resample_source(source, (9, 10, 11), (1, 1, 1), (2.2, 2.2, 2.2))
    expected = reference_resample(whole.astype(np.float64), (9, 10, 11), (1,) * 3, (2.2,) * 3, 3, 0)
    np.testing.assert_array_equal(got[0], expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(
    "shape, out_shape, current, new, order, order_z",
    [
        ((10, 12, 14), (37, 41, 45), (2.5, 2, 2), (0.8, 0.7, 0.7), 1, 0),
        ((10, 12, 14), (4, 5, 6), (2.5, 2, 2), (6, 5, 5), 1, 0),  # fewer voxels
        ((10, 12, 14), (37, 41, 45), (2.5, 2, 2), (0.8, 0.7, 0.7), 0, 0),
        ((10, 12, 14), (37, 41, 45), (2.5, 2, 2), (0.8, 0.7, 0.7), 3, 0),  # no shortcut
        ((6, 12, 14), (30, 41, 45), (5.0, 1, 1), (1.0, 0.3, 0.3), 1, 0),  # separate z
        ((6, 12, 14), (30, 41, 45), (5.0, 1, 1), (1.0, 0.3, 0.3), 1, 1),
        ((12, 6, 14), (41, 30, 45), (1, 5.0, 1), (0.3, 1.0, 0.3), 1, 0),  # separate y
        ((6, 12, 14), (6, 41, 45), (5.0, 1, 1), (5.0, 0.3, 0.3), 1, 0),
        ((10, 12, 14), (10, 12, 14), (2, 2, 2), (2, 2, 2), 1, 0),  # nothing to do
    ],
)
def test_streamed_labels_equal_the_argmax_of_the_whole_resampling(
    dtype, shape, out_shape, current, new, order, order_z
):
    from metcli.segmentation.resample_back import LabelResampler

    logits = smooth_logits(shape, dtype, 3)
    whole = np.stack(
        [
            reference_resample(c.astype(np.float64), out_shape, current, new, order, order_z)
            for c in logits
        ]
    ).astype(dtype)
    expected = np.argmax(whole, axis=0)
    resampler = LabelResampler(logits, out_shape, current, new, order=order, order_z=order_z)
    assert resampler.supported
    got = np.concatenate(
        [resampler.labels(a, min(a + 4, out_shape[0])) for a in range(0, out_shape[0], 4)]
    )
    np.testing.assert_array_equal(got, expected)


# ============================================================================ the backend
@pytest.fixture
def tiny_model(tmp_path):
    """A one-convolution ONNX 'segmentation model' with its preprocessing.json."""
    from test_onnx_segment import tiny_export

    return lambda **spec_args: tiny_export(tmp_path / "model", **spec_args)


def reference_labels(segmenter, ct) -> np.ndarray:
    """The backend's labels computed on whole volumes, step by step (docs/onnx.md)."""
    import SimpleITK as sitk

    from metcli.segmentation.orientation import orientation_transform

    spec = segmenter.spec
    orient = orientation_transform(ct.GetDirection(), spec["axes"]["orientation"])
    forward, backward = spec["axes"]["transpose_forward"], spec["axes"]["transpose_backward"]
    data = orient.forward(sitk.GetArrayFromImage(ct).astype(np.float32)).transpose(forward)
    spacing = orient.spacing_zyx([abs(s) for s in ct.GetSpacing()[::-1]])
    spacing = [spacing[a] for a in forward]
    box = nonzero_box(data)
    cropped = reference_normalize(data[box], spec["normalization"]).astype(np.float64)
    target = spec["target_spacing"]
    shape = [int(round(s / t * n)) for s, t, n in zip(spacing, target, cropped.shape)]
    resampled = reference_resample(cropped, shape, spacing, target, 3, 0).astype(np.float32)
    logits = segmenter._sliding_window(resampled[None], None)
    back = [
        reference_resample(c.astype(np.float64), cropped.shape, target, spacing, 1, 0)
        for c in logits
    ]
    index = np.argmax(np.stack(back).astype(logits.dtype), axis=0)
    seg = np.zeros(data.shape, dtype=np.uint8)
    seg[box] = np.asarray(sorted(spec["labels"].values()), dtype=np.uint8)[index]
    return orient.backward(seg.transpose(backward))


@pytest.mark.parametrize("accumulate", ["float16", "float32"])
@pytest.mark.parametrize(
    "spacing, direction, transpose",
    [
        ((0.7, 0.8, 0.9), None, (0, 1, 2)),
        ((0.7, 0.8, 0.9), (-1, 0, 0, 0, 1, 0, 0, 0, -1), (2, 0, 1)),  # flipped, transposed
        ((0.7, 0.7, 5.0), None, (0, 1, 2)),  # thick slices: the z axis apart
    ],
)
def test_onnx_labels_equal_the_whole_volume_computation(
    tiny_model, monkeypatch, accumulate, spacing, direction, transpose
):
    import SimpleITK as sitk

    from metcli.segmentation import streaming
    from metcli.segmentation.onnx import OnnxSegmenter

    monkeypatch.setattr(streaming, "BLOCK_VOXELS", 900)
    model = tiny_model(spacing=(2.0, 1.5, 1.5), transpose=transpose, mirror_axes=(0, 1))
    segmenter = OnnxSegmenter(model, device="cpu", tta=True, accumulate=accumulate)
    ct = make_image(ct_volume((14, 30, 26), 5), spacing=spacing, direction=direction)
    labels = sitk.GetArrayFromImage(segmenter.predict(ct))
    expected = reference_labels(segmenter, ct)
    assert len(np.unique(expected)) == 3  # every label occurs: the comparison means something
    np.testing.assert_array_equal(labels, expected)
    with_probabilities, _probs = segmenter.predict_with_probabilities(ct)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(with_probabilities), expected)


# ============================================================================ memory
def peak_bytes(function) -> tuple[object, int]:
    """(result, the largest memory numpy held at once during the call, in bytes)."""
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_holds_a_fraction_of_the_whole_volume_memory(monkeypatch):
    """The whole-volume computation held float32 and float64 copies of the scan at once
    (about 40 bytes a voxel before the network, and after it three float16 channels, a
    float64 one and an int64 index: 30 more); the streamed one holds the rows of the scan
    the spline reads (float64, at most the padded scan) and a slab at a time."""
    from metcli.segmentation import streaming
    from metcli.segmentation.resample_back import LabelResampler
    from metcli.segmentation.streaming import CtSource, resample_source

    # blocks as small beside this scan as the default's beside a 512 x 512 x 600 one
    monkeypatch.setattr(streaming, "BLOCK_VOXELS", 1 << 15)
    ct = ct_volume((120, 128, 128), 6)
    voxels = ct.size
    source = CtSource(ct, NORM)
    data, before = peak_bytes(
        lambda: resample_source(source, (24, 52, 52), (0.5, 0.8, 0.8), (2.5, 2.0, 2.0))
    )
    print(f"preprocessing: {before / voxels:.1f} bytes per voxel")
    assert before < 12 * voxels, before / voxels
    logits = smooth_logits(data.shape[1:], np.float16, 7)

    def labels():
        resampler = LabelResampler(logits, source.shape, (2.5, 2.0, 2.0), (0.5, 0.8, 0.8))
        out = np.empty(source.shape, dtype=np.uint8)
        for first in range(0, source.shape[0], 3):  # slabs of about 1/40 of the scan
            out[first : first + 3] = resampler.labels(first, min(first + 3, source.shape[0]))
        return out

    _out, after = peak_bytes(labels)
    print(f"labels: {after / voxels:.1f} bytes per voxel")
    assert after < 4 * voxels, after / voxels


def test_what_is_not_streamed_says_so():
    """A separate axis resampled with order 2 or more is left to the whole-volume path."""
    from metcli.segmentation.resample_back import LabelResampler

    logits = smooth_logits((6, 12, 14), np.float16, 1)
    shape, current, new = (30, 41, 45), (5.0, 1, 1), (1.0, 0.3, 0.3)
    assert not LabelResampler(logits, shape, current, new, order=1, order_z=3).supported
    assert LabelResampler(logits, shape, current, new, order=1, order_z=1).supported
