"""``metcli evaluate-seg``: how well a segmentation agrees with a reference one.

Compares the ``_dseg.nii.gz`` files of a segmentation folder (for example the output
of ``metcli segment``) with those of a reference folder (manual masks, or the truth
of ``metcli synth``), acquisition by acquisition: pairs are matched by participant,
session and contrast phase, and the two masks must describe the same physical grid
(flipped or permuted axes of one grid are accepted; anything else is a
:class:`~metcli.core.errors.GeometryError` naming both files; nothing is resampled).
Pairs are found and read by :mod:`metcli.evaluation.seg_pairs`, lesion predictions by
:mod:`metcli.evaluation.seg_predictions`; the figures are computed by
:mod:`metcli.evaluation.seg_measures`.

Outputs (see ``docs/evaluate.md``; every table has a JSON Schema in ``schemas/``):

* per acquisition (participant level): ``..._desc-overlap_metrics.tsv`` and, with
  lesion maps, ``..._desc-detection_metrics.tsv``, each with a provenance sidecar;
* at the group level: ``overlap.tsv`` (the participant tables, one after the other;
  its sidecar ``overlap.json`` holds the patient-level summary), ``detection.tsv``,
  ``detection_summary.tsv`` and, given lesion-level predictions made from both mask
  sets, ``classification_agreement.tsv``.

Definitions (part of the output contract):

* **Regions.** ``liver`` is label 1, ``lesion`` label 2, ``liver_and_lesions`` the
  union of both (the organ with its lesions). For one region, with S the voxels of
  the segmentation and R those of the reference: Dice = 2|S∩R| / (|S|+|R|), Jaccard
  = |S∩R| / |S∪R|, precision = |S∩R| / |S|, recall (sensitivity) = |S∩R| / |R|;
  volumes are voxel counts times the voxel volume.
* **Empty regions.** A region absent from both masks has no Dice, Jaccard, precision
  or recall: they are ``n/a`` with a note, never 1 or 0 silently. Absent from the
  segmentation only: Dice = Jaccard = recall = 0, precision ``n/a``. Absent from the
  reference only: Dice = Jaccard = precision = 0, recall ``n/a``.
* **Lesions** are the kept lesions of split-lesions' lesion maps (``..._desc-lesions_
  dseg.nii.gz``; components dropped by its size rule are 0 there). A reference lesion
  is *found* when at least one voxel of a predicted lesion overlaps it. Its match is
  the overlapping predicted lesion with the highest lesion Dice (ties: more
  overlapping voxels, then the lower id); its ``dice`` is 2|P∩R| / (|P|+|R|) of the
  two lesions. A predicted lesion that overlaps no reference lesion is a *false
  positive*. The size band of a reference lesion is that of its longest axial
  diameter (split-lesions' ``longest_axial_diameter_mm``): ``under_10mm`` (< 10),
  ``10_to_20mm`` (10 to 20, both included), ``over_20mm`` (> 20); a false positive is
  banded by its own diameter.
* **Patient level.** The patient is the unit: a participant's figure is the mean over
  its acquisitions; the summary is the mean over participants with a 95% percentile
  interval from resampling participants (:func:`metcli.evaluation.stats.cluster_bootstrap_weights`).
  Lesion counts (detection rate, agreement) are pooled over lesions, but their
  intervals resample participants with all their lesions (cluster bootstrap): lesions
  of one patient are not treated as independent.
* **Classification agreement** (as Table 4 of Giannini et al. 2020): for every found
  reference lesion, the class predicted from the reference masks (lesion id in the
  reference lesion map) against the class predicted from the automatic masks (id of
  its matched lesion), by band of the lesion's Dice. Missed lesions have no automatic
  prediction and are not in the table (the detection table counts them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from metcli.core.batch import DONE, SKIPPED, BatchReport, run_each
from metcli.core.errors import GeometryError, InputError, MetcliError, UsageError
from metcli.evaluation.seg_measures import (
    CLUSTER_NOTE,
    REGIONS,
    agreement_rows,
    check_dice_edges,
    detection_summary,
    patient_summary,
)
from metcli.evaluation.seg_pairs import Item, evaluate_pair, find_items, select
from metcli.evaluation.seg_predictions import LesionClasses, add_classes, read_lesion_classes
from metcli.io.bids import Entities, derivative_path, resolve_levels, sidecar_path

log = logging.getLogger(__name__)

COMMAND = "evaluate-seg"
METRICS_SUFFIX = "metrics"
OVERLAP_DESC, DETECTION_DESC = "overlap", "detection"

MIN_BOOTSTRAP = 100

OVERLAP_COLUMNS = (
    "participant_id",
    "session",
    "phase",
    "label",
    "dice",
    "jaccard",
    "precision",
    "recall",
    "volume_mm3",
    "reference_volume_mm3",
    "volume_difference_mm3",
    "true_positive_voxels",
    "false_positive_voxels",
    "false_negative_voxels",
    "note",
)
DETECTION_COLUMNS = (
    "participant_id",
    "session",
    "phase",
    "kind",
    "reference_lesion",
    "reference_diameter_mm",
    "reference_volume_mm3",
    "size_band",
    "found",
    "predicted_lesion",
    "predicted_diameter_mm",
    "predicted_volume_mm3",
    "overlap_voxels",
    "dice",
    "n_predicted_overlapping",
)
CLASS_COLUMNS = ("predicted_class", "reference_predicted_class", "class_agrees")
SUMMARY_COLUMNS = (
    "size_band",
    "band_lower_mm",
    "band_upper_mm",
    "n_reference_lesions",
    "n_found",
    "n_missed",
    "detection_rate",
    "ci_lower",
    "ci_upper",
    "ci_method",
    "ci_level",
    "bootstrap_resamples",
    "n_participants",
    "n_scans",
    "false_positives",
    "false_positives_per_scan",
    "note",
)
AGREEMENT_COLUMNS = (
    "model",
    "reference_model",
    "dice_band",
    "dice_lower",
    "dice_upper",
    "n_lesions",
    "n_agree",
    "agreement_rate",
    "ci_lower",
    "ci_upper",
    "ci_method",
    "ci_level",
    "bootstrap_resamples",
    "n_participants",
    "note",
)

OVERLAP_TABLE, DETECTION_TABLE = "overlap.tsv", "detection.tsv"
SUMMARY_TABLE, AGREEMENT_TABLE = "detection_summary.tsv", "classification_agreement.tsv"


def output_paths(out_dir: Path, ent: Entities) -> tuple[Path, Path]:
    """(overlap table, detection table) of one acquisition in ``out_dir``."""
    overlap = derivative_path(
        out_dir, ent, desc=OVERLAP_DESC, suffix=METRICS_SUFFIX, extension=".tsv"
    )
    detection = derivative_path(
        out_dir, ent, desc=DETECTION_DESC, suffix=METRICS_SUFFIX, extension=".tsv"
    )
    return overlap, detection


# ============================================================================= the run
@dataclass
class SegEvaluation:
    """What :func:`evaluate_seg` did."""

    report: BatchReport
    overlap_summary: list[dict] = field(default_factory=list)
    detection_summary: list[dict] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)
    group_written: bool = False


@dataclass
class _SegRun:
    """The checked inputs of one evaluate-seg run and the provenance of its participant level."""

    out_dir: Path
    roots: dict[str, Path]
    participant_settings: dict[str, Any]
    part_step: Any  # metcli.io.provenance.Step of the participant level
    classes: tuple[LesionClasses, LesionClasses] | None  # predictions of both mask sets
    items: list[Item]


def evaluate_seg(
    seg_dir: str | Path,
    reference_dir: str | Path,
    out_dir: str | Path,
    *,
    lesions_dir: str | Path | None = None,
    reference_lesions_dir: str | Path | None = None,
    predictions: str | Path | None = None,
    reference_predictions: str | Path | None = None,
    model: str | None = None,
    participants: Sequence[str] | None = None,
    level: str | None = None,
    dice_edges: Sequence[float] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> SegEvaluation:
    """Compare the segmentations of ``seg_dir`` with those of ``reference_dir``.

    Args:
        seg_dir: folder of ``_dseg.nii.gz`` to evaluate (0 background, 1 liver, 2 lesion).
        reference_dir: folder of reference ``_dseg.nii.gz`` (manual masks, truth).
        out_dir: the folder to write.
        lesions_dir, reference_lesions_dir: split-lesions' outputs for the two folders
            (give both or neither): lesion-wise detection.
        predictions, reference_predictions: lesion-level predictions (the predictions
            format of docs/architecture.md)
            made from the lesions of ``lesions_dir`` and of ``reference_lesions_dir``
            (give both or neither): agreement of the predicted class per lesion.
        model: the model of the predictions to compare (needed when a table holds several).
        participants: labels to process; None = every participant of either folder.
        level: ``participant``, ``group`` or ``both`` (None: both, or only the participant
            level when ``participants`` are given).
        dice_edges: inner edges of the Dice bands of the agreement table.
        n_bootstrap, seed, confidence_level: of the patient-bootstrap intervals.
        overwrite: redo outputs that are already done.
        progress: called with (item, status) after each acquisition.

    Returns:
        :class:`SegEvaluation`: the batch report (one entry per acquisition; a failing
        one is recorded and the others are done) and the group-level summaries.

    Raises:
        UsageError: bad arguments, unknown participant, output inside an input.
        InputError: at the group level, a participant table that is missing or stale;
            unreadable predictions.
    """
    from metcli.io.provenance import Step, write_dataset_description

    seg_dir, reference_dir, out_dir = Path(seg_dir), Path(reference_dir), Path(out_dir)
    edges = _check_arguments(
        lesions_dir,
        reference_lesions_dir,
        predictions,
        reference_predictions,
        n_bootstrap,
        confidence_level,
        dice_edges,
    )
    labels = [participants] if isinstance(participants, str) else participants
    do_participants, do_group = resolve_levels(level, labels)
    chosen = select(seg_dir, reference_dir, labels)
    run = _prepare(
        seg_dir,
        reference_dir,
        out_dir,
        chosen,
        lesions_dir=None if lesions_dir is None else Path(lesions_dir),
        reference_lesions_dir=None
        if reference_lesions_dir is None
        else Path(reference_lesions_dir),
        predictions=predictions,
        reference_predictions=reference_predictions,
        model=model,
    )
    result = SegEvaluation(report=BatchReport())
    write_dataset_description(
        out_dir,
        name="metcli evaluate-seg",
        sources=run.roots,
        description="agreement of segmentations with reference masks",
    )
    if do_participants:

        def work(item: Item) -> str:
            return _evaluate_one(item, out_dir, run.part_step, overwrite, result.report)

        run_each(
            run.items,
            key=lambda i: i.describe(),
            work=work,
            progress=progress,
            report=result.report,
        )
    if do_group:
        if result.report.failed:
            log.warning(
                "group level not written: %d item(s) failed at the participant level; "
                "fix them, or leave those participants out with --participant-label "
                "and --level group",
                len(result.report.failed),
            )
            return result
        settings = {
            **run.participant_settings,
            "dice_band_edges": list(edges),
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "confidence_level": confidence_level,
            "model": model,
            "classification_agreement": predictions is not None,
        }
        group_step = Step(COMMAND, out_dir, run.roots, settings)
        _write_group(
            run.items,
            out_dir,
            run.part_step,
            group_step,
            result,
            classes=run.classes,
            edges=edges,
            n_boot=n_bootstrap,
            seed=seed,
            level_ci=confidence_level,
            overwrite=overwrite,
        )
    return result


def _check_arguments(
    lesions_dir,
    reference_lesions_dir,
    predictions,
    reference_predictions,
    n_bootstrap,
    confidence_level,
    dice_edges,
) -> tuple[float, ...]:
    """Raise UsageError (or InputError for a missing folder); return the Dice band edges."""
    if (lesions_dir is None) != (reference_lesions_dir is None):
        raise UsageError(
            "--lesions and --reference-lesions go together",
            fix="give split-lesions' outputs for both mask folders, or neither",
        )
    if (predictions is None) != (reference_predictions is None):
        raise UsageError(
            "--predictions and --reference-predictions go together",
            fix="give the predictions made from both mask sets, or neither",
        )
    if predictions is not None and lesions_dir is None:
        raise UsageError(
            "--predictions needs --lesions and --reference-lesions",
            fix="give the lesion maps the predictions were made from",
        )
    if (
        isinstance(n_bootstrap, bool)
        or not isinstance(n_bootstrap, int)
        or n_bootstrap < MIN_BOOTSTRAP
    ):
        raise UsageError(
            f"--bootstrap {n_bootstrap} is too few resamples",
            fix=f"use at least {MIN_BOOTSTRAP} (2000 is usual)",
        )
    if not 0.5 <= confidence_level < 1.0:
        raise UsageError(f"confidence level {confidence_level} must lie in [0.5, 1)")
    edges = check_dice_edges(dice_edges)
    for folder, option in (
        (lesions_dir, "--lesions"),
        (reference_lesions_dir, "--reference-lesions"),
    ):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(
                f"the {option} folder does not exist",
                path=Path(folder),
                fix="give the folder split-lesions wrote",
            )
    return edges


def _prepare(
    seg_dir: Path,
    reference_dir: Path,
    out_dir: Path,
    chosen: Sequence[str],
    *,
    lesions_dir: Path | None,
    reference_lesions_dir: Path | None,
    predictions,
    reference_predictions,
    model: str | None,
) -> _SegRun:
    """Roots, participant-level provenance, predictions (read first: a bad table stops the
    run before any work) and the acquisitions to compare."""
    from metcli.io.files import check_output_not_inside_input
    from metcli.io.provenance import Step

    roots: dict[str, Path] = {"seg": seg_dir, "reference": reference_dir}
    if lesions_dir is not None:
        roots.update({"lesions": lesions_dir, "reference_lesions": reference_lesions_dir})
    check_output_not_inside_input(out_dir, list(roots.values()))
    participant_settings = {
        "regions": {k: list(v) for k, v in REGIONS.items()},
        "lesion_detection": lesions_dir is not None,
        "min_overlap_voxels": 1,
        "size_bands_mm": [10.0, 20.0],
    }
    part_step = Step(COMMAND, out_dir, dict(roots), participant_settings)
    classes = None
    if predictions is not None:
        classes = _read_classes(predictions, reference_predictions, model)
        auto, manual = classes
        roots.update({"predictions": auto.path.parent, "reference_predictions": manual.path.parent})
    items = find_items(
        seg_dir,
        reference_dir,
        chosen,
        lesions_dir=lesions_dir,
        reference_lesions_dir=reference_lesions_dir,
    )
    return _SegRun(
        out_dir=out_dir,
        roots=roots,
        participant_settings=participant_settings,
        part_step=part_step,
        classes=classes,
        items=items,
    )


def _read_classes(
    predictions, reference_predictions, model: str | None
) -> tuple[LesionClasses, LesionClasses]:
    """The lesion classes predicted from both mask sets (the same model and classes)."""
    auto = read_lesion_classes(predictions, model)
    manual = read_lesion_classes(reference_predictions, model or auto.model)
    if sorted(auto.classes) != sorted(manual.classes):
        raise InputError(
            f"the classes of {auto.path} ({', '.join(auto.classes)}) differ "
            f"from those of {manual.path} ({', '.join(manual.classes)})",
            path=manual.path,
            fix="compare predictions of the same model on the two mask sets",
        )
    return auto, manual


def _item_inputs(item: Item) -> list[Path]:
    paths = [item.seg.path, item.reference.path]
    if item.lesions is not None:
        paths += item.lesions.paths()
    return paths


def _keys(item: Item) -> dict[str, Any]:
    sub, ses, ce = item.key
    return {"participant_id": f"sub-{sub}", "session": ses, "phase": ce}


def _evaluate_one(item: Item, out_dir: Path, step, overwrite: bool, report: BatchReport) -> str:
    from metcli.io.files import OutputSet, write_tsv_to

    if item.missing:
        raise InputError(
            "; ".join(item.missing),
            fix="give both masks (and lesion maps) of every acquisition, or leave "
            "the participant out with --participant-label",
        )
    overlap_path, detection_path = output_paths(out_dir, item.entities)
    inputs = step.inputs(_item_inputs(item))
    targets = [overlap_path] + ([detection_path] if item.lesions is not None else [])
    if not overwrite and all(step.is_done(sidecar_path(t), inputs) for t in targets):
        report.outputs.extend(targets)
        return SKIPPED
    try:
        pair = evaluate_pair(item.seg.path, item.reference.path, item.lesions)
    except GeometryError:
        raise  # its message names both files
    except MetcliError as exc:
        if exc.path is None:
            raise type(exc)(exc.what, path=item.seg.path, fix=exc.fix) from None
        raise
    keys = _keys(item)
    extra = {"VoxelVolume_mm3": pair.voxel_volume_mm3}
    with OutputSet() as outs:
        tmp = outs.path(overlap_path)
        write_tsv_to(
            [{**keys, **row} for row in pair.overlap],
            OVERLAP_COLUMNS,
            tmp,
            schema="overlap",
            where=overlap_path,
        )
        step.write_sidecar(
            outs,
            sidecar_path(overlap_path),
            inputs,
            {overlap_path: tmp},
            extra={
                "Description": "overlap of the segmentation with the reference per region",
                **extra,
            },
        )
        if pair.detection is not None:
            tmp = outs.path(detection_path)
            write_tsv_to(
                [{**keys, **row} for row in pair.detection],
                DETECTION_COLUMNS,
                tmp,
                schema="detection",
                where=detection_path,
            )
            step.write_sidecar(
                outs,
                sidecar_path(detection_path),
                inputs,
                {detection_path: tmp},
                extra={
                    "Description": "lesion-wise detection: every kept "
                    "reference lesion and every false "
                    "positive",
                    **extra,
                },
            )
    lesion = next(r for r in pair.overlap if r["label"] == "lesion")
    log.info(
        "%s: lesion Dice %s",
        item.describe(),
        "n/a" if lesion["dice"] is None else f"{lesion['dice']:.3f}",
    )
    report.outputs.extend(targets)
    return DONE


def read_typed_table(path: Path, schema: str) -> list[dict[str, Any]]:
    """A table metcli wrote, read back with the types its schema declares (n/a -> None)."""
    from metcli.io.files import NA, read_tsv
    from metcli.io.schemas import load_schema

    properties = load_schema(schema)["properties"]
    out = []
    for number, row in enumerate(read_tsv(path), start=2):
        typed: dict[str, Any] = {}
        for key, text in row.items():
            kinds = properties.get(key, {}).get("type", "string")
            kinds = [kinds] if isinstance(kinds, str) else kinds
            try:
                if text == NA and "null" in kinds:
                    typed[key] = None
                elif "boolean" in kinds:
                    typed[key] = {"true": True, "false": False}[text]
                elif "integer" in kinds:
                    typed[key] = int(text)
                elif "number" in kinds:
                    typed[key] = float(text)
                else:
                    typed[key] = text
            except (KeyError, ValueError):
                raise InputError(
                    f"line {number}, column {key}: {text!r} is not valid",
                    path=path,
                    fix="write the table again with --overwrite",
                ) from None
        out.append(typed)
    return out


def _write_group(
    items: Sequence[Item],
    out_dir: Path,
    part_step,
    step,
    result: SegEvaluation,
    *,
    classes: tuple[LesionClasses, LesionClasses] | None,
    edges,
    n_boot,
    seed,
    level_ci,
    overwrite,
) -> None:
    from metcli.io.files import OutputSet, write_tsv_to

    with_lesions = any(item.lesions is not None for item in items)
    used, overlap, detection, scans = _read_participant_tables(
        items, out_dir, part_step, with_lesions
    )
    pred_files: list[Path] = []
    agreement: list[dict] = []
    counts = None
    if classes is not None:
        auto, manual = classes
        counts = add_classes(detection, auto, manual)
        agreement = agreement_rows(
            detection,
            model=auto.model,
            reference_model=manual.model,
            edges=edges,
            n_boot=n_boot,
            seed=seed,
            level=level_ci,
        )
        pred_files = [auto.path, manual.path]
        pred_files += [
            sidecar_path(p) for p in (auto.path, manual.path) if sidecar_path(p).is_file()
        ]
    inputs = step.inputs(used + pred_files)
    summary = patient_summary(overlap, n_boot=n_boot, seed=seed, level=level_ci)
    det_summary = (
        detection_summary(detection, scans, n_boot=n_boot, seed=seed, level=level_ci)
        if with_lesions
        else []
    )
    result.overlap_summary, result.detection_summary = summary, det_summary
    result.agreement = agreement
    tables = _group_tables(
        out_dir,
        overlap,
        detection,
        det_summary,
        agreement,
        summary,
        with_lesions=with_lesions,
        with_classes=classes is not None,
        counts=counts,
        n_boot=n_boot,
        seed=seed,
        level_ci=level_ci,
    )
    if not overwrite and all(step.is_done(sidecar_path(t[0]), inputs) for t in tables):
        result.report.outputs.extend(t[0] for t in tables)
        result.group_written = False
        return
    with OutputSet() as outs:
        for path, columns, schema, rows, extra in tables:
            tmp = outs.path(path)
            write_tsv_to(rows, columns, tmp, schema=schema, where=path)
            step.write_sidecar(outs, sidecar_path(path), inputs, {path: tmp}, extra=extra)
    result.report.outputs.extend(t[0] for t in tables)
    result.group_written = True
    log.info("group level: %d overlap row(s), %d detection row(s)", len(overlap), len(detection))


def _read_participant_tables(
    items: Sequence[Item], out_dir: Path, part_step, with_lesions: bool
) -> tuple[list[Path], list[dict], list[dict], list[tuple]]:
    """(files used, overlap rows, detection rows, scan keys) of the participant level.

    Every table must be current (made from the current inputs with these settings).
    """
    used: list[Path] = []
    overlap: list[dict] = []
    detection: list[dict] = []
    scans = []
    for item in items:
        if item.missing:
            raise InputError(
                "; ".join(item.missing),
                path=out_dir,
                fix="leave those participants out with --participant-label",
            )
        overlap_path, detection_path = output_paths(out_dir, item.entities)
        fix = (
            f"run `metcli evaluate-seg ... --level participant --participant-label "
            f"{item.key[0]}` with the same inputs first"
        )
        inputs = part_step.inputs(_item_inputs(item))
        for path in [overlap_path] + ([detection_path] if with_lesions else []):
            if not part_step.is_done(sidecar_path(path), inputs):
                raise InputError(
                    f"the table of {item.describe()} is missing or was not made "
                    "from the current inputs with these settings",
                    path=path,
                    fix=fix,
                )
            used += [path, sidecar_path(path)]
        overlap += read_typed_table(overlap_path, "overlap")
        if with_lesions:
            detection += read_typed_table(detection_path, "detection")
        scans.append(tuple(_keys(item).values()))
    return used, overlap, detection, scans


def _group_tables(
    out_dir: Path,
    overlap,
    detection,
    det_summary,
    agreement,
    summary,
    *,
    with_lesions: bool,
    with_classes: bool,
    counts,
    n_boot,
    seed,
    level_ci,
) -> list[tuple]:
    """``(path, columns, schema, rows, sidecar extra)`` of every group-level table."""
    tables = [
        (
            out_dir / OVERLAP_TABLE,
            OVERLAP_COLUMNS,
            "overlap",
            overlap,
            {
                "Description": "overlap of every segmentation with its reference per region "
                "(rows of the participant tables)",
                "PatientLevelSummary": summary,
                "SummaryNote": "mean over participants (each the mean of its acquisitions) "
                f"with a {int(level_ci * 100)}% patient-bootstrap percentile "
                f"interval ({n_boot} resamples, seed {seed}); undefined "
                "figures (n/a) are left out and counted",
            },
        )
    ]
    if with_lesions:
        columns = DETECTION_COLUMNS + (CLASS_COLUMNS if with_classes else ())
        tables.append(
            (
                out_dir / DETECTION_TABLE,
                columns,
                "detection",
                detection,
                {
                    "Description": "lesion-wise detection: every kept reference lesion "
                    "(found or missed) and every false positive"
                },
            )
        )
        tables.append(
            (
                out_dir / SUMMARY_TABLE,
                SUMMARY_COLUMNS,
                "detection_summary",
                det_summary,
                {
                    "Description": "detection rate by size band of the reference lesion's "
                    "longest axial diameter, false positives per scan",
                    "IntervalNote": CLUSTER_NOTE,
                },
            )
        )
    if with_classes:
        tables.append(
            (
                out_dir / AGREEMENT_TABLE,
                AGREEMENT_COLUMNS,
                "classification_agreement",
                agreement,
                {
                    "Description": "agreement of the predicted class from the automatic "
                    "and the reference masks per matched lesion, by Dice "
                    "band (as Table 4 of Giannini et al. 2020)",
                    "Lesions": counts,
                },
            )
        )
    return tables
