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


def metrics_document(
    step, models, ordered, comparison_rows, n_bootstrap, seed, eval_set, level_ci
) -> dict[str, Any]:
    """The content of metrics.json: per model and level, the counts, confusion matrix,
    threshold and figures; the bootstrap; the comparisons."""
    model_docs = []
    for model in models:
        levels = []
        for result in ordered:
            if result.model is not model:
                continue
            data = result.data
            classes = model.classes
            levels.append(
                {
                    "level": data.level,
                    "derived_from_lesions": data.derived,
                    "derivation": DERIVED_NOTE if data.derived else None,
                    "n_patients": data.n_patients,
                    "n_units": data.n_units,
                    "class_counts": {
                        c: int(n)
                        for c, n in zip(classes, np.bincount(data.y, minlength=len(classes)))
                    },
                    "threshold": data.threshold,
                    "threshold_source": data.threshold_source,
                    "confusion_matrix": {
                        "classes": classes,
                        "rows": "true class",
                        "columns": "predicted class",
                        "counts": result.confusion.astype(int).tolist(),
                    },
                    "mean_predicted": {
                        c: float(data.prob[:, i].mean()) for i, c in enumerate(classes)
                    },
                    "interval_note": LESION_NOTE if data.level == "lesion" else PATIENT_NOTE,
                    "metrics": [
                        {
                            k: row[k]
                            for k in (
                                "metric",
                                "class",
                                "estimate",
                                "ci_lower",
                                "ci_upper",
                                "ci_method",
                                "bootstrap_resamples",
                                "note",
                            )
                        }
                        for row in result.rows
                    ],
                }
            )
        model_docs.append(
            {
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
        )
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
