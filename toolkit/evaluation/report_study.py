"""The report sections of the study additions of ``metcli evaluate``: Table 1 (with the
collapsed classes) and the reader study, and their methods.

:mod:`metcli.evaluation.report` calls these with its own table and escaping functions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

Table = Callable[..., str]


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3g}"


def _ci(estimate, low, high) -> str:
    if estimate is None:
        return "n/a"
    text = f"{estimate:.3f}"
    if low is not None and high is not None:
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def table1_section(doc: Mapping[str, Any], table: Table, e: Callable[[Any], str]) -> str:
    """``<section id="table1">``: the evaluated patients by true class."""
    out = ['<section id="table1"><h2>Cohort (Table 1)</h2>']
    if doc.get("Collapse"):
        out.append(
            f"<p>Classes collapsed before scoring (<code>--collapse</code>): "
            f"<b>{e(doc['Collapse'])}</b>; the probabilities of a group are summed.</p>"
        )
    t1 = doc.get("Table1")
    if not t1:
        out.append(
            "<p>No Table 1: participants.tsv has none of the columns age, sex and site; "
            "choose columns with <code>--table1-columns</code>.</p></section>"
        )
        return "".join(out)
    columns = t1["columns"]
    shown = [c for c in columns if c not in ("statistic",)]
    rows = [
        [_p(r[c]) if c == "p_value" else r[c] if r[c] is not None else "" for c in shown]
        for r in t1["rows"]
    ]
    out.append(
        '<p class="note">The evaluated patients by true class: median [IQR] with the '
        "Kruskal-Wallis test; n (%) with the chi-squared test, or Fisher's exact test for a "
        "2x2 table with an expected count under 5. The tests describe the cohort; they "
        "are not corrected for multiple testing.</p>"
    )
    out.append(table([c if c != "p_value" else "p" for c in shown], rows))
    out.append("</section>")
    return "".join(out)


def readers_section(doc: Mapping[str, Any], table: Table, e: Callable[[Any], str]) -> str:
    """``<section id="readers">``: readers' operating points and McNemar's tests."""
    out = ['<section id="readers"><h2>Readers against the models</h2>']
    readers = doc.get("Readers")
    if readers is None:
        out.append(
            "<p>No reader study was given (<code>--readers FILE</code>: participant_id, "
            "reader, call, optional assisted).</p></section>"
        )
        return "".join(out)
    if not readers:
        out.append("<p>No reader shares a patient with a model.</p></section>")
        return "".join(out)
    level = int(round(readers[0]["ci_level"] * 100))
    out.append(
        f'<p class="note">Patient level, on the patients both the reader and the model '
        f"evaluated. Sensitivity and specificity with {level}% Clopper-Pearson intervals; "
        "the model's at its cut-off on the same patients. The readers' points are drawn "
        "on the patient-level ROC figure (open: without the model, filled: with it).</p>"
    )
    points = [
        [
            r["model"],
            r["reader"],
            r["assisted"] or "",
            r["class"],
            r["n_patients"],
            _ci(r["sensitivity"], r["sensitivity_ci_lower"], r["sensitivity_ci_upper"]),
            _ci(r["specificity"], r["specificity_ci_lower"], r["specificity_ci_upper"]),
            _ci(r["model_sensitivity"], None, None),
            _ci(r["model_specificity"], None, None),
            r.get("note") or "",
        ]
        for r in readers
    ]
    out.append(
        table(
            [
                "model",
                "reader",
                "assisted",
                "class",
                "patients",
                "reader sensitivity",
                "reader specificity",
                "model sensitivity",
                "model specificity",
                "note",
            ],
            points,
            numeric=(4, 5, 6, 7, 8),
        )
    )
    out.append(_mcnemar_table(readers, table))
    out.append("</section>")
    return "".join(out)


def _mcnemar_table(readers, table: Table) -> str:
    """One row per model, reader and assisted value: McNemar's test against the model."""
    tests, seen = [], set()
    for r in readers:
        key = (r["model"], r["reader"], r["assisted"])
        if key in seen:
            continue
        seen.add(key)
        tests.append(
            [
                *key[:2],
                key[2] or "",
                r["accuracy"],
                r["model_accuracy"],
                r["reader_only_correct"],
                r["model_only_correct"],
                r["mcnemar_test"],
                _p(r["mcnemar_p_value"]),
            ]
        )
    return "<p>McNemar's test of the reader's correctness against the model's:</p>" + (
        table(
            [
                "model",
                "reader",
                "assisted",
                "reader accuracy",
                "model accuracy",
                "only the reader right",
                "only the model right",
                "test",
                "p",
            ],
            tests,
            numeric=(3, 4, 5, 6, 8),
        )
    )


def study_methods(doc: Mapping[str, Any]) -> str:
    """A paragraph of the methods section for what the run used of the additions."""
    said = [
        "Several classes: the macro sensitivity and specificity (means over classes of the "
        "one-vs-rest figures) have patient-bootstrap intervals, the per-class ones "
        "Clopper-Pearson intervals; with <code>--compare</code>, each class's one-vs-rest "
        "AUC is also compared by the paired DeLong test at patient level."
    ]
    if doc.get("Readers") is not None:
        said.append(
            "Readers: sensitivity and specificity with Clopper-Pearson intervals, and "
            "McNemar's test of each reader's correctness against the model's on the same "
            "patients (exact binomial below 25 discordant patients, else the chi-square "
            "statistic with continuity correction)."
        )
    if doc.get("Table1"):
        said.append(
            "Table 1: Kruskal-Wallis test for numeric characteristics; chi-squared test "
            "(Yates' correction for 2x2 tables) for categorical ones, Fisher's exact test "
            "for a 2x2 table with an expected count under 5."
        )
    return "<p>" + " ".join(said) + "</p>"
