"""``metcli evaluate-seg``: how well a segmentation agrees with a reference one.

Compares the ``_dseg.nii.gz`` files of a segmentation folder (for example the output
of ``metcli segment``) with those of a reference folder (manual masks, or the truth
of ``metcli synth``), acquisition by acquisition: pairs are matched by participant,
session and contrast phase, and the two masks must describe the same physical grid
(flipped or permuted axes of one grid are accepted; anything else is a
:class:`~metcli.core.errors.GeometryError` naming both files; nothing is resampled).
Pairs are found and read by :mod:`metcli.evaluation.seg_pairs`, lesion predictions by
:mod:`metcli.evaluation.seg_predictions`; the figures are computed by
:mod:`metcli.evaluation.seg_measures`; the group level is summarised and written by
:mod:`metcli.evaluation.seg_group`; the tables' names and columns are in
:mod:`metcli.evaluation.seg_tables`.

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
  interval from resampling participants
  (:func:`metcli.evaluation.bootstrap.cluster_bootstrap_weights`). Lesion counts
  (detection rate, agreement) are pooled over lesions, but their intervals resample
  participants with all their lesions (cluster bootstrap): lesions of one patient are
  not treated as independent.
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

from metcli.core.batch import DONE, SKIPPED, BatchReport, group_level, run_each
from metcli.core.errors import GeometryError, InputError, MetcliError, UsageError
from metcli.evaluation.seg_group import GroupSettings, write_group
from metcli.evaluation.seg_measures import REGIONS
from metcli.evaluation.seg_pairs import Item, evaluate_pair, find_items, select
from metcli.evaluation.seg_predictions import LesionClasses, read_lesion_classes
from metcli.evaluation.seg_summaries import check_dice_edges
from metcli.evaluation.seg_tables import DETECTION_COLUMNS, OVERLAP_COLUMNS, output_paths
from metcli.io.bids import resolve_levels, sidecar_path

log = logging.getLogger(__name__)

COMMAND = "evaluate-seg"

MIN_BOOTSTRAP = 100


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
    model: str | None  # the model asked for (None: the only one of the tables)
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
    seg_dir, reference_dir, out_dir = Path(seg_dir), Path(reference_dir), Path(out_dir)
    _check_pairs(lesions_dir, reference_lesions_dir, predictions, reference_predictions)
    settings = _group_settings(dice_edges, n_bootstrap, seed, confidence_level)
    _check_folders(lesions_dir, reference_lesions_dir)
    labels = [participants] if isinstance(participants, str) else participants
    do_participants, do_group = resolve_levels(level, labels)
    run = _prepare(
        seg_dir,
        reference_dir,
        out_dir,
        select(seg_dir, reference_dir, labels),
        lesions_dir=lesions_dir,
        reference_lesions_dir=reference_lesions_dir,
        predictions=predictions,
        reference_predictions=reference_predictions,
        model=model,
    )
    result = SegEvaluation(report=BatchReport())
    if do_participants:
        _participant_level(run, overwrite, progress, result.report)
    if do_group:
        with group_level(result.report):
            _group_level(run, settings, overwrite, result)
    return result


def _check_pairs(lesions_dir, reference_lesions_dir, predictions, reference_predictions) -> None:
    """Raise UsageError unless the options that go together are given together."""
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


def _group_settings(dice_edges, n_bootstrap, seed, confidence_level) -> GroupSettings:
    """The checked statistics of the group level (UsageError for bad ones)."""
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
    return GroupSettings(
        edges=edges, n_bootstrap=n_bootstrap, seed=seed, confidence_level=confidence_level
    )


def _check_folders(lesions_dir, reference_lesions_dir) -> None:
    """Raise InputError for a lesion folder that does not exist."""
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


def _prepare(
    seg_dir: Path,
    reference_dir: Path,
    out_dir: Path,
    chosen: Sequence[str],
    *,
    lesions_dir: str | Path | None,
    reference_lesions_dir: str | Path | None,
    predictions,
    reference_predictions,
    model: str | None,
) -> _SegRun:
    """Roots, participant-level provenance, predictions (read first: a bad table stops the
    run before any work) and the acquisitions to compare; then the dataset description."""
    from metcli.io.files import check_output_not_inside_input
    from metcli.io.provenance import Step, write_dataset_description

    lesions_dir = None if lesions_dir is None else Path(lesions_dir)
    reference_lesions_dir = None if reference_lesions_dir is None else Path(reference_lesions_dir)
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
    write_dataset_description(
        out_dir,
        name="metcli evaluate-seg",
        sources=roots,
        description="agreement of segmentations with reference masks",
    )
    return _SegRun(
        out_dir=out_dir,
        roots=roots,
        participant_settings=participant_settings,
        part_step=part_step,
        classes=classes,
        model=model,
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


def _participant_level(run: _SegRun, overwrite: bool, progress, report: BatchReport) -> None:
    """The tables of every acquisition; a failing one is recorded and the others are done."""

    def work(item: Item) -> str:
        return _evaluate_one(item, run.out_dir, run.part_step, overwrite, report)

    run_each(run.items, key=lambda i: i.describe(), work=work, progress=progress, report=report)


def _group_level(
    run: _SegRun, settings: GroupSettings, overwrite: bool, result: SegEvaluation
) -> None:
    """The group-level tables, unless an acquisition failed at the participant level."""
    from metcli.io.provenance import Step

    if result.report.failed:
        log.warning(
            "group level not written: %d item(s) failed at the participant level; "
            "fix them, or leave those participants out with --participant-label "
            "and --level group",
            len(result.report.failed),
        )
        return
    provenance = {
        **run.participant_settings,
        **settings.provenance(),
        "model": run.model,
        "classification_agreement": run.classes is not None,
    }
    step = Step(COMMAND, run.out_dir, run.roots, provenance)
    found = write_group(
        run.items,
        run.out_dir,
        run.part_step,
        step,
        classes=run.classes,
        settings=settings,
        overwrite=overwrite,
        report=result.report,
    )
    result.overlap_summary, result.detection_summary = found.overlap, found.detection
    result.agreement, result.group_written = found.agreement, found.written


def _evaluate_one(item: Item, out_dir: Path, step, overwrite: bool, report: BatchReport) -> str:
    from metcli.io.files import OutputSet, write_tsv_to

    if item.missing:
        raise InputError(
            "; ".join(item.missing),
            fix="give both masks (and lesion maps) of every acquisition, or leave "
            "the participant out with --participant-label",
        )
    overlap_path, detection_path = output_paths(out_dir, item.entities)
    inputs = step.inputs(item.input_paths())
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
    keys = item.row_keys()
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
