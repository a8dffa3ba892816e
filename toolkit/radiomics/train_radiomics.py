"""``metcli train-radiomics``: the whole run, from features and labels to model folders.

See :mod:`metcli.radiomics.models` for the leakage-safe pipeline and the nested
grouped cross-validation, :mod:`metcli.radiomics.data` for the tables and
:mod:`metcli.radiomics.onnx` for the ONNX graphs. This module chooses the model
and thresholds on out-of-fold predictions and writes the outputs:

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

import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metcli.core.errors import UsageError
from metcli.core.versions import versions as model_versions
from metcli.radiomics.models import (COMMAND, CVOutcome, Settings, check_settings, choose_threshold,
                                    cross_validate, cv_auc, fit_search, fold_auc_sd,
                                    level_metrics, model_name)

log = logging.getLogger(__name__)

RESULTS_COLUMNS = ("classifier", "sampler", "model", "level", "cv_auc", "cv_auc_sd",
                   "cv_accuracy", "cv_balanced_accuracy", "test_auc", "test_accuracy",
                   "test_balanced_accuracy", "threshold", "threshold_source", "n_features",
                   "hyperparameters", "selected_by_cv")
SELECTED_COLUMNS = ("feature", "kind", "selected", "rank", "importance", "importance_sd",
                    "filter_frequency", "selection_frequency", "final_importance")
SPLIT_COLUMNS = ("participant_id", "set", "fold")
CARD_VERSION = 1
CHAIN = "chain"


@dataclass
class ModelResult:
    classifier: str
    sampler: str
    pipeline: Any
    inputs: list[str]
    oof: np.ndarray
    threshold: float | None
    threshold_source: str
    cv: dict
    test: dict | None
    test_proba: np.ndarray | None
    onnx: bytes
    onnx_difference: float
    hyperparameters: dict
    step: str | None = None                     # a step of a hierarchical model
    steps: dict[str, "ModelResult"] = field(default_factory=dict)   # a chained model's steps

    @property
    def name(self) -> str:
        """The model folder's name (a step: ``<folder>.<step>``, the name in its card)."""
        base = model_name(self.classifier, self.sampler)
        return base if self.step is None else f"{base}.{self.step}"


@dataclass
class TrainingResult:
    """What a run made (also returned, with ``skipped``, when it was already done)."""

    out_dir: Path
    selected: str | None
    models: dict[str, ModelResult] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    skipped: bool = False
    hierarchy: Any = None                       # metcli.radiomics.hierarchy.Hierarchy
    steps: dict = field(default_factory=dict)   # step -> radiomics_hierarchy.StepData


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _threshold(cohort, oof, rows, settings: Settings):
    if cohort.positive is None:
        return None, "argmax (multi-class: the most probable class)"
    pos = cohort.classes.index(cohort.positive)
    y = cohort.y[rows]
    if settings.threshold_level == "patient":
        from metcli.io.predictions import aggregate_patients

        patients = cohort.participants[rows]
        order, proba = aggregate_patients(patients, oof, cohort.classes)
        truth = np.array([y[np.flatnonzero(patients == p)[0]] for p in order])
    else:
        proba, truth = oof, y
    value = choose_threshold(truth == pos, proba[:, pos], settings.threshold)
    return value, (f"{settings.threshold} on out-of-fold predictions "
                   f"({settings.threshold_level} level, patient = mean of lesions)")


def _metrics(cohort, rows, proba, threshold) -> dict:
    kwargs = {"classes": cohort.classes, "positive": cohort.positive, "threshold": threshold}
    return {"lesion": level_metrics(cohort.y[rows], proba, **kwargs),
            "patient": level_metrics(cohort.y[rows], proba, patients=cohort.participants[rows],
                                     **kwargs)}


def train_radiomics(features, out_dir, *, labels, split=None, hierarchy=None,
                    overwrite: bool = False, jobs: int = 1,
                    progress: Callable[[str, str], None] | None = None,
                    **options) -> TrainingResult:
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
        **options: the fields of :class:`~metcli.radiomics.models.Settings`.
    """
    from metcli.io.files import check_output_not_inside_input
    from threadpoolctl import threadpool_limits

    from metcli.io.provenance import Step
    from metcli.radiomics.data import features_table_path, load_cohort, plan_split

    tree = None
    if hierarchy is not None:
        from metcli.radiomics.hierarchy import check_labels, read_hierarchy

        tree = read_hierarchy(hierarchy)
        options["hierarchy"] = tree.record()
    settings = check_settings(**options)
    features, out_dir, labels = Path(features), Path(out_dir), Path(labels)
    check_output_not_inside_input(out_dir, [features] if features.is_dir() else [])
    cohort = load_cohort(features, labels, label_column=settings.label_column,
                         positive_class=settings.positive_class, covariates=settings.covariates,
                         need_site=settings.group_by == "site", phase=settings.phase,
                         session=settings.session)
    if tree is not None:
        check_labels(tree, cohort.classes, labels_path=labels)
    plan = plan_split(cohort, protocol=settings.protocol, test_patients=settings.test_patients,
                      split=Path(split) if split else None, seed=settings.seed)
    train_rows = np.flatnonzero(np.isin(cohort.participants, plan.train))
    test_rows = np.flatnonzero(np.isin(cohort.participants, plan.test))
    cv_groups = cohort.sites if settings.group_by == "site" else cohort.participants
    fixed = (np.array([plan.folds[p] for p in cohort.participants[train_rows]])
             if plan.folds else None)
    _check_group_counts(cv_groups[train_rows], settings, fixed)

    table = features_table_path(features)
    roots = {"features": features if features.is_dir() else table.parent,
             "labels": labels if labels.is_dir() else labels.parent}
    sources = [table, labels if labels.is_file() else labels / "participants.tsv"]
    if split:
        roots["split"] = Path(split).parent
        sources.append(Path(split))
    if hierarchy is not None:
        roots["hierarchy"] = Path(hierarchy).parent
        sources.append(Path(hierarchy))
    step = Step(COMMAND, out_dir, roots, settings.record())
    inputs = step.inputs(sources)
    models = [(c, s) for c in settings.classifiers for s in settings.samplers]
    names = [model_name(c, s) for c, s in models]
    sidecars = _expected_sidecars(out_dir, names, bool(plan.test),
                                  steps=tree.steps if tree is not None else ())
    if not overwrite and all(step.is_done(p, inputs) for p in sidecars):
        log.info("train-radiomics: outputs are current (same inputs and settings); skipped")
        chosen = json.loads((out_dir / "results.json").read_text()).get("selected_model")
        return TrainingResult(out_dir, chosen, excluded=cohort.excluded, skipped=True)

    result = TrainingResult(out_dir, None, excluded=cohort.excluded, hierarchy=tree)
    # --jobs is the parallelism: no BLAS/OpenMP threads on top (tiny matrices gain nothing
    # from them, and on a busy machine their spin-waits cost more than the work)
    with tempfile.TemporaryDirectory(prefix="metcli-selection-") as cache, \
            threadpool_limits(limits=1):
        if tree is None:
            outcome = cross_validate(
                cohort.frame.iloc[train_rows], cohort.y[train_rows],
                patients=cohort.participants[train_rows], cv_groups=cv_groups[train_rows],
                models=models, settings=settings, keep=cohort.keep,
                n_classes=len(cohort.classes), fixed_folds=fixed, jobs=jobs, progress=progress,
                cache_dir=cache)
            finals = _fit_finals(models, cohort, train_rows, settings, jobs, cache, progress)
            for classifier, sampler in models:
                pipeline, params = finals[model_name(classifier, sampler)]
                result.models[model_name(classifier, sampler)] = _finish_model(
                    classifier, sampler, pipeline, params, outcome, cohort, train_rows,
                    test_rows, settings)
            selection = {None: (outcome, cohort)}
        else:
            outcome, selection = _train_hierarchy(result, tree, cohort, plan, models, train_rows,
                                                  test_rows, cv_groups, fixed, settings, jobs,
                                                  progress, cache)
    result.results = _results_rows(result.models)
    result.selected = _choose(result.results, names)
    for row in result.results:
        row["selected_by_cv"] = (row["model"] == result.selected
                                 and row.get("step", CHAIN) == CHAIN)
    result.outputs = write_outputs(result, folds=outcome.folds[0], selection=selection,
                                   cohort=cohort, plan=plan, train_rows=train_rows,
                                   test_rows=test_rows, step=step, inputs=inputs,
                                   settings=settings, features=features)
    log.info("model chosen by cross-validation: %s", result.selected)
    return result


def _fit_finals(models, cohort, rows, settings: Settings, jobs, cache,
                progress) -> dict[str, tuple[Any, dict]]:
    """The search of every model refitted on ``rows`` of ``cohort``: (pipeline, params)."""
    cv_groups = cohort.sites if settings.group_by == "site" else cohort.participants
    finals = {}
    for classifier, sampler in models:
        search = fit_search(classifier, sampler, cohort.frame.iloc[rows], cohort.y[rows],
                            patients=cohort.participants[rows], cv_groups=cv_groups[rows],
                            settings=settings, keep=cohort.keep, n_classes=len(cohort.classes),
                            jobs=jobs, cache_dir=cache)
        final = search.best_estimator_.set_params(filter__cache_dir=None,
                                                  select__cache_dir=None)
        finals[model_name(classifier, sampler)] = (final, dict(search.best_params_))
        if progress:
            progress("final model", model_name(classifier, sampler))
    return finals


def _train_hierarchy(result: TrainingResult, tree, cohort, plan, models, train_rows, test_rows,
                     cv_groups, fixed, settings: Settings, jobs, progress, cache):
    """Cross-validate, refit and finish the chained models; returns (chain outcome, selection)."""
    from metcli.radiomics.hierarchy import (ChainedModel, check_step_sizes,
                                            cross_validate_hierarchy, step_data)

    result.steps = steps = step_data(tree, cohort)
    folds = settings.cv_folds if fixed is None else int(np.unique(fixed).size)
    check_step_sizes(steps, plan.train, settings, folds)
    outcome = cross_validate_hierarchy(
        cohort.frame.iloc[train_rows], cohort.y[train_rows],
        patients=cohort.participants[train_rows], cv_groups=cv_groups[train_rows],
        hierarchy=tree, classes=cohort.classes, models=models, settings=settings,
        keep=cohort.keep, fixed_folds=fixed, jobs=jobs, progress=progress, cache_dir=cache)
    rows, finals = {}, {}
    for name, data in steps.items():
        rows[name] = (np.flatnonzero(np.isin(data.cohort.participants, plan.train)),
                      np.flatnonzero(np.isin(data.cohort.participants, plan.test)))
        finals[name] = _fit_finals(models, data.cohort, rows[name][0], settings, jobs, cache,
                                   None)
    for classifier, sampler in models:
        name = model_name(classifier, sampler)
        parts = {}
        for step_name, data in steps.items():
            pipeline, params = finals[step_name][name]
            parts[step_name] = _finish_model(classifier, sampler, pipeline, params,
                                             outcome.steps[step_name], data.cohort,
                                             *rows[step_name], settings, step=step_name)
        chained = ChainedModel(tree, list(cohort.classes),
                               {k: v.pipeline for k, v in parts.items()})
        result.models[name] = _finish_chain(classifier, sampler, chained, parts, outcome.chain,
                                            cohort, train_rows, test_rows, settings)
        if progress:
            progress("final model", name)
    selection = {k: (outcome.steps[k], steps[k].cohort) for k in steps}
    return outcome.chain, selection


def _check_group_counts(groups, settings: Settings, fixed) -> None:
    n = int(np.unique(groups).size)
    what = "sites" if settings.group_by == "site" else "patients"
    folds = settings.cv_folds if fixed is None else int(np.unique(fixed).size)
    if fixed is None and n < settings.cv_folds:
        raise UsageError(f"--cv-folds {settings.cv_folds} needs at least {settings.cv_folds} "
                         f"{what} in the training set, which has {n}",
                         fix="lower --cv-folds or add participants")
    inner_available = n - math.ceil(n / max(folds, 1))
    if inner_available < settings.inner_folds:
        raise UsageError(f"--inner-folds {settings.inner_folds} needs at least "
                         f"{settings.inner_folds} {what} in each outer training fold, which "
                         f"has about {inner_available}",
                         fix="lower --inner-folds or --cv-folds, or add participants")


def _expected_sidecars(out_dir: Path, names, with_test: bool, steps=()) -> list[Path]:
    paths = [out_dir / n / "model.json" for n in names]
    paths += [out_dir / n / s / "model.json" for n in names for s in steps]
    paths += [out_dir / n / "oof_predictions.json" for n in names]
    group = ["results", "selected_features", "split", "oof_predictions"]
    if with_test:
        paths += [out_dir / n / "predictions.json" for n in names]
        group.append("predictions")
    return paths + [out_dir / f"{g}.json" for g in group]


def _cv_metrics(outcome: CVOutcome, name: str, cohort, train_rows, oof, threshold) -> dict:
    cv = _metrics(cohort, train_rows, oof, threshold)
    for level, patients in (("lesion", None), ("patient", cohort.participants[train_rows])):
        cv[level]["auc"] = cv_auc(outcome, name, cohort.y[train_rows], classes=cohort.classes,
                                  positive=cohort.positive, patients=patients)
        cv[level]["auc_sd"] = fold_auc_sd(outcome, name, cohort.y[train_rows],
                                          classes=cohort.classes, positive=cohort.positive,
                                          patients=patients)
    return cv


def _finish_model(classifier, sampler, pipeline, params, outcome: CVOutcome, cohort, train_rows,
                  test_rows, settings: Settings, step: str | None = None) -> ModelResult:
    from metcli.radiomics import onnx as onnx_export
    name = model_name(classifier, sampler)
    oof = outcome.mean_oof(name)
    threshold, source = _threshold(cohort, oof, train_rows, settings)
    cv = _cv_metrics(outcome, name, cohort, train_rows, oof, threshold)
    test = test_proba = None
    if test_rows.size:
        with np.errstate(all="ignore"):
            test_proba = pipeline.predict_proba(cohort.frame.iloc[test_rows])
        test = _metrics(cohort, test_rows, test_proba, threshold)
    names = onnx_export.input_names(pipeline)
    label = name if step is None else f"{name}.{step}"
    model = onnx_export.to_onnx(pipeline, names, model_name=label)
    check_rows = np.concatenate([train_rows, test_rows])
    difference = onnx_export.max_difference(pipeline, model, cohort.frame.iloc[check_rows])
    if difference > 1e-5:
        log.warning("%s: the ONNX model differs from scikit-learn by up to %.2g", label,
                    difference)
    tuned = {k.split("__", 1)[1]: _jsonable(v) for k, v in sorted(params.items())}
    return ModelResult(classifier, sampler, pipeline, names, oof, threshold, source, cv, test,
                       test_proba, model, difference, tuned, step=step)


def _finish_chain(classifier, sampler, chained, parts: dict[str, ModelResult],
                  outcome: CVOutcome, cohort, train_rows, test_rows,
                  settings: Settings) -> ModelResult:
    """The chained model of a hierarchy: metrics of the chain, and its one ONNX graph."""
    from metcli.radiomics import onnx as onnx_export
    from metcli.radiomics.hierarchy import chain_columns

    name = model_name(classifier, sampler)
    oof = outcome.mean_oof(name)
    threshold, _ = _threshold(cohort, oof, train_rows, settings)
    source = "argmax of the chained probabilities (the most probable label)"
    cv = _cv_metrics(outcome, name, cohort, train_rows, oof, threshold)
    test = test_proba = None
    if test_rows.size:
        test_proba = chained.predict_proba(cohort.frame.iloc[test_rows])
        test = _metrics(cohort, test_rows, test_proba, threshold)
    names = chained.input_names
    model = onnx_export.chain([(k, v.onnx) for k, v in parts.items()],
                              chain_columns(chained.hierarchy, cohort.classes), model_name=name)
    check_rows = np.concatenate([train_rows, test_rows])
    difference = onnx_export.max_difference(chained, model, cohort.frame.iloc[check_rows],
                                            names=names)
    if difference > 1e-5:
        log.warning("%s: the ONNX model differs from scikit-learn by up to %.2g", name,
                    difference)
    tuned = {k: v.hyperparameters for k, v in parts.items()}
    return ModelResult(classifier, sampler, chained, names, oof, threshold, source, cv, test,
                       test_proba, model, difference, tuned, steps=parts)


def _results_rows(models: dict[str, ModelResult]) -> list[dict]:
    """One row per model and level; a chained model's rows (step chain) then its steps'."""
    rows = []
    for name, model in models.items():
        parts = [(CHAIN, model)] + list(model.steps.items()) if model.steps else [(None, model)]
        for step, part in parts:
            for level in ("patient", "lesion"):
                cv, test = part.cv[level], (part.test or {}).get(level, {})
                row = {
                    "classifier": model.classifier, "sampler": model.sampler, "model": name,
                    "level": level, "cv_auc": cv["auc"], "cv_auc_sd": cv["auc_sd"],
                    "cv_accuracy": cv["accuracy"],
                    "cv_balanced_accuracy": cv["balanced_accuracy"],
                    "test_auc": test.get("auc"), "test_accuracy": test.get("accuracy"),
                    "test_balanced_accuracy": test.get("balanced_accuracy"),
                    "threshold": part.threshold, "threshold_source": part.threshold_source,
                    "n_features": len(part.inputs),
                    "hyperparameters": json.dumps(part.hyperparameters, sort_keys=True,
                                                  separators=(",", ":")),
                    "selected_by_cv": False}
                if step is not None:
                    row["step"] = step
                rows.append(row)
    return rows


def _choose(rows: list[dict], names: list[str]) -> str:
    def score(name):
        by_level = {r["level"]: r["cv_auc"] for r in rows
                    if r["model"] == name and r.get("step", CHAIN) == CHAIN}
        as_num = [v if v is not None else -math.inf for v in (by_level.get("patient"),
                                                               by_level.get("lesion"))]
        return (as_num[0], as_num[1], -names.index(name))

    return max(names, key=score)


def onnx_sha256(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


# ----------------------------------------------------------------------------- outputs
def _card(model: ModelResult, result: TrainingResult, cohort, plan, settings: Settings,
          train_rows, test_rows) -> dict:
    from metcli.radiomics import onnx as onnx_export
    covariates = {c["name"]: c for c in cohort.covariates}
    inputs = []
    for index, name in enumerate(model.inputs):
        if name in covariates:
            item = covariates[name]
            inputs.append({"index": index, "name": name, "source": "participants",
                           "column": item["column"], "encoding": item["encoding"],
                           **({"level": item["level"], "reference": item["reference"]}
                              if item["encoding"] == "indicator" else {})})
        else:
            inputs.append({"index": index, "name": name, "source": "features", "column": name,
                           "encoding": "numeric"})
    trained = set(cohort.participants[train_rows].tolist())
    n_patients = {c: sum(1 for p, lab in cohort.patient_labels().items()
                         if lab == c and p in trained) for c in cohort.classes}
    return {
        "Description": f"metcli radiomics model {model.name}: {model.classifier} with "
                       f"{model.sampler} sampling; ONNX graph from the selected features "
                       "(inputs, in order) to class probabilities",
        "card_version": CARD_VERSION,
        "kind": "radiomics",
        "name": model.name,
        "task": "binary" if len(cohort.classes) == 2 else "multiclass",
        "classifier": model.classifier,
        "sampler": model.sampler,
        "label_column": settings.label_column,
        "classes": list(cohort.classes),
        "positive_class": cohort.positive,
        "inputs": inputs,
        "input_format": "one float32 tensor of shape [N, 1] per input, named as the input",
        "outputs": {"label": onnx_export.OUTPUT_LABEL,
                    "probabilities": onnx_export.OUTPUT_PROBABILITIES},
        "preprocessing": [
            "features as written by metcli extract (same extraction settings hash)",
            "lesions with a missing input value are not predicted",
            "inputs standardised with the training mean and SD inside the ONNX graph",
        ],
        "phase": cohort.table.phase,
        "extraction_settings_sha256": cohort.table.settings_sha256,
        "segmentation_model_sha256": None,
        "feature_selection": {
            "pcc_threshold": settings.pcc_threshold, "max_features": settings.max_features,
            "importance_trees": settings.importance_trees,
            "importance_repeats": settings.importance_repeats,
            "candidates": len(cohort.features),
            "selected": [n for n in model.inputs if n not in covariates]},
        "sample_weighting": ("none (the sampler balances the classes)"
                             if model.sampler != "none" else
                             ("class weights x 1/(lesions of the patient)"
                              if settings.patient_weights else "class weights")
                             + ("" if model.classifier != "knn" else
                                " (not supported by knn: unweighted)")),
        "hyperparameters": model.hyperparameters,
        "search": {"kind": "grid" if settings.search == "grid" or (
                       settings.grids or {}).get(model.classifier) is not None else "random",
                   "inner_folds": settings.inner_folds, "scoring": "roc_auc" if len(
                       cohort.classes) == 2 else "roc_auc_ovr",
                   "grouped_by": settings.group_by},
        "threshold": model.threshold,
        "threshold_source": model.threshold_source,
        "threshold_rule": settings.threshold if cohort.positive else None,
        "threshold_level": settings.threshold_level if cohort.positive else None,
        "patient_aggregate": "mean",
        "split": {"protocol": settings.protocol, "source": plan.source,
                  "group_by": settings.group_by, "cv_folds": settings.cv_folds,
                  "cv_repeats": settings.cv_repeats if plan.folds is None else 1,
                  "train_patients": len(trained),
                  "test_patients": len(set(cohort.participants[test_rows].tolist())),
                  "train_lesions": int(len(train_rows)), "test_lesions": int(len(test_rows)),
                  "train_patients_per_class": n_patients,
                  "excluded_participants": len(cohort.excluded)},
        "metrics": {"cv": _jsonable(model.cv), "test": _jsonable(model.test)},
        "selected_by_cv": model_name(model.classifier, model.sampler) == result.selected,
        "versions": model_versions(),
        "onnx": {"file": "model.onnx", "sha256": onnx_sha256(model.onnx),
                 "opset": dict(onnx_export.TARGET_OPSET),
                 "max_abs_difference": model.onnx_difference},
    }


def _chain_card(model: ModelResult, result: TrainingResult, cohort, plan, settings: Settings,
                train_rows, test_rows) -> dict:
    """The card of a hierarchical model: how its steps chain, and the chain's metrics."""
    from metcli.radiomics.hierarchy import RULE

    card = _card(model, result, cohort, plan, settings, train_rows, test_rows)
    tree = result.hierarchy
    card["Description"] = (f"metcli hierarchical radiomics model {model.name}: "
                           f"{model.classifier} with {model.sampler} sampling in every step; "
                           "model.onnx runs the steps and chains their probabilities "
                           "(inputs: every step's inputs, in order)")
    card["kind"] = "radiomics-hierarchy"
    covariates = set(cohort.keep)
    card["feature_selection"]["selected_by_step"] = {
        k: [n for n in v.inputs if n not in covariates] for k, v in model.steps.items()}
    steps = []
    for name, part in model.steps.items():
        data = result.steps[name]
        steps.append({"name": name, "folder": name, "group": data.group,
                      "predicts": ("the group of the label" if data.group is None else
                                   f"the label within group {data.group}"),
                      "trained_on": ("every training patient" if data.group is None else
                                     f"the training patients of group {data.group}"),
                      "classes": list(data.cohort.classes),
                      "inputs": list(part.inputs),
                      "onnx_sha256": onnx_sha256(part.onnx)})
    card["hierarchy"] = {"groups": tree.record()["groups"], "file": tree.source,
                         "rule": RULE, "steps": steps}
    return card


def _step_card(part: ModelResult, chained: ModelResult, result: TrainingResult, plan,
               settings: Settings) -> dict:
    """The card of one step: a radiomics model folder of its own."""
    data = result.steps[part.step]
    rows = (np.flatnonzero(np.isin(data.cohort.participants, plan.train)),
            np.flatnonzero(np.isin(data.cohort.participants, plan.test)))
    card = _card(part, result, data.cohort, plan, settings, *rows)
    what = ("the group (" + ", ".join(data.cohort.classes) + ")" if data.group is None
            else f"the label within group {data.group} (" + ", ".join(data.cohort.classes)
            + f"), trained on the patients of group {data.group} only")
    card["Description"] = (f"metcli radiomics model {part.name}: {part.step} of the "
                           f"hierarchical model {chained.name}; predicts {what}")
    card["hierarchy_step"] = {"model": chained.name, "step": part.step, "group": data.group,
                              "groups": result.hierarchy.record()["groups"]}
    return card


def _selected_rows(chosen: ModelResult, outcome: CVOutcome, cohort) -> list[dict]:
    select = chosen.pipeline.named_steps["select"]
    final_imp = {n: float(v) for n, v in zip(select.feature_names_in_, select.importances_)
                 if np.isfinite(v)}
    covariates = set(cohort.keep)
    final = [n for n in chosen.inputs if n not in covariates]
    fits = max(len(outcome.selected), 1)
    rows = []
    for name in cohort.features:
        values = [imp[name] for imp in outcome.importances if name in imp]
        rows.append({
            "feature": name, "kind": "feature", "selected": name in final,
            "rank": final.index(name) + 1 if name in final else None,
            "importance": float(np.mean(values)) if values else None,
            "importance_sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "filter_frequency": sum(name in kept for kept in outcome.filter_kept) / fits,
            "selection_frequency": sum(name in kept for kept in outcome.selected) / fits,
            "final_importance": final_imp.get(name)})
    for name in cohort.keep:
        rows.append({"feature": name, "kind": "covariate", "selected": True, "rank": None,
                     "importance": None, "importance_sd": None, "filter_frequency": 1.0,
                     "selection_frequency": 1.0, "final_importance": None})
    rows.sort(key=lambda r: (not r["selected"], r["rank"] or 10**9,
                             -r["selection_frequency"], -r["filter_frequency"], r["feature"]))
    return rows


def write_outputs(result: TrainingResult, *, folds, selection, cohort, plan, train_rows,
                  test_rows, step, inputs, settings: Settings, features: Path) -> list[Path]:
    """Write every output of a run (model folders, group tables, sidecars) at once.

    ``folds``: the outer fold of each training row (first repeat); ``selection``:
    step (None for a flat model) -> (its CV outcome, its cohort), for
    selected_features.tsv.
    """
    from metcli.io.files import OutputSet, dump_json_to, write_tsv_to
    from metcli.io.provenance import write_dataset_description
    from metcli.io.predictions import prediction_columns, prediction_rows
    from metcli.io.schemas import validate

    out = result.out_dir
    write_dataset_description(out, name="metcli train-radiomics",
                              sources={"features": features if features.is_dir()
                                       else features.parent},
                              description="radiomics classifiers (ONNX + model cards), "
                                          "cross-validated and test results")
    columns = prediction_columns(cohort.classes)
    # evaluate reads these keys; a multi-class model has no positive class nor threshold
    base = {"classes": list(cohort.classes), "patient_aggregate": "mean"}
    if cohort.positive is not None:
        base["positive_class"] = cohort.positive
    if result.hierarchy is not None:
        base["hierarchy"] = result.hierarchy.record()["groups"]
    group_oof, group_test, models_info = [], [], {}
    pending: list[tuple[Path, dict, dict, str]] = []   # sidecar, produced, extra, schema
    written: list[Path] = []
    with OutputSet() as outs:
        def table(rows, cols, final, schema):
            tmp = outs.path(final)
            write_tsv_to(rows, cols, tmp, schema=schema, where=final)
            written.append(final)
            return {final: tmp}

        for name, model in result.models.items():
            folder = out / name
            onnx_tmp = outs.path(folder / "model.onnx")
            onnx_tmp.write_bytes(model.onnx)
            written.append(folder / "model.onnx")
            card = (_chain_card(model, result, cohort, plan, settings, train_rows, test_rows)
                    if model.steps else
                    _card(model, result, cohort, plan, settings, train_rows, test_rows))
            pending.append((folder / "model.json", {folder / "model.onnx": onnx_tmp}, card,
                            "model_card"))
            for step_name, part in model.steps.items():
                part_onnx = outs.path(folder / step_name / "model.onnx")
                part_onnx.write_bytes(part.onnx)
                written.append(folder / step_name / "model.onnx")
                pending.append((folder / step_name / "model.json",
                                {folder / step_name / "model.onnx": part_onnx},
                                _step_card(part, model, result, plan, settings), "model_card"))
            info = {"threshold": model.threshold, "threshold_source": model.threshold_source,
                    "selected": name == result.selected}
            if model.threshold is None:
                del info["threshold"]
            models_info[name] = info
            for set_name, rows_idx, proba, file in (
                    ("train", train_rows, model.oof, "oof_predictions"),
                    ("test", test_rows, model.test_proba, "predictions")):
                if set_name == "test" and not len(test_rows):
                    continue
                rows = prediction_rows(cohort.participants[rows_idx], cohort.lesion_ids[rows_idx],
                                       proba, cohort.classes, model=name, set_name=set_name,
                                       positive=cohort.positive, threshold=model.threshold)
                (group_oof if set_name == "train" else group_test).extend(rows)
                produced = table(rows, columns, folder / f"{file}.tsv", "predictions")
                what = ("out-of-fold predictions of the training patients (mean over "
                        "repeats)" if set_name == "train" else "predictions of the test set")
                pending.append((folder / f"{file}.json", produced,
                                {"Description": f"{model.name}: {what}", **base, "model": name,
                                 **info}, "sidecar"))
        group_extra = {**base, "selected_model": result.selected, "models": models_info}
        produced = table(group_oof, columns, out / "oof_predictions.tsv", "predictions")
        pending.append((out / "oof_predictions.json", produced, {
            "Description": "Out-of-fold predictions of every model for the training patients "
                           "(set train; mean over the CV repeats)", **group_extra}, "sidecar"))
        if len(test_rows):
            produced = table(group_test, columns, out / "predictions.tsv", "predictions")
            pending.append((out / "predictions.json", produced, {
                "Description": "Test-set predictions of every model (set test)",
                **group_extra}, "sidecar"))
        fold_of = {}
        for row, fold in zip(train_rows, folds):
            fold_of[cohort.participants[row]] = int(fold)
        split_rows = ([{"participant_id": p, "set": "train", "fold": fold_of.get(p)}
                       for p in plan.train]
                      + [{"participant_id": p, "set": "test", "fold": None} for p in plan.test])
        produced = table(sorted(split_rows, key=lambda r: r["participant_id"]), SPLIT_COLUMNS,
                         out / "split.tsv", "split")
        pending.append((out / "split.json", produced, {
            "Description": f"Patients of the training and test sets ({plan.source}); fold: "
                           "outer cross-validation fold of the first repeat",
            "ExcludedParticipants": result.excluded}, "sidecar"))
        chosen = result.models[result.selected]
        selected_rows = []
        for step_name, (step_outcome, step_cohort) in selection.items():
            part = chosen if step_name is None else chosen.steps[step_name]
            for row in _selected_rows(part, step_outcome, step_cohort):
                selected_rows.append(row if step_name is None else {"step": step_name, **row})
        hierarchical = result.hierarchy is not None
        produced = table(selected_rows, (("step",) if hierarchical else ()) + SELECTED_COLUMNS,
                         out / "selected_features.tsv", "selected_features")
        pending.append((out / "selected_features.json", produced, {
            "Description": "Features after the correlation filter and the permutation "
                           "importance selection: selected = in the final models; importance "
                           "= mean over the outer folds of the random forest's permutation "
                           "importance on held-out patients; frequencies over the outer fits"
                           + ("; one block of rows per step of the hierarchy (each step "
                              "selects its own features)" if hierarchical else ""),
            "selected_model": result.selected}, "sidecar"))
        columns = (RESULTS_COLUMNS[:3] + ("step",) + RESULTS_COLUMNS[3:] if hierarchical
                   else RESULTS_COLUMNS)
        produced = table(result.results, columns, out / "results.tsv", "results")
        pending.append((out / "results.json", produced, {
            "Description": "One row per model and level: cross-validated (out-of-fold) and "
                           "test metrics; selected_by_cv marks the model chosen on "
                           "cross-validation"
                           + ("; step: chain (the hierarchical model) or one of its steps "
                              "(each on its own classes and patients)" if hierarchical else ""),
            **group_extra}, "sidecar"))
        for sidecar, produced, extra, schema in pending:
            doc = step.sidecar(inputs, produced, extra=extra)
            validate(doc, "sidecar", where=sidecar)
            dump_json_to(doc, outs.path(sidecar), schema=schema, where=sidecar)
            written.append(sidecar)
    return written
