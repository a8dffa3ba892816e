"""The group level of ``metcli evaluate-seg``.

The participant tables are read back (each must be current) and summarised: overlap per
patient, detection by size band and, with lesion-level predictions, classification
agreement by Dice band. They are written as ``overlap.tsv``, ``detection.tsv``,
``detection_summary.tsv`` and ``classification_agreement.tsv`` (see
:mod:`metcli.evaluation.evaluate_seg` for the definitions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metcli.core.batch import BatchReport
from metcli.core.errors import InputError
from metcli.evaluation.seg_pairs import Item
from metcli.evaluation.seg_predictions import LesionClasses, add_classes
from metcli.evaluation.seg_summaries import (
    CLUSTER_NOTE,
    agreement_rows,
    detection_summary,
    patient_summary,
)
from metcli.evaluation.seg_tables import (
    AGREEMENT_COLUMNS,
    AGREEMENT_TABLE,
    CLASS_COLUMNS,
    DETECTION_COLUMNS,
    DETECTION_TABLE,
    OVERLAP_COLUMNS,
    OVERLAP_TABLE,
    SUMMARY_COLUMNS,
    SUMMARY_TABLE,
    output_paths,
    read_typed_table,
)
from metcli.io.bids import sidecar_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupSettings:
    """The statistics of the group level: the Dice bands and the patient bootstrap."""

    edges: tuple[float, ...]  # inner edges of the Dice bands of the agreement table
    n_bootstrap: int
    seed: int
    confidence_level: float

    def provenance(self) -> dict[str, Any]:
        """These settings as the group level's provenance records them."""
        return {
            "dice_band_edges": list(self.edges),
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "confidence_level": self.confidence_level,
        }

    def bootstrap(self) -> dict[str, Any]:
        """The keyword arguments of the patient-bootstrap summaries."""
        return {"n_boot": self.n_bootstrap, "seed": self.seed, "level": self.confidence_level}


@dataclass
class GroupSummaries:
    """The group-level summaries, and whether their tables were written (else current)."""

    overlap: list[dict] = field(default_factory=list)
    detection: list[dict] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)
    written: bool = False


def write_group(
    items: Sequence[Item],
    out_dir: Path,
    part_step,
    step,
    *,
    classes: tuple[LesionClasses, LesionClasses] | None,
    settings: GroupSettings,
    overwrite: bool,
    report: BatchReport,
) -> GroupSummaries:
    """Summarise the participant tables of ``items`` and write the group-level tables
    (unless they are current); their paths are added to ``report.outputs``.

    ``part_step`` and ``step`` are the provenance of the participant and group levels;
    ``classes`` the lesion classes predicted from both mask sets, if given.
    """
    from metcli.io.files import OutputSet, write_tsv_to

    with_lesions = any(item.lesions is not None for item in items)
    used, overlap, detection, scans = _read_participant_tables(
        items, out_dir, part_step, with_lesions
    )
    counts, agreement, pred_files = _agreement(detection, classes, settings)
    inputs = step.inputs(used + pred_files)
    summary = patient_summary(overlap, **settings.bootstrap())
    det_summary = (
        detection_summary(detection, scans, **settings.bootstrap()) if with_lesions else []
    )
    found = GroupSummaries(overlap=summary, detection=det_summary, agreement=agreement)
    tables = _group_tables(
        out_dir,
        overlap,
        detection,
        found,
        with_lesions=with_lesions,
        with_classes=classes is not None,
        counts=counts,
        settings=settings,
    )
    if not overwrite and all(step.is_done(sidecar_path(t[0]), inputs) for t in tables):
        report.outputs.extend(t[0] for t in tables)
        return found
    with OutputSet() as outs:
        for path, columns, schema, rows, extra in tables:
            tmp = outs.path(path)
            write_tsv_to(rows, columns, tmp, schema=schema, where=path)
            step.write_sidecar(outs, sidecar_path(path), inputs, {path: tmp}, extra=extra)
    report.outputs.extend(t[0] for t in tables)
    found.written = True
    log.info("group level: %d overlap row(s), %d detection row(s)", len(overlap), len(detection))
    return found


def _agreement(
    detection: list[dict],
    classes: tuple[LesionClasses, LesionClasses] | None,
    settings: GroupSettings,
) -> tuple[Any, list[dict], list[Path]]:
    """(lesion counts, agreement rows, prediction files used); the detection rows get the
    classes predicted from both mask sets. Nothing without ``classes``."""
    if classes is None:
        return None, [], []
    auto, manual = classes
    counts = add_classes(detection, auto, manual)
    agreement = agreement_rows(
        detection,
        model=auto.model,
        reference_model=manual.model,
        edges=settings.edges,
        **settings.bootstrap(),
    )
    pred_files = [auto.path, manual.path]
    pred_files += [sidecar_path(p) for p in (auto.path, manual.path) if sidecar_path(p).is_file()]
    return counts, agreement, pred_files


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
        inputs = part_step.inputs(item.input_paths())
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
        scans.append(tuple(item.row_keys().values()))
    return used, overlap, detection, scans


def _group_tables(
    out_dir: Path,
    overlap: list[dict],
    detection: list[dict],
    found: GroupSummaries,
    *,
    with_lesions: bool,
    with_classes: bool,
    counts,
    settings: GroupSettings,
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
                "PatientLevelSummary": found.overlap,
                "SummaryNote": "mean over participants (each the mean of its acquisitions) "
                f"with a {int(settings.confidence_level * 100)}% patient-bootstrap "
                f"percentile interval ({settings.n_bootstrap} resamples, seed "
                f"{settings.seed}); undefined "
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
                found.detection,
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
                found.agreement,
                {
                    "Description": "agreement of the predicted class from the automatic "
                    "and the reference masks per matched lesion, by Dice "
                    "band (as Table 4 of Giannini et al. 2020)",
                    "Lesions": counts,
                },
            )
        )
    return tables
