"""``metcli evaluate``: metrics with honest confidence intervals, model comparisons, plots.

Reads predictions in the format of DESIGN.md (``predictions.tsv``: participant_id,
lesion_id, level, model, set, ``prob_<class>`` for every class, predicted) and the
labels of ``participants.tsv``, and writes for every model and level:

* ``metrics.tsv`` (one row per figure and interval method) and ``metrics.json`` (the
  same figures with the confusion matrices, thresholds and their sources, the
  positive class, and the provenance of the run: it is the sidecar of metrics.tsv);
* plots (PNG) with the numbers behind each (TSV) and a provenance sidecar (JSON):
  ``roc_<level>``, ``calibration_<level>``, ``confusion_<level>``, ``lesion_grid``;
* with ``compare=True``: ``comparisons.tsv`` (paired tests between models) and
  ``comparison_table.tsv`` (models x metrics, as Table 3 of Tharmaseelan et al. 2023).
* ``report.html``: one self-contained page (plots inlined) with all of the above, the
  TRIPOD+AI and CLAIM items, the methods, settings and versions (:mod:`metcli.report`).

**The patient is the unit of inference.** Patient-level figures come first. Their 95%
intervals: AUC by DeLong (and by the patient bootstrap), sensitivity and specificity by
Clopper-Pearson, every other figure by the patient bootstrap. Lesions of one patient
are not independent, so every lesion-level interval resamples *patients* (cluster
bootstrap) and the lesion-level AUC also has Obuchowski's clustered variance; no
lesion-level figure treats lesions as independent. The bootstrap is stratified by the
patient's true class and uses percentile intervals; the same seed gives the same
resamples, and two models on the same patients share them (paired tests).

**Predictions.** A JSON sidecar beside ``predictions.tsv`` (``predictions.json``) may give,
at its top level or per model under ``"models": {"<model>": {...}}``:
``classes`` (order), ``positive_class``, ``threshold`` (a number, or
``{"patient": t, "lesion": t}``), ``threshold_source`` (how it was chosen, for example
"youden on out-of-fold predictions") and ``selected`` (true for the model chosen by
cross-validation). Without them, the classes are in the order of the prob_ columns,
the positive class is the second one (``--positive-class`` chooses), and the binary
threshold is 0.5 on ``prob_<positive>`` ("default 0.5"); a case is called positive when
its probability is at least the threshold. Several classes: the predicted class is the
one of highest probability. When a model has lesion rows but no patient rows, the
patient's probabilities are the mean of its lesions' probabilities (reported as
derived).
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli import stats
from metcli.errors import InputError, UsageError

log = logging.getLogger(__name__)

LEVELS = ("patient", "lesion")
SETS = ("train", "val", "test")
PROB_PREFIX = "prob_"
PREDICTIONS_FILE = "predictions.tsv"
REQUIRED_COLUMNS = ("participant_id", "lesion_id", "level", "model", "set", "predicted")
MIN_BOOTSTRAP = 100

CLUSTER_NOTE = "clustered: patients resampled, lesions not treated as independent"
LESION_NOTE = ("lesions of one patient are not independent: every lesion-level interval "
               "resamples patients (cluster bootstrap, stratified by the patient's class) and "
               "the lesion-level AUC also has Obuchowski's (1997) clustered variance; no "
               "lesion-level figure treats lesions as independent")
DERIVED_NOTE = ("derived: no patient rows, so each patient's probabilities are the mean of "
                "its lesions' probabilities")
DEFAULT_THRESHOLD = 0.5
DEFAULT_THRESHOLD_SOURCE = "default 0.5"

METRIC_COLUMNS = ("model", "set", "level", "derived_from_lesions", "metric", "class",
                  "estimate", "ci_lower", "ci_upper", "ci_method", "ci_level",
                  "bootstrap_resamples", "n_patients", "n_lesions", "positive_class",
                  "threshold", "threshold_source", "note")
COMPARISON_COLUMNS = ("level", "model_a", "model_b", "metric", "estimate_a", "estimate_b",
                      "difference", "test", "statistic", "p_value", "n_patients", "n_lesions",
                      "note")
TABLE_METRICS = ("auc", "accuracy", "f1", "sensitivity", "specificity", "ppv", "npv", "brier")
TABLE_COLUMNS = ("model", "level", "selected_by_cv", "n_patients", "n_lesions", *TABLE_METRICS)


# ============================================================================= reading inputs
@dataclass
class ModelPredictions:
    """One model's predictions from one file, with what its sidecar says about them."""

    name: str
    path: Path
    sidecar: Path | None
    classes: list[str]
    positive_class: str | None
    positive_source: str
    thresholds: dict[str, tuple[float, str]]
    selected: bool | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def levels(self) -> set[str]:
        return {r["level"] for r in self.rows}


def find_prediction_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Prediction tables: files as given; for a folder, its own ``predictions.tsv`` (the
    group table train-radiomics and predict write), else every ``predictions.tsv`` below it."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            top = path / PREDICTIONS_FILE
            found = [top] if top.is_file() else sorted(path.rglob(PREDICTIONS_FILE))
            if not found:
                raise InputError(f"no {PREDICTIONS_FILE} in this folder or below it", path=path,
                                 fix="give the predictions table, or the folder predict or "
                                     "train-radiomics wrote")
        else:
            raise InputError("not found", path=path, fix="check the path")
        for candidate in found:
            if candidate.resolve() not in {f.resolve() for f in files}:
                files.append(candidate)
    return files


def read_labels(path: str | Path, column: str = "primary") -> tuple[Path, dict[str, str | None]]:
    """``{participant_id: label}`` from participants.tsv (a file, or a folder holding one);
    None for a participant whose label is ``n/a``."""
    from metcli.fileio import NA, read_tsv

    path = Path(path)
    if path.is_dir():
        path = path / "participants.tsv"
    rows = read_tsv(path, required=("participant_id", column))
    labels: dict[str, str | None] = {}
    for number, row in enumerate(rows, start=2):
        pid = row["participant_id"]
        if pid in labels:
            raise InputError(f"{pid} is listed twice (line {number})", path=path,
                             fix="keep one row per participant")
        value = row.get(column)
        labels[pid] = None if value in (None, "", NA) else value
    return path, labels


def _parse_probability(value: str, column: str, number: int, path: Path) -> float:
    try:
        prob = float(value)
    except (TypeError, ValueError):
        raise InputError(f"line {number}: {column} = {value!r} is not a number", path=path,
                         fix="write probabilities as numbers between 0 and 1") from None
    if not math.isfinite(prob) or prob < 0.0 or prob > 1.0:
        raise InputError(f"line {number}: {column} = {value} is outside [0, 1]", path=path,
                         fix="write probabilities (for example softmax outputs), not scores "
                             "or logits")
    return prob


def read_predictions(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Classes (order of the prob_ columns) and typed rows of a predictions table.

    Rows are checked against the ``predictions`` schema after the clearer checks here.
    """
    from metcli.fileio import NA, read_tsv
    from metcli.schemas import validate_rows

    raw = read_tsv(path, required=REQUIRED_COLUMNS)
    if not raw:
        raise InputError("the predictions table has no rows", path=path,
                         fix="give a table with at least one prediction")
    columns = list(raw[0].keys())
    prob_columns = [c for c in columns if c.startswith(PROB_PREFIX)]
    classes = [c[len(PROB_PREFIX):] for c in prob_columns]
    if len(classes) < 2:
        raise InputError(f"{len(classes)} prob_<class> column(s); one per class is needed "
                         "(at least two)", path=path,
                         fix="write a prob_<class> column for every class of the model")
    rows = []
    for number, row in enumerate(raw, start=2):
        typed: dict[str, Any] = {k: (None if v in (NA, "") else v) for k, v in row.items()}
        for column in prob_columns:
            typed[column] = _parse_probability(row[column], column, number, path)
        if typed.get("predicted") is not None and typed["predicted"] not in classes:
            raise InputError(f"line {number}: predicted {typed['predicted']!r} is not one of "
                             f"the classes of the prob_ columns ({', '.join(classes)})",
                             path=path, fix="write the predicted class name as in the prob_ "
                                            "columns")
        rows.append(typed)
    validate_rows(rows, columns, "predictions", where=path)
    off = sum(1 for r in rows if abs(sum(r[c] for c in prob_columns) - 1.0) > 1e-3)
    if off:
        log.warning("%s: the probabilities of %d of %d rows do not sum to 1 (within 0.001); "
                    "they are used as given", path, off, len(rows))
    return classes, rows


def _sidecar_settings(doc: dict, model: str, path: Path) -> dict[str, Any]:
    settings = {k: doc[k] for k in ("classes", "positive_class", "threshold",
                                    "threshold_source", "selected") if k in doc}
    per_model = doc.get("models")
    if isinstance(per_model, dict) and isinstance(per_model.get(model), dict):
        settings.update({k: v for k, v in per_model[model].items()
                         if k in ("classes", "positive_class", "threshold", "threshold_source",
                                  "selected")})
    checks = {"classes": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
              "positive_class": lambda v: isinstance(v, str),
              "threshold_source": lambda v: isinstance(v, str),
              "selected": lambda v: isinstance(v, bool),
              "threshold": lambda v: _valid_threshold(v)}
    for key, ok in checks.items():
        if key in settings and not ok(settings[key]):
            raise InputError(f"the sidecar's {key!r} ({settings[key]!r}) is not valid for model "
                             f"{model}", path=path,
                             fix="classes: a list of names; positive_class, threshold_source: "
                                 "text; selected: true/false; threshold: a number in [0, 1] or "
                                 '{"patient": t, "lesion": t}')
    return settings


def _valid_threshold(value) -> bool:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0

    if isinstance(value, dict):
        return bool(value) and set(value) <= set(LEVELS) and all(number(v) for v in value.values())
    return number(value)


def load_predictions(files: Sequence[Path], labels: dict[str, str | None], labels_path: Path,
                     *, positive_class: str | None = None, eval_set: str = "test",
                     label_column: str = "primary") -> list[ModelPredictions]:
    """Read, check and group the predictions by model; keep the rows of ``eval_set``."""
    from metcli.bids import sidecar_path
    from metcli.fileio import read_json

    models: dict[str, ModelPredictions] = {}
    for path in files:
        classes, rows = read_predictions(path)
        side = sidecar_path(path)
        doc = read_json(side) if side.is_file() else {}
        if not isinstance(doc, dict):
            raise InputError("the sidecar is not a JSON object", path=side,
                             fix="write the sidecar as a JSON object")
        names = sorted({r["model"] for r in rows})
        for name in names:
            if name in models:
                raise InputError(f"model {name!r} is also in {models[name].path}", path=path,
                                 fix="give each model a distinct name in the model column, or "
                                     "evaluate the files separately")
            model_rows = [r for r in rows if r["model"] == name]
            models[name] = _model_from_rows(name, path, side if side.is_file() else None,
                                            classes, model_rows,
                                            _sidecar_settings(doc, name, side), labels,
                                            labels_path, positive_class, eval_set,
                                            label_column)
    return list(models.values())


def _shown(items: Sequence[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit
                                       else "")


def _model_from_rows(name, path, side, classes, rows, settings, labels, labels_path,
                     positive_class, eval_set, label_column) -> ModelPredictions:
    if "classes" in settings:
        if sorted(settings["classes"]) != sorted(classes):
            raise InputError(f"the sidecar's classes ({', '.join(settings['classes'])}) differ "
                             f"from the prob_ columns ({', '.join(classes)}) of model {name}",
                             path=side, fix="make the sidecar's classes match the prob_ columns")
        classes = list(settings["classes"])
    # A participant in two sets of one model is a leak, whatever set is evaluated.
    sets: dict[str, str] = {}
    for row in rows:
        pid, this = row["participant_id"], row["set"]
        if sets.setdefault(pid, this) != this:
            raise InputError(f"{pid} is in both the {sets[pid]} and the {this} set of model "
                             f"{name}", path=path,
                             fix="split by patient: each participant belongs to one set")
    present = {r["participant_id"] for r in rows}
    unknown = sorted(present - set(labels))
    if unknown:
        raise InputError(f"unknown participant(s) {_shown(unknown)} of model {name}: not in "
                         f"{labels_path}", path=path,
                         fix=f"add them with their label to {labels_path.name}, or remove their "
                             "predictions")
    unlabelled = sorted(p for p in present if labels[p] is None)
    if unlabelled:
        raise InputError(f"participant(s) {_shown(unlabelled)} of model {name} have no label "
                         f"(n/a) in the {label_column!r} column", path=labels_path,
                         fix="fill in their label, or remove their predictions")
    for pid in sorted({r["participant_id"] for r in rows}):
        if labels[pid] not in classes:
            raise InputError(f"the label {labels[pid]!r} of {pid} is not a class of model {name} "
                             f"({', '.join(classes)})", path=labels_path,
                             fix="use the class names of the prob_ columns as labels")
    seen: set[tuple] = set()
    for row in rows:
        key = (row["level"], row["participant_id"], row["lesion_id"])
        if key in seen:
            what = (f"lesion {row['lesion_id']} of " if row["level"] == "lesion" else "")
            raise InputError(f"{what}{row['participant_id']} has two {row['level']} rows for "
                             f"model {name}", path=path, fix="keep one prediction per row key")
        seen.add(key)
    kept = [r for r in rows if r["set"] == eval_set]
    if not kept:
        present = ", ".join(sorted({r["set"] for r in rows}))
        raise InputError(f"model {name} has no rows in the {eval_set} set (it has: {present})",
                         path=path, fix="choose the set with --set, or give the right file")
    binary = len(classes) == 2
    if binary:
        if positive_class is not None:
            if positive_class not in classes:
                raise UsageError(f"--positive-class {positive_class!r} is not a class of model "
                                 f"{name} ({', '.join(classes)})",
                                 fix="choose one of the model's classes")
            positive, source = positive_class, "--positive-class"
        elif "positive_class" in settings:
            positive, source = settings["positive_class"], "sidecar"
            if positive not in classes:
                raise InputError(f"the sidecar's positive_class {positive!r} is not a class of "
                                 f"model {name}", path=side,
                                 fix="name one of the classes of the prob_ columns")
        else:
            positive = classes[1]
            source = "default: the second class in order (choose with --positive-class)"
    else:
        positive, source = None, "multi-class: one class against the rest, per class"
    thresholds: dict[str, tuple[float, str]] = {}
    spec = settings.get("threshold")
    origin = settings.get("threshold_source", "sidecar")
    for level in LEVELS:
        if not binary:
            continue
        if isinstance(spec, dict):
            value = spec.get(level)
        else:
            value = spec
        if value is None:
            thresholds[level] = (DEFAULT_THRESHOLD, DEFAULT_THRESHOLD_SOURCE)
        else:
            thresholds[level] = (float(value), str(origin))
    return ModelPredictions(name=name, path=path, sidecar=side, classes=classes,
                            positive_class=positive, positive_source=source,
                            thresholds=thresholds, selected=settings.get("selected"), rows=kept)


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
        rows = [{"participant_id": pid, "lesion_id": None,
                 **{c: float(np.mean([r[c] for r in group])) for c in columns}}
                for pid, group in grouped.items()]
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
        log.warning("model %s, %s level: the predicted column differs from the decision rule "
                    "(%s) for %d of %d rows; the rule is used", model.name, level, source,
                    disagree, len(rows))
    return LevelData(level=level, derived=derived,
                     participant_ids=[r["participant_id"] for r in rows],
                     lesion_ids=[r.get("lesion_id") for r in rows], patients=patients,
                     cluster=np.array([index[r["participant_id"]] for r in rows], dtype=int),
                     y=y, prob=prob, pred=pred, threshold=threshold, threshold_source=source)


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


def compute_level(model: ModelPredictions, data: LevelData, *, n_boot: int, seed: int,
                  level_ci: float = 0.95) -> LevelResult:
    """Every figure of one model at one level with its interval(s)."""
    from sklearn.metrics import (accuracy_score, brier_score_loss, confusion_matrix, f1_score,
                                 roc_auc_score)

    classes = model.classes
    k = len(classes)
    patient_level = data.level == "patient"
    boot_method = "patient_bootstrap" if patient_level else "cluster_bootstrap"
    weights = bootstrap_weights(data, n_boot, seed)
    counts = stats.confusion_counts(data.y, data.pred, k, weights)
    cm = confusion_matrix(data.y, data.pred, labels=list(range(k)))
    onehot = np.eye(k)[data.y]
    n_lesions = data.n_units if not patient_level else _lesion_count(model, data)
    base = {"model": model.name, "set": model.rows[0]["set"], "level": data.level,
            "derived_from_lesions": data.derived, "ci_level": level_ci,
            "n_patients": data.n_patients, "n_lesions": n_lesions,
            "positive_class": model.positive_class, "threshold": data.threshold,
            "threshold_source": data.threshold_source}
    rows: list[dict[str, Any]] = []
    derived_note = DERIVED_NOTE if data.derived else ""

    def add(metric, cls, estimate, method, interval=(None, None), used=None, note=""):
        notes = [n for n in (note, derived_note if patient_level else "",
                             CLUSTER_NOTE if not patient_level and method != "none" else "") if n]
        low, high = interval
        estimate = _f(estimate)
        if estimate is None:  # undefined figure: no interval either
            low = high = used = None
            method = "none"
        notes = [n for n in notes if not (n == CLUSTER_NOTE and method == "none")]
        rows.append({**base, "metric": metric, "class": cls, "estimate": estimate,
                     "ci_lower": _f(low), "ci_upper": _f(high), "ci_method": method,
                     "bootstrap_resamples": used, "note": "; ".join(notes) or None})

    def add_boot(metric, cls, estimate, boot_values, note=""):
        low, high, used = stats.percentile_interval(boot_values, level_ci)
        add(metric, cls, estimate, boot_method, (low, high), used, note)

    def add_auc(cls_index):
        cls = classes[cls_index]
        truth = data.y == cls_index
        score = data.prob[:, cls_index]
        if truth.all() or not truth.any():
            add("auc", cls, None, "none",
                note=f"AUC undefined: the set has only one class ({_count_phrase(data, classes)})")
            return None, np.full(weights.shape[0], np.nan)
        estimate = roc_auc_score(truth, score)
        boot = stats.weighted_auc(score, truth, weights)
        if patient_level:
            ci = stats.delong_ci(score, truth, level_ci)
            note = "" if not math.isnan(ci.variance) else \
                "DeLong's variance needs at least two patients of each class"
        else:
            ci = stats.obuchowski_ci(score, truth, data.participant_ids, level_ci)
            note = "" if not math.isnan(ci.variance) else \
                "Obuchowski's variance needs at least two patients of each class"
        add("auc", cls, estimate, ci.method, (ci.lower, ci.upper), None, note)
        add_boot("auc", cls, estimate, boot)
        return estimate, boot

    def add_rates(cls_index, with_f1: bool):
        cls = classes[cls_index]
        point = stats.one_vs_rest_rates(cm[None].astype(float), cls_index)
        boot = stats.one_vs_rest_rates(counts, cls_index)
        tp = int(cm[cls_index, cls_index])
        actual_pos = int(cm[cls_index, :].sum())
        actual_neg = int(cm.sum() - actual_pos)
        tn = int(cm.sum() - cm[cls_index, :].sum() - cm[:, cls_index].sum() + tp)
        unit = "patients" if patient_level else "lesions"
        for metric, count, nobs, empty in (
                ("sensitivity", tp, actual_pos, f"undefined: no {cls} {unit} in the set"),
                ("specificity", tn, actual_neg, f"undefined: no {unit} of another class")):
            estimate = point[metric][0]
            note = empty if nobs == 0 else ""
            if patient_level:
                add(metric, cls, estimate, "clopper_pearson" if nobs else "none",
                    stats.clopper_pearson(count, nobs, level_ci), None, note)
            else:
                add_boot(metric, cls, estimate, boot[metric], note)
        for metric, empty in (("ppv", f"undefined: no {unit} predicted {cls}"),
                              ("npv", f"undefined: every {unit[:-1]} predicted {cls}")):
            estimate = point[metric][0]
            add_boot(metric, cls, estimate, boot[metric], "" if _f(estimate) is not None else empty)
        if with_f1:
            estimate = f1_score(data.y == cls_index, data.pred == cls_index, zero_division=np.nan)
            add_boot("f1", cls, estimate, boot["f1"],
                     "" if _f(estimate) is not None else "undefined: no true or predicted "
                                                         f"{cls} {unit}")

    summary: dict[str, Any] = {}
    accuracy = accuracy_score(data.y, data.pred)
    if model.binary:
        pos = classes.index(model.positive_class)
        summary["auc"], _ = add_auc(pos)
        add_boot("accuracy", None, accuracy, stats.accuracy_from_counts(counts))
        add_rates(pos, with_f1=True)
        brier = brier_score_loss(data.y == pos, data.prob[:, pos])
        add_boot("brier", None, brier,
                 stats.weighted_brier(onehot, data.prob, weights, positive_index=pos))
    else:
        per_class = [add_auc(i) for i in range(k)]
        estimates = [e for e, _ in per_class]
        if any(e is None for e in estimates):
            add("auc_macro", None, None, "none",
                note="macro AUC undefined: a class is missing from the set "
                     f"({_count_phrase(data, classes)})")
            summary["auc"] = None
        else:
            macro = float(np.mean(estimates))
            summary["auc"] = macro
            add_boot("auc_macro", None, macro, np.mean([b for _, b in per_class], axis=0))
        add_boot("accuracy", None, accuracy, stats.accuracy_from_counts(counts))
        f1_macro = f1_score(data.y, data.pred, labels=list(range(k)), average="macro",
                            zero_division=np.nan)
        boot_f1 = np.nanmean(np.stack([stats.one_vs_rest_rates(counts, i)["f1"]
                                       for i in range(k)]), axis=0)
        add_boot("f1_macro", None, f1_macro, boot_f1)
        for i in range(k):
            add_rates(i, with_f1=True)
        # Integer labels: scikit-learn reads the probability columns in sorted label order.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*do not sum to one.*")
            brier = brier_score_loss(data.y, data.prob, labels=list(range(k)))
        add_boot("brier", None, brier, stats.weighted_brier(onehot, data.prob, weights))
    summary["accuracy"] = float(accuracy)
    return LevelResult(model=model, data=data, rows=rows, confusion=cm, weights=weights,
                       summary=summary)


def _lesion_count(model: ModelPredictions, data: LevelData) -> int | None:
    patients = set(data.patients)
    lesions = [r for r in model.rows if r["level"] == "lesion" and r["participant_id"] in patients]
    return len(lesions) if lesions else None


# ============================================================================= comparisons
def _pair_units(a: LevelResult, b: LevelResult) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the units both results share (patients, or lesions by patient and id)."""
    keys_a = {(p, l): i for i, (p, l) in enumerate(zip(a.data.participant_ids,
                                                        a.data.lesion_ids))}
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
    return LevelData(level=data.level, derived=data.derived, participant_ids=pids,
                     lesion_ids=[data.lesion_ids[i] for i in index], patients=patients,
                     cluster=np.array([position[p] for p in pids], dtype=int),
                     y=data.y[index], prob=data.prob[index], pred=data.pred[index],
                     threshold=data.threshold, threshold_source=data.threshold_source)


def compare_pair(a: LevelResult, b: LevelResult, *, n_boot: int, seed: int) -> list[dict]:
    """Paired tests of two models at one level, on the units both evaluated."""
    level = a.level
    base = {"level": level, "model_a": a.model.name, "model_b": b.model.name}
    if a.model.classes != b.model.classes:
        if sorted(a.model.classes) != sorted(b.model.classes) or \
                a.model.positive_class != b.model.positive_class:
            return [{**base, "metric": "auc", "test": "none",
                     "note": "the models have different classes or positive classes"}]
    ia, ib = _pair_units(a, b)
    # Column order of b's probabilities in a's class order.
    order = [b.model.classes.index(c) for c in a.model.classes]
    da, db = _subset(a.data, ia), _subset(b.data, ib)
    db.prob = db.prob[:, order]
    db.pred = np.array([a.model.classes.index(b.model.classes[p]) for p in db.pred], dtype=int)
    n_common = da.n_units
    common = {"n_patients": da.n_patients,
              "n_lesions": n_common if level == "lesion" else None}
    note_common = ""
    if n_common < max(a.data.n_units, b.data.n_units):
        unit = "patients" if level == "patient" else "lesions"
        note_common = (f"paired on the {n_common} {unit} both models evaluated "
                       f"({a.data.n_units} and {b.data.n_units})")
    rows = []
    if n_common == 0:
        return [{**base, **common, "metric": "auc", "test": "none",
                 "note": "the models share no evaluated units"}]
    weights = bootstrap_weights(da, n_boot, seed)
    classes = a.model.classes

    def note(*parts):
        return "; ".join(p for p in (*parts, note_common,
                                     CLUSTER_NOTE if level == "lesion" else "") if p) or None

    # AUC (binary: of the positive class; several classes: macro one-vs-rest).
    if a.model.binary:
        pos = classes.index(a.model.positive_class)
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
                stats.weighted_auc(db.prob[:, pos], truth, weights))
            test = _rename(test, "cluster bootstrap (patients resampled)")
    else:
        metric = "auc_macro"
        defined = all((da.y == i).any() and not (da.y == i).all() for i in range(len(classes)))
        if defined:
            def macro(prob, w):
                return np.mean([stats.weighted_auc(prob[:, i], da.y == i, w)
                                for i in range(len(classes))], axis=0)
            ones = np.ones((1, n_common))
            test = stats.bootstrap_paired_test(float(macro(da.prob, ones)[0]),
                                               float(macro(db.prob, ones)[0]),
                                               macro(da.prob, weights), macro(db.prob, weights))
            test = _rename(test, "patient bootstrap" if level == "patient"
                           else "cluster bootstrap (patients resampled)")
    if defined:
        rows.append({**base, **common, "metric": metric, "estimate_a": test.estimate_a,
                     "estimate_b": test.estimate_b, "difference": test.difference,
                     "test": test.method, "statistic": _f(test.statistic),
                     "p_value": _f(test.p_value), "note": note(test.note)})
    else:
        rows.append({**base, **common, "metric": metric, "test": "none",
                     "note": note("AUC undefined: the shared units have a single class")})
    # Accuracy.
    correct_a, correct_b = da.pred == da.y, db.pred == db.y
    if level == "patient":
        mc = stats.mcnemar_test(correct_a, correct_b)
        rows.append({**base, **common, "metric": "accuracy",
                     "estimate_a": float(correct_a.mean()), "estimate_b": float(correct_b.mean()),
                     "difference": float(correct_a.mean() - correct_b.mean()), "test": mc.method,
                     "statistic": mc.statistic, "p_value": mc.p_value,
                     "note": note(f"{mc.only_a_correct} patients right only with {a.model.name}, "
                                  f"{mc.only_b_correct} only with {b.model.name}")})
    else:
        acc_a = stats.accuracy_from_counts(stats.confusion_counts(da.y, da.pred, len(classes),
                                                                  weights))
        acc_b = stats.accuracy_from_counts(stats.confusion_counts(db.y, db.pred, len(classes),
                                                                  weights))
        test = _rename(stats.bootstrap_paired_test(float(correct_a.mean()),
                                                   float(correct_b.mean()), acc_a, acc_b),
                       "cluster bootstrap (patients resampled)")
        rows.append({**base, **common, "metric": "accuracy", "estimate_a": test.estimate_a,
                     "estimate_b": test.estimate_b, "difference": test.difference,
                     "test": test.method, "statistic": _f(test.statistic),
                     "p_value": _f(test.p_value), "note": note(test.note)})
    return rows


def _rename(test: stats.PairedTest, method: str) -> stats.PairedTest:
    return stats.PairedTest(test.estimate_a, test.estimate_b, test.difference, test.statistic,
                            test.p_value, method, test.note)


# ============================================================================= the run
@dataclass
class EvaluationResult:
    """What :func:`evaluate` did: the files it wrote and a summary per model and level."""

    out_dir: Path
    skipped: bool
    files: list[Path] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)


def _input_roots(inputs: Sequence[Path], labels_path: Path) -> dict[str, Path]:
    roots: dict[str, Path] = {}
    folders = []
    for item in inputs:
        folder = Path(item) if Path(item).is_dir() else Path(item).parent
        if folder.resolve() not in [f.resolve() for f in folders]:
            folders.append(folder)
    for number, folder in enumerate(folders, start=1):
        roots["predictions" if number == 1 else f"predictions{number}"] = folder
    if labels_path.parent.resolve() not in [f.resolve() for f in folders]:
        roots["labels"] = labels_path.parent
    return roots


def evaluate(predictions: Sequence[str | Path], out_dir: str | Path, *, labels: str | Path,
             label_column: str = "primary", level: str = "both",
             positive_class: str | None = None, n_bootstrap: int = 2000, seed: int = 0,
             compare: bool = False, eval_set: str = "test", overwrite: bool = False,
             confidence_level: float = 0.95, draw_plots: bool = True,
             raw: str | Path | None = None, lesions: str | Path | None = None,
             overlay_lesions: int = 3) -> EvaluationResult:
    """Evaluate prediction tables against the labels; write metrics, comparisons and plots.

    Args:
        predictions: ``predictions.tsv`` files, or folders searched for them.
        out_dir: the folder to write (a derivative dataset).
        labels: ``participants.tsv`` (or the folder that holds it).
        label_column: the column of the labels (``primary``).
        level: ``patient``, ``lesion`` or ``both``.
        positive_class: the positive class of binary models (else the sidecar's, else the
            second class).
        n_bootstrap: resamples of the patient bootstrap (at least 100).
        seed: seed of the bootstrap; the same seed gives the same intervals.
        compare: test the models against each other (needs two or more).
        eval_set: the set evaluated (``train``, ``val`` or ``test``).
        overwrite: redo the run even when its outputs are up to date.
        confidence_level: of every interval (0.95).
        draw_plots: write the figures and the tables behind them.
        raw, lesions: the raw dataset (CTs) and split-lesions' output (lesion maps) of the
            evaluated patients: the report then shows their lesion masks on the CT (one PNG
            per patient, ``sub-<id>[_ses-<s>][_ce-<phase>]_desc-lesions_overlay.png``, see
            :func:`metcli.plots.overlay_panels`). Give both or neither.
        overlay_lesions: the most lesions shown per patient.

    Raises:
        UsageError: for bad arguments; InputError for bad inputs (nothing is written).
    """
    from metcli import plots, report
    from metcli.bids import sidecar_path
    from metcli.fileio import OutputSet, check_output_not_inside_input, dump_json_to, write_tsv_to
    from metcli.provenance import Step, write_dataset_description
    from metcli.schemas import validate

    out_dir = Path(out_dir)
    if level not in (*LEVELS, "both"):
        raise UsageError(f"--level {level!r} is not one of patient, lesion, both")
    if eval_set not in SETS:
        raise UsageError(f"--set {eval_set!r} is not one of {', '.join(SETS)}")
    if n_bootstrap < MIN_BOOTSTRAP:
        raise UsageError(f"--bootstrap {n_bootstrap} is too few resamples for a 95% interval",
                         fix=f"use at least {MIN_BOOTSTRAP} (2000 is usual)")
    if not 0.5 <= confidence_level < 1.0:
        raise UsageError(f"confidence level {confidence_level} must lie in [0.5, 1)")
    if not predictions:
        raise UsageError("no predictions given", fix="give one or more predictions.tsv files "
                                                     "or folders")
    if (raw is None) != (lesions is None):
        raise UsageError("--raw and --lesions go together",
                         fix="give the CTs and the lesion maps of the evaluated patients, or "
                             "neither")
    if raw is not None and (isinstance(overlay_lesions, bool) or overlay_lesions < 1):
        raise UsageError(f"--overlay-lesions must be 1 or more, got {overlay_lesions!r}")
    for folder, option in ((raw, "--raw"), (lesions, "--lesions")):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"the {option} folder does not exist", path=folder,
                             fix="give the raw dataset and split-lesions' output")
    labels_path, label_map = read_labels(labels, label_column)
    files = find_prediction_files(predictions)
    roots = _input_roots([Path(p) for p in predictions], labels_path)
    # Folders are searched for predictions: the output must not lie inside one.
    check_output_not_inside_input(out_dir, [Path(p) for p in predictions if Path(p).is_dir()])
    models = load_predictions(files, label_map, labels_path, positive_class=positive_class,
                              eval_set=eval_set, label_column=label_column)
    overlay_found: dict[str, dict] = {}
    overlay_missing: dict[str, str] = {}
    if raw is not None:
        if "labels" in roots and roots["labels"].resolve() == Path(raw).resolve():
            del roots["labels"]  # participants.tsv of the raw dataset: name it bids:raw:
        roots.update({"raw": Path(raw), "lesions": Path(lesions)})
        check_output_not_inside_input(out_dir, [Path(raw), Path(lesions)])
        patients = sorted({r["participant_id"] for m in models for r in m.rows})
        overlay_found, overlay_missing = plots.overlay_sources(Path(raw), Path(lesions),
                                                               patients)
        for pid, why in overlay_missing.items():
            log.warning("%s: no lesion overlay (%s)", pid, why)
    if compare and len(models) < 2:
        raise UsageError(f"--compare needs two or more models; found {len(models)} "
                         f"({', '.join(m.name for m in models)})",
                         fix="give more predictions, or leave out --compare")
    wanted_levels = LEVELS if level == "both" else (level,)
    settings = {"level": level, "label_column": label_column, "positive_class": positive_class,
                "n_bootstrap": n_bootstrap, "seed": seed, "compare": compare, "set": eval_set,
                "confidence_level": confidence_level, "plots": draw_plots}
    if raw is not None:
        settings["overlays"] = {"lesions_per_patient": overlay_lesions,
                                "window_hu": list(plots.OVERLAY_WINDOW_HU)}
    step = Step("evaluate", out_dir, roots, settings)
    input_files = list(files) + [sidecar_path(f) for f in files if sidecar_path(f).is_file()]
    input_files.append(labels_path)
    for source in overlay_found.values():
        input_files += [source["ct"], source["map"], source["table"]]
    inputs = step.inputs(input_files)
    metrics_json = out_dir / "metrics.json"
    if not overwrite and step.is_done(metrics_json, inputs):
        log.info("evaluate: outputs are up to date in %s (use --overwrite to redo)", out_dir)
        return EvaluationResult(out_dir=out_dir, skipped=True)

    # ---- compute everything before writing anything
    results: dict[str, list[LevelResult]] = {lv: [] for lv in LEVELS}
    for model in models:
        for lv in wanted_levels:
            data = level_data(model, lv, label_map)
            if data is None:
                if level != "both" or lv == "patient":
                    raise InputError(f"model {model.name} has no {lv} rows in the {eval_set} set",
                                     path=model.path, fix="choose another --level")
                log.info("model %s has no lesion rows: lesion level left out", model.name)
                continue
            log.info("evaluating %s at %s level (%d units)", model.name, lv, data.n_units)
            results[lv].append(compute_level(model, data, n_boot=n_bootstrap, seed=seed,
                                             level_ci=confidence_level))
    ordered = [r for lv in LEVELS for r in results[lv]]
    metric_rows = [row for r in ordered for row in r.rows]
    comparison_rows: list[dict] = []
    table_rows: list[dict] = []
    if compare:
        for lv in LEVELS:
            for a, b in itertools.combinations(results[lv], 2):
                comparison_rows.extend(compare_pair(a, b, n_boot=n_bootstrap, seed=seed))
        table_rows = report.comparison_table(ordered)
    figures = plots.figure_plan(results, confidence_level) if draw_plots else {}
    overlays = _overlay_plan(overlay_found, results, label_map, overlay_lesions)

    # ---- write: dataset description, then every file through one OutputSet
    write_dataset_description(out_dir, name="metcli evaluate", sources=roots,
                              description="metrics, comparisons and plots of predictions")
    produced: dict[Path, Path] = {}
    written: list[Path] = []
    inlined: dict[str, tuple[bytes, str]] = {}
    with OutputSet() as outs:
        for name, (columns, schema, rows, draw, description) in figures.items():
            png, tsv = out_dir / f"{name}.png", out_dir / f"{name}.tsv"
            tmp_tsv = outs.path(tsv)
            write_tsv_to(rows, columns, tmp_tsv, schema=schema, where=tsv)
            tmp_png = outs.path(png)
            draw(rows, tmp_png)
            inlined[name] = (tmp_png.read_bytes(), description)
            pair = {png: tmp_png, tsv: tmp_tsv}
            step.write_sidecar(outs, sidecar_path(png), inputs, pair,
                               extra={"Description": description})
            produced.update(pair)
            written += [png, tsv, sidecar_path(png)]
        if compare:
            for name, columns, schema, rows, description in (
                    ("comparisons", COMPARISON_COLUMNS, "comparisons", comparison_rows,
                     "paired tests between models: DeLong (AUC) and McNemar (accuracy) at "
                     "patient level, patient cluster bootstrap at lesion level"),
                    ("comparison_table", TABLE_COLUMNS, "comparison_table", table_rows,
                     "models x metrics, estimate [95% CI]; selected_by_cv marks the model "
                     "chosen by cross-validation")):
                target = out_dir / f"{name}.tsv"
                tmp = outs.path(target)
                write_tsv_to(rows, columns, tmp, schema=schema, where=target)
                step.write_sidecar(outs, sidecar_path(target), inputs, {target: tmp},
                                   extra={"Description": description})
                produced[target] = tmp
                written += [target, sidecar_path(target)]
        metrics_tsv = out_dir / "metrics.tsv"
        tmp = outs.path(metrics_tsv)
        write_tsv_to(metric_rows, METRIC_COLUMNS, tmp, schema="metrics", where=metrics_tsv)
        produced = {metrics_tsv: tmp, **produced}
        content = _metrics_document(step, models, ordered, comparison_rows, n_bootstrap, seed,
                                    eval_set, confidence_level)
        overlay_figures = []
        for pid, (ent, panels, title, caption) in overlays.items():
            # At the root, beside the other figures (metrics.json lists outputs by name).
            png = out_dir / ent.with_(desc="lesions", suffix="overlay", extension=".png").name
            tmp_png = outs.path(png)
            plots.lesion_overlay_figure(panels, tmp_png, title=title)
            overlay_figures.append((pid, tmp_png.read_bytes(), caption))
            step.write_sidecar(outs, sidecar_path(png), inputs, {png: tmp_png}, extra={
                "Description": "lesion masks on CT for visual quality control: an axial slice "
                               "through each lesion's centroid, abdominal window",
                "Lesions": [plots.overlay_record(p) for p in panels]})
            produced[png] = tmp_png
            written += [png, sidecar_path(png)]
        report_html = out_dir / "report.html"
        tmp = outs.path(report_html)
        report.write_report_to(report.render(
            step.sidecar(inputs, produced, extra=content), figures=inlined,
            table_rows=table_rows,
            overlays=None if raw is None else {"figures": overlay_figures,
                                               "missing": overlay_missing,
                                               "lesions_per_patient": overlay_lesions}), tmp)
        step.write_sidecar(outs, sidecar_path(report_html), inputs, {report_html: tmp},
                           extra={"Description": "report of metcli evaluate (self-contained "
                                                 "HTML); research use only"})
        produced[report_html] = tmp
        written += [report_html, sidecar_path(report_html)]
        doc = step.sidecar(inputs, produced, extra=content)
        validate(doc, "sidecar", where=metrics_json)
        tmp = outs.path(metrics_json)
        dump_json_to(doc, tmp, schema="metrics_json", where=metrics_json)
        written += [metrics_tsv, metrics_json]
    summary = [{"model": r.model.name, "level": r.level, **r.summary} for r in ordered]
    return EvaluationResult(out_dir=out_dir, skipped=False, files=written, summary=summary)


def _overlay_plan(found: dict[str, dict], results: dict[str, list[LevelResult]],
                  label_map: dict[str, str | None], n_lesions: int) -> dict[str, tuple]:
    """``{participant: (entities, panels, title, caption)}`` of the lesion overlays.

    Lesions with a lesion-level prediction come first, annotated with the prediction of
    the model chosen by cross-validation (else the first model).
    """
    from metcli import plots

    if not found:
        return {}
    lesion_results = results.get("lesion") or []
    chosen = next((r for r in lesion_results if r.model.selected), None) or \
        (lesion_results[0] if lesion_results else None)
    annotations: dict[str, dict[int, dict]] = {}
    if chosen is not None:
        data = chosen.data
        for i, (pid, lesion) in enumerate(zip(data.participant_ids, data.lesion_ids)):
            if lesion is None or not str(lesion).isdigit():
                continue
            pred = int(data.pred[i])
            annotations.setdefault(pid, {})[int(lesion)] = {
                "predicted": chosen.model.classes[pred],
                "probability": float(data.prob[i, pred]), "correct": bool(pred == data.y[i])}
    plan = {}
    for pid, source in found.items():
        ids = sorted(annotations.get(pid, {})) or None
        panels = plots.overlay_panels(source, lesion_ids=ids, n_lesions=n_lesions,
                                      annotations=annotations.get(pid))
        ent = source["entities"]
        title = f"{pid} (true class: {label_map.get(pid) or 'n/a'})"
        where = ", ".join(x for x in (f"session {ent.ses}" if ent.ses else None,
                                      f"{ent.ce} phase" if ent.ce else None) if x)
        caption = (title + (f", {where}" if where else "")
                   + (f"; lesion-level predictions of {chosen.model.name}"
                      if chosen is not None and pid in annotations else ""))
        plan[pid] = (ent, panels, title, caption)
    return plan


def _metrics_document(step, models, ordered, comparison_rows, n_bootstrap, seed, eval_set,
                      level_ci) -> dict[str, Any]:
    model_docs = []
    for model in models:
        levels = []
        for result in ordered:
            if result.model is not model:
                continue
            data = result.data
            classes = model.classes
            levels.append({
                "level": data.level,
                "derived_from_lesions": data.derived,
                "derivation": DERIVED_NOTE if data.derived else None,
                "n_patients": data.n_patients,
                "n_units": data.n_units,
                "class_counts": {c: int(n) for c, n in
                                 zip(classes, np.bincount(data.y, minlength=len(classes)))},
                "threshold": data.threshold,
                "threshold_source": data.threshold_source,
                "confusion_matrix": {"classes": classes, "rows": "true class",
                                     "columns": "predicted class",
                                     "counts": result.confusion.astype(int).tolist()},
                "mean_predicted": {c: float(data.prob[:, i].mean())
                                   for i, c in enumerate(classes)},
                "interval_note": LESION_NOTE if data.level == "lesion" else
                "AUC by DeLong and by the patient bootstrap; sensitivity and specificity by "
                "Clopper-Pearson; the others by the patient bootstrap",
                "metrics": [{k: row[k] for k in ("metric", "class", "estimate", "ci_lower",
                                                 "ci_upper", "ci_method",
                                                 "bootstrap_resamples", "note")}
                            for row in result.rows],
            })
        model_docs.append({
            "model": model.name,
            "source": step.uri(model.path),
            "set": eval_set,
            "task": "binary" if model.binary else "multiclass",
            "classes": model.classes,
            "positive_class": model.positive_class,
            "positive_class_source": model.positive_source,
            "selected_by_cv": model.selected,
            "levels": levels,
        })
    return {
        "Description": "metrics of metcli evaluate; the sidecar of metrics.tsv",
        "UnitOfInference": "patient",
        "LesionLevel": LESION_NOTE,
        "ConfidenceLevel": level_ci,
        "Bootstrap": {"resamples": n_bootstrap, "seed": seed, "unit": "patient",
                      "stratified_by": "the patient's true class", "interval": "percentile"},
        "Set": eval_set,
        "Models": model_docs,
        "Comparisons": [{k: row.get(k) for k in COMPARISON_COLUMNS} for row in comparison_rows],
    }
