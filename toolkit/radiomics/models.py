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
that every patient counts equally (``patient_weights``), for the classifiers
whose registry entry takes sample weights.

The classifiers, their grids and search spaces are the entries of
:mod:`metcli.radiomics.classifiers`; the options are
:class:`~metcli.radiomics.settings.Settings`; the metrics are in
:mod:`metcli.radiomics.metrics`. On small cohorts every search follows its
smallest training set (SMOTE's neighbours, KNN's grid) or is refused before the
first fit: :mod:`metcli.radiomics.fold_limits`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from metcli.core.errors import InputError
from metcli.radiomics.classifiers import CLASSIFIERS, Classifier, get, register, unregister
from metcli.radiomics.fold_limits import SMOTE_NEIGHBOURS, check_searches, plan_search
from metcli.radiomics.settings import Settings

log = logging.getLogger(__name__)


def make_classifier(name: str, *, seed: int):
    """A fresh classifier of the registry entry ``name``, seeded with ``seed``."""
    return get(name).factory(seed)


# ----------------------------------------------------------------------------- pipeline
def build_pipeline(
    classifier: str,
    sampler: str,
    *,
    settings: Settings,
    keep: Sequence[str] = (),
    cache_dir: str | None = None,
):
    """The imbalanced-learn pipeline of one classifier and sampler (unfitted)."""
    from imblearn.over_sampling import SMOTE
    from imblearn.pipeline import Pipeline
    from imblearn.under_sampling import RandomUnderSampler

    from metcli.radiomics.selection import (
        CorrelationFilter,
        Float32MeanScaler,
        PermutationImportanceSelector,
    )

    seed = settings.seed
    resampler: Any = {
        "smote": lambda: SMOTE(k_neighbors=SMOTE_NEIGHBOURS, random_state=seed),
        "undersample": lambda: RandomUnderSampler(random_state=seed),
        "none": lambda: "passthrough",
    }[sampler]()
    return Pipeline(
        [
            (
                "filter",
                CorrelationFilter(
                    threshold=settings.pcc_threshold, keep=tuple(keep), cache_dir=cache_dir
                ),
            ),
            (
                "select",
                PermutationImportanceSelector(
                    max_features=settings.max_features,
                    n_estimators=settings.importance_trees,
                    n_repeats=settings.importance_repeats,
                    keep=tuple(keep),
                    random_state=seed,
                    cache_dir=cache_dir,
                ),
            ),
            ("sampler", resampler),
            ("scale", Float32MeanScaler()),
            ("clf", make_classifier(classifier, seed=seed)),
        ]
    )


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
        if get(classifier).sample_weights:
            params["clf__sample_weight"] = lesion_weights(
                y, patients, per_patient=settings.patient_weights
            )
    return params


def make_search(
    pipeline,
    classifier: str,
    *,
    settings: Settings,
    n_classes: int,
    sampler: str,
    y,
    cv_groups,
    jobs: int = 1,
):
    """The inner, grouped hyper-parameter search around ``pipeline`` for (y, cv_groups).

    The search is adapted to its smallest training set (SMOTE's ``k_neighbors``,
    size-limited grid values; :mod:`metcli.radiomics.fold_limits`), or a UsageError
    says why it cannot run. A grid of one candidate gives a :class:`FixedCandidate`.
    """
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    plan = plan_search(classifier, sampler, y, cv_groups, settings=settings, n_classes=n_classes)
    if plan.changes():
        log.debug("%s with %s: %s", classifier, sampler, ", ".join(plan.changes()))
    params = plan.pipeline_params()
    if plan.single:
        # one candidate: nothing to tune, so no inner cross-validation is needed
        return FixedCandidate(pipeline, {k: v[0] for k, v in params.items()})
    scoring = "roc_auc" if n_classes == 2 else "roc_auc_ovr"
    common = dict(cv=plan.splits, scoring=scoring, n_jobs=jobs, error_score="raise", refit=True)
    if plan.kind == "grid":
        return GridSearchCV(pipeline, params, **common)
    return RandomizedSearchCV(
        pipeline,
        params,
        n_iter=settings.search_iterations,
        random_state=settings.seed,
        **common,
    )


def fit_search(
    classifier: str,
    sampler: str,
    X,
    y,
    *,
    patients,
    cv_groups,
    settings: Settings,
    keep: Sequence[str],
    n_classes: int,
    jobs: int = 1,
    cache_dir: str | None = None,
):
    """Fit the grouped search of one classifier and sampler on (X, y); return it."""
    pipeline = build_pipeline(
        classifier, sampler, settings=settings, keep=keep, cache_dir=cache_dir
    )
    search = make_search(
        pipeline,
        classifier,
        settings=settings,
        n_classes=n_classes,
        jobs=jobs,
        sampler=sampler,
        y=y,
        cv_groups=cv_groups,
    )
    params = fit_params(classifier, sampler, y=y, patients=patients, settings=settings)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # SVC(probability=True)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        # an inner test fold of one class: AUC undefined (check_searches logs it once)
        warnings.filterwarnings("ignore", message=".*Only one class is present in y_true.*")
        warnings.filterwarnings("ignore", message=".*test scores are non-finite.*")
        try:
            search.fit(X, y, groups=np.asarray(cv_groups), **params)
        except ValueError as exc:
            text = " ".join(str(exc).split())
            raise InputError(
                f"{classifier} with {sampler}: fitting failed ({text[:200]})",
                fix="check that every class has enough lesions and patients in "
                "each training fold (fewer --cv-folds or --inner-folds, or "
                "another sampler)",
            ) from None
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
    oof: dict[str, np.ndarray]  # model -> (repeats, n, classes), NaN where not tested
    folds: np.ndarray  # (repeats, n) outer fold of each row
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
        splitter = StratifiedGroupKFold(
            n_splits=settings.cv_folds, shuffle=True, random_state=settings.seed + repeat
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y, cv_groups)):
                yield repeat, k, train, test


def cross_validate(
    X,
    y,
    *,
    patients,
    cv_groups,
    models: Sequence[tuple[str, str]],
    settings: Settings,
    keep: Sequence[str] = (),
    n_classes: int | None = None,
    fixed_folds: np.ndarray | None = None,
    jobs: int = 1,
    progress: Callable[[str, str], None] | None = None,
    cache_dir: str | None = None,
) -> CVOutcome:
    """Nested grouped cross-validation of every model: out-of-fold probabilities.

    ``cv_groups`` decides the outer and inner splits (patients or sites);
    ``patients`` are the groups of the importance selector's own held-out
    split. Passing one group per lesion gives a lesion-level (leaky) CV.
    ``cache_dir`` keeps the importance selections (a temporary folder if None).
    """
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="metcli-selection-") as folder:
            return _cross_validate(
                X,
                y,
                patients=patients,
                cv_groups=cv_groups,
                models=models,
                settings=settings,
                keep=keep,
                n_classes=n_classes,
                fixed_folds=fixed_folds,
                jobs=jobs,
                progress=progress,
                cache_dir=folder,
            )
    return _cross_validate(
        X,
        y,
        patients=patients,
        cv_groups=cv_groups,
        models=models,
        settings=settings,
        keep=keep,
        n_classes=n_classes,
        fixed_folds=fixed_folds,
        jobs=jobs,
        progress=progress,
        cache_dir=cache_dir,
    )


def _cross_validate(
    X,
    y,
    *,
    patients,
    cv_groups,
    models,
    settings,
    keep,
    n_classes,
    fixed_folds,
    jobs,
    progress,
    cache_dir,
) -> CVOutcome:
    y = np.asarray(y)
    n_classes = n_classes or int(np.unique(y).size)
    splits = list(outer_splits(y, cv_groups, settings=settings, fixed_folds=fixed_folds))
    check_searches(models, settings, splits, {None: y}, cv_groups)
    repeats = 1 + max(s[0] for s in splits)
    names = [model_name(c, s) for c, s in models]
    outcome = CVOutcome(
        list(models),
        {n: np.full((repeats, len(y), n_classes), np.nan) for n in names},
        np.full((repeats, len(y)), -1, dtype=int),
    )
    task = partial(
        _outer_fold,
        X=X,
        y=y,
        patients=np.asarray(patients),
        cv_groups=np.asarray(cv_groups),
        models=list(models),
        settings=settings,
        keep=tuple(keep),
        n_classes=n_classes,
        cache_dir=cache_dir,
    )
    for (repeat, fold, train, test), (probas, selection) in each_outer_fold(task, splits, jobs):
        outcome.folds[repeat, test] = fold
        for name, proba in zip(names, probas):
            outcome.oof[name][repeat][np.ix_(test, range(n_classes))] = proba
            if progress:
                progress(f"repeat {repeat + 1} fold {fold + 1}", name)
        record_selection(outcome, selection)
    return outcome


def _outer_fold(split, *, X, y, patients, cv_groups, models, settings, keep, n_classes, cache_dir):
    """Fit every model's search on one outer training fold: (test probabilities, selection)."""
    _, _, train, test = split
    probas, selection = [], None
    for index, (classifier, sampler) in enumerate(models):
        search = fit_search(
            classifier,
            sampler,
            X.iloc[train],
            y[train],
            patients=patients[train],
            cv_groups=cv_groups[train],
            settings=settings,
            keep=keep,
            n_classes=n_classes,
            jobs=1,
            cache_dir=cache_dir,
        )
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
    same values whoever computes them). The workers get the classifiers
    registered here, so a classifier registered at run time works in them too.
    """
    if jobs <= 1 or len(splits) < 2:
        for split in splits:
            yield split, task(split)
        return
    from joblib import Parallel, delayed

    task = partial(_with_classifiers, task=task, entries=tuple(CLASSIFIERS.values()))
    runner = Parallel(n_jobs=min(jobs, len(splits)), return_as="generator")
    yield from zip(splits, runner(delayed(task)(split) for split in splits))


def _with_classifiers(split, *, task: Callable, entries: Sequence[Classifier]):
    """Run ``task(split)`` in a worker process with the parent's classifier entries."""
    for entry in entries:
        if CLASSIFIERS.get(entry.name) != entry:  # registered at run time (or changed)
            if entry.name in CLASSIFIERS:
                unregister(entry.name)
            register(entry)
    return task(split)


def selection_of(search, keep: Sequence[str]) -> tuple[set, set, dict]:
    """What the filter and the selector of one outer fit kept, and the importances."""
    best = search.best_estimator_
    filt, sel = best.named_steps["filter"], best.named_steps["select"]
    return (
        set(filt.get_feature_names_out()) - set(keep),
        set(sel.get_feature_names_out()) - set(keep),
        {n: float(v) for n, v in zip(sel.feature_names_in_, sel.importances_) if np.isfinite(v)},
    )


def record_selection(outcome: CVOutcome, selection: tuple[set, set, dict]) -> None:
    """Note one outer fit's :func:`selection_of` (for selected_features.tsv)."""
    kept, selected, importances = selection
    outcome.filter_kept.append(kept)
    outcome.selected.append(selected)
    outcome.importances.append(importances)
