"""The predictions table (``predictions.tsv``): its columns, its rows, and the rule
that turns lesion probabilities into patient probabilities.

Columns: ``participant_id``, ``lesion_id`` (``n/a`` at the patient level),
``level`` (lesion, patient), ``model``, ``set``, one ``prob_<class>`` per class
in the model card's order, and ``predicted``. Training commands (out-of-fold and
test predictions), ``predict`` and ``evaluate`` all read and write this format
through this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli.core.errors import UsageError

#: The group-level predictions table of a folder.
GROUP_TABLE = "predictions.tsv"
#: Lesion-to-patient rules (see :func:`aggregate_patients`).
AGGREGATES = ("mean", "max", "vote", "sum", "any")


def parse_aggregate(
    aggregate: str, classes: Sequence[str] | None = None
) -> tuple[str, tuple[str, ...]]:
    """(rule, malignant classes) of an aggregate: ``mean``, ``max``, ``vote``, ``sum``, or
    ``any:CLASS,...`` (the classes that make a patient malignant; checked against
    ``classes`` when given)."""
    rule, _, named = str(aggregate).partition(":")
    malignant = tuple(c.strip() for c in named.split(",") if c.strip())
    if rule not in AGGREGATES:
        raise UsageError(
            f"aggregate {aggregate!r} is not one of {', '.join(AGGREGATES)}",
            fix="give mean, max, vote, sum or any:CLASS,...",
        )
    if (rule == "any") != bool(malignant):
        raise UsageError(
            "the rule 'any' needs the malignant classes, and only it takes them"
            f" (got {aggregate!r})",
            fix="give --aggregate any --malignant-classes CLASS,... (for example hcc,metastasis)",
        )
    unknown = [c for c in malignant if classes is not None and c not in classes]
    if unknown:
        raise UsageError(
            f"malignant class(es) {', '.join(unknown)} are not classes of the model "
            f"({', '.join(classes)})",
            fix="name classes of the model's card",
        )
    return rule, malignant


# ----------------------------------------------------------------------------- predictions
def prediction_columns(classes: Sequence[str]) -> list[str]:
    return (
        ["participant_id", "lesion_id", "level", "model", "set"]
        + [f"prob_{c}" for c in classes]
        + ["predicted"]
    )


def predicted_labels(
    proba: np.ndarray, classes: Sequence[str], *, positive: str | None, threshold: float | None
) -> list[str]:
    """Class names: binary by ``prob_positive >= threshold``, else the most probable class."""
    proba = np.asarray(proba, dtype=float)
    if len(classes) == 2 and positive is not None and threshold is not None:
        pos = list(classes).index(positive)
        neg = 1 - pos
        return [classes[pos] if p >= threshold else classes[neg] for p in proba[:, pos]]
    return [classes[int(i)] for i in np.argmax(proba, axis=1)]


def aggregate_patients(
    participants: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    aggregate: str = "mean",
    positive: str | None = None,
    threshold: float | None = None,
) -> tuple[list[str], np.ndarray]:
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
    sum to 1. ``any:CLASS,...`` (any lesion called malignant makes the patient
    malignant): a lesion is called malignant when its predicted class (threshold
    for a binary model, else the most probable class) is one of the named classes;
    the patient takes the probabilities of its called lesion with the largest
    summed probability of those classes, or, when none is called, of its lesion
    with the largest such sum (its most suspicious one), so that its predicted
    class is malignant exactly when a lesion was called malignant.
    """
    aggregate, malignant = parse_aggregate(aggregate, classes)
    participants = np.asarray(participants, dtype=object)
    proba = np.asarray(proba, dtype=float)
    order = sorted(set(participants.tolist()))
    out = np.zeros((len(order), proba.shape[1]))
    if aggregate == "any":
        return order, _any_malignant(
            participants, proba, classes, order, malignant, positive, threshold
        )
    if aggregate == "vote":
        votes = np.array(
            predicted_labels(proba, classes, positive=positive, threshold=threshold), dtype=object
        )
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


def _any_malignant(participants, proba, classes, order, malignant, positive, threshold):
    """The ``any`` rule's patient probabilities (see :func:`aggregate_patients`)."""
    columns = [list(classes).index(c) for c in malignant]
    suspicion = proba[:, columns].sum(axis=1)
    called = np.isin(
        np.array(predicted_labels(proba, classes, positive=positive, threshold=threshold)),
        list(malignant),
    )
    out = np.zeros((len(order), proba.shape[1]))
    for i, pid in enumerate(order):
        rows = np.flatnonzero(participants == pid)
        pool = rows[called[rows]] if called[rows].any() else rows
        out[i] = proba[pool[np.argmax(suspicion[pool])]]
    return out


def prediction_rows(
    participants: Sequence[str],
    lesion_ids: Sequence[int],
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    model: str,
    set_name: str,
    positive: str | None,
    threshold: float | None,
    aggregate: str = "mean",
) -> list[dict[str, Any]]:
    """Lesion rows and patient rows in the predictions format, sorted."""
    proba = np.asarray(proba, dtype=float)
    lesion_pred = predicted_labels(proba, classes, positive=positive, threshold=threshold)
    rows = []
    for pid, lesion, p, pred in zip(participants, lesion_ids, proba, lesion_pred):
        rows.append(
            {
                "participant_id": pid,
                "lesion_id": int(lesion),
                "level": "lesion",
                "model": model,
                "set": set_name,
                **{f"prob_{c}": float(v) for c, v in zip(classes, p)},
                "predicted": pred,
            }
        )
    order, patient = aggregate_patients(
        participants, proba, classes, aggregate=aggregate, positive=positive, threshold=threshold
    )
    patient_pred = predicted_labels(patient, classes, positive=positive, threshold=threshold)
    if aggregate in ("vote", "sum") and len(classes) == 2 and positive is not None:
        # the card's threshold was chosen on mean probabilities: vote and sum use 0.5
        # (the majority, the larger sum; a tie goes to the positive class)
        patient_pred = predicted_labels(patient, classes, positive=positive, threshold=0.5)
    for pid, p, pred in zip(order, patient, patient_pred):
        rows.append(
            {
                "participant_id": pid,
                "lesion_id": None,
                "level": "patient",
                "model": model,
                "set": set_name,
                **{f"prob_{c}": float(v) for c, v in zip(classes, p)},
                "predicted": pred,
            }
        )
    rows.sort(
        key=lambda r: (
            r["participant_id"],
            r["level"] != "lesion",
            r["lesion_id"] if r["lesion_id"] is not None else 0,
        )
    )
    return rows


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a predictions table written before, typed as :func:`prediction_rows` makes them."""
    from metcli.io.files import NA, read_tsv

    rows = read_tsv(path)
    for row in rows:
        row["lesion_id"] = None if row["lesion_id"] == NA else int(row["lesion_id"])
        for key in row:
            if key.startswith("prob_"):
                row[key] = float(row[key])
    return rows
