"""Split a lesion mask into single lesions, measure them and apply the size rule.

The segmentation (``_dseg.nii.gz``: 0 background, 1 liver, 2 lesion) holds every
lesion of a participant under one label.
:func:`metcli.lesions.label_lesions.label_lesions` gives each connected component
of that label an id, measures it in physical space
(:mod:`metcli.lesions.diameters`) and drops those under the minimum diameter;
:func:`split_lesions` does it for a derivatives folder and writes the lesion maps,
the lesion tables and, at the group level, ``lesions.tsv`` and ``tumour_burden.tsv``.

Definitions (they are part of the output contract; the schemas repeat them):

* **Components.** Voxels of the lesion label are connected through faces
  (``connectivity=6``), faces and edges (18) or faces, edges and corners (26,
  the default). 6 and 26 use SimpleITK's connected-component filter, 18 uses
  ``cc3d`` (connected-components-3d).
* **Ids.** Every component gets an id 1..N, ordered by decreasing voxel count
  (= volume); ties are broken by the physical centroid (z, then y, then x,
  ascending, compared at 1e-4 mm), then by the first voxel in raster order.
  The order therefore depends on the physical scene, not on how the array is
  stored (a flipped copy of the same grid gives the same ids).
* **Lesion map.** A uint16 image on the segmentation's grid that holds only
  the KEPT lesions, each under its id; dropped components are 0 there. The
  ids of a map may therefore have gaps: the table says which id was dropped.
* **Table.** One row per component, kept or not: ``kept`` is true/false and
  ``reason`` is ``n/a`` for kept lesions or ``below_min_diameter``.
* **Diameters** are distances between voxel CENTRES in millimetres (as a
  radiologist's caliper placed on the outermost voxels of the lesion), with
  nothing added for the voxel size. A single voxel has diameter 0; five
  voxels in a row at 1 mm spacing have diameter 4 mm.

  - ``longest_axial_diameter_mm``: the largest distance between two voxel
    centres of the lesion that lie in the same axial slice, over all slices.
    The axial slices are those of the image's index axis that is closest to
    the patient's z axis (the largest z component of the direction matrix's
    columns; the first of equal ones for a 45 degree tilt).
  - ``max_3d_diameter_mm``: the largest distance between any two voxel
    centres of the lesion.
  - ``equivalent_diameter_mm``: the diameter of the sphere with the lesion's
    volume, ``(6 V / pi) ** (1/3)``. It is volume based, so it counts the
    voxels' full extent (a single 1 mm voxel has 1.24 mm); compare it with the
    other two only knowing that.

  The farthest pair of a point set lies on its convex hull, so the distances
  are computed exactly on the hull vertices (scipy's Qhull) of the voxel
  centres, after keeping only the first and last voxel of every image row
  (the others cannot be hull vertices). Positions are physical: spacing,
  direction and origin of the image are honoured.
* **Volume** ``volume_mm3`` = voxels x voxel volume.
* **Centroid** ``centroid_x_mm`` .. ``centroid_z_mm``: the mean physical
  position of the lesion's voxel centres, in the image's physical (ITK, LPS)
  coordinates.
* **Bounding box** ``bbox_i0, bbox_j0, bbox_k0`` .. ``bbox_i1, bbox_j1,
  bbox_k1``: the first and last voxel index (both inclusive) of the lesion
  along the image's index axes i, j, k (SimpleITK's index order; numpy's
  array ``[k, j, i]``).
* **Size rule.** The diameter chosen by ``diameter_rule`` (``axial``, ``3d``,
  ``equivalent``) is compared with ``min_diameter_mm``: a lesion whose
  diameter is smaller than the threshold is dropped; one equal to it is kept.
* **Tumour burden** (group level, one row per participant, session and phase):
  ``lesion_volume_mm3`` counts every lesion voxel (all components, kept or
  not), ``kept_lesion_volume_mm3`` only kept lesions; ``liver_volume_mm3`` is
  the liver label plus the lesion label (the organ with its lesions, as the
  segmentation labels lesion voxels instead of liver), ``n/a`` when the
  segmentation has no liver label; ``burden = lesion_volume_mm3 /
  liver_volume_mm3`` (``n/a`` without a liver).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from metcli.core.batch import DONE, FAILED, SKIPPED, BatchReport, group_level, run_each
from metcli.core.errors import InputError, MetcliError
from metcli.io.bids import (
    DICOM_EXTENSION,
    Acquisition,
    derivative_path,
    find_files,
    resolve_levels,
    select_from_folder,
    sidecar_path,
)
from metcli.lesions.label_lesions import check_settings, split_image
from metcli.lesions.maps import LESION_DESC
from metcli.lesions.tables import (
    BURDEN_COLUMNS,
    BURDEN_TABLE,
    GROUP_LESION_COLUMNS,
    LESION_COLUMNS,
    LESIONS_TABLE,
    burden_row,
    read_lesion_table,
)

log = logging.getLogger(__name__)

COMMAND = "split-lesions"
DESC = LESION_DESC
SEG_SUFFIX = "dseg"

_AXIS_NAMES = "ijk"


# ----------------------------------------------------------------------------- folders
def find_segmentations(
    seg_dir: Path, participants: Sequence[str] | None = None
) -> list[Acquisition]:
    """The ``_dseg.nii.gz`` files (without ``desc-``) of the chosen participants."""
    return find_files(Path(seg_dir), suffix=SEG_SUFFIX, desc=None, participants=participants)


def output_paths(out_dir: Path, acq: Acquisition) -> tuple[Path, Path, Path]:
    """(lesion map, lesion table, sidecar) of one acquisition."""
    image = derivative_path(
        out_dir, acq.entities, desc=DESC, suffix=SEG_SUFFIX, extension=".nii.gz"
    )
    table = derivative_path(out_dir, acq.entities, desc=DESC, suffix=SEG_SUFFIX, extension=".tsv")
    return image, table, sidecar_path(image)


def dicom_seg_path(out_dir: Path, acq: Acquisition) -> Path:
    """``..._desc-lesions_dseg.dcm``: the lesion map as a DICOM-SEG (``--dicom-seg``)."""
    return derivative_path(
        out_dir, acq.entities, desc=DESC, suffix=SEG_SUFFIX, extension=DICOM_EXTENSION
    )


def select(seg_dir: Path, participants: Sequence[str] | None) -> list[str]:
    """The participant labels of ``seg_dir`` to process (all, or the requested ones)."""
    return select_from_folder(
        seg_dir,
        participants,
        what="segmentation folder",
        fix="give the folder that `metcli segment` (or import-mask) wrote",
    )


def split_lesions(
    seg_dir,
    out_dir,
    *,
    participants=None,
    level=None,
    min_diameter_mm=5.0,
    diameter_rule="axial",
    connectivity=26,
    lesion_label=2,
    liver_label=1,
    overwrite=False,
    progress: Callable[[str, str], None] | None = None,
    dicom_seg: bool = False,
) -> BatchReport:
    """Split, measure and filter the lesions of every segmentation in ``seg_dir``.

    Writes, per participant (session and phase), into ``out_dir``:
    ``..._desc-lesions_dseg.nii.gz`` (the lesion map, see
    :func:`~metcli.lesions.label_lesions.label_lesions`), ``..._desc-lesions_dseg.tsv``
    (its lesion table) and ``..._desc-lesions_dseg.json`` (provenance, and the liver and
    lesion voxel counts the group level needs).
    At the group level it writes ``lesions.tsv`` (every participant's rows) and
    ``tumour_burden.tsv`` (one row per participant, session and phase), each with
    a JSON sidecar, from the tables of the participant level.

    Args:
        seg_dir: derivatives folder of ``_dseg.nii.gz`` (0 background, 1 liver, 2 lesion).
        out_dir: the folder to write (not the input folder, nor inside it).
        participants: labels to process (with or without ``sub-``); None = all.
        level: ``participant``, ``group`` or ``both``; None = both, or only the
            participant level when ``participants`` are given.
        overwrite: redo outputs that are already done.
        progress: called with (item, status) after each acquisition.
        dicom_seg: also write ``..._desc-lesions_dseg.dcm``, a DICOM-SEG with one segment
            per kept lesion (labelled with its name) that refers to the CT's DICOM series:
            the CT is found in the raw dataset ``seg_dir`` names (its
            ``dataset_description.json`` ``DatasetLinks``) and must come from
            ``import-dicom`` (:mod:`metcli.imaging.dicom.seg_out`). Without kept lesions
            no DICOM-SEG is written (it needs one segment at least).
        Other arguments: see :func:`~metcli.lesions.label_lesions.label_lesions`.

    Returns:
        A :class:`~metcli.core.batch.BatchReport` with one entry per acquisition
        (``sub-001 ses-1 portal``); a failing acquisition is recorded and the
        others are done. ``outputs`` lists the files written or found current.

    Raises:
        UsageError: bad settings, unknown participant, output inside the input.
        InputError: at the group level, a participant table that is missing or
            was not made from the current segmentation with the same settings.
    """
    from metcli.io.files import check_output_not_inside_input

    settings = check_settings(
        min_diameter_mm=min_diameter_mm,
        diameter_rule=diameter_rule,
        connectivity=connectivity,
        lesion_label=lesion_label,
        liver_label=liver_label,
    )
    seg_dir, out_dir = Path(seg_dir), Path(out_dir)
    labels = [participants] if isinstance(participants, str) else participants
    do_participants, do_group = resolve_levels(level, labels)
    chosen = select(seg_dir, labels)
    check_output_not_inside_input(out_dir, [seg_dir])

    raw_dir = None
    if dicom_seg:
        from metcli.imaging.dicom.seg_out import linked_raw_dir

        raw_dir = linked_raw_dir(seg_dir)
    step = _start(seg_dir, out_dir, settings, raw_dir)
    report = BatchReport()
    if do_participants:
        _participant_level(seg_dir, out_dir, chosen, step, settings, overwrite, progress, report)
    if do_group:
        with group_level(report):
            _group_level(seg_dir, out_dir, chosen, step, overwrite, report)
    return report


def _start(seg_dir: Path, out_dir: Path, settings: Mapping[str, Any], raw_dir: Path | None):
    """The provenance step of the run (with ``raw_dir``, the CTs' raw dataset for
    ``--dicom-seg``); writes the dataset description."""
    from metcli.io.provenance import Step, write_dataset_description

    roots = {"seg": seg_dir} if raw_dir is None else {"seg": seg_dir, "raw": raw_dir}
    if raw_dir is not None:  # only then: outputs made without it stay current
        settings = {**settings, "dicom_seg": True}
    step = Step(COMMAND, out_dir, roots, settings)
    write_dataset_description(
        out_dir,
        name="metcli split-lesions",
        sources=roots,
        description="single lesions, lesion tables and tumour burden",
    )
    return step


def _participant_level(
    seg_dir: Path,
    out_dir: Path,
    chosen: Sequence[str],
    step,
    settings: Mapping[str, Any],
    overwrite: bool,
    progress,
    report: BatchReport,
) -> None:
    """Every segmentation of ``chosen`` split (or found current) into ``report``; a chosen
    participant without one fails."""
    acquisitions = find_segmentations(seg_dir, chosen)
    found = {a.entities.sub for a in acquisitions}
    for label in chosen:
        if label not in found:
            error = InputError(
                f"no sub-{label}[_ses-<s>][_ce-<phase>]_dseg.nii.gz found",
                path=seg_dir / f"sub-{label}",
                fix="segment this participant first, or leave it out",
            )
            log.error("sub-%s: %s", label, error.one_line())
            report.record(f"sub-{label}", FAILED, error.one_line())

    def work(acq: Acquisition) -> str:
        return _split_one(acq, out_dir, step, settings, overwrite, report)

    run_each(
        acquisitions,
        key=lambda a: a.entities.describe(),
        work=work,
        progress=progress,
        report=report,
    )


def _group_level(
    seg_dir: Path, out_dir: Path, chosen: Sequence[str], step, overwrite: bool, report: BatchReport
) -> None:
    """The group tables, unless some item failed at the participant level."""
    if report.failed:
        log.warning(
            "group level not written: %d item(s) failed at the participant level; "
            "fix them, or leave those participants out with --participant-label "
            "and --level group",
            len(report.failed),
        )
    else:
        report.outputs.extend(
            write_group_tables(seg_dir, out_dir, chosen, step, overwrite=overwrite)
        )


def _split_one(
    acq: Acquisition,
    out_dir: Path,
    step,
    settings: Mapping[str, Any],
    overwrite: bool,
    report: BatchReport,
) -> str:
    from metcli.io.files import OutputSet, read_image, write_image_to, write_tsv_to

    out_image, out_table, sidecar = output_paths(out_dir, acq)
    inputs, source = _inputs_of(acq, step)
    if not overwrite and step.is_done(sidecar, inputs):
        report.outputs.extend(_existing_outputs(acq, out_dir))
        return SKIPPED
    image = read_image(acq.path, what="segmentation")
    try:
        result = split_image(image, **settings)
    except MetcliError as exc:
        if exc.path is None:
            raise type(exc)(exc.what, path=acq.path, fix=exc.fix) from None
        raise
    kept = sum(1 for row in result.rows if row["kept"])
    extra = {
        "Description": "Single lesions of the segmentation's lesion label: map of the kept "
        "lesions (0 background, 1..N lesion ids) and its lesion table",
        "SliceAxis": _AXIS_NAMES[result.slice_axis],
        "VoxelVolume_mm3": result.voxel_volume_mm3,
        "LiverLabelVoxels": result.liver_voxels,
        "LesionLabelVoxels": result.lesion_voxels,
        "Components": len(result.rows),
        "KeptLesions": kept,
    }
    with OutputSet() as outs:
        tmp_image = outs.path(out_image)
        write_image_to(result.lesion_map, tmp_image)
        tmp_table = outs.path(out_table)
        write_tsv_to(
            result.rows, list(LESION_COLUMNS), tmp_table, schema="lesion_table", where=out_table
        )
        produced = {out_image: tmp_image, out_table: tmp_table}
        if source is not None:
            extra["DicomSeg"] = _write_dicom_seg(outs, acq, out_dir, result, source, produced)
        step.write_sidecar(outs, sidecar, inputs, produced, extra=extra)
    log.info(
        "%s: %d lesion(s) kept of %d component(s)", acq.entities.describe(), kept, len(result.rows)
    )
    report.outputs.extend(_existing_outputs(acq, out_dir))
    return DONE


def _inputs_of(acq: Acquisition, step) -> tuple[list[dict], dict | None]:
    """The input records of one segmentation (with ``--dicom-seg`` also its CT's sidecar,
    which holds DicomSource) and the CT's DicomSource (None without ``--dicom-seg``)."""
    raw_dir = step.roots.get("raw")
    if raw_dir is None:
        return step.inputs([acq.path]), None
    from metcli.imaging.dicom.seg_out import source_ct_path
    from metcli.imaging.dicom.source import read_dicom_source

    ct = source_ct_path(raw_dir, acq.entities)
    source = read_dicom_source(ct)
    return step.inputs([acq.path, sidecar_path(ct)]), source


def _existing_outputs(acq: Acquisition, out_dir: Path) -> list[Path]:
    out_image, out_table, sidecar = output_paths(out_dir, acq)
    dcm = dicom_seg_path(out_dir, acq)
    return [out_image, out_table, *([dcm] if dcm.is_file() else []), sidecar]


def _write_dicom_seg(outs, acq: Acquisition, out_dir: Path, result, source, produced) -> Any:
    """The lesion map as a DICOM-SEG through ``outs`` (added to ``produced``); what the
    sidecar records of it. No kept lesion: nothing is written."""
    from metcli.imaging.dicom.seg_out import NO_LESION, lesion_segments, write_lesion_seg
    from metcli.io.files import read_json

    if not lesion_segments(result.rows):
        return NO_LESION
    try:
        made_by = read_json(sidecar_path(acq.path))["Provenance"]["command"]
    except (MetcliError, KeyError, TypeError):
        made_by = None
    final = dicom_seg_path(out_dir, acq)
    produced[final] = outs.path(final)
    return write_lesion_seg(
        result.lesion_map, result.rows, source, produced[final], made_by=made_by, where=acq.path
    )


# ----------------------------------------------------------------------------- group level
def write_group_tables(
    seg_dir: Path, out_dir: Path, participants: Sequence[str], step, *, overwrite: bool = False
) -> list[Path]:
    """``lesions.tsv`` and ``tumour_burden.tsv`` from the participant level's tables.

    Every segmentation of the chosen participants must have a current output
    (same segmentation, same settings): the tables are read, not recomputed.
    """
    from metcli.io.files import OutputSet, write_tsv_to

    acquisitions = _group_acquisitions(seg_dir, participants)
    lesion_rows: list[dict] = []
    burden_rows: list[dict] = []
    used: list[Path] = []
    for acq in acquisitions:
        _image, table, sidecar = output_paths(out_dir, acq)
        liver_voxels, voxel_volume = _current_table(acq, table, sidecar, step)
        rows = read_lesion_table(table)
        ent = acq.entities
        keys = {"participant_id": ent.participant_id, "session": ent.ses, "phase": ent.ce}
        lesion_rows.extend({**keys, **row} for row in rows)
        burden_rows.append(burden_row(keys, rows, liver_voxels, voxel_volume))
        used.extend([table, sidecar])

    lesions_path, burden_path = out_dir / LESIONS_TABLE, out_dir / BURDEN_TABLE
    lesions_sidecar, burden_sidecar = sidecar_path(lesions_path), sidecar_path(burden_path)
    inputs = step.inputs(used)
    if (
        not overwrite
        and step.is_done(lesions_sidecar, inputs)
        and step.is_done(burden_sidecar, inputs)
    ):
        return [lesions_path, burden_path, lesions_sidecar, burden_sidecar]
    with OutputSet() as outs:
        tmp_lesions = outs.path(lesions_path)
        write_tsv_to(
            lesion_rows, GROUP_LESION_COLUMNS, tmp_lesions, schema="lesions", where=lesions_path
        )
        tmp_burden = outs.path(burden_path)
        write_tsv_to(
            burden_rows, BURDEN_COLUMNS, tmp_burden, schema="tumour_burden", where=burden_path
        )
        step.write_sidecar(
            outs,
            lesions_sidecar,
            inputs,
            {lesions_path: tmp_lesions},
            extra={
                "Description": "Every lesion (component) of every participant, session and phase"
            },
        )
        step.write_sidecar(
            outs,
            burden_sidecar,
            inputs,
            {burden_path: tmp_burden},
            extra={"Description": "Tumour burden per participant, session and phase"},
        )
    log.info("group level: %d lesion row(s), %d burden row(s)", len(lesion_rows), len(burden_rows))
    return [lesions_path, burden_path, lesions_sidecar, burden_sidecar]


def _group_acquisitions(seg_dir: Path, participants: Sequence[str]) -> list[Acquisition]:
    """The segmentations of the chosen participants; one without any is an error."""
    acquisitions = find_segmentations(seg_dir, participants)
    found = {a.entities.sub for a in acquisitions}
    missing = [f"sub-{label}" for label in participants if label not in found]
    if missing:
        raise InputError(
            f"no segmentation (_dseg.nii.gz) for {', '.join(missing)}",
            path=seg_dir,
            fix="leave those participants out with --participant-label",
        )
    return acquisitions


def _current_table(acq: Acquisition, table: Path, sidecar: Path, step) -> tuple[int, float]:
    """(liver label voxels, voxel volume) of a lesion table that is current, or an error
    that says to run the participant level first."""
    from metcli.io.files import read_json

    fix = (
        f"run `metcli split-lesions SEG_DIR OUT_DIR --level participant "
        f"--participant-label {acq.entities.sub}` with the same options first"
    )
    if not table.is_file() or not sidecar.is_file():
        raise InputError(
            f"the lesion table of {acq.entities.describe()} is missing; run "
            "the participant level first",
            path=table,
            fix=fix,
        )
    if not step.is_done(sidecar, _inputs_of(acq, step)[0]):
        raise InputError(
            f"the lesion table of {acq.entities.describe()} was not made from "
            "the current segmentation with these settings (see its sidecar); "
            "run the participant level first",
            path=table,
            fix=fix,
        )
    counts = read_json(sidecar)
    try:
        return int(counts["LiverLabelVoxels"]), float(counts["VoxelVolume_mm3"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            "the sidecar lacks LiverLabelVoxels or VoxelVolume_mm3",
            path=sidecar,
            fix="run the participant level again with --overwrite",
        ) from None
