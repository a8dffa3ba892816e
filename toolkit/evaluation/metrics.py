"""Figures of ``metcli evaluate``: per-level data and metrics with intervals.

The patient is the unit of inference: every lesion-level interval resamples
patients (see :mod:`metcli.evaluation.evaluate`). The paired tests between models are in
:mod:`metcli.evaluation.comparisons`.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from metcli.evaluation import bootstrap, stats
from metcli.evaluation.inputs import PROB_PREFIX, ModelPredictions

log = logging.getLogger(__name__)

CLUSTER_NOTE = "clustered: patients resampled, lesions not treated as independent"
DERIVED_NOTE = (
    "derived: no patient rows, so each patient's probabilities are the mean of "
    "its lesions' probabilities"
)


# ============================================================================= level data
@dataclass
class LevelData:
    """The evaluated units (patients or lesions) of one model at one level."""

    level: str
    derived: bool
    participant_ids: list[str]
    lesion_ids: list[str | None]
    patients: list[str]
    cluster: np.ndarray
    y: np.ndarray
    prob: np.ndarray
    pred: np.ndarray
    threshold: float | None
    threshold_source: str

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def n_units(self) -> int:
        return len(self.participant_ids)


def _lesion_key(value: str | None):
    text = "" if value is None else str(value)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def level_data(model: ModelPredictions, level: str, labels: dict[str, str]) -> LevelData | None:
    """The units of ``level``; patient units derived from lesions when there are no patient rows."""
    columns = [PROB_PREFIX + c for c in model.classes]
    rows = [r for r in model.rows if r["level"] == level]
    derived = False
    if level == "patient" and not rows:
        lesions = [r for r in model.rows if r["level"] == "lesion"]
        if not lesions:
            return None
        grouped: dict[str, list[dict]] = {}
        for row in lesions:
            grouped.setdefault(row["participant_id"], []).append(row)
        rows = [
            {
                "participant_id": pid,
                "lesion_id": None,
                **{c: float(np.mean([r[c] for r in group])) for c in columns},
            }
            for pid, group in grouped.items()
        ]
        derived = True
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: (r["participant_id"], _lesion_key(r.get("lesion_id"))))
    prob = np.array([[r[c] for c in columns] for r in rows], dtype=float)
    y = np.array([model.classes.index(labels[r["participant_id"]]) for r in rows], dtype=int)
    if model.binary:
        pos = model.classes.index(model.positive_class)
        threshold, source = model.thresholds[level]
        if derived:
            source = f"{source} (applied to the mean of the lesion probabilities)"
        pred = np.where(prob[:, pos] >= threshold, pos, 1 - pos)
    else:
        threshold = None
        source = "highest probability (multi-class; the cut-offs: cutoff_metrics.tsv)"
        pred = np.argmax(prob, axis=1)
    patients = sorted({r["participant_id"] for r in rows})
    index = {p: i for i, p in enumerate(patients)}
    stated = [r.get("predicted") for r in rows]
    disagree = sum(1 for s, p in zip(stated, pred) if s is not None and s != model.classes[p])
    if disagree:
        log.warning(
            "model %s, %s level: the predicted column differs from the decision rule "
            "(%s) for %d of %d rows; the rule is used",
            model.name,
            level,
            source,
            disagree,
            len(rows),
        )
    return LevelData(
        level=level,
        derived=derived,
        participant_ids=[r["participant_id"] for r in rows],
        lesion_ids=[r.get("lesion_id") for r in rows],
        patients=patients,
        cluster=np.array([index[r["participant_id"]] for r in rows], dtype=int),
        y=y,
        prob=prob,
        pred=pred,
        threshold=threshold,
        threshold_source=source,
    )


def _patient_strata(data: LevelData) -> np.ndarray:
    first = {}
    for cluster, label in zip(data.cluster, data.y):
        first.setdefault(int(cluster), int(label))
    return np.array([first[i] for i in range(data.n_patients)])


def bootstrap_weights(data: LevelData, n_boot: int, seed: int) -> np.ndarray:
    """Unit weights of the patient (cluster) bootstrap, stratified by the patient's class."""
    clusters = bootstrap.cluster_bootstrap_weights(_patient_strata(data), n_boot, seed)
    return bootstrap.unit_weights(clusters, data.cluster)


# ============================================================================= metrics
@dataclass
class LevelResult:
    """Metrics of one model at one level, and what the plots need."""

    model: ModelPredictions
    data: LevelData
    rows: list[dict[str, Any]]
    confusion: np.ndarray
    weights: np.ndarray
    summary: dict[str, Any]

    @property
    def level(self) -> str:
        return self.data.level


def finite_or_none(value) -> float | None:
    """``value`` as a float; None when it is None, NaN or infinite (an undefined figure)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _count_phrase(data: LevelData, classes: Sequence[str]) -> str:
    counts = np.bincount(data.y, minlength=len(classes))
    unit = "patients" if data.level == "patient" else "lesions"
    return ", ".join(f"{n} {c}" for c, n in zip(classes, counts)) + f" {unit}"


def compute_level(
    model: ModelPredictions, data: LevelData, *, n_boot: int, seed: int, level_ci: float = 0.95
) -> LevelResult:
    """Every figure of one model at one level with its interval(s)."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    k = len(model.classes)
    weights = bootstrap_weights(data, n_boot, seed)
    counts = bootstrap.confusion_counts(data.y, data.pred, k, weights)
    cm = confusion_matrix(data.y, data.pred, labels=list(range(k)))
    n_lesions = data.n_units if data.level != "patient" else _lesion_count(model, data)
    base = {
        "model": model.name,
        "set": model.rows[0]["set"],
        "level": data.level,
        "derived_from_lesions": data.derived,
        "ci_level": level_ci,
        "n_patients": data.n_patients,
        "n_lesions": n_lesions,
        "positive_class": model.positive_class,
        "threshold": data.threshold,
        "threshold_source": data.threshold_source,
    }
    figures = _LevelFigures(
        data=data,
        classes=model.classes,
        base=base,
        weights=weights,
        counts=counts,
        cm=cm,
        level_ci=level_ci,
    )
    accuracy = accuracy_score(data.y, data.pred)
    if model.binary:
        summary = figures.add_binary(model.classes.index(model.positive_class), accuracy)
    else:
        summary = figures.add_multiclass(accuracy)
    summary["accuracy"] = float(accuracy)
    return LevelResult(
        model=model, data=data, rows=figures.rows, confusion=cm, weights=weights, summary=summary
    )


@dataclass
class _LevelFigures:
    """The metric rows of one model at one level, added figure by figure."""

    data: LevelData
    classes: list[str]
    base: dict[str, Any]  # the columns every row shares
    weights: np.ndarray  # bootstrap unit weights
    counts: np.ndarray  # bootstrap confusion counts
    cm: np.ndarray  # the confusion matrix
    level_ci: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def patient_level(self) -> bool:
        return self.data.level == "patient"

    @property
    def unit(self) -> str:
        return "patients" if self.patient_level else "lesions"

    def add(self, metric, cls, estimate, method, interval=(None, None), used=None, note=""):
        """One row; an undefined estimate gets no interval."""
        derived_note = DERIVED_NOTE if self.data.derived else ""
        notes = [
            n
            for n in (
                note,
                derived_note if self.patient_level else "",
                CLUSTER_NOTE if not self.patient_level and method != "none" else "",
            )
            if n
        ]
        low, high = interval
        estimate = finite_or_none(estimate)
        if estimate is None:  # undefined figure: no interval either
            low = high = used = None
            method = "none"
        notes = [n for n in notes if not (n == CLUSTER_NOTE and method == "none")]
        self.rows.append(
            {
                **self.base,
                "metric": metric,
                "class": cls,
                "estimate": estimate,
                "ci_lower": finite_or_none(low),
                "ci_upper": finite_or_none(high),
                "ci_method": method,
                "bootstrap_resamples": used,
                "note": "; ".join(notes) or None,
            }
        )

    def add_boot(self, metric, cls, estimate, boot_values, note=""):
        """One row with its patient (or cluster) bootstrap interval."""
        low, high, used = bootstrap.percentile_interval(boot_values, self.level_ci)
        method = "patient_bootstrap" if self.patient_level else "cluster_bootstrap"
        self.add(metric, cls, estimate, method, (low, high), used, note)

    def add_auc(self, cls_index: int) -> tuple[float | None, np.ndarray]:
        """AUC of one class against the rest: (estimate, bootstrap values)."""
        from sklearn.metrics import roc_auc_score

        data = self.data
        cls = self.classes[cls_index]
        truth = data.y == cls_index
        score = data.prob[:, cls_index]
        if truth.all() or not truth.any():
            self.add(
                "auc",
                cls,
                None,
                "none",
                note="AUC undefined: the set has only one class "
                f"({_count_phrase(data, self.classes)})",
            )
            return None, np.full(self.weights.shape[0], np.nan)
        estimate = roc_auc_score(truth, score)
        boot = bootstrap.weighted_auc(score, truth, self.weights)
        if self.patient_level:
            ci = stats.delong_ci(score, truth, self.level_ci)
            note = (
                ""
                if not math.isnan(ci.variance)
                else "DeLong's variance needs at least two patients of each class"
            )
        else:
            ci = stats.obuchowski_ci(score, truth, data.participant_ids, self.level_ci)
            note = (
                ""
                if not math.isnan(ci.variance)
                else "Obuchowski's variance needs at least two patients of each class"
            )
        self.add("auc", cls, estimate, ci.method, (ci.lower, ci.upper), None, note)
        self.add_boot("auc", cls, estimate, boot)
        return estimate, boot

    def add_rates(self, cls_index: int, with_f1: bool) -> None:
        """Sensitivity, specificity, PPV, NPV (and F1) of one class against the rest."""
        from sklearn.metrics import f1_score

        cm, cls, unit = self.cm, self.classes[cls_index], self.unit
        point = bootstrap.one_vs_rest_rates(cm[None].astype(float), cls_index)
        boot = bootstrap.one_vs_rest_rates(self.counts, cls_index)
        tp = int(cm[cls_index, cls_index])
        actual_pos = int(cm[cls_index, :].sum())
        actual_neg = int(cm.sum() - actual_pos)
        tn = int(cm.sum() - cm[cls_index, :].sum() - cm[:, cls_index].sum() + tp)
        for metric, count, nobs, empty in (
            ("sensitivity", tp, actual_pos, f"undefined: no {cls} {unit} in the set"),
            ("specificity", tn, actual_neg, f"undefined: no {unit} of another class"),
        ):
            estimate = point[metric][0]
            note = empty if nobs == 0 else ""
            if self.patient_level:
                self.add(
                    metric,
                    cls,
                    estimate,
                    "clopper_pearson" if nobs else "none",
                    stats.clopper_pearson(count, nobs, self.level_ci),
                    None,
                    note,
                )
            else:
                self.add_boot(metric, cls, estimate, boot[metric], note)
        for metric, empty in (
            ("ppv", f"undefined: no {unit} predicted {cls}"),
            ("npv", f"undefined: every {unit[:-1]} predicted {cls}"),
        ):
            estimate = point[metric][0]
            self.add_boot(
                metric,
                cls,
                estimate,
                boot[metric],
                "" if finite_or_none(estimate) is not None else empty,
            )
        if with_f1:
            data = self.data
            estimate = f1_score(data.y == cls_index, data.pred == cls_index, zero_division=np.nan)
            self.add_boot(
                "f1",
                cls,
                estimate,
                boot["f1"],
                ""
                if finite_or_none(estimate) is not None
                else f"undefined: no true or predicted {cls} {unit}",
            )

    def add_macro_rates(self) -> None:
        """Macro sensitivity and specificity (the mean over classes of the one-vs-rest
        figures) with the patient (cluster) bootstrap interval: a mean of proportions has
        no exact interval, so Clopper-Pearson stays with the per-class figures."""
        k = len(self.classes)
        point = [bootstrap.one_vs_rest_rates(self.cm[None].astype(float), i) for i in range(k)]
        boot = [bootstrap.one_vs_rest_rates(self.counts, i) for i in range(k)]
        for metric in ("sensitivity", "specificity"):
            estimate = float(np.mean([p[metric][0] for p in point]))
            self.add_boot(
                f"{metric}_macro",
                None,
                estimate,
                np.mean([b[metric] for b in boot], axis=0),
                ""
                if math.isfinite(estimate)
                else f"undefined: the {metric} of a class is undefined",
            )

    def add_binary(self, pos: int, accuracy: float) -> dict[str, Any]:
        """The figures of a binary model (positive class ``pos``); returns the summary."""
        from sklearn.metrics import brier_score_loss

        data = self.data
        summary: dict[str, Any] = {}
        summary["auc"], _ = self.add_auc(pos)
        self.add_boot("accuracy", None, accuracy, bootstrap.accuracy_from_counts(self.counts))
        self.add_rates(pos, with_f1=True)
        brier = brier_score_loss(data.y == pos, data.prob[:, pos])
        onehot = np.eye(len(self.classes))[data.y]
        self.add_boot(
            "brier",
            None,
            brier,
            bootstrap.weighted_brier(onehot, data.prob, self.weights, positive_index=pos),
        )
        return summary

    def add_multiclass(self, accuracy: float) -> dict[str, Any]:
        """The figures of a multi-class model (macro and per class); returns the summary."""
        from sklearn.metrics import brier_score_loss, f1_score

        data, k = self.data, len(self.classes)
        summary: dict[str, Any] = {}
        per_class = [self.add_auc(i) for i in range(k)]
        estimates = [e for e, _ in per_class]
        if any(e is None for e in estimates):
            self.add(
                "auc_macro",
                None,
                None,
                "none",
                note="macro AUC undefined: a class is missing from the set "
                f"({_count_phrase(data, self.classes)})",
            )
            summary["auc"] = None
        else:
            macro = float(np.mean(estimates))
            summary["auc"] = macro
            self.add_boot("auc_macro", None, macro, np.mean([b for _, b in per_class], axis=0))
        self.add_boot("accuracy", None, accuracy, bootstrap.accuracy_from_counts(self.counts))
        f1_macro = f1_score(
            data.y, data.pred, labels=list(range(k)), average="macro", zero_division=np.nan
        )
        boot_f1 = np.nanmean(
            np.stack([bootstrap.one_vs_rest_rates(self.counts, i)["f1"] for i in range(k)]), axis=0
        )
        self.add_boot("f1_macro", None, f1_macro, boot_f1)
        for i in range(k):
            self.add_rates(i, with_f1=True)
        self.add_macro_rates()
        # Integer labels: scikit-learn reads the probability columns in sorted label order.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*do not sum to one.*")
            brier = brier_score_loss(data.y, data.prob, labels=list(range(k)))
        onehot = np.eye(k)[data.y]
        self.add_boot(
            "brier", None, brier, bootstrap.weighted_brier(onehot, data.prob, self.weights)
        )
        return summary


def _lesion_count(model: ModelPredictions, data: LevelData) -> int | None:
    patients = set(data.patients)
    lesions = [r for r in model.rows if r["level"] == "lesion" and r["participant_id"] in patients]
    return len(lesions) if lesions else None
