"""evaluate's metrics of multi-class predictions at per-class cut-offs and at argmax.

A model of three classes or more decides by argmax, or by per-class cut-offs
chosen by best F1 (:mod:`metcli.io.cutoffs`: Xin et al. 2024). evaluate's main
figures (``metrics.tsv``) use the most probable class; this module reports, for
every multi-class model whose cut-offs are known, the figures by both rules side
by side: accuracy, macro F1 (f1_macro), and per class the sensitivity, specificity and F1
(point estimates on the evaluated units, patients or lesions).

The cut-offs come from ``--cutoffs FILE`` (a JSON object ``{class: cut-off}``,
applied to every multi-class model; its classes must be the model's), else from
the ``decision`` of the predictions' sidecar (per model under ``models``, or at
its top level), which train-radiomics, train-cnn and predict record. A model
without either is left out of this report. The outputs: ``cutoff_metrics.tsv``
(one row per model, level, rule, metric and class) with its sidecar,
``Cutoffs`` in metrics.json, and a section of report.html.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError

log = logging.getLogger(__name__)

COLUMNS = (
    "model",
    "set",
    "level",
    "derived_from_lesions",
    "rule",
    "metric",
    "class",
    "estimate",
    "n_patients",
    "n_units",
)
RULES = ("argmax", "cutoffs")
TABLE = "cutoff_metrics.tsv"


def read_cutoffs_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of ``--cutoffs FILE`` (checked against each model's classes later)."""
    from metcli.io.files import read_json

    path = Path(path)
    if not path.is_file():
        raise InputError("the cut-offs file does not exist", path=path, fix="check the path")
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise InputError(
            "the cut-offs file is not a JSON object of class -> cut-off",
            path=path,
            fix='write for example {"colorectal": 0.4, "gastric": 0.3, "pancreatic": 0.35}',
        )
    return doc


def model_cutoffs(model, given: Mapping | None, given_path: Path | None):
    """(cut-offs, where they come from, the sidecar's rule) of a multi-class ``model``
    (:class:`~metcli.evaluation.inputs.ModelPredictions`), or None."""
    from metcli.io.cutoffs import check_cutoffs, cutoffs_apply
    from metcli.io.files import read_json

    if not cutoffs_apply(model.classes):
        return None
    if given is not None:
        cut = check_cutoffs(given, model.classes, where=given_path)
        return cut, f"--cutoffs {Path(given_path).name if given_path else ''}".strip(), None
    if model.sidecar is None:
        return None
    doc = read_json(model.sidecar)
    decision = ((doc.get("models") or {}).get(model.name) or {}).get("decision") or doc.get(
        "decision"
    )
    if not isinstance(decision, dict) or not decision.get("cutoffs"):
        return None
    if isinstance(decision["cutoffs"], dict) and set(decision["cutoffs"]) != set(model.classes):
        log.info("model %s: the sidecar's cut-offs are for other classes: left out", model.name)
        return None
    cut = check_cutoffs(decision["cutoffs"], model.classes, where=model.sidecar)
    source = "sidecar: best F1 per class on " + str(decision.get("chosen_on", "unknown"))
    if decision.get("level"):
        source += f" ({decision['level']} level)"
    return cut, source, decision.get("rule")


def rule_metrics(y: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> list[tuple]:
    """(metric, class or None, estimate): accuracy, macro F1, per class sensitivity,
    specificity and F1 of the predicted class indices ``pred`` against ``y``."""
    from sklearn.metrics import f1_score

    k = len(classes)
    labels = list(range(k))
    f1 = f1_score(y, pred, labels=labels, average=None, zero_division=0)
    out: list[tuple] = [
        ("accuracy", None, float(np.mean(y == pred)) if len(y) else None),
        ("f1_macro", None, float(np.mean(f1))),
    ]
    for i, c in enumerate(classes):
        pos, called = y == i, pred == i
        sens = float(np.mean(called[pos])) if pos.any() else None
        spec = float(np.mean(~called[~pos])) if (~pos).any() else None
        out += [("sensitivity", c, sens), ("specificity", c, spec), ("f1", c, float(f1[i]))]
    return out


def cutoff_results(models, results: Mapping[str, list], cutoffs_file=None) -> list[dict]:
    """One entry per multi-class model with known cut-offs: the cut-offs, their source and
    the rows of both rules at each evaluated level (``results``: level -> LevelResults)."""
    from metcli.io.cutoffs import FINAL_CLASS_RULE, decide_index

    given = None if cutoffs_file is None else read_cutoffs_file(cutoffs_file)
    entries = []
    for model in models:
        found = model_cutoffs(model, given, None if cutoffs_file is None else Path(cutoffs_file))
        if found is None:
            continue
        cut, source, rule = found
        rows = []
        for level_results in results.values():
            for result in level_results:
                if result.model is not model:
                    continue
                data = result.data
                by_rule = {
                    "argmax": np.argmax(data.prob, axis=1),
                    "cutoffs": decide_index(data.prob, [cut[c] for c in model.classes]),
                }
                base = {
                    "model": model.name,
                    "set": model.rows[0]["set"],
                    "level": data.level,
                    "derived_from_lesions": data.derived,
                    "n_patients": data.n_patients,
                    "n_units": data.n_units,
                }
                for name in RULES:
                    for metric, cls, value in rule_metrics(data.y, by_rule[name], model.classes):
                        rows.append(
                            {
                                **base,
                                "rule": name,
                                "metric": metric,
                                "class": cls,
                                "estimate": value,
                            }
                        )
        entries.append(
            {
                "model": model.name,
                "classes": list(model.classes),
                "cutoffs": cut,
                "source": source,
                "rule_of_predicted_column": rule,
                "final_class": FINAL_CLASS_RULE,
                "rows": rows,
            }
        )
    return entries


def write_cutoff_metrics(run, outs, entries: list[dict]) -> list[dict]:
    """``cutoff_metrics.tsv`` and its sidecar; returns metrics.json's ``Cutoffs``."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import write_tsv_to

    target = run.out_dir / TABLE
    rows = [row for entry in entries for row in entry["rows"]]
    tmp = outs.path(target)
    write_tsv_to(rows, COLUMNS, tmp, schema="cutoff_metrics", where=target)
    run.write_sidecar(
        outs,
        target,
        {target: tmp},
        extra={
            "Description": "multi-class models: accuracy, macro F1 and per-class sensitivity, "
            "specificity and F1 by the most probable class (rule argmax) and by the per-class "
            "best-F1 cut-offs (rule cutoffs); point estimates",
            "Cutoffs": [{k: v for k, v in e.items() if k != "rows"} for e in entries],
        },
    )
    run.written += [target, sidecar_path(target)]
    return [
        {
            **{k: v for k, v in e.items() if k != "rows"},
            "metrics": [
                {k: r[k] for k in ("level", "rule", "metric", "class", "estimate")}
                for r in e["rows"]
            ],
        }
        for e in entries
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def cutoffs_section(doc: Mapping[str, Any]) -> str:
    """report.html's section of the cut-offs and the figures by both rules ('' without)."""
    entries = doc.get("Cutoffs") or []
    if not entries:
        return ""
    out = [
        '<section id="cutoffs"><h2>Per-class cut-offs (multi-class models)</h2>',
        f'<p class="note">{html.escape(entries[0]["final_class"])}. The figures above use '
        "the most probable class (argmax); here both rules side by side.</p>",
    ]
    for e in entries:
        out.append(f"<h3>{_cell(e['model'])}</h3><p>Cut-offs from {_cell(e['source'])}")
        if e.get("rule_of_predicted_column"):
            out.append(f"; the predicted column used {_cell(e['rule_of_predicted_column'])}")
        out.append(". Each cell: argmax / cut-offs.</p>")
        out.append(_rules_table(e))
    out.append("</section>")
    return "".join(out)


def _rules_table(entry: Mapping[str, Any]) -> str:
    """One row per level and metric, one column per class (its cut-off in the header) and
    one for the whole model; each cell the figure by argmax, then by the cut-offs."""
    classes = list(entry["classes"])
    cells: dict[tuple, dict] = {}
    for r in entry["metrics"]:
        key = (r["level"], r["metric"])
        cells.setdefault(key, {}).setdefault(r["class"], {})[r["rule"]] = r["estimate"]
    head = "".join(f"<th>{_cell(c)} (cut-off {_cell(entry['cutoffs'][c])})</th>" for c in classes)
    rows = [
        "<table><thead><tr><th>level</th><th>metric</th><th>all classes</th>"
        f"{head}</tr></thead><tbody>"
    ]
    for (level, metric), by_class in cells.items():
        row = [f"<tr><td>{_cell(level)}</td><td>{_cell(metric)}</td>"]
        for c in [None, *classes]:
            values = by_class.get(c)
            text = (
                ""
                if values is None
                else f"{_cell(values.get('argmax'))} / {_cell(values.get('cutoffs'))}"
            )
            row.append(f'<td class="num">{text}</td>')
        rows.append("".join(row) + "</tr>")
    return "".join(rows) + "</tbody></table>"
