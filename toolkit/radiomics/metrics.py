"""Metrics of train-radiomics: AUC, decision thresholds, and metrics per level and CV fold.

A patient's probabilities are the mean of its lesions' (as predict's default
``--aggregate mean``); a binary AUC is that of the positive class, several
classes give the macro one-vs-rest AUC.
"""

from __future__ import annotations

import warnings

import numpy as np

from metcli.radiomics.models import CVOutcome


def auc(y: np.ndarray, proba: np.ndarray, *, positive_index: int | None) -> float | None:
    """ROC AUC (binary: of the positive class; else macro one-vs-rest); None if undefined."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if np.unique(y).size < 2:
        return None
    n_classes = proba.shape[1]
    if n_classes == 2:
        return float(roc_auc_score(y == positive_index, proba[:, positive_index]))
    present = np.unique(y)
    if present.size < n_classes:
        return None
    return float(
        roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(n_classes)))
    )


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray, rule: str) -> float:
    """The cut-off on ``scores`` (predict positive when score >= cut-off).

    Youden: maximises sensitivity + specificity - 1; f1: maximises the F1
    score of the positive class. Candidates are the observed scores; among
    equally good ones the highest is taken. 0.5 when a class is absent.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    candidates = np.unique(scores)[::-1]
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_pos = scores[order], is_positive[order]
    # rows with score >= candidate: searchsorted on the descending scores
    counts = np.searchsorted(-sorted_scores, -candidates, side="right")
    tp = np.concatenate([[0], np.cumsum(sorted_pos)])[counts]
    fp = counts - tp
    if rule == "youden":
        value = tp / n_pos - fp / n_neg
    else:
        value = 2 * tp / (2 * tp + fp + (n_pos - tp))
    value = np.round(value, 12)
    return float(candidates[int(np.argmax(value))])


def level_metrics(
    y, proba, *, classes, positive, threshold, patients=None
) -> dict[str, float | None]:
    """AUC, accuracy and balanced accuracy at lesion level, or per patient (mean)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from metcli.io.predictions import aggregate_patients, predicted_labels

    y = np.asarray(y)
    if patients is not None:
        order, proba = aggregate_patients(patients, proba, classes)
        first = {p: y[np.flatnonzero(np.asarray(patients) == p)[0]] for p in order}
        y = np.array([first[p] for p in order])
    if y.size == 0:
        return {"auc": None, "accuracy": None, "balanced_accuracy": None}
    pos_index = classes.index(positive) if positive is not None else None
    predicted = predicted_labels(proba, classes, positive=positive, threshold=threshold)
    pred = np.array([classes.index(p) for p in predicted])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(y, pred))
    return {
        "auc": auc(y, proba, positive_index=pos_index),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
    }


def _level_units(y, proba, rows, patients, classes):
    """(truth, probabilities) of ``rows``: per lesion, or per patient (mean of its
    lesions' probabilities) when ``patients`` is given."""
    truth, proba = np.asarray(y)[rows], proba[rows]
    if patients is None:
        return truth, proba
    from metcli.io.predictions import aggregate_patients

    p = np.asarray(patients)[rows]
    order, proba = aggregate_patients(p, proba, classes)
    return np.array([truth[np.flatnonzero(p == q)[0]] for q in order]), proba


def fold_auc_sd(outcome: CVOutcome, name: str, y, *, classes, positive, patients=None):
    """SD of the AUC over the outer test folds (folds where it is defined)."""
    values = []
    pos_index = classes.index(positive) if positive is not None else None
    for repeat in range(outcome.folds.shape[0]):
        for fold in np.unique(outcome.folds[repeat]):
            rows = np.flatnonzero(outcome.folds[repeat] == fold)
            truth, proba = _level_units(y, outcome.oof[name][repeat], rows, patients, classes)
            value = auc(truth, proba, positive_index=pos_index)
            if value is not None:
                values.append(value)
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def cv_auc(outcome: CVOutcome, name: str, y, *, classes, positive, patients=None):
    """AUC of the pooled out-of-fold predictions, per repeat, averaged over repeats."""
    pos_index = classes.index(positive) if positive is not None else None
    values = []
    for repeat in range(outcome.folds.shape[0]):
        proba = outcome.oof[name][repeat]
        rows = np.flatnonzero(np.all(np.isfinite(proba), axis=1))
        truth, proba = _level_units(y, proba, rows, patients, classes)
        value = auc(truth, proba, positive_index=pos_index)
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None
