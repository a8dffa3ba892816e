"""metcli evaluate with several classes: per-class paired DeLong tests (against R's pROC)
and macro sensitivity and specificity."""

from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pytest
from test_evaluate import metric, run, typed_rows, write_labels, write_predictions

from conftest import invoke
from metcli.io.files import read_json

CLASSES = ("good", "disabled", "dead")
# Source: R 4.2.2, pROC 1.18.0, on pROC's aSAH data with a three-class label derived from
# gos6 (5: good, 3-4: disabled, 1: dead) and two models' softmax probabilities built from
# the markers by _asah_probabilities (rounded to 6 significant digits, as written), with
#   ra <- roc(as.integer(y == c), a_c, levels = c(0, 1), direction = "<")  # rb likewise
#   roc.test(ra, rb, method = "delong", paired = TRUE)
# PROC_SCRIPT is the same script; test_per_class_reference_recomputed_with_r reruns it.
PROC_PER_CLASS = {  # class: (AUC a, AUC b, Z, p)
    "good": (0.7904577692, 0.5967117988, 2.6379587837, 0.008340671854),
    "disabled": (0.4473684211, 0.5783874580, -0.9454504379, 0.3444289624),
    "dead": (0.7575630252, 0.6403361345, 1.4093551443, 0.1587301805),
}
PROC_SCRIPT = r"""
suppressMessages(library(pROC))
d <- read.csv(commandArgs(trailingOnly = TRUE)[1])
for (c in c("good", "disabled", "dead")) {
  y <- as.integer(d$y == c)
  ra <- roc(y, d[[paste0("a_", c)]], levels = c(0, 1), direction = "<", quiet = TRUE)
  rb <- roc(y, d[[paste0("b_", c)]], levels = c(0, 1), direction = "<", quiet = TRUE)
  t <- roc.test(ra, rb, method = "delong", paired = TRUE)
  cat(sprintf("class %s %.10f %.10f %.10f %.10g\n", c, auc(ra), auc(rb), t$statistic, t$p.value))
}
"""


def _softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _asah_probabilities(data_dir):
    """(participant ids, labels, model a's and model b's probabilities) on aSAH."""
    path = data_dir / "proc-asah" / "aSAH.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = [{"5": "good", "4": "disabled", "3": "disabled", "1": "dead"}[r["gos6"]] for r in rows]
    a, b = [], []
    for r in rows:
        s, w, n, age = (float(r[k]) for k in ("s100b", "wfns", "ndka", "age"))
        pa = _softmax(np.array([-2 * s - 0.3 * w, 0.2 * w, 2 * s + 0.2 * w]))
        pb = _softmax(np.array([-0.05 * n, 0.01 * age, 0.05 * n + 0.01 * age - 0.5]))
        a.append([float(f"{p:.6g}") for p in pa])
        b.append([float(f"{p:.6g}") for p in pb])
    pids = [f"sub-{i:03d}" for i in range(1, len(rows) + 1)]
    return pids, labels, np.array(a), np.array(b)


def _write_asah(tmp_path, data_dir):
    pids, labels, a, b = _asah_probabilities(data_dir)
    lab = write_labels(tmp_path / "participants.tsv", dict(zip(pids, labels)))
    files = []
    for name, prob in (("a", a), ("b", b)):
        rows = [
            {"participant_id": p, "level": "patient", "model": name, "probs": tuple(q)}
            for p, q in zip(pids, prob)
        ]
        files.append(write_predictions(tmp_path / name / "predictions.tsv", rows, CLASSES))
    return lab, files


@pytest.mark.data
def test_per_class_delong_agrees_with_proc(runner, tmp_path, data_dir):
    lab, files = _write_asah(tmp_path, data_dir)
    run(runner, tmp_path, files, lab, "--compare", "--no-plots")
    _, comparisons = typed_rows(tmp_path / "out" / "comparisons.tsv", "comparisons")
    per_class = {r["class"]: r for r in comparisons if r["metric"] == "auc"}
    assert set(per_class) == set(CLASSES)
    for cls, (auc_a, auc_b, z, p) in PROC_PER_CLASS.items():
        row = per_class[cls]
        assert row["test"] == "delong" and row["level"] == "patient"
        assert (row["model_a"], row["model_b"]) == ("a", "b")
        assert row["estimate_a"] == pytest.approx(auc_a, abs=1e-9)
        assert row["estimate_b"] == pytest.approx(auc_b, abs=1e-9)
        assert row["statistic"] == pytest.approx(z, abs=1e-8)
        assert row["p_value"] == pytest.approx(p, abs=1e-9)
    # The macro comparison and McNemar's stay; metrics.json and the report carry the rows.
    assert [r["metric"] for r in comparisons] == ["auc_macro", "auc", "auc", "auc", "accuracy"]
    doc = read_json(tmp_path / "out" / "metrics.json")
    assert {c.get("class") for c in doc["Comparisons"] if c["metric"] == "auc"} == set(CLASSES)
    # Table 3 shows the macro sensitivity and specificity of a multi-class model.
    _, table = typed_rows(tmp_path / "out" / "comparison_table.tsv", "comparison_table")
    assert all(r["sensitivity"] and r["specificity"] for r in table)
    report = (tmp_path / "out" / "report.html").read_text()
    assert "auc (disabled)" in report and "paired DeLong test at patient level" in report


def _proc_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    done = subprocess.run(
        ["Rscript", "-e", "suppressMessages(library(pROC))"], capture_output=True, timeout=60
    )
    return done.returncode == 0


@pytest.mark.data
def test_per_class_reference_recomputed_with_r(tmp_path, data_dir):
    _pids, labels, a, b = _asah_probabilities(data_dir)
    if not _proc_available():
        pytest.skip("R's pROC is not installed (apt-get install r-base-core r-cran-proc)")
    table = tmp_path / "pc.csv"
    lines = ["y," + ",".join(f"a_{c}" for c in CLASSES) + "," + ",".join(f"b_{c}" for c in CLASSES)]
    lines += [
        f"{y}," + ",".join(repr(float(v)) for v in (*pa, *pb)) for y, pa, pb in zip(labels, a, b)
    ]
    table.write_text("\n".join(lines) + "\n")
    script = tmp_path / "pc.R"
    script.write_text(PROC_SCRIPT)
    done = subprocess.run(
        ["Rscript", str(script), str(table)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = {
        p[1]: tuple(map(float, p[2:])) for p in (ln.split() for ln in done.stdout.splitlines())
    }
    for cls, values in PROC_PER_CLASS.items():
        assert found[cls] == pytest.approx(values, abs=1e-9), cls


def test_macro_sensitivity_and_specificity(runner, tmp_path):
    classes = ("colorectal", "pancreas", "breast")
    rng = np.random.default_rng(21)
    labels, rows = {}, []
    for i in range(1, 22):
        pid = f"sub-{i:02d}"
        labels[pid] = classes[i % 3]
        logits = rng.normal(0, 1, 3)
        logits[i % 3] += 1.2
        for lesion in range(1, int(rng.integers(1, 3)) + 1):
            p = _softmax(logits + rng.normal(0, 0.3, 3))
            rows.append({"participant_id": pid, "lesion_id": lesion, "probs": tuple(p)})
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows, classes=classes)
    invoke(
        runner,
        ["evaluate", pred, tmp_path / "out", "--labels", lab, "--bootstrap", "200", "--no-plots"],
    )
    _, metrics = typed_rows(tmp_path / "out" / "metrics.tsv", "metrics")
    for level, per_class_method, boot in (
        ("patient", "clopper_pearson", "patient_bootstrap"),
        ("lesion", "cluster_bootstrap", "cluster_bootstrap"),
    ):
        for name in ("sensitivity", "specificity"):
            per_class = [metric(metrics, "m", level, name, per_class_method, c) for c in classes]
            macro = metric(metrics, "m", level, f"{name}_macro", boot)
            assert macro["class"] is None
            assert macro["estimate"] == pytest.approx(np.mean([r["estimate"] for r in per_class]))
            assert macro["ci_lower"] <= macro["estimate"] <= macro["ci_upper"]
            assert macro["bootstrap_resamples"] == 200
    # Patient level by hand: the mean of the one-vs-rest sensitivities of the argmax calls.
    mean = {
        p: np.mean([r["probs"] for r in rows if r["participant_id"] == p], axis=0) for p in labels
    }
    called = {p: classes[int(np.argmax(m))] for p, m in mean.items()}
    sens = [np.mean([called[p] == c for p in labels if labels[p] == c]) for c in classes]
    row = metric(metrics, "m", "patient", "sensitivity_macro", "patient_bootstrap")
    assert row["estimate"] == pytest.approx(np.mean(sens))
    doc = read_json(tmp_path / "out" / "metrics.json")
    names = {m["metric"] for lv in doc["Models"][0]["levels"] for m in lv["metrics"]}
    assert {"sensitivity_macro", "specificity_macro"} <= names
