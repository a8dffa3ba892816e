"""Reader studies in ``metcli evaluate --readers FILE``: readers' operating points against
the models'.

The readers table (TSV, schema ``readers``) has one row per reading: ``participant_id``,
``reader``, ``call`` (the class the reader chose) and optionally ``assisted`` (``yes``:
the reader saw the model's output, ``no``: not; as Fig. 6 of Xin et al. 2024). For each
model at patient level and each reader (and assisted value), on the patients both
evaluated:

* sensitivity and specificity of the reader's calls with Clopper-Pearson intervals
  (binary models: of the positive class; several classes: each class against the
  rest), beside the model's own at its cut-off on the same patients;
* McNemar's test of the reader's correctness against the model's (exact binomial below
  :data:`metcli.evaluation.stats.MCNEMAR_EXACT_BELOW` discordant patients);
* the reader's point on the model's patient-level ROC figure (rows of kind ``reader`` in
  ``roc_patient.tsv``; :func:`draw_reader_points` draws them).

The patient is the unit: a reader's call is about a patient, so there is no lesion level.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError
from metcli.evaluation import stats

log = logging.getLogger(__name__)

READER_RESULT_COLUMNS = (
    "model",
    "reader",
    "assisted",
    "class",
    "n_patients",
    "n_positive",
    "n_negative",
    "sensitivity",
    "sensitivity_ci_lower",
    "sensitivity_ci_upper",
    "specificity",
    "specificity_ci_lower",
    "specificity_ci_upper",
    "ci_level",
    "accuracy",
    "model_sensitivity",
    "model_specificity",
    "model_accuracy",
    "reader_only_correct",
    "model_only_correct",
    "mcnemar_test",
    "mcnemar_statistic",
    "mcnemar_p_value",
    "note",
)
#: Marker of each reader in the ROC figure, in order of first appearance.
READER_MARKERS = ("s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
_ASSISTED = {"yes": "yes", "no": "no", "n/a": None, "": None}


# ============================================================================= reading
def read_readers(
    path: str | Path,
    labels: Mapping[str, str | None],
    classes: Sequence[str],
    mapping: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The readings of a readers table, checked: known participants, calls among
    ``classes`` (after ``mapping``, the ``--collapse`` groups), one call per reader,
    participant and assisted value.

    Raises:
        InputError: for a malformed table, an unknown participant, an unknown class or a
            participant read twice by one reader.
    """
    from metcli.io.files import read_tsv
    from metcli.io.schemas import validate_rows

    path = Path(path)
    raw = read_tsv(path, required=("participant_id", "reader", "call"))
    if not raw:
        raise InputError("the readers table has no rows", path=path, fix="add readings")
    columns = list(raw[0])
    rows = []
    for number, row in enumerate(raw, start=2):
        assisted = row.get("assisted", "n/a").strip().lower()
        if assisted not in _ASSISTED:
            raise InputError(
                f"line {number}: assisted = {row['assisted']!r} is not yes, no or n/a",
                path=path,
                fix="write yes (with model assistance), no (without) or n/a",
            )
        rows.append({**row, "assisted": _ASSISTED[assisted]})
    validate_rows(rows, columns, "readers", where=path)
    seen: set[tuple] = set()
    known = set(classes)
    for number, row in enumerate(rows, start=2):
        pid = row["participant_id"]
        if pid not in labels:
            raise InputError(
                f"line {number}: {pid} is not in the labels (participants.tsv)",
                path=path,
                fix="use the participant_id of participants.tsv",
            )
        row["call"] = (mapping or {}).get(row["call"], row["call"])
        if row["call"] not in known:
            raise InputError(
                f"line {number}: call {row['call']!r} is not a class of the evaluated "
                f"models ({', '.join(sorted(known))})",
                path=path,
                fix="write the class names of the prob_ columns (or of --collapse)",
            )
        key = (row["reader"], row["assisted"], pid)
        if key in seen:
            raise InputError(
                f"line {number}: reader {row['reader']} reads {pid} twice"
                + (f" (assisted {row['assisted']})" if row["assisted"] else ""),
                path=path,
                fix="keep one call per reader, participant and assisted value",
            )
        seen.add(key)
    return [{k: r[k] for k in ("participant_id", "reader", "call", "assisted")} for r in rows]


# ============================================================================= figures
def _rate(hits: np.ndarray, among: np.ndarray, level: float) -> tuple:
    """(estimate, lower, upper) of a proportion with its Clopper-Pearson interval."""
    count, nobs = int(np.sum(hits & among)), int(np.sum(among))
    if nobs == 0:
        return None, None, None
    low, high = stats.clopper_pearson(count, nobs, level)
    return count / nobs, low, high


def reader_results(
    readings: Sequence[Mapping[str, Any]], patient_results: Sequence, level_ci: float = 0.95
) -> list[dict[str, Any]]:
    """The rows of readers.tsv: every model at patient level x every reader (and assisted
    value) x the positive class (binary) or every class (several)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in readings:
        groups.setdefault((row["reader"], row["assisted"]), []).append(row)
    out: list[dict[str, Any]] = []
    for result in patient_results:
        data, model = result.data, result.model
        index = {pid: i for i, pid in enumerate(data.participant_ids)}
        for (reader, assisted), calls in groups.items():
            usable = [
                c for c in calls if c["participant_id"] in index and c["call"] in model.classes
            ]
            if not usable:
                log.info("reader %s shares no patient with model %s", reader, model.name)
                continue
            idx = np.array([index[c["participant_id"]] for c in usable], dtype=int)
            call = np.array([model.classes.index(c["call"]) for c in usable], dtype=int)
            base = {"model": model.name, "reader": reader, "assisted": assisted}
            rows = _reader_rows(base, model, data.y[idx], data.pred[idx], call, level_ci)
            notes = []
            if len(usable) < data.n_patients:
                notes.append(
                    f"paired on the {len(usable)} of the model's {data.n_patients} "
                    "patients this reader read"
                )
            if len(usable) < len([c for c in calls if c["participant_id"] in index]):
                notes.append("calls of classes the model lacks left out")
            for row in rows:
                row["note"] = "; ".join(n for n in [row["note"], *notes] if n) or None
            out += rows
    return out


def _reader_rows(base, model, y, pred, call, level) -> list[dict[str, Any]]:
    """One row per class of interest: the reader's and the model's rates, McNemar's test."""
    mc = stats.mcnemar_test(call == y, pred == y)
    targets = (
        [model.classes.index(model.positive_class)] if model.binary else range(len(model.classes))
    )
    rows = []
    for c in targets:
        truth = y == c
        sens = _rate(call == c, truth, level)
        spec = _rate(call != c, ~truth, level)
        notes = []
        if not truth.any():
            notes.append(f"sensitivity undefined: no {model.classes[c]} patients")
        if truth.all():
            notes.append("specificity undefined: no patients of another class")
        rows.append(
            {
                **base,
                "class": model.classes[c],
                "n_patients": int(y.size),
                "n_positive": int(truth.sum()),
                "n_negative": int((~truth).sum()),
                "sensitivity": sens[0],
                "sensitivity_ci_lower": sens[1],
                "sensitivity_ci_upper": sens[2],
                "specificity": spec[0],
                "specificity_ci_lower": spec[1],
                "specificity_ci_upper": spec[2],
                "ci_level": level,
                "accuracy": float(np.mean(call == y)),
                "model_sensitivity": _rate(pred == c, truth, level)[0],
                "model_specificity": _rate(pred != c, ~truth, level)[0],
                "model_accuracy": float(np.mean(pred == y)),
                "reader_only_correct": mc.only_a_correct,
                "model_only_correct": mc.only_b_correct,
                "mcnemar_test": mc.method,
                "mcnemar_statistic": mc.statistic,
                "mcnemar_p_value": mc.p_value,
                "note": "; ".join(notes) or None,
            }
        )
    return rows


def reader_roc_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of kind ``reader`` for roc_patient.tsv: a reader's (1 - specificity,
    sensitivity), with the sensitivity's Clopper-Pearson interval as tpr_lower/upper."""
    return [
        {
            "model": r["model"],
            "level": "patient",
            "class": r["class"],
            "kind": "reader",
            "fpr": 1.0 - r["specificity"],
            "tpr": r["sensitivity"],
            "threshold": None,
            "tpr_lower": r["sensitivity_ci_lower"],
            "tpr_upper": r["sensitivity_ci_upper"],
            "reader": r["reader"],
            "assisted": r["assisted"],
        }
        for r in rows
        if r["sensitivity"] is not None and r["specificity"] is not None
    ]


# ============================================================================= drawing
def draw_reader_points(ax, rows: Sequence[Mapping[str, Any]], colours: Mapping[tuple, Any]) -> int:
    """Draw the ``reader`` rows of an ROC table on ``ax``; returns the points drawn.

    Each reader has a marker shape (legend: the reader's name); a reading without the
    model is an open marker, one with it a filled marker, and an arrow joins a reader's
    two readings of the same class. A point takes the colour of the first drawn curve of
    its class (``colours``: ``{(model, class): colour}``); the same reading compared with
    several models is drawn once.
    """
    readers = [r for r in rows if r.get("kind") == "reader"]
    first_colour: dict[str, Any] = {}
    for (_model, cls), colour in colours.items():
        first_colour.setdefault(cls, colour)
    names = list(dict.fromkeys(r["reader"] for r in readers))
    marker = {n: READER_MARKERS[i % len(READER_MARKERS)] for i, n in enumerate(names)}
    drawn: dict[tuple, tuple[float, float]] = {}
    for r in readers:
        key = (r["class"], r["reader"], r["assisted"])
        if r["class"] not in first_colour or key in drawn:
            continue
        drawn[key] = (r["fpr"], r["tpr"])
        colour = first_colour[r["class"]]
        ax.plot(
            [r["fpr"]],
            [r["tpr"]],
            linestyle="",
            marker=marker[r["reader"]],
            markersize=8,
            color=colour,
            markerfacecolor="white" if r["assisted"] == "no" else colour,
            markeredgecolor=colour if r["assisted"] == "no" else "black",
            markeredgewidth=1.5 if r["assisted"] == "no" else 0.8,
            zorder=4,
        )
    for (cls, reader, assisted), (x, y) in drawn.items():
        if assisted == "no" and (cls, reader, "yes") in drawn:
            end = drawn[(cls, reader, "yes")]
            ax.annotate(
                "",
                xy=end,
                xytext=(x, y),
                arrowprops={"arrowstyle": "->", "color": first_colour[cls], "lw": 1.0},
                zorder=3,
            )
    shown = [n for n in names if any(k[1] == n for k in drawn)]
    for name in shown:
        ax.plot([], [], linestyle="", marker=marker[name], color="0.35", label=f"reader {name}")
    values = {k[2] for k in drawn}
    if {"yes", "no"} <= values:
        ax.plot(
            [],
            [],
            linestyle="",
            marker="o",
            color="0.35",
            markerfacecolor="white",
            label="open: without the model",
        )
        ax.plot(
            [], [], linestyle="", marker="o", color="0.35", label="filled: with the model (arrow)"
        )
    return len(drawn)
