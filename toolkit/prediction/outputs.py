"""What ``predict`` writes and reads back: model cards, per-participant and group
predictions tables with their sidecars, and the skip rule for them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from metcli.core.batch import DONE, SKIPPED
from metcli.core.errors import InputError, MetcliError
from metcli.io.predictions import GROUP_TABLE, prediction_columns, prediction_rows, read_rows

#: The command whose provenance every predict output records.
COMMAND = "predict"


def load_card(model_dir: Path) -> dict:
    """The model card, checked against its schema, against model.onnx's sha256, against
    what model.onnx records of it (input names, classes, positive class, kind) and against
    its own ``card_sha256`` (:func:`metcli.io.cards.check_card`)."""
    from metcli.io.cards import check_card
    from metcli.io.files import read_json, sha256_file

    model_dir = Path(model_dir)
    card_path, onnx_path = model_dir / "model.json", model_dir / "model.onnx"
    for path in (card_path, onnx_path):
        if not path.is_file():
            raise InputError(
                f"not a metcli model directory: {path.name} is missing",
                path=model_dir,
                fix="give a folder that train-radiomics wrote (<classifier>_<sampler>/)",
            )
    card = read_json(card_path)
    from metcli.io.schemas import validate

    validate(
        card,
        "cnn_card" if isinstance(card, dict) and card.get("kind") == "image" else "model_card",
        where=card_path,
    )
    if sha256_file(onnx_path) != card["onnx"]["sha256"]:
        raise InputError(
            "model.onnx does not match the sha256 in its card",
            path=onnx_path,
            fix="copy the model directory again (model.onnx and model.json belong together)",
        )
    check_card(card, onnx_path, card_path=card_path)
    return card


def check_session(session, card: dict, card_path: Path) -> None:
    """Check the card against the graph an ONNX Runtime session runs: its input names and,
    where it records them, the ``metcli.*`` metadata (:func:`metcli.io.cards.check_graph`)."""
    from metcli.io.cards import check_graph

    check_graph(
        card,
        [i.name for i in session.get_inputs()],
        dict(session.get_modelmeta().custom_metadata_map),
        card_path=card_path,
    )


def sidecar_of(path: Path) -> Path:
    from metcli.io.bids import sidecar_path

    return sidecar_path(path)


def participant_path(out_dir: Path, key) -> Path:
    """``sub-<id>/[ses-<s>/]anat/..._predictions.tsv`` of a (participant, session, phase) key."""
    from metcli.io.bids import Entities, derivative_path

    pid, ses, phase = key[:3]
    try:
        entities = Entities(sub=pid[4:], ses=ses, ce=phase, suffix="predictions", extension=".tsv")
    except MetcliError as exc:
        raise InputError(
            f"{pid}: {exc.what}",
            fix=exc.fix or "write participant ids as sub-<label>, letters and digits only",
        ) from None
    return derivative_path(out_dir, entities, suffix="predictions", extension=".tsv")


def current_predictions(
    step,
    path: Path,
    pid: str,
    *,
    inputs: list[dict] | None = None,
    roots: dict[str, Path] | None = None,
):
    """(rows, input records, sidecar) of a participant's predictions that are current.

    Current: the skip rule holds for ``inputs`` (image models: the
    participant's files and the model's), or, without ``inputs``, for the
    inputs its sidecar records, found again under ``roots`` and hashed anew
    (radiomics models, whose participant level reads the participant's own
    features table or a whole one). Otherwise an :class:`InputError` that says
    to run the participant level first.
    """
    from metcli.io.files import read_json

    sidecar = sidecar_of(path)
    stale = InputError(
        f"no current predictions of {pid} (missing, or made from other inputs "
        "or with other settings than this run's)",
        path=path,
        fix=f"run predict with --participant-label {pid[4:]} and the same model, "
        "inputs and options first",
    )
    if not sidecar.is_file():
        raise stale
    try:
        doc = read_json(sidecar)
    except InputError:
        raise stale from None
    if inputs is None:
        files = [
            _input_file(record, roots or {})
            for record in ((doc.get("Provenance") or {}).get("inputs") or [])
        ]
        if not files or any(f is None for f in files):
            raise stale
        inputs = step.inputs(files)
    if not step.is_done(sidecar, inputs):
        raise stale
    return read_rows(path), inputs, doc


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


def rows_for(card, pid, lesion_ids, proba, aggregate) -> list[dict]:
    from metcli.io.cutoffs import apply_decision

    rows = prediction_rows(
        [pid] * len(lesion_ids),
        lesion_ids,
        proba,
        card["classes"],
        model=card["name"],
        set_name="test",
        positive=card["positive_class"],
        threshold=card["threshold"],
        aggregate=aggregate,
    )
    return apply_decision(rows, card["classes"], card.get("decision"), aggregate)


def decision_extra(card: dict) -> dict:
    """The sidecar's ``decision`` of a model of three classes or more: the card's (its rule
    and per-class cut-offs, :mod:`metcli.io.cutoffs`), or argmax for a card without one
    (an older metcli's); nothing for a binary model (its threshold decides)."""
    from metcli.io.cutoffs import cutoffs_apply

    if not cutoffs_apply(card["classes"]):
        return {}
    if card.get("decision"):
        return {"decision": card["decision"]}
    return {"decision": {"rule": "argmax", "chosen_on": "the model card records no cut-offs"}}


def write_participant(
    out_dir, key, rows, card, step, inputs, extra, models, overwrite, report
) -> str:
    from metcli.io.bids import sidecar_path
    from metcli.io.files import OutputSet, write_tsv_to

    pid = key[0]
    path = participant_path(out_dir, key)
    sidecar = sidecar_path(path)
    report.outputs.extend([path, sidecar])
    if not overwrite and step.is_done(sidecar, inputs):
        return SKIPPED
    with OutputSet() as outs:
        tmp = outs.path(path)
        write_tsv_to(
            rows, prediction_columns(card["classes"]), tmp, schema="predictions", where=path
        )
        step.write_sidecar(
            outs,
            sidecar,
            inputs,
            {path: tmp},
            models=models,
            extra={
                "Description": f"Predictions of model {card['name']} for {pid}: one row per "
                "lesion and one for the patient",
                **extra,
            },
        )
    return DONE


def write_group(out_dir, rows, card, step, inputs, extra, models, overwrite) -> list[Path]:
    from metcli.io.bids import sidecar_path
    from metcli.io.files import OutputSet, write_tsv_to

    path = Path(out_dir) / GROUP_TABLE
    sidecar = sidecar_path(path)
    rows = sorted(
        rows, key=lambda r: (r["participant_id"], r["level"] != "lesion", r["lesion_id"] or 0)
    )
    if not overwrite and step.is_done(sidecar, inputs) and _same_rows(path, rows, card):
        return [path, sidecar]
    with OutputSet() as outs:
        tmp = outs.path(path)
        write_tsv_to(
            rows, prediction_columns(card["classes"]), tmp, schema="predictions", where=path
        )
        step.write_sidecar(
            outs,
            sidecar,
            inputs,
            {path: tmp},
            models=models,
            extra={
                "Description": f"Predictions of model {card['name']} for every participant",
                **extra,
            },
        )
    return [path, sidecar]


def _same_rows(path: Path, rows, card) -> bool:
    from metcli.io.files import tsv_text

    return path.read_text(encoding="utf-8") == tsv_text(rows, prediction_columns(card["classes"]))


def check_run_options(
    aggregate: str, threads: int | None, participant_label, level: str | None
) -> tuple[list[str] | None, bool, bool]:
    """predict's shared checks: (participant labels or None, run the participant level,
    run the group level)."""
    from metcli.core.threads import check_threads
    from metcli.io.bids import resolve_levels
    from metcli.io.predictions import parse_aggregate

    parse_aggregate(aggregate)  # a rule of AGGREGATES; any:CLASS,... names its classes
    check_threads(threads)
    labels = (
        [participant_label]
        if isinstance(participant_label, str)
        else (list(participant_label) if participant_label else None)
    )
    return (labels, *resolve_levels(level, labels))
