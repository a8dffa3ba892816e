"""What train-radiomics makes of one model: metrics, threshold, ONNX graph, results rows.

:func:`finish_model` turns a fitted pipeline and its out-of-fold predictions
into a :class:`ModelResult` (threshold chosen on the out-of-fold predictions,
CV and test metrics at lesion and patient level, the ONNX graph and its
largest difference to scikit-learn); :func:`finish_chain` does the same for a
hierarchical model. :func:`results_rows` gives the rows of results.tsv and
:func:`choose` the model cross-validation selects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metcli.radiomics.metrics import choose_threshold, cv_auc, fold_auc_sd, level_metrics
from metcli.radiomics.models import CVOutcome, model_name
from metcli.radiomics.settings import Settings

log = logging.getLogger(__name__)

CHAIN = "chain"


@dataclass
class ModelResult:
    """One trained model: its final pipeline, CV and test results, and its ONNX graph."""

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
    step: str | None = None  # a step of a hierarchical model
    decision: dict | None = None  # multi-class: per-class cut-offs (metcli.io.cutoffs)
    steps: dict[str, "ModelResult"] = field(default_factory=dict)  # a chained model's steps

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
    hierarchy: Any = None  # metcli.radiomics.hierarchy.Hierarchy
    steps: dict = field(default_factory=dict)  # step -> metcli.radiomics.hierarchy.StepData


def jsonable(value):
    """``value`` with numpy scalars as Python ones and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _units(cohort, proba, rows, level: str):
    """(truth, probabilities) of ``rows`` per lesion, or per patient (mean of its lesions)."""
    y = cohort.y[rows]
    if level != "patient":
        return y, proba
    from metcli.io.predictions import aggregate_patients

    patients = cohort.participants[rows]
    order, proba = aggregate_patients(patients, proba, cohort.classes)
    return np.array([y[np.flatnonzero(patients == p)[0]] for p in order]), proba


def threshold_of(cohort, oof, rows, settings: Settings):
    """(threshold, how it was chosen) on the out-of-fold predictions of ``rows``."""
    if cohort.positive is None:
        if settings.decision == "best-f1" and len(cohort.classes) > 2:
            return None, (
                "best-f1 per class on out-of-fold predictions "
                f"({settings.threshold_level} level, patient = mean of lesions; see decision)"
            )
        return None, "argmax (multi-class: the most probable class)"
    pos = cohort.classes.index(cohort.positive)
    truth, proba = _units(cohort, oof, rows, settings.threshold_level)
    value = choose_threshold(truth == pos, proba[:, pos], settings.threshold)
    return value, (
        f"{settings.threshold} on out-of-fold predictions "
        f"({settings.threshold_level} level, patient = mean of lesions)"
    )


def decision_of(cohort, oof, rows, settings: Settings) -> dict | None:
    """The per-class best-F1 cut-offs (three classes or more) on the out-of-fold
    predictions of ``rows``, at ``--threshold-level``, as a decision record whose rule
    is ``--decision``; None for a binary model (it keeps its threshold)."""
    from metcli.io.cutoffs import choose_decision

    if len(cohort.classes) < 3:
        return None
    truth, proba = _units(cohort, oof, rows, settings.threshold_level)
    return choose_decision(
        settings.decision,
        truth,
        proba,
        cohort.classes,
        chosen_on="out-of-fold predictions of the training patients (mean over the CV repeats)",
        level=settings.threshold_level,
    )


def set_metrics(cohort, rows, proba, threshold, decision: dict | None = None) -> dict:
    """Metrics of ``rows`` of ``cohort`` at lesion and patient level (accuracies by the
    cut-offs of ``decision`` when its rule is best-f1)."""
    from metcli.io.cutoffs import decided_labels, uses_cutoffs

    kwargs = {"classes": cohort.classes, "positive": cohort.positive, "threshold": threshold}
    out = {
        "lesion": level_metrics(cohort.y[rows], proba, **kwargs),
        "patient": level_metrics(
            cohort.y[rows], proba, patients=cohort.participants[rows], **kwargs
        ),
    }
    if uses_cutoffs(decision) and len(rows):
        from sklearn.metrics import accuracy_score, balanced_accuracy_score

        for level in out:
            truth, units = _units(cohort, proba, rows, level)
            labels = decided_labels(units, cohort.classes, decision)
            pred = np.array([cohort.classes.index(c) for c in labels])
            out[level]["accuracy"] = float(accuracy_score(truth, pred))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[level]["balanced_accuracy"] = float(balanced_accuracy_score(truth, pred))
    return out


def cv_metrics(
    outcome: CVOutcome, name: str, cohort, train_rows, oof, threshold, decision=None
) -> dict:
    cv = set_metrics(cohort, train_rows, oof, threshold, decision)
    for level, patients in (("lesion", None), ("patient", cohort.participants[train_rows])):
        cv[level]["auc"] = cv_auc(
            outcome,
            name,
            cohort.y[train_rows],
            classes=cohort.classes,
            positive=cohort.positive,
            patients=patients,
        )
        cv[level]["auc_sd"] = fold_auc_sd(
            outcome,
            name,
            cohort.y[train_rows],
            classes=cohort.classes,
            positive=cohort.positive,
            patients=patients,
        )
    return cv


def finish_model(
    classifier,
    sampler,
    pipeline,
    params,
    outcome: CVOutcome,
    cohort,
    train_rows,
    test_rows,
    settings: Settings,
    step: str | None = None,
) -> ModelResult:
    """A flat model (or one step of a hierarchy): threshold, metrics and its ONNX graph."""
    from metcli.radiomics import onnx as onnx_export

    name = model_name(classifier, sampler)
    oof = outcome.mean_oof(name)
    threshold, source = threshold_of(cohort, oof, train_rows, settings)
    decision = decision_of(cohort, oof, train_rows, settings)
    cv = cv_metrics(outcome, name, cohort, train_rows, oof, threshold, decision)
    test = test_proba = None
    if test_rows.size:
        with np.errstate(all="ignore"):
            test_proba = pipeline.predict_proba(cohort.frame.iloc[test_rows])
        test = set_metrics(cohort, test_rows, test_proba, threshold, decision)
    names = onnx_export.input_names(pipeline)
    label = name if step is None else f"{name}.{step}"
    model = onnx_export.to_onnx(pipeline, names, model_name=label, classifier=classifier)
    check_rows = np.concatenate([train_rows, test_rows])
    difference = onnx_export.max_difference(pipeline, model, cohort.frame.iloc[check_rows])
    if difference > 1e-5:
        log.warning("%s: the ONNX model differs from scikit-learn by up to %.2g", label, difference)
    tuned = {k.split("__", 1)[1]: jsonable(v) for k, v in sorted(params.items())}
    return ModelResult(
        classifier,
        sampler,
        pipeline,
        names,
        oof,
        threshold,
        source,
        cv,
        test,
        test_proba,
        model,
        difference,
        tuned,
        step=step,
        decision=decision,
    )


def finish_chain(
    classifier,
    sampler,
    chained,
    parts: dict[str, ModelResult],
    outcome: CVOutcome,
    cohort,
    train_rows,
    test_rows,
    settings: Settings,
) -> ModelResult:
    """The chained model of a hierarchy: metrics of the chain, and its one ONNX graph."""
    from metcli.radiomics import onnx as onnx_export
    from metcli.radiomics.hierarchy import chain_columns

    name = model_name(classifier, sampler)
    oof = outcome.mean_oof(name)
    threshold, source = threshold_of(cohort, oof, train_rows, settings)
    if threshold is None and source.startswith("argmax"):
        source = "argmax of the chained probabilities (the most probable label)"
    decision = decision_of(cohort, oof, train_rows, settings)
    cv = cv_metrics(outcome, name, cohort, train_rows, oof, threshold, decision)
    test = test_proba = None
    if test_rows.size:
        test_proba = chained.predict_proba(cohort.frame.iloc[test_rows])
        test = set_metrics(cohort, test_rows, test_proba, threshold, decision)
    names = chained.input_names
    model = onnx_export.chain(
        [(k, v.onnx) for k, v in parts.items()],
        chain_columns(chained.hierarchy, cohort.classes),
        model_name=name,
    )
    check_rows = np.concatenate([train_rows, test_rows])
    difference = onnx_export.max_difference(
        chained, model, cohort.frame.iloc[check_rows], names=names
    )
    if difference > 1e-5:
        log.warning("%s: the ONNX model differs from scikit-learn by up to %.2g", name, difference)
    tuned = {k: v.hyperparameters for k, v in parts.items()}
    return ModelResult(
        classifier,
        sampler,
        chained,
        names,
        oof,
        threshold,
        source,
        cv,
        test,
        test_proba,
        model,
        difference,
        tuned,
        steps=parts,
        decision=decision,
    )


def results_rows(models: dict[str, ModelResult]) -> list[dict]:
    """One row per model and level; a chained model's rows (step chain) then its steps'."""
    rows = []
    for name, model in models.items():
        parts = [(CHAIN, model)] + list(model.steps.items()) if model.steps else [(None, model)]
        for step, part in parts:
            for level in ("patient", "lesion"):
                cv, test = part.cv[level], (part.test or {}).get(level, {})
                row = {
                    "classifier": model.classifier,
                    "sampler": model.sampler,
                    "model": name,
                    "level": level,
                    "cv_auc": cv["auc"],
                    "cv_auc_sd": cv["auc_sd"],
                    "cv_accuracy": cv["accuracy"],
                    "cv_balanced_accuracy": cv["balanced_accuracy"],
                    "test_auc": test.get("auc"),
                    "test_accuracy": test.get("accuracy"),
                    "test_balanced_accuracy": test.get("balanced_accuracy"),
                    "threshold": part.threshold,
                    "threshold_source": part.threshold_source,
                    "n_features": len(part.inputs),
                    "hyperparameters": json.dumps(
                        part.hyperparameters, sort_keys=True, separators=(",", ":")
                    ),
                    "selected_by_cv": False,
                }
                if step is not None:
                    row["step"] = step
                rows.append(row)
    return rows


def choose(rows: list[dict], names: list[str]) -> str:
    """The model cross-validation selects: highest patient, then lesion ``cv_auc``, then order."""

    def score(name):
        by_level = {
            r["level"]: r["cv_auc"]
            for r in rows
            if r["model"] == name and r.get("step", CHAIN) == CHAIN
        }
        as_num = [
            v if v is not None else -math.inf
            for v in (by_level.get("patient"), by_level.get("lesion"))
        ]
        return (as_num[0], as_num[1], -names.index(name))

    return max(names, key=score)


def onnx_sha256(model: bytes) -> str:
    """The sha256 of a serialized ONNX graph (hex)."""
    return hashlib.sha256(model).hexdigest()
