"""Figures of ``metcli evaluate``: per-level data, metrics with intervals, paired tests.

The patient is the unit of inference: every lesion-level interval resamples
patients (see :mod:`metcli.evaluation.evaluate`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from metcli.evaluation import stats
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
        threshold, source = None, "highest probability (multi-class)"
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
    clusters = stats.cluster_bootstrap_weights(_patient_strata(data), n_boot, seed)
    return stats.unit_weights(clusters, data.cluster)


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


def _f(value) -> float | None:
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
    counts = stats.confusion_counts(data.y, data.pred, k, weights)
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
        estimate = _f(estimate)
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
                "ci_lower": _f(low),
                "ci_upper": _f(high),
                "ci_method": method,
                "bootstrap_resamples": used,
                "note": "; ".join(notes) or None,
            }
        )

    def add_boot(self, metric, cls, estimate, boot_values, note=""):
        """One row with its patient (or cluster) bootstrap interval."""
        low, high, used = stats.percentile_interval(boot_values, self.level_ci)
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
        boot = stats.weighted_auc(score, truth, self.weights)
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
        point = stats.one_vs_rest_rates(cm[None].astype(float), cls_index)
        boot = stats.one_vs_rest_rates(self.counts, cls_index)
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
                metric, cls, estimate, boot[metric], "" if _f(estimate) is not None else empty
            )
        if with_f1:
            data = self.data
            estimate = f1_score(data.y == cls_index, data.pred == cls_index, zero_division=np.nan)
            self.add_boot(
                "f1",
                cls,
                estimate,
                boot["f1"],
                "" if _f(estimate) is not None else f"undefined: no true or predicted {cls} {unit}",
            )

    def add_binary(self, pos: int, accuracy: float) -> dict[str, Any]:
        """The figures of a binary model (positive class ``pos``); returns the summary."""
        from sklearn.metrics import brier_score_loss

        data = self.data
        summary: dict[str, Any] = {}
        summary["auc"], _ = self.add_auc(pos)
        self.add_boot("accuracy", None, accuracy, stats.accuracy_from_counts(self.counts))
        self.add_rates(pos, with_f1=True)
        brier = brier_score_loss(data.y == pos, data.prob[:, pos])
        onehot = np.eye(len(self.classes))[data.y]
        self.add_boot(
            "brier",
            None,
            brier,
            stats.weighted_brier(onehot, data.prob, self.weights, positive_index=pos),
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
        self.add_boot("accuracy", None, accuracy, stats.accuracy_from_counts(self.counts))
        f1_macro = f1_score(
            data.y, data.pred, labels=list(range(k)), average="macro", zero_division=np.nan
        )
        boot_f1 = np.nanmean(
            np.stack([stats.one_vs_rest_rates(self.counts, i)["f1"] for i in range(k)]), axis=0
        )
        self.add_boot("f1_macro", None, f1_macro, boot_f1)
        for i in range(k):
            self.add_rates(i, with_f1=True)
        # Integer labels: scikit-learn reads the probability columns in sorted label order.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*do not sum to one.*")
            brier = brier_score_loss(data.y, data.prob, labels=list(range(k)))
        onehot = np.eye(k)[data.y]
        self.add_boot("brier", None, brier, stats.weighted_brier(onehot, data.prob, self.weights))
        return summary


def _lesion_count(model: ModelPredictions, data: LevelData) -> int | None:
    patients = set(data.patients)
    lesions = [r for r in model.rows if r["level"] == "lesion" and r["participant_id"] in patients]
    return len(lesions) if lesions else None


# ============================================================================= comparisons
def _pair_units(a: LevelResult, b: LevelResult) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the units both results share (patients, or lesions by patient and id)."""
    keys_a = {key: i for i, key in enumerate(zip(a.data.participant_ids, a.data.lesion_ids))}
    idx_a, idx_b = [], []
    for j, key in enumerate(zip(b.data.participant_ids, b.data.lesion_ids)):
        if key in keys_a:
            idx_a.append(keys_a[key])
            idx_b.append(j)
    return np.array(idx_a, dtype=int), np.array(idx_b, dtype=int)


def _subset(data: LevelData, index: np.ndarray) -> LevelData:
    pids = [data.participant_ids[i] for i in index]
    patients = sorted(set(pids))
    position = {p: i for i, p in enumerate(patients)}
    return LevelData(
        level=data.level,
        derived=data.derived,
        participant_ids=pids,
        lesion_ids=[data.lesion_ids[i] for i in index],
        patients=patients,
        cluster=np.array([position[p] for p in pids], dtype=int),
        y=data.y[index],
        prob=data.prob[index],
        pred=data.pred[index],
        threshold=data.threshold,
        threshold_source=data.threshold_source,
    )


def compare_pair(a: LevelResult, b: LevelResult, *, n_boot: int, seed: int) -> list[dict]:
    """Paired tests of two models at one level, on the units both evaluated."""
    base = {"level": a.level, "model_a": a.model.name, "model_b": b.model.name}
    if a.model.classes != b.model.classes:
        if (
            sorted(a.model.classes) != sorted(b.model.classes)
            or a.model.positive_class != b.model.positive_class
        ):
            return [
                {
                    **base,
                    "metric": "auc",
                    "test": "none",
                    "note": "the models have different classes or positive classes",
                }
            ]
    pair = _pair(a, b, base)
    if pair.n_common == 0:
        return [
            {
                **base,
                **pair.common,
                "metric": "auc",
                "test": "none",
                "note": "the models share no evaluated units",
            }
        ]
    pair.weights = bootstrap_weights(pair.da, n_boot, seed)
    return [_auc_comparison(pair), _accuracy_comparison(pair)]


@dataclass
class _Pair:
    """Two models' results at one level, cut to the units both evaluated (b in a's classes)."""

    a: LevelResult
    b: LevelResult
    da: LevelData
    db: LevelData
    base: dict[str, Any]  # level and model names
    common: dict[str, Any]  # n_patients, n_lesions
    note_common: str
    weights: np.ndarray | None = None  # bootstrap unit weights of the shared units

    @property
    def level(self) -> str:
        return self.a.level

    @property
    def n_common(self) -> int:
        return self.da.n_units

    def note(self, *parts: str) -> str | None:
        """``parts`` with the notes every row of the pair carries."""
        return (
            "; ".join(
                p
                for p in (*parts, self.note_common, CLUSTER_NOTE if self.level == "lesion" else "")
                if p
            )
            or None
        )

    def row(self, metric: str, test: stats.PairedTest) -> dict:
        """The row of a paired test."""
        return {
            **self.base,
            **self.common,
            "metric": metric,
            "estimate_a": test.estimate_a,
            "estimate_b": test.estimate_b,
            "difference": test.difference,
            "test": test.method,
            "statistic": _f(test.statistic),
            "p_value": _f(test.p_value),
            "note": self.note(test.note),
        }


def _pair(a: LevelResult, b: LevelResult, base: dict[str, Any]) -> _Pair:
    """The shared units of ``a`` and ``b``, b's probabilities and predictions in a's classes."""
    level = a.level
    ia, ib = _pair_units(a, b)
    # Column order of b's probabilities in a's class order.
    order = [b.model.classes.index(c) for c in a.model.classes]
    da, db = _subset(a.data, ia), _subset(b.data, ib)
    db.prob = db.prob[:, order]
    db.pred = np.array([a.model.classes.index(b.model.classes[p]) for p in db.pred], dtype=int)
    n_common = da.n_units
    common = {"n_patients": da.n_patients, "n_lesions": n_common if level == "lesion" else None}
    note_common = ""
    if n_common < max(a.data.n_units, b.data.n_units):
        unit = "patients" if level == "patient" else "lesions"
        note_common = (
            f"paired on the {n_common} {unit} both models evaluated "
            f"({a.data.n_units} and {b.data.n_units})"
        )
    return _Pair(a=a, b=b, da=da, db=db, base=base, common=common, note_common=note_common)


def _auc_comparison(pair: _Pair) -> dict:
    """AUC (binary: of the positive class; several classes: macro one-vs-rest)."""
    da, db, weights, level = pair.da, pair.db, pair.weights, pair.level
    classes = pair.a.model.classes
    n_common = pair.n_common
    if pair.a.model.binary:
        pos = classes.index(pair.a.model.positive_class)
        truth = da.y == pos
        metric = "auc"
        defined = truth.any() and not truth.all()
        if defined and level == "patient":
            test = stats.delong_paired_test(da.prob[:, pos], db.prob[:, pos], truth)
        elif defined:
            test = stats.bootstrap_paired_test(
                stats.weighted_auc(da.prob[:, pos], truth, np.ones((1, n_common)))[0],
                stats.weighted_auc(db.prob[:, pos], truth, np.ones((1, n_common)))[0],
                stats.weighted_auc(da.prob[:, pos], truth, weights),
                stats.weighted_auc(db.prob[:, pos], truth, weights),
            )
            test = _rename(test, "cluster bootstrap (patients resampled)")
    else:
        metric = "auc_macro"
        defined = all((da.y == i).any() and not (da.y == i).all() for i in range(len(classes)))
        if defined:

            def macro(prob, w):
                return np.mean(
                    [stats.weighted_auc(prob[:, i], da.y == i, w) for i in range(len(classes))],
                    axis=0,
                )

            ones = np.ones((1, n_common))
            test = stats.bootstrap_paired_test(
                float(macro(da.prob, ones)[0]),
                float(macro(db.prob, ones)[0]),
                macro(da.prob, weights),
                macro(db.prob, weights),
            )
            test = _rename(
                test,
                "patient bootstrap"
                if level == "patient"
                else "cluster bootstrap (patients resampled)",
            )
    if defined:
        return pair.row(metric, test)
    return {
        **pair.base,
        **pair.common,
        "metric": metric,
        "test": "none",
        "note": pair.note("AUC undefined: the shared units have a single class"),
    }


def _accuracy_comparison(pair: _Pair) -> dict:
    """Accuracy: McNemar's test at patient level, the cluster bootstrap at lesion level."""
    da, db = pair.da, pair.db
    correct_a, correct_b = da.pred == da.y, db.pred == db.y
    if pair.level == "patient":
        mc = stats.mcnemar_test(correct_a, correct_b)
        return {
            **pair.base,
            **pair.common,
            "metric": "accuracy",
            "estimate_a": float(correct_a.mean()),
            "estimate_b": float(correct_b.mean()),
            "difference": float(correct_a.mean() - correct_b.mean()),
            "test": mc.method,
            "statistic": mc.statistic,
            "p_value": mc.p_value,
            "note": pair.note(
                f"{mc.only_a_correct} patients right only with "
                f"{pair.a.model.name}, {mc.only_b_correct} only with "
                f"{pair.b.model.name}"
            ),
        }
    k = len(pair.a.model.classes)
    acc_a = stats.accuracy_from_counts(stats.confusion_counts(da.y, da.pred, k, pair.weights))
    acc_b = stats.accuracy_from_counts(stats.confusion_counts(db.y, db.pred, k, pair.weights))
    test = _rename(
        stats.bootstrap_paired_test(float(correct_a.mean()), float(correct_b.mean()), acc_a, acc_b),
        "cluster bootstrap (patients resampled)",
    )
    return pair.row("accuracy", test)


def _rename(test: stats.PairedTest, method: str) -> stats.PairedTest:
    return stats.PairedTest(
        test.estimate_a,
        test.estimate_b,
        test.difference,
        test.statistic,
        test.p_value,
        method,
        test.note,
    )


TABLE_METRICS = ("auc", "accuracy", "f1", "sensitivity", "specificity", "ppv", "npv", "brier")


TABLE_COLUMNS = ("model", "level", "selected_by_cv", "n_patients", "n_lesions", *TABLE_METRICS)
