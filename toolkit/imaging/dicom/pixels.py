"""Pixel data of one DICOM slice, decoded and rescaled (CT: to HU).

RescaleSlope/RescaleIntercept are applied slice by slice (they may differ
between CT slices; an MR image without them keeps its stored values). Pixel data
are decoded by pydicom (with pylibjpeg-openjpeg for JPEG 2000); transfer syntaxes
pydicom has no plug-in for (JPEG lossless process 14 is common) are decoded by
SimpleITK's GDCM. A syntax neither can decode is a
:class:`~metcli.core.errors.DicomError` naming it and the packages to install.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from metcli.core.errors import DicomError
from metcli.imaging.dicom.headers import SliceHeader, read_dataset
from metcli.imaging.dicom.stack import slice_name
from metcli.imaging.dicom.syntax import install_hint, pydicom_decoder, transfer_syntax_name


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK prints warnings straight to stderr; keep them out of the one-line error contract."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _decode_with_gdcm(path: Path, rows: int, columns: int) -> np.ndarray:
    """HU values of one slice through SimpleITK's GDCM (which applies the rescale itself)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    with _quiet_itk():
        image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    if array.size != rows * columns:
        raise RuntimeError(f"GDCM returned {array.size} pixels, expected {rows}x{columns}")
    return array.reshape(rows, columns)


def decode_slice(
    header: SliceHeader, rows: int, columns: int, root: Path | None, where: Path
) -> tuple[np.ndarray, str]:
    """Rescaled values of one slice (float64 or integer array) and the decoder used."""
    available, missing = pydicom_decoder(header.transfer_syntax)
    problem = None
    if available:
        try:
            ds = read_dataset(header.path, stop_before_pixels=False)
            if ds is None or "PixelData" not in ds:
                raise DicomError(
                    f"{slice_name(header, root)} holds no pixel data",
                    path=where,
                    fix="export the series again with its images",
                )
            stored = ds.pixel_array
            if stored.shape != (rows, columns):
                raise DicomError(
                    f"{slice_name(header, root)}: pixel data of shape {stored.shape} "
                    f"where Rows x Columns is {rows}x{columns}",
                    path=where,
                    fix="export the series again",
                )
            slope = 1.0 if header.slope is None else header.slope  # MR often has none
            intercept = 0.0 if header.intercept is None else header.intercept
            if float(slope).is_integer() and float(intercept).is_integer():
                values = stored.astype(np.int64) * int(slope) + int(intercept)
            else:
                values = stored.astype(np.float64) * slope + intercept
            return values, "pydicom"
        except DicomError:
            raise
        except Exception as exc:  # noqa: BLE001 - try GDCM before giving up
            problem = f"pydicom: {exc}"
    try:
        return _decode_with_gdcm(header.path, rows, columns), "gdcm"
    except Exception as exc:  # noqa: BLE001
        gdcm_problem = _short_reason(exc)
    syntax = transfer_syntax_name(header.transfer_syntax)
    if problem is None:
        raise DicomError(
            f"{slice_name(header, root)}: cannot decode pixel data compressed as {syntax}: "
            "pydicom has no decoder plug-in for it installed and SimpleITK/GDCM failed "
            f"({gdcm_problem})",
            path=where,
            fix=install_hint(missing),
        )
    raise DicomError(
        f"{slice_name(header, root)}: cannot decode the pixel data ({syntax}): "
        f"{' '.join(problem.split())[:200]}",
        path=where,
        fix="the file may be damaged or truncated: export or copy the series again",
    )


def _short_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if "():" in text:  # ITK messages: "<file>:<line> (): the reason"
        text = text.rsplit("():", 1)[1].strip()
    return text[-160:] or type(exc).__name__
