"""The numbers behind each figure of ``metcli evaluate``.

Each ``*_rows`` function turns the evaluation results
(:class:`metcli.evaluation.metrics.LevelResult`) into the rows of one figure's TSV; the
figures of :mod:`metcli.evaluation.plots` are drawn from exactly those rows, so the
numbers behind a figure are always on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from metcli.evaluation import bootstrap

if TYPE_CHECKING:  # pragma: no cover
    from metcli.evaluation.metrics import LevelResult

ROC_GRID = np.linspace(0.0, 1.0, 101)
CALIBRATION_BINS = 10
ROC_COLUMNS = (
    "model",
    "level",
    "class",
    "kind",
    "fpr",
    "tpr",
    "threshold",
    "tpr_lower",
    "tpr_upper",
    "reader",  # kind reader: a reader's operating point (metcli.evaluation.readers)
    "assisted",
)
CALIBRATION_COLUMNS = (
    "model",
    "level",
    "class",
    "kind",
    "bin_lower",
    "bin_upper",
    "count",
    "mean_predicted",
    "observed_fraction",
)
CONFUSION_COLUMNS = ("model", "level", "true_class", "predicted_class", "count", "fraction_of_true")
GRID_COLUMNS = (
    "model",
    "participant_id",
    "true_class",
    "lesion_id",
    "predicted_class",
    "probability",
    "correct",
    "row",
    "column",
)


def roc_rows(results: Sequence["LevelResult"], level_ci: float = 0.95) -> list[dict]:
    """ROC curve, bootstrap band and operating point of every model at one level."""
    from sklearn.metrics import roc_curve

    rows = []
    for result in results:
        data, model = result.data, result.model
        targets = (
            [model.classes.index(model.positive_class)]
            if model.binary
            else range(len(model.classes))
        )
        for index in targets:
            truth = data.y == index
            if truth.all() or not truth.any():
                continue
            cls = model.classes[index]
            base = {"model": model.name, "level": data.level, "class": cls}
            fpr, tpr, thr = roc_curve(truth, data.prob[:, index])
            for x, yv, t in zip(fpr, tpr, thr):
                rows.append(
                    {**base, "kind": "curve", "fpr": float(x), "tpr": float(yv), "threshold": _f(t)}
                )
            median, low, high = bootstrap.weighted_roc_band(
                data.prob[:, index], truth, result.weights, ROC_GRID, level_ci
            )
            for x, m, lo, hi in zip(ROC_GRID, median, low, high):
                rows.append(
                    {
                        **base,
                        "kind": "band",
                        "fpr": float(x),
                        "tpr": _f(m),
                        "tpr_lower": _f(lo),
                        "tpr_upper": _f(hi),
                    }
                )
            rates = bootstrap.one_vs_rest_rates(result.confusion[None].astype(float), index)
            sens, spec = _f(rates["sensitivity"][0]), _f(rates["specificity"][0])
            if sens is not None and spec is not None:
                rows.append(
                    {
                        **base,
                        "kind": "operating_point",
                        "fpr": 1.0 - spec,
                        "tpr": sens,
                        "threshold": data.threshold,
                    }
                )
    return rows


def calibration_rows(
    results: Sequence["LevelResult"], n_bins: int = CALIBRATION_BINS
) -> list[dict]:
    """Reliability bins (equal width) and the overall mean probability vs prevalence."""
    rows = []
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for result in results:
        data, model = result.data, result.model
        targets = (
            [model.classes.index(model.positive_class)]
            if model.binary
            else range(len(model.classes))
        )
        for index in targets:
            truth = (data.y == index).astype(float)
            prob = data.prob[:, index]
            base = {"model": model.name, "level": data.level, "class": model.classes[index]}
            bins = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, n_bins - 1)
            for b in range(n_bins):
                inside = bins == b
                if not inside.any():
                    continue
                rows.append(
                    {
                        **base,
                        "kind": "bin",
                        "bin_lower": float(edges[b]),
                        "bin_upper": float(edges[b + 1]),
                        "count": int(inside.sum()),
                        "mean_predicted": float(prob[inside].mean()),
                        "observed_fraction": float(truth[inside].mean()),
                    }
                )
            rows.append(
                {
                    **base,
                    "kind": "overall",
                    "bin_lower": 0.0,
                    "bin_upper": 1.0,
                    "count": int(prob.size),
                    "mean_predicted": float(prob.mean()),
                    "observed_fraction": float(truth.mean()),
                }
            )
    return rows


def confusion_rows(results: Sequence["LevelResult"]) -> list[dict]:
    rows = []
    for result in results:
        classes = result.model.classes
        cm = result.confusion
        for t, true_class in enumerate(classes):
            total = int(cm[t].sum())
            for p, pred_class in enumerate(classes):
                rows.append(
                    {
                        "model": result.model.name,
                        "level": result.level,
                        "true_class": true_class,
                        "predicted_class": pred_class,
                        "count": int(cm[t, p]),
                        "fraction_of_true": float(cm[t, p] / total) if total else None,
                    }
                )
    return rows


def lesion_grid_rows(results: Sequence["LevelResult"]) -> list[dict]:
    """One row per lesion: the patient's row and the lesion's column in the grid figure."""
    rows = []
    for result in results:
        data, model = result.data, result.model
        patient_class = {p: int(data.y[data.participant_ids.index(p)]) for p in data.patients}
        order = sorted(data.patients, key=lambda p: (patient_class[p], p))
        row_of = {p: i for i, p in enumerate(order)}
        column = dict.fromkeys(order, 0)
        for i, (pid, lesion) in enumerate(zip(data.participant_ids, data.lesion_ids)):
            pred = int(data.pred[i])
            rows.append(
                {
                    "model": model.name,
                    "participant_id": pid,
                    "true_class": model.classes[int(data.y[i])],
                    "lesion_id": lesion,
                    "predicted_class": model.classes[pred],
                    "probability": float(data.prob[i, pred]),
                    "correct": bool(pred == data.y[i]),
                    "row": row_of[pid],
                    "column": column[pid],
                }
            )
            column[pid] += 1
    rows.sort(key=lambda r: (r["model"], r["row"], r["column"]))
    return rows


def _f(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
