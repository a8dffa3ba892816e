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
  (:mod:`metcli.imaging.dicom_seg`); FRACTIONAL segments are cut at a threshold
  (default :data:`metcli.imaging.dicom_seg.FRACTIONAL_THRESHOLD`), recorded in the
  sidecar with the SegmentationType.

A DICOM mask is also checked against the CT's DICOM origin (when import-dicom wrote
the CT): its frame of reference and referenced series, and an RTSTRUCT's contours
outside the CT (:mod:`metcli.imaging.dicom_checks`). The sidecar records the checks
under ``DicomChecks``; ``strict`` turns a frame of reference that differs, and
contours outside the CT, into errors.

Which source labels become liver or lesion is chosen with a label map
(:mod:`metcli.imaging.mask_labels`). Without one, a label image holding only 0, 1
and 2 keeps 1 as liver and 2 as lesion, and ROI/segment names are read
case-insensitively. Where a voxel is both, lesion wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError, MaskError, UsageError
from metcli.imaging.dicom_checks import (
    CtOrigin,
    check_strict,
    compare_uids,
    contour_report,
    ct_dicom_origin,
    warn_mismatches,
)
from metcli.imaging.dicom_seg import (
    FRACTIONAL_THRESHOLD,
    dicom_seg_segments,
    read_seg,
    segment_masks,
    segmentation_type,
)
from metcli.imaging.geometry import load_reference, reference_name
from metcli.imaging.label_image import label_image_to_dseg
from metcli.imaging.labels import LABELS, LESION, LIVER, write_label_table
from metcli.imaging.mask_files import (
    FORMAT_DICOM_SEG,
    FORMAT_LABEL_IMAGE,
    FORMAT_RTSTRUCT,
    find_mask_file,
)
from metcli.imaging.mask_labels import MaskEntry, assign_labels, parse_label_map
from metcli.imaging.rtstruct import (
    SLICE_TOLERANCE,
    ContourCounts,
    rasterize_rois,
    read_rtstruct,
    rtstruct_rois,
)
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


# ----------------------------------------------------------------------------- conversion
def _masks_to_dseg(masks: Mapping[str, np.ndarray], labels: Mapping[str, int], shape) -> np.ndarray:
    dseg = np.zeros(shape, dtype=np.uint8)
    for label in (LIVER, LESION):  # lesion last: lesion wins
        for name, mask in masks.items():
            if labels[name] == label:
                dseg[mask] = label
    return dseg


@dataclass
class _Converted:
    """A mask on the CT's grid, and what the sidecar says about its conversion."""

    dseg: np.ndarray
    applied: dict[str, str]  # source -> 'liver' | 'lesion'
    details: dict[str, Any] = field(default_factory=dict)  # SegmentationType, threshold
    contours: dict[str, ContourCounts] = field(default_factory=dict)  # RTSTRUCT, per ROI
    empty: list[str] = field(default_factory=list)  # sources without voxels on the grid


def _convert_mask(
    path: Path,
    mask_format: str,
    reference,
    ref_name: str,
    *,
    label_map: Mapping[str, int] | None,
    roi_names: Sequence[str] | None,
    slice_tolerance: float,
    fractional_threshold: float,
    warn: bool = True,
) -> _Converted:
    """The dseg of a mask on the reference's grid (see :func:`mask_to_dseg`)."""
    if mask_format == FORMAT_LABEL_IMAGE:
        return _Converted(*label_image_to_dseg(path, reference, ref_name, label_map))
    details: dict[str, Any] = {}
    contours: dict[str, ContourCounts] = {}
    if mask_format == FORMAT_RTSTRUCT:
        ds = read_rtstruct(path)
        entries = [MaskEntry(n, name) for n, name in rtstruct_rois(ds)]
        assigned = assign_labels(entries, label_map, roi_names, path=path, kind="ROI")
        chosen = sorted(assigned, key=lambda e: e.number)
        arrays = rasterize_rois(
            ds,
            chosen,
            reference,
            path=path,
            ref_name=ref_name,
            slice_tolerance=slice_tolerance,
            counts=contours,
            warn=warn,
        )
    elif mask_format == FORMAT_DICOM_SEG:
        seg = read_seg(path)
        details = segmentation_type(seg)
        if details["SegmentationType"] == "FRACTIONAL":
            details["FractionalThreshold"] = float(fractional_threshold)
        entries = [MaskEntry(n, name) for n, name in dicom_seg_segments(seg)]
        assigned = assign_labels(entries, label_map, roi_names, path=path, kind="segment")
        chosen = sorted(assigned, key=lambda e: e.number)
        arrays = segment_masks(
            seg, chosen, reference, path=path, ref_name=ref_name, threshold=fractional_threshold
        )
    else:
        raise UsageError(f"unknown mask format {mask_format!r}")
    masks = {}
    labels = {}
    for entry, array in zip(chosen, arrays, strict=True):
        key = entry.name if entry.name not in masks else f"{entry.name} #{entry.number}"
        masks[key] = array
        labels[key] = assigned[entry]
    return _Converted(
        _masks_to_dseg(masks, labels, reference.GetSize()[::-1]),
        {n: LABELS[labels[n]] for n in masks},
        details,
        contours,
        [name for name, mask in masks.items() if not mask.any()],
    )


def _warn_empty(path: Path, converted: _Converted) -> None:
    for name in converted.empty:
        log.warning("%s: %r has no voxels on the image's grid", path.name, name)


def mask_to_dseg(
    mask_path: str | Path,
    mask_format: str,
    reference_image,
    *,
    reference_path: str | Path | None = None,
    label_map: Mapping[str, int] | None = None,
    roi_names: Sequence[str] | None = None,
    slice_tolerance: float = SLICE_TOLERANCE,
    fractional_threshold: float = FRACTIONAL_THRESHOLD,
) -> tuple[np.ndarray, dict[str, str]]:
    """A metcli dseg array ([z, y, x], uint8) of a mask on the reference's grid.

    ``fractional_threshold``: a voxel of a FRACTIONAL DICOM-SEG segment belongs to it when
    its fraction is at least this. Returns the array and the applied mapping
    ``{source: 'liver' | 'lesion'}``.
    """
    path = Path(mask_path)
    reference = load_reference(reference_image)
    if mask_format == FORMAT_LABEL_IMAGE and roi_names:
        raise UsageError(
            "--roi-name applies to RTSTRUCT and DICOM-SEG masks, not to label "
            f"images ({path.name})",
            fix="use --label-map VALUE=liver|lesion",
        )
    converted = _convert_mask(
        path,
        mask_format,
        reference,
        reference_name(reference_image, reference_path),
        label_map=label_map,
        roi_names=roi_names,
        slice_tolerance=slice_tolerance,
        fractional_threshold=fractional_threshold,
    )
    _warn_empty(path, converted)
    return converted.dseg, converted.applied


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
    fractional_threshold: float = FRACTIONAL_THRESHOLD
    strict: bool = False
    origin: CtOrigin | None = None  # the CT's DICOM origin (DICOM masks only)

    def settings(self) -> dict[str, Any]:
        return {
            "label_map": None
            if self.label_map is None
            else {k: LABELS[v] for k, v in self.label_map.items()},
            "roi_names": self.roi_names,
            "slice_tolerance": float(self.slice_tolerance),
            "fractional_threshold": float(self.fractional_threshold),
            "strict": bool(self.strict),
        }

    def step(self) -> Step:
        """The provenance step: the raw dataset and the mask's folder are the input roots."""
        mask_root = self.mask if self.mask.is_dir() else self.mask.parent
        return Step(
            COMMAND, self.seg_dir, {"raw": self.raw_dir, "mask": mask_root}, self.settings()
        )

    def input_files(self) -> list[Path]:
        """The CT, the import-dicom sidecar the checks read (if any) and the mask."""
        sidecar = self.origin.sidecar if self.origin is not None else None
        return [self.acquisition.path, *([sidecar] if sidecar else []), self.mask_file]


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
    fractional_threshold: float = FRACTIONAL_THRESHOLD,
    strict: bool = False,
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
        fractional_threshold: a voxel of a FRACTIONAL DICOM-SEG segment belongs to it
            when its fraction is at least this, in (0, 1].
        strict: refuse a DICOM mask whose frame of reference differs from the CT's, and
            an RTSTRUCT with contours outside the CT (:mod:`metcli.imaging.dicom_checks`);
            without it they are warnings, recorded in the sidecar.

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
        fractional_threshold=fractional_threshold,
        strict=strict,
    )
    step = run.step()
    out_image = derivative_path(
        run.seg_dir, run.acquisition.entities, suffix="dseg", extension=".nii.gz"
    )
    sidecar = sidecar_path(out_image)
    inputs = step.inputs(run.input_files())
    if not overwrite and step.is_done(sidecar, inputs):
        log.info(
            "%s: already done with the same inputs and settings; skipped (--overwrite redoes it)",
            out_image.name,
        )
        _write_dataset_files(run.seg_dir, run.raw_dir)
        return out_image

    image, extra = _dseg_image(run)
    _write_dataset_files(run.seg_dir, run.raw_dir)
    with OutputSet() as outputs:
        tmp_image = outputs.path(out_image)
        write_image_to(image, tmp_image)
        step.write_sidecar(outputs, sidecar, inputs, {out_image: tmp_image}, extra=extra)
    log.info(
        "%s: %s mask imported (%s)",
        out_image.name,
        run.mask_format,
        ", ".join(f"{k} {v} voxels" for k, v in extra["VoxelCounts"].items()),
    )
    return out_image


def _check_inputs(
    mask,
    raw_dir,
    seg_dir,
    *,
    participant,
    session,
    phase,
    label_map,
    roi_names,
    slice_tolerance,
    fractional_threshold,
    strict,
) -> _MaskImport:
    """Check the arguments, find the CT and the mask file; raise before anything is written."""
    label = clean_label(participant)
    session = None if session is None else clean_label(session, entity="ses", option="--session")
    phase = None if phase is None else clean_label(phase, entity="ce", option="--phase")
    parsed_map = parse_label_map(label_map)
    roi_names = [str(r) for r in roi_names] if roi_names else None
    if not 0 < slice_tolerance <= 0.5:
        raise UsageError(f"slice tolerance {slice_tolerance} must lie in (0, 0.5] slice spacings")
    if not 0 < fractional_threshold <= 1:
        raise UsageError(
            f"--fractional-threshold {fractional_threshold} must lie in (0, 1]",
            fix="give a fraction above 0 and at most 1, e.g. 0.5",
        )
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
    dicom = mask_format in (FORMAT_RTSTRUCT, FORMAT_DICOM_SEG)
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
        fractional_threshold=float(fractional_threshold),
        strict=bool(strict),
        origin=ct_dicom_origin(acquisition.path) if dicom else None,
    )


def _dseg_image(run: _MaskImport) -> tuple[Any, dict[str, Any]]:
    """(dseg image on the CT's grid, the sidecar's keys: format, mapping, voxel counts,
    segmentation type and threshold, DICOM checks)."""
    import SimpleITK as sitk

    acquisition = run.acquisition
    ct_name = str(acquisition.path)
    reference = read_image(acquisition.path, what="CT image")
    checks = None
    if run.origin is not None:
        checks = compare_uids(run.mask_file, run.mask_format, run.origin)
        if run.strict:
            check_strict(checks, run.mask_file, ct_name)
    converted = _convert_mask(
        run.mask_file,
        run.mask_format,
        reference,
        ct_name,
        label_map=run.label_map,
        roi_names=run.roi_names,
        slice_tolerance=run.slice_tolerance,
        fractional_threshold=run.fractional_threshold,
        warn=not run.strict,
    )
    if checks is not None and run.mask_format == FORMAT_RTSTRUCT:
        checks["contours"] = contour_report(converted.contours)
        if run.strict:
            check_strict(checks, run.mask_file, ct_name)
    if checks is not None:  # warnings only once --strict has passed: one line for an error
        warn_mismatches(checks, run.mask_file, acquisition.path.name)
    _warn_empty(run.mask_file, converted)
    counts = {LABELS[v]: int(np.count_nonzero(converted.dseg == v)) for v in (LIVER, LESION)}
    if not any(counts.values()):
        raise MaskError(
            f"the imported mask has no liver or lesion voxels on the CT grid of "
            f"{acquisition.relpath.as_posix()} (mapping {converted.applied or 'none'})",
            path=run.mask_file,
            fix="check --label-map/--roi-name and that the mask belongs to this CT",
        )
    image = sitk.GetImageFromArray(converted.dseg)
    image.CopyInformation(reference)
    extra = {
        "MaskFormat": run.mask_format,
        "LabelMapping": converted.applied,
        "VoxelCounts": counts,
        **converted.details,
    }
    if checks is not None:
        extra["DicomChecks"] = checks
    return image, extra


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
