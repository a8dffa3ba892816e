"""Read one DICOM MR series as an image: a 3D volume, or a 4D diffusion series.

:func:`plan_mr_series` runs every check on the headers (:mod:`metcli.imaging.dicom.mr_checks`,
the volumes of a diffusion series by :mod:`metcli.imaging.dicom.diffusion`, the geometry of
each volume by :func:`metcli.imaging.dicom.stack.slices_geometry`) before any pixel is
decoded; :func:`read_mr_series` decodes the pixels and builds the image.

- Values: as the scanner stored them, with RescaleSlope/RescaleIntercept applied when the
  series has them (one pair for the series). The image is int16 when every value is an
  integer that fits, uint16 when they are non-negative integers up to 65535, else float32.
- A diffusion series is one 4D image (x, y, z, volume), its volumes in the order of
  :func:`metcli.imaging.dicom.diffusion.diffusion_volumes`; every volume has the grid of
  the first.
- An ADC map is written in mm2/s (float32), the unit metcli reads ADC maps in. DICOM has
  no standard unit for a classic MR ADC image, so the stored unit is told by the size of
  the values (:func:`adc_scale`): a median of the positive values above 50 means 1e-6
  mm2/s (Siemens and GE store 1000 for 1e-3 mm2/s), from 0.05 to 50 means 1e-3 mm2/s,
  below that mm2/s; the rule and the factor go in the sidecar.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metcli.core.errors import DicomError
from metcli.imaging.dicom.diffusion import ZERO, DiffusionVolume, bvecs_for_image, diffusion_volumes
from metcli.imaging.dicom.mr_checks import check_mr_series, check_one_image_per_position
from metcli.imaging.dicom.pixels import decode_slice
from metcli.imaging.dicom.series import SeriesInfo
from metcli.imaging.dicom.stack import StackGeometry, fmt, slices_geometry
from metcli.imaging.dicom.volume import build_image

log = logging.getLogger(__name__)

#: What the MR conversion does; recorded as the provenance settings.
MR_SETTINGS = {
    "sort": "position along the slice normal",
    "values": "as stored; RescaleSlope/RescaleIntercept applied when present (one pair per series)",
    "dtype": "int16, else uint16, when every value is an integer in range, else float32",
    "diffusion": "one 4D image, a volume per b-value and gradient direction, ordered by b "
    "then direction; bvec along the voxel axes with FSL's first-axis flip",
    "adc": "mm2/s (float32); stored unit told by the median of the positive values",
}


@dataclass
class MRPlan:
    """An MR series checked on its headers: its volumes and their geometry."""

    series: SeriesInfo
    channel_name: str
    diffusion: bool
    volumes: list[DiffusionVolume]
    geometries: list[StackGeometry]
    dropped: list[str] = field(default_factory=list)


@dataclass
class MRVolumeInfo:
    """How an MR series became an image."""

    files: list[Path]  # the images decoded, volume after volume, in slice order
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    slice_step_mm: float
    dtype: str
    decoders: list[str]
    b_values: list[float] | None = None
    bvecs: list[tuple] | None = None
    adc_scale: tuple[float, str] | None = None


def plan_mr_series(series: SeriesInfo, channel) -> MRPlan:
    """Check an MR series for the channel (a :class:`~metcli.io.channels.Channel`)."""
    name = "DWI" if channel.modality == "DWI" else channel.name
    check_mr_series(series, name)
    dropped: list[str] = []
    if channel.modality == "DWI":
        volumes, dropped = diffusion_volumes(series)
        _check_shell(series, volumes, channel.bvalue)
    else:
        check_one_image_per_position(series)
        volumes = [DiffusionVolume(0.0, ZERO, list(series.slices))]
    geometries = [slices_geometry(v.slices, series.folder, series.root) for v in volumes]
    first = geometries[0]
    for volume, geometry in zip(volumes[1:], geometries[1:]):
        if not np.allclose(geometry.positions, first.positions, atol=0.01):
            raise DicomError(
                f"the diffusion volume {volume.describe()} lies at other slice positions than "
                "the first volume",
                path=series.folder,
                fix="give one acquisition per series (two may share a SeriesInstanceUID)",
            )
    return MRPlan(series, name, channel.modality == "DWI", volumes, geometries, dropped)


def _check_shell(series: SeriesInfo, volumes, bvalue: int | None) -> None:
    from metcli.io.channels import volumes_of

    if bvalue is None:
        return
    b_values = [v.b_value for v in volumes]
    if not volumes_of(b_values, bvalue):
        raise DicomError(
            f"--channel DWI-b{bvalue}: the diffusion series {series.describe()} has no "
            f"b = {bvalue} s/mm2 (its b-values: "
            + ", ".join(f"{b:g}" for b in sorted(set(b_values)))
            + ")",
            path=series.folder,
            fix="give --channel DWI to import the series with the b-values it has",
        )


def adc_scale(values: np.ndarray) -> tuple[float, str]:
    """The factor to mm2/s of an ADC map's values, and the rule that chose it."""
    positive = values[values > 0]
    if positive.size == 0:
        return 1.0, "no positive value: kept as stored (mm2/s)"
    median = float(np.median(positive))
    if median > 50:
        return 1e-6, f"median of the positive values {median:.4g} > 50: 1e-6 mm2/s"
    if median > 0.05:
        return 1e-3, f"median of the positive values {median:.4g} in (0.05, 50]: 1e-3 mm2/s"
    return 1.0, f"median of the positive values {median:.4g} <= 0.05: mm2/s"


def _output_dtype(values: np.ndarray):
    if values.size and bool(np.all(values == np.rint(values))):
        low, high = float(values.min()), float(values.max())
        if -32768 <= low and high <= 32767:
            return np.int16
        if 0 <= low and high <= 65535:
            return np.uint16
    return np.float32


def read_mr_series(plan: MRPlan, *, adc: bool = False):
    """Decode a planned MR series: ``(image, info)``; 4D for a diffusion series."""
    import SimpleITK as sitk

    series, first = plan.series, plan.geometries[0]
    shape = (len(plan.volumes), len(first.slices), first.rows, first.columns)
    values = np.empty(shape, dtype=np.float64 if adc else np.float32)
    decoders, files = set(), []
    for v, geometry in enumerate(plan.geometries):
        for k, header in enumerate(geometry.slices):
            pixels, decoder = decode_slice(
                header, first.rows, first.columns, series.root, series.folder
            )
            values[v, k] = pixels
            decoders.add(decoder)
            files.append(header.path)
    scale = None
    if adc:
        scale = adc_scale(values)
        values = (values * scale[0]).astype(np.float32)
    else:
        values = values.astype(_output_dtype(values))
    images = [build_image(values[v], g, series.folder) for v, g in enumerate(plan.geometries)]
    image = sitk.JoinSeries(images) if plan.diffusion else images[0]
    info = MRVolumeInfo(
        files=files,
        spacing=first.spacing,
        origin=first.origin,
        direction=first.direction,
        slice_step_mm=first.step,
        dtype=str(values.dtype),
        decoders=sorted(decoders),
        adc_scale=scale,
    )
    if plan.diffusion:
        info.b_values = [v.b_value for v in plan.volumes]
        info.bvecs = bvecs_for_image([v.direction for v in plan.volumes], first.direction)
    log.info(
        "%s: %d volume(s) of %d slices, %s voxels of %s mm, %s, decoded by %s",
        series.folder,
        len(plan.volumes),
        len(first.slices),
        "x".join(map(str, images[0].GetSize())),
        fmt(first.spacing),
        info.dtype,
        ", ".join(info.decoders),
    )
    return image, info
