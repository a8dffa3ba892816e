"""One region of one image through pyradiomics: the computation behind ``metcli extract``.

:func:`extract_features` extracts one region (voxels of a mask equal to a
label) of one image; ``metcli extract`` (:mod:`metcli.radiomics.extract`) does the same
for every kept lesion of every CT, cutting the lesions out of a CT read once
and handing the crops to worker processes
(:class:`~metcli.radiomics.workers.LesionPool`).

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

Where the code is: :mod:`metcli.radiomics.columns` (the table's columns and
:class:`RegionResult`), :mod:`metcli.radiomics.regions` (cropping a lesion and
running pyradiomics on it), :mod:`metcli.radiomics.workers` (lesions in worker
processes). This module extracts one image and mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from metcli.radiomics.columns import RegionResult, diagnostic_names, feature_names, table_columns
from metcli.radiomics.params import ExtractionParams, load_params, params_from_dict
from metcli.radiomics.regions import (
    axial_array_axis,
    crop_region,
    expand_box,
    extract_region,
    margin_voxels,
)
from metcli.radiomics.workers import radiomics_silenced

__all__ = [
    "IBSI_TAGS",
    "RegionResult",
    "as_params",
    "extract_features",
    "prepare_image",
    "shape2d_axis",
    "table_columns",
]

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


def extract_features(
    image,
    mask,
    params: ExtractionParams | Mapping | str | Path | None = None,
    *,
    label: int = 1,
    image_path: str | Path | None = None,
    mask_path: str | Path | None = None,
) -> RegionResult:
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
    import SimpleITK as sitk

    from metcli.imaging.geometry import to_reference_grid

    params = as_params(params)
    mask = to_reference_grid(
        mask, image, image_path=mask_path or "mask", reference_path=image_path or "image"
    )
    region_mask = sitk.GetArrayViewFromImage(mask) == label
    image = prepare_image(image, params)
    array = sitk.GetArrayViewFromImage(image)
    if not region_mask.any():
        return RegionResult(
            status="failed:empty_mask",
            features=dict.fromkeys(feature_names(params)),
            diagnostics={
                n: 0 if n.endswith("original_VoxelNum") else None for n in diagnostic_names(params)
            },
            message=f"the mask has no voxel with label {label}",
        )
    from scipy import ndimage

    box = ndimage.find_objects(region_mask.astype(np.uint8))[0]
    box = expand_box(box, margin_voxels(params, image.GetSpacing(), None), array.shape)
    region = crop_region(
        label, array, region_mask[box], box, image, shape2d_axis=shape2d_axis(image, params)
    )
    with radiomics_silenced():
        return extract_region(region, params)
