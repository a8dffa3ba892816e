"""Feature selection that learns from data, as scikit-learn transformers.

Both transformers are meant to sit inside a pipeline that is fitted on the
training folds only (see :mod:`metcli.radiomics.models`), never on the whole
cohort: the correlation filter and the importance ranking see the labels and
the feature distribution, so fitting them on all patients before cross-
validation leaks the test folds into the model.

:class:`CorrelationFilter`
    Drops features until no two kept features have an absolute Pearson
    correlation above the threshold (0.6 in Tharmaseelan et al. 2023). The
    result does not depend on the column order (see its docstring for the rule).
:class:`PermutationImportanceSelector`
    Ranks the surviving features by the permutation importance of a random
    forest, measured on patients held out inside the training data, and keeps
    the best ones.

:class:`Float32MeanScaler`
    The pipeline's ``StandardScaler``, with its mean rounded to float32 as the
    ONNX graph stores it (see :mod:`metcli.radiomics.onnx`).

The selectors accept pandas DataFrames (feature names from the columns) or arrays (names
``x0``, ``x1``...), return the same kind they were given, and take a ``keep``
tuple of column names that are always kept and never ranked (clinical
covariates such as age and sex). They validate their input as scikit-learn's
estimators do (NaN and infinity are refused) and pass its ``check_estimator``
(tests/test_selection_estimators.py lists the one check they do not pass, and why).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

log = logging.getLogger(__name__)

#: Values are rounded to this many decimals before they are compared, so that the
#: last bits of floating-point sums (which depend on the summation order) never
#: decide a tie.
_DECIMALS = 12


def _digest(estimator, names, *arrays) -> str:
    params = {k: v for k, v in estimator.get_params().items() if k != "cache_dir"}
    digest = hashlib.sha256(type(estimator).__name__.encode())
    digest.update(repr(sorted(params.items())).encode())
    digest.update("\0".join(names).encode())
    for array in arrays:
        if array is None:
            digest.update(b"none")
            continue
        array = np.asarray(array)
        if array.dtype == object:
            digest.update("\0".join(map(str, array.tolist())).encode())
        else:
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _store(path: Path, **arrays) -> None:
    """Write a cache entry atomically (parallel workers may write the same one)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError as exc:  # a cache that cannot be written only costs time
        log.debug("selection cache not written (%s)", exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _names(estimator) -> list[str]:
    """The input feature names: the DataFrame's columns, else ``x0``, ``x1``..."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return [f"x{i}" for i in range(estimator.n_features_in_)]
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError("feature names are not unique")
    return names


class _Selector(TransformerMixin, BaseEstimator):
    """What both selectors share: input checks (scikit-learn's ``validate_data``: 2D
    numbers, no NaN, infinity or sparse data; in ``transform`` the features seen in
    ``fit``), ``keep``, transform and feature names out."""

    def _start(self, X, y=None, *, with_y: bool = False):
        """(names, float64 values, ``keep`` mask[, y]) of the training data, checked."""
        from sklearn.utils.validation import validate_data

        if not with_y:
            array = validate_data(self, X, dtype=np.float64, reset=True)
        else:
            from sklearn.utils.multiclass import check_classification_targets

            array, y = validate_data(self, X, y, dtype=np.float64, reset=True)
            check_classification_targets(y)
        names = _names(self)
        keep = set(self.keep or ())
        kept_always = np.array([n in keep for n in names], dtype=bool)
        return (names, array, kept_always, y) if with_y else (names, array, kept_always)

    def transform(self, X):
        """The kept columns of ``X`` (a DataFrame stays a DataFrame, with its values)."""
        from sklearn.utils.validation import validate_data

        check_is_fitted(self, "support_")
        array = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if hasattr(X, "iloc"):
            return X.iloc[:, np.flatnonzero(self.support_)]
        return array[:, self.support_]

    def get_support(self, indices: bool = False):
        check_is_fitted(self, "support_")
        return np.flatnonzero(self.support_) if indices else self.support_.copy()

    def get_feature_names_out(self, input_features=None):
        """The kept features' names (``x0``, ``x1``... when fitted on an array)."""
        check_is_fitted(self, "support_")
        names = np.asarray(_names(self), dtype=object)
        if input_features is not None:
            given = np.asarray(input_features, dtype=object)
            if len(given) != self.n_features_in_:
                raise ValueError(
                    f"input_features should have length equal to number of features "
                    f"({self.n_features_in_}), got {len(given)}"
                )
            if hasattr(self, "feature_names_in_") and not np.array_equal(given, names):
                raise ValueError("input_features is not equal to feature_names_in_")
            names = given
        return names[self.support_]


class CorrelationFilter(_Selector):
    """Drop features until no pair has ``|Pearson r| > threshold``.

    The rule, which depends only on the set of (name, values) columns and not
    on their order:

    1. Features that are constant in the training data are dropped first
       (their correlation is undefined). NaN or infinite values are refused
       (a ValueError, as scikit-learn's own estimators do): the cohort leaves
       out lesions with a missing value before any fit.
    2. While some pair of remaining features has ``|r| > threshold``: among the
       features in such pairs, drop the one with the most partners above the
       threshold; on a tie, the one with the highest mean ``|r|`` to all other
       remaining features; on a further tie, the one whose name sorts last.
       Counts and means are recomputed after each removal (a pair's r does
       not change). Correlations are rounded to 12 decimals before any
       comparison, so the last bits of a sum never decide.

    Columns named in ``keep`` are never dropped and are not part of the
    comparison.

    ``cache_dir``: a folder where fits are kept by a hash of the parameters and
    the values (as for :class:`PermutationImportanceSelector`): cross-validation
    fits the filter on the same training fold for every classifier, sampler and
    grid candidate (it is the pipeline's first step), so they share one fit.
    The result is the same with or without it.

    Attributes:
        support_: boolean mask of the kept input columns.
        dropped_: one dict per dropped feature (``feature``, ``reason``
            ``constant`` or ``correlated``, ``partner``, ``r``), in removal order.
    """

    def __init__(
        self, *, threshold: float = 0.6, keep: Sequence[str] = (), cache_dir: str | None = None
    ):
        self.threshold = threshold
        self.keep = keep
        self.cache_dir = cache_dir

    def fit(self, X, y=None):
        import json

        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
        names, array, kept_always = self._start(X)
        cached = None
        if self.cache_dir:
            cached = Path(self.cache_dir) / f"{_digest(self, names, array)}.npz"
            if cached.is_file():
                with np.load(cached, allow_pickle=False) as stored:
                    self.support_ = stored["support"]
                    self.dropped_ = json.loads(str(stored["dropped"]))
                return self
        candidates = [i for i in range(len(names)) if not kept_always[i]]
        dropped: list[dict] = []
        usable = []
        for i in candidates:
            column = array[:, i]
            if np.ptp(column) == 0.0:
                dropped.append(
                    {"feature": names[i], "reason": "constant", "partner": None, "r": None}
                )
            else:
                usable.append(i)
        remaining = sorted(usable, key=lambda i: names[i])
        if len(remaining) > 1:
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = np.abs(np.corrcoef(array[:, remaining], rowvar=False))
            corr = np.round(np.nan_to_num(corr, nan=0.0), _DECIMALS)
            np.fill_diagonal(corr, 0.0)
            alive = np.ones(len(remaining), dtype=bool)
            limit = float(self.threshold)
            while True:
                sub = corr[np.ix_(alive, alive)]
                above = sub > limit
                counts = above.sum(axis=1)
                if counts.max(initial=0) == 0:
                    break
                n_alive = int(alive.sum())
                means = np.round(sub.sum(axis=1) / max(n_alive - 1, 1), _DECIMALS)
                index = np.flatnonzero(alive)
                best = max(
                    range(n_alive), key=lambda k: (counts[k], means[k], names[remaining[index[k]]])
                )
                partner_k = int(np.argmax(np.where(above[best], sub[best], -1.0)))
                dropped.append(
                    {
                        "feature": names[remaining[index[best]]],
                        "reason": "correlated",
                        "partner": names[remaining[index[partner_k]]],
                        "r": float(sub[best, partner_k]),
                    }
                )
                alive[index[best]] = False
            remaining = [i for i, a in zip(remaining, alive) if a]
        support = kept_always.copy()
        support[remaining] = True
        self.support_ = support
        self.dropped_ = dropped
        if cached is not None:
            _store(cached, support=support, dropped=np.array(json.dumps(dropped)))
        log.debug("correlation filter: %d of %d feature(s) kept", int(support.sum()), len(names))
        return self


class PermutationImportanceSelector(_Selector):
    """Keep the features a random forest needs, by permutation importance.

    A random forest (``class_weight="balanced"``) is fitted on part of the
    training data and each feature's importance is the mean drop of the ROC AUC
    (macro one-vs-rest for several classes) when that feature is shuffled in
    the held-out part, over ``n_repeats`` shuffles (:func:`permutation_auc_drop`).
    The held-out part is the first fold of a ``StratifiedGroupKFold(holdout_folds)``
    over ``groups`` (patients) in which both parts hold every class, so the importances are
    measured on patients the forest did not see; without ``groups`` a
    stratified split of rows is used, and when no such fold exists (very few
    patients) the training rows themselves.

    Kept: the features with a positive importance, at most ``max_features`` of
    them, best first (ties by name); the best one when none is positive. The
    ``keep`` columns are always kept.

    ``cache_dir``: a folder where fits are kept by a hash of the parameters and
    the data (values, names, labels, groups, weights). Cross-validation fits the
    same selector on the same training fold once per classifier, sampler and
    grid candidate (it comes before the sampler, so its result does not depend
    on them); with a cache they share one fit, also across the worker processes
    of a parallel search. The result is the same with or without it.

    Attributes:
        support_: boolean mask of the kept input columns.
        importances_: mean importance per input column (NaN for ``keep``).
        importances_std_: its standard deviation over the repeats.
        ranking_: the ranked feature names, best first.
    """

    def __init__(
        self,
        *,
        max_features: int = 10,
        n_estimators: int = 100,
        n_repeats: int = 5,
        holdout_folds: int = 3,
        keep: Sequence[str] = (),
        random_state: int = 0,
        cache_dir: str | None = None,
    ):
        self.max_features = max_features
        self.n_estimators = n_estimators
        self.n_repeats = n_repeats
        self.holdout_folds = holdout_folds
        self.keep = keep
        self.random_state = random_state
        self.cache_dir = cache_dir

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # the importances are measured on the labels
        return tags

    def _split(self, y, groups):
        """(fit rows, held-out rows): the first fold whose both sides hold every class."""
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

        n_classes = np.unique(y).size
        n_classes_min = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        splits = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if groups is not None and np.unique(groups).size >= 2:
                groups = np.asarray(groups)
                splitter = StratifiedGroupKFold(
                    n_splits=min(self.holdout_folds, np.unique(groups).size),
                    shuffle=True,
                    random_state=self.random_state,
                )
                splits = splitter.split(np.zeros(len(y)), y, groups)
            elif groups is None and n_classes_min >= 2:
                splitter = StratifiedKFold(
                    n_splits=min(self.holdout_folds, n_classes_min),
                    shuffle=True,
                    random_state=self.random_state,
                )
                splits = splitter.split(np.zeros(len(y)), y)
            try:
                for fit_rows, held_out in splits:
                    if (
                        np.unique(y[fit_rows]).size == n_classes
                        and np.unique(y[held_out]).size == n_classes
                    ):
                        return fit_rows, held_out
            except ValueError:  # too few lesions per class for any fold (tiny cohorts)
                pass
        log.debug(
            "importance selector: no held-out split with every class; importances "
            "are measured on the training rows"
        )
        everything = np.arange(len(y))
        return everything, everything

    def fit(self, X, y, groups=None, sample_weight=None):
        from sklearn.ensemble import RandomForestClassifier

        if int(self.max_features) < 1:
            raise ValueError(f"max_features must be at least 1, got {self.max_features!r}")
        names, array, kept_always, y = self._start(X, y, with_y=True)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.shape != y.shape:
                raise ValueError(
                    f"sample_weight has shape {sample_weight.shape}, expected {y.shape}"
                )
        if groups is not None and np.shape(groups) != y.shape:
            raise ValueError(f"groups has shape {np.shape(groups)}, expected {y.shape}")
        cached = None
        if self.cache_dir:
            key = _digest(self, names, array, y, groups, sample_weight)
            cached = Path(self.cache_dir) / f"{key}.npz"
            if cached.is_file():
                with np.load(cached, allow_pickle=False) as stored:
                    self.support_ = stored["support"]
                    self.importances_ = stored["importances"]
                    self.importances_std_ = stored["spread"]
                    self.ranking_ = [str(n) for n in stored["ranking"]]
                return self
        candidates = np.flatnonzero(~kept_always)
        importances = np.full(len(names), np.nan)
        spread = np.full(len(names), np.nan)
        support = kept_always.copy()
        ranking: list[str] = []
        if candidates.size:
            train, held_out = self._split(y, groups)
            weights = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
            forest = RandomForestClassifier(
                n_estimators=self.n_estimators,
                class_weight="balanced",
                n_jobs=1,
                random_state=self.random_state,
            )
            forest.fit(
                array[np.ix_(train, candidates)],
                y[train],
                sample_weight=None if weights is None else weights[train],
            )
            mean, std = permutation_auc_drop(
                forest,
                array[np.ix_(held_out, candidates)],
                y[held_out],
                n_repeats=self.n_repeats,
                random_state=self.random_state,
                sample_weight=None if weights is None else weights[held_out],
            )
            importances[candidates] = mean
            spread[candidates] = std
            rounded = np.round(mean, _DECIMALS)
            order = sorted(
                range(candidates.size), key=lambda k: (-rounded[k], names[candidates[k]])
            )
            ranking = [names[candidates[k]] for k in order]
            chosen = [k for k in order if rounded[k] > 0][: int(self.max_features)] or order[:1]
            support[candidates[chosen]] = True
        self.support_ = support
        self.importances_ = importances
        self.importances_std_ = spread
        self.ranking_ = ranking
        if cached is not None:
            _store(
                cached,
                support=support,
                importances=importances,
                spread=spread,
                ranking=np.array(ranking, dtype=str),
            )
        return self


def _auc(y_index: np.ndarray, proba: np.ndarray, sample_weight=None) -> float:
    """ROC AUC (binary: of column 1; else macro one-vs-rest), by ranks when unweighted."""
    from scipy.stats import rankdata

    n_classes = proba.shape[1]
    if sample_weight is not None:
        from sklearn.metrics import roc_auc_score

        if n_classes == 2:
            return float(roc_auc_score(y_index == 1, proba[:, 1], sample_weight=sample_weight))
        return float(
            roc_auc_score(
                y_index,
                proba,
                multi_class="ovr",
                average="macro",
                labels=list(range(n_classes)),
                sample_weight=sample_weight,
            )
        )
    values = []
    for k in [1] if n_classes == 2 else range(n_classes):
        positive = y_index == k
        n_pos = int(positive.sum())
        n_neg = positive.size - n_pos
        ranks = rankdata(proba[:, k])
        values.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return float(np.mean(values))


def permutation_auc_drop(
    model, X: np.ndarray, y, *, n_repeats: int, random_state: int, sample_weight=None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD over ``n_repeats`` shuffles of the AUC lost when each column is shuffled.

    The same quantity as scikit-learn's ``permutation_importance`` with ROC AUC
    scoring, computed with one prediction call per column (all its shuffles
    stacked), which is several times faster for forests. Every class must be
    present in ``y``.
    """
    y_index = np.searchsorted(model.classes_, np.asarray(y))
    baseline = _auc(y_index, model.predict_proba(X), sample_weight)
    rng = np.random.default_rng(random_state)
    n = X.shape[0]
    drops = np.zeros((X.shape[1], n_repeats))
    for j in range(X.shape[1]):
        stacked = np.tile(X, (n_repeats, 1))
        for r in range(n_repeats):
            stacked[r * n : (r + 1) * n, j] = X[rng.permutation(n), j]
        proba = model.predict_proba(stacked)
        for r in range(n_repeats):
            drops[j, r] = baseline - _auc(y_index, proba[r * n : (r + 1) * n], sample_weight)
    return drops.mean(axis=1), drops.std(axis=1)


class Float32MeanScaler(StandardScaler):
    """``StandardScaler`` whose fitted mean is rounded to float32.

    skl2onnx stores the mean of a scaler as float32 even when it computes in
    float64, so the scikit-learn model uses the same rounded mean: both then
    compute bit-identical standardised values (as float32), and a tree split
    that falls exactly on a training value goes the same way in both.
    """

    def fit(self, X, y=None, sample_weight=None):
        super().fit(X, y, sample_weight)
        if getattr(self, "mean_", None) is not None:
            self.mean_ = self.mean_.astype(np.float32).astype(np.float64)
        return self
