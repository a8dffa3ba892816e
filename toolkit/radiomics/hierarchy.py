"""Hierarchical radiomics models (``metcli train-radiomics --hierarchy FILE``).

A hierarchy file (YAML or JSON, schema ``hierarchy``) names groups of labels::

    groups:
      metastasis: [colorectal, pancreatic]
      hcc: [hcc]

Step 1 predicts the group of a lesion (here hcc vs metastasis) from all
training patients; step 2 predicts the label within each group of two labels
or more (here colorectal vs pancreatic), from that group's training patients
only. Both are the same leakage-safe pipeline as a flat model (correlation
filter, importance selection, sampler, scaler, classifier; see
:mod:`metcli.radiomics.models`), each with its own selection and tuning. The
chained probability of a label is::

    P(label) = P(group) x P(label | group)        (P(label | group) = 1 for a group of one label)

so the chained probabilities of a lesion sum to 1 and the sum over a group's
labels is step 1's probability of the group. The chain predicts the most
probable label, or with ``decision="best-f1"`` follows per-class cut-offs
chosen on its chained out-of-fold probabilities (:mod:`metcli.io.cutoffs`);
a step of three labels or more gets cut-offs of its own.

Leakage: both steps see the same patient-level split (test set) and the same
outer cross-validation folds, made once from the labels of the training
patients. In each outer fold, step 1 and every step 2 are fitted on the
training patients of that fold only (step 2 on those of its group), and the
fold's held-out patients get their chained out-of-fold probability from these
models: step 2 of each group predicts every held-out lesion, whatever its true
group, as it would for a new patient.

Group and label names sort the outputs: step 1's classes are the group names
in sorted order, a step 2's classes its labels in sorted order, the chain's
classes all labels in sorted order (as for a flat model of the same labels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Mapping, Sequence

import numpy as np

from metcli.core.errors import UsageError
from metcli.io.hierarchy import (  # noqa: F401 (the room's API)
    SCHEMA,
    STEP1,
    Hierarchy,
    check_labels,
    read_hierarchy,
    step2_name,
)
from metcli.radiomics.fold_limits import check_searches
from metcli.radiomics.models import (
    CVOutcome,
    each_outer_fold,
    fit_search,
    model_name,
    outer_splits,
    record_selection,
    selection_of,
)
from metcli.radiomics.settings import Settings

log = logging.getLogger(__name__)

#: How the chained probabilities are made (written into the model card).
RULE = (
    "P(label) = P(group of the label) from step1 x P(label | group) from step2-<group>; "
    "P(label | group) = 1 for a group of one label; the most probable label is predicted"
)


# ----------------------------------------------------------------------------- step cohorts
@dataclass
class StepData:
    """The lesions one step learns from: a :class:`~metcli.radiomics.cohort.Cohort` and its rows."""

    name: str
    cohort: object  # metcli.radiomics.cohort.Cohort with the step's classes
    rows: np.ndarray  # rows of the chained (full) cohort
    group: str | None = None  # step 2: the group it splits


def step_data(hierarchy: Hierarchy, cohort) -> dict[str, StepData]:
    """Step 1 (every lesion, labelled by its group) and each step 2 (its group's lesions)."""
    groups = hierarchy.group_names
    label = np.array([cohort.classes[k] for k in cohort.y], dtype=object)
    group = np.array([hierarchy.group_of(v) for v in label], dtype=object)
    out = {
        STEP1: StepData(
            STEP1,
            _subset(
                cohort,
                np.arange(len(label)),
                np.array([groups.index(g) for g in group], dtype=np.int64),
                groups,
            ),
            np.arange(len(label)),
        )
    }
    for g in hierarchy.split_groups:
        members = list(hierarchy.groups[g])
        rows = np.flatnonzero(group == g)
        y = np.array([members.index(v) for v in label[rows]], dtype=np.int64)
        out[step2_name(g)] = StepData(step2_name(g), _subset(cohort, rows, y, members), rows, g)
    return out


def _subset(cohort, rows: np.ndarray, y: np.ndarray, classes: list[str]):
    positive = classes[-1] if len(classes) == 2 else None  # as for a flat binary model
    return replace(
        cohort,
        frame=cohort.frame.iloc[rows].reset_index(drop=True),
        y=y,
        classes=list(classes),
        positive=positive,
        participants=cohort.participants[rows],
        lesion_ids=cohort.lesion_ids[rows],
        sites=None if cohort.sites is None else cohort.sites[rows],
    )


# ----------------------------------------------------------------------------- the chain
def chain_columns(hierarchy: Hierarchy, classes: Sequence[str]) -> list[list[tuple[str, int]]]:
    """For each chained class: the (step, column) probabilities whose product it is."""
    groups = hierarchy.group_names
    out = []
    for label in classes:
        group = hierarchy.group_of(label)
        factors = [(STEP1, groups.index(group))]
        members = list(hierarchy.groups[group])
        if len(members) > 1:
            factors.append((step2_name(group), members.index(label)))
        out.append(factors)
    return out


def chain_probabilities(
    step_proba: Mapping[str, np.ndarray], hierarchy: Hierarchy, classes: Sequence[str]
) -> np.ndarray:
    """Chained class probabilities from each step's probabilities (same lesions, in rows)."""
    columns = chain_columns(hierarchy, classes)
    n = len(step_proba[STEP1])
    out = np.ones((n, len(classes)))
    for j, factors in enumerate(columns):
        for step, k in factors:
            out[:, j] *= np.asarray(step_proba[step], dtype=float)[:, k]
    return out


@dataclass
class ChainedModel:
    """Fitted step pipelines chained as the hierarchical model's ONNX graph is."""

    hierarchy: Hierarchy
    classes: list[str]
    steps: dict[str, object] = field(default_factory=dict)  # step -> fitted pipeline

    @property
    def input_names(self) -> list[str]:
        from metcli.radiomics.onnx import input_names

        names: list[str] = []
        for pipeline in self.steps.values():
            names.extend(n for n in input_names(pipeline) if n not in names)
        return names

    def predict_proba(self, X) -> np.ndarray:
        with np.errstate(all="ignore"):
            proba = {step: pipeline.predict_proba(X) for step, pipeline in self.steps.items()}
        return chain_probabilities(proba, self.hierarchy, self.classes)


# ----------------------------------------------------------------------------- CV engine
@dataclass
class HierarchyOutcome:
    """Out-of-fold probabilities of the chain and of each step (rows of its own cohort)."""

    chain: CVOutcome
    steps: dict[str, CVOutcome]


def cross_validate_hierarchy(
    X,
    y,
    *,
    patients,
    cv_groups,
    hierarchy: Hierarchy,
    classes: Sequence[str],
    models: Sequence[tuple[str, str]],
    settings: Settings,
    keep: Sequence[str] = (),
    fixed_folds: np.ndarray | None = None,
    jobs: int = 1,
    progress: Callable[[str, str], None] | None = None,
    cache_dir: str | None = None,
) -> HierarchyOutcome:
    """Nested grouped cross-validation of every hierarchical model.

    ``X``, ``y`` (index into ``classes``), ``patients`` and ``cv_groups`` are the
    training lesions. The outer folds are made once (stratified by label,
    grouped by ``cv_groups``) and shared by every step: in each fold, step 1 is
    fitted on the fold's training lesions, each step 2 on those of its group,
    and the held-out lesions are predicted by all of them and chained.
    """
    y = np.asarray(y)
    patients, cv_groups = np.asarray(patients), np.asarray(cv_groups)
    groups = hierarchy.group_names
    label_group = [groups.index(hierarchy.group_of(c)) for c in classes]
    group_y = np.array([label_group[k] for k in y], dtype=np.int64)
    splits = list(outer_splits(y, cv_groups, settings=settings, fixed_folds=fixed_folds))
    repeats = 1 + max(s[0] for s in splits)
    names = [model_name(c, s) for c, s in models]
    n = len(y)
    folds = np.full((repeats, n), -1, dtype=int)

    def empty(rows: int, width: int) -> dict[str, np.ndarray]:
        return {name: np.full((repeats, rows, width), np.nan) for name in names}

    chain = CVOutcome(list(models), empty(n, len(classes)), folds)
    steps = {STEP1: CVOutcome(list(models), empty(n, len(groups)), folds)}
    within, position = _within_groups(hierarchy, classes, y, group_y)
    labels = {STEP1: group_y} | {step2_name(g): within[g] for g in hierarchy.split_groups}
    check_searches(models, settings, splits, labels, cv_groups)  # before the first fit
    for g in hierarchy.split_groups:
        inside = within[g] >= 0
        steps[step2_name(g)] = CVOutcome(
            list(models), empty(int(inside.sum()), len(hierarchy.groups[g])), folds[:, inside]
        )
    task = partial(
        _outer_fold,
        X=X,
        group_y=group_y,
        within=within,
        patients=patients,
        cv_groups=cv_groups,
        hierarchy=hierarchy,
        models=list(models),
        settings=settings,
        keep=tuple(keep),
        cache_dir=cache_dir,
    )
    for (repeat, fold, train, test), (probas, selections) in each_outer_fold(task, splits, jobs):
        folds[repeat, test] = fold
        for name, proba in zip(names, probas):
            steps[STEP1].oof[name][repeat][test] = proba[STEP1]
            for g in hierarchy.split_groups:
                mine = within[g][test] >= 0
                steps[step2_name(g)].oof[name][repeat][position[g][test[mine]]] = proba[
                    step2_name(g)
                ][mine]
            chain.oof[name][repeat][test] = chain_probabilities(proba, hierarchy, classes)
            if progress:
                progress(f"repeat {repeat + 1} fold {fold + 1}", name)
        for step, selection in selections.items():
            record_selection(steps[step], selection)
    for g in hierarchy.split_groups:
        steps[step2_name(g)].folds = folds[:, within[g] >= 0]
    return HierarchyOutcome(chain, steps)


def _within_groups(
    hierarchy: Hierarchy, classes: Sequence[str], y: np.ndarray, group_y: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """For each group a step 2 splits, per lesion: its label's index within the group and
    its row of the step's own outcome (both -1 for lesions outside the group)."""
    groups = hierarchy.group_names
    within: dict[str, np.ndarray] = {}
    position: dict[str, np.ndarray] = {}
    for g in hierarchy.split_groups:
        members = list(hierarchy.groups[g])
        inside = group_y == groups.index(g)
        within[g] = np.array(
            [members.index(classes[k]) if ok else -1 for k, ok in zip(y, inside)], dtype=np.int64
        )
        position[g] = np.where(inside, np.cumsum(inside) - 1, -1)
    return within, position


def _outer_fold(
    split, *, X, group_y, within, patients, cv_groups, hierarchy, models, settings, keep, cache_dir
):
    """Every model's steps fitted on one outer training fold and applied to its held-out
    lesions: ([{step: probabilities} per model], {step: selection of the first model})."""
    _, _, train, test = split
    probas, selections = [], {}
    for index, (classifier, sampler) in enumerate(models):
        proba = {}
        search = _fit_step(
            STEP1,
            classifier,
            sampler,
            X,
            group_y,
            train,
            patients,
            cv_groups,
            settings,
            keep,
            len(hierarchy.groups),
            cache_dir,
        )
        proba[STEP1] = search.predict_proba(X.iloc[test])
        if index == 0:
            selections[STEP1] = selection_of(search, keep)
        for g in hierarchy.split_groups:
            step = step2_name(g)
            rows = train[within[g][train] >= 0]
            search = _fit_step(
                step,
                classifier,
                sampler,
                X,
                within[g],
                rows,
                patients,
                cv_groups,
                settings,
                keep,
                len(hierarchy.groups[g]),
                cache_dir,
            )
            proba[step] = search.predict_proba(X.iloc[test])
            if index == 0:
                selections[step] = selection_of(search, keep)
        probas.append(proba)
    return probas, selections


def _fit_step(
    step, classifier, sampler, X, y, rows, patients, cv_groups, settings, keep, n_classes, cache_dir
):
    # check_searches made sure that every class is in ``rows`` (and every inner fold)
    return fit_search(
        classifier,
        sampler,
        X.iloc[rows],
        y[rows],
        patients=patients[rows],
        cv_groups=cv_groups[rows],
        settings=settings,
        keep=keep,
        n_classes=n_classes,
        jobs=1,
        cache_dir=cache_dir,
    )


def check_step_sizes(
    steps: Mapping[str, StepData], train: Sequence[str], settings: Settings, folds: int
) -> None:
    """Each step 2 needs enough training patients for the inner folds of its search."""
    import math

    train = set(train)
    what = "sites" if settings.group_by == "site" else "patients"
    for data in steps.values():
        if data.group is None:
            continue
        cohort = data.cohort
        chosen = np.isin(cohort.participants, list(train))
        groups = cohort.sites if settings.group_by == "site" else cohort.participants
        n = int(np.unique(groups[chosen]).size)
        available = n - math.ceil(n / max(folds, 1))
        if available < settings.inner_folds:
            raise UsageError(
                f"{data.name}: group {data.group} has {n} training {what}, about "
                f"{available} per outer training fold, fewer than --inner-folds "
                f"{settings.inner_folds}",
                fix="lower --inner-folds or --cv-folds, or add patients of that group",
            )
