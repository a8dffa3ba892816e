"""Physical-space matching of images and masks (metcli.imaging.geometry)."""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image
from metcli.core.errors import GeometryError
from metcli.imaging.geometry import grid_difference, to_reference_grid


def _reference():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    return make_image(array, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 20.0, 30.0)), array


def test_same_grid_passes_and_copies_geometry():
    ref, array = _reference()
    near = sitk.Image(ref)
    near.SetOrigin(tuple(o + 2e-4 for o in ref.GetOrigin()))
    out = to_reference_grid(near, ref)
    assert out.GetOrigin() == ref.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(out), array)


def test_flipped_axis_is_brought_back_exactly():
    ref, array = _reference()
    # The same grid stored with the y axis flipped: origin at the other end of y.
    flipped = make_image(
        array[:, ::-1, :],
        spacing=ref.GetSpacing(),
        origin=ref.TransformIndexToPhysicalPoint((0, 4, 0)),
        direction=(1, 0, 0, 0, -1, 0, 0, 0, 1),
    )
    assert grid_difference(flipped, ref) is not None
    out = to_reference_grid(flipped, ref)
    assert np.array_equal(sitk.GetArrayFromImage(out), array)


def test_permuted_axes_are_brought_back_exactly():
    ref, array = _reference()
    permuted_array = np.transpose(array, (0, 2, 1))  # swap x and y
    permuted = make_image(
        permuted_array,
        spacing=(0.9, 0.8, 2.5),
        origin=ref.GetOrigin(),
        direction=(0, 1, 0, 1, 0, 0, 0, 0, 1),
    )
    out = to_reference_grid(permuted, ref)
    assert np.array_equal(sitk.GetArrayFromImage(out), array)


@pytest.mark.parametrize(
    "change,word",
    [
        (lambda im: im.SetOrigin((-5.0, 20.0, 30.0)), "origin"),
        (lambda im: im.SetSpacing((0.8, 0.9, 3.0)), "spacing"),
    ],
)
def test_other_grids_are_refused(change, word):
    ref, array = _reference()
    other = make_image(array, spacing=ref.GetSpacing(), origin=ref.GetOrigin())
    change(other)
    with pytest.raises(GeometryError) as info:
        to_reference_grid(other, ref, image_path="mask.nii.gz", reference_path="ct.nii.gz")
    message = str(info.value)
    assert word in message and "mask.nii.gz" in message and "ct.nii.gz" in message


def test_other_size_is_refused():
    ref, array = _reference()
    with pytest.raises(GeometryError, match="size"):
        to_reference_grid(make_image(array[:3]), ref)
