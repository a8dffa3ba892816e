"""The study additions of ``metcli evaluate``: collapsed classes (``--collapse``), reader
studies (``--readers``) and Table 1 (``--table1-columns``).

:func:`prepare_study` reads their inputs beside the predictions, :func:`compute_study`
computes their figures once the models are scored, and :func:`write_study_outputs`
writes ``readers.tsv`` and ``table1.tsv`` with their sidecars; :func:`study_document`
is what metrics.json (and so report.html) holds of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from metcli.core.errors import UsageError
from metcli.evaluation.collapse import Groups, collapse_models, describe, parse_collapse
from metcli.evaluation.inputs import ModelPredictions
from metcli.evaluation.readers import (
    READER_RESULT_COLUMNS,
    read_readers,
    reader_results,
    reader_roc_rows,
)
from metcli.evaluation.table1 import table1_columns, table1_table

log = logging.getLogger(__name__)


@dataclass
class StudyInputs:
    """What ``--collapse``, ``--readers`` and Table 1 read."""

    groups: Groups = ()
    mapping: dict[str, str] = field(default_factory=dict)
    readings: list[dict[str, Any]] | None = None
    participants: list[dict[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # inputs to hash


@dataclass
class StudyResults:
    """What the study additions computed."""

    collapse: str | None = None
    reader_rows: list[dict[str, Any]] = field(default_factory=list)
    readers_given: bool = False
    table1_header: list[str] = field(default_factory=list)
    table1_rows: list[dict[str, Any]] = field(default_factory=list)


def study_options(readers, table1_columns, collapse) -> dict[str, Any]:
    """The :class:`EvaluateOptions` fields of ``evaluate``'s study arguments."""
    return {
        "readers": None if readers is None else Path(readers),
        "table1_columns": None if table1_columns is None else tuple(table1_columns),
        "collapse": parse_collapse(collapse),
    }


def prepare_study(
    options,
    labels_path: Path,
    models: list[ModelPredictions],
    label_map: dict[str, str | None],
    roots: dict[str, Path],
) -> tuple[list[ModelPredictions], dict[str, str | None], StudyInputs]:
    """Collapse the models' classes, read the readers table and participants.tsv's
    columns for Table 1; adds the readers table's folder to ``roots`` when it is new."""
    from metcli.io.files import read_tsv

    study = StudyInputs(groups=options.collapse)
    if options.collapse:
        models, label_map, study.mapping = collapse_models(
            models, label_map, options.collapse, options.positive_class
        )
    if options.readers is not None:
        path = Path(options.readers)
        classes = sorted({c for m in models for c in m.classes})
        study.readings = read_readers(path, label_map, classes, study.mapping)
        study.files.append(path)
        folder = path.parent.resolve()
        if all(folder != root.resolve() for root in roots.values()):
            roots["readers"] = path.parent
    study.participants = read_tsv(labels_path)
    study.columns = table1_columns(study.participants, options.table1_columns)
    return models, label_map, study


def check_study_options(options) -> None:
    """UsageError for study options that cannot work together."""
    if options.readers is not None and options.level == "lesion":
        raise UsageError(
            "--readers needs the patient level (a reader's call is about a patient)",
            fix="use --level patient or both",
        )
    if options.readers is not None and not Path(options.readers).is_file():
        raise UsageError(f"--readers {options.readers}: no such file", fix="give the TSV")


def compute_study(
    study: StudyInputs | None,
    results: Mapping[str, Sequence],
    models: Sequence[ModelPredictions],
    label_map: Mapping[str, str | None],
    level_ci: float,
) -> StudyResults:
    """Readers' figures against every model at patient level, and Table 1."""
    out = StudyResults()
    if study is None:
        return out
    out.collapse = describe(study.groups) if study.groups else None
    if study.readings is not None:
        out.readers_given = True
        out.reader_rows = reader_results(study.readings, results.get("patient", []), level_ci)
    if study.columns:
        patients = sorted({r["participant_id"] for m in models for r in m.rows})
        classes = list(dict.fromkeys(c for m in models for c in m.classes))
        out.table1_header, out.table1_rows = table1_table(
            study.participants,
            patients,
            {p: label_map[p] for p in patients},
            classes,
            study.columns,
        )
    return out


def add_reader_points(figures: dict[str, tuple], study: StudyResults) -> None:
    """Put the readers' operating points in the patient-level ROC figure's rows."""
    if study.reader_rows and "roc_patient" in figures:
        figures["roc_patient"][2].extend(reader_roc_rows(study.reader_rows))


def study_document(study: StudyResults | None) -> dict[str, Any]:
    """The keys metrics.json holds of the study additions (none when there are none)."""
    doc: dict[str, Any] = {}
    if study is None:
        return doc
    if study.collapse:
        doc["Collapse"] = study.collapse
    if study.readers_given:
        doc["Readers"] = [{k: r.get(k) for k in READER_RESULT_COLUMNS} for r in study.reader_rows]
    if study.table1_rows:
        doc["Table1"] = {
            "columns": study.table1_header,
            "rows": [{k: r.get(k) for k in study.table1_header} for r in study.table1_rows],
        }
    return doc


def write_study_outputs(run, outs, study: StudyResults | None) -> None:
    """``readers.tsv`` and ``table1.tsv`` with their sidecars (when there is something)."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import write_tsv_to

    if study is None:
        return
    tables = []
    if study.readers_given:
        tables.append(
            (
                "readers",
                READER_RESULT_COLUMNS,
                "reader_results",
                study.reader_rows,
                "readers' sensitivity and specificity (Clopper-Pearson) beside each model's "
                "at its cut-off on the same patients, and McNemar's test of their "
                "correctness; patient level",
            )
        )
    if study.table1_rows:
        tables.append(
            (
                "table1",
                study.table1_header,
                "table1",
                study.table1_rows,
                "Table 1: the evaluated patients' characteristics by true class; median "
                "[IQR] with Kruskal-Wallis, n (%) with chi-squared or Fisher's exact test",
            )
        )
    for name, columns, schema, rows, description in tables:
        target = run.out_dir / f"{name}.tsv"
        tmp = outs.path(target)
        write_tsv_to(rows, columns, tmp, schema=schema, where=target)
        run.write_sidecar(outs, target, {target: tmp}, extra={"Description": description})
        run.written += [target, sidecar_path(target)]
