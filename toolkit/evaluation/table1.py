"""Table 1 of ``metcli evaluate``: the evaluated patients' characteristics by true class.

From the columns of participants.tsv (``--table1-columns age,sex``; by default ``age``,
``sex`` and ``site`` where present), for the patients the models evaluated, split by
their true class (after ``--collapse``):

* a numeric column (every value a number): median [IQR] per class (linear quantiles,
  R's default), and the Kruskal-Wallis test across classes (``scipy.stats.kruskal``);
* a categorical column: n (%) of each category per class (percent of the patients of
  the class with a value), and the chi-squared test of the categories x classes table
  (``scipy.stats.chi2_contingency``, Yates' correction for a 2x2 table, as R's
  ``chisq.test``); a 2x2 table with an expected count under 5 gets Fisher's exact test
  (``scipy.stats.fisher_exact``); a larger table with expected counts under 5 keeps the
  chi-squared test and its note says the approximation may be poor.

Missing values (``n/a``, empty) are left out of the figures and the test, and counted
in the note.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import UsageError

DEFAULT_COLUMNS = ("age", "sex", "site")
FIXED_COLUMNS = ("characteristic", "value", "overall")
TAIL_COLUMNS = ("test", "statistic", "p_value", "note")
_MISSING = ("", "n/a", "na", "nan")


def table1_columns(participants: Sequence[Mapping[str, str]], columns: Sequence[str] | None):
    """The characteristics to show: ``columns`` (each must exist), else the defaults
    present in the table.

    Raises:
        UsageError: for a column participants.tsv lacks.
    """
    present = list(participants[0]) if participants else []
    if columns is None:
        return [c for c in DEFAULT_COLUMNS if c in present]
    missing = [c for c in columns if c not in present]
    if missing:
        raise UsageError(
            f"--table1-columns names column(s) {', '.join(missing)} that participants.tsv "
            f"lacks (it has {', '.join(present)})",
            fix="name columns of participants.tsv",
        )
    return list(columns)


def table1_table(
    participants: Sequence[Mapping[str, str]],
    patients: Sequence[str],
    label_of: Mapping[str, str],
    classes: Sequence[str],
    columns: Sequence[str],
) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of table1.tsv for ``patients`` (their class in ``label_of``).

    ``classes`` orders the class columns; classes without a patient are left out.
    """
    by_id = {r["participant_id"]: r for r in participants}
    # One column per class with patients, named as the class ("class X" if X is taken).
    group = {
        (f"class {c}" if c in FIXED_COLUMNS + TAIL_COLUMNS else c): [
            p for p in patients if label_of[p] == c
        ]
        for c in classes
        if any(label_of[p] == c for p in patients)
    }
    present = list(group)
    header = [*FIXED_COLUMNS, *present, *TAIL_COLUMNS]
    rows: list[dict[str, Any]] = [
        {
            "characteristic": "patients",
            "value": "n",
            "overall": str(len(patients)),
            **{c: str(len(group[c])) for c in present},
            "test": None,
            "statistic": None,
            "p_value": None,
            "note": None,
        }
    ]
    for column in columns:
        values = {p: _value(by_id.get(p, {}).get(column)) for p in patients}
        missing = sum(v is None for v in values.values())
        if _numeric([v for v in values.values() if v is not None]):
            rows.append(_numeric_row(column, values, group, patients))
        else:
            rows += _categorical_rows(column, values, group, patients)
        if missing:
            first = next(r for r in rows if r["characteristic"] == column)
            first["note"] = "; ".join(n for n in (first["note"], f"missing: {missing}") if n)
    return header, rows


def _value(text: str | None) -> str | None:
    if text is None or text.strip().lower() in _MISSING:
        return None
    return text.strip()


def _numeric(values: Sequence[str]) -> bool:
    if not values:
        return False
    try:
        return all(math.isfinite(float(v)) for v in values)
    except ValueError:
        return False


def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def _median_iqr(numbers: Sequence[float]) -> str | None:
    if not numbers:
        return None
    q1, median, q3 = np.percentile(numbers, [25, 50, 75])
    return f"{_number(median)} [{_number(q1)}, {_number(q3)}]"


def _numeric_row(column, values, group, patients) -> dict[str, Any]:
    """Median [IQR] per class and the Kruskal-Wallis test."""
    from scipy.stats import kruskal

    def numbers(members):
        return [float(values[p]) for p in members if values[p] is not None]

    samples = [numbers(members) for members in group.values()]
    row = {
        "characteristic": column,
        "value": "median [IQR]",
        "overall": _median_iqr(numbers(patients)),
        **{c: _median_iqr(s) for c, s in zip(group, samples)},
        "test": "none",
        "statistic": None,
        "p_value": None,
        "note": None,
    }
    tested = [s for s in samples if s]
    if len(tested) < 2:
        row["note"] = "no test: values in fewer than two classes"
    elif len({v for s in tested for v in s}) < 2:
        row["note"] = "no test: every value is the same"
    else:
        result = kruskal(*tested)
        row.update(test="Kruskal-Wallis", statistic=float(result.statistic))
        row["p_value"] = float(result.pvalue)
    return row


def _categorical_rows(column, values, group, patients) -> list[dict[str, Any]]:
    """A row with the test, then n (%) per category and class."""
    categories = sorted({v for v in values.values() if v is not None})
    counts = np.array(
        [
            [sum(values[p] == cat for p in members) for members in group.values()]
            for cat in categories
        ],
        dtype=int,
    ).reshape(len(categories), len(group))
    head = {
        "characteristic": column,
        "value": None,
        "overall": None,
        **dict.fromkeys(group),
        **_categorical_test(counts),
    }
    rows = [head]
    with_value = counts.sum(axis=0)
    total = int(counts.sum())
    for i, cat in enumerate(categories):
        rows.append(
            {
                "characteristic": column,
                "value": cat,
                "overall": _count(int(counts[i].sum()), total),
                **{c: _count(int(counts[i, j]), int(with_value[j])) for j, c in enumerate(group)},
                "test": None,
                "statistic": None,
                "p_value": None,
                "note": None,
            }
        )
    return rows


def _count(n: int, total: int) -> str:
    return f"{n} ({100.0 * n / total:.0f}%)" if total else f"{n}"


def _categorical_test(counts: np.ndarray) -> dict[str, Any]:
    """Chi-squared (Yates for 2x2), Fisher's exact for a 2x2 table with expected < 5."""
    from scipy.stats import chi2_contingency, fisher_exact

    table = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    if table.ndim != 2 or min(table.shape) < 2:
        return {"test": "none", "statistic": None, "p_value": None, "note": _no_test(table)}
    result = chi2_contingency(table)
    expected = np.asarray(result.expected_freq)
    small = int(np.sum(expected < 5))
    if table.shape == (2, 2) and small:
        fisher = fisher_exact(table)
        return {
            "test": "Fisher's exact",
            "statistic": float(fisher.statistic) if math.isfinite(fisher.statistic) else None,
            "p_value": float(fisher.pvalue),
            "note": "2x2 table with an expected count under 5: Fisher's exact test "
            "(statistic: the odds ratio)",
        }
    note = None
    if small:
        note = (
            f"expected count under 5 in {small} of {expected.size} cells: the chi-squared "
            "approximation may be poor"
        )
    return {
        "test": "chi-squared",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "note": note,
    }


def _no_test(table: np.ndarray) -> str:
    if table.size == 0:
        return "no test: no values"
    if table.shape[0] < 2:
        return "no test: a single category"
    return "no test: values in fewer than two classes"
