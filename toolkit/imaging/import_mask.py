"""Importing manual segmentations into metcli's dseg, on the grid of the participant's CT.

A manual mask comes as a label image (NIfTI or NRRD), an RTSTRUCT or a DICOM-SEG.
:func:`import_mask` brings it onto the grid of the participant's CT in a raw
dataset and writes ``<seg_dir>/sub-<id>/[ses-<s>/]anat/<name>_dseg.nii.gz`` with
metcli's labels (0 background, 1 liver, 2 lesion; :mod:`metcli.imaging.labels`), its
provenance sidecar, ``dataset_description.json`` and ``dseg.tsv``.

Every format is matched to the CT in physical space, never by array index:

- **Label images** go through :func:`metcli.imaging.geometry.to_reference_grid`: the same
  grid, or flipped/permuted axes of it; anything else is a
  :class:`~metcli.core.errors.GeometryError` naming both files. Nothing is resampled.
- **RTSTRUCT** contours are rasterised by :func:`metcli.imaging.rtstruct.rasterize_rtstruct`
  on the slices they lie in (see :mod:`metcli.imaging.rtstruct` for the inclusion rule).
- **DICOM-SEG** segments are placed by an exact voxel correspondence
  (:mod:`metcli.imaging.dicom_seg`).

Which source labels become liver or lesion is chosen with a label map
(:mod:`metcli.imaging.mask_labels`). Without one, a label image holding only 0, 1
and 2 keeps 1 as liver and 2 as lesion, and ROI/segment names are read
case-insensitively. Where a voxel is both, lesion wins.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError, MaskError, UsageError
from metcli.imaging.dicom_seg import dicom_seg_segments, read_seg, segment_masks
from metcli.imaging.geometry import load_reference, reference_name, to_reference_grid
from metcli.imaging.labels import BACKGROUND, LABELS, LESION, LIVER, write_label_table
from metcli.imaging.mask_labels import MaskEntry, assign_labels, parse_label_map
from metcli.imaging.rtstruct import SLICE_TOLERANCE, rasterize_rois, read_rtstruct, rtstruct_rois
from metcli.io.bids import (
    Acquisition,
    clean_label,
    derivative_path,
    find_files,
    select_participants,
    sidecar_path,
)
from metcli.io.files import OutputSet, check_output_not_inside_input, read_image, write_image_to
from metcli.io.participants import participants_path, read_participants
from metcli.io.provenance import Step, write_dataset_description

log = logging.getLogger(__name__)

COMMAND = "import-mask"

FORMAT_LABEL_IMAGE = "label-image"
FORMAT_RTSTRUCT = "RTSTRUCT"
FORMAT_DICOM_SEG = "DICOM-SEG"

#: File name endings read as label images (with SimpleITK).
LABEL_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# ----------------------------------------------------------------------------- finding the mask
def _is_label_image_name(path: Path) -> bool:
    return path.name.lower().endswith(LABEL_IMAGE_SUFFIXES)


def _dicom_kind(path: Path) -> str | None:
    """``RTSTRUCT``, ``SEG`` or another modality for a DICOM file; None if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"]
        )
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError):
        return None
    return str(ds.get("Modality", "") or "unknown")


def find_mask_file(mask: str | Path) -> tuple[Path, str]:
    """The mask file and its format (:data:`FORMAT_LABEL_IMAGE`, ``RTSTRUCT``, ``DICOM-SEG``).

    ``mask`` may be the file or a folder holding exactly one mask file (a
    folder of DICOM files with one RTSTRUCT or SEG among them, for example).
    """
    mask = Path(mask)
    if mask.is_dir():
        candidates = []
        for path in sorted(p for p in mask.rglob("*") if p.is_file()):
            if _is_label_image_name(path):
                candidates.append((path, FORMAT_LABEL_IMAGE))
                continue
            kind = _dicom_kind(path)
            if kind == "RTSTRUCT":
                candidates.append((path, FORMAT_RTSTRUCT))
            elif kind == "SEG":
                candidates.append((path, FORMAT_DICOM_SEG))
        if not candidates:
            raise MaskError(
                "the folder holds no RTSTRUCT, DICOM-SEG, NIfTI or NRRD file",
                path=mask,
                fix="give the mask file itself",
            )
        if len(candidates) > 1:
            shown = ", ".join(str(p.relative_to(mask)) for p, _ in candidates[:10])
            raise MaskError(
                f"the folder holds {len(candidates)} mask files ({shown}"
                f"{' ...' if len(candidates) > 10 else ''})",
                path=mask,
                fix="give the mask file itself",
            )
        return candidates[0]
    if not mask.is_file():
        raise InputError("mask not found", path=mask, fix="check the path")
    if _is_label_image_name(mask):
        return mask, FORMAT_LABEL_IMAGE
    kind = _dicom_kind(mask)
    if kind == "RTSTRUCT":
        return mask, FORMAT_RTSTRUCT
    if kind == "SEG":
        return mask, FORMAT_DICOM_SEG
    if kind is not None:
        raise MaskError(
            f"a DICOM {kind} file is not a mask (an RTSTRUCT or a DICOM-SEG is needed)",
            path=mask,
            fix="give the RTSTRUCT or DICOM-SEG file of the segmentation",
        )
    raise MaskError(
        "not a NIfTI, NRRD, RTSTRUCT or DICOM-SEG file",
        path=mask,
        fix="give a label image (.nii.gz, .nii, .nrrd) or a DICOM RTSTRUCT or SEG file",
    )


# ----------------------------------------------------------------------------- label images
def _label_image_mapping(
    values: np.ndarray, label_map: Mapping[str, int] | None, path: Path
) -> dict[int, int]:
    shown = ", ".join(str(int(v)) for v in values[:20]) + (" ..." if len(values) > 20 else "")
    if label_map is None:
        if set(int(v) for v in values) <= {BACKGROUND, LIVER, LESION}:
            return {int(v): int(v) for v in values if v != BACKGROUND}
        raise MaskError(
            f"the label image holds values other than 0, 1 and 2 ({shown})",
            path=path,
            fix="say which values are liver and lesion, for example --label-map '5=liver,2=lesion'",
        )
    mapping: dict[int, int] = {}
    present = set(int(v) for v in values)
    for key, label in label_map.items():
        if not re.fullmatch(r"-?\d+", key.strip()):
            raise UsageError(
                f"--label-map source {key!r} is not a number; a label image's "
                "sources are its voxel values",
                fix="write it as --label-map '5=liver'",
            )
        value = int(key)
        if value not in present:
            raise MaskError(
                f"--label-map names value {value}, which the label image does not hold "
                f"(it holds {shown})",
                path=path,
                fix="use one of these values in --label-map",
            )
        mapping[value] = label
    return mapping


def _label_image_to_dseg(
    path: Path, reference, reference_path: str, label_map: Mapping[str, int] | None
) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    image = read_image(path, what="mask")
    on_grid = to_reference_grid(image, reference, image_path=path, reference_path=reference_path)
    array = sitk.GetArrayFromImage(on_grid)
    values = np.unique(array)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise MaskError(
            "the mask holds non-integer values; a label image is needed",
            path=path,
            fix="give a label image (integer voxel values)",
        )
    values = values.astype(np.int64)
    mapping = _label_image_mapping(values, label_map, path)
    dseg = np.zeros(array.shape, dtype=np.uint8)
    for label in (LIVER, LESION):  # lesion last: lesion wins
        sources = [v for v, target in mapping.items() if target == label]
        if sources:
            dseg[np.isin(array, sources)] = label
    return dseg, {str(v): LABELS[t] for v, t in sorted(mapping.items())}


def _masks_to_dseg(masks: Mapping[str, np.ndarray], labels: Mapping[str, int], shape) -> np.ndarray:
    dseg = np.zeros(shape, dtype=np.uint8)
    for label in (LIVER, LESION):  # lesion last: lesion wins
        for name, mask in masks.items():
            if labels[name] == label:
                dseg[mask] = label
    return dseg


def mask_to_dseg(
    mask_path: str | Path,
    mask_format: str,
    reference_image,
    *,
    reference_path: str | Path | None = None,
    label_map: Mapping[str, int] | None = None,
    roi_names: Sequence[str] | None = None,
    slice_tolerance: float = SLICE_TOLERANCE,
) -> tuple[np.ndarray, dict[str, str]]:
    """A metcli dseg array ([z, y, x], uint8) of a mask on the reference's grid.

    Returns the array and the applied mapping ``{source: 'liver' | 'lesion'}``.
    """
    path = Path(mask_path)
    reference = load_reference(reference_image)
    shape = reference.GetSize()[::-1]
    if mask_format == FORMAT_LABEL_IMAGE and roi_names:
        raise UsageError(
            "--roi-name applies to RTSTRUCT and DICOM-SEG masks, not to label "
            f"images ({path.name})",
            fix="use --label-map VALUE=liver|lesion",
        )
    ref_name = reference_name(reference_image, reference_path)
    if mask_format == FORMAT_LABEL_IMAGE:
        return _label_image_to_dseg(path, reference, ref_name, label_map)
    if mask_format == FORMAT_RTSTRUCT:
        ds = read_rtstruct(path)
        entries = [MaskEntry(n, name) for n, name in rtstruct_rois(ds)]
        assigned = assign_labels(entries, label_map, roi_names, path=path, kind="ROI")
        chosen = sorted(assigned, key=lambda e: e.number)
        arrays = rasterize_rois(
            ds, chosen, reference, path=path, ref_name=ref_name, slice_tolerance=slice_tolerance
        )
    elif mask_format == FORMAT_DICOM_SEG:
        seg = read_seg(path)
        entries = [MaskEntry(n, name) for n, name in dicom_seg_segments(seg)]
        assigned = assign_labels(entries, label_map, roi_names, path=path, kind="segment")
        chosen = sorted(assigned, key=lambda e: e.number)
        arrays = segment_masks(seg, chosen, reference, path=path, ref_name=ref_name)
    else:
        raise UsageError(f"unknown mask format {mask_format!r}")
    masks = {}
    labels = {}
    for entry, array in zip(chosen, arrays, strict=True):
        key = entry.name if entry.name not in masks else f"{entry.name} #{entry.number}"
        masks[key] = array
        labels[key] = assigned[entry]
    for name, mask in masks.items():
        if not mask.any():
            log.warning("%s: %r has no voxels on the image's grid", path.name, name)
    return _masks_to_dseg(masks, labels, shape), {n: LABELS[labels[n]] for n in masks}


# ----------------------------------------------------------------------------- the command
def _find_ct(raw_dir: Path, participant: str, session: str | None, phase: str | None):
    found = find_files(
        raw_dir, suffix="ct", participants=[participant], phases=[phase] if phase else None
    )
    if session:
        found = [a for a in found if a.entities.ses == session]
    wanted = " ".join(
        x
        for x in (f"sub-{participant}", session and f"ses-{session}", phase and f"ce-{phase}")
        if x
    )
    if not found:
        raise InputError(
            f"no CT image of {wanted} (looked for sub-{participant}/[ses-*/]anat/"
            f"sub-{participant}*_ct.nii.gz)",
            path=raw_dir,
            fix="import the CT first (metcli import-dicom), or check --session and --phase",
        )
    if len(found) > 1:
        shown = ", ".join(a.relpath.as_posix() for a in found)
        raise UsageError(
            f"{wanted} has {len(found)} CT images in {raw_dir} ({shown})",
            fix="choose one with --session and/or --phase",
        )
    return found[0]


@dataclass
class _MaskImport:
    """The checked inputs of one import-mask run."""

    mask: Path
    raw_dir: Path
    seg_dir: Path
    acquisition: Acquisition  # the participant's CT
    mask_file: Path
    mask_format: str
    label_map: dict[str, int] | None
    roi_names: list[str] | None
    slice_tolerance: float

    def settings(self) -> dict[str, Any]:
        return {
            "label_map": None
            if self.label_map is None
            else {k: LABELS[v] for k, v in self.label_map.items()},
            "roi_names": self.roi_names,
            "slice_tolerance": float(self.slice_tolerance),
        }


def import_mask(
    mask: str | Path,
    raw_dir: str | Path,
    seg_dir: str | Path,
    *,
    participant: str,
    session: str | None = None,
    phase: str | None = None,
    label_map: str | Mapping[str, Any] | Iterable[str] | None = None,
    roi_names: Sequence[str] | None = None,
    overwrite: bool = False,
    slice_tolerance: float = SLICE_TOLERANCE,
) -> Path:
    """Import a manual segmentation as the participant's dseg on its CT's grid.

    Args:
        mask: a NIfTI/NRRD label image, an RTSTRUCT or a DICOM-SEG file (or a
            folder holding exactly one of them).
        raw_dir: the raw dataset (with ``participants.tsv``) holding the CT.
        seg_dir: the segmentation derivative to write.
        participant: the participant label (with or without ``sub-``).
        session, phase: choose the CT when the participant has several.
        label_map: which source labels are liver and lesion
            (:func:`metcli.imaging.mask_labels.parse_label_map`).
        roi_names: only import these ROIs/segments (RTSTRUCT, DICOM-SEG).
        overwrite: redo the output even if its sidecar says it is done.
        slice_tolerance: see :data:`metcli.imaging.rtstruct.SLICE_TOLERANCE`.

    Returns:
        The path of the ``_dseg.nii.gz`` written (or found done).
    """
    run = _check_inputs(
        mask,
        raw_dir,
        seg_dir,
        participant=participant,
        session=session,
        phase=phase,
        label_map=label_map,
        roi_names=roi_names,
        slice_tolerance=slice_tolerance,
    )
    step = Step(
        COMMAND,
        run.seg_dir,
        {"raw": run.raw_dir, "mask": run.mask if run.mask.is_dir() else run.mask.parent},
        run.settings(),
    )
    out_image = derivative_path(
        run.seg_dir, run.acquisition.entities, suffix="dseg", extension=".nii.gz"
    )
    sidecar = sidecar_path(out_image)
    inputs = step.inputs([run.acquisition.path, run.mask_file])
    if not overwrite and step.is_done(sidecar, inputs):
        log.info(
            "%s: already done with the same inputs and settings; skipped (--overwrite redoes it)",
            out_image.name,
        )
        _write_dataset_files(run.seg_dir, run.raw_dir)
        return out_image

    image, applied, counts = _dseg_image(run)
    _write_dataset_files(run.seg_dir, run.raw_dir)
    with OutputSet() as outputs:
        tmp_image = outputs.path(out_image)
        write_image_to(image, tmp_image)
        step.write_sidecar(
            outputs,
            sidecar,
            inputs,
            {out_image: tmp_image},
            extra={"MaskFormat": run.mask_format, "LabelMapping": applied, "VoxelCounts": counts},
        )
    log.info(
        "%s: %s mask imported (%s)",
        out_image.name,
        run.mask_format,
        ", ".join(f"{k} {v} voxels" for k, v in counts.items()),
    )
    return out_image


def _check_inputs(
    mask, raw_dir, seg_dir, *, participant, session, phase, label_map, roi_names, slice_tolerance
) -> _MaskImport:
    """Check the arguments, find the CT and the mask file; raise before anything is written."""
    label = clean_label(participant)
    session = None if session is None else clean_label(session, entity="ses", option="--session")
    phase = None if phase is None else clean_label(phase, entity="ce", option="--phase")
    parsed_map = parse_label_map(label_map)
    roi_names = [str(r) for r in roi_names] if roi_names else None
    if not 0 < slice_tolerance <= 0.5:
        raise UsageError(f"slice tolerance {slice_tolerance} must lie in (0, 0.5] slice spacings")
    mask, raw_dir, seg_dir = Path(mask), Path(raw_dir), Path(seg_dir)
    if not mask.exists():
        raise InputError("mask not found", path=mask, fix="check the path")
    if not raw_dir.is_dir():
        raise InputError("raw dataset folder not found", path=raw_dir, fix="check the path")
    rows = read_participants(raw_dir)
    select_participants(
        [r["participant_id"][4:] for r in rows], [label], where=participants_path(raw_dir)
    )
    check_output_not_inside_input(seg_dir, [raw_dir])
    acquisition = _find_ct(raw_dir, label, session, phase)
    mask_file, mask_format = find_mask_file(mask)
    if mask_format == FORMAT_LABEL_IMAGE and roi_names:
        raise UsageError(
            "--roi-name applies to RTSTRUCT and DICOM-SEG masks, not to label "
            f"images ({mask_file.name})",
            fix="use --label-map VALUE=liver|lesion",
        )
    return _MaskImport(
        mask=mask,
        raw_dir=raw_dir,
        seg_dir=seg_dir,
        acquisition=acquisition,
        mask_file=mask_file,
        mask_format=mask_format,
        label_map=parsed_map,
        roi_names=roi_names,
        slice_tolerance=slice_tolerance,
    )


def _dseg_image(run: _MaskImport) -> tuple[Any, dict[str, str], dict[str, int]]:
    """(dseg image on the CT's grid, applied label mapping, voxel counts of liver and lesion)."""
    import SimpleITK as sitk

    acquisition = run.acquisition
    reference = read_image(acquisition.path, what="CT image")
    dseg, applied = mask_to_dseg(
        run.mask_file,
        run.mask_format,
        reference,
        reference_path=acquisition.path,
        label_map=run.label_map,
        roi_names=run.roi_names,
        slice_tolerance=run.slice_tolerance,
    )
    counts = {LABELS[v]: int(np.count_nonzero(dseg == v)) for v in (LIVER, LESION)}
    if not any(counts.values()):
        raise MaskError(
            f"the imported mask has no liver or lesion voxels on the CT grid of "
            f"{acquisition.relpath.as_posix()} (mapping {applied or 'none'})",
            path=run.mask_file,
            fix="check --label-map/--roi-name and that the mask belongs to this CT",
        )
    image = sitk.GetImageFromArray(dseg)
    image.CopyInformation(reference)
    return image, applied, counts


def _write_dataset_files(seg_dir: Path, raw_dir: Path) -> None:
    write_dataset_description(
        seg_dir,
        name="metcli manual segmentations",
        sources={"raw": raw_dir},
        description="liver and lesion segmentation (0 background, 1 liver, 2 lesion)",
    )
    label_table = seg_dir / "dseg.tsv"
    if not label_table.is_file():
        write_label_table(seg_dir)
