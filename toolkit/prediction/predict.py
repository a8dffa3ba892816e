"""``metcli predict``: run a metcli model (ONNX + card) on new participants.

A model directory holds ``model.onnx`` and its card ``model.json``. The card's
``kind`` picks the backend that turns the inputs into the graph's input
tensors: ``radiomics`` (features tables from ``metcli extract``, covariates
from participants.tsv) and ``image`` (train-cnn models: CT and lesion maps,
:mod:`metcli.prediction.image`, which drives its own participant-by-participant
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

Levels, as in BIDS apps (:func:`metcli.io.bids.resolve_levels`): a participant-level
run (``participant_label``, or ``level="participant"``) writes only the chosen
participants' files; a group-level run (``level="group"``) runs no model and
reads the participants' current files back into ``predictions.tsv``
(:func:`current_predictions`); without labels a run does both. For radiomics
models, a features table's rows are filtered to the chosen participants, and
extract's folder gives each participant's own table (:func:`feature_tables`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence


from metcli.core.batch import FAILED, BatchReport, run_each
from metcli.core.errors import InputError, UsageError
from metcli.core.devices import onnx_providers
from metcli.prediction.image import ImageBackend
from metcli.prediction.outputs import load_card, rows_for, write_group, write_participant
from metcli.prediction.radiomics import RadiomicsBackend, feature_tables, owner, radiomics_group

log = logging.getLogger(__name__)

COMMAND = "predict"
DEVICES = ("auto", "cpu", "cuda")
GROUP_TABLE = "predictions.tsv"
AGGREGATES = ("mean", "max", "vote", "sum")


#: card kind -> backend class. A backend with a ``predict`` classmethod runs the whole
#: prediction itself (image models: :meth:`metcli.prediction.image.ImageBackend.predict`).
BACKENDS: dict[str, Callable[..., Any]] = {"radiomics": RadiomicsBackend, "image": ImageBackend}
#: A hierarchical radiomics model (train-radiomics --hierarchy) runs like a flat one: its
#: model.onnx chains the steps (P(group) x P(label | group)) and its card lists the inputs
#: of every step (see metcli.radiomics.hierarchy).
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
            when ``participant_label`` is given (:func:`metcli.io.bids.resolve_levels`).
        threads: PyTorch's CPU threads for ``explain`` (Grad-CAM);
            None = the current number (:func:`metcli.core.threads.limit_cpu_threads`).

    Returns a :class:`~metcli.core.batch.BatchReport` (one item per participant);
    ``outputs`` lists the files written or found current.
    """
    from metcli.io.bids import resolve_levels
    from metcli.io.files import check_output_not_inside_input, sha256_file
    from metcli.io.provenance import Step, write_dataset_description
    from metcli.core.threads import check_threads

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
        return radiomics_group(card, tables, chosen, out_dir, step, roots, extra, models,
                                session=session, overwrite=overwrite, progress=progress,
                                report=report)

    backend = backend_class(model_dir, card, onnx_providers(device))
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
    owners = {} if full_run else {path: owner(path) for path in prepared.sources}

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
        table_rows = rows_for(card, pid, [prepared.keys[r][3] for r in rows], proba[rows],
                           aggregate)
        key = prepared.keys[rows[0]]
        status = write_participant(out_dir, key, table_rows, card, step, inputs_of(pid),
                                    {**extra, "DroppedLesions": prepared.dropped_lesions.get(pid,
                                                                                            0)},
                                    models, overwrite, report)
        all_rows.extend(table_rows)
        return status

    run_each(sorted(by_participant), key=lambda p: p, work=work, progress=progress,
             report=report)
    if do_group and all_rows:
        report.outputs.extend(write_group(out_dir, all_rows, card, step, inputs_record, extra,
                                           models, overwrite))
    return report


