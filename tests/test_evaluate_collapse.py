"""metcli evaluate --collapse: a three-class model scored as binary (benign vs malignant)."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluate import metric, typed_rows, write_labels, write_predictions

from conftest import invoke
from metcli.core.errors import UsageError
from metcli.evaluation.collapse import class_mapping, parse_collapse
from metcli.io.files import read_json

CLASSES = ("benign", "HCC", "metastasis")
BOOT = ["--bootstrap", "200", "--no-plots"]


def _three_class(tmp_path, n=24, seed=2):
    rng = np.random.default_rng(seed)
    labels = {f"sub-{i:02d}": CLASSES[i % 3] for i in range(1, n + 1)}
    rows = []
    for pid, label in labels.items():
        logits = rng.normal(0, 1, 3)
        logits[CLASSES.index(label)] += 1.3
        p = np.exp(logits) / np.exp(logits).sum()
        rows.append({"participant_id": pid, "level": "patient", "model": "m", "probs": tuple(p)})
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "three" / "predictions.tsv", rows, CLASSES)
    return lab, pred, labels, rows


def test_collapsed_model_equals_the_binary_model_of_summed_probabilities(runner, tmp_path):
    lab, pred, labels, rows = _three_class(tmp_path)
    invoke(
        runner,
        ["evaluate", pred, tmp_path / "out", "--labels", lab, *BOOT]
        + ["--collapse", "malignant=HCC,metastasis"],
    )
    # The same figures from a binary file written by hand: probabilities summed, labels mapped.
    binary_rows = [
        {**r, "probs": (r["probs"][0], r["probs"][1] + r["probs"][2])}
        for r in rows  # benign, malignant
    ]
    mapped = {p: "benign" if c == "benign" else "malignant" for p, c in labels.items()}
    (tmp_path / "binary").mkdir()
    lab2 = write_labels(tmp_path / "binary" / "participants.tsv", mapped)
    pred2 = write_predictions(
        tmp_path / "binary" / "p" / "predictions.tsv",
        binary_rows,
        ("benign", "malignant"),
        sidecar={"positive_class": "malignant"},
    )
    invoke(runner, ["evaluate", pred2, tmp_path / "ref", "--labels", lab2, *BOOT])
    _, got = typed_rows(tmp_path / "out" / "metrics.tsv", "metrics")
    _, ref = typed_rows(tmp_path / "ref" / "metrics.tsv", "metrics")
    for name, method in (
        ("auc", "delong"),
        ("sensitivity", "clopper_pearson"),
        ("specificity", "clopper_pearson"),
        ("accuracy", "patient_bootstrap"),
        ("brier", "patient_bootstrap"),
    ):
        a, b = metric(got, "m", "patient", name, method), metric(ref, "m", "patient", name, method)
        assert a["estimate"] == pytest.approx(b["estimate"], abs=1e-6), name
        assert a["ci_lower"] == pytest.approx(b["ci_lower"], abs=1e-6), name
        assert a["positive_class"] == "malignant" and a["threshold"] == 0.5
    assert "summed probability of malignant" in a["threshold_source"]
    doc = read_json(tmp_path / "out" / "metrics.json")
    model = doc["Models"][0]
    assert model["task"] == "binary" and model["classes"] == ["benign", "malignant"]
    assert doc["Collapse"] == "malignant = HCC + metastasis"
    assert doc["Provenance"]["settings"]["collapse"] == [["malignant", ["HCC", "metastasis"]]]
    assert model["levels"][0]["class_counts"] == {"benign": 8, "malignant": 16}
    assert "malignant = HCC + metastasis" in (tmp_path / "out" / "report.html").read_text()


def test_parse_and_mapping():
    groups = parse_collapse(["malignant=HCC, metastasis"])
    assert groups == (("malignant", ("HCC", "metastasis")),)
    assert class_mapping(groups, CLASSES) == {
        "benign": "benign",
        "HCC": "malignant",
        "metastasis": "malignant",
    }
    # Several classes left: they become "other".
    groups = parse_collapse({"liver": ["HCC", "ICC"]})
    assert class_mapping(groups, ("HCC", "ICC", "colon", "pancreas"))["colon"] == "other"
    for bad, message in (
        (["malignant"], "no '='"),
        (["=HCC"], "empty"),
        (["a=HCC", "b=HCC"], "two groups"),
        (["a=HCC", "a=ICC"], "twice"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_collapse(bad)


def test_bad_collapse_is_a_usage_error(runner, tmp_path):
    lab, pred, _labels, _rows = _three_class(tmp_path, n=9)
    for args, message in (
        (["--collapse", "malignant=HCC,liver"], "lacks"),
        (["--collapse", "all=benign,HCC,metastasis"], "one class"),
        (["--collapse", "malignant=HCC,metastasis", "--positive-class", "HCC"], "not a class"),
    ):
        result = invoke(
            runner,
            ["evaluate", pred, tmp_path / "out", "--labels", lab, *BOOT, *args],
            expect=2,
        )
        assert message in result.stderr, args
        assert not (tmp_path / "out").exists()
