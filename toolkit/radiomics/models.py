"""Radiomics classifiers, leakage-safe by construction (``metcli train-radiomics``).

Every step that learns from data sits in one imbalanced-learn pipeline::

    CorrelationFilter -> PermutationImportanceSelector -> sampler -> StandardScaler -> classifier

and the pipeline is only ever fitted on training folds: an outer grouped
cross-validation (``StratifiedGroupKFold`` over patients, or over sites) gives
out-of-fold predictions; inside each outer training set a grouped inner
cross-validation tunes the hyper-parameters (``GridSearchCV`` or
``RandomizedSearchCV``, the groups passed to its ``fit``). The model and its
decision threshold are chosen on the out-of-fold predictions, never on the test
set. The final model of each classifier and sampler is the search refitted on
all training patients; with ``protocol="holdout"`` it is then applied once to
the held-out test patients.

Samplers act on lesions, as in Tharmaseelan et al. 2023: SMOTE makes synthetic
lesions of the minority class, random undersampling drops lesions of the
majority class. Both change the class prior the classifier sees, so its
probabilities are shifted towards the minority class (evaluate reports the
calibration). ``sampler="none"`` weights the lesions instead: class weights
that balance the classes, optionally times ``1 / (lesions of the patient)`` so
that every patient counts equally (``patient_weights``).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError

log = logging.getLogger(__name__)

COMMAND = "train-radiomics"
CLASSIFIERS = ("xgboost", "random-forest", "linear-svm", "kernel-svm", "knn",
               "logistic-regression", "naive-bayes", "decision-tree")
SAMPLERS = ("smote", "undersample", "none")
PROTOCOLS = ("nested-cv", "holdout")
THRESHOLD_RULES = ("youden", "f1")
LEVELS = ("patient", "lesion")
#: Classifiers whose fit takes sample weights (KNN does not).
WEIGHTED = frozenset(CLASSIFIERS) - {"knn"}

DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "xgboost": {"n_estimators": [100], "max_depth": [2, 4], "learning_rate": [0.05, 0.2]},
    "random-forest": {"n_estimators": [100], "min_samples_leaf": [1, 3]},
    "linear-svm": {"C": [0.01, 0.1, 1.0]},
    "kernel-svm": {"C": [0.1, 1.0, 10.0], "gamma": ["scale"]},
    "knn": {"n_neighbors": [5, 9, 15]},
    "logistic-regression": {"C": [0.01, 0.1, 1.0, 10.0]},
    "naive-bayes": {"var_smoothing": [1e-9, 1e-6, 1e-3]},
    "decision-tree": {"max_depth": [3, 5, None], "min_samples_leaf": [1, 5]},
}


def _random_space(name: str) -> dict:
    from scipy.stats import loguniform, randint

    return {
        "xgboost": {"n_estimators": randint(50, 300), "max_depth": randint(2, 7),
                    "learning_rate": loguniform(0.01, 0.3)},
        "random-forest": {"n_estimators": randint(50, 300), "max_depth": [None, 3, 5, 8],
                          "min_samples_leaf": randint(1, 8)},
        "linear-svm": {"C": loguniform(1e-3, 1e1)},
        "kernel-svm": {"C": loguniform(1e-2, 1e2), "gamma": loguniform(1e-3, 1e0)},
        "knn": {"n_neighbors": randint(3, 25), "weights": ["uniform", "distance"]},
        "logistic-regression": {"C": loguniform(1e-3, 1e2)},
        "naive-bayes": {"var_smoothing": loguniform(1e-12, 1e-2)},
        "decision-tree": {"max_depth": [2, 3, 4, 5, 6, None], "min_samples_leaf": randint(1, 10),
                          "criterion": ["gini", "entropy"]},
    }[name]


def make_classifier(name: str, *, seed: int):
    """A fresh classifier with the study's family and metcli's defaults."""
    if name == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(n_estimators=100, max_depth=3, learning_rate=0.1,
                             tree_method="hist", n_jobs=1, random_state=seed, verbosity=0)
    if name == "random-forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, n_jobs=1, random_state=seed)
    if name in ("linear-svm", "kernel-svm"):
        from sklearn.svm import SVC

        kernel = "linear" if name == "linear-svm" else "rbf"
        return SVC(kernel=kernel, probability=True, random_state=seed)
    if name == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=5)
    if name == "logistic-regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=5000, random_state=seed)
    if name == "naive-bayes":
        from sklearn.naive_bayes import GaussianNB

        return GaussianNB()
    if name == "decision-tree":
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(random_state=seed)
    raise UsageError(f"classifier {name!r} is not one of {', '.join(CLASSIFIERS)}")


@dataclass
class Settings:
    """Everything that changes the outputs (recorded in provenance)."""

    label_column: str = "primary"
    positive_class: str | None = None
    classifiers: tuple[str, ...] = CLASSIFIERS
    samplers: tuple[str, ...] = ("smote", "undersample")
    pcc_threshold: float = 0.6
    max_features: int = 10
    protocol: str = "nested-cv"
    test_patients: int | None = None
    cv_folds: int = 5
    cv_repeats: int = 2
    inner_folds: int = 3
    group_by: str = "participant"
    search: str = "grid"
    search_iterations: int = 10
    threshold: str = "youden"
    threshold_level: str = "patient"
    patient_weights: bool = False
    covariates: tuple[str, ...] = ()
    phase: str | None = None
    session: str | None = None
    importance_trees: int = 100
    importance_repeats: int = 5
    seed: int = 0
    grids: dict | None = None
    hierarchy: dict | None = None

    def record(self) -> dict:
        out = asdict(self)
        out["classifiers"] = list(self.classifiers)
        out["samplers"] = list(self.samplers)
        out["covariates"] = list(self.covariates)
        return out


def _names(value, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    items = list(value or [])
    if items == ["all"]:
        return tuple(allowed)
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise UsageError(f"{option} {','.join(bad) or '(empty)'} is not valid",
                         fix=f"choose among all, {', '.join(allowed)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def check_settings(**options) -> Settings:
    """Settings from keyword options, each checked (UsageError names the option)."""
    unknown = set(options) - set(Settings.__dataclass_fields__)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(sorted(unknown))}")
    s = Settings(**{k: v for k, v in options.items() if v is not None or k in (
        "positive_class", "test_patients", "phase", "session", "grids", "hierarchy")})
    s.classifiers = _names(s.classifiers, CLASSIFIERS, "--classifiers")
    s.samplers = _names(s.samplers, SAMPLERS, "--sampler")
    if isinstance(s.covariates, str):
        s.covariates = tuple(c.strip() for c in s.covariates.split(",") if c.strip())
    s.covariates = tuple(s.covariates)
    checks = [
        (0.0 < s.pcc_threshold <= 1.0, "--pcc-threshold must be in (0, 1]"),
        (s.max_features >= 1, "--max-features must be at least 1"),
        (s.protocol in PROTOCOLS, f"--protocol must be one of {', '.join(PROTOCOLS)}"),
        (s.cv_folds >= 2, "--cv-folds must be at least 2"),
        (s.cv_repeats >= 1, "--cv-repeats must be at least 1"),
        (s.inner_folds >= 2, "--inner-folds must be at least 2"),
        (s.group_by in ("participant", "site"), "--group-by must be participant or site"),
        (s.search in ("grid", "random"), "--search must be grid or random"),
        (s.search_iterations >= 1, "--search-iterations must be at least 1"),
        (s.threshold in THRESHOLD_RULES, "--threshold must be youden or f1"),
        (s.threshold_level in LEVELS, "--threshold-level must be patient or lesion"),
        (s.importance_trees >= 1 and s.importance_repeats >= 1,
         "--importance-trees and --importance-repeats must be at least 1"),
        (s.test_patients is None or s.test_patients >= 2, "--test-patients must be at least 2"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if s.patient_weights and s.samplers != ("none",):
        raise UsageError("--patient-weights works with --sampler none only: SMOTE and "
                         "undersampling make or drop lesions, which have no patient weight",
                         fix="use --sampler none --patient-weights")
    if s.hierarchy is not None and s.positive_class is not None:
        raise UsageError("--positive-class does not apply to --hierarchy: the chained model "
                         "has three labels or more (a binary step's positive class is its "
                         "label that sorts last)", fix="leave --positive-class out")
    if s.test_patients is not None and s.protocol != "holdout":
        raise UsageError("--test-patients needs --protocol holdout")
    if s.grids:
        for name, grid in s.grids.items():
            if name not in CLASSIFIERS or not isinstance(grid, dict):
                raise UsageError(f"grid for {name!r}: not a classifier or not a mapping")
    return s


# ----------------------------------------------------------------------------- pipeline
def build_pipeline(classifier: str, sampler: str, *, settings: Settings, keep: Sequence[str] = (),
                   cache_dir: str | None = None):
    """The imbalanced-learn pipeline of one classifier and sampler (unfitted)."""
    from imblearn.over_sampling import SMOTE
    from imblearn.pipeline import Pipeline
    from imblearn.under_sampling import RandomUnderSampler

    from metcli.radiomics.selection import (CorrelationFilter, Float32MeanScaler,
                                          PermutationImportanceSelector)

    seed = settings.seed
    resampler: Any = {"smote": lambda: SMOTE(random_state=seed),
                      "undersample": lambda: RandomUnderSampler(random_state=seed),
                      "none": lambda: "passthrough"}[sampler]()
    return Pipeline([
        ("filter", CorrelationFilter(threshold=settings.pcc_threshold, keep=tuple(keep),
                                     cache_dir=cache_dir)),
        ("select", PermutationImportanceSelector(
            max_features=settings.max_features, n_estimators=settings.importance_trees,
            n_repeats=settings.importance_repeats, keep=tuple(keep), random_state=seed,
            cache_dir=cache_dir)),
        ("sampler", resampler),
        ("scale", Float32MeanScaler()),
        ("clf", make_classifier(classifier, seed=seed)),
    ])


def lesion_weights(y: np.ndarray, patients: np.ndarray, *, per_patient: bool) -> np.ndarray:
    """Class-balancing weights, times 1/(lesions of the patient) when ``per_patient``.

    Normalised to mean 1. Each class then carries the same total weight.
    """
    base = np.ones(len(y))
    if per_patient:
        _, inverse, counts = np.unique(patients, return_inverse=True, return_counts=True)
        base = 1.0 / counts[inverse]
    classes = np.unique(y)
    totals = {c: base[y == c].sum() for c in classes}
    weights = base * np.array([base.sum() / (len(classes) * totals[c]) for c in y])
    return weights / weights.mean()


def fit_params(classifier: str, sampler: str, *, y, patients, settings: Settings) -> dict:
    """Fit parameters of the pipeline (groups for the selector, weights where used)."""
    params: dict[str, Any] = {"select__groups": np.asarray(patients)}
    if sampler == "none":
        if settings.patient_weights:
            params["select__sample_weight"] = lesion_weights(y, patients, per_patient=True)
        if classifier in WEIGHTED:
            params["clf__sample_weight"] = lesion_weights(y, patients,
                                                          per_patient=settings.patient_weights)
    return params


def make_search(pipeline, classifier: str, *, settings: Settings, n_classes: int,
                jobs: int = 1):
    """The inner, grouped hyper-parameter search around ``pipeline``."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, StratifiedGroupKFold

    inner = StratifiedGroupKFold(n_splits=settings.inner_folds, shuffle=True,
                                 random_state=settings.seed)
    scoring = "roc_auc" if n_classes == 2 else "roc_auc_ovr"
    grid = (settings.grids or {}).get(classifier)
    if settings.search == "grid" or grid is not None:
        grid = grid if grid is not None else DEFAULT_GRIDS[classifier]
        return GridSearchCV(pipeline, {f"clf__{k}": v for k, v in grid.items()}, cv=inner,
                            scoring=scoring, n_jobs=jobs, error_score="raise", refit=True)
    space = {f"clf__{k}": v for k, v in _random_space(classifier).items()}
    return RandomizedSearchCV(pipeline, space, n_iter=settings.search_iterations, cv=inner,
                              scoring=scoring, n_jobs=jobs, error_score="raise",
                              random_state=settings.seed, refit=True)


def fit_search(classifier: str, sampler: str, X, y, *, patients, cv_groups, settings: Settings,
               keep: Sequence[str], n_classes: int, jobs: int = 1, cache_dir: str | None = None):
    """Fit the grouped search of one classifier and sampler on (X, y); return it."""
    pipeline = build_pipeline(classifier, sampler, settings=settings, keep=keep,
                              cache_dir=cache_dir)
    search = make_search(pipeline, classifier, settings=settings, n_classes=n_classes, jobs=jobs)
    params = fit_params(classifier, sampler, y=y, patients=patients, settings=settings)
    grid = getattr(search, "param_grid", None)
    if isinstance(grid, dict) and all(len(v) == 1 for v in grid.values()):
        # one candidate: nothing to tune, so no inner cross-validation is needed
        search = FixedCandidate(pipeline, {k: v[0] for k, v in grid.items()})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # SVC(probability=True)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        try:
            search.fit(X, y, groups=np.asarray(cv_groups), **params)
        except ValueError as exc:
            text = " ".join(str(exc).split())
            raise InputError(f"{classifier} with {sampler}: fitting failed ({text[:200]})",
                             fix="check that every class has enough lesions and patients in "
                                 "each training fold (fewer --cv-folds or --inner-folds, or "
                                 "another sampler)") from None
    return search


class FixedCandidate:
    """Stands in for a search whose grid has a single candidate: fits it directly."""

    def __init__(self, pipeline, params: dict):
        self.best_params_ = dict(params)
        self.best_estimator_ = pipeline.set_params(**params)

    def fit(self, X, y, groups=None, **params):
        self.best_estimator_.fit(X, y, **params)
        return self

    def predict_proba(self, X):
        return self.best_estimator_.predict_proba(X)


# ----------------------------------------------------------------------------- CV engine
@dataclass
class CVOutcome:
    """Out-of-fold probabilities and what the selection steps did in each outer fit."""

    models: list[tuple[str, str]]
    oof: dict[str, np.ndarray]            # model -> (repeats, n, classes), NaN where not tested
    folds: np.ndarray                     # (repeats, n) outer fold of each row
    filter_kept: list[set] = field(default_factory=list)
    selected: list[set] = field(default_factory=list)
    importances: list[dict] = field(default_factory=list)

    def mean_oof(self, name: str) -> np.ndarray:
        return np.nanmean(self.oof[name], axis=0)


def model_name(classifier: str, sampler: str) -> str:
    return f"{classifier}_{sampler}"


def outer_splits(y, cv_groups, *, settings: Settings, fixed_folds: np.ndarray | None = None):
    """(repeat, fold, train rows, test rows) of the outer grouped cross-validation."""
    from sklearn.model_selection import StratifiedGroupKFold

    y, cv_groups = np.asarray(y), np.asarray(cv_groups)
    if fixed_folds is not None:
        for k, fold in enumerate(sorted(set(fixed_folds.tolist()))):
            test = np.flatnonzero(fixed_folds == fold)
            yield 0, k, np.flatnonzero(fixed_folds != fold), test
        return
    for repeat in range(settings.cv_repeats):
        splitter = StratifiedGroupKFold(n_splits=settings.cv_folds, shuffle=True,
                                        random_state=settings.seed + repeat)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y, cv_groups)):
                yield repeat, k, train, test


def cross_validate(X, y, *, patients, cv_groups, models: Sequence[tuple[str, str]],
                   settings: Settings, keep: Sequence[str] = (), n_classes: int | None = None,
                   fixed_folds: np.ndarray | None = None, jobs: int = 1,
                   progress: Callable[[str, str], None] | None = None,
                   cache_dir: str | None = None) -> CVOutcome:
    """Nested grouped cross-validation of every model: out-of-fold probabilities.

    ``cv_groups`` decides the outer and inner splits (patients or sites);
    ``patients`` are the groups of the importance selector's own held-out
    split. Passing one group per lesion gives a lesion-level (leaky) CV.
    ``cache_dir`` keeps the importance selections (a temporary folder if None).
    """
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="metcli-selection-") as folder:
            return _cross_validate(X, y, patients=patients, cv_groups=cv_groups, models=models,
                                   settings=settings, keep=keep, n_classes=n_classes,
                                   fixed_folds=fixed_folds, jobs=jobs, progress=progress,
                                   cache_dir=folder)
    return _cross_validate(X, y, patients=patients, cv_groups=cv_groups, models=models,
                           settings=settings, keep=keep, n_classes=n_classes,
                           fixed_folds=fixed_folds, jobs=jobs, progress=progress,
                           cache_dir=cache_dir)


def _cross_validate(X, y, *, patients, cv_groups, models, settings, keep, n_classes, fixed_folds,
                    jobs, progress, cache_dir) -> CVOutcome:
    y = np.asarray(y)
    n_classes = n_classes or int(np.unique(y).size)
    splits = list(outer_splits(y, cv_groups, settings=settings, fixed_folds=fixed_folds))
    repeats = 1 + max(s[0] for s in splits)
    names = [model_name(c, s) for c, s in models]
    outcome = CVOutcome(list(models), {n: np.full((repeats, len(y), n_classes), np.nan)
                                       for n in names},
                        np.full((repeats, len(y)), -1, dtype=int))
    task = partial(_outer_fold, X=X, y=y, patients=np.asarray(patients),
                   cv_groups=np.asarray(cv_groups), models=list(models), settings=settings,
                   keep=tuple(keep), n_classes=n_classes, cache_dir=cache_dir)
    for (repeat, fold, train, test), (probas, selection) in each_outer_fold(task, splits, jobs):
        outcome.folds[repeat, test] = fold
        for name, proba in zip(names, probas):
            outcome.oof[name][repeat][np.ix_(test, range(n_classes))] = proba
            if progress:
                progress(f"repeat {repeat + 1} fold {fold + 1}", name)
        record_selection(outcome, selection)
    return outcome


def _outer_fold(split, *, X, y, patients, cv_groups, models, settings, keep, n_classes,
                cache_dir):
    """Fit every model's search on one outer training fold: (test probabilities, selection)."""
    _, _, train, test = split
    probas, selection = [], None
    for index, (classifier, sampler) in enumerate(models):
        search = fit_search(classifier, sampler, X.iloc[train], y[train],
                            patients=patients[train], cv_groups=cv_groups[train],
                            settings=settings, keep=keep, n_classes=n_classes, jobs=1,
                            cache_dir=cache_dir)
        probas.append(search.predict_proba(X.iloc[test]))
        if index == 0:
            selection = selection_of(search, keep)
    return probas, selection


def each_outer_fold(task: Callable, splits: Sequence, jobs: int):
    """``(split, task(split))`` for every outer split, in the order of ``splits``.

    With ``jobs`` > 1 the splits are shared among that many worker processes
    (joblib), each fitting its searches one candidate at a time: the outer folds
    are many and of equal size, so two cores stay busy, and the results are the
    same as with one process (each fit is seeded; the selection cache holds the
    same values whoever computes them).
    """
    if jobs <= 1 or len(splits) < 2:
        for split in splits:
            yield split, task(split)
        return
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=min(jobs, len(splits)), return_as="generator")
    yield from zip(splits, runner(delayed(task)(split) for split in splits))


def selection_of(search, keep: Sequence[str]) -> tuple[set, set, dict]:
    """What the filter and the selector of one outer fit kept, and the importances."""
    best = search.best_estimator_
    filt, sel = best.named_steps["filter"], best.named_steps["select"]
    return (set(filt.get_feature_names_out()) - set(keep),
            set(sel.get_feature_names_out()) - set(keep),
            {n: float(v) for n, v in zip(sel.feature_names_in_, sel.importances_)
             if np.isfinite(v)})


def record_selection(outcome: CVOutcome, selection: tuple[set, set, dict]) -> None:
    """Note one outer fit's :func:`selection_of` (for selected_features.tsv)."""
    kept, selected, importances = selection
    outcome.filter_kept.append(kept)
    outcome.selected.append(selected)
    outcome.importances.append(importances)


# ----------------------------------------------------------------------------- metrics
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
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro",
                               labels=list(range(n_classes))))


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


def level_metrics(y, proba, *, classes, positive, threshold, patients=None
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
    return {"auc": auc(y, proba, positive_index=pos_index),
            "accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": balanced}


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
