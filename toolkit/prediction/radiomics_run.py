"""predict's run of a radiomics model (:func:`predict_radiomics`): the provenance record
of the run, each participant's predictions table, and the group table, written from the
graph's probabilities or (the group level only) read back from the participants' files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from metcli.core.batch import FAILED, SKIPPED, BatchReport, group_level, run_each
from metcli.prediction.outputs import (
    COMMAND,
    current_predictions,
    decision_extra,
    participant_path,
    recorded_extra,
    rows_for,
    sidecar_of,
    write_group,
    write_participant,
)
from metcli.prediction.radiomics import Prepared, feature_tables, owner, read_feature_rows

log = logging.getLogger(__name__)


@dataclass
class RadiomicsRun:
    """What every output of a radiomics predict run records: the provenance step, the
    input roots, the sidecar's extra keys and the model."""

    step: Any
    roots: dict[str, Path]
    extra: dict[str, Any]
    models: list[dict]
    participants_table: Path | None


def run_context(
    model_dir: Path,
    card: dict,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    participants,
    aggregate: str,
    session: str | None,
) -> RadiomicsRun:
    """The record of a run: the input roots (the model, each INPUT's folder,
    participants.tsv's), the provenance step, the sidecars' extra keys and the model."""
    from metcli.io.files import sha256_file
    from metcli.io.provenance import Step

    roots = {"model": model_dir}
    for i, path in enumerate(inputs):
        roots[f"features{i or ''}"] = path if path.is_dir() else path.parent
    participants_table = None
    if participants is not None:
        participants_table = Path(participants)
        if not participants_table.is_file():
            participants_table = participants_table / "participants.tsv"
        roots["participants"] = participants_table.parent
    model_sha = sha256_file(model_dir / "model.onnx")
    step = Step(
        COMMAND,
        out_dir,
        roots,
        {"model_sha256": model_sha, "aggregate": aggregate, "session": session},
    )
    extra = {
        "model": card["name"],
        "classes": card["classes"],
        "positive_class": card["positive_class"],
        "threshold": card["threshold"],
        "threshold_source": card["threshold_source"],
        "selected": bool(card.get("selected_by_cv", False)),
        "patient_aggregate": aggregate,
        "ExecutionProvider": None,
    }
    for key in ("positive_class", "threshold"):  # none for a multi-class model
        if extra[key] is None:
            del extra[key]
    extra.update(decision_extra(card))
    return RadiomicsRun(
        step, roots, extra, [{"name": card["name"], "sha256": model_sha}], participants_table
    )


def predict_radiomics(
    model_dir: Path,
    card: dict,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    backend_class,
    participants,
    aggregate: str,
    device: str,
    session: str | None,
    labels: list[str] | None,
    levels: tuple[bool, bool],
    overwrite: bool,
    progress,
) -> BatchReport:
    """predict's run for a radiomics model (see :func:`metcli.prediction.predict.predict`)."""
    from metcli.core.devices import onnx_providers
    from metcli.io.files import check_output_not_inside_input

    do_participants, do_group = levels
    check_output_not_inside_input(out_dir, [model_dir] + [p for p in inputs if p.is_dir()])
    # a run of both levels over everyone reads extract's features.tsv, as before; the other
    # runs read each participant's own table where extract's folder has them
    full_run = do_participants and do_group and not labels
    tables, chosen = feature_tables(inputs, labels, own_tables=not full_run)
    run = run_context(
        model_dir,
        card,
        inputs,
        out_dir,
        participants=participants,
        aggregate=aggregate,
        session=session,
    )
    report = BatchReport()
    if not do_participants:
        _describe(out_dir, model_dir, card)
        return radiomics_group(
            card,
            tables,
            chosen,
            out_dir,
            run,
            session=session,
            overwrite=overwrite,
            progress=progress,
            report=report,
        )
    backend = backend_class(model_dir, card, onnx_providers(device))
    log.info("running %s on %s", card["name"], backend.provider)
    run.extra["ExecutionProvider"] = backend.provider
    prepared = backend.prepare(tables, participants=participants, session=session, only=chosen)
    proba = backend.run(prepared.values)
    _describe(out_dir, model_dir, card)
    _write_participants(
        card,
        prepared,
        proba,
        out_dir,
        run,
        model_dir=model_dir,
        full_run=full_run,
        do_group=do_group,
        aggregate=aggregate,
        overwrite=overwrite,
        progress=progress,
        report=report,
    )
    return report


def _write_participants(
    card: dict,
    prepared: Prepared,
    proba,
    out_dir: Path,
    run: RadiomicsRun,
    *,
    model_dir: Path,
    full_run: bool,
    do_group: bool,
    aggregate: str,
    overwrite: bool,
    progress,
    report: BatchReport,
) -> None:
    """Each participant's predictions table, then (``do_group``) the group table."""
    sources = list(prepared.sources) + [model_dir / "model.onnx", model_dir / "model.json"]
    if run.participants_table is not None:
        sources.append(run.participants_table)
    inputs_record = run.step.inputs(sources)
    owners = {} if full_run else {path: owner(path) for path in prepared.sources}

    def inputs_of(pid: str) -> list[dict]:
        """The inputs of a participant's file: every table read (a full run), or its own
        table(s), the shared ones, the model and participants.tsv (any other run, so that
        a participant's sidecar does not depend on who else was in the run)."""
        if full_run:
            return inputs_record
        return [
            record
            for path, record in zip(sources, inputs_record)
            if owners.get(path) in (None, pid)
        ]

    by_participant: dict[str, list[int]] = {}
    for r, key in enumerate(prepared.keys):
        by_participant.setdefault(key[0], []).append(r)
    for pid, reason in sorted(prepared.failed.items()):
        log.error("%s: %s", pid, reason)
        report.record(pid, FAILED, reason)
    all_rows: list[dict] = []

    def work(pid: str) -> str:
        rows = by_participant[pid]
        table_rows = rows_for(
            card, pid, [prepared.keys[r][3] for r in rows], proba[rows], aggregate
        )
        dropped = prepared.dropped_lesions.get(pid, 0)
        status = write_participant(
            out_dir,
            prepared.keys[rows[0]],
            table_rows,
            card,
            run.step,
            inputs_of(pid),
            {**run.extra, "DroppedLesions": dropped},
            run.models,
            overwrite,
            report,
        )
        all_rows.extend(table_rows)
        return status

    run_each(sorted(by_participant), key=lambda p: p, work=work, progress=progress, report=report)
    if do_group and all_rows:
        with group_level(report):
            report.outputs.extend(
                write_group(
                    out_dir,
                    all_rows,
                    card,
                    run.step,
                    inputs_record,
                    run.extra,
                    run.models,
                    overwrite,
                )
            )


def radiomics_group(
    card,
    tables,
    chosen,
    out_dir,
    run: RadiomicsRun,
    *,
    session,
    overwrite,
    progress,
    report,
) -> BatchReport:
    """``predictions.tsv`` from the participants' current ``..._predictions.tsv`` (group level)."""
    table = read_feature_rows(card, tables, session=session)
    first: dict[str, tuple] = {}
    for key in table.keys:
        if chosen is None or key[0] in chosen:
            first.setdefault(key[0], key)
    all_rows: list[dict] = []
    used: list[dict] = []
    recorded: list[dict] = []

    def work(pid: str) -> str:
        path = participant_path(out_dir, first[pid])
        rows, inputs, doc = current_predictions(run.step, path, pid, roots=run.roots)
        all_rows.extend(rows)
        used.extend(i for i in inputs if i not in used)
        recorded.append(doc)
        report.outputs.extend([path, sidecar_of(path)])
        return SKIPPED

    run_each(sorted(first), key=lambda p: p, work=work, progress=progress, report=report)
    if all_rows:
        with group_level(report):
            report.outputs.extend(
                write_group(
                    out_dir,
                    all_rows,
                    card,
                    run.step,
                    used,
                    recorded_extra(run.extra, recorded),
                    run.models,
                    overwrite,
                )
            )
    return report


def _describe(out_dir: Path, model_dir: Path, card: dict) -> None:
    from metcli.io.provenance import write_dataset_description

    write_dataset_description(
        out_dir,
        name="metcli predict",
        sources={"model": model_dir},
        description=f"predictions of model {card['name']}",
    )
