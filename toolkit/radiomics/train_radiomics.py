"""``metcli train-radiomics``: the whole run, from features and labels to model folders.

See :mod:`metcli.radiomics.models` for the leakage-safe pipeline and the nested
grouped cross-validation, :mod:`metcli.radiomics.classifiers` for the classifiers,
:mod:`metcli.radiomics.data` for the tables and :mod:`metcli.radiomics.onnx` for
the ONNX graphs. This module runs them; :mod:`metcli.radiomics.results` chooses
the model and thresholds on out-of-fold predictions and
:mod:`metcli.radiomics.outputs` writes the outputs:

``<classifier>_<sampler>/``
    ``model.onnx``, ``model.json`` (the model card, with provenance),
    ``oof_predictions.tsv`` and, with a test set, ``predictions.tsv`` (each with
    a sidecar naming classes, positive class, threshold, threshold source and
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
    from metcli.radiomics.data import load_cohort, plan_split

    tree = None
    if hierarchy is not None:
        from metcli.radiomics.hierarchy import check_labels, read_hierarchy

        tree = read_hierarchy(hierarchy)
        options["hierarchy"] = tree.record()
    settings = check_settings(**options)
    announce_total(
        progress,
        len(settings.classifiers)
        * len(settings.samplers)
        * (settings.cv_folds * settings.cv_repeats + 1),
    )
    features, out_dir, labels = Path(features), Path(out_dir), Path(labels)
    check_output_not_inside_input(out_dir, [features] if features.is_dir() else [])
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
        check_labels(tree, cohort.classes, labels_path=labels)
    plan = plan_split(
        cohort,
        protocol=settings.protocol,
        test_patients=settings.test_patients,
        split=Path(split) if split else None,
        seed=settings.seed,
    )
    train_rows, test_rows, cv_groups, fixed = _rows_and_groups(cohort, plan, settings)
    step, inputs = _provenance(features, labels, split, hierarchy, out_dir, settings)
    models = [(c, s) for c in settings.classifiers for s in settings.samplers]
    names = [model_name(c, s) for c, s in models]
    sidecars = _expected_sidecars(
        out_dir, names, bool(plan.test), steps=tree.steps if tree is not None else ()
    )
    if not overwrite and all(step.is_done(p, inputs) for p in sidecars):
        log.info("train-radiomics: outputs are current (same inputs and settings); skipped")
        chosen = json.loads((out_dir / "results.json").read_text()).get("selected_model")
        return TrainingResult(out_dir, chosen, excluded=cohort.excluded, skipped=True)

    result = TrainingResult(out_dir, None, excluded=cohort.excluded, hierarchy=tree)
    # --jobs is the parallelism: no BLAS/OpenMP threads on top (tiny matrices gain nothing
    # from them, and on a busy machine their spin-waits cost more than the work)
    with (
        tempfile.TemporaryDirectory(prefix="metcli-selection-") as cache,
        threadpool_limits(limits=1),
    ):
        if tree is None:
            outcome, selection = _train_flat(
                result,
                cohort,
                models,
                train_rows,
                test_rows,
                cv_groups,
                fixed,
                settings,
                jobs,
                progress,
                cache,
            )
        else:
            outcome, selection = _train_hierarchy(
                result,
                tree,
                cohort,
                plan,
                models,
                train_rows,
                test_rows,
                cv_groups,
                fixed,
                settings,
                jobs,
                progress,
                cache,
            )
    result.results = results_rows(result.models)
    result.selected = choose(result.results, names)
    for row in result.results:
        row["selected_by_cv"] = row["model"] == result.selected and row.get("step", CHAIN) == CHAIN
    result.outputs = write_outputs(
        result,
        folds=outcome.folds[0],
        selection=selection,
        cohort=cohort,
        plan=plan,
        train_rows=train_rows,
        test_rows=test_rows,
        step=step,
        inputs=inputs,
        settings=settings,
        features=features,
    )
    log.info("model chosen by cross-validation: %s", result.selected)
    return result


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


def _train_flat(
    result: TrainingResult,
    cohort,
    models,
    train_rows,
    test_rows,
    cv_groups,
    fixed,
    settings: Settings,
    jobs,
    progress,
    cache,
):
    """Cross-validate, refit and finish the flat models; returns (outcome, selection)."""
    outcome = cross_validate(
        cohort.frame.iloc[train_rows],
        cohort.y[train_rows],
        patients=cohort.participants[train_rows],
        cv_groups=cv_groups[train_rows],
        models=models,
        settings=settings,
        keep=cohort.keep,
        n_classes=len(cohort.classes),
        fixed_folds=fixed,
        jobs=jobs,
        progress=progress,
        cache_dir=cache,
    )
    finals = _fit_finals(models, cohort, train_rows, settings, jobs, cache, progress)
    for classifier, sampler in models:
        pipeline, params = finals[model_name(classifier, sampler)]
        result.models[model_name(classifier, sampler)] = finish_model(
            classifier, sampler, pipeline, params, outcome, cohort, train_rows, test_rows, settings
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


def _train_hierarchy(
    result: TrainingResult,
    tree,
    cohort,
    plan,
    models,
    train_rows,
    test_rows,
    cv_groups,
    fixed,
    settings: Settings,
    jobs,
    progress,
    cache,
):
    """Cross-validate, refit and finish the chained models; returns (chain outcome, selection)."""
    from metcli.radiomics.hierarchy import (
        ChainedModel,
        check_step_sizes,
        cross_validate_hierarchy,
        step_data,
    )

    result.steps = steps = step_data(tree, cohort)
    folds = settings.cv_folds if fixed is None else int(np.unique(fixed).size)
    check_step_sizes(steps, plan.train, settings, folds)
    outcome = cross_validate_hierarchy(
        cohort.frame.iloc[train_rows],
        cohort.y[train_rows],
        patients=cohort.participants[train_rows],
        cv_groups=cv_groups[train_rows],
        hierarchy=tree,
        classes=cohort.classes,
        models=models,
        settings=settings,
        keep=cohort.keep,
        fixed_folds=fixed,
        jobs=jobs,
        progress=progress,
        cache_dir=cache,
    )
    rows, finals = {}, {}
    for name, data in steps.items():
        rows[name] = (
            np.flatnonzero(np.isin(data.cohort.participants, plan.train)),
            np.flatnonzero(np.isin(data.cohort.participants, plan.test)),
        )
        finals[name] = _fit_finals(models, data.cohort, rows[name][0], settings, jobs, cache, None)
    for classifier, sampler in models:
        name = model_name(classifier, sampler)
        parts = {}
        for step_name, data in steps.items():
            pipeline, params = finals[step_name][name]
            parts[step_name] = finish_model(
                classifier,
                sampler,
                pipeline,
                params,
                outcome.steps[step_name],
                data.cohort,
                *rows[step_name],
                settings,
                step=step_name,
            )
        chained = ChainedModel(
            tree, list(cohort.classes), {k: v.pipeline for k, v in parts.items()}
        )
        result.models[name] = finish_chain(
            classifier,
            sampler,
            chained,
            parts,
            outcome.chain,
            cohort,
            train_rows,
            test_rows,
            settings,
        )
        if progress:
            progress("final model", name)
    selection = {k: (outcome.steps[k], steps[k].cohort) for k in steps}
    return outcome.chain, selection


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
