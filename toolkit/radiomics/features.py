"""One region of one image through pyradiomics: the computation behind ``metcli extract``.

:func:`extract_features` extracts one region (voxels of a mask equal to a
label) of one image; ``metcli extract`` (:mod:`metcli.radiomics.extract`) does the same
for every kept lesion of every CT, cutting the lesions out of a CT read once
and handing the crops to worker processes (:class:`LesionPool`).

How one region is extracted (part of the output contract; docs/extract.md
repeats it):

* **Matching.** The mask must be on the image's grid; flipped or permuted
  axes are brought to it, anything else is a
  :class:`~metcli.core.errors.GeometryError` naming both files
  (:func:`metcli.imaging.geometry.to_reference_grid`). Nothing is resampled silently.
* **Crop.** With ``normalize`` the image is normalised once, over the whole
  image, as pyradiomics does; the region is then cut out with a margin and
  extracted on that crop. Without resampling pyradiomics only ever looks at
  the region's bounding box, so the crop gives its values exactly. With
  resampling, pyradiomics lays its new grid over the whole image (aligned to
  the image's first voxel, covering the region's bounding box plus
  ``padDistance``); metcli computes that same grid and resamples the crop
  onto it, with a margin of 12 voxels beyond the interpolator's reach so that
  the B-spline's boundary handling does not reach the region (the difference
  to a whole-image run is below 1e-6 relative).
* **Shape 2D** (``shape2D`` in the parameters) is computed on the region's
  largest axial slice: the slice, perpendicular to the image axis closest to
  the patient's z axis (or to ``force2Ddimension`` when the parameters set
  ``force2D``), with the most region voxels (the first of equal ones), in a
  separate extraction with a mask of that slice only. The other classes stay
  as the parameters say (3D unless ``force2D``).
* **Peritumoral ring** (``peritumoral_mm`` R): the liver voxels (label 1 of
  the segmentation) whose centre lies within R mm (Euclidean, physical) of
  the centre of a voxel of the lesion, the lesion itself excluded. Other
  lesions are label 2, so they are not in the ring. Its features are those
  of the grey-level classes (not shape), named ``peritumoral_original_...``.
* **Failures** are explicit: a region pyradiomics refuses (a single voxel,
  too few dimensions, nothing left after re-segmentation...) gets status
  ``failed:<reason>``, a ``message`` and None (``n/a``) feature values,
  never zeros. The ring has its own status.
* **Diagnostics** (computed by metcli, named as pyradiomics names them):
  ``diagnostics_Mask-original_VoxelNum`` (voxels of the region on the CT
  grid), ``diagnostics_Mask-original_VolumeNum`` (its 26-connected parts),
  ``diagnostics_Mask-interpolated_VoxelNum`` (after resampling; only with
  resampling) and ``diagnostics_Mask-resegmented_VoxelNum`` (after
  re-segmentation; only with ``resegmentRange``); ``peritumoral_``-prefixed
  for the ring.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from metcli.radiomics.params import ExtractionParams, SHAPE_CLASSES, load_params, params_from_dict

log = logging.getLogger(__name__)

LIVER_LABEL = 1
PERITUMORAL = "peritumoral_"
STATUS_OK = "ok"

ID_COLUMNS = ("participant_id", "session", "phase", "lesion_id")
STATUS_COLUMNS = ("status", "message")
RING_STATUS_COLUMNS = ("peritumoral_status", "peritumoral_message")

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

#: metcli feature names -> IBSI chapter 1 feature tags (the same definition; see
#: docs/extract.md for the ones that differ by design).
IBSI_TAGS: dict[str, tuple[str, ...]] = {
    "original_shape_MeshVolume": ("morph_volume",),
    "original_shape_VoxelVolume": ("morph_vol_approx",),
    "original_shape_SurfaceArea": ("morph_area_mesh",),
    "original_shape_SurfaceVolumeRatio": ("morph_av",),
    "original_shape_Sphericity": ("morph_sphericity",),
    "original_shape_Compactness1": ("morph_comp_1",),
    "original_shape_Compactness2": ("morph_comp_2",),
    "original_shape_SphericalDisproportion": ("morph_sph_dispr",),
    "original_shape_Maximum3DDiameter": ("morph_diam",),
    "original_shape_MajorAxisLength": ("morph_pca_maj_axis",),
    "original_shape_MinorAxisLength": ("morph_pca_min_axis",),
    "original_shape_LeastAxisLength": ("morph_pca_least_axis",),
    "original_shape_Elongation": ("morph_pca_elongation",),
    "original_shape_Flatness": ("morph_pca_flatness",),
    "original_firstorder_Mean": ("stat_mean",),
    "original_firstorder_Variance": ("stat_var",),
    "original_firstorder_Skewness": ("stat_skew",),
    "original_firstorder_Kurtosis": ("stat_kurt",),
    "original_firstorder_Median": ("stat_median",),
    "original_firstorder_Minimum": ("stat_min",),
    "original_firstorder_10Percentile": ("stat_p10",),
    "original_firstorder_90Percentile": ("stat_p90",),
    "original_firstorder_Maximum": ("stat_max",),
    "original_firstorder_InterquartileRange": ("stat_iqr",),
    "original_firstorder_Range": ("stat_range",),
    "original_firstorder_MeanAbsoluteDeviation": ("stat_mad",),
    "original_firstorder_RobustMeanAbsoluteDeviation": ("stat_rmad",),
    "original_firstorder_Energy": ("stat_energy",),
    "original_firstorder_RootMeanSquared": ("stat_rms",),
    "original_firstorder_Entropy": ("ih_entropy",),
    "original_firstorder_Uniformity": ("ih_uniformity",),
    "original_glcm_MaximumProbability": ("cm_joint_max_3D_avg",),
    "original_glcm_JointAverage": ("cm_joint_avg_3D_avg",),
    "original_glcm_SumSquares": ("cm_joint_var_3D_avg",),
    "original_glcm_JointEntropy": ("cm_joint_entr_3D_avg",),
    "original_glcm_DifferenceAverage": ("cm_diff_avg_3D_avg", "cm_dissimilarity_3D_avg"),
    "original_glcm_DifferenceVariance": ("cm_diff_var_3D_avg",),
    "original_glcm_DifferenceEntropy": ("cm_diff_entr_3D_avg",),
    "original_glcm_SumAverage": ("cm_sum_avg_3D_avg",),
    "original_glcm_ClusterTendency": ("cm_clust_tend_3D_avg", "cm_sum_var_3D_avg"),
    "original_glcm_SumEntropy": ("cm_sum_entr_3D_avg",),
    "original_glcm_JointEnergy": ("cm_energy_3D_avg",),
    "original_glcm_Contrast": ("cm_contrast_3D_avg",),
    "original_glcm_Id": ("cm_inv_diff_3D_avg",),
    "original_glcm_Idn": ("cm_inv_diff_norm_3D_avg",),
    "original_glcm_Idm": ("cm_inv_diff_mom_3D_avg",),
    "original_glcm_Idmn": ("cm_inv_diff_mom_norm_3D_avg",),
    "original_glcm_InverseVariance": ("cm_inv_var_3D_avg",),
    "original_glcm_Correlation": ("cm_corr_3D_avg",),
    "original_glcm_Autocorrelation": ("cm_auto_corr_3D_avg",),
    "original_glcm_ClusterShade": ("cm_clust_shade_3D_avg",),
    "original_glcm_ClusterProminence": ("cm_clust_prom_3D_avg",),
    "original_glcm_Imc1": ("cm_info_corr1_3D_avg",),
    "original_glcm_Imc2": ("cm_info_corr2_3D_avg",),
    "original_glrlm_ShortRunEmphasis": ("rlm_sre_3D_avg",),
    "original_glrlm_LongRunEmphasis": ("rlm_lre_3D_avg",),
    "original_glrlm_LowGrayLevelRunEmphasis": ("rlm_lgre_3D_avg",),
    "original_glrlm_HighGrayLevelRunEmphasis": ("rlm_hgre_3D_avg",),
    "original_glrlm_ShortRunLowGrayLevelEmphasis": ("rlm_srlge_3D_avg",),
    "original_glrlm_ShortRunHighGrayLevelEmphasis": ("rlm_srhge_3D_avg",),
    "original_glrlm_LongRunLowGrayLevelEmphasis": ("rlm_lrlge_3D_avg",),
    "original_glrlm_LongRunHighGrayLevelEmphasis": ("rlm_lrhge_3D_avg",),
    "original_glrlm_GrayLevelNonUniformity": ("rlm_glnu_3D_avg",),
    "original_glrlm_GrayLevelNonUniformityNormalized": ("rlm_glnu_norm_3D_avg",),
    "original_glrlm_RunLengthNonUniformity": ("rlm_rlnu_3D_avg",),
    "original_glrlm_RunLengthNonUniformityNormalized": ("rlm_rlnu_norm_3D_avg",),
    "original_glrlm_RunPercentage": ("rlm_r_perc_3D_avg",),
    "original_glrlm_GrayLevelVariance": ("rlm_gl_var_3D_avg",),
    "original_glrlm_RunVariance": ("rlm_rl_var_3D_avg",),
    "original_glrlm_RunEntropy": ("rlm_rl_entr_3D_avg",),
    "original_glszm_SmallAreaEmphasis": ("szm_sze_3D",),
    "original_glszm_LargeAreaEmphasis": ("szm_lze_3D",),
    "original_glszm_LowGrayLevelZoneEmphasis": ("szm_lgze_3D",),
    "original_glszm_HighGrayLevelZoneEmphasis": ("szm_hgze_3D",),
    "original_glszm_SmallAreaLowGrayLevelEmphasis": ("szm_szlge_3D",),
    "original_glszm_SmallAreaHighGrayLevelEmphasis": ("szm_szhge_3D",),
    "original_glszm_LargeAreaLowGrayLevelEmphasis": ("szm_lzlge_3D",),
    "original_glszm_LargeAreaHighGrayLevelEmphasis": ("szm_lzhge_3D",),
    "original_glszm_GrayLevelNonUniformity": ("szm_glnu_3D",),
    "original_glszm_GrayLevelNonUniformityNormalized": ("szm_glnu_norm_3D",),
    "original_glszm_SizeZoneNonUniformity": ("szm_zsnu_3D",),
    "original_glszm_SizeZoneNonUniformityNormalized": ("szm_zsnu_norm_3D",),
    "original_glszm_ZonePercentage": ("szm_z_perc_3D",),
    "original_glszm_GrayLevelVariance": ("szm_gl_var_3D",),
    "original_glszm_ZoneVariance": ("szm_zs_var_3D",),
    "original_glszm_ZoneEntropy": ("szm_zs_entr_3D",),
    "original_gldm_SmallDependenceEmphasis": ("ngl_lde_3D",),
    "original_gldm_LargeDependenceEmphasis": ("ngl_hde_3D",),
    "original_gldm_LowGrayLevelEmphasis": ("ngl_lgce_3D",),
    "original_gldm_HighGrayLevelEmphasis": ("ngl_hgce_3D",),
    "original_gldm_SmallDependenceLowGrayLevelEmphasis": ("ngl_ldlge_3D",),
    "original_gldm_SmallDependenceHighGrayLevelEmphasis": ("ngl_ldhge_3D",),
    "original_gldm_LargeDependenceLowGrayLevelEmphasis": ("ngl_hdlge_3D",),
    "original_gldm_LargeDependenceHighGrayLevelEmphasis": ("ngl_hdhge_3D",),
    "original_gldm_GrayLevelNonUniformity": ("ngl_glnu_3D",),
    "original_gldm_DependenceNonUniformity": ("ngl_dcnu_3D",),
    "original_gldm_DependenceNonUniformityNormalized": ("ngl_dcnu_norm_3D",),
    "original_gldm_GrayLevelVariance": ("ngl_gl_var_3D",),
    "original_gldm_DependenceVariance": ("ngl_dc_var_3D",),
    "original_gldm_DependenceEntropy": ("ngl_dc_entr_3D",),
    "original_ngtdm_Coarseness": ("ngt_coarseness_3D",),
    "original_ngtdm_Contrast": ("ngt_contrast_3D",),
    "original_ngtdm_Busyness": ("ngt_busyness_3D",),
    "original_ngtdm_Complexity": ("ngt_complexity_3D",),
    "original_ngtdm_Strength": ("ngt_strength_3D",),
}


# ----------------------------------------------------------------------------- results
@dataclass
class RegionResult:
    """Features of one region (a lesion, or one image and mask).

    ``status`` is ``ok`` or ``failed:<reason>``; when it failed, every feature
    is None and ``message`` says why. ``features`` holds every expected
    feature name (``original_<class>_<feature>``) in table order.
    """

    status: str
    features: dict[str, float | None]
    diagnostics: dict[str, int | None] = field(default_factory=dict)
    message: str | None = None
    ring_status: str | None = None
    ring_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def feature_names(params: ExtractionParams, *, prefix: str = "",
                  classes: Iterable[str] | None = None) -> list[str]:
    """The feature columns the parameters produce, in table order."""
    chosen = list(params.feature_classes) if classes is None else list(classes)
    names = []
    for image_type in params.image_types:
        lowered = image_type.lower()
        for cls in chosen:
            if cls in SHAPE_CLASSES and lowered != "original":
                continue
            names.extend(f"{prefix}{lowered}_{cls}_{name}"
                         for name in params.feature_classes[cls])
    return names


def diagnostic_names(params: ExtractionParams, *, prefix: str = "") -> list[str]:
    names = [f"{prefix}diagnostics_Mask-original_VoxelNum",
             f"{prefix}diagnostics_Mask-original_VolumeNum"]
    if params.resamples:
        names.append(f"{prefix}diagnostics_Mask-interpolated_VoxelNum")
    if params.resegments:
        names.append(f"{prefix}diagnostics_Mask-resegmented_VoxelNum")
    return names


def table_columns(params: ExtractionParams, *, peritumoral: bool = False) -> list[str]:
    """Columns of a features table made with these parameters."""
    columns = [*ID_COLUMNS, *STATUS_COLUMNS]
    if peritumoral:
        columns.extend(RING_STATUS_COLUMNS)
    columns.extend(feature_names(params))
    if peritumoral:
        columns.extend(feature_names(params, prefix=PERITUMORAL, classes=params.texture_classes))
    columns.extend(diagnostic_names(params))
    if peritumoral:
        columns.extend(diagnostic_names(params, prefix=PERITUMORAL))
    return columns


# ----------------------------------------------------------------------------- geometry
def axial_array_axis(image) -> int:
    """The numpy axis (of ``GetArrayFromImage``, [k, j, i]) across axial slices.

    The image axis closest to the patient's z axis: the column of the direction
    matrix with the largest z component (the first of equal ones).
    """
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(direction[2, :])))


def margin_voxels(params: ExtractionParams, spacing_ijk: Sequence[float],
                   peritumoral_mm: float | None) -> np.ndarray:
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
            margin += (np.ceil(0.5 + (pad + 1.0) * target / spacing).astype(np.int64)
                       + INTERPOLATOR_REACH + RESAMPLING_MARGIN)
    return margin[::-1]


def expand_box(box: tuple[slice, ...], margin_kji: np.ndarray, shape: Sequence[int]
            ) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - int(m)), min(int(n), s.stop + int(m)))
                 for s, m, n in zip(box, margin_kji, shape))


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


def crop_region(key: int, image_array: np.ndarray, mask_bool: np.ndarray, box: tuple[slice, ...],
                 image, *, shape2d_axis: int | None, liver: np.ndarray | None = None,
                 peritumoral_mm: float | None = None) -> Region:
    start_ijk = tuple(int(s.start) for s in box[::-1])
    origin = image.TransformIndexToPhysicalPoint(start_ijk)
    return Region(key=key, image=np.array(image_array[box]), mask=mask_bool.astype(np.uint8),
                   origin=tuple(origin), spacing=tuple(image.GetSpacing()),
                   direction=tuple(image.GetDirection()), start_ijk=start_ijk,
                   full_size_ijk=tuple(int(s) for s in image.GetSize()),
                   shape2d_axis=shape2d_axis, liver=liver, peritumoral_mm=peritumoral_mm)


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
        raise ValueError(f"resampledPixelSpacing has {target.size} values; the image is "
                         f"{spacing.size}D")
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
        [float(v) for v in origin_index - np.asarray(start_ijk, dtype=float)])
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


def _pyradiomics_values(image, mask, region: Region, params: ExtractionParams,
                        classes: Sequence[str], *, prefix: str, shape2d_axis: int | None = None
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
            image, mask, region.start_ijk, region.full_size_ijk, settings)
        settings["resampledPixelSpacing"] = None
        diagnostics[f"{prefix}diagnostics_Mask-interpolated_VoxelNum"] = int(
            np.count_nonzero(sitk.GetArrayViewFromImage(mask) == 1))
    if params.resegments:
        try:
            reseg = imageoperations.resegmentMask(image, mask, **settings)
            diagnostics[f"{prefix}diagnostics_Mask-resegmented_VoxelNum"] = int(
                np.count_nonzero(sitk.GetArrayViewFromImage(reseg) == 1))
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


def _extract_region(region: Region, params: ExtractionParams) -> RegionResult:
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
            values, diag = _pyradiomics_values(image, _to_image(region.mask, region), region,
                                               params, main_classes, prefix="")
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
            values, _diag = _pyradiomics_values(image, _to_image(one_slice, region), region,
                                                params, ["shape2D"], prefix="",
                                                shape2d_axis=axis)
            features.update(values)
        missing = [name for name in lesion_names if name not in features]
        extra = [name for name in features if name not in lesion_names]
        if extra:
            raise RuntimeError(f"pyradiomics returned unexpected features {extra[:3]}")
        if missing:
            raise RuntimeError(f"pyradiomics did not return {len(missing)} feature(s) "
                               f"({', '.join(missing[:3])})")
    except Exception as exc:  # noqa: BLE001 - a lesion's failure is recorded, never fatal
        status, message = f"failed:{_reason(exc)}", _one_line(exc)
        features = dict.fromkeys(lesion_names)
        log.debug("lesion %s: %s", region.key, message, exc_info=True)
    result = RegionResult(status=status, features=features, diagnostics=diagnostics,
                          message=message)
    if region.peritumoral_mm is not None:
        _extract_ring(region, params, image, mask, result)
    return result


def _extract_ring(region: Region, params: ExtractionParams, image, lesion: np.ndarray,
                  result: RegionResult) -> None:
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
        message = (f"no liver voxel (label {LIVER_LABEL}) within {region.peritumoral_mm:g} mm "
                   "of the lesion")
    else:
        try:
            values, diag = _pyradiomics_values(image, _to_image(ring.astype(np.uint8), region),
                                               region, params, params.texture_classes,
                                               prefix=PERITUMORAL)
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


# ----------------------------------------------------------------------------- workers
def _quiet_radiomics() -> None:
    """pyradiomics adds its own stderr handler; metcli reports failures itself."""
    import radiomics

    radiomics.setVerbosity(logging.CRITICAL)


@contextlib.contextmanager
def _radiomics_silenced() -> Iterator[None]:
    import radiomics

    handler = getattr(radiomics, "handler", None)
    level = handler.level if handler is not None else None
    _quiet_radiomics()
    try:
        yield
    finally:
        if handler is not None:
            handler.setLevel(level)


def _init_worker() -> None:
    import SimpleITK as sitk

    _quiet_radiomics()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one process per core already


def _work(item: tuple[Region, ExtractionParams]) -> RegionResult:
    region, params = item
    return _extract_region(region, params)


class LesionPool:
    """Lesions in parallel over ``jobs`` processes; results in submission order.

    At most ``2 * jobs`` crops are in flight, so memory stays bounded by the
    crops of a few lesions whatever the number of lesions.
    """

    def __init__(self, jobs: int):
        self.jobs = int(jobs)
        self._executor = None

    def _ensure(self):
        if self._executor is None and self.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: SimpleITK's thread pool does not survive a fork, and
            # spawned workers are direct children (their CPU time is accounted)
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context,
                                                 initializer=_init_worker)
        return self._executor

    def map(self, items: Iterable[tuple[Region, ExtractionParams]]) -> Iterator[RegionResult]:
        executor = self._ensure()
        if executor is None:
            with _radiomics_silenced():
                for item in items:
                    yield _work(item)
            return
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(executor.submit(_work, item))
            if len(pending) >= 2 * self.jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "LesionPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- one image
def as_params(params: ExtractionParams | Mapping | str | Path | None) -> ExtractionParams:
    """Parameters from a preset name, a file, a mapping, or already resolved ones."""
    if isinstance(params, ExtractionParams):
        return params
    if isinstance(params, Mapping):
        return params_from_dict(params)
    return load_params(params)


def prepare_image(image, params: ExtractionParams):
    """The image as the regions see it: normalised over the whole image when asked."""
    if not params.settings.get("normalize"):
        return image
    from radiomics import imageoperations

    return imageoperations.normalizeImage(image, **params.settings)


def shape2d_axis(image, params: ExtractionParams) -> int | None:
    if "shape2D" not in params.feature_classes:
        return None
    if params.settings.get("force2D"):
        return int(params.settings.get("force2Ddimension", 0))
    return axial_array_axis(image)


def extract_features(image, mask, params: ExtractionParams | Mapping | str | Path | None = None,
                     *, label: int = 1, image_path: str | Path | None = None,
                     mask_path: str | Path | None = None) -> RegionResult:
    """Features of one region (voxels of ``mask`` equal to ``label``) of ``image``.

    The same computation as ``metcli extract`` does for each lesion: the mask
    is brought onto the image's grid in physical space (flips and axis
    permutations; anything else is a :class:`GeometryError` naming both
    files), the image is normalised if the parameters say so, the region is
    cropped with the margin resampling needs, and pyradiomics extracts it.

    Args:
        image, mask: SimpleITK images (the mask: integer labels).
        params: a preset name, a parameter file, a pyradiomics parameter
            mapping, or :class:`ExtractionParams`; None = the ``study`` preset.
        label: the mask value of the region.
        image_path, mask_path: names for error messages.

    Returns:
        A :class:`RegionResult`; a region pyradiomics refuses has status
        ``failed:<reason>`` and None values.
    """
    from metcli.imaging.geometry import to_reference_grid
    import SimpleITK as sitk

    params = as_params(params)
    mask = to_reference_grid(mask, image, image_path=mask_path or "mask",
                             reference_path=image_path or "image")
    region_mask = sitk.GetArrayViewFromImage(mask) == label
    image = prepare_image(image, params)
    array = sitk.GetArrayViewFromImage(image)
    if not region_mask.any():
        return RegionResult(status="failed:empty_mask", features=dict.fromkeys(
            feature_names(params)), diagnostics={n: 0 if n.endswith("original_VoxelNum") else
                                                 None for n in diagnostic_names(params)},
            message=f"the mask has no voxel with label {label}")
    from scipy import ndimage

    box = ndimage.find_objects(region_mask.astype(np.uint8))[0]
    box = expand_box(box, margin_voxels(params, image.GetSpacing(), None), array.shape)
    region = crop_region(label, array, region_mask[box], box, image,
                          shape2d_axis=shape2d_axis(image, params))
    with _radiomics_silenced():
        return _extract_region(region, params)
