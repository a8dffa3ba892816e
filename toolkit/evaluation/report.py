"""``report.html`` of ``metcli evaluate``: one self-contained page a radiologist can open.

The page holds the data summary, every model's metrics with their intervals, the
comparisons, the figures (inlined as PNG data URIs: no file beside it is needed), the
items TRIPOD+AI and CLAIM ask a study to report (filled where metcli knows them, marked
where the authors must fill them: :mod:`metcli.evaluation.checklist`), the methods, the
settings and versions that produced it, and the words "research use only". It loads
nothing from the network.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

from metcli.evaluation.checklist import checklist
from metcli.evaluation.cutoff_metrics import cutoffs_section
from metcli.evaluation.report_study import readers_section, study_methods, table1_section

#: Section ids, in page order (a test checks that a browser shows each).
SECTIONS = (
    "summary",
    "table1",
    "metrics",
    "comparisons",
    "readers",
    "figures",
    "overlays",
    "checklist",
    "methods",
    "provenance",
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:1.5em;color:#222;line-height:1.4}
details{margin:.3em 0}summary{cursor:pointer;font-weight:600;color:#335}
.wide{overflow-x:auto;max-width:100%}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ccd;padding-bottom:.2em;
margin-top:2em}h3{margin-bottom:.3em}
.banner{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em;font-weight:600}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.todo{color:#a00;font-weight:600}.done{color:#060}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:48%}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
figure.overlay{display:block;max-width:100%}
code{background:#f4f4f8;padding:0 .2em}.note{color:#555;font-size:.85em}
"""

_VERSIONED = ("numpy", "scipy", "scikit-learn", "statsmodels", "matplotlib")


def _e(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()
) -> str:
    out = [
        '<div class="wide"><table><thead><tr>',
        *(f"<th>{html.escape(h)}</th>" for h in headers),
        "</tr></thead><tbody>",
    ]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            css = ' class="num"' if i in numeric else ""
            out.append(f"<td{css}>{cell if isinstance(cell, _Raw) else _e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


class _Raw(str):
    """Already-escaped HTML."""


def _interval(row: Mapping[str, Any]) -> str:
    if row.get("ci_lower") is None or row.get("ci_upper") is None:
        return "n/a"
    return f"{row['ci_lower']:.3f} – {row['ci_upper']:.3f}"


def versions() -> dict[str, str]:
    """Versions of the libraries that computed the figures."""
    from metcli.core.versions import versions as library_versions

    return library_versions(_VERSIONED, missing="not installed", metcli_first=True)


def render(
    doc: Mapping[str, Any],
    *,
    figures: Mapping[str, tuple[bytes, str]],
    table_rows: Sequence[Mapping[str, Any]] = (),
    overlays: Mapping[str, Any] | None = None,
) -> str:
    """The page as text.

    Args:
        doc: the metrics.json document (with its Sources and Provenance).
        figures: ``{name: (png bytes, caption)}`` to inline, in order.
        table_rows: the comparison table (models x metrics), if one was made.
        overlays: lesion masks on CT, if asked for: ``figures`` (a list of
            ``(name, png bytes, caption)``), ``missing`` (``{participant: why}``) and
            ``lesions_per_patient``.
    """
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>metcli evaluate report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>metcli evaluate report</h1>",
        '<p class="banner" id="research-use-only">Research use only. Not for '
        "clinical use: the figures describe models on a research data set, not a "
        "validated diagnostic device.</p>",
    ]
    parts.append(_summary(doc))
    parts.append(table1_section(doc, _table, _e))
    parts.append(_metrics(doc))
    parts.append(cutoffs_section(doc))  # multi-class cut-offs ('' without)
    parts.append(_comparisons(doc, table_rows))
    parts.append(readers_section(doc, _table, _e))
    parts.append(_figures(figures))
    parts.append(_overlays(overlays))
    parts.append(_checklist(doc))
    parts.append(_methods(doc))
    parts.append(_provenance(doc))
    parts.append("</body></html>\n")
    return "".join(parts)


def _summary(doc) -> str:
    columns = [
        "model",
        "level",
        "patients",
        "units",
        "true classes",
        "patient probabilities",
        "positive class",
        "threshold",
    ]
    rows, files = [], {}
    for m in doc["Models"]:
        entry = files.setdefault(m["source"], {"models": [], "sources": []})
        entry["models"].append(m["model"])
        for lv in m["levels"]:
            counts = ", ".join(f"{c}: {n}" for c, n in lv["class_counts"].items())
            rows.append(
                [
                    m["model"],
                    lv["level"],
                    lv["n_patients"],
                    lv["n_units"],
                    counts,
                    "derived (mean of lesions)" if lv["derived_from_lesions"] else "given",
                    m["positive_class"] or "one vs rest",
                    lv["threshold"],
                ]
            )
            if lv["threshold_source"] not in entry["sources"]:
                entry["sources"].append(lv["threshold_source"])
    # A column with one value in every row is said once, above the table.
    shared = [j for j in (5, 6) if rows and len({str(r[j]) for r in rows}) == 1]
    said = "".join(f" {_e(columns[j].capitalize())}: <b>{_e(rows[0][j])}</b>." for j in shared)
    keep = [j for j in range(len(columns)) if j not in shared]
    numeric = tuple(keep.index(j) for j in (2, 3, 7))
    sources = _table(
        ["predictions", "models", "thresholds chosen by"],
        [
            [
                source,
                len(e["models"]) if len(e["models"]) > 1 else e["models"][0],
                "; ".join(e["sources"]),
            ]
            for source, e in files.items()
        ],
        numeric=(),
    )
    return (
        '<section id="summary"><h2>Data summary</h2>'
        f"<p>Set evaluated: <b>{_e(doc['Set'])}</b>. The patient is the unit of inference; "
        f"patient-level figures come first.{said}</p>"
        + sources
        + _table([columns[j] for j in keep], [[r[j] for j in keep] for r in rows], numeric=numeric)
        + "</section>"
    )


#: With more models than this, only the chosen ones' metric tables are shown open.
OPEN_MODELS = 4


def chosen_models(models: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each prediction file's chosen model: the one selected by cross-validation, or
    the file's only model (a CNN beside sixteen radiomics models)."""
    by_source: dict[str, list[Mapping[str, Any]]] = {}
    for m in models:
        by_source.setdefault(m["source"], []).append(m)
    return [
        m["model"]
        for group in by_source.values()
        for m in group
        if m.get("selected_by_cv") or len(group) == 1
    ]


def _metrics(doc) -> str:
    out = [
        '<section id="metrics"><h2>Metrics with confidence intervals</h2>',
        f'<p class="note">Lesion level: {_e(doc["LesionLevel"])}.</p>',
    ]
    models = list(doc["Models"])
    fold = len(models) > OPEN_MODELS
    if fold:
        chosen = chosen_models(models)
        models.sort(key=lambda m: m["model"] not in chosen)  # stable: chosen first
        out.append(
            f'<p class="note">{len(models)} models: the chosen one of each '
            "prediction file (selected by cross-validation, or its only model) is "
            "shown first and open; the others are folded below (click to open). "
            "The comparison table further down puts all of them side by side.</p>"
        )
    for m in models:
        folded = fold and m["model"] not in chosen
        if folded:
            out.append(f"<details><summary>{_e(m['model'])}</summary>")
        for lv in m["levels"]:
            out.append(f"<h3>{_e(m['model'])}, {_e(lv['level'])} level</h3>")
            # A note every row carries is said once, above the table.
            split = [(r["note"] or "").split("; ") for r in lv["metrics"]]
            common = [n for n in split[0] if n and all(n in parts for parts in split)]
            if common:
                out.append(f'<p class="note">{_e("; ".join(common))}.</p>')
            rows = [
                [
                    r["metric"],
                    r["class"],
                    r["estimate"],
                    _interval(r),
                    r["ci_method"],
                    "; ".join(n for n in parts if n and n not in common),
                ]
                for r, parts in zip(lv["metrics"], split)
            ]
            out.append(
                _table(
                    [
                        "metric",
                        "class",
                        "estimate",
                        f"{int(doc['ConfidenceLevel'] * 100)}% CI",
                        "CI method",
                        "note",
                    ],
                    rows,
                    numeric=(2, 3),
                )
            )
            cm = lv["confusion_matrix"]
            out.append(
                _table(
                    ["true \\ predicted", *cm["classes"]],
                    [[c, *counts] for c, counts in zip(cm["classes"], cm["counts"])],
                    numeric=tuple(range(1, len(cm["classes"]) + 1)),
                )
            )
        if folded:
            out.append("</details>")
    out.append("</section>")
    return "".join(out)


def _comparisons(doc, table_rows) -> str:
    out = ['<section id="comparisons"><h2>Comparisons between models</h2>']
    if table_rows:
        columns = list(table_rows[0].keys())
        out.append(_table(columns, [[r[c] for c in columns] for r in table_rows]))
    if doc["Comparisons"]:
        headers = [
            "level",
            "model A",
            "model B",
            "metric",
            "A",
            "B",
            "test",
            "statistic",
            "p",
            "note",
        ]

        def rows(items):
            return [
                [
                    c["level"],
                    c["model_a"],
                    c["model_b"],
                    c["metric"] + (f" ({c['class']})" if c.get("class") else ""),
                    c.get("estimate_a"),
                    c.get("estimate_b"),
                    c["test"],
                    c.get("statistic"),
                    "n/a" if c["p_value"] is None else f"{c['p_value']:.4g}",
                    c.get("note") or "",
                ]
                for c in items
            ]

        if len(doc["Models"]) > OPEN_MODELS:
            chosen = set(chosen_models(doc["Models"]))
            between = [
                c for c in doc["Comparisons"] if c["model_a"] in chosen and c["model_b"] in chosen
            ]
            others = [c for c in doc["Comparisons"] if c not in between]
            out.append(
                '<p class="note">Between the chosen models (p-values are not '
                "corrected for the number of comparisons; comparisons.tsv holds all "
                f"{len(doc['Comparisons'])} rows):</p>"
            )
            out.append(
                _table(headers, rows(between), numeric=(4, 5, 7, 8))
                if between
                else "<p>(only one chosen model)</p>"
            )
            out.append(
                f"<details><summary>The other {len(others)} comparisons</summary>"
                + _table(headers, rows(others), numeric=(4, 5, 7, 8))
                + "</details>"
            )
        else:
            out.append(_table(headers, rows(doc["Comparisons"]), numeric=(4, 5, 7, 8)))
    else:
        out.append(
            "<p>No comparison was asked for (run with <code>--compare</code> and two or "
            "more models).</p>"
        )
    out.append("</section>")
    return "".join(out)


def _figures(figures) -> str:
    out = ['<section id="figures"><h2>Figures</h2>']
    if not figures:
        out.append("<p>No figures were drawn (<code>--no-plots</code>).</p>")
    for name, (png, caption) in figures.items():
        data = base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure id="fig-{_e(name)}"><img alt="{_e(name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(name)}: '
            f"{_e(caption)}</figcaption></figure>"
        )
    out.append("</section>")
    return "".join(out)


def _overlays(overlays: Mapping[str, Any] | None) -> str:
    out = ['<section id="overlays"><h2>Lesion masks on CT (visual quality control)</h2>']
    if not overlays:
        out.append(
            "<p>Not drawn: give <code>--raw RAW_DIR</code> and <code>--lesions "
            "LESIONS_DIR</code> to show the lesion masks on the CT of every evaluated "
            "patient.</p></section>"
        )
        return "".join(out)
    out.append(
        f'<p class="note">Up to {_e(overlays.get("lesions_per_patient"))} lesions per '
        "evaluated patient (those with predictions first, largest first): one axial "
        "slice through each lesion's centroid, abdominal window W330/L10 HU, the "
        "lesion's contour in yellow and other lesions in cyan; patient's right on the "
        "left. Below each: the lesion-level prediction and whether it is right. Check "
        "that every contour follows a lesion.</p>"
    )
    for name, png, caption in overlays.get("figures", ()):
        data = base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure class="overlay" id="overlay-{_e(name)}"><img alt="lesions of '
            f'{_e(name)} on CT" src="data:image/png;base64,{data}"><figcaption>'
            f"{_e(caption)}</figcaption></figure>"
        )
    missing = overlays.get("missing") or {}
    if missing:
        out.append(
            '<p class="todo">Not shown: '
            + "; ".join(f"{_e(pid)} ({_e(why)})" for pid, why in sorted(missing.items()))
            + ".</p>"
        )
    out.append("</section>")
    return "".join(out)


def _checklist(doc) -> str:
    rows = [
        [g, item, _Raw(f'<span class="{"done" if ok else "todo"}">{_e(text)}</span>')]
        for g, item, text, ok in checklist(doc)
    ]
    return (
        '<section id="checklist"><h2>Reporting checklist (TRIPOD+AI, CLAIM)</h2>'
        '<p class="note">Green: filled by metcli from the run. Red: the authors must '
        "report it.</p>" + _table(["guideline", "item", "status"], rows) + "</section>"
    )


def _methods(doc) -> str:
    boot = doc["Bootstrap"]
    return (
        '<section id="methods"><h2>Statistical methods</h2><p>'
        f"Intervals are {int(doc['ConfidenceLevel'] * 100)}%. Patient level: the AUC with "
        "DeLong's variance (DeLong, DeLong and Clarke-Pearson 1988, Biometrics 44:837-845; "
        "computed with the algorithm of Sun and Xu 2014) and with the patient bootstrap; "
        "sensitivity and specificity with exact Clopper-Pearson intervals; accuracy, F1, PPV, "
        "NPV and the Brier score with the patient bootstrap. Lesion level: every interval "
        "comes from resampling patients with all their lesions (cluster bootstrap), and the "
        "AUC also from Obuchowski's variance for clustered data (Obuchowski 1997, Biometrics "
        "53:567-578); no lesion-level figure treats lesions as independent. The bootstrap "
        f"draws {boot['resamples']} resamples (seed {boot['seed']}), stratified by "
        f"{_e(boot['stratified_by'])}, with percentile intervals. Comparisons: paired DeLong "
        "test of AUCs and McNemar's test of accuracies at patient level; a paired patient "
        "bootstrap test at lesion level.</p>" + study_methods(doc) + "</section>"
    )


def _provenance(doc) -> str:
    prov = doc["Provenance"]
    settings = [
        [k, v if not isinstance(v, (dict, list)) else str(v)] for k, v in prov["settings"].items()
    ]
    inputs = [[r["uri"], _Raw(f"<code>{_e(r['sha256'][:16])}…</code>")] for r in prov["inputs"]]
    libs = [[k, v] for k, v in versions().items()]
    return (
        '<section id="provenance"><h2>Settings and versions</h2>'
        + _table(["setting", "value"], settings)
        + _table(["input", "sha256"], inputs)
        + _table(["software", "version"], libs)
        + '<p class="note">Research use only. Produced by metcli evaluate.</p></section>'
    )


def write_report_to(text: str, target: Path) -> None:
    Path(target).write_text(text, encoding="utf-8")
