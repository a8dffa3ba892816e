"""The study's lesion-slice preprocessing against hand-checked values."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_image
from metcli.core.errors import MaskError, UsageError
from metcli.lesions.preprocess import SliceSettings, resize_square, square_crop, window
from metcli.lesions.slices import lesion_slices


def test_window_clips_to_the_abdominal_range():
    hu = np.array([-1000, -155, 10, 175, 2000, -155 + 33], dtype=float)
    out = window(hu, 330, 10)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1, 0.1], atol=1e-6)
    assert out.dtype == np.float32
    assert SliceSettings().window_range == (-155.0, 175.0)


def _volume():
    """3 slices of 8 x 10 pixels; lesion 1 is a 2 x 4 block on slices 1 and 2."""
    hu = np.full((3, 8, 10), 10.0)  # 0.5 after windowing
    hu[:, 3:5, 3:7] = 175.0  # lesion: 1.0
    hu[2, 3, 3] = -1000.0  # clipped to 0 inside the lesion
    ids = np.zeros(hu.shape, np.uint16)
    ids[1:, 3:5, 3:7] = 1
    ids[0, 0:2, 0:2] = 2  # a second lesion on slice 0 only
    return hu, ids


def test_tight_crop_is_blackened_and_padded_to_a_square():
    hu, ids = _volume()
    ct, lm = make_image(hu), make_image(ids)
    out = lesion_slices(ct, lm, lesion_ids=[1], settings=SliceSettings(size=4))
    assert len(out) == 1 and out[0].lesion_id == 1
    assert out[0].slice_indices == [1, 2]
    first, second = out[0].images
    # 2 x 4 lesion -> 4 x 4 square: one black row above and below, lesion in the middle.
    expected = np.zeros((4, 4), np.float32)
    expected[1:3, :] = 1.0
    np.testing.assert_array_equal(first, expected)
    expected[1, 0] = 0.0  # the -1000 HU pixel, clipped by the window
    np.testing.assert_array_equal(second, expected)


def test_context_margin_keeps_the_surrounding_tissue():
    hu, ids = _volume()
    out = lesion_slices(
        make_image(hu),
        make_image(ids),
        lesion_ids=[1],
        settings=SliceSettings(size=6, context_mm=1.0),
    )
    image = out[0].images[0]
    # kept: lesion 2 x 4 grown by 1 pixel (4-neighbour distance <= 1 mm) -> bbox 4 x 6.
    assert image.shape == (6, 6)
    np.testing.assert_array_equal(image[0], 0)  # padding row
    np.testing.assert_array_equal(image[2:4, 1:5], 1.0)  # lesion
    assert image[2, 0] == pytest.approx(0.5)  # liver within 1 mm, kept
    assert image[1, 0] == 0.0  # diagonal corner (1.41 mm), black


def test_anisotropic_pixels_give_a_square_in_millimetres():
    hu = np.full((1, 12, 12), 175.0)
    ids = np.zeros(hu.shape, np.uint16)
    ids[0, 4:8, 5:7] = 1  # 4 rows x 2 mm = 8 mm, 2 cols x 1 mm = 2 mm
    # spacing (x, y, z) = (1, 2, 3): columns 1 mm, rows 2 mm.
    out = lesion_slices(
        make_image(hu, spacing=(1.0, 2.0, 3.0)),
        make_image(ids, (1, 2, 3)),
        settings=SliceSettings(size=8),
    )
    image = out[0].images[0]
    # 8 mm square: 4 rows x 8 columns, lesion in the middle 2 columns -> after resize to 8 x 8
    # the lesion covers the middle quarter of the columns and all rows.
    np.testing.assert_allclose(image[:, 3:5], 1.0)
    np.testing.assert_allclose(image[:, :2], 0.0)
    np.testing.assert_allclose(image[:, 6:], 0.0)


def test_square_crop_pads_beyond_the_image_with_black():
    image = np.ones((4, 4), np.float32)
    region = np.zeros((4, 4), bool)
    region[0, 0:4] = True
    crop = square_crop(image, region, (1.0, 1.0))
    assert crop.shape == (4, 4)
    # 1 x 4 box -> 4 x 4, rows -1..2: the row above the image is black.
    np.testing.assert_array_equal(crop[0], 0)
    np.testing.assert_array_equal(crop[1:], 1)


def test_fixed_field_of_view_is_centred_on_the_lesion():
    hu, ids = _volume()
    out = lesion_slices(
        make_image(hu, spacing=(0.5, 0.5, 1.0)),
        make_image(ids, spacing=(0.5, 0.5, 1.0)),
        lesion_ids=[1],
        settings=SliceSettings(size=8, fov_mm=4.0),
    )
    image = out[0].images[0]
    # 4 mm at 0.5 mm = 8 pixels: rows 0..7 (lesion rows 3-4 centred), cols 1..8.
    expected = np.zeros((8, 8), np.float32)
    expected[3:5, 2:6] = 1.0
    np.testing.assert_array_equal(image, expected)


def test_flipped_axes_give_the_same_slices():
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 100, (4, 16, 14))
    ids = np.zeros(hu.shape, np.uint16)
    ids[1:3, 4:9, 3:11] = 1
    ids[2, 10:13, 2:5] = 2
    spacing, origin = (0.7, 0.9, 2.0), (10.0, -5.0, 3.0)
    ct = make_image(hu, spacing, origin)
    lm = make_image(ids, spacing, origin)
    reference = lesion_slices(ct, lm, settings=SliceSettings(size=16))
    # The same lesion map stored with its x and z axes flipped (origin moved accordingly).
    flipped_origin = (origin[0] + spacing[0] * 13, origin[1], origin[2] + spacing[2] * 3)
    flipped = make_image(
        ids[::-1, :, ::-1].copy(), spacing, flipped_origin, direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1)
    )
    again = lesion_slices(ct, flipped, settings=SliceSettings(size=16))
    assert [s.lesion_id for s in again] == [1, 2]
    for a, b in zip(reference, again):
        assert a.slice_indices == b.slice_indices
        np.testing.assert_array_equal(a.images, b.images)
    assert reference[0].images.shape == (2, 16, 16)


def test_resize_keeps_the_range_and_size():
    image = np.zeros((50, 50), np.float32)
    image[10:40, 10:40] = 1.0
    out = resize_square(image, 20)
    assert out.shape == (20, 20) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and out[10, 10] == pytest.approx(1.0)


def test_missing_lesion_id_and_bad_settings_are_refused():
    hu, ids = _volume()
    with pytest.raises(MaskError, match="7"):
        lesion_slices(make_image(hu), make_image(ids), lesion_ids=[7])
    with pytest.raises(UsageError, match="window width"):
        SliceSettings(window_width=0)
    with pytest.raises(UsageError, match="--fov-mm"):
        SliceSettings(fov_mm=-1)
