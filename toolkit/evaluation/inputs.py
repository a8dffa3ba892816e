"""Inputs of ``metcli evaluate``: prediction files, labels and their sidecars.

Reads the predictions format (docs/architecture.md) and turns each model's rows into a
:class:`ModelPredictions` (classes, positive class, threshold and its source).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metcli.core.errors import InputError, UsageError

log = logging.getLogger(__name__)

LEVELS = ("patient", "lesion")
SETS = ("train", "val", "test")
PROB_PREFIX = "prob_"
PREDICTIONS_FILE = "predictions.tsv"
REQUIRED_COLUMNS = ("participant_id", "lesion_id", "level", "model", "set", "predicted")
DEFAULT_THRESHOLD = 0.5
DEFAULT_THRESHOLD_SOURCE = "default 0.5"


# ============================================================================= reading inputs
@dataclass
class ModelPredictions:
    """One model's predictions from one file, with what its sidecar says about them."""

    name: str
    path: Path
    sidecar: Path | None
    classes: list[str]
    positive_class: str | None
    positive_source: str
    thresholds: dict[str, tuple[float, str]]
    selected: bool | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def levels(self) -> set[str]:
        return {r["level"] for r in self.rows}


def find_prediction_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Prediction tables: files as given; for a folder, its own ``predictions.tsv`` (the
    group table train-radiomics and predict write), else every ``predictions.tsv`` below it."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            top = path / PREDICTIONS_FILE
            found = [top] if top.is_file() else sorted(path.rglob(PREDICTIONS_FILE))
            if not found:
                raise InputError(
                    f"no {PREDICTIONS_FILE} in this folder or below it",
                    path=path,
                    fix="give the predictions table, or the folder predict or "
                    "train-radiomics wrote",
                )
        else:
            raise InputError("not found", path=path, fix="check the path")
        for candidate in found:
            if candidate.resolve() not in {f.resolve() for f in files}:
                files.append(candidate)
    return files


def read_labels(path: str | Path, column: str = "primary") -> tuple[Path, dict[str, str | None]]:
    """``{participant_id: label}`` from participants.tsv (a file, or a folder holding one);
    None for a participant whose label is ``n/a``."""
    from metcli.io.files import NA, read_tsv

    path = Path(path)
    if path.is_dir():
        path = path / "participants.tsv"
    rows = read_tsv(path, required=("participant_id", column))
    labels: dict[str, str | None] = {}
    for number, row in enumerate(rows, start=2):
        pid = row["participant_id"]
        if pid in labels:
            raise InputError(
                f"{pid} is listed twice (line {number})",
                path=path,
                fix="keep one row per participant",
            )
        value = row.get(column)
        labels[pid] = None if value in (None, "", NA) else value
    return path, labels


def _parse_probability(value: str, column: str, number: int, path: Path) -> float:
    try:
        prob = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"line {number}: {column} = {value!r} is not a number",
            path=path,
            fix="write probabilities as numbers between 0 and 1",
        ) from None
    if not math.isfinite(prob) or prob < 0.0 or prob > 1.0:
        raise InputError(
            f"line {number}: {column} = {value} is outside [0, 1]",
            path=path,
            fix="write probabilities (for example softmax outputs), not scores or logits",
        )
    return prob


def read_predictions(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Classes (order of the prob_ columns) and typed rows of a predictions table.

    Rows are checked against the ``predictions`` schema after the clearer checks here.
    """
    from metcli.io.files import NA, read_tsv
    from metcli.io.schemas import validate_rows

    raw = read_tsv(path, required=REQUIRED_COLUMNS)
    if not raw:
        raise InputError(
            "the predictions table has no rows",
            path=path,
            fix="give a table with at least one prediction",
        )
    columns = list(raw[0].keys())
    prob_columns = [c for c in columns if c.startswith(PROB_PREFIX)]
    classes = [c[len(PROB_PREFIX) :] for c in prob_columns]
    if len(classes) < 2:
        raise InputError(
            f"{len(classes)} prob_<class> column(s); one per class is needed (at least two)",
            path=path,
            fix="write a prob_<class> column for every class of the model",
        )
    rows = []
    for number, row in enumerate(raw, start=2):
        typed: dict[str, Any] = {k: (None if v in (NA, "") else v) for k, v in row.items()}
        for column in prob_columns:
            typed[column] = _parse_probability(row[column], column, number, path)
        if typed.get("predicted") is not None and typed["predicted"] not in classes:
            raise InputError(
                f"line {number}: predicted {typed['predicted']!r} is not one of "
                f"the classes of the prob_ columns ({', '.join(classes)})",
                path=path,
                fix="write the predicted class name as in the prob_ columns",
            )
        rows.append(typed)
    validate_rows(rows, columns, "predictions", where=path)
    off = sum(1 for r in rows if abs(sum(r[c] for c in prob_columns) - 1.0) > 1e-3)
    if off:
        log.warning(
            "%s: the probabilities of %d of %d rows do not sum to 1 (within 0.001); "
            "they are used as given",
            path,
            off,
            len(rows),
        )
    return classes, rows


def _sidecar_settings(doc: dict, model: str, path: Path) -> dict[str, Any]:
    settings = {
        k: doc[k]
        for k in ("classes", "positive_class", "threshold", "threshold_source", "selected")
        if k in doc
    }
    per_model = doc.get("models")
    if isinstance(per_model, dict) and isinstance(per_model.get(model), dict):
        settings.update(
            {
                k: v
                for k, v in per_model[model].items()
                if k in ("classes", "positive_class", "threshold", "threshold_source", "selected")
            }
        )
    checks = {
        "classes": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
        "positive_class": lambda v: isinstance(v, str),
        "threshold_source": lambda v: isinstance(v, str),
        "selected": lambda v: isinstance(v, bool),
        "threshold": lambda v: _valid_threshold(v),
    }
    for key, ok in checks.items():
        if key in settings and not ok(settings[key]):
            raise InputError(
                f"the sidecar's {key!r} ({settings[key]!r}) is not valid for model {model}",
                path=path,
                fix="classes: a list of names; positive_class, threshold_source: "
                "text; selected: true/false; threshold: a number in [0, 1] or "
                '{"patient": t, "lesion": t}',
            )
    return settings


def _valid_threshold(value) -> bool:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0

    if isinstance(value, dict):
        return bool(value) and set(value) <= set(LEVELS) and all(number(v) for v in value.values())
    return number(value)


def load_predictions(
    files: Sequence[Path],
    labels: dict[str, str | None],
    labels_path: Path,
    *,
    positive_class: str | None = None,
    eval_set: str = "test",
    label_column: str = "primary",
) -> list[ModelPredictions]:
    """Read, check and group the predictions by model; keep the rows of ``eval_set``."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import read_json

    models: dict[str, ModelPredictions] = {}
    for path in files:
        classes, rows = read_predictions(path)
        side = sidecar_path(path)
        doc = read_json(side) if side.is_file() else {}
        if not isinstance(doc, dict):
            raise InputError(
                "the sidecar is not a JSON object",
                path=side,
                fix="write the sidecar as a JSON object",
            )
        names = sorted({r["model"] for r in rows})
        for name in names:
            if name in models:
                raise InputError(
                    f"model {name!r} is also in {models[name].path}",
                    path=path,
                    fix="give each model a distinct name in the model column, or "
                    "evaluate the files separately",
                )
            model_rows = [r for r in rows if r["model"] == name]
            models[name] = _model_from_rows(
                name,
                path,
                side if side.is_file() else None,
                classes,
                model_rows,
                _sidecar_settings(doc, name, side),
                labels,
                labels_path,
                positive_class,
                eval_set,
                label_column,
            )
    return list(models.values())


def _shown(items: Sequence[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (
        f" and {len(items) - limit} more" if len(items) > limit else ""
    )


def _model_from_rows(
    name,
    path,
    side,
    classes,
    rows,
    settings,
    labels,
    labels_path,
    positive_class,
    eval_set,
    label_column,
) -> ModelPredictions:
    if "classes" in settings:
        if sorted(settings["classes"]) != sorted(classes):
            raise InputError(
                f"the sidecar's classes ({', '.join(settings['classes'])}) differ "
                f"from the prob_ columns ({', '.join(classes)}) of model {name}",
                path=side,
                fix="make the sidecar's classes match the prob_ columns",
            )
        classes = list(settings["classes"])
    _check_rows(name, path, classes, rows, labels, labels_path, label_column)
    kept = [r for r in rows if r["set"] == eval_set]
    if not kept:
        present = ", ".join(sorted({r["set"] for r in rows}))
        raise InputError(
            f"model {name} has no rows in the {eval_set} set (it has: {present})",
            path=path,
            fix="choose the set with --set, or give the right file",
        )
    binary = len(classes) == 2
    if binary:
        positive, source = _positive_class(name, side, classes, settings, positive_class)
    else:
        positive, source = None, "multi-class: one class against the rest, per class"
    thresholds: dict[str, tuple[float, str]] = {}
    spec = settings.get("threshold")
    origin = settings.get("threshold_source", "sidecar")
    for level in LEVELS:
        if not binary:
            continue
        if isinstance(spec, dict):
            value = spec.get(level)
        else:
            value = spec
        if value is None:
            thresholds[level] = (DEFAULT_THRESHOLD, DEFAULT_THRESHOLD_SOURCE)
        else:
            thresholds[level] = (float(value), str(origin))
    return ModelPredictions(
        name=name,
        path=path,
        sidecar=side,
        classes=classes,
        positive_class=positive,
        positive_source=source,
        thresholds=thresholds,
        selected=settings.get("selected"),
        rows=kept,
    )


def _check_rows(name, path, classes, rows, labels, labels_path, label_column) -> None:
    """One set per participant, known and labelled participants with a label among the
    classes, and one row per (level, participant, lesion)."""
    # A participant in two sets of one model is a leak, whatever set is evaluated.
    sets: dict[str, str] = {}
    for row in rows:
        pid, this = row["participant_id"], row["set"]
        if sets.setdefault(pid, this) != this:
            raise InputError(
                f"{pid} is in both the {sets[pid]} and the {this} set of model {name}",
                path=path,
                fix="split by patient: each participant belongs to one set",
            )
    present = {r["participant_id"] for r in rows}
    unknown = sorted(present - set(labels))
    if unknown:
        raise InputError(
            f"unknown participant(s) {_shown(unknown)} of model {name}: not in {labels_path}",
            path=path,
            fix=f"add them with their label to {labels_path.name}, or remove their predictions",
        )
    unlabelled = sorted(p for p in present if labels[p] is None)
    if unlabelled:
        raise InputError(
            f"participant(s) {_shown(unlabelled)} of model {name} have no label "
            f"(n/a) in the {label_column!r} column",
            path=labels_path,
            fix="fill in their label, or remove their predictions",
        )
    for pid in sorted({r["participant_id"] for r in rows}):
        if labels[pid] not in classes:
            raise InputError(
                f"the label {labels[pid]!r} of {pid} is not a class of model {name} "
                f"({', '.join(classes)})",
                path=labels_path,
                fix="use the class names of the prob_ columns as labels",
            )
    seen: set[tuple] = set()
    for row in rows:
        key = (row["level"], row["participant_id"], row["lesion_id"])
        if key in seen:
            what = f"lesion {row['lesion_id']} of " if row["level"] == "lesion" else ""
            raise InputError(
                f"{what}{row['participant_id']} has two {row['level']} rows for model {name}",
                path=path,
                fix="keep one prediction per row key",
            )
        seen.add(key)


def _positive_class(name, side, classes, settings, positive_class) -> tuple[str, str]:
    """(positive class, where it comes from) of a binary model."""
    if positive_class is not None:
        if positive_class not in classes:
            raise UsageError(
                f"--positive-class {positive_class!r} is not a class of model "
                f"{name} ({', '.join(classes)})",
                fix="choose one of the model's classes",
            )
        return positive_class, "--positive-class"
    if "positive_class" in settings:
        positive = settings["positive_class"]
        if positive not in classes:
            raise InputError(
                f"the sidecar's positive_class {positive!r} is not a class of model {name}",
                path=side,
                fix="name one of the classes of the prob_ columns",
            )
        return positive, "sidecar"
    return classes[1], "default: the second class in order (choose with --positive-class)"
