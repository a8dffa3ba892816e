"""``metcli train-radiomics``: the whole run, from features and labels to model folders.

See :mod:`metcli.radiomics.models` for the leakage-safe pipeline and the nested
grouped cross-validation, :mod:`metcli.radiomics.classifiers` for the classifiers,
:mod:`metcli.radiomics.data` and :mod:`metcli.radiomics.cohort` for the tables,
the cohort and the split, and :mod:`metcli.radiomics.onnx` for the ONNX graphs.
This module runs them; :mod:`metcli.radiomics.results` chooses the model and
thresholds on out-of-fold predictions and :mod:`metcli.radiomics.outputs`
writes the outputs:

``<classifier>_<sampler>/``
    ``model.onnx``, ``model.json`` (the model card, with provenance),
    ``oof_predictions.tsv`` and, with a test set, ``predictions.tsv`` (each with
    a sidecar naming classes, positive class, threshold, threshold source,
    with three classes or more the ``decision`` (per-class best-F1 cut-offs
    chosen on the out-of-fold predictions, :mod:`metcli.io.cutoffs`), and
    whether this is the model cross-validation chose).
group level
    ``results.tsv`` (one row per model and level), ``selected_features.tsv``,
    ``split.tsv``, ``oof_predictions.tsv`` (set ``train``) and, with a test set,
    ``predictions.tsv`` (set ``test``), all models together; each with a sidecar.

With a hierarchy (:mod:`metcli.radiomics.hierarchy`), each model folder holds the
chained model (``model.onnx`` runs every step and multiplies the
probabilities; ``model.json`` of kind ``radiomics-hierarchy``) and one
sub-folder per step (``step1/``, ``step2-<group>/``), each a model folder of its
own (kind ``radiomics``). ``results.tsv`` and ``selected_features.tsv`` get a
``step`` column (``chain``, ``step1``, ``step2-<group>``); the predictions are
the chain's.

The model chosen by cross-validation is the one with the highest patient-level
``cv_auc`` (ties: lesion-level ``cv_auc``, then the order of ``--classifiers``
and ``--sampler``); the test set plays no part in it.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metcli.core.batch import announce_total
from metcli.core.errors import UsageError
from metcli.radiomics.models import cross_validate, fit_search, model_name
from metcli.radiomics.outputs import write_outputs
from metcli.radiomics.results import (
    CHAIN,
    TrainingResult,
    choose,
    finish_chain,
    finish_model,
    results_rows,
)
from metcli.radiomics.settings import COMMAND, Settings, check_settings

log = logging.getLogger(__name__)


def train_radiomics(
    features,
    out_dir,
    *,
    labels,
    split=None,
    hierarchy=None,
    overwrite: bool = False,
    jobs: int = 1,
    progress: Callable[[str, str], None] | None = None,
    **options,
) -> TrainingResult:
    """Train, cross-validate, choose and export radiomics classifiers.

    Args:
        features: extract's output folder (its ``features.tsv``) or a features table.
        out_dir: the folder to write.
        labels: participants.tsv (or a folder holding it) with the label column.
        split: a split file (participant_id, set, fold) for ``protocol="holdout"``.
        hierarchy: a hierarchy file (YAML or JSON, see
            :mod:`metcli.radiomics.hierarchy`): train hierarchical models.
        overwrite: redo a run whose outputs are already current.
        jobs: processes that share the outer cross-validation folds (and the final
            models' hyper-parameter searches); the results do not change.
        progress: called with (item, status) after each fit.
        **options: the fields of :class:`~metcli.radiomics.settings.Settings`.
    """
    from threadpoolctl import threadpool_limits

    from metcli.io.files import check_output_not_inside_input

    settings, tree = _settings(options, hierarchy, progress)
    features, out_dir, labels = Path(features), Path(out_dir), Path(labels)
    check_output_not_inside_input(out_dir, [features] if features.is_dir() else [])
    run = _prepare(features, labels, split, tree, settings, jobs=jobs, progress=progress)
    step, inputs = _provenance(features, labels, split, hierarchy, out_dir, settings)
    names = [model_name(c, s) for c, s in run.models]
    sidecars = _expected_sidecars(
        out_dir, names, bool(run.plan.test), steps=tree.steps if tree is not None else ()
    )
    if not overwrite and all(step.is_done(p, inputs) for p in sidecars):
        log.info("train-radiomics: outputs are current (same inputs and settings); skipped")
        chosen = json.loads((out_dir / "results.json").read_text()).get("selected_model")
        return TrainingResult(out_dir, chosen, excluded=run.cohort.excluded, skipped=True)

    result = TrainingResult(out_dir, None, excluded=run.cohort.excluded, hierarchy=tree)
    # --jobs is the parallelism: no BLAS/OpenMP threads on top (tiny matrices gain nothing
    # from them, and on a busy machine their spin-waits cost more than the work)
    with (
        tempfile.TemporaryDirectory(prefix="metcli-selection-") as cache,
        threadpool_limits(limits=1),
    ):
        if tree is None:
            outcome, selection = _train_flat(run, result, cache)
        else:
            outcome, selection = _train_hierarchy(run, result, cache, tree)
    _choose(result, names)
    result.outputs = write_outputs(
        result,
        folds=outcome.folds[0],
        selection=selection,
        cohort=run.cohort,
        plan=run.plan,
        train_rows=run.train_rows,
        test_rows=run.test_rows,
        step=step,
        inputs=inputs,
        settings=settings,
        features=features,
    )
    log.info("model chosen by cross-validation: %s", result.selected)
    return result


def _settings(options: dict, hierarchy, progress) -> tuple[Settings, Any]:
    """The checked settings and the hierarchy (None without); announces the number of fits."""
    tree = None
    if hierarchy is not None:
        from metcli.radiomics.hierarchy import read_hierarchy

        tree = read_hierarchy(hierarchy)
        options["hierarchy"] = tree.record()
    settings = check_settings(**options)
    announce_total(
        progress,
        len(settings.classifiers)
        * len(settings.samplers)
        * (settings.cv_folds * settings.cv_repeats + 1),
    )
    return settings, tree


@dataclass(frozen=True)
class _Run:
    """One run's cohort, split and cross-validation groups, and what every fit shares."""

    cohort: Any  # metcli.radiomics.cohort.Cohort
    plan: Any  # metcli.radiomics.cohort.SplitPlan
    models: list[tuple[str, str]]  # (classifier, sampler), in output order
    train_rows: np.ndarray
    test_rows: np.ndarray
    cv_groups: np.ndarray
    fixed: np.ndarray | None  # the outer folds of a split file
    settings: Settings
    jobs: int
    progress: Callable[[str, str], None] | None


def _prepare(
    features: Path, labels: Path, split, tree, settings: Settings, *, jobs: int, progress
) -> _Run:
    """The cohort (the hierarchy's labels checked), its split, rows, groups and models."""
    from metcli.radiomics.cohort import load_cohort, plan_split

    cohort = load_cohort(
        features,
        labels,
        label_column=settings.label_column,
        positive_class=settings.positive_class,
        covariates=settings.covariates,
        need_site=settings.group_by == "site",
        phase=settings.phase,
        session=settings.session,
    )
    if tree is not None:
        from metcli.radiomics.hierarchy import check_labels

        check_labels(tree, cohort.classes, labels_path=labels)
    plan = plan_split(
        cohort,
        protocol=settings.protocol,
        test_patients=settings.test_patients,
        split=Path(split) if split else None,
        seed=settings.seed,
    )
    train_rows, test_rows, cv_groups, fixed = _rows_and_groups(cohort, plan, settings)
    models = [(c, s) for c in settings.classifiers for s in settings.samplers]
    return _Run(
        cohort, plan, models, train_rows, test_rows, cv_groups, fixed, settings, jobs, progress
    )


def _choose(result: TrainingResult, names: list[str]) -> None:
    """The results rows, the model cross-validation chooses, and which rows are its."""
    result.results = results_rows(result.models)
    result.selected = choose(result.results, names)
    for row in result.results:
        row["selected_by_cv"] = row["model"] == result.selected and row.get("step", CHAIN) == CHAIN


def _rows_and_groups(cohort, plan, settings: Settings):
    """(training rows, test rows, CV groups, outer folds of a split file or None), checked."""
    train_rows = np.flatnonzero(np.isin(cohort.participants, plan.train))
    test_rows = np.flatnonzero(np.isin(cohort.participants, plan.test))
    cv_groups = cohort.sites if settings.group_by == "site" else cohort.participants
    fixed = (
        np.array([plan.folds[p] for p in cohort.participants[train_rows]]) if plan.folds else None
    )
    _check_group_counts(cv_groups[train_rows], settings, fixed)
    return train_rows, test_rows, cv_groups, fixed


def _provenance(features: Path, labels: Path, split, hierarchy, out_dir: Path, settings: Settings):
    """(the provenance step, its inputs): the features table, labels, split and hierarchy."""
    from metcli.io.provenance import Step
    from metcli.radiomics.data import features_table_path

    table = features_table_path(features)
    roots = {
        "features": features if features.is_dir() else table.parent,
        "labels": labels if labels.is_dir() else labels.parent,
    }
    sources = [table, labels if labels.is_file() else labels / "participants.tsv"]
    if split:
        roots["split"] = Path(split).parent
        sources.append(Path(split))
    if hierarchy is not None:
        roots["hierarchy"] = Path(hierarchy).parent
        sources.append(Path(hierarchy))
    step = Step(COMMAND, out_dir, roots, settings.record())
    return step, step.inputs(sources)


def _train_flat(run: _Run, result: TrainingResult, cache: str):
    """Cross-validate, refit and finish the flat models; returns (outcome, selection)."""
    cohort, rows, settings = run.cohort, run.train_rows, run.settings
    outcome = cross_validate(
        cohort.frame.iloc[rows],
        cohort.y[rows],
        patients=cohort.participants[rows],
        cv_groups=run.cv_groups[rows],
        models=run.models,
        settings=settings,
        keep=cohort.keep,
        n_classes=len(cohort.classes),
        fixed_folds=run.fixed,
        jobs=run.jobs,
        progress=run.progress,
        cache_dir=cache,
    )
    finals = _fit_finals(run.models, cohort, rows, settings, run.jobs, cache, run.progress)
    for classifier, sampler in run.models:
        pipeline, params = finals[model_name(classifier, sampler)]
        result.models[model_name(classifier, sampler)] = finish_model(
            classifier, sampler, pipeline, params, outcome, cohort, rows, run.test_rows, settings
        )
    return outcome, {None: (outcome, cohort)}


def _fit_finals(
    models, cohort, rows, settings: Settings, jobs, cache, progress
) -> dict[str, tuple[Any, dict]]:
    """The search of every model refitted on ``rows`` of ``cohort``: (pipeline, params)."""
    cv_groups = cohort.sites if settings.group_by == "site" else cohort.participants
    finals = {}
    for classifier, sampler in models:
        search = fit_search(
            classifier,
            sampler,
            cohort.frame.iloc[rows],
            cohort.y[rows],
            patients=cohort.participants[rows],
            cv_groups=cv_groups[rows],
            settings=settings,
            keep=cohort.keep,
            n_classes=len(cohort.classes),
            jobs=jobs,
            cache_dir=cache,
        )
        final = search.best_estimator_.set_params(filter__cache_dir=None, select__cache_dir=None)
        finals[model_name(classifier, sampler)] = (final, dict(search.best_params_))
        if progress:
            progress("final model", model_name(classifier, sampler))
    return finals


def _train_hierarchy(run: _Run, result: TrainingResult, cache: str, tree):
    """Cross-validate, refit and finish the chained models; returns (chain outcome, selection)."""
    from metcli.radiomics.hierarchy import check_step_sizes, cross_validate_hierarchy, step_data

    cohort, settings, fixed = run.cohort, run.settings, run.fixed
    result.steps = steps = step_data(tree, cohort)
    folds = settings.cv_folds if fixed is None else int(np.unique(fixed).size)
    check_step_sizes(steps, run.plan.train, settings, folds)
    outcome = cross_validate_hierarchy(
        cohort.frame.iloc[run.train_rows],
        cohort.y[run.train_rows],
        patients=cohort.participants[run.train_rows],
        cv_groups=run.cv_groups[run.train_rows],
        hierarchy=tree,
        classes=cohort.classes,
        models=run.models,
        settings=settings,
        keep=cohort.keep,
        fixed_folds=fixed,
        jobs=run.jobs,
        progress=run.progress,
        cache_dir=cache,
    )
    rows, finals = {}, {}
    for name, data in steps.items():
        rows[name] = (
            np.flatnonzero(np.isin(data.cohort.participants, run.plan.train)),
            np.flatnonzero(np.isin(data.cohort.participants, run.plan.test)),
        )
        finals[name] = _fit_finals(
            run.models, data.cohort, rows[name][0], settings, run.jobs, cache, None
        )
    for classifier, sampler in run.models:
        result.models[model_name(classifier, sampler)] = _finish_chain(
            run, result, tree, outcome, classifier, sampler, rows, finals
        )
        if run.progress:
            run.progress("final model", model_name(classifier, sampler))
    selection = {k: (outcome.steps[k], steps[k].cohort) for k in steps}
    return outcome.chain, selection


def _finish_chain(
    run: _Run, result: TrainingResult, tree, outcome, classifier, sampler, rows, finals
):
    """One chained model: each step's final pipeline finished, then the chain's."""
    from metcli.radiomics.hierarchy import ChainedModel

    name = model_name(classifier, sampler)
    parts = {}
    for step_name, data in result.steps.items():
        pipeline, params = finals[step_name][name]
        parts[step_name] = finish_model(
            classifier,
            sampler,
            pipeline,
            params,
            outcome.steps[step_name],
            data.cohort,
            *rows[step_name],
            run.settings,
            step=step_name,
        )
    chained = ChainedModel(
        tree, list(run.cohort.classes), {k: v.pipeline for k, v in parts.items()}
    )
    return finish_chain(
        classifier,
        sampler,
        chained,
        parts,
        outcome.chain,
        run.cohort,
        run.train_rows,
        run.test_rows,
        run.settings,
    )


def _check_group_counts(groups, settings: Settings, fixed) -> None:
    n = int(np.unique(groups).size)
    what = "sites" if settings.group_by == "site" else "patients"
    folds = settings.cv_folds if fixed is None else int(np.unique(fixed).size)
    if fixed is None and n < settings.cv_folds:
        raise UsageError(
            f"--cv-folds {settings.cv_folds} needs at least {settings.cv_folds} "
            f"{what} in the training set, which has {n}",
            fix="lower --cv-folds or add participants",
        )
    inner_available = n - math.ceil(n / max(folds, 1))
    if inner_available < settings.inner_folds:
        raise UsageError(
            f"--inner-folds {settings.inner_folds} needs at least "
            f"{settings.inner_folds} {what} in each outer training fold, which "
            f"has about {inner_available}",
            fix="lower --inner-folds or --cv-folds, or add participants",
        )


def _expected_sidecars(out_dir: Path, names, with_test: bool, steps=()) -> list[Path]:
    paths = [out_dir / n / "model.json" for n in names]
    paths += [out_dir / n / s / "model.json" for n in names for s in steps]
    paths += [out_dir / n / "oof_predictions.json" for n in names]
    group = ["results", "selected_features", "split", "oof_predictions"]
    if with_test:
        paths += [out_dir / n / "predictions.json" for n in names]
        group.append("predictions")
    return paths + [out_dir / f"{g}.json" for g in group]
