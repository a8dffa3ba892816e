"""The 3D lesion preprocessing (train-cnn --dims 3) and multi-phase model inputs, hand-checked."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_image
from metcli.core.errors import InputError, MaskError
from metcli.lesions.inputs import model_inputs
from metcli.lesions.preprocess import SliceSettings
from metcli.lesions.slices import lesion_slices
from metcli.lesions.volumes import cube_crop, lesion_volumes


def _volume():
    """4 x 6 x 8 voxels (z, y, x) of 1 mm; lesion 1 is a 2 x 2 x 4 block at z 1-2, y 2-3, x 2-5."""
    hu = np.full((4, 6, 8), 10.0)  # 0.5 after windowing
    hu[1:3, 2:4, 2:6] = 175.0  # lesion: 1.0
    hu[2, 2, 2] = -1000.0  # clipped to 0 inside the lesion
    ids = np.zeros(hu.shape, np.uint16)
    ids[1:3, 2:4, 2:6] = 1
    ids[0, 0, 0] = 2
    return hu, ids


def test_tight_cube_is_blackened_and_padded():
    hu, ids = _volume()
    out = lesion_volumes(
        make_image(hu), make_image(ids), lesion_ids=[1], settings=SliceSettings(size=4)
    )
    assert len(out) == 1 and out[0].lesion_id == 1 and out[0].slice_indices == [1, 2]
    # Longest side 4 mm -> a 4 x 4 x 4 cube: one black slice above and below, one black
    # row before and after, the lesion's 4 columns filling x.
    expected = np.zeros((4, 4, 4), np.float32)
    expected[1:3, 1:3, :] = 1.0
    expected[2, 1, 0] = 0.0  # the -1000 HU voxel, clipped by the window
    np.testing.assert_array_equal(out[0].image, expected)
    assert out[0].image.dtype == np.float32


def test_anisotropic_voxels_give_a_cube_in_millimetres():
    hu, ids = _volume()
    hu[1:3, 2:4, 5] = 10.0
    ids[1:3, 2:4, 5] = 0  # lesion now 2 slices (4 mm) x 2 x 3 mm
    # z spacing 2 mm: side 4 mm = 2 slices, 4 rows, 4 columns (x 2-5, the last one black).
    crop = cube_crop(np.where(ids == 1, 1.0, 0.0), ids == 1, (2.0, 1.0, 1.0))
    assert crop.shape == (2, 4, 4)
    out = lesion_volumes(
        make_image(hu, spacing=(1.0, 1.0, 2.0)),
        make_image(ids, spacing=(1.0, 1.0, 2.0)),
        lesion_ids=[1],
        settings=SliceSettings(size=4),
    )
    plane = np.zeros((4, 4), np.float32)
    plane[1:3, 0:3] = 1.0
    expected = np.repeat(plane[None], 4, axis=0)  # z resized 2 -> 4; constant along z
    expected[2:, 1, 0] = 0.0  # the -1000 HU voxel (slice 2 of 2)
    np.testing.assert_allclose(out[0].image[[0, 3]], expected[[0, 3]], atol=1e-6)
    np.testing.assert_allclose(out[0].image[:, 2], expected[:, 2], atol=1e-6)


def test_context_margin_keeps_face_neighbours_within_one_millimetre():
    hu, ids = _volume()
    out = lesion_volumes(
        make_image(hu),
        make_image(ids),
        lesion_ids=[1],
        settings=SliceSettings(size=6, context_mm=1.0),
    )
    image = out[0].image
    # kept box z 0-3, y 1-4, x 1-6 -> side 6: crop z = z + 1, y = y, x = x - 1.
    assert image.shape == (6, 6, 6)
    np.testing.assert_array_equal(image[0], 0)  # above the volume: black
    assert image[2, 2, 2] == pytest.approx(1.0)  # lesion voxel (1, 2, 3)
    assert image[2, 1, 2] == pytest.approx(0.5)  # (1, 1, 3): 1 mm from the lesion
    assert image[1, 2, 1] == pytest.approx(0.5)  # (0, 2, 2): 1 mm below it
    assert image[2, 1, 0] == 0.0  # (1, 1, 1): 1.41 mm, black
    assert image[1, 1, 1] == 0.0  # (0, 1, 2): 1.41 mm, black


def test_fixed_field_of_view_is_centred_on_the_lesion():
    hu, ids = _volume()
    crop = cube_crop(np.where(ids == 1, 1.0, 0.0), ids == 1, (1.0, 1.0, 1.0), fov_mm=8)
    assert crop.shape == (8, 8, 8)
    # bounding box z 1-2, y 2-3, x 2-5 -> starts z -2, y -1, x 0
    np.testing.assert_array_equal(np.argwhere(crop == 1).min(0), [3, 3, 2])
    np.testing.assert_array_equal(np.argwhere(crop == 1).max(0), [4, 4, 5])
    out = lesion_volumes(
        make_image(hu), make_image(ids), lesion_ids=[1], settings=SliceSettings(size=8, fov_mm=8)
    )
    assert out[0].image[3, 3, 3] == 1.0 and out[0].image[0, 0, 0] == 0.0


def test_a_flipped_lesion_map_gives_the_same_volume():
    hu, ids = _volume()
    flipped = make_image(
        ids[:, :, ::-1], origin=(7.0, 0.0, 0.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    plain = lesion_volumes(make_image(hu), make_image(ids), settings=SliceSettings(size=4))
    other = lesion_volumes(make_image(hu), flipped, settings=SliceSettings(size=4))
    assert [v.lesion_id for v in other] == [1, 2]
    for a, b in zip(plain, other):
        np.testing.assert_array_equal(a.image, b.image)


def test_a_lesion_id_missing_from_the_map_is_refused():
    hu, ids = _volume()
    with pytest.raises(MaskError, match="lesion id"):
        lesion_volumes(make_image(hu), make_image(ids), lesion_ids=[1, 7])


def _card(dims, phases, size=4):
    channels = phases or ["ct"]
    return {
        "dims": dims,
        "phases": phases,
        "input": {
            "name": "image",
            "shape": ["batch", len(channels)] + [size] * dims,
            "channels": channels,
        },
        "preprocessing": SliceSettings(size=size).as_dict(),
    }


def test_model_inputs_stack_the_phases_as_channels_in_2d_and_3d():
    hu, ids = _volume()
    portal, arterial = make_image(hu), make_image(hu + 40.0)
    lesion_map = make_image(ids)
    settings = SliceSettings(size=4)
    cts = {"arterial": arterial, "portal": portal}  # the card's order wins
    three = model_inputs(_card(3, ["portal", "arterial"]), cts, lesion_map, [1, 2])
    assert [x.lesion_id for x in three] == [1, 2]
    assert three[0].images.shape == (1, 2, 4, 4, 4)
    for channel, ct in enumerate((portal, arterial)):
        expected = lesion_volumes(ct, lesion_map, lesion_ids=[1], settings=settings)[0].image
        np.testing.assert_array_equal(three[0].images[0, channel], expected)
    assert three[0].images[0, 1, 1, 1, 1] > three[0].images[0, 0, 1, 1, 1] - 1e-6
    two = model_inputs(_card(2, ["portal", "arterial"]), cts, lesion_map, [1])
    assert two[0].images.shape == (2, 2, 4, 4) and two[0].slice_indices == [1, 2]
    expected = lesion_slices(arterial, lesion_map, lesion_ids=[1], settings=settings)[0].images
    np.testing.assert_array_equal(two[0].images[:, 1], expected)
    one = model_inputs(_card(3, None), {"portal": portal}, lesion_map, [1])
    assert one[0].images.shape == (1, 1, 4, 4, 4)


def test_model_inputs_refuse_a_missing_phase_and_a_wrong_shape():
    hu, ids = _volume()
    with pytest.raises(InputError, match="no CT of arterial"):
        model_inputs(
            _card(2, ["portal", "arterial"]), {"portal": make_image(hu)}, make_image(ids), [1]
        )
    card = _card(3, None)
    card["input"]["shape"] = ["batch", 1, 4, 4]
    with pytest.raises(InputError, match="input shape"):
        model_inputs(card, {"portal": make_image(hu)}, make_image(ids), [1])
