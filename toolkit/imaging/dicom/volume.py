"""Read one DICOM CT series as a volume in Hounsfield units.

:func:`read_ct_series` checks one series (:func:`metcli.imaging.dicom.stack.stack_geometry`),
decodes its slices (:mod:`metcli.imaging.dicom.pixels`) and returns a SimpleITK image in
HU with a :class:`VolumeInfo` describing how (file order, slice positions,
SOPInstanceUIDs per slice: what a mask importer needs).
:mod:`metcli.imaging.dicom.import_dicom` (the ``import-dicom`` command) writes it as NIfTI.

- The image's voxel positions are checked against every slice's
  ImagePositionPatient before it is returned.
- The image is int16 when every value is an integer that fits, float32
  otherwise. Padding (PixelPaddingValue, e.g. -3024 HU outside the
  reconstruction circle) is kept as it is: the conversion stays faithful
  (identical to other DICOM readers), the padding lies outside the body, and the
  value is recorded in the sidecar as ``PixelPaddingValueHU``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metcli.core.errors import DicomError, InputError, UsageError
from metcli.imaging.dicom.headers import SliceHeader, float_value, read_dataset, read_header
from metcli.imaging.dicom.metadata import acquisition_metadata
from metcli.imaging.dicom.pixels import decode_slice
from metcli.imaging.dicom.series import SeriesInfo, find_series, group_series, select_series
from metcli.imaging.dicom.stack import (
    INPLANE_TOLERANCE_FRACTION,
    POSITION_TOLERANCE_FRACTION,
    POSITION_TOLERANCE_MM,
    StackGeometry,
    fmt,
    stack_geometry,
)

log = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767


@dataclass
class VolumeInfo:
    """How a series became a volume: what a caller (or a mask importer) needs to know."""

    series: SeriesInfo
    files: list[Path]  # in slice order (index k of the volume's third axis)
    sop_instance_uids: list[str]  # in slice order
    positions_mm: list[float]  # along the slice normal, ascending
    slice_step_mm: float
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    transfer_syntax: str
    decoders: list[str]
    dtype: str
    padding_hu: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _fits_int16(values: np.ndarray) -> bool:
    if not np.issubdtype(values.dtype, np.integer) and not bool(np.all(values == np.rint(values))):
        return False
    return INT16_MIN <= float(values.min()) and float(values.max()) <= INT16_MAX


class _VolumeBuilder:
    """Collects slices as int16 while every value is an integer that fits, else float32."""

    def __init__(self, shape: tuple[int, int, int]):
        self.volume = np.empty(shape, dtype=np.int16)

    def put(self, index: int, values: np.ndarray) -> None:
        if self.volume.dtype == np.int16 and not _fits_int16(values):
            self.volume = self.volume.astype(np.float32)
        if self.volume.dtype == np.int16:
            self.volume[index] = np.rint(values) if values.dtype.kind == "f" else values
        else:
            self.volume[index] = values


def build_image(volume: np.ndarray, geometry: StackGeometry, where: Path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    # Verify: every slice's first voxel lies where its ImagePositionPatient says.
    limit = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * geometry.step) + max(
        INPLANE_TOLERANCE_FRACTION * min(geometry.spacing[:2]), POSITION_TOLERANCE_MM
    )
    for index, header in enumerate(geometry.slices):
        point = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, index)))
        error = float(np.linalg.norm(point - np.asarray(header.position)))
        if error > limit:
            raise DicomError(
                f"internal check failed: slice {index + 1} would lie {error:.3g} mm "
                "from its ImagePositionPatient",
                path=where,
                fix="report this as a metcli bug with the series' headers",
            )
    return image


def _series_from(source, series_uid: str | None) -> SeriesInfo:
    if isinstance(source, SeriesInfo):
        if series_uid is not None and source.uid != series_uid.strip():
            raise UsageError(
                f"series_uid {series_uid!r} does not name the series given ({source.describe()})"
            )
        return source
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        return select_series(find_series(source), series_uid, where=source)
    if isinstance(source, (str, os.PathLike)):
        paths = [Path(source)]
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise DicomError("no DICOM files given", fix="give the files or the folder of a CT series")
    headers = []
    for path in paths:
        if not path.is_file():
            raise InputError("file not found", path=path, fix="check the path")
        header = read_header(path)
        if header is None:
            raise DicomError(
                "not a DICOM image file",
                path=path,
                fix="give DICOM image files only (or their folder)",
            )
        headers.append(header)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return select_series(group_series(headers, root=root), series_uid, where=root)


def read_ct_series(files_or_dir, series_uid: str | None = None):
    """Read one CT series as a SimpleITK image in HU, sorted and checked.

    Args:
        files_or_dir: a folder (searched with :func:`find_series`), a list of
            DICOM files, or a :class:`SeriesInfo`.
        series_uid: the SeriesInstanceUID to read; default the largest axial CT series.

    Returns:
        ``(image, info)``: the image (int16 or float32, LPS world coordinates as
        DICOM) and a :class:`VolumeInfo`.
    """
    series = _series_from(files_or_dir, series_uid)
    geometry = stack_geometry(series)
    where = series.folder
    builder = _VolumeBuilder((len(geometry.slices), geometry.rows, geometry.columns))
    decoders = set()
    for index, header in enumerate(geometry.slices):
        values, decoder = decode_slice(header, geometry.rows, geometry.columns, series.root, where)
        builder.put(index, values)
        decoders.add(decoder)
    volume = builder.volume
    image = build_image(volume, geometry, where)
    first = geometry.slices[0]
    padding = _padding_hu(first)
    info = VolumeInfo(
        series=series,
        files=[s.path for s in geometry.slices],
        sop_instance_uids=[s.sop_instance_uid for s in geometry.slices],
        positions_mm=[float(p) for p in geometry.positions],
        slice_step_mm=geometry.step,
        spacing=geometry.spacing,
        origin=geometry.origin,
        direction=geometry.direction,
        transfer_syntax=first.transfer_syntax,
        decoders=sorted(decoders),
        dtype=str(volume.dtype),
        padding_hu=padding,
        metadata=acquisition_metadata(
            first.path, step=geometry.step, padding_hu=padding, series_uid=series.uid
        ),
    )
    log.info(
        "%s: %d slices, %s voxels of %s mm, %s, decoded by %s",
        where,
        volume.shape[0],
        "x".join(map(str, image.GetSize())),
        fmt(geometry.spacing),
        info.dtype,
        ", ".join(info.decoders),
    )
    return image, info


def _padding_hu(header: SliceHeader) -> float | None:
    ds = read_dataset(header.path, stop_before_pixels=True)
    value = float_value(ds.get("PixelPaddingValue")) if ds is not None else None
    if value is None or header.slope is None or header.intercept is None:
        return None
    hu = value * header.slope + header.intercept
    return int(hu) if float(hu).is_integer() else float(hu)
