"""Lesion-level predictions made from two mask sets, for ``metcli evaluate-seg``'s
classification agreement (as Table 4 of Giannini et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metcli.core.errors import InputError, UsageError


@dataclass
class LesionClasses:
    """The predicted class of every lesion of one predictions table (one model)."""

    path: Path
    model: str
    classes: list[str]
    by_lesion: dict[tuple, str]
    keyed_by_acquisition: bool


def read_lesion_classes(path: str | Path, model: str | None = None) -> LesionClasses:
    """Lesion rows of a predictions table (the format of docs/architecture.md) as ``{key: class}``.

    The key is ``(participant_id, lesion_id)``, or ``(participant_id, session, phase,
    lesion_id)`` when the table has ``session`` and ``phase`` columns. The class is the
    ``predicted`` column (the highest probability where it is ``n/a``).
    """
    from metcli.evaluation.inputs import PROB_PREFIX, find_prediction_files, read_predictions

    files = find_prediction_files([path])
    if len(files) != 1:
        raise InputError(
            f"{len(files)} predictions tables found; one is needed",
            path=path,
            fix="give the predictions.tsv file itself",
        )
    path = files[0]
    classes, rows = read_predictions(path)
    rows = [r for r in rows if r["level"] == "lesion"]
    models = sorted({r["model"] for r in rows})
    if model is None:
        if len(models) != 1:
            raise UsageError(
                f"{path} holds lesion predictions of {len(models)} models "
                f"({', '.join(models) or 'none'})",
                fix="choose one with --model" if models else "give predictions with lesion rows",
            )
        model = models[0]
    elif model not in models:
        raise UsageError(
            f"--model {model!r} has no lesion predictions in {path} (it has: "
            f"{', '.join(models) or 'none'})",
            fix="choose one of those models",
        )
    keyed = bool(rows) and "session" in rows[0] and "phase" in rows[0]
    by_lesion: dict[tuple, str] = {}
    for row in rows:
        if row["model"] != model:
            continue
        try:
            lesion = int(str(row["lesion_id"]))
        except ValueError:
            raise InputError(
                f"lesion_id {row['lesion_id']!r} of {row['participant_id']} is not a lesion map id",
                path=path,
                fix="predict writes the lesion's id in its lesion map",
            ) from None
        key = (
            (row["participant_id"], row.get("session"), row.get("phase"), lesion)
            if keyed
            else (row["participant_id"], lesion)
        )
        if key in by_lesion:
            raise InputError(
                f"lesion {lesion} of {row['participant_id']} has two rows for model {model}",
                path=path,
                fix="keep one prediction per lesion",
            )
        predicted = row.get("predicted")
        if predicted is None:
            predicted = classes[int(np.argmax([row[PROB_PREFIX + c] for c in classes]))]
        by_lesion[key] = predicted
    return LesionClasses(path, model, classes, by_lesion, keyed)


def _class_of(classes: LesionClasses, pid: str, session, phase, lesion, ambiguous: set[str]):
    if classes.keyed_by_acquisition:
        return classes.by_lesion.get((pid, session, phase, lesion))
    if pid in ambiguous:
        raise InputError(
            f"{pid} has lesion maps of several acquisitions but the predictions "
            "name lesions by participant and id only",
            path=classes.path,
            fix="add session and phase columns to the predictions, or evaluate "
            "one acquisition per participant",
        )
    return classes.by_lesion.get((pid, lesion))


def add_classes(
    rows: list[dict], predictions: LesionClasses, reference: LesionClasses
) -> dict[str, int]:
    """Add the predicted classes of both mask sets to the found reference lesions' rows;
    return counts of what could not be compared."""
    per_participant: dict[str, set] = {}
    for row in rows:
        per_participant.setdefault(row["participant_id"], set()).add((row["session"], row["phase"]))
    ambiguous = {p for p, scans in per_participant.items() if len(scans) > 1}
    counts = {"found": 0, "compared": 0, "no_prediction": 0, "no_reference_prediction": 0}
    for row in rows:
        row.update(
            {"predicted_class": None, "reference_predicted_class": None, "class_agrees": None}
        )
        if row["kind"] != "reference":
            continue
        keys = (row["participant_id"], row["session"], row["phase"])
        ref_class = _class_of(reference, *keys, row["reference_lesion"], ambiguous)
        row["reference_predicted_class"] = ref_class
        if not row["found"]:
            continue
        counts["found"] += 1
        auto_class = _class_of(predictions, *keys, row["predicted_lesion"], ambiguous)
        row["predicted_class"] = auto_class
        if auto_class is None:
            counts["no_prediction"] += 1
        if ref_class is None:
            counts["no_reference_prediction"] += 1
        if auto_class is not None and ref_class is not None:
            row["class_agrees"] = auto_class == ref_class
            counts["compared"] += 1
    return counts
