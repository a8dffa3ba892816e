"""Table 1 of metcli evaluate: median [IQR] with Kruskal-Wallis, n (%) with chi-squared or
Fisher's exact test, against scipy computed here and R (kruskal.test, chisq.test,
fisher.test) where Rscript is installed."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy.stats import chi2_contingency, fisher_exact, kruskal

from metcli.core.errors import UsageError
from metcli.evaluation.table1 import table1_columns, table1_table

R = shutil.which("Rscript")
needs_r = pytest.mark.skipif(R is None, reason="Rscript is not installed (apt-get install r-base)")


def _r(code: str) -> float:
    done = subprocess.run(
        [R, "-e", f"options(digits = 15); {code}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(done.stdout.split()[-1])


def _cohort():
    """30 patients in three classes with age, a sex column with small counts, and site."""
    rng = np.random.default_rng(11)
    classes = ("benign", "HCC", "metastasis")
    rows, label = [], {}
    for i in range(30):
        pid = f"sub-{i:02d}"
        label[pid] = classes[i % 3]
        rows.append(
            {
                "participant_id": pid,
                "age": str(int(rng.integers(35, 85)) + 8 * (i % 3)),
                "sex": "F" if (i % 3 == 0 and i < 12) or i % 7 == 0 else "M",
                "site": "n/a" if i == 4 else ("A" if rng.random() < 0.5 else "B"),
            }
        )
    return rows, label, classes


def _table():
    rows, label, classes = _cohort()
    header, table = table1_table(rows, sorted(label), label, classes, ["age", "sex", "site"])
    return rows, label, classes, header, table


def test_numeric_characteristic_median_iqr_and_kruskal_wallis():
    rows, label, classes, header, table = _table()
    assert header == [
        "characteristic",
        "value",
        "overall",
        *classes,
        "test",
        "statistic",
        "p_value",
        "note",
    ]
    assert table[0] == {
        "characteristic": "patients",
        "value": "n",
        "overall": "30",
        **{c: "10" for c in classes},
        "test": None,
        "statistic": None,
        "p_value": None,
        "note": None,
    }
    age = next(r for r in table if r["characteristic"] == "age")
    samples = [[float(r["age"]) for r in rows if label[r["participant_id"]] == c] for c in classes]
    for cls, sample in zip(classes, samples):
        q1, median, q3 = np.percentile(sample, [25, 50, 75])
        assert age[cls] == f"{median:.1f} [{q1:.1f}, {q3:.1f}]"
    expected = kruskal(*samples)
    assert age["test"] == "Kruskal-Wallis" and age["value"] == "median [IQR]"
    assert age["statistic"] == pytest.approx(expected.statistic)
    assert age["p_value"] == pytest.approx(expected.pvalue)


def test_categorical_counts_and_chi_squared_flagged_when_expected_counts_are_small():
    rows, label, classes, _header, table = _table()
    sex = [r for r in table if r["characteristic"] == "sex"]
    head, female = sex[0], sex[1]
    counts = np.array(
        [
            [sum(r["sex"] == s and label[r["participant_id"]] == c for r in rows) for c in classes]
            for s in ("F", "M")
        ]
    )
    assert female["value"] == "F"
    for j, cls in enumerate(classes):
        assert female[cls] == f"{counts[0, j]} ({100 * counts[0, j] / 10:.0f}%)"
    expected = chi2_contingency(counts)
    assert head["test"] == "chi-squared"
    assert head["p_value"] == pytest.approx(expected.pvalue)
    assert (expected.expected_freq < 5).any() and "may be poor" in head["note"]
    site = next(r for r in table if r["characteristic"] == "site")
    assert "missing: 1" in site["note"]


def test_two_by_two_with_small_expected_counts_uses_fisher():
    rows = [
        {"participant_id": f"sub-{i:02d}", "sex": "F" if i in (0, 1, 2, 3, 10) else "M"}
        for i in range(16)
    ]
    label = {r["participant_id"]: "a" if int(r["participant_id"][4:]) < 8 else "b" for r in rows}
    _h, table = table1_table(rows, sorted(label), label, ["a", "b"], ["sex"])
    head = table[1]
    counts = np.array([[4, 1], [4, 7]])  # F, M x a, b
    expected = fisher_exact(counts)
    assert head["test"] == "Fisher's exact"
    assert head["p_value"] == pytest.approx(expected.pvalue)
    assert head["statistic"] == pytest.approx(expected.statistic)
    # Large counts: chi-squared with Yates' correction, as R's chisq.test.
    rows = [{"participant_id": f"sub-{i:03d}", "sex": "F" if i % 3 else "M"} for i in range(120)]
    label = {r["participant_id"]: "a" if i % 2 else "b" for i, r in enumerate(rows)}
    _h, table = table1_table(rows, sorted(label), label, ["a", "b"], ["sex"])
    counts = np.array(
        [
            [sum(r["sex"] == s and label[r["participant_id"]] == c for r in rows) for c in "ab"]
            for s in "FM"
        ]
    )
    assert table[1]["test"] == "chi-squared" and table[1]["note"] is None
    assert table[1]["p_value"] == pytest.approx(chi2_contingency(counts, correction=True).pvalue)


@needs_r
def test_tests_agree_with_r():
    rows, label, classes, _header, table = _table()
    by = {r["characteristic"]: r for r in table if r["test"] is not None}
    ages = ", ".join(r["age"] for r in rows)
    groups = ", ".join(f'"{label[r["participant_id"]]}"' for r in rows)
    p = _r(f"cat(kruskal.test(c({ages}), factor(c({groups})))$p.value)")
    assert by["age"]["p_value"] == pytest.approx(p, rel=1e-9)
    sexes = ", ".join(f'"{r["sex"]}"' for r in rows)
    p = _r(f"cat(suppressWarnings(chisq.test(table(c({sexes}), c({groups}))))$p.value)")
    assert by["sex"]["p_value"] == pytest.approx(p, rel=1e-9)
    p = _r("cat(fisher.test(matrix(c(4, 4, 1, 7), nrow = 2))$p.value)")
    assert fisher_exact(np.array([[4, 1], [4, 7]])).pvalue == pytest.approx(p, rel=1e-9)
    rows2 = [
        {"participant_id": f"sub-{i:02d}", "sex": "F" if i in (0, 1, 2, 3, 10) else "M"}
        for i in range(16)
    ]
    label2 = {r["participant_id"]: "a" if i < 8 else "b" for i, r in enumerate(rows2)}
    _h, table2 = table1_table(rows2, sorted(label2), label2, ["a", "b"], ["sex"])
    assert table2[1]["p_value"] == pytest.approx(p, rel=1e-9)


def test_columns_default_and_unknown():
    rows, *_ = _cohort()
    assert table1_columns(rows, None) == ["age", "sex", "site"]
    assert table1_columns([{"participant_id": "sub-1", "age": "3"}], None) == ["age"]
    assert table1_columns(rows, []) == []
    with pytest.raises(UsageError, match="lacks"):
        table1_columns(rows, ["weight"])


def test_no_test_for_a_single_category_or_one_class():
    rows = [{"participant_id": f"sub-{i}", "sex": "F", "age": "50"} for i in range(6)]
    label = {r["participant_id"]: "a" if i < 3 else "b" for i, r in enumerate(rows)}
    _h, table = table1_table(rows, sorted(label), label, ["a", "b"], ["sex", "age"])
    sex = next(r for r in table if r["characteristic"] == "sex")
    age = next(r for r in table if r["characteristic"] == "age")
    assert sex["test"] == "none" and "single category" in sex["note"]
    assert age["test"] == "none" and "the same" in age["note"]
