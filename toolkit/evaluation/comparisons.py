"""Comparisons between the models of ``metcli evaluate``: paired tests on the units both
models evaluated, and the comparison table (models x metrics).

The patient is the unit of inference: at lesion level every test resamples patients
(see :mod:`metcli.evaluation.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from metcli.evaluation import bootstrap, stats
from metcli.evaluation.metrics import (
    CLUSTER_NOTE,
    LevelData,
    LevelResult,
    bootstrap_weights,
    finite_or_none,
)


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
    return [_auc_comparison(pair), *_per_class_delong(pair), _accuracy_comparison(pair)]


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
            "statistic": finite_or_none(test.statistic),
            "p_value": finite_or_none(test.p_value),
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
            test = bootstrap.bootstrap_paired_test(
                bootstrap.weighted_auc(da.prob[:, pos], truth, np.ones((1, n_common)))[0],
                bootstrap.weighted_auc(db.prob[:, pos], truth, np.ones((1, n_common)))[0],
                bootstrap.weighted_auc(da.prob[:, pos], truth, weights),
                bootstrap.weighted_auc(db.prob[:, pos], truth, weights),
            )
            test = _rename(test, "cluster bootstrap (patients resampled)")
    else:
        metric = "auc_macro"
        defined = all((da.y == i).any() and not (da.y == i).all() for i in range(len(classes)))
        if defined:

            def macro(prob, w):
                return np.mean(
                    [bootstrap.weighted_auc(prob[:, i], da.y == i, w) for i in range(len(classes))],
                    axis=0,
                )

            ones = np.ones((1, n_common))
            test = bootstrap.bootstrap_paired_test(
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


def _per_class_delong(pair: _Pair) -> list[dict]:
    """Several classes at patient level: the paired DeLong test of each class's
    one-vs-rest AUC (the two models' probabilities of that class on the same patients)."""
    if pair.a.model.binary or pair.level != "patient":
        return []
    rows = []
    da, db = pair.da, pair.db
    for i, cls in enumerate(pair.a.model.classes):
        truth = da.y == i
        if truth.any() and not truth.all():
            row = pair.row("auc", stats.delong_paired_test(da.prob[:, i], db.prob[:, i], truth))
        else:
            row = {
                **pair.base,
                **pair.common,
                "metric": "auc",
                "test": "none",
                "note": pair.note(f"AUC undefined: no {cls} patients or no others"),
            }
        rows.append({**row, "class": cls})
    return rows


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
    acc_a = bootstrap.accuracy_from_counts(
        bootstrap.confusion_counts(da.y, da.pred, k, pair.weights)
    )
    acc_b = bootstrap.accuracy_from_counts(
        bootstrap.confusion_counts(db.y, db.pred, k, pair.weights)
    )
    test = _rename(
        bootstrap.bootstrap_paired_test(
            float(correct_a.mean()), float(correct_b.mean()), acc_a, acc_b
        ),
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


#: The figures of the comparison table (``comparison_table.tsv``) and its columns.
TABLE_METRICS = ("auc", "accuracy", "f1", "sensitivity", "specificity", "ppv", "npv", "brier")
TABLE_COLUMNS = ("model", "level", "selected_by_cv", "n_patients", "n_lesions", *TABLE_METRICS)


def comparison_table(results: Sequence[LevelResult]) -> list[dict]:
    """Models x metrics, estimate and interval as text (Table 3 of Tharmaseelan et al. 2023)."""
    table = []
    for result in results:
        row: dict[str, Any] = {
            "model": result.model.name,
            "level": result.level,
            "selected_by_cv": result.model.selected,
            "n_patients": result.data.n_patients,
            "n_lesions": result.rows[0]["n_lesions"],
        }
        preferred = {
            "patient": ("delong", "clopper_pearson", "patient_bootstrap"),
            "lesion": ("obuchowski", "cluster_bootstrap"),
        }[result.level]
        for metric in TABLE_METRICS:
            wanted = metric
            if not result.model.binary and metric in ("auc", "f1", "sensitivity", "specificity"):
                wanted = f"{metric}_macro"
            candidates = [
                r
                for r in result.rows
                if r["metric"] == wanted
                and (r["class"] is None or r["class"] == result.model.positive_class)
            ]
            chosen = None
            for method in (*preferred, "none"):
                chosen = next((r for r in candidates if r["ci_method"] == method), None)
                if chosen:
                    break
            row[metric] = _cell(chosen)
        table.append(row)
    return table


def _cell(row: dict | None) -> str | None:
    if row is None or row["estimate"] is None:
        return None
    text = f"{row['estimate']:.3f}"
    if row["ci_lower"] is not None and row["ci_upper"] is not None:
        text += f" [{row['ci_lower']:.3f}, {row['ci_upper']:.3f}]"
    return text
