"""Channels on their own grids: resampling onto the reference channel and registration
(metcli.imaging.channels_grid, metcli.imaging.registration).

The phase is made from a synthetic abdomen (metcli's phantom) by a known motion, on
another grid (spacing, extent, origin), with a monotone intensity remapping and noise,
so registration needs mutual information. Errors are measured over the liver's voxels.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import make_image
from metcli.core.errors import GeometryError, InputError, UsageError
from metcli.imaging.channels_grid import check_covers, coverage, resample_to_reference
from metcli.imaging.registration import Registration, read_transform, register
from metcli.synth.phantom import Grid, SynthParams, phantom_arrays

TRANSLATION_MM = (4.0, -6.5, 3.0)
ROTATION_DEG = (3.0, -2.0, 4.0)
SCALING = (1.04, 0.97, 1.03)
REF_SPACING = (3.0, 3.0, 3.0)


def _points(image, mask_zyx) -> np.ndarray:
    """Physical points (N x 3, mm) of the voxels of ``mask_zyx``."""
    index_xyz = np.argwhere(mask_zyx)[:, ::-1].astype(float)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return index_xyz @ matrix.T + np.asarray(image.GetOrigin())


@pytest.fixture(scope="module")
def abdomen():
    """(reference CT, liver mask [z, y, x], liver centroid in mm): a 48x64x64 phantom."""
    grid = Grid(shape=(64, 64, 48), spacing=REF_SPACING, anatomy_scale=0.45)
    phantom = phantom_arrays(7, SynthParams(grid=grid))
    ct, _ = phantom.images()
    liver = phantom.dseg > 0
    return ct, liver, tuple(_points(ct, liver).mean(axis=0))


def _truth(kind: str, centre) -> sitk.Transform:
    """The motion: a reference point p is seen at truth(p) in the phase."""
    euler = sitk.Euler3DTransform()
    euler.SetCenter(centre)
    euler.SetRotation(*(math.radians(a) for a in ROTATION_DEG))
    euler.SetTranslation(TRANSLATION_MM)
    if kind == "rigid":
        return euler
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    matrix = np.asarray(euler.GetMatrix()).reshape(3, 3) @ np.diag(SCALING)
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetTranslation(TRANSLATION_MM)
    return affine


def _phase(reference, motion, seed=1):
    """Another acquisition: moved by ``motion``, 2.6x2.8x4 mm, other extent and origin,
    intensities remapped by a sigmoid, noise added."""
    grid = sitk.Image([72, 70, 30], sitk.sitkFloat32)
    grid.SetSpacing((2.6, 2.8, 4.0))
    grid.SetOrigin((-92.0, -100.0, -55.0))
    moved = sitk.Resample(
        sitk.Cast(reference, sitk.sitkFloat32),
        grid,
        motion.GetInverse(),
        sitk.sitkBSpline,
        -1000.0,
        sitk.sitkFloat32,
    )
    array = 1000.0 / (1.0 + np.exp(-(sitk.GetArrayFromImage(moved) - 60.0) / 120.0))
    array += np.random.default_rng(seed).normal(0.0, 15.0, array.shape)
    phase = sitk.GetImageFromArray(array.astype(np.float32))
    phase.CopyInformation(moved)
    return phase


def _errors_mm(registration, truth, points) -> np.ndarray:
    """Per liver voxel: the recovered mapping minus the true one (N x 3, mm)."""
    expected = np.array([truth.TransformPoint(tuple(p)) for p in points])
    return registration.transform_points(points) - expected


@pytest.fixture(scope="module")
def rigid_case(abdomen):
    ct, liver, centre = abdomen
    truth = _truth("rigid", centre)
    phase = _phase(ct, truth)
    return phase, truth, register(phase, ct, kind="rigid", seed=0)


# ----------------------------------------------------------------------------- (a) (b) accuracy
def test_rigid_registration_recovers_the_motion_within_a_voxel(abdomen, rigid_case):
    ct, liver, _ = abdomen
    phase, truth, registration = rigid_case
    error = _errors_mm(registration, truth, _points(ct, liver))
    assert np.linalg.norm(error, axis=1).max() < min(REF_SPACING)
    assert np.abs(error / REF_SPACING).max() < 0.1  # measured: 0.07 mm at most
    record = registration.as_record()
    assert np.allclose(record["rotation_deg"], ROTATION_DEG, atol=0.3)
    assert record["kind"] == "rigid" and record["iterations"] > 0


def test_rigid_registration_with_a_liver_mask(abdomen, rigid_case):
    ct, liver, _ = abdomen
    phase, truth, _ = rigid_case
    mask = ndimage.binary_dilation(liver, iterations=5)  # the liver dilated by 15 mm
    registration = register(phase, ct, kind="rigid", mask=mask)
    error = _errors_mm(registration, truth, _points(ct, liver))
    assert np.linalg.norm(error, axis=1).max() < min(REF_SPACING)
    assert registration.settings["mask"] is True


def test_affine_registration_recovers_a_small_scaling(abdomen):
    ct, liver, centre = abdomen
    truth = _truth("affine", centre)
    registration = register(_phase(ct, truth), ct, kind="affine")
    error = _errors_mm(registration, truth, _points(ct, liver))
    assert np.linalg.norm(error, axis=1).max() < min(REF_SPACING)
    matrix = np.asarray(registration.as_record()["matrix"])
    assert np.allclose(np.linalg.svd(matrix)[1], sorted(SCALING, reverse=True), atol=0.02)


# ----------------------------------------------------------------------------- (c) grid change
def _blobs(image, centres, sigma=8.0) -> np.ndarray:
    """An analytic image: Gaussian blobs at ``centres`` (mm), evaluated at the voxel centres."""
    points = _points(image, np.ones(image.GetSize()[::-1], bool))
    values = sum(
        np.exp(-np.sum((points - c) ** 2, axis=1) / (2 * sigma**2)) for c in np.asarray(centres)
    )
    return (1000.0 * values).reshape(image.GetSize()[::-1]).astype(np.float32)


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
def test_a_pure_grid_change_places_intensities_correctly(abdomen, interpolation):
    ct, _, _ = abdomen
    reference = sitk.Image(ct.GetSize(), sitk.sitkFloat32)
    reference.CopyInformation(ct)
    centres = [(-40.0, -20.0, 10.0), (25.0, 30.0, -20.0), (5.0, -45.0, 33.0)]
    # The channel: another spacing and extent, its y axis stored the other way round.
    channel = sitk.Image([70, 60, 40], sitk.sitkFloat32)
    channel.SetSpacing((2.2, 2.7, 4.5))
    channel.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    channel.SetOrigin((-80.3, 75.1, -88.0))
    channel = make_image(
        _blobs(channel, centres), channel.GetSpacing(), channel.GetOrigin(), channel.GetDirection()
    )
    out = resample_to_reference(channel, reference, interpolation=interpolation)
    got, expected = sitk.GetArrayFromImage(out), _blobs(reference, centres)
    covered = coverage(channel, reference)
    assert np.array_equal(np.isnan(got), ~covered)
    assert np.abs(got[covered] - expected[covered]).max() < 0.06 * 1000
    points = _points(reference, np.ones(got.shape, bool)).reshape(*got.shape, 3)
    for centre in centres:
        near = covered & (np.linalg.norm(points - centre, axis=-1) < 12.0)
        centroid = (points[near] * got[near, None]).sum(0) / got[near].sum()
        analytic = (points[near] * expected[near, None]).sum(0) / expected[near].sum()
        assert np.all(np.abs(centroid - analytic) / REF_SPACING < 0.5)
        assert np.linalg.norm(centroid - centre) < 0.5 * min(REF_SPACING)


def test_nearest_keeps_labels_and_their_pixel_type():
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[3:7, 4:8, 5:9] = 2
    channel = make_image(labels, spacing=(1.0, 1.0, 1.0))
    reference = make_image(
        np.zeros((5, 6, 7), np.uint8), spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5)
    )
    out = resample_to_reference(channel, reference, interpolation="nearest")
    assert out.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(out))) == {0, 2}
    with pytest.raises(UsageError, match="interpolation"):
        resample_to_reference(channel, reference, interpolation="cubic")


# ----------------------------------------------------------------------------- (d) identity
def test_the_same_grid_returns_the_image_bit_for_bit(abdomen):
    ct, _, _ = abdomen
    near = sitk.Image(ct)
    near.SetOrigin(tuple(o + 2e-4 for o in ct.GetOrigin()))
    identity = sitk.Euler3DTransform()
    for transform in (None, identity, Registration.from_transform(identity)):
        out = resample_to_reference(near, ct, transform=transform)
        assert out.GetPixelID() == ct.GetPixelID()
        assert np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ct))
        assert coverage(near, ct, transform).all()


def test_flipped_axes_of_the_same_grid_are_reordered_not_interpolated():
    array = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    reference = make_image(array, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 20.0, 30.0))
    flipped = make_image(
        array[:, ::-1, :],
        spacing=reference.GetSpacing(),
        origin=reference.TransformIndexToPhysicalPoint((0, 6, 0)),
        direction=(1, 0, 0, 0, -1, 0, 0, 0, 1),
    )
    out = resample_to_reference(flipped, reference)
    assert np.array_equal(sitk.GetArrayFromImage(out), array)


# ----------------------------------------------------------------------------- (e) coverage
def test_a_lesion_outside_the_channel_is_an_error_naming_both_files():
    lesions = np.zeros((40, 20, 20), np.uint8)
    lesions[5:9, 8:12, 8:12] = 1
    lesions[30:34, 8:12, 8:12] = 2  # z 60..66 mm
    reference = make_image(lesions, spacing=(2.0, 2.0, 2.0))
    channel = make_image(
        np.zeros((12, 30, 30), np.int16), spacing=(1.6, 1.6, 5.0), origin=(-2.0, -2.0, -3.0)
    )  # z up to 52 mm
    covered = coverage(channel, reference)
    assert covered[:10].all() and not covered[30:].any()
    check_covers(
        covered,
        lesions,
        [1],
        channel_path="ce-arterial_ct.nii.gz",
        reference_path="ce-portal_ct.nii.gz",
    )
    with pytest.raises(GeometryError) as info:
        check_covers(
            covered,
            lesions,
            None,
            channel_path="sub-1_ce-arterial_ct.nii.gz",
            reference_path="sub-1_ce-portal_ct.nii.gz",
        )
    message = str(info.value)
    assert "\n" not in message
    assert "sub-1_ce-arterial_ct.nii.gz" in message and "sub-1_ce-portal_ct.nii.gz" in message
    assert "lesion(s) 2 " in message and "64 of 64 voxels outside" in message
    assert "--channels" in message


# ----------------------------------------------------------------------------- (f) records
def test_the_record_round_trips_through_json(abdomen, rigid_case):
    ct, liver, _ = abdomen
    phase, _, registration = rigid_case
    record = json.loads(json.dumps(registration.as_record()))
    again = Registration.from_record(record)
    assert again == registration
    points = _points(ct, liver)
    assert np.array_equal(again.transform_points(points), registration.transform_points(points))
    first = resample_to_reference(phase, ct, transform=registration)
    second = resample_to_reference(phase, ct, transform=again)
    assert np.array_equal(
        sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second), equal_nan=True
    )
    with pytest.raises(InputError, match="malformed"):
        Registration.from_record({"kind": "rigid"})


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5"])
def test_a_transform_file_of_ones_own_is_read(tmp_path, abdomen, suffix):
    ct, liver, centre = abdomen
    composite = sitk.CompositeTransform(
        [_truth("affine", centre), sitk.TranslationTransform(3, (1, 2, 3))]
    )
    path = tmp_path / f"own{suffix}"
    sitk.WriteTransform(composite, str(path))
    supplied = read_transform(path)
    assert supplied.kind == "affine" and supplied.source == path.name
    points = _points(ct, liver)
    expected = np.array([composite.TransformPoint(tuple(p)) for p in points])
    assert np.abs(supplied.transform_points(points) - expected).max() < 1e-6
    sitk.WriteTransform(_truth("rigid", centre), str(tmp_path / f"rigid{suffix}"))
    rigid = read_transform(tmp_path / f"rigid{suffix}")
    assert rigid.kind == "rigid"
    assert np.allclose(rigid.as_record()["rotation_deg"], ROTATION_DEG)


def test_deformable_and_unreadable_transforms_are_refused(tmp_path):
    bspline = sitk.BSplineTransform(3)
    bspline.SetTransformDomainPhysicalDimensions((100.0, 100.0, 100.0))
    bspline.SetTransformDomainMeshSize((2, 2, 2))
    parameters = np.zeros(bspline.GetNumberOfParameters())
    parameters[5] = 3.0
    bspline.SetParameters(tuple(parameters))
    sitk.WriteTransform(bspline, str(tmp_path / "bspline.tfm"))
    with pytest.raises(InputError, match="not rigid or affine"):
        read_transform(tmp_path / "bspline.tfm")
    (tmp_path / "bad.tfm").write_text("not a transform\n")
    with pytest.raises(InputError, match="cannot read"):
        read_transform(tmp_path / "bad.tfm")


# ----------------------------------------------------------------------------- (g) determinism
def test_two_registrations_give_identical_parameters(abdomen, rigid_case):
    ct, _, _ = abdomen
    phase, _, registration = rigid_case
    again = register(phase, ct, kind="rigid", seed=0)
    assert again.parameters == registration.parameters
    assert again.metric_value == registration.metric_value


def test_bad_kinds_and_disjoint_images_are_refused(abdomen):
    ct, _, _ = abdomen
    with pytest.raises(UsageError, match="deformable"):
        register(ct, ct, kind="deformable")
    far = sitk.Image(ct)
    far.SetOrigin(tuple(o + 2000.0 for o in ct.GetOrigin()))
    with pytest.raises(GeometryError, match="far.nii.gz"):
        register(far, ct, moving_path="far.nii.gz", fixed_path="ref.nii.gz")
