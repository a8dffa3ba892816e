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

Predictions follow docs/architecture.md: ``participant_id``, ``lesion_id`` (``n/a`` at the
patient level), ``level`` (lesion, patient), ``model``, ``set``, one
``prob_<class>`` per class in the model card's order, and ``predicted``. A
patient's probabilities are the mean of its lesions' (``aggregate="mean"``),
their maximum, or the share of its lesions predicted as each class (``vote``,
majority; a tie goes to the positive class).

Outputs of predict, in that format with the card's threshold (set ``test``): per
participant ``sub-<id>/[ses-<s>/]anat/sub-<id>[_ses-<s>][_ce-<phase>]_predictions.tsv``
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

from metcli.core.batch import BatchReport
from metcli.core.devices import check_device
from metcli.core.errors import InputError, UsageError
from metcli.io.predictions import parse_aggregate
from metcli.prediction.image import ImageBackend
from metcli.prediction.outputs import check_run_options, load_card
from metcli.prediction.radiomics import RadiomicsBackend
from metcli.prediction.radiomics_run import predict_radiomics

log = logging.getLogger(__name__)


#: card kind -> backend class. A backend with a ``predict`` classmethod runs the whole
#: prediction itself (image models: :meth:`metcli.prediction.image.ImageBackend.predict`).
BACKENDS: dict[str, Callable[..., Any]] = {"radiomics": RadiomicsBackend, "image": ImageBackend}
#: A hierarchical radiomics model (train-radiomics --hierarchy) runs like a flat one: its
#: model.onnx chains the steps (P(group) x P(label | group)) and its card lists the inputs
#: of every step (see metcli.radiomics.hierarchy).
BACKENDS["radiomics-hierarchy"] = RadiomicsBackend


def predict(
    model_dir,
    inputs: Sequence[Path],
    out_dir,
    *,
    participants=None,
    aggregate: str = "mean",
    device: str = "auto",
    session: str | None = None,
    explain: bool = False,
    participant_label: Sequence[str] | str | None = None,
    level: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> BatchReport:
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

    check_device(device)
    labels, do_participants, do_group = check_run_options(
        aggregate, threads, participant_label, level
    )
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    inputs = _input_paths(inputs)
    card = load_card(model_dir)
    parse_aggregate(aggregate, card["classes"])  # any:CLASS,... must name the card's classes
    backend_class = _backend_class(card, model_dir)
    if hasattr(backend_class, "predict"):  # image models: CT + lesion maps, one by one
        return backend_class.predict(
            model_dir,
            card,
            inputs,
            out_dir,
            aggregate=aggregate,
            device=device,
            session=session,
            explain=explain,
            participants=participants,
            participant_label=labels,
            level=level,
            threads=threads,
            overwrite=overwrite,
            progress=progress,
        )
    if explain:
        raise UsageError(
            f"--explain needs an image model (train-cnn); {card['name']} is a {card['kind']} model",
            fix="leave out --explain",
        )
    return predict_radiomics(
        model_dir,
        card,
        inputs,
        out_dir,
        backend_class=backend_class,
        participants=participants,
        aggregate=aggregate,
        device=device,
        session=session,
        labels=labels,
        levels=(do_participants, do_group),
        overwrite=overwrite,
        progress=progress,
    )


def _input_paths(inputs: Sequence[Path]) -> list[Path]:
    """The INPUTs as paths; none is a :class:`UsageError`."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("no INPUT given", fix="give a features table or extract's folder")
    return paths


def _backend_class(card: dict, model_dir: Path):
    """The backend of the card's kind (:data:`BACKENDS`), or an :class:`InputError`."""
    backend_class = BACKENDS.get(card["kind"])
    if backend_class is None:
        raise InputError(
            f"predict cannot run {card['kind']} models yet",
            path=model_dir,
            fix=f"use a model of kind {', '.join(BACKENDS)}",
        )
    return backend_class
