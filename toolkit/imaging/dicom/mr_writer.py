"""Write an MR image as a DICOM MR series (for the synthetic MR cohort and tests).

Classic MR Image Storage, one uncompressed file per image (Explicit VR Little Endian),
axial images with the identity direction; pixels stored unsigned, without rescaling. A 4D
image is a diffusion series: one image per slice and volume, each volume's b-value and
gradient direction in the standard tags DiffusionBValue (0018,9087),
DiffusionGradientOrientation (0018,9089) and DiffusionDirectionality (0018,9075) (b = 0:
``NONE``, without a direction). UIDs are derived deterministically from given sources; no
identifying data and no dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from metcli.core.errors import UsageError
from metcli.imaging.dicom.writer import _ds
from metcli.io.files import OutputSet

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_IMAGE_RE = re.compile(r"^MR\d{4,}\.dcm$")


@dataclass(frozen=True)
class MRAcquisition:
    """The acquisition attributes of an MR series (times in ms, as DICOM has them)."""

    series_description: str
    scanning_sequence: str = "SE"
    sequence_variant: tuple[str, ...] = ("SK",)
    sequence_name: str = "tse2d"
    echo_time: float = 90.0
    repetition_time: float = 2500.0
    flip_angle: float = 150.0
    field_strength: float = 1.5
    series_number: int = 1
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    #: (b-value s/mm2, direction in LPS) per volume of a 4D image; None for a 3D image
    diffusion: Sequence[tuple[float, tuple[float, float, float]]] | None = field(default=None)


def image_name(k: int) -> str:
    return f"MR{k + 1:04d}.dcm"


def remove_stale_images(series_dir: Path, keep: Sequence[str]) -> None:
    """Delete ``MR*.dcm`` files of an earlier series that ``keep`` does not name."""
    keep = set(keep)
    for path in Path(series_dir).glob("MR*.dcm"):
        if _IMAGE_RE.match(path.name) and path.name not in keep:
            path.unlink()


def mr_to_dicom_series(
    image,
    folder: Path,
    *,
    outputs: OutputSet,
    acquisition: MRAcquisition,
    uid_sources: Sequence[str],
    study_uid: str,
    frame_uid: str,
    patient_id: str,
    sex: str | None = None,
    age: int | None = None,
) -> dict[Path, Path]:
    """Write an MR image (SimpleITK, 3D or 4D, identity direction, values in [0, 65535])
    as a DICOM MR series in ``folder``, one file an image (``MR0001.dcm`` ..., volume after
    volume), through ``outputs``; returns {final path: temporary path}."""
    from pydicom.uid import generate_uid

    stored = _stored_pixels(image, acquisition)

    def uid(*parts: str) -> str:
        return generate_uid(entropy_srcs=[*uid_sources, *parts])

    ds = _series_dataset(
        image, stored.shape[-2:], uid, acquisition, study_uid, frame_uid, patient_id, sex, age
    )
    return _write_images(ds, stored, image, uid, acquisition, Path(folder), outputs)


def _stored_pixels(image, acquisition: MRAcquisition) -> np.ndarray:
    """The voxels [volume, z, y, x] as stored (uint16)."""
    import SimpleITK as sitk

    dims = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(dims, dims)[:3, :3]
    if not np.allclose(direction, np.eye(3)):
        raise UsageError(
            "mr_to_dicom_series writes axial images with the identity direction only",
            fix="resample the image onto an identity-direction grid first",
        )
    array = sitk.GetArrayFromImage(image)
    array = array[None] if dims == 3 else array
    volumes = 1 if acquisition.diffusion is None else len(acquisition.diffusion)
    if array.shape[0] != volumes or dims not in (3, 4):
        raise UsageError(
            f"the image has {array.shape[0]} volume(s) where the acquisition describes {volumes}",
            fix="give one (b-value, direction) per volume of a 4D image, none for a 3D image",
        )
    if array.min() < 0 or array.max() > 65535 or not np.all(array == np.rint(array)):
        raise UsageError(
            "MR values must be whole numbers in [0, 65535] to be stored as DICOM",
            fix="round and clip the image first",
        )
    return array.astype(np.uint16)


def _series_dataset(image, rows_columns, uid, acq, study_uid, frame_uid, patient_id, sex, age):
    """One dataset with the attributes every image of the series shares."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from metcli._version import __version__

    ny, nx = rows_columns
    sx, sy, sz = image.GetSpacing()[:3]
    common = {
        "SOPClassUID": MR_IMAGE_STORAGE,
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": uid("series"),
        "FrameOfReferenceUID": frame_uid,
        "PositionReferenceIndicator": "",
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
        "StudyDescription": "metcli synthetic MR cohort",
        "Modality": "MR",
        "SeriesNumber": acq.series_number,
        "SeriesDescription": acq.series_description,
        "BodyPartExamined": "ABDOMEN",
        "PatientPosition": "HFS",
        "Manufacturer": "metcli",
        "ManufacturerModelName": "synth",
        "SoftwareVersions": __version__,
        "ImageType": list(acq.image_type),
        "ScanningSequence": acq.scanning_sequence,
        "SequenceVariant": list(acq.sequence_variant),
        "ScanOptions": "FS",
        "MRAcquisitionType": "2D",
        "SequenceName": acq.sequence_name,
        "EchoTime": _ds(acq.echo_time),
        "RepetitionTime": _ds(acq.repetition_time),
        "FlipAngle": _ds(acq.flip_angle),
        "MagneticFieldStrength": _ds(acq.field_strength),
        "AcquisitionNumber": 1,
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
    }
    if age is not None:
        common["PatientAge"] = f"{int(age):03d}Y"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    for keyword, value in common.items():
        setattr(ds, keyword, value)
    return ds


def _position(value: float) -> str:
    """A position (mm) to 0.1 micrometre: the same text whether the image comes from memory
    (float64) or from a NIfTI file (float32 origin)."""
    return _ds(round(float(value), 4))


def _set_diffusion(ds, b_value: float, direction) -> None:
    ds.DiffusionBValue = float(b_value)
    if b_value > 0 and float(np.linalg.norm(direction)) > 0:
        ds.DiffusionDirectionality = "DIRECTIONAL"
        ds.DiffusionGradientOrientation = [float(v) for v in direction]
    else:
        ds.DiffusionDirectionality = "NONE"
        if "DiffusionGradientOrientation" in ds:
            del ds.DiffusionGradientOrientation


def _write_images(
    ds,
    stored: np.ndarray,
    image,
    uid: Callable[..., str],
    acq: MRAcquisition,
    folder: Path,
    outputs: OutputSet,
) -> dict[Path, Path]:
    """One file an image through ``outputs``: ``ds`` with its per-image attributes replaced."""
    import pydicom

    major = int(pydicom.__version__.split(".")[0])
    ox, oy, oz = image.GetOrigin()[:3]
    sz = image.GetSpacing()[2]
    volumes, slices = stored.shape[:2]
    produced: dict[Path, Path] = {}
    for v in range(volumes):
        if acq.diffusion is not None:
            _set_diffusion(ds, *acq.diffusion[v])
        for k in range(slices):
            number = v * slices + k
            instance = uid("instance", str(number))
            ds.file_meta.MediaStorageSOPInstanceUID = instance
            ds.SOPInstanceUID = instance
            ds.InstanceNumber = number + 1
            ds.ImagePositionPatient = [_position(ox), _position(oy), _position(oz + k * sz)]
            ds.SliceLocation = _position(oz + k * sz)
            ds.PixelData = np.ascontiguousarray(stored[v, k]).astype("<u2").tobytes()
            final = folder / image_name(number)
            tmp = outputs.path(final)
            if major >= 3:
                pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
            else:  # pragma: no cover - pydicom 2.4
                ds.is_little_endian, ds.is_implicit_VR = True, False
                pydicom.dcmwrite(str(tmp), ds, write_like_original=False)
            produced[final] = tmp
    return produced
