"""The content of ``metrics.json``, the sidecar of ``metrics.tsv`` (``metcli evaluate``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metcli.evaluation.metrics import DERIVED_NOTE

LESION_NOTE = (
    "lesions of one patient are not independent: every lesion-level interval "
    "resamples patients (cluster bootstrap, stratified by the patient's class) and "
    "the lesion-level AUC also has Obuchowski's (1997) clustered variance; no "
    "lesion-level figure treats lesions as independent"
)
PATIENT_NOTE = (
    "AUC by DeLong and by the patient bootstrap; sensitivity and specificity by "
    "Clopper-Pearson; the others by the patient bootstrap"
)
COMPARISON_COLUMNS = (
    "level",
    "model_a",
    "model_b",
    "metric",
    "class",
    "estimate_a",
    "estimate_b",
    "difference",
    "test",
    "statistic",
    "p_value",
    "n_patients",
    "n_lesions",
    "note",
)


#: The columns of each metric row of metrics.json.
METRIC_KEYS = (
    "metric",
    "class",
    "estimate",
    "ci_lower",
    "ci_upper",
    "ci_method",
    "bootstrap_resamples",
    "note",
)


def metrics_document(
    step, models, ordered, comparison_rows, n_bootstrap, seed, eval_set, level_ci
) -> dict[str, Any]:
    """The content of metrics.json: per model and level, the counts, confusion matrix,
    threshold and figures; the bootstrap; the comparisons."""
    model_docs = [_model_document(step, model, ordered, eval_set) for model in models]
    return {
        "Description": "metrics of metcli evaluate; the sidecar of metrics.tsv",
        "UnitOfInference": "patient",
        "LesionLevel": LESION_NOTE,
        "ConfidenceLevel": level_ci,
        "Bootstrap": {
            "resamples": n_bootstrap,
            "seed": seed,
            "unit": "patient",
            "stratified_by": "the patient's true class",
            "interval": "percentile",
        },
        "Set": eval_set,
        "Models": model_docs,
        "Comparisons": [{k: row.get(k) for k in COMPARISON_COLUMNS} for row in comparison_rows],
    }


def _model_document(step, model, ordered, eval_set) -> dict[str, Any]:
    """One model: its classes, positive class and the figures of each of its levels."""
    levels = [_level_document(result) for result in ordered if result.model is model]
    return {
        "model": model.name,
        "source": step.uri(model.path),
        "set": eval_set,
        "task": "binary" if model.binary else "multiclass",
        "classes": model.classes,
        "positive_class": model.positive_class,
        "positive_class_source": model.positive_source,
        "selected_by_cv": model.selected,
        "levels": levels,
    }


def _level_document(result) -> dict[str, Any]:
    """One model at one level: counts, threshold, confusion matrix and metric rows."""
    data = result.data
    classes = result.model.classes
    return {
        "level": data.level,
        "derived_from_lesions": data.derived,
        "derivation": DERIVED_NOTE if data.derived else None,
        "n_patients": data.n_patients,
        "n_units": data.n_units,
        "class_counts": {
            c: int(n) for c, n in zip(classes, np.bincount(data.y, minlength=len(classes)))
        },
        "threshold": data.threshold,
        "threshold_source": data.threshold_source,
        "confusion_matrix": {
            "classes": classes,
            "rows": "true class",
            "columns": "predicted class",
            "counts": result.confusion.astype(int).tolist(),
        },
        "mean_predicted": {c: float(data.prob[:, i].mean()) for i, c in enumerate(classes)},
        "interval_note": LESION_NOTE if data.level == "lesion" else PATIENT_NOTE,
        "metrics": [{k: row[k] for k in METRIC_KEYS} for row in result.rows],
    }
