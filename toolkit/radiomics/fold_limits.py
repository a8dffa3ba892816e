"""What the smallest training set of a search allows: SMOTE's neighbours and KNN's grid.

A search (:func:`metcli.radiomics.models.fit_search`) fits its pipeline on each
training fold of its inner cross-validation and once more on all its lesions
(the refit; a grid of one candidate is fitted on all its lesions only). Two
steps of the pipeline need a number of lesions that a small cohort may not
have in every such training set:

- SMOTE interpolates between a lesion and one of its ``k_neighbors`` nearest
  lesions of the same class, so each class needs ``k_neighbors + 1`` lesions.
- A classifier parameter that counts training lesions (KNN's ``n_neighbors``,
  listed in the registry entry's ``size_limited``) cannot exceed the lesions
  the classifier is fitted on, after the sampler: all of them with ``none``,
  ``classes x the largest class`` after SMOTE, ``classes x the smallest
  class`` after undersampling.

The rule, applied to each search from the smallest of its training sets:

1. Every class needs a lesion in every training set, two with SMOTE; otherwise
   a :class:`~metcli.core.errors.UsageError` before anything is fitted.
2. SMOTE's ``k_neighbors`` is ``min(5, lesions of the smallest class - 1)``.
3. Values of a size-limited parameter above the smallest fit size are left out
   of the grid (a random search's list is filtered, its integer range cut);
   a UsageError when no value remains.

When every training set is large enough nothing changes: the search is the one
asked for. A lowered ``k_neighbors`` becomes part of the search's grid, so the
model card and results.tsv list it among the hyper-parameters (``k_neighbors``),
next to the ``n_neighbors`` the search chose. :func:`check_searches` applies
the rule to every search of a run (each outer training fold, each step of a
hierarchy, and the final models) before the first fit, and logs what it
changed.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from metcli.core.errors import UsageError
from metcli.radiomics.classifiers import get
from metcli.radiomics.settings import Settings

log = logging.getLogger(__name__)

#: SMOTE's ``k_neighbors`` when every class has enough lesions (imbalanced-learn's default).
SMOTE_NEIGHBOURS = 5


@dataclass(frozen=True)
class SearchPlan:
    """One search as it will run: its candidates, inner folds and what was adapted.

    Attributes:
        kind: ``grid`` or ``random``.
        candidates: classifier parameter -> values (a random search: values or a
            distribution), size-limited values left out.
        splits: the inner (train, test) rows; None for a single candidate, which
            is fitted on all the search's lesions without an inner search.
        k_neighbors: SMOTE's ``k_neighbors`` when lowered below 5, else None.
        smallest_class: the fewest lesions of a class in a training set.
        fit_size: the fewest lesions the classifier is fitted on (after the sampler).
        left_out: parameter -> the values left out (or the range cut) for ``fit_size``.
        one_class_tests: inner test folds that lack a class (their AUC is
            undefined, so the search ranks every candidate as failed there).
    """

    kind: str
    candidates: dict
    splits: list | None
    k_neighbors: int | None
    smallest_class: int
    fit_size: int
    left_out: dict = field(default_factory=dict)
    one_class_tests: int = 0

    @property
    def single(self) -> bool:
        return self.kind == "grid" and all(len(v) == 1 for v in self.candidates.values())

    def pipeline_params(self) -> dict:
        """The candidates as parameters of the pipeline (``clf__...``, ``sampler__...``)."""
        params = {f"clf__{k}": v for k, v in self.candidates.items()}
        if self.k_neighbors is not None:
            params["sampler__k_neighbors"] = [self.k_neighbors]
        return params

    def changes(self) -> list[str]:
        """What the adaptation changed, one phrase each (empty when nothing)."""
        out = [] if self.k_neighbors is None else [f"SMOTE k_neighbors {self.k_neighbors}"]
        out += [f"{k} {v} left out" for k, v in sorted(self.left_out.items())]
        return out

    def notes(self) -> list[str]:
        """:meth:`changes`, and a note when inner test folds lack a class."""
        if not self.one_class_tests or self.splits is None:
            return self.changes()
        return self.changes() + ["inner test folds without every class (AUC undefined)"]


def inner_splitter(settings: Settings):
    """The grouped inner cross-validation of every search."""
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(
        n_splits=settings.inner_folds, shuffle=True, random_state=settings.seed
    )


def inner_splits(y, groups, settings: Settings, where: str) -> list:
    """The inner folds of a search on (y, groups): a UsageError when they cannot be made."""
    y, groups = np.asarray(y), np.asarray(groups)
    n_groups = int(np.unique(groups).size)
    if n_groups < settings.inner_folds:
        raise UsageError(
            f"--inner-folds {settings.inner_folds} needs as many patients (or sites) in "
            f"every training set of a search, and the training set of {where} has {n_groups}",
            fix="lower --inner-folds or --cv-folds, or add participants",
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        return list(inner_splitter(settings).split(np.zeros(len(y)), y, groups))


def fit_size(sampler: str, counts: np.ndarray) -> int:
    """Lesions the classifier is fitted on after ``sampler``, from the class counts."""
    present = counts[counts > 0]
    if sampler == "smote":
        return int(present.size * present.max())
    if sampler == "undersample":
        return int(present.size * present.min())
    return int(present.sum())


def _search_space(classifier: str, settings: Settings) -> tuple[str, dict]:
    """(``grid`` or ``random``, the classifier's candidates) as the settings ask."""
    grid = (settings.grids or {}).get(classifier)
    if settings.search == "grid" or grid is not None:
        return "grid", dict(grid if grid is not None else get(classifier).grid)
    return "random", dict(get(classifier).space())


def plan_search(
    classifier: str,
    sampler: str,
    y,
    groups,
    *,
    settings: Settings,
    n_classes: int,
    where: str = "the search",
    inner: Callable[[], list] | None = None,
) -> SearchPlan:
    """The search of ``classifier`` and ``sampler`` on (y, groups), adapted by the rule.

    ``inner`` returns the inner folds (default: :func:`inner_splits`); it is only
    called when the search has more than one candidate.
    """
    y = np.asarray(y)
    codes = np.unique(y, return_inverse=True)[1].reshape(-1)
    kind, candidates = _search_space(classifier, settings)
    single = kind == "grid" and all(len(v) == 1 for v in candidates.values())
    sets = [(f"the training set of {where}", np.arange(len(y)))]
    splits = None
    if not single:
        splits = inner() if inner else inner_splits(y, groups, settings, where)
        sets += [(f"an inner training fold of {where}", train) for train, _ in splits]
    need = 2 if sampler == "smote" else 1
    smallest, size = len(y), len(y)
    n_classes = max(n_classes, int(codes.max()) + 1)
    for what, rows in sets:
        counts = np.bincount(codes[rows], minlength=n_classes)
        if counts.min() < need:
            _too_few(classifier, sampler, what, int(counts.min()), n_classes, need)
        smallest = min(smallest, int(counts.min()))
        size = min(size, fit_size(sampler, counts))
    k = smallest - 1 if sampler == "smote" and smallest - 1 < SMOTE_NEIGHBOURS else None
    candidates, left_out = _limit(classifier, sampler, candidates, size, where)
    single = kind == "grid" and all(len(v) == 1 for v in candidates.values())
    one_class = sum(np.unique(codes[test]).size < n_classes for _, test in splits or ())
    splits = None if single else splits
    return SearchPlan(kind, candidates, splits, k, smallest, size, left_out, one_class)


def _too_few(classifier, sampler, what, count, n_classes, need) -> None:
    if need == 2:
        raise UsageError(
            f"{classifier} with smote: {what} holds {count} lesion(s) of a class (of "
            f"{n_classes}); SMOTE needs at least 2 of every class",
            fix="use --sampler undersample or none, lower --inner-folds or --cv-folds, "
            "or add patients of the rare class",
        )
    raise UsageError(
        f"{classifier} with {sampler}: {what} holds no lesion of a class (of "
        f"{n_classes}), so the classifier cannot be fitted",
        fix="lower --inner-folds or --cv-folds, or add patients of the rare class",
    )


def _limit(classifier, sampler, candidates: dict, size: int, where: str) -> tuple[dict, dict]:
    """The candidates without the size-limited values above ``size``, and those left out."""
    out, left_out = dict(candidates), {}
    for name in get(classifier).size_limited:
        values = candidates.get(name)
        if values is None:  # not searched: the estimator's own value must fit
            values = [get(classifier).factory(0).get_params()[name]]
        if hasattr(values, "rvs"):
            low, high = (int(v) for v in values.support())
            if high <= size:
                continue
            if low <= size and getattr(getattr(values, "dist", None), "name", "") == "randint":
                from scipy.stats import randint

                out[name], left_out[name] = randint(low, size + 1), f"{size + 1}-{high}"
                continue
            kept = []
        else:
            kept = [v for v in values if v is None or v <= size]
        if not kept:
            raise UsageError(
                f"{classifier} with {sampler}: no {name} of the search "
                f"({_describe(values)}) fits: the smallest training set of {where} "
                f"leaves the classifier {size} lesion(s)",
                fix=f"leave {classifier} out of --classifiers, lower --inner-folds or "
                "--cv-folds, use another sampler, or add patients",
            )
        if len(kept) < len(values):
            out[name], left_out[name] = kept, [v for v in values if v not in kept]
    return out, left_out


def _describe(values) -> str:
    if hasattr(values, "support"):
        low, high = values.support()
        return f"{int(low)} to {int(high)}"
    return ", ".join(str(v) for v in values)


def check_searches(
    models: Sequence[tuple[str, str]],
    settings: Settings,
    splits: Sequence,
    labels: Mapping[str | None, np.ndarray],
    cv_groups,
) -> None:
    """Plan every search of a run before the first fit (errors come now); log what changed.

    ``splits`` are the outer ``(repeat, fold, train, test)`` rows; ``labels`` gives,
    per step (None for a flat model), each row's class (-1 outside the step). The
    searches are those of each outer training fold and of the final models (all rows).
    """
    cv_groups = np.asarray(cv_groups)
    n = len(cv_groups)
    fits = [(f"outer fold {f + 1} (repeat {r + 1})", train) for r, f, train, _ in splits]
    fits.append(("the final model", np.arange(n)))
    changed: dict[tuple, Counter] = {}
    for step, y in labels.items():
        y = np.asarray(y)
        inside = y >= 0 if y.dtype.kind in "iuf" else np.ones(len(y), dtype=bool)
        n_classes = int(np.unique(y[inside]).size)
        for place, train in fits:
            rows = train[inside[train]]
            where = place if step is None else f"{step} in {place}"
            memo: dict = {}

            def inner(y=y, rows=rows, where=where, memo=memo):
                if "splits" not in memo:
                    memo["splits"] = inner_splits(y[rows], cv_groups[rows], settings, where)
                return memo["splits"]

            for classifier, sampler in models:
                plan = plan_search(
                    classifier,
                    sampler,
                    y[rows],
                    cv_groups[rows],
                    settings=settings,
                    n_classes=n_classes,
                    where=where,
                    inner=inner,
                )
                if plan.notes():
                    counter = changed.setdefault((classifier, sampler, step), Counter())
                    counter.update(plan.notes() + ["searches"])
    for (classifier, sampler, step), counter in changed.items():
        searches = counter.pop("searches")
        log.warning(
            "%s with %s%s: small training sets in %d of %d searches: %s",
            classifier,
            sampler,
            "" if step is None else f" ({step})",
            searches,
            len(fits),
            "; ".join(f"{k} ({v}x)" for k, v in sorted(counter.items())),
        )
