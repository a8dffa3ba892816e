"""The patient bootstrap of ``metcli evaluate``, and rates from weighted confusion counts.

The patient bootstrap is expressed as *weights*: one resample is a vector that says
how many times each patient was drawn, and every lesion carries the weight of its
patient. One matrix of weights (resamples x units) then gives every metric of every
resample at once, at patient level (one unit per patient) and at lesion level
(cluster bootstrap: all lesions of a drawn patient come along), and the same matrix
serves two models on the same patients, which makes the bootstrap tests paired.

The AUC variances, exact intervals and McNemar's test are in :mod:`metcli.evaluation.stats`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from metcli.evaluation.stats import PairedTest, truth_mask


# ----------------------------------------------------------------------------- bootstrap
def cluster_bootstrap_weights(strata: Sequence, n_boot: int, seed: int) -> np.ndarray:
    """Multiplicities of clusters (patients) in ``n_boot`` stratified resamples.

    Within each stratum (the patient's true class) as many clusters are drawn, with
    replacement, as the stratum holds, so every resample keeps the class counts (as
    pROC's stratified bootstrap). The same strata, ``n_boot`` and ``seed`` give the same
    matrix, so two models evaluated on the same patients are resampled identically.

    Returns:
        ``(n_boot, n_clusters)`` float array of how often each cluster was drawn.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    strata = np.asarray(list(strata), dtype=object)
    weights = np.zeros((n_boot, strata.size))
    rng = np.random.default_rng(seed)
    for stratum in sorted(set(strata.tolist()), key=str):
        members = np.flatnonzero(strata == stratum)
        size = members.size
        weights[:, members] = rng.multinomial(size, np.full(size, 1.0 / size), size=n_boot)
    return weights


def unit_weights(cluster_weights: np.ndarray, cluster_of_unit: np.ndarray) -> np.ndarray:
    """Weights of units (lesions) from the weights of their clusters (patients)."""
    return np.asarray(cluster_weights)[:, np.asarray(cluster_of_unit, dtype=int)]


def weighted_auc(scores, positive, weights) -> np.ndarray:
    """AUC (Mann-Whitney, ties count one half) of each row of case ``weights``.

    ``weights`` is ``(n_resamples, n_cases)``; a case drawn twice counts twice. Returns
    NaN for a row without positive or without negative weight.
    """
    scores = np.asarray(scores, dtype=float)
    pos = truth_mask(positive)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    w = weights[:, order]
    pos_w = np.add.reduceat(w * pos[order], starts, axis=1)
    neg_w = np.add.reduceat(w * ~pos[order], starts, axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w
    numerator = np.sum(pos_w * (below + 0.5 * neg_w), axis=1)
    denominator = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def weighted_roc_band(
    scores, positive, weights, grid, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile band of the true-positive rate at each false-positive rate of ``grid``.

    Each resample's ROC curve (vertices at every distinct score, straight lines between
    them, the top of vertical segments) is read at the grid points.

    Returns:
        ``(median, lower, upper)`` true-positive rates, one per grid point.
    """
    scores = np.asarray(scores, dtype=float)
    pos = truth_mask(positive)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    grid = np.asarray(grid, dtype=float)
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    w = weights[:, order]
    tp = np.cumsum(np.add.reduceat(w * pos[order], starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat(w * ~pos[order], starts, axis=1), axis=1)
    curves = np.full((weights.shape[0], grid.size), np.nan)
    for b in range(weights.shape[0]):
        total_p, total_n = tp[b, -1], fp[b, -1]
        if total_p <= 0 or total_n <= 0:
            continue
        fpr = np.r_[0.0, fp[b] / total_n]
        tpr = np.r_[0.0, tp[b] / total_p]
        last = np.searchsorted(fpr, grid, side="right") - 1
        nxt = np.minimum(last + 1, fpr.size - 1)
        span = fpr[nxt] - fpr[last]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(span > 0, (grid - fpr[last]) / np.where(span > 0, span, 1), 0.0)
        curves[b] = tpr[last] + frac * (tpr[nxt] - tpr[last])
    alpha = (1.0 - level) / 2.0
    valid = ~np.isnan(curves).any(axis=1)
    if not valid.any():
        nan = np.full(grid.size, np.nan)
        return nan, nan, nan
    kept = curves[valid]
    return (
        np.median(kept, axis=0),
        np.quantile(kept, alpha, axis=0),
        np.quantile(kept, 1.0 - alpha, axis=0),
    )


def percentile_interval(values, level: float = 0.95) -> tuple[float, float, int]:
    """Percentile interval of bootstrap ``values`` (NaN resamples left out).

    Returns ``(lower, upper, number of resamples used)``; NaN bounds when none is usable.
    """
    values = np.asarray(values, dtype=float).ravel()
    kept = values[~np.isnan(values)]
    if kept.size == 0:
        return float("nan"), float("nan"), 0
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(kept, [alpha, 1.0 - alpha])
    return float(low), float(high), int(kept.size)


def bootstrap_paired_test(observed_a: float, observed_b: float, boot_a, boot_b) -> PairedTest:
    """Two-sided bootstrap test of a paired difference (as pROC's ``method="bootstrap"``).

    ``z = (observed_a - observed_b) / sd(boot_a - boot_b)`` over the resamples where both
    are defined, ``p = 2 (1 - Phi(|z|))``. The resamples must be the same for both figures
    (the same weights), which makes the test paired.
    """
    from scipy.stats import norm

    diffs = np.asarray(boot_a, dtype=float) - np.asarray(boot_b, dtype=float)
    diffs = diffs[~np.isnan(diffs)]
    diff = float(observed_a - observed_b)
    if diffs.size < 2 or not math.isfinite(diff):
        return PairedTest(
            observed_a,
            observed_b,
            diff,
            float("nan"),
            float("nan"),
            "patient bootstrap",
            "too few usable resamples",
        )
    sd = float(np.std(diffs, ddof=1))
    if sd <= 1e-15:
        return PairedTest(
            observed_a,
            observed_b,
            diff,
            float("nan"),
            float("nan"),
            "patient bootstrap",
            "the difference does not vary between resamples (identical outputs)",
        )
    z = diff / sd
    return PairedTest(
        observed_a, observed_b, diff, z, float(2.0 * norm.sf(abs(z))), "patient bootstrap"
    )


# ----------------------------------------------------------------------------- counts -> rates
def confusion_counts(y_true, y_pred, n_classes: int, weights) -> np.ndarray:
    """Weighted confusion matrices, ``(n_resamples, n_classes, n_classes)``: rows true."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    cell = y_true * n_classes + y_pred
    onehot = np.zeros((cell.size, n_classes * n_classes))
    onehot[np.arange(cell.size), cell] = 1.0
    return (weights @ onehot).reshape(weights.shape[0], n_classes, n_classes)


def _ratio(num, den):
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def one_vs_rest_rates(counts: np.ndarray, index: int) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 of class ``index`` from confusion counts."""
    counts = np.asarray(counts, dtype=float)
    tp = counts[:, index, index]
    fn = counts[:, index, :].sum(axis=1) - tp
    fp = counts[:, :, index].sum(axis=1) - tp
    tn = counts.sum(axis=(1, 2)) - tp - fn - fp
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def accuracy_from_counts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    return _ratio(np.trace(counts, axis1=1, axis2=2), counts.sum(axis=(1, 2)))


def weighted_brier(onehot_truth, prob, weights, *, positive_index: int | None = None) -> np.ndarray:
    """Brier score of each row of ``weights``.

    Binary (``positive_index`` given): mean of ``(y - p_positive)^2``. Several classes:
    mean over cases of the sum over classes of ``(y_c - p_c)^2`` (scikit-learn's
    ``brier_score_loss`` for several classes).
    """
    onehot_truth = np.asarray(onehot_truth, dtype=float)
    prob = np.asarray(prob, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    if positive_index is not None:
        loss = (onehot_truth[:, positive_index] - prob[:, positive_index]) ** 2
    else:
        loss = np.sum((onehot_truth - prob) ** 2, axis=1)
    return _ratio(weights @ loss, weights.sum(axis=1))
