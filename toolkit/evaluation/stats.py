"""Statistics for ``metcli evaluate``: AUC variances, exact intervals, paired tests.

Written here by hand, because no well-kept Python library offers them:

* **DeLong's variance of the AUC and the paired DeLong test** (DeLong, DeLong and
  Clarke-Pearson 1988, Biometrics 44:837-845), computed with the fast midrank
  algorithm of Sun and Xu (2014, IEEE Signal Processing Letters 21:1389-1393).
* **Obuchowski's variance of the AUC for clustered data** (Obuchowski 1997,
  Biometrics 53:567-578): several lesions of one patient are not independent.

Everything else is a thin wrapper over a library: Clopper-Pearson intervals are
``statsmodels.stats.proportion.proportion_confint(method="beta")``, McNemar's test is
``statsmodels.stats.contingency_tables.mcnemar``, ranks are ``scipy.stats.rankdata``.

The patient bootstrap (resamples as weights, and the figures computed from them) is in
:mod:`metcli.evaluation.bootstrap`.

Notation (DeLong). ``m`` positives with scores :math:`X_i`, ``n`` negatives with scores
:math:`Y_j`, :math:`\\psi(x, y) = 1` if :math:`x > y`, ``1/2`` if equal, ``0`` otherwise.

.. math::

    \\hat\\theta = \\frac{1}{mn}\\sum_i\\sum_j \\psi(X_i, Y_j),\\qquad
    V_{10}(X_i) = \\frac{1}{n}\\sum_j \\psi(X_i, Y_j),\\qquad
    V_{01}(Y_j) = \\frac{1}{m}\\sum_i \\psi(X_i, Y_j)

For ``k`` scores (models) on the same cases, :math:`S_{10}` and :math:`S_{01}` are the
``k x k`` sample covariance matrices (denominator ``m - 1`` and ``n - 1``) of the
:math:`V_{10}` and :math:`V_{01}` components, and :math:`S = S_{10}/m + S_{01}/n` estimates
the covariance of the ``k`` AUCs. The paired test of two AUCs is
:math:`z = (\\hat\\theta_1 - \\hat\\theta_2) / \\sqrt{S_{11} + S_{22} - 2 S_{12}}`, two-sided.

Sun and Xu's fast algorithm: with :math:`T_Z` the midranks of a case among all
``m + n`` scores, :math:`T_X` its midrank among the positives and :math:`T_Y` among the
negatives, :math:`V_{10}(X_i) = (T_Z(X_i) - T_X(X_i)) / n` and
:math:`V_{01}(Y_j) = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m`; the AUC is the mean of :math:`V_{10}`.

Obuchowski (1997). ``I`` clusters (patients); cluster ``i`` holds :math:`m_i` positive
and :math:`n_i` negative units (lesions); :math:`M = \\sum m_i`, :math:`N = \\sum n_i`;
:math:`I_{10}` and :math:`I_{01}` count the clusters with at least one positive and one
negative unit. With :math:`V_{10}(X_{i\\cdot})` the sum over the positive units of cluster
``i`` of their DeLong component against all ``N`` negatives (and :math:`V_{01}(Y_{i\\cdot})`
likewise against all ``M`` positives):

.. math::

    S_{10} = \\frac{I_{10}}{(I_{10}-1)M}\\sum_i \\big(V_{10}(X_{i\\cdot}) - m_i\\hat\\theta\\big)^2,\\quad
    S_{01} = \\frac{I_{01}}{(I_{01}-1)N}\\sum_i \\big(V_{01}(Y_{i\\cdot}) - n_i\\hat\\theta\\big)^2

.. math::

    S_{11} = \\frac{I}{I-1}\\sum_i \\big(V_{10}(X_{i\\cdot}) - m_i\\hat\\theta\\big)
                                 \\big(V_{01}(Y_{i\\cdot}) - n_i\\hat\\theta\\big),\\qquad
    \\widehat{\\mathrm{var}}(\\hat\\theta) = \\frac{S_{10}}{M} + \\frac{S_{01}}{N} + \\frac{2 S_{11}}{MN}

With one unit per cluster, :math:`S_{11} = 0` and the other two terms are DeLong's:
the clustered variance reduces to DeLong's variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Below this many discordant pairs McNemar's test uses the exact binomial distribution.
MCNEMAR_EXACT_BELOW = 25


# ----------------------------------------------------------------------------- helpers
def _z(level: float) -> float:
    from scipy.stats import norm

    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    return float(norm.ppf(1.0 - (1.0 - level) / 2.0))


def truth_mask(positive) -> np.ndarray:
    """``positive`` as booleans (0/1 accepted); ValueError for anything else."""
    pos = np.asarray(positive)
    if pos.dtype != bool:
        if not np.isin(pos, (0, 1)).all():
            raise ValueError("positive must be booleans (or 0/1)")
        pos = pos.astype(bool)
    return pos


@dataclass(frozen=True)
class AucInterval:
    """An AUC, its estimated variance and a normal-approximation confidence interval."""

    auc: float
    variance: float
    lower: float
    upper: float
    method: str


def _normal_interval(auc: float, variance: float, level: float, method: str) -> AucInterval:
    if not math.isfinite(variance) or variance < 0:
        return AucInterval(auc, float("nan"), float("nan"), float("nan"), method)
    half = _z(level) * math.sqrt(variance)
    return AucInterval(auc, variance, max(0.0, auc - half), min(1.0, auc + half), method)


# ----------------------------------------------------------------------------- DeLong
def delong_placements(scores, positive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong's structural components by Sun and Xu's midrank algorithm.

    Args:
        scores: ``(n_cases,)`` or ``(k, n_cases)``: higher means more likely positive.
        positive: ``(n_cases,)`` booleans, the truth.

    Returns:
        ``aucs (k,)``, ``v10 (k, m)`` (one column per positive case, in case order) and
        ``v01 (k, n)`` (one per negative case).
    """
    from scipy.stats import rankdata

    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos = truth_mask(positive)
    if scores.shape[1] != pos.shape[0]:
        raise ValueError(f"{scores.shape[1]} scores for {pos.shape[0]} cases")
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise ValueError("the AUC needs at least one positive and one negative case")
    x, y = scores[:, pos], scores[:, ~pos]
    t_x = rankdata(x, axis=1)
    t_y = rankdata(y, axis=1)
    t_z = rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (t_z[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (t_z[:, :m] - t_x) / n
    v01 = 1.0 - (t_z[:, m:] - t_y) / m
    return aucs, v10, v01


def delong_covariance(scores, positive) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and DeLong's estimate of their covariance ``(k, k)``.

    The covariance is NaN when there are fewer than two positive or two negative cases.
    """
    aucs, v10, v01 = delong_placements(scores, positive)
    k, m = v10.shape
    n = v01.shape[1]
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_ci(scores, positive, level: float = 0.95) -> AucInterval:
    """AUC with DeLong's variance and the normal interval, clipped to [0, 1] (as pROC)."""
    aucs, cov = delong_covariance(scores, positive)
    return _normal_interval(float(aucs[0]), float(cov[0, 0]), level, "delong")


@dataclass(frozen=True)
class PairedTest:
    """A two-sided test of the difference of two paired figures (first minus second)."""

    estimate_a: float
    estimate_b: float
    difference: float
    statistic: float
    p_value: float
    method: str
    note: str = ""


def delong_paired_test(scores_a, scores_b, positive) -> PairedTest:
    """DeLong's test of two correlated AUCs (two scores on the same cases).

    ``z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab)``; ``p = 2 (1 - Phi(|z|))``.
    When the variance of the difference is zero (the same ranking twice), z and p are
    NaN and the note says why.
    """
    aucs, cov = delong_covariance(
        np.vstack([np.asarray(scores_a, float), np.asarray(scores_b, float)]), positive
    )
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if not math.isfinite(var):
        return PairedTest(
            float(aucs[0]),
            float(aucs[1]),
            diff,
            float("nan"),
            float("nan"),
            "delong",
            "fewer than two cases of a class: no variance",
        )
    if var <= 1e-15:
        return PairedTest(
            float(aucs[0]),
            float(aucs[1]),
            diff,
            float("nan"),
            float("nan"),
            "delong",
            "the difference has zero variance (identical rankings)",
        )
    from scipy.stats import norm

    z = diff / math.sqrt(var)
    return PairedTest(
        float(aucs[0]), float(aucs[1]), diff, z, float(2.0 * norm.sf(abs(z))), "delong"
    )


# ----------------------------------------------------------------------------- Obuchowski
def obuchowski_variance(scores, positive, clusters) -> tuple[float, float]:
    """AUC over all units and Obuchowski's (1997) variance for clustered units.

    Args:
        scores: ``(n_units,)`` scores (lesion probabilities).
        positive: ``(n_units,)`` booleans, the truth of each unit.
        clusters: ``(n_units,)`` cluster (patient) identifiers.

    Returns:
        ``(auc, variance)``; the variance is NaN with fewer than two clusters holding
        positive units or two holding negative units. See the module docstring for the
        formulas.
    """
    scores = np.asarray(scores, dtype=float)
    pos = truth_mask(positive)
    _ids, codes = np.unique(np.asarray(clusters), return_inverse=True)
    codes = codes.ravel()
    n_clusters = int(codes.max()) + 1 if codes.size else 0
    aucs, v10, v01 = delong_placements(scores, pos)
    theta = float(aucs[0])
    big_m, big_n = int(pos.sum()), int((~pos).sum())
    v10_i = np.bincount(codes[pos], weights=v10[0], minlength=n_clusters)
    v01_i = np.bincount(codes[~pos], weights=v01[0], minlength=n_clusters)
    m_i = np.bincount(codes[pos], minlength=n_clusters)
    n_i = np.bincount(codes[~pos], minlength=n_clusters)
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        return theta, float("nan")
    d10 = v10_i - m_i * theta
    d01 = v01_i - n_i * theta
    s10 = i10 / ((i10 - 1) * big_m) * float(np.sum(d10**2))
    s01 = i01 / ((i01 - 1) * big_n) * float(np.sum(d01**2))
    s11 = n_clusters / (n_clusters - 1) * float(np.sum(d10 * d01))
    variance = s10 / big_m + s01 / big_n + 2.0 * s11 / (big_m * big_n)
    return theta, variance


def obuchowski_ci(scores, positive, clusters, level: float = 0.95) -> AucInterval:
    """AUC with Obuchowski's clustered variance and the normal interval, clipped to [0, 1]."""
    auc, variance = obuchowski_variance(scores, positive, clusters)
    return _normal_interval(auc, variance, level, "obuchowski")


# ----------------------------------------------------------------------------- proportions
def clopper_pearson(count: int, nobs: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion, by statsmodels' ``method="beta"``."""
    if nobs <= 0:
        return float("nan"), float("nan")
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(int(count), int(nobs), alpha=1.0 - level, method="beta")
    return float(low), float(high)


@dataclass(frozen=True)
class McNemarResult:
    statistic: float
    p_value: float
    method: str
    only_a_correct: int
    only_b_correct: int


def mcnemar_test(correct_a, correct_b) -> McNemarResult:
    """McNemar's test of two paired accuracies (statsmodels).

    Exact binomial test when there are fewer than :data:`MCNEMAR_EXACT_BELOW` discordant
    pairs, otherwise the chi-square statistic with continuity correction.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return McNemarResult(0.0, 1.0, "no discordant pairs", only_a, only_b)
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[int(np.sum(a & b)), only_a], [only_b, int(np.sum(~a & ~b))]]
    exact = only_a + only_b < MCNEMAR_EXACT_BELOW
    result = mcnemar(table, exact=exact, correction=True)
    method = "mcnemar exact binomial" if exact else "mcnemar chi-square, continuity corrected"
    return McNemarResult(float(result.statistic), float(result.pvalue), method, only_a, only_b)
