"""``metcli predict``: run a metcli model (ONNX + card) on new participants.

A model directory holds ``model.onnx`` and its card ``model.json``. The card's
``kind`` picks the backend that turns the inputs into the graph's input
tensors: ``radiomics`` (features tables from ``metcli extract``, covariates
from participants.tsv) and ``image`` (train-cnn models: CT and lesion maps,
:mod:`metcli.predict_image`, which drives its own participant-by-participant
run through the backend's ``predict`` classmethod).

Before anything runs, the inputs are checked against the card: every input
feature must be present by name and the features must come from the same
extraction settings (the sidecar's ``extraction_settings_sha256``). Lesions
with a missing input value are left out (counted in the sidecar); a
participant lacking a covariate the model needs fails alone.

Predictions follow DESIGN.md: ``participant_id``, ``lesion_id`` (``n/a`` at the
patient level), ``level`` (lesion, patient), ``model``, ``set``, one
``prob_<class>`` per class in the model card's order, and ``predicted``. A
patient's probabilities are the mean of its lesions' (``aggregate="mean"``),
their maximum, or the share of its lesions predicted as each class (``vote``,
majority; a tie goes to the positive class).

Outputs of predict, in that format with the card's threshold (set ``test``): per participant ``sub-<id>/[ses-<s>/]anat/sub-<id>[_ses-<s>][_ce-<phase>]_predictions.tsv``
and, at the group level, ``predictions.tsv``; each with a JSON sidecar (classes,
positive class, threshold and its source, the model and its sha256).

Levels, as in BIDS apps (:func:`metcli.bids.resolve_levels`): a participant-level
run (``participant_label``, or ``level="participant"``) writes only the chosen
participants' files; a group-level run (``level="group"``) runs no model and
reads the participants' current files back into ``predictions.tsv``
(:func:`current_predictions`); without labels a run does both. For radiomics
models, a features table's rows are filtered to the chosen participants, and
extract's folder gives each participant's own table (:func:`feature_tables`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metcli.batch import DONE, FAILED, SKIPPED, BatchReport, run_each
from metcli.errors import InputError, MetcliError, UsageError
from metcli.predict_image import ImageBackend

log = logging.getLogger(__name__)

COMMAND = "predict"
DEVICES = ("auto", "cpu", "cuda")
GROUP_TABLE = "predictions.tsv"
AGGREGATES = ("mean", "max", "vote", "sum")


# ----------------------------------------------------------------------------- predictions
def prediction_columns(classes: Sequence[str]) -> list[str]:
    return (["participant_id", "lesion_id", "level", "model", "set"]
            + [f"prob_{c}" for c in classes] + ["predicted"])


def predicted_labels(proba: np.ndarray, classes: Sequence[str], *, positive: str | None,
                     threshold: float | None) -> list[str]:
    """Class names: binary by ``prob_positive >= threshold``, else the most probable class."""
    proba = np.asarray(proba, dtype=float)
    if len(classes) == 2 and positive is not None and threshold is not None:
        pos = list(classes).index(positive)
        neg = 1 - pos
        return [classes[pos] if p >= threshold else classes[neg] for p in proba[:, pos]]
    return [classes[int(i)] for i in np.argmax(proba, axis=1)]


def aggregate_patients(participants: Sequence[str], proba: np.ndarray, classes: Sequence[str], *,
                       aggregate: str = "mean", positive: str | None = None,
                       threshold: float | None = None) -> tuple[list[str], np.ndarray]:
    """Patient-level probabilities from lesion-level ones (participants in sorted order).

    ``mean``: mean of the lesions' probabilities. ``max``: the maximum per class,
    renormalised to sum to 1 (for two classes: the positive class's maximum).
    ``vote``: the share of lesions predicted as each class (threshold for a
    binary model, else the most probable class). ``sum``: the sums S_c of the
    lesions' probabilities per class (as the non-contrast MRI study summed its
    image outputs per patient) through a softmax, exp(S_c) / sum_k exp(S_k): the
    class with the largest sum is the most probable and every lesion that
    agrees makes the patient's probabilities sharper (two classes:
    1 / (1 + exp(-sum of (2 p - 1))) for the positive class). Dividing the sums
    by their total would give the mean again, since a lesion's probabilities
    sum to 1.
    """
    if aggregate not in AGGREGATES:
        raise UsageError(f"aggregate {aggregate!r} is not one of {', '.join(AGGREGATES)}")
    participants = np.asarray(participants, dtype=object)
    proba = np.asarray(proba, dtype=float)
    order = sorted(set(participants.tolist()))
    out = np.zeros((len(order), proba.shape[1]))
    if aggregate == "vote":
        votes = np.array(predicted_labels(proba, classes, positive=positive,
                                          threshold=threshold), dtype=object)
    for i, pid in enumerate(order):
        rows = participants == pid
        if aggregate == "mean":
            out[i] = proba[rows].mean(axis=0)
        elif aggregate == "sum":
            total = proba[rows].sum(axis=0)
            weights = np.exp(total - total.max())
            out[i] = weights / weights.sum()
        elif aggregate == "max":
            if len(classes) == 2 and positive is not None:
                pos = list(classes).index(positive)
                out[i, pos] = proba[rows, pos].max()
                out[i, 1 - pos] = 1.0 - out[i, pos]
            else:
                peak = proba[rows].max(axis=0)
                out[i] = peak / peak.sum()
        else:
            out[i] = [np.mean(votes[rows] == c) for c in classes]
    return order, out


def prediction_rows(participants: Sequence[str], lesion_ids: Sequence[int], proba: np.ndarray,
                    classes: Sequence[str], *, model: str, set_name: str,
                    positive: str | None, threshold: float | None,
                    aggregate: str = "mean") -> list[dict[str, Any]]:
    """Lesion rows and patient rows in DESIGN.md's predictions format, sorted."""
    proba = np.asarray(proba, dtype=float)
    lesion_pred = predicted_labels(proba, classes, positive=positive, threshold=threshold)
    rows = []
    for pid, lesion, p, pred in zip(participants, lesion_ids, proba, lesion_pred):
        rows.append({"participant_id": pid, "lesion_id": int(lesion), "level": "lesion",
                     "model": model, "set": set_name,
                     **{f"prob_{c}": float(v) for c, v in zip(classes, p)}, "predicted": pred})
    order, patient = aggregate_patients(participants, proba, classes, aggregate=aggregate,
                                        positive=positive, threshold=threshold)
    patient_pred = predicted_labels(patient, classes, positive=positive, threshold=threshold)
    if aggregate in ("vote", "sum") and len(classes) == 2 and positive is not None:
        # the card's threshold was chosen on mean probabilities: vote and sum use 0.5
        # (the majority, the larger sum; a tie goes to the positive class)
        patient_pred = predicted_labels(patient, classes, positive=positive, threshold=0.5)
    for pid, p, pred in zip(order, patient, patient_pred):
        rows.append({"participant_id": pid, "lesion_id": None, "level": "patient",
                     "model": model, "set": set_name,
                     **{f"prob_{c}": float(v) for c, v in zip(classes, p)}, "predicted": pred})
    rows.sort(key=lambda r: (r["participant_id"], r["level"] != "lesion",
                             r["lesion_id"] if r["lesion_id"] is not None else 0))
    return rows


def load_card(model_dir: Path) -> dict:
    """The model card, checked against its schema and against model.onnx's sha256."""
    from metcli.fileio import read_json, sha256_file

    model_dir = Path(model_dir)
    card_path, onnx_path = model_dir / "model.json", model_dir / "model.onnx"
    for path in (card_path, onnx_path):
        if not path.is_file():
            raise InputError(f"not a metcli model directory: {path.name} is missing",
                             path=model_dir, fix="give a folder that train-radiomics wrote "
                                                 "(<classifier>_<sampler>/)")
    card = read_json(card_path)
    from metcli.schemas import validate

    validate(card, "cnn_card" if isinstance(card, dict) and card.get("kind") == "image"
             else "model_card", where=card_path)
    if sha256_file(onnx_path) != card["onnx"]["sha256"]:
        raise InputError("model.onnx does not match the sha256 in its card", path=onnx_path,
                         fix="copy the model directory again (model.onnx and model.json "
                             "belong together)")
    return card


@dataclass
class Prepared:
    """Rows ready for the graph, and what was left out."""

    keys: list[tuple[str, str | None, str | None, int]]
    values: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)       # participant -> reason
    dropped_lesions: dict[str, int] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)


class RadiomicsBackend:
    """Features tables (and covariates) -> the radiomics graph's inputs."""

    kind = "radiomics"

    def __init__(self, model_dir: Path, card: dict, providers: Sequence[str]):
        from metcli import onnx_export

        self.card = card
        self.names = [item["name"] for item in card["inputs"]]
        self.session = onnx_export.session(Path(model_dir) / "model.onnx", providers=providers)
        self.provider = self.session.get_providers()[0]

    def prepare(self, inputs: Sequence[Path], *, participants: Path | None = None,
                session: str | None = None, only: set[str] | None = None) -> Prepared:
        """The graph's inputs of every lesion of ``inputs`` (features tables).

        ``participants``: participants.tsv with the covariates; ``only``: the
        participant ids (``sub-<label>``) to keep (None: all); one of them
        without a usable row fails alone.
        """
        from metcli.radiomics_data import encode_covariates, read_label_rows

        card = self.card
        table = read_feature_rows(card, inputs, session=session)
        lacking = set()
        if only is not None:
            lacking = set(only) - {k[0] for k in table.keys}
            table = table.take(np.flatnonzero(np.array([k[0] in only for k in table.keys],
                                                       dtype=bool)))
        where = table.tables[0]
        self._check_settings(table.settings_sha256, where)
        features = [i for i in card["inputs"] if i["source"] == "features"]
        missing = [i["column"] for i in features if i["column"] not in table.feature_names]
        if missing:
            raise InputError(f"the features lack {', '.join(missing[:3])}"
                             + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                             + f", input(s) of model {card['name']}", path=where,
                             fix="give features extracted with the model's settings (see "
                                 "inputs in model.json)")
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
                raise UsageError(f"model {card['name']} uses covariates ("
                                 f"{', '.join(sorted({i['column'] for i in covariates}))})",
                                 fix="give participants.tsv with --participants")
            rows = {r["participant_id"]: r for r in read_label_rows(participants, None)}
            wanted = sorted({k[0] for k in table.keys})
            spec, encoded, lacking = encode_covariates(
                {p: rows.get(p, {}) for p in wanted}, [], spec=covariates)
            for pid in lacking:
                prepared.failed[pid] = (f"no value of covariate(s) "
                                        f"{', '.join(sorted({i['column'] for i in spec}))} in "
                                        f"{Path(participants).name}")
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
            log.warning("%d lesion(s) with a missing input value left out (%s)",
                        sum(prepared.dropped_lesions.values()),
                        ", ".join(sorted(prepared.dropped_lesions)))
        keep = ~incomplete
        for pid in {k[0] for k in table.keys} - {k[0] for k, ok in zip(table.keys, keep) if ok}:
            prepared.failed.setdefault(pid, "no lesion with every input value")
        prepared.keys = [k for k, ok in zip(table.keys, keep) if ok]
        prepared.values = values[keep]
        return prepared

    def _check_settings(self, found: str | None, where: Path) -> None:
        expected = self.card.get("extraction_settings_sha256")
        if expected is None:
            log.warning("model %s records no extraction settings; the features' settings "
                        "cannot be checked", self.card["name"])
            return
        if found is None:
            raise InputError(f"the features' sidecar records no extraction settings; model "
                             f"{self.card['name']} needs extraction_settings_sha256 "
                             f"{expected[:12]}...", path=where,
                             fix="give the features table with the JSON sidecar extract wrote")
        if found != expected:
            raise InputError(f"the features were extracted with other settings "
                             f"(extraction_settings_sha256 {found[:12]}...) than model "
                             f"{self.card['name']} was trained on ({expected[:12]}...)",
                             path=where, fix="extract the features again with the settings "
                                             "of the model's training data")

    def run(self, values: np.ndarray) -> np.ndarray:
        from metcli import onnx_export

        if not len(values):
            return np.zeros((0, len(self.card["classes"])))
        return onnx_export.probabilities(self.session, self.names, values)


def read_feature_rows(card: dict, tables: Sequence[Path], *, session: str | None = None):
    """The features tables as a :class:`~metcli.radiomics_data.FeatureTable` (the card's phase)."""
    from metcli.radiomics_data import read_features

    try:
        return read_features(tables, phase=card.get("phase"), session=session,
                             phase_option="the model's phase")
    except UsageError as exc:
        raise InputError(exc.what, path=tables[0], fix=exc.fix) from None


#: card kind -> backend class. A backend with a ``predict`` classmethod runs the whole
#: prediction itself (image models: :meth:`metcli.predict_image.ImageBackend.predict`).
BACKENDS: dict[str, Callable[..., Any]] = {"radiomics": RadiomicsBackend, "image": ImageBackend}
#: A hierarchical radiomics model (train-radiomics --hierarchy) runs like a flat one: its
#: model.onnx chains the steps (P(group) x P(label | group)) and its card lists the inputs
#: of every step (see metcli.radiomics_hierarchy).
BACKENDS["radiomics-hierarchy"] = RadiomicsBackend


def predict(model_dir, inputs: Sequence[Path], out_dir, *, participants=None,
            aggregate: str = "mean", device: str = "auto", session: str | None = None,
            explain: bool = False, participant_label: Sequence[str] | str | None = None,
            level: str | None = None, threads: int | None = None, overwrite: bool = False,
            progress: Callable[[str, str], None] | None = None) -> BatchReport:
    """Predict every participant of ``inputs`` with the model in ``model_dir``.

    Args:
        participants: participants.tsv with the covariates the model uses.
        participant_label: the participants to predict (labels with or without
            ``sub-``); None = all. An unknown label is a :class:`UsageError`.
        level: ``participant`` (only the participants' ``..._predictions.tsv``),
            ``group`` (``predictions.tsv`` from the participants' current
            files) or ``both``; None = both, or the participant level only
            when ``participant_label`` is given (:func:`metcli.bids.resolve_levels`).
        threads: PyTorch's CPU threads for ``explain`` (Grad-CAM);
            None = the current number (:func:`metcli.threads.limit_cpu_threads`).

    Returns a :class:`~metcli.batch.BatchReport` (one item per participant);
    ``outputs`` lists the files written or found current.
    """
    from metcli.bids import resolve_levels
    from metcli.fileio import check_output_not_inside_input, sha256_file
    from metcli.provenance import Step, write_dataset_description
    from metcli.threads import check_threads

    if aggregate not in AGGREGATES:
        raise UsageError(f"--aggregate {aggregate!r} is not one of {', '.join(AGGREGATES)}")
    if device not in DEVICES:
        raise UsageError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    check_threads(threads)
    labels = [participant_label] if isinstance(participant_label, str) else (
        list(participant_label) if participant_label else None)
    do_participants, do_group = resolve_levels(level, labels)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise UsageError("no INPUT given", fix="give a features table or extract's folder")
    card = load_card(model_dir)
    backend_class = BACKENDS.get(card["kind"])
    if backend_class is None:
        raise InputError(f"predict cannot run {card['kind']} models yet", path=model_dir,
                         fix=f"use a model of kind {', '.join(BACKENDS)}")
    if hasattr(backend_class, "predict"):  # image models: CT + lesion maps, one by one
        return backend_class.predict(model_dir, card, inputs, out_dir, aggregate=aggregate,
                                     device=device, session=session, explain=explain,
                                     participants=participants, participant_label=labels,
                                     level=level, threads=threads, overwrite=overwrite,
                                     progress=progress)
    if explain:
        raise UsageError(f"--explain needs an image model (train-cnn); {card['name']} is a "
                         f"{card['kind']} model", fix="leave out --explain")
    check_output_not_inside_input(out_dir, [model_dir] + [p for p in inputs if p.is_dir()])
    # a run of both levels over everyone reads extract's features.tsv, as before; the other
    # runs read each participant's own table where extract's folder has them
    full_run = do_participants and do_group and not labels
    tables, chosen = feature_tables(inputs, labels, own_tables=not full_run)

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
    step = Step(COMMAND, out_dir, roots, {"model_sha256": model_sha, "aggregate": aggregate,
                                          "session": session})
    extra = {"model": card["name"], "classes": card["classes"],
             "positive_class": card["positive_class"], "threshold": card["threshold"],
             "threshold_source": card["threshold_source"],
             "selected": bool(card.get("selected_by_cv", False)),
             "patient_aggregate": aggregate, "ExecutionProvider": None}
    for key in ("positive_class", "threshold"):  # none for a multi-class model
        if extra[key] is None:
            del extra[key]
    models = [{"name": card["name"], "sha256": model_sha}]
    report = BatchReport()
    if not do_participants:
        write_dataset_description(out_dir, name="metcli predict", sources={"model": model_dir},
                                  description=f"predictions of model {card['name']}")
        return _radiomics_group(card, tables, chosen, out_dir, step, roots, extra, models,
                                session=session, overwrite=overwrite, progress=progress,
                                report=report)

    from metcli import onnx_export

    backend = backend_class(model_dir, card, onnx_export.providers_for(device))
    log.info("running %s on %s", card["name"], backend.provider)
    extra["ExecutionProvider"] = backend.provider
    prepared = backend.prepare(tables, participants=participants, session=session, only=chosen)
    proba = backend.run(prepared.values)
    write_dataset_description(out_dir, name="metcli predict", sources={"model": model_dir},
                              description=f"predictions of model {card['name']}")
    sources = list(prepared.sources) + [model_dir / "model.onnx", model_dir / "model.json"]
    if participants_table is not None:
        sources.append(participants_table)
    inputs_record = step.inputs(sources)
    owners = {} if full_run else {path: _owner(path) for path in prepared.sources}

    def inputs_of(pid: str) -> list[dict]:
        """The inputs of a participant's file: every table read (a full run), or its own
        table(s), the shared ones, the model and participants.tsv (any other run, so that
        a participant's sidecar does not depend on who else was in the run)."""
        if full_run:
            return inputs_record
        return [record for path, record in zip(sources, inputs_record)
                if owners.get(path) in (None, pid)]

    by_participant: dict[str, list[int]] = {}
    for r, key in enumerate(prepared.keys):
        by_participant.setdefault(key[0], []).append(r)
    for pid, reason in sorted(prepared.failed.items()):
        log.error("%s: %s", pid, reason)
        report.record(pid, FAILED, reason)
    all_rows: list[dict] = []

    def work(pid: str) -> str:
        rows = by_participant[pid]
        table_rows = _rows(card, pid, [prepared.keys[r][3] for r in rows], proba[rows],
                           aggregate)
        key = prepared.keys[rows[0]]
        status = _write_participant(out_dir, key, table_rows, card, step, inputs_of(pid),
                                    {**extra, "DroppedLesions": prepared.dropped_lesions.get(pid,
                                                                                            0)},
                                    models, overwrite, report)
        all_rows.extend(table_rows)
        return status

    run_each(sorted(by_participant), key=lambda p: p, work=work, progress=progress,
             report=report)
    if do_group and all_rows:
        report.outputs.extend(_write_group(out_dir, all_rows, card, step, inputs_record, extra,
                                           models, overwrite))
    return report


def feature_tables(inputs: Sequence[Path], labels: Sequence[str] | None, *,
                   own_tables: bool = True) -> tuple[list[Path], set[str] | None]:
    """(features tables to read, participant ids to keep or None for all) of radiomics INPUTs.

    A features table is read whole and its rows are kept for the chosen
    participants. An extract folder gives each chosen participant's own tables
    (``sub-<id>/.../..._desc-radiomics_features.tsv``) when ``own_tables`` and
    the folder has them, else its ``features.tsv``. An unknown label is a
    :class:`UsageError` naming it.
    """
    from metcli.bids import find_files, select_participants
    from metcli.extract import DESC, SUFFIX
    from metcli.fileio import read_tsv
    from metcli.radiomics_data import features_table_path

    found: list = []
    available: set[str] = set()
    for path in inputs:
        own = (find_files(path, suffix=SUFFIX, desc=DESC, extension=".tsv")
               if own_tables and path.is_dir() else [])
        if own:
            available.update(a.entities.sub for a in own)
            found.append(own)
        else:
            table = features_table_path(path)
            if labels:
                available.update(str(r.get("participant_id", ""))[4:]
                                 for r in read_tsv(table, required=("participant_id",)))
            found.append(table)
    chosen = None
    if labels:
        chosen = set(select_participants(sorted(available), labels,
                                         where=inputs[0] if len(inputs) == 1 else None))
    tables: list[Path] = []
    for item in found:
        if isinstance(item, list):
            tables.extend(a.path for a in item if chosen is None or a.entities.sub in chosen)
        else:
            tables.append(item)
    return tables, None if chosen is None else {f"sub-{label}" for label in chosen}


def _owner(table: Path) -> str | None:
    """The participant of one of extract's per-participant tables (None: a shared table)."""
    from metcli.bids import parse_name
    from metcli.extract import DESC, SUFFIX

    try:
        entities = parse_name(Path(table).name)
    except MetcliError:
        return None
    if entities.suffix != SUFFIX or entities.desc != DESC:
        return None
    return entities.participant_id


def _radiomics_group(card, tables, chosen, out_dir, step, roots, extra, models, *, session,
                     overwrite, progress, report) -> BatchReport:
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
        report.outputs.extend(_write_group(out_dir, all_rows, card, step, used,
                                           recorded_extra(extra, recorded), models, overwrite))
    return report


def sidecar_of(path: Path) -> Path:
    from metcli.bids import sidecar_path

    return sidecar_path(path)


def participant_path(out_dir: Path, key) -> Path:
    """``sub-<id>/[ses-<s>/]anat/..._predictions.tsv`` of a (participant, session, phase) key."""
    from metcli.bids import Entities, derivative_path

    pid, ses, phase = key[:3]
    try:
        entities = Entities(sub=pid[4:], ses=ses, ce=phase, suffix="predictions",
                            extension=".tsv")
    except MetcliError as exc:
        raise InputError(f"{pid}: {exc.what}") from None
    return derivative_path(out_dir, entities, suffix="predictions", extension=".tsv")


def current_predictions(step, path: Path, pid: str, *, inputs: list[dict] | None = None,
                        roots: dict[str, Path] | None = None):
    """(rows, input records, sidecar) of a participant's predictions that are current.

    Current: the skip rule holds for ``inputs`` (image models: the
    participant's files and the model's), or, without ``inputs``, for the
    inputs its sidecar records, found again under ``roots`` and hashed anew
    (radiomics models, whose participant level reads the participant's own
    features table or a whole one). Otherwise an :class:`InputError` that says
    to run the participant level first.
    """
    from metcli.fileio import read_json

    sidecar = sidecar_of(path)
    stale = InputError(f"no current predictions of {pid} (missing, or made from other inputs "
                       "or with other settings than this run's)", path=path,
                       fix=f"run predict with --participant-label {pid[4:]} and the same model, "
                           "inputs and options first")
    if not sidecar.is_file():
        raise stale
    try:
        doc = read_json(sidecar)
    except InputError:
        raise stale from None
    if inputs is None:
        files = [_input_file(record, roots or {}) for record in
                 ((doc.get("Provenance") or {}).get("inputs") or [])]
        if not files or any(f is None for f in files):
            raise stale
        inputs = step.inputs(files)
    if not step.is_done(sidecar, inputs):
        raise stale
    from metcli.predict_image import _read_rows

    return _read_rows(path), inputs, doc


def _input_file(record: dict, roots: dict[str, Path]) -> Path | None:
    """The file of a recorded input (``bids:<root>:<path>``) under this run's roots, if any."""
    uri = str(record.get("uri", ""))
    parts = uri.split(":", 2)
    if len(parts) != 3 or parts[0] != "bids" or parts[1] not in roots:
        return None
    path = Path(roots[parts[1]]) / parts[2]
    return path if path.is_file() else None


def recorded_extra(extra: dict, sidecars: Sequence[dict]) -> dict:
    """``extra`` with what the participant runs recorded (execution provider, torch threads)."""
    out = dict(extra)
    for key in ("ExecutionProvider", "TorchThreads"):
        values: list = []
        for doc in sidecars:
            if key in doc and doc[key] not in values:
                values.append(doc[key])
        if values:
            out[key] = values[0] if len(values) == 1 else sorted(values, key=str)
        elif out.get(key) is None:
            out.pop(key, None)
    return out


def _rows(card, pid, lesion_ids, proba, aggregate) -> list[dict]:
    return prediction_rows([pid] * len(lesion_ids), lesion_ids, proba, card["classes"],
                           model=card["name"], set_name="test", positive=card["positive_class"],
                           threshold=card["threshold"], aggregate=aggregate)


def _write_participant(out_dir, key, rows, card, step, inputs, extra, models, overwrite,
                       report) -> str:
    from metcli.bids import sidecar_path
    from metcli.fileio import OutputSet, write_tsv_to

    pid = key[0]
    path = participant_path(out_dir, key)
    sidecar = sidecar_path(path)
    report.outputs.extend([path, sidecar])
    if not overwrite and step.is_done(sidecar, inputs):
        return SKIPPED
    with OutputSet() as outs:
        tmp = outs.path(path)
        write_tsv_to(rows, prediction_columns(card["classes"]), tmp, schema="predictions",
                     where=path)
        step.write_sidecar(outs, sidecar, inputs, {path: tmp}, models=models, extra={
            "Description": f"Predictions of model {card['name']} for {pid}: one row per "
                           "lesion and one for the patient", **extra})
    return DONE


def _write_group(out_dir, rows, card, step, inputs, extra, models, overwrite) -> list[Path]:
    from metcli.bids import sidecar_path
    from metcli.fileio import OutputSet, write_tsv_to

    path = Path(out_dir) / GROUP_TABLE
    sidecar = sidecar_path(path)
    rows = sorted(rows, key=lambda r: (r["participant_id"], r["level"] != "lesion",
                                       r["lesion_id"] or 0))
    if not overwrite and step.is_done(sidecar, inputs) and _same_rows(path, rows, card):
        return [path, sidecar]
    with OutputSet() as outs:
        tmp = outs.path(path)
        write_tsv_to(rows, prediction_columns(card["classes"]), tmp, schema="predictions",
                     where=path)
        step.write_sidecar(outs, sidecar, inputs, {path: tmp}, models=models, extra={
            "Description": f"Predictions of model {card['name']} for every participant",
            **extra})
    return [path, sidecar]


def _same_rows(path: Path, rows, card) -> bool:
    from metcli.fileio import tsv_text

    return path.read_text(encoding="utf-8") == tsv_text(rows, prediction_columns(card["classes"]))
