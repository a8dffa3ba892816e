"""Write a label image as a DICOM Segmentation (DICOM-SEG) that refers to its CT series.

``segment --dicom-seg`` and ``split-lesions --dicom-seg`` call :func:`write_dicom_seg`
with the label image (on the CT's grid, or flipped or permuted axes of it) and the
CT's ``DicomSource`` record (:mod:`metcli.imaging.dicom.source`, kept by
``import-dicom``). The DICOM files of the CT are not needed.

- **References.** The SEG has the CT's StudyInstanceUID and FrameOfReferenceUID, and
  names the CT series and its slices (ReferencedSeriesSequence, and per frame the
  source image), so that viewers and PACS attach it to the CT.
- **Geometry.** Frame i of the label volume is the slice of DicomSource instance i:
  every pixel of every instance (ImagePositionPatient, ImageOrientationPatient,
  PixelSpacing) is located in the label image in physical space, never by array
  index; the label image must hold exactly those voxels (within the tolerance of the
  import's own check), else :class:`~metcli.core.errors.GeometryError`.
- **Segments.** One segment per :class:`SegmentSpec` (label value, label text, kind:
  liver or lesion), numbered 1..N in the order given; values of no segment are
  background. BINARY segmentation (1 bit), empty frames left out, Explicit VR Little
  Endian. Liver: Anatomical Structure / Liver (SNOMED CT 123037004 / 10200004);
  lesion: Morphologically Altered Structure / Lesion (49755003 / 52988006) in the
  liver; a lesion of split-lesions also carries its name as TrackingID.
- **Patient and study modules.** Empty: no patient name, ID, birth date or sex, no
  study date, time, ID or accession number (metcli keeps none); the study and series
  are found by their UIDs. A PACS that matches on PatientID needs it set before
  sending (e.g. ``dcmodify -i "(0010,0020)=<id>"``). The creation date and time are the
  only dates in the file (DICOM requires them).
- **UIDs** of the SEG series and instance are derived from the source series, the
  command and the label content, so the same labels give the same UIDs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from metcli.core.errors import GeometryError, InputError, UsageError
from metcli.imaging.dicom.stack import (
    INPLANE_TOLERANCE_FRACTION,
    POSITION_TOLERANCE_FRACTION,
    POSITION_TOLERANCE_MM,
)

log = logging.getLogger(__name__)

#: (category, type) codes per segment kind: (value, scheme, meaning) each.
SEGMENT_CODES = {
    "liver": (("123037004", "SCT", "Anatomical Structure"), ("10200004", "SCT", "Liver")),
    "lesion": (
        ("49755003", "SCT", "Morphologically Altered Structure"),
        ("52988006", "SCT", "Lesion"),
    ),
}
_LIVER = ("10200004", "SCT", "Liver")
_UID_ENTROPY = "metcli dicom-seg"


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: the label ``value`` in the image, its ``label`` (SegmentLabel), its
    ``kind`` (``liver`` or ``lesion``) and an optional TrackingID."""

    value: int
    label: str
    kind: str
    tracking_id: str | None = None


def dseg_segments() -> list[SegmentSpec]:
    """The segments of metcli's dseg: liver (1) and lesion (2)."""
    return [SegmentSpec(1, "liver", "liver"), SegmentSpec(2, "lesion", "lesion")]


def lesion_segments(rows: Iterable[Mapping[str, Any]]) -> list[SegmentSpec]:
    """One segment per kept lesion of a lesion table (rows with ``index``, ``name``,
    ``kept``), labelled and tracked by the lesion's name, in the table's order."""
    return [
        SegmentSpec(int(row["index"]), str(row["name"]), "lesion", tracking_id=str(row["name"]))
        for row in rows
        if row.get("kept") in (True, "true")
    ]


# ----------------------------------------------------------------------------- geometry
def _tolerance_mm(source: Mapping[str, Any], step: float) -> float:
    """The largest distance between a slice's position and its voxel (the import's rule)."""
    pixel = min(float(v) for v in source["PixelSpacing"])
    return max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * step) + max(
        INPLANE_TOLERANCE_FRACTION * pixel, POSITION_TOLERANCE_MM
    )


def _unit_axis(vector: np.ndarray, what: str, where) -> tuple[int, int]:
    """(axis, sign) of an index-space step that must be one voxel along one axis."""
    axis = int(np.argmax(np.abs(vector)))
    sign = int(np.sign(vector[axis]))
    expected = np.zeros(3)
    expected[axis] = sign
    if sign == 0 or np.max(np.abs(vector - expected)) > 1e-3:
        raise GeometryError(
            f"one {what} of the CT series is not one voxel along an axis of the label "
            f"image (index step {np.round(vector, 4).tolist()}): the image is not on the "
            "series' grid",
            path=where,
            fix="give a label image on the CT's own grid (as segment and split-lesions write)",
        )
    return axis, sign


def source_frames(image, source: Mapping[str, Any], *, where=None) -> np.ndarray:
    """The label values of ``image`` at every pixel of every DicomSource instance:
    an array (instances, rows, columns), frame i being instance i, found in physical
    space. :class:`GeometryError` unless the image holds exactly those voxels."""
    import SimpleITK as sitk

    rows, cols = int(source["Rows"]), int(source["Columns"])
    row_spacing, col_spacing = (float(v) for v in source["PixelSpacing"])
    orientation = np.asarray(source["ImageOrientationPatient"], dtype=float)
    affine = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(
        image.GetSpacing()
    )
    inverse = np.linalg.inv(affine)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    down = inverse @ (orientation[3:] * row_spacing)  # one frame row
    across = inverse @ (orientation[:3] * col_spacing)  # one frame column
    axis_r, sign_r = _unit_axis(down, "row step", where)
    axis_c, sign_c = _unit_axis(across, "column step", where)
    if axis_r == axis_c:
        raise GeometryError(
            "the CT series' rows and columns run along one axis of the label image",
            path=where,
            fix="give a label image on the CT's own grid (as segment and split-lesions write)",
        )
    size = np.asarray(image.GetSize())
    positions = np.asarray([i["ImagePositionPatient"] for i in source["Instances"]], float)
    starts = (inverse @ (positions - origin).T).T
    nearest = np.rint(starts)
    error = np.linalg.norm((affine @ (starts - nearest).T).T, axis=1)
    limit = _tolerance_mm(source, float(image.GetSpacing()[3 - axis_r - axis_c]))
    worst = int(np.argmax(error))
    if error[worst] > limit:
        raise GeometryError(
            f"the label image is not on the CT series' grid: slice {worst + 1} of the series "
            f"lies {error[worst]:.3g} mm from the nearest voxel (at most {limit:.3g} mm)",
            path=where,
            fix="give a label image on the CT's own grid (as segment and split-lesions write)",
        )
    _check_cover(nearest.astype(int), size, (axis_r, sign_r, rows), (axis_c, sign_c, cols), where)
    volume = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # [i, j, k]
    r, c = np.arange(rows), np.arange(cols)
    frames = np.empty((len(nearest), rows, cols), dtype=volume.dtype)
    for n, start in enumerate(nearest.astype(int)):
        index = [np.full((rows, cols), start[a], dtype=np.intp) for a in range(3)]
        index[axis_r] = index[axis_r] + sign_r * r[:, None]
        index[axis_c] = index[axis_c] + sign_c * c[None, :]
        frames[n] = volume[index[0], index[1], index[2]]
    return frames


def _check_cover(starts: np.ndarray, size: np.ndarray, row_axis, col_axis, where) -> None:
    """Every frame lies inside the image, and together they hold each voxel once."""
    (axis_r, sign_r, rows), (axis_c, sign_c, cols) = row_axis, col_axis
    axis_k = 3 - axis_r - axis_c
    problems = []
    if size[axis_r] != rows or size[axis_c] != cols:
        problems.append(
            f"frames of {rows}x{cols} pixels vs {size[axis_r]}x{size[axis_c]} voxels in plane"
        )
    if len(set(starts[:, axis_k].tolist())) != len(starts) or len(starts) != size[axis_k]:
        problems.append(f"{len(starts)} slices vs {size[axis_k]} voxels along the slice axis")
    ends_r = starts[:, axis_r] + sign_r * (rows - 1)
    ends_c = starts[:, axis_c] + sign_c * (cols - 1)
    inside = (starts >= 0).all() and (starts < size).all()
    inside = inside and (0 <= ends_r).all() and (ends_r < size[axis_r]).all()
    inside = inside and (0 <= ends_c).all() and (ends_c < size[axis_c]).all()
    if not inside:
        problems.append("slices of the series lie outside the image")
    if problems:
        raise GeometryError(
            "the label image is not on the CT series' grid (" + "; ".join(problems) + ")",
            path=where,
            fix="give a label image on the CT's own grid (as segment and split-lesions write)",
        )


# ----------------------------------------------------------------------------- writing
#: Patient and study attributes of the source images: empty (metcli keeps none).
_EMPTY_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def source_datasets(source: Mapping[str, Any]) -> list:
    """Minimal pydicom datasets of the source instances, from DicomSource alone: what
    highdicom reads of a source image (UIDs, modality, geometry), the patient and study
    identity attributes empty."""
    from pydicom.dataset import Dataset

    shared = {
        "StudyInstanceUID": source["StudyInstanceUID"],
        "SeriesInstanceUID": source["SeriesInstanceUID"],
        "FrameOfReferenceUID": source["FrameOfReferenceUID"],
        "Modality": source["Modality"],
        "Rows": int(source["Rows"]),
        "Columns": int(source["Columns"]),
        "PixelSpacing": [_ds(v) for v in source["PixelSpacing"]],
        "ImageOrientationPatient": [_ds(v) for v in source["ImageOrientationPatient"]],
    }
    if "SliceThickness" in source:
        shared["SliceThickness"] = _ds(source["SliceThickness"])
    datasets = []
    for instance in source["Instances"]:
        ds = Dataset()
        for keyword in _EMPTY_IDENTITY:
            setattr(ds, keyword, "")
        for keyword, value in shared.items():
            setattr(ds, keyword, value)
        ds.SOPClassUID = instance["SOPClassUID"]
        ds.SOPInstanceUID = instance["SOPInstanceUID"]
        ds.ImagePositionPatient = [_ds(v) for v in instance["ImagePositionPatient"]]
        datasets.append(ds)
    return datasets


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    text = format(float(value), ".10g")
    return "0" if text in ("-0", "0") else text


def _code(triple):
    from pydicom.sr.coding import Code

    return Code(*triple)


def _descriptions(segments: Sequence[SegmentSpec], algorithm: Mapping[str, str]) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    family = getattr(codes.cid7162, algorithm.get("family", "ArtificialIntelligence"))
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm["name"], family=family, version=algorithm["version"]
    )
    kind = hd.seg.SegmentAlgorithmTypeValues[algorithm.get("type", "AUTOMATIC")]
    out = []
    for number, spec in enumerate(segments, start=1):
        category, concept = SEGMENT_CODES[spec.kind]
        tracking = {}
        if spec.tracking_id:
            tracking = {
                "tracking_id": spec.tracking_id,
                "tracking_uid": _uid(algorithm["uid_seed"], "tracking", spec.tracking_id),
            }
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=spec.label,
                segmented_property_category=_code(category),
                segmented_property_type=_code(concept),
                algorithm_type=kind,
                algorithm_identification=identification,
                anatomic_regions=[_code(_LIVER)] if spec.kind == "lesion" else None,
                **tracking,
            )
        )
    return out


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[_UID_ENTROPY, *parts])


def _segment_numbers(frames: np.ndarray, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """Label values -> segment numbers 1..N (other values: background)."""
    values = [spec.value for spec in segments]
    if len(set(values)) != len(values) or any(v <= 0 for v in values):
        raise UsageError(
            f"segment label values must be distinct and positive, got {values}",
            fix="give each segment its own label value (1 or more)",
        )
    if frames.dtype.kind not in "iu":
        raise UsageError(
            f"a label image holds whole numbers, not {frames.dtype}",
            fix="give a label image (dseg or lesion map) of an integer pixel type",
        )
    frames = np.clip(frames, 0, None)  # negative values are no segment's
    top = max(int(frames.max()) if frames.size else 0, max(values))
    table = np.zeros(top + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    for number, value in enumerate(values, start=1):
        table[value] = number
    return table[frames]


def write_dicom_seg(
    image,
    source: Mapping[str, Any],
    segments: Sequence[SegmentSpec],
    target: Path,
    *,
    algorithm: Mapping[str, str],
    series_description: str,
    series_number: int,
    where=None,
) -> dict[str, Any]:
    """Write ``image`` (a label image) as a DICOM-SEG file ``target`` that refers to the
    series of ``source`` (a DicomSource record); return what the sidecar records.

    ``segments``: the segments, numbered 1..N in this order (at least one).
    ``algorithm``: ``name``, ``version``, optional ``family`` (a CID 7162 keyword,
    default ArtificialIntelligence) and ``type`` (AUTOMATIC, SEMIAUTOMATIC), and
    ``uid_seed`` (text that makes the SEG's UIDs differ between commands).
    """
    import highdicom as hd

    if not segments:
        raise UsageError(
            "a DICOM-SEG needs one segment at least",
            fix="write no DICOM-SEG for a label image without segments",
        )
    frames = source_frames(image, source, where=where)
    numbers = _segment_numbers(frames, segments)
    digest = hashlib.sha256(numbers.tobytes()).hexdigest()
    seed = [source["SeriesInstanceUID"], algorithm["uid_seed"], digest]
    seg = hd.seg.Segmentation(
        source_images=source_datasets(source),
        pixel_array=numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(segments, {**algorithm, "uid_seed": "/".join(seed)}),
        series_instance_uid=_uid(*seed, "series"),
        series_number=int(series_number),
        sop_instance_uid=_uid(*seed, "instance"),
        instance_number=1,
        manufacturer="metcli",
        manufacturer_model_name=algorithm["name"],
        software_versions=algorithm["version"],
        device_serial_number="n/a",
        series_description=series_description,
        content_label="METCLI",
        content_description=series_description[:64],
    )
    seg.save_as(str(target), enforce_file_format=True)
    present = {int(v) for v in np.unique(numbers)} - {0}
    log.debug("DICOM-SEG: %d segment(s), %d frame(s)", len(segments), int(seg.NumberOfFrames))
    return {
        "Segments": [
            {"SegmentNumber": n, "SegmentLabel": spec.label, "LabelValue": spec.value}
            for n, spec in enumerate(segments, start=1)
        ],
        "EmptySegments": [spec.label for n, spec in enumerate(segments, 1) if n not in present],
        "Frames": int(seg.NumberOfFrames),
    }


# ----------------------------------------------------------------------------- commands
#: SeriesNumber of the DICOM-SEG series of segment and split-lesions (--dicom-seg).
SERIES_NUMBERS = {"segment": 901, "split-lesions": 902}
#: What a split-lesions sidecar records when there is no kept lesion (no DICOM-SEG).
NO_LESION = "not written: no kept lesion (a DICOM-SEG needs one segment at least)"


def write_dseg_seg(dseg, source, target: Path, *, model: str, model_sha256: str, where=None):
    """``segment --dicom-seg``: the dseg's liver and lesion as a DICOM-SEG."""
    from metcli._version import __version__

    return write_dicom_seg(
        dseg,
        source,
        dseg_segments(),
        target,
        algorithm={
            "name": f"metcli segment {model}"[:64],
            "version": __version__,
            "uid_seed": f"segment {model_sha256}",
        },
        series_description="metcli liver and lesion segmentation",
        series_number=SERIES_NUMBERS["segment"],
        where=where,
    )


def write_lesion_seg(lesion_map, rows, source, target: Path, *, made_by: str | None, where=None):
    """``split-lesions --dicom-seg``: one segment per kept lesion of the lesion table
    ``rows``; the algorithm is AUTOMATIC when the segmentation was ``made_by`` segment,
    else SEMIAUTOMATIC (a manual mask split by metcli). None without a kept lesion
    (nothing written)."""
    from metcli._version import __version__

    segments = lesion_segments(rows)
    if not segments:
        return None
    automatic = made_by == "segment"
    return write_dicom_seg(
        lesion_map,
        source,
        segments,
        target,
        algorithm={
            "name": "metcli split-lesions",
            "version": __version__,
            "family": "ArtificialIntelligence" if automatic else "ManualProcessing",
            "type": "AUTOMATIC" if automatic else "SEMIAUTOMATIC",
            "uid_seed": "split-lesions",
        },
        series_description="metcli lesions (split-lesions)",
        series_number=SERIES_NUMBERS["split-lesions"],
        where=where,
    )


# ----------------------------------------------------------------------------- the CT
def linked_raw_dir(seg_dir: Path) -> Path:
    """The raw dataset a derivatives folder was made from (its dataset_description's
    ``DatasetLinks`` ``raw``, as segment and import-mask write it)."""
    from metcli.io.files import read_json

    seg_dir = Path(seg_dir)
    description = seg_dir / "dataset_description.json"
    fix = (
        "give a SEG_DIR written by `metcli segment` or `metcli import-mask`, with the raw "
        "dataset where it was when they ran"
    )
    links = read_json(description).get("DatasetLinks", {}) if description.is_file() else {}
    link = links.get("raw") if isinstance(links, dict) else None
    if not isinstance(link, str) or not link:
        raise InputError(
            "the folder does not name its raw dataset (dataset_description.json, "
            "DatasetLinks 'raw'): --dicom-seg needs the CTs' DicomSource",
            path=description,
            fix=fix,
        )
    raw_dir = Path(os.path.normpath(seg_dir / link))
    if not raw_dir.is_dir():
        raise InputError(
            f"the raw dataset {link!r} named by dataset_description.json is not there",
            path=description,
            fix=fix,
        )
    return raw_dir


def source_ct_path(raw_dir: Path, entities) -> Path:
    """The CT of a derivative with these entities (same participant, session, phase)."""
    from metcli.io.bids import CT_SUFFIX

    ct = entities.with_(desc=None, lesion=None, suffix=CT_SUFFIX, extension=".nii.gz")
    return Path(raw_dir) / ct.relpath()
