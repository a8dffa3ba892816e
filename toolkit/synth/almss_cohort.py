"""``metcli synth OUT_DIR --scenario almss``: a four-phase synthetic cohort for the ALMSS
study's hierarchical task (HCC vs ICC vs metastasis, then the metastasis's origin).

Writes the same folders as the 2023 scenario (:func:`metcli.synth.synth.synth_cohort`),
with four CTs per participant (``ce-native``, ``ce-arterial``, ``ce-portal``,
``ce-delayed``), each on its own grid, the truth on the portal grid, and
``OUT_DIR/hierarchy.yaml``: the groups ``metcli train-radiomics --hierarchy`` takes. See
``docs/synth.md``, section "The almss scenario".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from metcli.core.batch import BatchReport, group_level, run_each
from metcli.core.errors import ParticipantsFailed, UsageError
from metcli.io.files import OutputSet
from metcli.synth.almss import (
    ALMSS_CLASSES,
    CLASS_RATIO,
    GROUPS,
    PHASES,
    REFERENCE_PHASE,
    AlmssParams,
    class_counts_of,
    make_params,
)
from metcli.synth.almss_subjects import AlmssFiles, AlmssWriter
from metcli.synth.classes import cohort_classes
from metcli.synth.phases import phase_sizes, sizes_record
from metcli.synth.subjects import Subject
from metcli.synth.synth import (
    _prepare,
    _split_truth,
    _start_datasets,
    _warn_about_strays,
    participant_labels,
)
from metcli.synth.truth import ALMSS_TRUTH_COLUMNS, write_cohort_table

log = logging.getLogger(__name__)

SCENARIO = "almss"
#: Participants of a cohort when neither ``subjects`` nor ``class_counts`` is given: one
#: round of :data:`~metcli.synth.almss.CLASS_RATIO`.
DEFAULT_SUBJECTS = sum(CLASS_RATIO.values())
HIERARCHY_NAME = "hierarchy.yaml"


def almss_classes(
    subjects: int | None = None, class_counts: Mapping[str, int] | None = None
) -> list[str]:
    """Each participant's class: the first ``subjects`` of the default ratio
    (:data:`~metcli.synth.almss.CLASS_RATIO`), or ``class_counts`` interleaved."""
    return cohort_classes(
        subjects, class_counts, order=ALMSS_CLASSES, ratio=CLASS_RATIO, default=DEFAULT_SUBJECTS
    )


def synth_almss_cohort(
    out_dir: str | Path,
    *,
    subjects: int | None = None,
    class_counts: Mapping[str, int] | None = None,
    seed: int = 0,
    size: str | Mapping = "small",
    dicom: bool = False,
    truth_lesions: bool = True,
    null: bool = False,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    report: BatchReport | None = None,
    **knobs: Any,
) -> Path:
    """Write an almss cohort to ``out_dir`` and return ``out_dir``.

    Args:
        subjects: participants in the default ratio (11 when neither this nor
            ``class_counts`` is given); or
        class_counts: participants per class ({"hcc": 6, "icc": 2, ...}; classes left
            out get none).
        seed: the random seed; size: ``small``, ``paper`` or a mapping phase -> Grid.
        dicom: also write each phase as a DICOM series.
        truth_lesions: run split-lesions on the true masks.
        null: no class difference at all (:meth:`AlmssParams.null`).
        knobs: fields of :class:`~metcli.synth.almss.AlmssParams`; a per-class mapping may
            give some classes only.

    Raises:
        UsageError: a bad count, seed, size or knob; nothing is written.
        OutputError: the folder cannot be written, or holds a raw dataset of someone else.
        ParticipantsFailed: some participants failed; the others are written.
    """
    params = make_params(null=null, **knobs)
    sizes = phase_sizes(size)
    classes = almss_classes(subjects, class_counts)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a whole number >= 0, got {seed!r}")
    out_dir = Path(out_dir)
    raw_dir, truth_dir = _prepare(out_dir)
    settings = almss_settings(params, size, sizes, classes, seed=int(seed), null=null)
    dicom_dir = out_dir / "sourcedata" / "dicom"
    steps = _start_datasets(raw_dir, truth_dir, dicom_dir, settings)
    writer = AlmssWriter(
        params, sizes, int(seed), steps, raw_dir, truth_dir, dicom_dir, dicom, overwrite
    )
    labels = participant_labels(len(classes))
    cohort = [Subject(i, label, cls) for i, (label, cls) in enumerate(zip(labels, classes))]
    _warn_about_strays(raw_dir, labels)
    report = run_each(
        cohort, key=lambda s: s.participant_id, work=writer.write, progress=progress, report=report
    )
    with group_level(report):
        _write_cohort_tables(writer, cohort, report)
        write_hierarchy(out_dir, raw_dir, settings, class_counts_of(classes))
    if report.failed:
        raise ParticipantsFailed(report.failed, total=len(cohort))
    if truth_lesions:
        with group_level(report):
            _split_truth(truth_dir, out_dir / "derivatives" / "truth-lesions", overwrite)
    log.info("synthetic almss cohort in %s: %d participant(s)", out_dir, len(cohort))
    return out_dir


def almss_settings(
    params: AlmssParams, size, sizes, classes: Sequence[str], *, seed: int, null: bool
) -> dict[str, Any]:
    """The cohort's settings, as every output's provenance records them."""
    return {
        "scenario": SCENARIO,
        "seed": int(seed),
        "size": size if isinstance(size, str) else "custom",
        "grids": sizes_record(sizes),
        "class_counts": class_counts_of(classes),
        "null": bool(null),
        "phases": list(PHASES),
        "reference_phase": REFERENCE_PHASE,
        "knobs": params.knobs(),
    }


def _write_cohort_tables(
    writer: AlmssWriter, cohort: Sequence[Subject], report: BatchReport
) -> None:
    """participants.tsv and the truth's ``lesions.tsv`` of the participants written."""
    from metcli.io.participants import write_participants

    files = {
        s.participant_id: AlmssFiles.of(s, writer.raw_dir, writer.truth_dir, writer.dicom_dir)
        for s in cohort
    }
    written = [
        s
        for s in cohort
        if files[s.participant_id].cts[REFERENCE_PHASE].is_file()
        and s.participant_id not in report.failed
    ]
    if written:
        write_participants(writer.raw_dir, [writer.rows[s.participant_id] for s in written])
        write_cohort_table(
            writer.steps["truth"],
            writer.truth_dir,
            [files[s.participant_id].table for s in written],
            columns=ALMSS_TRUTH_COLUMNS,
        )


def hierarchy_groups(counts: Mapping[str, int]) -> dict[str, list[str]] | None:
    """The hierarchy's groups for a cohort's class counts (classes without participants
    left out), or None when they make no hierarchy (fewer than two groups, or no group of
    two classes)."""
    groups = {
        group: [c for c in members if counts.get(c, 0) > 0] for group, members in GROUPS.items()
    }
    groups = {g: members for g, members in groups.items() if members}
    if len(groups) < 2 or all(len(m) < 2 for m in groups.values()):
        return None
    return groups


def write_hierarchy(
    out_dir: Path, raw_dir: Path, settings: Mapping[str, Any], counts: Mapping[str, int]
) -> Path | None:
    """``OUT_DIR/hierarchy.yaml`` (with its sidecar ``hierarchy.json``): step 1 hcc / icc /
    metastasis, step 2 the metastasis origins; None when the classes make no hierarchy."""
    import yaml

    from metcli.io.provenance import Step

    path = out_dir / HIERARCHY_NAME
    groups = hierarchy_groups(counts)
    if groups is None:
        log.warning(
            "the cohort's classes make no hierarchy (two groups, one of two classes or more "
            "are needed): %s not written%s",
            path.name,
            "; the one there is from an earlier cohort" if path.exists() else "",
        )
        return None
    step = Step("synth", out_dir, {"raw": raw_dir}, settings)
    sidecar = path.with_suffix(".json")  # the sidecar rule; metcli.io.bids knows no .yaml
    if step.is_done(sidecar, []):
        return path
    doc = {
        "description": "metcli synth --scenario almss: step 1 hcc / icc / metastasis, "
        "step 2 the origin of a metastasis (docs/synth.md)",
        "groups": groups,
    }
    with OutputSet() as outs:
        tmp = outs.path(path)
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False, width=100), encoding="utf-8")
        step.write_sidecar(outs, sidecar, [], {path: tmp}, extra={"Synthetic": True})
    return path
