"""Write a CT volume as a DICOM CT series (for the synthetic cohort and the import tests).

One uncompressed file per slice (CT Image Storage), pixels stored unsigned with
RescaleIntercept -1024; UIDs derived deterministically from given sources; no
identifying data and no dates.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from metcli.core.errors import UsageError
from metcli.io.files import OutputSet

HU_MIN, HU_MAX = -1024, 3071
DICOM_INTERCEPT = -1024

_SLICE_RE = re.compile(r"^CT\d{4,}\.dcm$")


def _slice_name(k: int) -> str:
    return f"CT{k + 1:04d}.dcm"


def remove_stale_slices(series_dir: Path, keep: Sequence[str]) -> None:
    keep = set(keep)
    for path in series_dir.glob("CT*.dcm"):
        if _SLICE_RE.match(path.name) and path.name not in keep:
            path.unlink()


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    text = format(round(float(value), 6), ".10g")
    return "0" if text == "-0" else text


def ct_to_dicom_series(
    ct_image,
    folder: Path,
    *,
    outputs: OutputSet,
    uid_sources: Sequence[str],
    patient_id: str,
    sex: str | None = None,
    age: int | None = None,
    series_description: str = "CT",
) -> dict[Path, Path]:
    """Write a CT (SimpleITK, HU, identity direction) as a DICOM CT series, one file a slice.

    Files ``CT0001.dcm`` ... go through ``outputs`` (an :class:`OutputSet`); returns
    {final path: temporary path}. UIDs are derived from ``uid_sources`` (the same
    sources give the same UIDs). Pixels are stored unsigned with RescaleIntercept
    -1024 and RescaleSlope 1. No identifying data: the patient's name and id are the
    synthetic ``patient_id``; no dates.
    """
    from pydicom.uid import generate_uid

    stored = _stored_pixels(ct_image)

    def uid(*parts: str) -> str:
        return generate_uid(entropy_srcs=[*uid_sources, *parts])

    ds = _series_dataset(
        ct_image,
        stored.shape,
        uid,
        patient_id=patient_id,
        sex=sex,
        age=age,
        series_description=series_description,
    )
    return _write_slices(ds, stored, ct_image, uid, folder, outputs)


def _stored_pixels(ct_image) -> np.ndarray:
    """The CT's voxels [z, y, x] as stored: unsigned, HU minus the rescale intercept."""
    import SimpleITK as sitk

    direction = np.asarray(ct_image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction, np.eye(3)):
        raise UsageError("ct_to_dicom_series writes axial images with the identity direction only")
    array = sitk.GetArrayFromImage(ct_image).astype(np.int32)
    if array.min() < HU_MIN or array.max() > HU_MAX:
        raise UsageError(f"CT values must lie in [{HU_MIN}, {HU_MAX}] HU to be stored as DICOM")
    return (array - DICOM_INTERCEPT).astype(np.uint16)


def _series_dataset(
    ct_image,
    shape: tuple[int, int, int],
    uid: Callable[..., str],
    *,
    patient_id: str,
    sex: str | None,
    age: int | None,
    series_description: str,
):
    """One dataset with the attributes every slice of the series shares."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    from metcli._version import __version__

    _nz, ny, nx = shape
    sx, sy, sz = ct_image.GetSpacing()
    common = {  # the attributes every slice shares
        "SOPClassUID": CTImageStorage,
        "StudyInstanceUID": uid("study"),
        "SeriesInstanceUID": uid("series"),
        "FrameOfReferenceUID": uid("frame-of-reference"),
        "PatientName": patient_id,
        "PatientID": patient_id,
        "PatientBirthDate": "",
        "PatientSex": sex if sex in ("M", "F", "O") else "",
        "PatientIdentityRemoved": "YES",
        "StudyDate": "",
        "StudyTime": "",
        "ReferringPhysicianName": "",
        "StudyID": "1",
        "AccessionNumber": "",
        "StudyDescription": "metcli synthetic cohort",
        "Modality": "CT",
        "SeriesNumber": 1,
        "SeriesDescription": series_description,
        "BodyPartExamined": "ABDOMEN",
        "PatientPosition": "HFS",
        "Manufacturer": "metcli",
        "ManufacturerModelName": "synth",
        "SoftwareVersions": __version__,
        "ContrastBolusAgent": "synthetic portal-venous phase",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "AcquisitionNumber": 1,
        "KVP": "",
        "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"],
        "PixelSpacing": [_ds(sy), _ds(sx)],
        "SliceThickness": _ds(sz),
        "SpacingBetweenSlices": _ds(sz),
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": ny,
        "Columns": nx,
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 0,
        "RescaleIntercept": str(DICOM_INTERCEPT),
        "RescaleSlope": "1",
        "RescaleType": "HU",
        "WindowCenter": "40",
        "WindowWidth": "400",
    }
    if age is not None:
        common["PatientAge"] = f"{int(age):03d}Y"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    for keyword, value in common.items():
        setattr(ds, keyword, value)
    return ds


def _write_slices(
    ds, stored: np.ndarray, ct_image, uid: Callable[..., str], folder: Path, outputs: OutputSet
) -> dict[Path, Path]:
    """One file a slice through ``outputs``: ``ds`` with its per-slice attributes replaced."""
    import pydicom

    major = int(pydicom.__version__.split(".")[0])
    ox, oy, oz = ct_image.GetOrigin()
    sz = ct_image.GetSpacing()[2]
    produced: dict[Path, Path] = {}
    for k in range(stored.shape[0]):  # one dataset, its per-slice attributes replaced
        instance = uid("instance", str(k))
        ds.file_meta.MediaStorageSOPInstanceUID = instance
        ds.SOPInstanceUID = instance
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(oz + k * sz)]
        ds.SliceLocation = _ds(oz + k * sz)
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<u2").tobytes()
        final = Path(folder) / _slice_name(k)
        tmp = outputs.path(final)
        if major >= 3:
            pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        else:  # pragma: no cover - pydicom 2.4
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(str(tmp), ds, write_like_original=False)
        produced[final] = tmp
    return produced
