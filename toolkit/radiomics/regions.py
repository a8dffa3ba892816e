"""One lesion crop through pyradiomics: the computation behind each row of extract.

:func:`crop_region` cuts a lesion (with the margin resampling and the
peritumoral ring need) out of a CT; :func:`extract_region` extracts its
features, its largest axial slice's 2D shape and its peritumoral ring, and
never raises for what pyradiomics refuses (the result says ``failed:<reason>``).
The rules are those of :mod:`metcli.radiomics.features`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.radiomics.columns import (
    PERITUMORAL,
    STATUS_OK,
    RegionResult,
    diagnostic_names,
    feature_names,
)
from metcli.radiomics.params import ExtractionParams

log = logging.getLogger(__name__)

LIVER_LABEL = 1

#: Voxels added beyond the interpolator's reach when a crop is resampled.
RESAMPLING_MARGIN = 12
#: Reach of the widest interpolator pyradiomics offers (windowed sinc, radius 3), in voxels.
INTERPOLATOR_REACH = 3
#: Messages of pyradiomics' ValueErrors -> the reason in ``failed:<reason>``.
_REASONS = (
    ("only contains 1 segmented voxel", "single_voxel"),
    ("too few dimensions", "too_few_dimensions"),
    ("Size of the ROI is too small", "too_small"),
    ("Resegmentation excluded too many voxels", "resegmentation_removed_roi"),
    ("not present in mask", "empty_mask"),
)


# ----------------------------------------------------------------------------- geometry
def axial_array_axis(image) -> int:
    """The numpy axis (of ``GetArrayFromImage``, [k, j, i]) across axial slices.

    The image axis closest to the patient's z axis: the column of the direction
    matrix with the largest z component (the first of equal ones).
    """
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(direction[2, :])))


def margin_voxels(
    params: ExtractionParams, spacing_ijk: Sequence[float], peritumoral_mm: float | None
) -> np.ndarray:
    """Voxels to add around a lesion's bounding box, per numpy axis [k, j, i]."""
    spacing = np.asarray(spacing_ijk, dtype=float)
    margin = np.zeros(3, dtype=np.int64)
    if peritumoral_mm:
        margin += np.ceil(peritumoral_mm / spacing).astype(np.int64) + 1
    if params.resamples:
        target = np.asarray(params.settings["resampledPixelSpacing"], dtype=float)
        if target.shape == (3,):
            target = np.where(target == 0, spacing, np.maximum(target, spacing))
            pad = float(params.settings.get("padDistance", 5))
            margin += (
                np.ceil(0.5 + (pad + 1.0) * target / spacing).astype(np.int64)
                + INTERPOLATOR_REACH
                + RESAMPLING_MARGIN
            )
    return margin[::-1]


def expand_box(
    box: tuple[slice, ...], margin_kji: np.ndarray, shape: Sequence[int]
) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - int(m)), min(int(n), s.stop + int(m)))
        for s, m, n in zip(box, margin_kji, shape)
    )


@dataclass
class Region:
    """One lesion's crop, sent to a worker process (numpy arrays indexed [k, j, i])."""

    key: int
    image: np.ndarray
    mask: np.ndarray  # uint8, 1 = the lesion
    origin: tuple
    spacing: tuple
    direction: tuple
    start_ijk: tuple  # index of the crop's first voxel in the whole image
    full_size_ijk: tuple
    shape2d_axis: int | None  # numpy axis of the 2D-shape slice, None without shape2D
    liver: np.ndarray | None = None  # bool, for the ring
    peritumoral_mm: float | None = None


def crop_region(
    key: int,
    image_array: np.ndarray,
    mask_bool: np.ndarray,
    box: tuple[slice, ...],
    image,
    *,
    shape2d_axis: int | None,
    liver: np.ndarray | None = None,
    peritumoral_mm: float | None = None,
) -> Region:
    start_ijk = tuple(int(s.start) for s in box[::-1])
    origin = image.TransformIndexToPhysicalPoint(start_ijk)
    return Region(
        key=key,
        image=np.array(image_array[box]),
        mask=mask_bool.astype(np.uint8),
        origin=tuple(origin),
        spacing=tuple(image.GetSpacing()),
        direction=tuple(image.GetDirection()),
        start_ijk=start_ijk,
        full_size_ijk=tuple(int(s) for s in image.GetSize()),
        shape2d_axis=shape2d_axis,
        liver=liver,
        peritumoral_mm=peritumoral_mm,
    )


# ----------------------------------------------------------------------------- one region
def _to_image(array: np.ndarray, region: Region):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(region.origin)
    image.SetSpacing(region.spacing)
    image.SetDirection(region.direction)
    return image


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    return "pyradiomics_error" if isinstance(exc, (ValueError, RuntimeError)) else "error"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))[1])


def _resample_like_pyradiomics(image, mask, start_ijk, full_size_ijk, settings: Mapping):
    """Resample a crop onto the grid pyradiomics would lay over the whole image.

    pyradiomics (``imageoperations.resampleImage``) aligns its new grid to the
    first voxel of the image it is given and covers the mask's bounding box
    plus ``padDistance`` new voxels, within the image. For a crop starting at
    ``start_ijk`` of an image of ``full_size_ijk`` voxels, the same grid is
    computed in the whole image's index space, then the crop is resampled onto
    it (image with the chosen interpolator and its own pixel type, mask with
    nearest neighbour), as pyradiomics does.

    Returns ``(image, mask, resampled?)``.
    """
    import SimpleITK as sitk

    spacing = np.asarray(mask.GetSpacing(), dtype=float)
    target = np.asarray(settings["resampledPixelSpacing"], dtype=float)
    if target.shape != spacing.shape:
        raise ValueError(
            f"resampledPixelSpacing has {target.size} values; the image is {spacing.size}D"
        )
    target = np.where(target == 0, spacing, target)
    present = np.nonzero(sitk.GetArrayViewFromImage(mask) == 1)
    if present[0].size == 0:
        raise ValueError("Label (1) not present in mask")
    low = np.array([p.min() for p in present][::-1], dtype=float)  # crop index, i j k
    size = np.array([p.max() for p in present][::-1], dtype=float) - low + 1
    low += np.asarray(start_ijk, dtype=float)  # whole-image index
    target = np.where(size != 1, target, spacing)  # one slice thick: keep that spacing
    if np.allclose(np.asarray(image.GetSpacing(), dtype=float), target):
        return image, mask, False
    pad = float(settings.get("padDistance", 5))
    ratio = spacing / target
    new_low = np.floor((low - 0.5) * ratio - pad)
    new_high = np.ceil((low + size - 0.5) * ratio + pad)
    new_low = np.maximum(new_low, 0)
    new_high = np.minimum(new_high, np.ceil(np.asarray(full_size_ijk) * ratio) - 1)
    new_size = [int(v) for v in new_high - new_low + 1]
    origin_index = 0.5 * (target - spacing) / spacing + new_low / ratio  # whole-image index
    origin = mask.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in origin_index - np.asarray(start_ijk, dtype=float)]
    )
    interpolator = settings.get("interpolator")
    if isinstance(interpolator, str):
        interpolator = getattr(sitk, interpolator)
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing([float(v) for v in target])
    resampler.SetOutputDirection(mask.GetDirection())
    resampler.SetSize(new_size)
    resampler.SetOutputOrigin(origin)
    resampler.SetOutputPixelType(image.GetPixelID())
    resampler.SetInterpolator(interpolator)
    resampled_image = resampler.Execute(image)
    resampler.SetOutputPixelType(mask.GetPixelID())
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampled_mask = resampler.Execute(mask)
    return resampled_image, resampled_mask, True


def _pyradiomics_values(
    image,
    mask,
    region: Region,
    params: ExtractionParams,
    classes: Sequence[str],
    *,
    prefix: str,
    shape2d_axis: int | None = None,
) -> tuple[dict, dict]:
    """(features, diagnostics) of mask value 1 in a crop; raises on pyradiomics' refusals."""
    import SimpleITK as sitk
    from radiomics import featureextractor, getFeatureClasses, imageoperations

    settings = dict(params.settings)
    settings.update(label=1, additionalInfo=False, normalize=False)  # normalised beforehand
    if shape2d_axis is not None:
        settings.update(force2D=True, force2Ddimension=int(shape2d_axis))
    diagnostics: dict[str, int | None] = {}
    if params.resamples:
        image, mask, resampled = _resample_like_pyradiomics(
            image, mask, region.start_ijk, region.full_size_ijk, settings
        )
        settings["resampledPixelSpacing"] = None
        diagnostics[f"{prefix}diagnostics_Mask-interpolated_VoxelNum"] = int(
            np.count_nonzero(sitk.GetArrayViewFromImage(mask) == 1)
        )
    if params.resegments:
        try:
            reseg = imageoperations.resegmentMask(image, mask, **settings)
            diagnostics[f"{prefix}diagnostics_Mask-resegmented_VoxelNum"] = int(
                np.count_nonzero(sitk.GetArrayViewFromImage(reseg) == 1)
            )
        except ValueError:
            diagnostics[f"{prefix}diagnostics_Mask-resegmented_VoxelNum"] = 0

    wanted = {cls: list(params.feature_classes[cls]) for cls in classes}
    values: dict[str, Any] = {}
    if "shape2D" in wanted:
        # pyradiomics' own shape2D path on a one-slice mask: check, crop, compute
        bounding_box, _ = imageoperations.checkMask(image, mask, **settings)
        crop_image, crop_mask = imageoperations.cropToTumorMask(image, mask, bounding_box)
        shape2d = getFeatureClasses()["shape2D"](crop_image, crop_mask, **settings)
        for name in wanted.pop("shape2D"):
            shape2d.enableFeatureByName(name)
        values.update({f"original_shape2D_{k}": v for k, v in shape2d.execute().items()})
    if wanted:
        extractor = featureextractor.RadiomicsFeatureExtractor(**settings)
        extractor.disableAllImageTypes()
        extractor.enableImageTypes(**{k: dict(v) for k, v in params.image_types.items()})
        extractor.disableAllFeatures()
        extractor.enableFeaturesByName(**wanted)
        values.update(extractor.execute(image, mask, label=1))
    features = {}
    for key, value in values.items():
        if key.startswith("diagnostics_"):
            continue
        number = float(value)
        if not math.isfinite(number):
            log.debug("%s%s is %s; written as n/a", prefix, key, number)
            number = None
        features[f"{prefix}{key}"] = number
    return features, diagnostics


def extract_region(region: Region, params: ExtractionParams) -> RegionResult:
    """Every feature of one lesion crop (and its ring); never raises for pyradiomics' refusals."""
    lesion_names = feature_names(params)
    mask = region.mask.astype(bool)
    diagnostics: dict[str, int | None] = {name: None for name in diagnostic_names(params)}
    diagnostics["diagnostics_Mask-original_VoxelNum"] = int(np.count_nonzero(mask))
    diagnostics["diagnostics_Mask-original_VolumeNum"] = _components(mask)
    image = _to_image(region.image, region)
    features: dict[str, float | None] = dict.fromkeys(lesion_names)
    status, message = STATUS_OK, None
    try:
        main_classes = [c for c in params.feature_classes if c != "shape2D"]
        if main_classes:
            values, diag = _pyradiomics_values(
                image, _to_image(region.mask, region), region, params, main_classes, prefix=""
            )
            features.update(values)
            diagnostics.update(diag)
        if "shape2D" in params.feature_classes:
            axis = region.shape2d_axis
            other = tuple(a for a in range(3) if a != axis)
            counts = mask.sum(axis=other)
            keep = int(np.argmax(counts))
            one_slice = np.zeros_like(region.mask)
            index = [slice(None)] * 3
            index[axis] = keep
            one_slice[tuple(index)] = region.mask[tuple(index)]
            values, _diag = _pyradiomics_values(
                image,
                _to_image(one_slice, region),
                region,
                params,
                ["shape2D"],
                prefix="",
                shape2d_axis=axis,
            )
            features.update(values)
        missing = [name for name in lesion_names if name not in features]
        extra = [name for name in features if name not in lesion_names]
        if extra:
            raise RuntimeError(f"pyradiomics returned unexpected features {extra[:3]}")
        if missing:
            raise RuntimeError(
                f"pyradiomics did not return {len(missing)} feature(s) ({', '.join(missing[:3])})"
            )
    except Exception as exc:  # noqa: BLE001 - a lesion's failure is recorded, never fatal
        status, message = f"failed:{_reason(exc)}", _one_line(exc)
        features = dict.fromkeys(lesion_names)
        log.debug("lesion %s: %s", region.key, message, exc_info=True)
    result = RegionResult(
        status=status, features=features, diagnostics=diagnostics, message=message
    )
    if region.peritumoral_mm is not None:
        _extract_ring(region, params, image, mask, result)
    return result


def _extract_ring(
    region: Region, params: ExtractionParams, image, lesion: np.ndarray, result: RegionResult
) -> None:
    from scipy import ndimage

    names = feature_names(params, prefix=PERITUMORAL, classes=params.texture_classes)
    result.features.update(dict.fromkeys(names))
    diagnostics = dict.fromkeys(diagnostic_names(params, prefix=PERITUMORAL))
    distance = ndimage.distance_transform_edt(~lesion, sampling=tuple(region.spacing[::-1]))
    ring = (distance > 0) & (distance <= float(region.peritumoral_mm)) & region.liver
    diagnostics[f"{PERITUMORAL}diagnostics_Mask-original_VoxelNum"] = int(np.count_nonzero(ring))
    diagnostics[f"{PERITUMORAL}diagnostics_Mask-original_VolumeNum"] = _components(ring)
    status, message = STATUS_OK, None
    if not ring.any():
        status = "failed:empty_ring"
        message = (
            f"no liver voxel (label {LIVER_LABEL}) within {region.peritumoral_mm:g} mm "
            "of the lesion"
        )
    else:
        try:
            values, diag = _pyradiomics_values(
                image,
                _to_image(ring.astype(np.uint8), region),
                region,
                params,
                params.texture_classes,
                prefix=PERITUMORAL,
            )
            missing = [name for name in names if name not in values]
            if missing:
                raise RuntimeError(f"pyradiomics did not return {len(missing)} ring feature(s)")
            result.features.update(values)
            diagnostics.update(diag)
        except Exception as exc:  # noqa: BLE001
            status, message = f"failed:{_reason(exc)}", _one_line(exc)
            result.features.update(dict.fromkeys(names))
    result.diagnostics.update(diagnostics)
    result.ring_status, result.ring_message = status, message
