"""Per-class cut-offs chosen by best F1, and the multi-class decision they make.

Xin et al. 2024 (ALMSS) chose their cut-offs by the best F1 score. metcli does the
same for models of three classes or more (``--decision best-f1``):

**Choosing the cut-offs** (:func:`best_f1_cutoffs`). For each class, one against
the rest, a case counts as that class when its probability is at least the
cut-off. The candidates are the distinct predicted probabilities of the class;
the best is the candidate with the highest F1 score of the class (F1 rounded
to 12 decimals, so that equal scores compare equal). Ties go to the highest of
the equally good candidates, as for train-radiomics' binary threshold. The
cut-off lies halfway between the best candidate and the next lower predicted
probability (0 below the lowest): every value in between calls the same cases,
so it has the same F1, and the middle keeps the cut-off away from the
probabilities, so that a table's rounded probabilities (10 digits) fall on the
same side of it. A class with no case among the labels gets the cut-off 1.0.
The cut-offs are chosen on
predictions the model did not learn from: the out-of-fold predictions of the
training patients (train-radiomics) or the validation set (train-cnn), never
the test set.

**The final class** (:func:`decide`, the rule :data:`FINAL_CLASS_RULE`). The
classes whose probability reaches their cut-off are the candidates. One
candidate: that class. Several: the one whose probability lies furthest above
its cut-off (the largest ``probability - cut-off``, rounded to 12 decimals; ties: the higher
probability, then the first in the classes' order). None: the most probable
class (argmax; ties: the first in order). For example, classes (a, b, c) with
cut-offs (0.50, 0.20, 0.30) and probabilities (0.45, 0.25, 0.30): b and c reach
their cut-offs, b by 0.05 and c by 0.00, so the case is b, where argmax says a.

A binary model keeps its single threshold on the positive class; the per-class
cut-offs apply to models of three classes or more (:func:`cutoffs_apply`).

A decision record (``decision`` in model cards and prediction sidecars,
:func:`decision_record`) holds the rule (``argmax`` or ``best-f1 per class``),
the cut-offs, what they were chosen on and at which level, and the final-class
rule in words. The cut-offs are recorded whatever the rule, so that evaluate can
report the metrics at both; the rule says which one made the ``predicted``
column.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError

#: The values of ``--decision``.
DECISIONS = ("argmax", "best-f1")
#: The ``rule`` of a decision record, by ``--decision`` value.
RULE_NAMES = {"argmax": "argmax", "best-f1": "best-f1 per class"}
#: How the final class follows from the cut-offs (recorded with them).
FINAL_CLASS_RULE = (
    "candidates: the classes whose probability reaches their cut-off; one candidate: "
    "that class; several: the largest probability - cut-off (ties: the higher "
    "probability, then class order); none: the most probable class (argmax)"
)
#: The cut-off of a class that no case has among the labels.
ABSENT_CLASS_CUTOFF = 1.0


def cutoffs_apply(classes: Sequence[str]) -> bool:
    """Whether per-class cut-offs apply (three classes or more; binary: one threshold)."""
    return len(classes) > 2


def best_f1_cutoff(is_class: np.ndarray, scores: np.ndarray) -> float:
    """The cut-off on ``scores`` with the best F1 of ``is_class`` (case when score >= cut-off).

    Candidates: the distinct scores; ties: the highest candidate; the cut-off: halfway
    between the best candidate and the next lower score (0 below the lowest); no case of
    the class: :data:`ABSENT_CLASS_CUTOFF`.
    """
    is_class = np.asarray(is_class, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    n_pos = int(is_class.sum())
    if n_pos == 0:
        return ABSENT_CLASS_CUTOFF
    candidates = np.unique(scores)[::-1]  # descending
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_pos = scores[order], is_class[order]
    # number of rows with a score >= each candidate
    called = np.searchsorted(-sorted_scores, -candidates, side="right")
    tp = np.concatenate([[0], np.cumsum(sorted_pos)])[called]
    fp = called - tp
    f1 = np.round(2 * tp / (2 * tp + fp + (n_pos - tp)), 12)
    best = int(np.argmax(f1))  # the first best = the highest
    below = float(candidates[best + 1]) if best + 1 < len(candidates) else 0.0
    return (float(candidates[best]) + below) / 2


def best_f1_cutoffs(labels: Sequence[Any], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """``{class: cut-off}``, each class one against the rest, by best F1.

    Args:
        labels: the true class of each row (names of ``classes``, or their indices).
        probs: ``[rows, classes]`` probabilities in the order of ``classes``.
        classes: the class names.
    """
    probs = np.asarray(probs, dtype=float)
    classes = list(classes)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or probs.shape[0] != len(labels):
        raise InputError(
            f"cut-offs need one probability per class and row: got shape {probs.shape} "
            f"for {len(labels)} labels and {len(classes)} classes",
            fix="give the probabilities in the order of the classes, one row per label",
        )
    if not len(labels):
        raise InputError("no predictions to choose cut-offs on", fix="give at least one row")
    index = np.array([c if isinstance(c, (int, np.integer)) else classes.index(c) for c in labels])
    return {c: best_f1_cutoff(index == k, probs[:, k]) for k, c in enumerate(classes)}


def decide_index(probs: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    """The index of the decided class of each row (:data:`FINAL_CLASS_RULE`)."""
    probs = np.asarray(probs, dtype=float)
    cut = np.asarray(cutoffs, dtype=float)
    margin = np.round(probs - cut, 12)  # equal margins compare equal
    reached = margin >= 0
    chosen = np.argmax(probs, axis=1)
    for row in np.flatnonzero(reached.any(axis=1)):
        candidates = np.flatnonzero(reached[row])
        # largest margin, then higher probability, then class order (lexsort: last key first)
        best = np.lexsort((candidates, -probs[row, candidates], -margin[row, candidates]))[0]
        chosen[row] = candidates[best]
    return chosen


def decide(probs: np.ndarray, classes: Sequence[str], cutoffs: Mapping[str, float]) -> list[str]:
    """The class of each row of ``probs`` by the per-class ``cutoffs`` (module docstring)."""
    classes = list(classes)
    missing = [c for c in classes if c not in cutoffs]
    if missing:
        raise InputError(
            f"no cut-off for class(es) {', '.join(missing)}",
            fix="give one cut-off per class of the model",
        )
    index = decide_index(probs, [float(cutoffs[c]) for c in classes])
    return [classes[int(i)] for i in index]


def argmax_labels(probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    return [classes[int(i)] for i in np.argmax(np.asarray(probs, dtype=float), axis=1)]


def decision_record(
    rule: str, cutoffs: Mapping[str, float], *, chosen_on: str, level: str
) -> dict[str, Any]:
    """The ``decision`` of a card or a predictions sidecar (``rule``: a :data:`DECISIONS`)."""
    return {
        "rule": RULE_NAMES[rule],
        "cutoffs": {str(c): float(v) for c, v in cutoffs.items()},
        "chosen_on": chosen_on,
        "level": level,
        "final_class": FINAL_CLASS_RULE,
    }


def choose_decision(
    rule: str, labels, probs: np.ndarray, classes: Sequence[str], *, chosen_on: str, level: str
) -> dict[str, Any] | None:
    """The decision record of :func:`best_f1_cutoffs` on (labels, probs) with ``rule``
    (a :data:`DECISIONS`); None for a binary model (it keeps its threshold)."""
    if not cutoffs_apply(classes):
        return None
    cutoffs = best_f1_cutoffs(labels, probs, classes)
    return decision_record(rule, cutoffs, chosen_on=chosen_on, level=level)


def uses_cutoffs(decision: Mapping[str, Any] | None) -> bool:
    """Whether a decision record makes the ``predicted`` column by its cut-offs."""
    return bool(decision) and decision.get("rule") == RULE_NAMES["best-f1"]


def decided_labels(
    probs: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any] | None
) -> list[str]:
    """The classes by ``decision`` (its cut-offs when its rule is best-f1, else argmax)."""
    if uses_cutoffs(decision) and cutoffs_apply(classes):
        return decide(probs, classes, decision["cutoffs"])  # type: ignore[index]
    return argmax_labels(probs, classes)


def apply_decision(
    rows: list[dict], classes: Sequence[str], decision: Mapping[str, Any] | None, aggregate="mean"
) -> list[dict]:
    """Prediction rows (:func:`metcli.io.predictions.prediction_rows`) with ``predicted``
    made by ``decision``'s cut-offs; unchanged unless its rule is best-f1 and the model has
    three classes or more.

    Lesion rows: the cut-offs. Patient rows: the cut-offs on the aggregated
    probabilities with ``mean`` (what they were chosen on) and ``max``; with
    ``vote`` each patient's probabilities are the shares of its lesions' decided
    classes and the patient is the class with most votes; with ``sum``, the
    largest sum (argmax), since the cut-offs were not chosen on those scales.
    """
    if not (uses_cutoffs(decision) and cutoffs_apply(classes)):
        return rows
    classes = list(classes)
    columns = [f"prob_{c}" for c in classes]
    lesions = [r for r in rows if r["level"] == "lesion"]
    for row, label in zip(lesions, decided_labels(_probs(lesions, columns), classes, decision)):
        row["predicted"] = label
    patients = [r for r in rows if r["level"] == "patient"]
    if aggregate == "vote":
        for row in patients:
            mine = [
                r["predicted"]
                for r in lesions
                if (r["participant_id"], r["model"], r["set"])
                == (row["participant_id"], row["model"], row["set"])
            ]
            for c, column in zip(classes, columns):
                row[column] = float(np.mean([m == c for m in mine])) if mine else row[column]
    if aggregate in ("vote", "sum"):
        labels = argmax_labels(_probs(patients, columns), classes) if patients else []
    else:
        labels = decided_labels(_probs(patients, columns), classes, decision) if patients else []
    for row, label in zip(patients, labels):
        row["predicted"] = label
    return rows


def _probs(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> np.ndarray:
    return np.array([[float(r[c]) for c in columns] for r in rows], dtype=float).reshape(
        len(rows), len(columns)
    )


def check_cutoffs(value: Any, classes: Sequence[str], *, where=None) -> dict[str, float]:
    """``value`` as ``{class: cut-off}`` for every class, each a number in [0, 1]."""
    fix = 'write a JSON object with one number in [0, 1] per class, e.g. {"a": 0.4, "b": 0.3}'
    if not isinstance(value, Mapping):
        raise InputError(
            "the cut-offs are not a JSON object of class -> cut-off", path=where, fix=fix
        )
    missing = [c for c in classes if c not in value]
    unknown = [str(c) for c in value if c not in classes]
    if missing or unknown:
        raise InputError(
            "the cut-offs' classes differ from the model's ("
            + "; ".join(
                t
                for t in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(unknown)}" if unknown else "",
                )
                if t
            )
            + f"; the model's: {', '.join(classes)})",
            path=where,
            fix=fix,
        )
    out = {}
    for c in classes:
        v = value[c]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not 0.0 <= float(v) <= 1.0:
            raise InputError(
                f"the cut-off of class {c} ({v!r}) is not in [0, 1]", path=where, fix=fix
            )
        out[c] = float(v)
    return out
