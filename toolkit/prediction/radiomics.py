"""predict's radiomics backend: features tables (and covariates) to the graph's inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli.core.batch import FAILED, SKIPPED, BatchReport, run_each
from metcli.core.devices import onnx_session
from metcli.core.errors import InputError, MetcliError, UsageError
from metcli.prediction.outputs import (
    COMMAND,
    current_predictions,
    participant_path,
    recorded_extra,
    rows_for,
    sidecar_of,
    write_group,
    write_participant,
)

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Rows ready for the graph, and what was left out."""

    keys: list[tuple[str, str | None, str | None, int]]
    values: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)  # participant -> reason
    dropped_lesions: dict[str, int] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)


class RadiomicsBackend:
    """Features tables (and covariates) -> the radiomics graph's inputs."""

    kind = "radiomics"

    def __init__(self, model_dir: Path, card: dict, providers: Sequence[str]):
        self.card = card
        self.names = [item["name"] for item in card["inputs"]]
        self.session = onnx_session(Path(model_dir) / "model.onnx", providers=providers)
        self.provider = self.session.get_providers()[0]

    def prepare(
        self,
        inputs: Sequence[Path],
        *,
        participants: Path | None = None,
        session: str | None = None,
        only: set[str] | None = None,
    ) -> Prepared:
        """The graph's inputs of every lesion of ``inputs`` (features tables).

        ``participants``: participants.tsv with the covariates; ``only``: the
        participant ids (``sub-<label>``) to keep (None: all); one of them
        without a usable row fails alone.
        """
        from metcli.io.participants import read_label_rows
        from metcli.radiomics.data import encode_covariates

        card = self.card
        table = read_feature_rows(card, inputs, session=session)
        lacking = set()
        if only is not None:
            lacking = set(only) - {k[0] for k in table.keys}
            table = table.take(
                np.flatnonzero(np.array([k[0] in only for k in table.keys], dtype=bool))
            )
        where = table.tables[0]
        self._check_settings(table.settings_sha256, where)
        features = [i for i in card["inputs"] if i["source"] == "features"]
        missing = [i["column"] for i in features if i["column"] not in table.feature_names]
        if missing:
            raise InputError(
                f"the features lack {', '.join(missing[:3])}"
                + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                + f", input(s) of model {card['name']}",
                path=where,
                fix="give features extracted with the model's settings (see inputs in model.json)",
            )
        values = np.full((len(table.keys), len(card["inputs"])), np.nan)
        column = {n: j for j, n in enumerate(table.feature_names)}
        for item in features:
            values[:, item["index"]] = table.values[:, column[item["column"]]]
        prepared = Prepared(table.keys, values, sources=list(table.tables))
        for pid in sorted(lacking):
            prepared.failed[pid] = "no lesion row with status ok in the features"
        covariates = [i for i in card["inputs"] if i["source"] == "participants"]
        if covariates:
            if participants is None:
                raise UsageError(
                    f"model {card['name']} uses covariates ("
                    f"{', '.join(sorted({i['column'] for i in covariates}))})",
                    fix="give participants.tsv with --participants",
                )
            rows = {r["participant_id"]: r for r in read_label_rows(participants, None)}
            wanted = sorted({k[0] for k in table.keys})
            spec, encoded, lacking = encode_covariates(
                {p: rows.get(p, {}) for p in wanted}, [], spec=covariates
            )
            for pid in lacking:
                prepared.failed[pid] = (
                    f"no value of covariate(s) "
                    f"{', '.join(sorted({i['column'] for i in spec}))} in "
                    f"{Path(participants).name}"
                )
            for r, key in enumerate(table.keys):
                if key[0] in encoded:
                    for item, value in zip(spec, encoded[key[0]]):
                        values[r, item["index"]] = value
        incomplete = np.any(np.isnan(values), axis=1)
        for r in np.flatnonzero(incomplete):
            pid = table.keys[r][0]
            if pid not in prepared.failed:
                prepared.dropped_lesions[pid] = prepared.dropped_lesions.get(pid, 0) + 1
        if prepared.dropped_lesions:
            log.warning(
                "%d lesion(s) with a missing input value left out (%s)",
                sum(prepared.dropped_lesions.values()),
                ", ".join(sorted(prepared.dropped_lesions)),
            )
        keep = ~incomplete
        for pid in {k[0] for k in table.keys} - {k[0] for k, ok in zip(table.keys, keep) if ok}:
            prepared.failed.setdefault(pid, "no lesion with every input value")
        prepared.keys = [k for k, ok in zip(table.keys, keep) if ok]
        prepared.values = values[keep]
        return prepared

    def _check_settings(self, found: str | None, where: Path) -> None:
        expected = self.card.get("extraction_settings_sha256")
        if expected is None:
            log.warning(
                "model %s records no extraction settings; the features' settings cannot be checked",
                self.card["name"],
            )
            return
        if found is None:
            raise InputError(
                f"the features' sidecar records no extraction settings; model "
                f"{self.card['name']} needs extraction_settings_sha256 "
                f"{expected[:12]}...",
                path=where,
                fix="give the features table with the JSON sidecar extract wrote",
            )
        if found != expected:
            raise InputError(
                f"the features were extracted with other settings "
                f"(extraction_settings_sha256 {found[:12]}...) than model "
                f"{self.card['name']} was trained on ({expected[:12]}...)",
                path=where,
                fix="extract the features again with the settings of the model's training data",
            )

    def run(self, values: np.ndarray) -> np.ndarray:
        from metcli.radiomics import onnx as onnx_export

        if not len(values):
            return np.zeros((0, len(self.card["classes"])))
        return onnx_export.probabilities(self.session, self.names, values)


def read_feature_rows(card: dict, tables: Sequence[Path], *, session: str | None = None):
    """The features tables as a :class:`~metcli.radiomics.data.FeatureTable` (the card's phase)."""
    from metcli.radiomics.data import read_features

    try:
        return read_features(
            tables, phase=card.get("phase"), session=session, phase_option="the model's phase"
        )
    except UsageError as exc:
        raise InputError(exc.what, path=tables[0], fix=exc.fix) from None


def feature_tables(
    inputs: Sequence[Path], labels: Sequence[str] | None, *, own_tables: bool = True
) -> tuple[list[Path], set[str] | None]:
    """(features tables to read, participant ids to keep or None for all) of radiomics INPUTs.

    A features table is read whole and its rows are kept for the chosen
    participants. An extract folder gives each chosen participant's own tables
    (``sub-<id>/.../..._desc-radiomics_features.tsv``) when ``own_tables`` and
    the folder has them, else its ``features.tsv``. An unknown label is a
    :class:`UsageError` naming it.
    """
    from metcli.io.bids import find_files, select_participants
    from metcli.io.files import read_tsv
    from metcli.radiomics.data import features_table_path
    from metcli.radiomics.extract import DESC, SUFFIX

    found: list = []
    available: set[str] = set()
    for path in inputs:
        own = (
            find_files(path, suffix=SUFFIX, desc=DESC, extension=".tsv")
            if own_tables and path.is_dir()
            else []
        )
        if own:
            available.update(a.entities.sub for a in own)
            found.append(own)
        else:
            table = features_table_path(path)
            if labels:
                available.update(
                    str(r.get("participant_id", ""))[4:]
                    for r in read_tsv(table, required=("participant_id",))
                )
            found.append(table)
    chosen = None
    if labels:
        chosen = set(
            select_participants(
                sorted(available), labels, where=inputs[0] if len(inputs) == 1 else None
            )
        )
    tables: list[Path] = []
    for item in found:
        if isinstance(item, list):
            tables.extend(a.path for a in item if chosen is None or a.entities.sub in chosen)
        else:
            tables.append(item)
    return tables, None if chosen is None else {f"sub-{label}" for label in chosen}


def owner(table: Path) -> str | None:
    """The participant of one of extract's per-participant tables (None: a shared table)."""
    from metcli.io.bids import parse_name
    from metcli.radiomics.extract import DESC, SUFFIX

    try:
        entities = parse_name(Path(table).name)
    except MetcliError:
        return None
    if entities.suffix != SUFFIX or entities.desc != DESC:
        return None
    return entities.participant_id


def radiomics_group(
    card,
    tables,
    chosen,
    out_dir,
    step,
    roots,
    extra,
    models,
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
        rows, inputs, doc = current_predictions(step, path, pid, roots=roots)
        all_rows.extend(rows)
        used.extend(i for i in inputs if i not in used)
        recorded.append(doc)
        report.outputs.extend([path, sidecar_of(path)])
        return SKIPPED

    run_each(sorted(first), key=lambda p: p, work=work, progress=progress, report=report)
    if all_rows:
        report.outputs.extend(
            write_group(
                out_dir,
                all_rows,
                card,
                step,
                used,
                recorded_extra(extra, recorded),
                models,
                overwrite,
            )
        )
    return report


@dataclass
class RadiomicsRun:
    """What every output of a radiomics predict run records: the provenance step, the
    input roots, the sidecar's extra keys and the model."""

    step: Any
    roots: dict[str, Path]
    extra: dict[str, Any]
    models: list[dict]
    participants_table: Path | None


def _run_context(
    model_dir: Path,
    card: dict,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    participants,
    aggregate: str,
    session: str | None,
) -> RadiomicsRun:
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
    from metcli.io.provenance import write_dataset_description

    do_participants, do_group = levels
    check_output_not_inside_input(out_dir, [model_dir] + [p for p in inputs if p.is_dir()])
    # a run of both levels over everyone reads extract's features.tsv, as before; the other
    # runs read each participant's own table where extract's folder has them
    full_run = do_participants and do_group and not labels
    tables, chosen = feature_tables(inputs, labels, own_tables=not full_run)
    run = _run_context(
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
        write_dataset_description(
            out_dir,
            name="metcli predict",
            sources={"model": model_dir},
            description=f"predictions of model {card['name']}",
        )
        return radiomics_group(
            card,
            tables,
            chosen,
            out_dir,
            run.step,
            run.roots,
            run.extra,
            run.models,
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
    write_dataset_description(
        out_dir,
        name="metcli predict",
        sources={"model": model_dir},
        description=f"predictions of model {card['name']}",
    )
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
        report.outputs.extend(
            write_group(
                out_dir, all_rows, card, run.step, inputs_record, run.extra, run.models, overwrite
            )
        )
