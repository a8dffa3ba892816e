"""Figures of ``metcli evaluate``: the plan of a run's figures and their drawing.

The ``*_rows`` functions of :mod:`metcli.evaluation.figure_rows` turn the evaluation
results into the rows of each figure's TSV; ``*_figure`` functions draw a PNG from exactly
those rows, so the numbers behind a figure are always on disk. Figures
are drawn on matplotlib's Agg canvas, chosen inside each function
(:mod:`metcli.evaluation.canvas`): importing this module neither imports matplotlib
nor changes any global backend. The lesion overlays are in
:mod:`metcli.evaluation.overlays`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from metcli.evaluation.canvas import agg_figure, save_png
from metcli.evaluation.figure_rows import (
    CALIBRATION_COLUMNS,
    CONFUSION_COLUMNS,
    GRID_COLUMNS,
    ROC_COLUMNS,
    calibration_rows,
    confusion_rows,
    lesion_grid_rows,
    roc_rows,
)
from metcli.evaluation.readers import draw_reader_points

if TYPE_CHECKING:  # pragma: no cover
    from metcli.evaluation.metrics import LevelResult

#: At most this many curves in an ROC figure (its TSV keeps every model); bootstrap
#: bands are drawn only up to BAND_CURVES curves, beyond which they hide each other.
MAX_ROC_CURVES, BAND_CURVES = 6, 3
LEVELS = ("patient", "lesion")


def figure_plan(
    results: dict[str, list["LevelResult"]], level_ci: float = 0.95
) -> dict[str, tuple]:
    """The figures of a run: ``{name: (columns, schema, rows, draw(rows, target), description)}``.

    ``results`` maps each level to its results (patient first).
    """
    plan: dict[str, tuple] = {}
    for lv in LEVELS:
        found = results[lv]
        if not found:
            continue
        label = "patient" if lv == "patient" else "lesion (CI band: patients resampled)"
        # First in the figure: each input file's chosen model (its sidecar's "selected",
        # or the only model of that file, e.g. a CNN beside sixteen radiomics models).
        per_file: dict = {}
        for r in found:
            per_file.setdefault(r.model.path, []).append(r.model)
        selected = [
            m.name for models in per_file.values() for m in models if m.selected or len(models) == 1
        ]
        plan[f"roc_{lv}"] = (
            ROC_COLUMNS,
            "roc",
            roc_rows(found, level_ci),
            lambda rows, target, t=f"ROC, {label} level", first=selected, name=f"roc_{lv}.tsv": (
                roc_figure(rows, target, title=t, first=first, table_name=name)
            ),
            f"ROC curves at {lv} level, {int(level_ci * 100)}% bootstrap band and operating point",
        )
        plan[f"calibration_{lv}"] = (
            CALIBRATION_COLUMNS,
            "calibration",
            calibration_rows(found),
            lambda rows, target, t=f"Calibration, {lv} level": calibration_figure(
                rows, target, title=t
            ),
            f"reliability diagram at {lv} level; mean predicted probability against the "
            "observed prevalence (resampling in training shifts it)",
        )
        plan[f"confusion_{lv}"] = (
            CONFUSION_COLUMNS,
            "confusion",
            confusion_rows(found),
            lambda rows, target, t=f"Confusion matrix, {lv} level": confusion_figure(
                rows, target, title=t
            ),
            f"confusion matrices at {lv} level (rows: true class)",
        )
    if results["lesion"]:
        plan["lesion_grid"] = (
            GRID_COLUMNS,
            "lesion_grid",
            lesion_grid_rows(results["lesion"]),
            lambda rows, target: lesion_grid_figure(rows, target),
            "per-patient lesion grid: one row per patient, one box per lesion coloured by "
            "the predicted class, crossed where wrong",
        )
    return plan


# ----------------------------------------------------------------------------- the figures
def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _groups(rows: Sequence[dict], *keys: str) -> "OrderedDict[tuple, list[dict]]":
    groups: OrderedDict[tuple, list[dict]] = OrderedDict()
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def _curve_auc(items: Sequence[dict]) -> float:
    curve = [r for r in items if r["kind"] == "curve"]
    if len(curve) < 2:
        return float("nan")
    fpr = np.array([r["fpr"] for r in curve], float)
    tpr = np.array([r["tpr"] for r in curve], float)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def shown_roc_series(
    series: Sequence[tuple],
    aucs: Sequence[float],
    first: Sequence[str] = (),
    limit: int = MAX_ROC_CURVES,
) -> list[int]:
    """Which (model, class) series an ROC figure draws: the models selected by
    cross-validation first, then the others by falling AUC (ties: name), at most ``limit``."""
    order = sorted(
        range(len(series)),
        key=lambda i: (
            series[i][0] not in first,
            -aucs[i] if np.isfinite(aucs[i]) else np.inf,
            str(series[i][0]),
            str(series[i][1]),
        ),
    )
    return order[:limit]


def roc_figure(
    rows: Sequence[dict[str, Any]],
    target: Path,
    *,
    title: str = "ROC",
    first: Sequence[str] = (),
    table_name: str | None = None,
) -> None:
    """ROC curves (one class against the rest for several classes), the bootstrap band
    of each and the operating point of its decision rule.

    With many models the figure keeps the chosen models (``first``: the cross-validation
    choice of each input, or its only model) and the best of the others by AUC,
    :data:`MAX_ROC_CURVES` curves in all, and says how many more the table holds; bands
    are drawn for up to :data:`BAND_CURVES` curves.
    """
    figure = agg_figure(6.0, 6.0)
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    groups = _groups(rows, "model", "class")
    keys = list(groups)
    aucs = [_curve_auc(groups[k]) for k in keys]
    shown = shown_roc_series(keys, aucs, first)
    multiclass = len({key[1] for key in keys}) > 1
    bands = len(shown) <= BAND_CURVES
    for colour, index in zip(_colours(len(shown)), shown):
        (model, cls), items = keys[index], groups[keys[index]]
        label = f"{model} ({cls})" if multiclass else model
        if np.isfinite(aucs[index]):
            label += f"  AUC {aucs[index]:.2f}"
        if model in first:
            label += " (chosen)"
        band = [r for r in items if r["kind"] == "band" and r["tpr_lower"] is not None]
        if band and bands:
            ax.fill_between(
                [r["fpr"] for r in band],
                [r["tpr_lower"] for r in band],
                [r["tpr_upper"] for r in band],
                color=colour,
                alpha=0.15,
                linewidth=0,
            )
        curve = [r for r in items if r["kind"] == "curve"]
        ax.plot(
            [r["fpr"] for r in curve],
            [r["tpr"] for r in curve],
            color=colour,
            linewidth=2.4 if model in first else 1.6,
            label=label,
        )
        for point in (r for r in items if r["kind"] == "operating_point"):
            ax.plot(
                [point["fpr"]],
                [point["tpr"]],
                marker="o",
                markersize=7,
                color=colour,
                markeredgecolor="black",
            )
    draw_reader_points(ax, rows, {keys[i]: c for c, i in zip(_colours(len(shown)), shown)})
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    hidden = len(keys) - len(shown)
    if hidden:
        title += (
            f"\n{len(shown)} of {len(keys)} curves: chosen models and best AUCs; all in "
            f"{table_name or 'the table'}"
        )
    ax.set_title(title, fontsize=10)
    if keys:
        legend_title = ("shaded: 95% bootstrap band; " if bands else "") + "dot: operating point"
        ax.legend(loc="lower right", fontsize=7, title=legend_title, title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no curve: a single class in the set", ha="center", va="center")
    save_png(figure, target)


def calibration_figure(
    rows: Sequence[dict[str, Any]], target: Path, *, title: str = "Calibration"
) -> None:
    """Reliability diagram; dashed: observed prevalence, dotted: mean predicted probability.

    A gap between the two lines is a shift of the prior, as resampling the training set
    (SMOTE, undersampling) causes.
    """
    figure = agg_figure(6.0, 6.0)
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="perfect")
    series = _groups(rows, "model", "class")
    multiclass = len({key[1] for key in series}) > 1
    for colour, ((model, cls), items) in zip(_colours(len(series)), series.items()):
        label = f"{model} ({cls})" if multiclass else f"{model} (P={cls})"
        bins = [r for r in items if r["kind"] == "bin"]
        sizes = [20 + 80 * r["count"] / max(b["count"] for b in bins) for r in bins]
        ax.plot(
            [r["mean_predicted"] for r in bins],
            [r["observed_fraction"] for r in bins],
            color=colour,
            linewidth=1.2,
        )
        ax.scatter(
            [r["mean_predicted"] for r in bins],
            [r["observed_fraction"] for r in bins],
            s=sizes,
            color=colour,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            label=label,
        )
        for overall in (r for r in items if r["kind"] == "overall"):
            ax.axhline(overall["observed_fraction"], color=colour, linestyle="--", linewidth=0.9)
            ax.axvline(overall["mean_predicted"], color=colour, linestyle=":", linewidth=0.9)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed fraction (bin)")
    ax.set_title(
        title + "\ndashed: observed prevalence; dotted: mean predicted probability", fontsize=9
    )
    ax.legend(loc="upper left", fontsize=8)
    save_png(figure, target)


def confusion_figure(
    rows: Sequence[dict[str, Any]], target: Path, *, title: str = "Confusion matrix"
) -> None:
    """One confusion matrix per model (rows: true class, columns: predicted class)."""
    models = _groups(rows, "model")
    n = max(1, len(models))
    columns = min(n, 3)
    lines = (n + columns - 1) // columns
    figure = agg_figure(3.8 * columns, 3.6 * lines + 0.4, layout="constrained")
    for position, ((model,), items) in enumerate(models.items(), start=1):
        classes = list(OrderedDict.fromkeys(r["true_class"] for r in items))
        counts = np.zeros((len(classes), len(classes)), dtype=int)
        for r in items:
            counts[classes.index(r["true_class"]), classes.index(r["predicted_class"])] = r["count"]
        ax = figure.add_subplot(lines, columns, position)
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
        for i in range(len(classes)):
            for j in range(len(classes)):
                dark = counts[i, j] > counts.max() / 2
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    color="white" if dark else "black",
                    fontsize=11,
                )
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(model, fontsize=9)
    figure.suptitle(title, fontsize=10)
    save_png(figure, target)


def lesion_grid_figure(
    rows: Sequence[dict[str, Any]], target: Path, *, title: str = "Lesions per patient"
) -> None:
    """One row per patient, one box per lesion coloured by the predicted class, a cross
    where the lesion's prediction is wrong (the patient's true class is in the row label)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    models = _groups(rows, "model")
    classes = list(
        OrderedDict.fromkeys([r["true_class"] for r in rows] + [r["predicted_class"] for r in rows])
    )
    colours = dict(zip(sorted(classes), _colours(len(classes))))
    widest = max((r["column"] for r in rows), default=0) + 1
    tallest = max((r["row"] for r in rows), default=0) + 1
    panel_width = 2.4 + 0.28 * min(widest, 40)
    figure = agg_figure(
        panel_width * max(1, len(models)), 1.4 + 0.28 * tallest, layout="constrained"
    )
    for position, ((model,), items) in enumerate(models.items(), start=1):
        ax = figure.add_subplot(1, len(models), position)
        names = {}
        for r in items:
            names[r["row"]] = f"{r['participant_id']} ({r['true_class']})"
            x, y = r["column"], r["row"]
            ax.add_patch(
                Rectangle(
                    (x + 0.05, y + 0.05),
                    0.9,
                    0.9,
                    facecolor=colours[r["predicted_class"]],
                    edgecolor="black",
                    linewidth=0.4,
                )
            )
            if not r["correct"]:
                ax.plot([x + 0.15, x + 0.85], [y + 0.15, y + 0.85], color="black", linewidth=1.2)
                ax.plot([x + 0.15, x + 0.85], [y + 0.85, y + 0.15], color="black", linewidth=1.2)
        rows_here = max(names) + 1 if names else 1
        ax.set_xlim(0, widest)
        ax.set_ylim(rows_here, 0)
        ax.set_aspect("equal", adjustable="box")
        ax.set_yticks(
            [i + 0.5 for i in sorted(names)], [names[i] for i in sorted(names)], fontsize=7
        )
        ax.set_xticks([])
        ax.set_xlabel("lesions")
        ax.set_title(model, fontsize=9)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
    handles = [
        Patch(facecolor=colours[c], edgecolor="black", label=f"predicted {c}")
        for c in sorted(classes)
    ]
    handles.append(Line2D([], [], color="black", marker="x", linestyle="", label="wrong"))
    figure.legend(handles=handles, loc="outside lower center", fontsize=7, ncol=len(handles))
    figure.suptitle(title, fontsize=10)
    save_png(figure, target)
