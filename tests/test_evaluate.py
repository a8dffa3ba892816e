"""metcli evaluate: metrics, intervals, comparisons and plots, from small prediction files."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.metrics import roc_auc_score
from test_stats import PROC_AUC, PROC_TESTS, read_asah

from conftest import REPO, invoke
from metcli.evaluation import stats
from metcli.io.files import read_json, read_tsv
from metcli.io.schemas import load_schema, validate, validate_rows

CLASSES = ("colorectal", "pancreas")
BOOT = ["--bootstrap", "200"]


# ----------------------------------------------------------------------------- helpers
def write_labels(path: Path, labels: dict[str, str]) -> Path:
    lines = ["participant_id\tprimary\tage"]
    lines += [f"{pid}\t{label}\t60" for pid, label in sorted(labels.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_predictions(path: Path, rows: list[dict], classes=CLASSES, sidecar=None) -> Path:
    """rows: participant_id, lesion_id (None at patient level), level, model, set, probs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [
        "participant_id",
        "lesion_id",
        "level",
        "model",
        "set",
        *[f"prob_{c}" for c in classes],
        "predicted",
    ]
    lines = ["\t".join(columns)]
    for row in rows:
        probs = row["probs"]
        cells = [
            row["participant_id"],
            "n/a" if row.get("lesion_id") is None else str(row["lesion_id"]),
            row.get("level", "lesion"),
            row.get("model", "m"),
            row.get("set", "test"),
            *[f"{p:.6g}" for p in probs],
            classes[int(np.argmax(probs))],
        ]
        lines.append("\t".join(cells))
    path.write_text("\n".join(lines) + "\n")
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def cohort(n_patients=16, seed=0, strength=1.5, max_lesions=4, model="m"):
    """Labels and lesion rows with a patient effect; a third of patients are pancreatic."""
    rng = np.random.default_rng(seed)
    labels, rows = {}, []
    for i in range(n_patients):
        pid = f"sub-{i + 1:03d}"
        label = CLASSES[1] if i % 3 == 0 else CLASSES[0]
        labels[pid] = label
        effect = rng.normal(strength if label == CLASSES[1] else 0.0, 1.0)
        for lesion in range(1, int(rng.integers(1, max_lesions + 1)) + 1):
            p = float(1 / (1 + np.exp(-(effect - strength / 2 + rng.normal(0, 0.4)))))
            rows.append(
                {"participant_id": pid, "lesion_id": lesion, "model": model, "probs": (1 - p, p)}
            )
    return labels, rows


def typed_rows(path: Path, schema: str) -> tuple[list[str], list[dict]]:
    """A written TSV read back with the types its schema declares (n/a -> None)."""
    properties = load_schema(schema)["properties"]
    raw = read_tsv(path)
    columns = list(raw[0]) if raw else []
    out = []
    for row in raw:
        typed = {}
        for key, value in row.items():
            kinds = properties.get(key, {}).get("type", "string")
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if value == "n/a" and "null" in kinds:
                typed[key] = None
            elif "boolean" in kinds and value in ("true", "false"):
                typed[key] = value == "true"
            elif "integer" in kinds and "string" not in kinds:
                typed[key] = int(value)
            elif "number" in kinds:
                typed[key] = float(value)
            else:
                typed[key] = value
        out.append(typed)
    return columns, out


def metric(rows, model, level, name, method, cls=None):
    found = [
        r
        for r in rows
        if r["model"] == model
        and r["level"] == level
        and r["metric"] == name
        and r["ci_method"] == method
        and (cls is None or r["class"] == cls)
    ]
    assert len(found) == 1, (model, level, name, method, found)
    return found[0]


def run(runner, tmp_path, predictions, labels, *extra, expect=0, out="out"):
    return invoke(
        runner,
        ["evaluate", *predictions, tmp_path / out, "--labels", labels, *BOOT, *extra],
        expect=expect,
    )


# ----------------------------------------------------------------------------- the command
def test_cli_writes_metrics_plots_and_comparisons_that_follow_their_schemas(runner, tmp_path):
    labels, rows_a = cohort(seed=1, model="knn")
    _, rows_b = cohort(seed=1, strength=3.0, model="rf")
    lab = write_labels(tmp_path / "participants.tsv", labels)
    write_predictions(
        tmp_path / "knn" / "predictions.tsv",
        rows_a,
        sidecar={
            "positive_class": "pancreas",
            "threshold": 0.4,
            "threshold_source": "youden on out-of-fold predictions",
        },
    )
    pb = write_predictions(
        tmp_path / "rf" / "predictions.tsv",
        rows_b,
        sidecar={"positive_class": "pancreas", "selected": True},
    )
    result = run(runner, tmp_path, [tmp_path / "knn", pb], lab, "--compare")
    out = tmp_path / "out"
    assert result.stdout.splitlines()[0] == "model\tlevel\tauc\taccuracy"
    expected = {
        "dataset_description.json",
        "metrics.tsv",
        "metrics.json",
        "comparisons.tsv",
        "comparisons.json",
        "comparison_table.tsv",
        "comparison_table.json",
        "lesion_grid.png",
        "lesion_grid.tsv",
        "lesion_grid.json",
        "report.html",
        "report.json",
        "table1.tsv",
        "table1.json",
    }
    for level in ("patient", "lesion"):
        for name in ("roc", "calibration", "confusion"):
            expected |= {f"{name}_{level}.{ext}" for ext in ("png", "tsv", "json")}
    assert {p.name for p in out.iterdir()} == expected
    schemas = {
        "metrics": "metrics",
        "comparisons": "comparisons",
        "comparison_table": "comparison_table",
        "lesion_grid": "lesion_grid",
    }
    for path in out.glob("*.tsv"):
        schema = schemas.get(path.stem, path.stem.rsplit("_", 1)[0])
        columns, rows = typed_rows(path, schema)
        assert rows, path.name
        validate_rows(rows, columns, schema, where=path)
    for path in out.glob("*.json"):
        if path.name == "dataset_description.json":
            validate(read_json(path), "dataset_description")
            continue
        doc = read_json(path)
        validate(doc, "sidecar", where=path)
        text = path.read_text()
        assert str(tmp_path) not in text, f"{path.name} holds an absolute path"
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    doc = read_json(out / "metrics.json")
    validate(doc, "metrics_json")
    assert {o["name"] for o in doc["Provenance"]["outputs"]} == {
        p.name for p in out.iterdir() if p.suffix in (".tsv", ".png", ".html")
    }
    models = {m["model"]: m for m in doc["Models"]}
    assert models["rf"]["selected_by_cv"] is True and models["knn"]["selected_by_cv"] is None
    knn_patient = models["knn"]["levels"][0]
    assert knn_patient["level"] == "patient" and knn_patient["derived_from_lesions"] is True
    assert knn_patient["threshold"] == 0.4
    assert knn_patient["threshold_source"].startswith("youden on out-of-fold predictions")
    assert models["rf"]["levels"][0]["threshold_source"].startswith("default 0.5")
    # The comparison table marks the model chosen by cross-validation.
    _, table = typed_rows(out / "comparison_table.tsv", "comparison_table")
    assert [(r["model"], r["level"], r["selected_by_cv"]) for r in table] == [
        ("knn", "patient", None),
        ("rf", "patient", True),
        ("knn", "lesion", None),
        ("rf", "lesion", True),
    ]


def test_patient_level_first_and_lesion_level_never_independent(runner, tmp_path):
    labels, rows = cohort(seed=2)
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows)
    run(runner, tmp_path, [pred], lab, "--no-plots")
    _, metrics = typed_rows(tmp_path / "out" / "metrics.tsv", "metrics")
    levels = [r["level"] for r in metrics]
    assert levels == sorted(levels, key=["patient", "lesion"].index)
    patient = [r for r in metrics if r["level"] == "patient"]
    lesion = [r for r in metrics if r["level"] == "lesion"]
    assert {r["ci_method"] for r in lesion} == {"cluster_bootstrap", "obuchowski"}
    assert all("not treated as independent" in r["note"] for r in lesion)
    assert {(r["metric"], r["ci_method"]) for r in patient} == {
        ("auc", "delong"),
        ("auc", "patient_bootstrap"),
        ("accuracy", "patient_bootstrap"),
        ("sensitivity", "clopper_pearson"),
        ("specificity", "clopper_pearson"),
        ("ppv", "patient_bootstrap"),
        ("npv", "patient_bootstrap"),
        ("f1", "patient_bootstrap"),
        ("brier", "patient_bootstrap"),
    }
    assert all(
        r["ci_lower"] is not None and r["ci_lower"] <= r["estimate"] <= r["ci_upper"]
        for r in metrics
    )
    doc = read_json(tmp_path / "out" / "metrics.json")
    assert "not independent" in doc["LesionLevel"] and doc["UnitOfInference"] == "patient"


def test_patient_probabilities_are_the_mean_of_the_lesions(runner, tmp_path):
    labels, rows = cohort(seed=3, n_patients=20)
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows)
    run(runner, tmp_path, [pred], lab, "--no-plots", "--level", "patient")
    _, metrics = typed_rows(tmp_path / "out" / "metrics.tsv", "metrics")
    pids = sorted(labels)
    mean = [np.mean([r["probs"][1] for r in rows if r["participant_id"] == p]) for p in pids]
    truth = [labels[p] == "pancreas" for p in pids]
    auc = metric(metrics, "m", "patient", "auc", "delong")
    assert auc["estimate"] == pytest.approx(roc_auc_score(truth, mean), abs=1e-9)
    assert auc["derived_from_lesions"] is True and "mean of its lesions" in auc["note"]
    ci = stats.delong_ci(np.round(mean, 12), truth)
    assert (auc["ci_lower"], auc["ci_upper"]) == pytest.approx((ci.lower, ci.upper), abs=1e-6)
    assert {r["level"] for r in metrics} == {"patient"}
    # The confusion matrix applies the default threshold to the mean probabilities.
    doc = read_json(tmp_path / "out" / "metrics.json")
    level = doc["Models"][0]["levels"][0]
    predicted = np.array(mean) >= 0.5
    truth = np.array(truth)
    assert level["confusion_matrix"]["counts"] == [
        [int(np.sum(~truth & ~predicted)), int(np.sum(~truth & predicted))],
        [int(np.sum(truth & ~predicted)), int(np.sum(truth & predicted))],
    ]
    assert level["threshold"] == 0.5 and "default 0.5" in level["threshold_source"]
    assert doc["Models"][0]["positive_class"] == "pancreas"
    assert doc["Models"][0]["positive_class_source"].startswith("default")


def test_patient_rows_are_used_as_given_and_positive_class_can_be_chosen(runner, tmp_path):
    labels = {f"sub-{i:02d}": CLASSES[i % 2] for i in range(1, 13)}
    probs = [0.9, 0.2, 0.8, 0.3, 0.45, 0.55, 0.7, 0.1, 0.6, 0.4, 0.35, 0.65]
    rows = [
        {"participant_id": pid, "lesion_id": None, "level": "patient", "probs": (p, 1 - p)}
        for pid, p in zip(sorted(labels), probs)
    ]
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(
        tmp_path / "p" / "predictions.tsv",
        rows,
        sidecar={
            "positive_class": "pancreas",
            "threshold": 0.3,
            "threshold_source": "fixed in the protocol",
        },
    )
    run(runner, tmp_path, [pred], lab, "--no-plots", "--positive-class", "colorectal")
    _, metrics = typed_rows(tmp_path / "out" / "metrics.tsv", "metrics")
    assert {r["level"] for r in metrics} == {"patient"}
    sens = metric(metrics, "m", "patient", "sensitivity", "clopper_pearson")
    assert sens["class"] == sens["positive_class"] == "colorectal"
    assert sens["threshold"] == 0.3 and sens["threshold_source"] == "fixed in the protocol"
    assert sens["derived_from_lesions"] is False
    truth = np.array([labels[p] == "colorectal" for p in sorted(labels)])
    called = np.array(probs) >= 0.3
    tp = int(np.sum(truth & called))
    assert sens["estimate"] == pytest.approx(tp / truth.sum())
    low, high = stats.clopper_pearson(tp, int(truth.sum()))
    assert (sens["ci_lower"], sens["ci_upper"]) == pytest.approx((low, high))
    auc = metric(metrics, "m", "patient", "auc", "delong")
    assert auc["estimate"] == pytest.approx(roc_auc_score(truth, probs))
    doc = read_json(tmp_path / "out" / "metrics.json")
    assert doc["Models"][0]["positive_class_source"] == "--positive-class"
    result = run(runner, tmp_path, [pred], lab, "--positive-class", "liver", expect=2, out="out2")
    assert "--positive-class 'liver' is not a class" in result.stderr
    assert not (tmp_path / "out2").exists()


def test_perfect_and_all_wrong_predictions(runner, tmp_path):
    labels = {f"sub-{i:02d}": CLASSES[i % 2] for i in range(1, 11)}
    lab = write_labels(tmp_path / "participants.tsv", labels)
    for name, right in (("perfect", True), ("wrong", False)):
        rows = []
        for pid in sorted(labels):
            p = 0.9 if (labels[pid] == "pancreas") == right else 0.1
            rows += [
                {"participant_id": pid, "lesion_id": k, "probs": (1 - p, p), "model": name}
                for k in (1, 2)
            ]
        pred = write_predictions(tmp_path / name / "predictions.tsv", rows)
        run(runner, tmp_path, [pred], lab, "--no-plots", out=name)
        _, metrics = typed_rows(tmp_path / name / "metrics.tsv", "metrics")
        value = 1.0 if right else 0.0
        for level in ("patient", "lesion"):
            for figure in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
                rows_here = [r for r in metrics if r["level"] == level and r["metric"] == figure]
                if figure in ("ppv", "npv", "f1") and not right:
                    assert all(r["estimate"] == 0.0 for r in rows_here)
                    continue
                assert all(r["estimate"] == value for r in rows_here), (figure, level)
            assert (
                metric(
                    metrics,
                    name,
                    level,
                    "auc",
                    "cluster_bootstrap" if level == "lesion" else "delong",
                )["estimate"]
                == value
            )
        # Clopper-Pearson of 5 of 5 (or 0 of 5) patients.
        sens = metric(metrics, name, "patient", "sensitivity", "clopper_pearson")
        if right:
            assert (
                sens["ci_lower"] == pytest.approx(beta.ppf(0.025, 5, 1)) and sens["ci_upper"] == 1
            )
        else:
            assert sens["ci_lower"] == 0 and sens["ci_upper"] == pytest.approx(
                beta.ppf(0.975, 1, 5)
            )
        brier = metric(metrics, name, "patient", "brier", "patient_bootstrap")["estimate"]
        assert brier == pytest.approx(0.01 if right else 0.81)


def test_ties_and_a_single_class_in_the_test_set(runner, tmp_path):
    labels = {f"sub-{i:02d}": CLASSES[i % 2] for i in range(1, 9)}
    lab = write_labels(tmp_path / "participants.tsv", labels)
    ties = [{"participant_id": pid, "lesion_id": 1, "probs": (0.5, 0.5)} for pid in labels]
    pred = write_predictions(tmp_path / "ties" / "predictions.tsv", ties)
    run(runner, tmp_path, [pred], lab, "--no-plots", out="ties_out")
    _, metrics = typed_rows(tmp_path / "ties_out" / "metrics.tsv", "metrics")
    assert metric(metrics, "m", "patient", "auc", "delong")["estimate"] == 0.5
    assert metric(metrics, "m", "lesion", "auc", "obuchowski")["estimate"] == 0.5
    # 0.5 >= threshold 0.5: every patient called pancreas, so no NPV.
    assert metric(metrics, "m", "patient", "specificity", "clopper_pearson")["estimate"] == 0.0
    npv = metric(metrics, "m", "patient", "npv", "none")
    assert npv["estimate"] is None and "undefined" in npv["note"]
    # Only colorectal patients in the test set: the AUC is undefined, not a crash.
    single = [
        {
            "participant_id": pid,
            "lesion_id": 1,
            "probs": (0.7, 0.3),
            "set": "test" if labels[pid] == "colorectal" else "train",
        }
        for pid in labels
    ]
    pred = write_predictions(tmp_path / "single" / "predictions.tsv", single)
    run(runner, tmp_path, [pred], lab, out="single_out")
    out = tmp_path / "single_out"
    _, metrics = typed_rows(out / "metrics.tsv", "metrics")
    for level in ("patient", "lesion"):
        auc = [r for r in metrics if r["level"] == level and r["metric"] == "auc"]
        assert len(auc) == 1 and auc[0]["estimate"] is None and auc[0]["ci_method"] == "none"
        assert "only one class" in auc[0]["note"] and "4 colorectal" in auc[0]["note"]
    sens = metric(metrics, "m", "patient", "sensitivity", "none")
    assert sens["estimate"] is None and "no pancreas patients" in sens["note"]
    assert metric(metrics, "m", "patient", "specificity", "clopper_pearson")["estimate"] == 1.0
    assert metric(metrics, "m", "patient", "accuracy", "patient_bootstrap")["estimate"] == 1.0
    validate(read_json(out / "metrics.json"), "metrics_json")
    assert (out / "roc_patient.png").is_file()


def test_bootstrap_is_deterministic_for_a_seed(runner, tmp_path):
    labels, rows = cohort(seed=4)
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows)
    run(runner, tmp_path, [pred], lab, "--no-plots", "--seed", "5", out="a")
    run(runner, tmp_path, [pred], lab, "--no-plots", "--seed", "5", out="b")
    run(runner, tmp_path, [pred], lab, "--no-plots", "--seed", "6", out="c")
    text = {k: (tmp_path / k / "metrics.tsv").read_text() for k in "abc"}
    assert text["a"] == text["b"] and text["a"] != text["c"]
    _, a = typed_rows(tmp_path / "a" / "metrics.tsv", "metrics")
    _, c = typed_rows(tmp_path / "c" / "metrics.tsv", "metrics")
    for ra, rc in zip(a, c):  # only bootstrap intervals depend on the seed
        assert ra["estimate"] == rc["estimate"]
        if ra["ci_method"] in ("delong", "obuchowski", "clopper_pearson"):
            assert (ra["ci_lower"], ra["ci_upper"]) == (rc["ci_lower"], rc["ci_upper"])


def test_several_classes(runner, tmp_path):
    classes = ("colorectal", "pancreas", "breast")
    rng = np.random.default_rng(6)
    labels, rows = {}, []
    for i in range(1, 19):
        pid = f"sub-{i:02d}"
        labels[pid] = classes[i % 3]
        logits = rng.normal(0, 1, 3)
        logits[i % 3] += 1.5
        for lesion in range(1, int(rng.integers(1, 4)) + 1):
            p = np.exp(logits + rng.normal(0, 0.3, 3))
            rows.append({"participant_id": pid, "lesion_id": lesion, "probs": tuple(p / p.sum())})
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows, classes=classes)
    run(runner, tmp_path, [pred], lab)
    out = tmp_path / "out"
    columns, metrics = typed_rows(out / "metrics.tsv", "metrics")
    validate_rows(metrics, columns, "metrics")
    for level, method in (("patient", "delong"), ("lesion", "obuchowski")):
        per_class = [metric(metrics, "m", level, "auc", method, c)["estimate"] for c in classes]
        boot = "patient_bootstrap" if level == "patient" else "cluster_bootstrap"
        macro = metric(metrics, "m", level, "auc_macro", boot)
        assert macro["estimate"] == pytest.approx(np.mean(per_class))
        assert macro["threshold"] is None and "highest probability" in macro["threshold_source"]
        for c in classes:
            metric(
                metrics,
                "m",
                level,
                "sensitivity",
                "clopper_pearson" if level == "patient" else boot,
                c,
            )
        metric(metrics, "m", level, "f1_macro", boot)
    # Brier score over several classes: mean over lesions of the summed squared errors.
    prob = np.array([r["probs"] for r in rows])
    onehot = np.array([[labels[r["participant_id"]] == c for c in classes] for r in rows])
    assert metric(metrics, "m", "lesion", "brier", "cluster_bootstrap")[
        "estimate"
    ] == pytest.approx(np.mean(np.sum((onehot - prob) ** 2, axis=1)), abs=1e-6)
    doc = read_json(out / "metrics.json")
    assert doc["Models"][0]["task"] == "multiclass" and doc["Models"][0]["positive_class"] is None
    _, roc = typed_rows(out / "roc_patient.tsv", "roc")
    assert {r["class"] for r in roc} == set(classes)


def test_confusion_roc_and_lesion_grid_tables_hold_the_numbers(runner, tmp_path):
    labels, rows = cohort(seed=7, n_patients=12)
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows)
    run(runner, tmp_path, [pred], lab)
    out = tmp_path / "out"
    doc = read_json(out / "metrics.json")
    _, confusion = typed_rows(out / "confusion_lesion.tsv", "confusion")
    lesion_level = doc["Models"][0]["levels"][1]
    counts = lesion_level["confusion_matrix"]["counts"]
    for r in confusion:
        assert (
            r["count"]
            == counts[CLASSES.index(r["true_class"])][CLASSES.index(r["predicted_class"])]
        )
    _, grid = typed_rows(out / "lesion_grid.tsv", "lesion_grid")
    assert len(grid) == len(rows)
    wrong = sum(
        1 for r in rows if (r["probs"][1] >= 0.5) != (labels[r["participant_id"]] == "pancreas")
    )
    assert sum(1 for r in grid if not r["correct"]) == wrong
    assert len({r["row"] for r in grid}) == len(labels)
    _, metrics = typed_rows(out / "metrics.tsv", "metrics")
    _, roc = typed_rows(out / "roc_lesion.tsv", "roc")
    point = [r for r in roc if r["kind"] == "operating_point"]
    sens = metric(metrics, "m", "lesion", "sensitivity", "cluster_bootstrap")["estimate"]
    spec = metric(metrics, "m", "lesion", "specificity", "cluster_bootstrap")["estimate"]
    assert len(point) == 1 and point[0]["tpr"] == pytest.approx(sens)
    assert point[0]["fpr"] == pytest.approx(1 - spec)
    band = [r for r in roc if r["kind"] == "band"]
    assert len(band) == 101 and all(r["tpr_lower"] <= r["tpr_upper"] for r in band)
    _, calibration = typed_rows(out / "calibration_patient.tsv", "calibration")
    overall = [r for r in calibration if r["kind"] == "overall"][0]
    assert overall["count"] == len(labels)
    assert overall["observed_fraction"] == pytest.approx(
        sum(v == "pancreas" for v in labels.values()) / len(labels)
    )
    assert sum(r["count"] for r in calibration if r["kind"] == "bin") == len(labels)


@pytest.mark.data
def test_proc_asah_end_to_end(runner, tmp_path, data_dir):
    """The command's patient-level DeLong CIs and paired tests agree with pROC."""
    poor, markers = read_asah(data_dir)
    pids = [f"sub-{i:03d}" for i in range(1, poor.size + 1)]
    lab = write_labels(
        tmp_path / "participants.tsv", {p: "Poor" if y else "Good" for p, y in zip(pids, poor)}
    )
    files = []
    for name, values in markers.items():
        scaled = values / values.max()  # a monotone map: the same ROC curve
        rows = [
            {
                "participant_id": p,
                "lesion_id": None,
                "level": "patient",
                "model": name,
                "probs": (1 - s, s),
            }
            for p, s in zip(pids, scaled)
        ]
        files.append(
            write_predictions(
                tmp_path / name / "predictions.tsv",
                rows,
                classes=("Good", "Poor"),
                sidecar={"positive_class": "Poor"},
            )
        )
    run(runner, tmp_path, files, lab, "--compare", "--no-plots")
    _, metrics = typed_rows(tmp_path / "out" / "metrics.tsv", "metrics")
    for name, (auc, low, high, _var) in PROC_AUC.items():
        row = metric(metrics, name, "patient", "auc", "delong")
        assert [round(v, 3) for v in (row["estimate"], row["ci_lower"], row["ci_upper"])] == [
            round(v, 3) for v in (auc, low, high)
        ]
    _, comparisons = typed_rows(tmp_path / "out" / "comparisons.tsv", "comparisons")
    for (a, b), (z, p) in PROC_TESTS.items():
        row = next(
            r
            for r in comparisons
            if r["metric"] == "auc" and {r["model_a"], r["model_b"]} == {a, b}
        )
        sign = 1 if row["model_a"] == a else -1
        assert round(sign * row["statistic"], 3) == round(z, 3)
        assert round(row["p_value"], 3) == round(p, 3) and row["test"] == "delong"


def test_compare_mcnemar_and_lesion_bootstrap_test(runner, tmp_path):
    labels, rows_a = cohort(seed=8, n_patients=18, model="a")
    _, rows_b = cohort(seed=9, n_patients=18, model="b")
    # The same lesions in both models (b's lesion count per patient follows a's).
    keys = {(r["participant_id"], r["lesion_id"]) for r in rows_a}
    rows_b = [r for r in rows_b if (r["participant_id"], r["lesion_id"]) in keys]
    lab = write_labels(tmp_path / "participants.tsv", labels)
    fa = write_predictions(tmp_path / "a" / "predictions.tsv", rows_a)
    fb = write_predictions(tmp_path / "b" / "predictions.tsv", rows_b)
    run(runner, tmp_path, [fa, fb], lab, "--compare", "--no-plots")
    _, comparisons = typed_rows(tmp_path / "out" / "comparisons.tsv", "comparisons")
    by = {(r["level"], r["metric"]): r for r in comparisons}
    assert set(by) == {
        ("patient", "auc"),
        ("patient", "accuracy"),
        ("lesion", "auc"),
        ("lesion", "accuracy"),
    }
    pids = sorted(labels)

    def patient_correct(rows_):
        mean = {
            p: np.mean([r["probs"][1] for r in rows_ if r["participant_id"] == p])
            for p in pids
            if any(r["participant_id"] == p for r in rows_)
        }
        return {p: (m >= 0.5) == (labels[p] == "pancreas") for p, m in mean.items()}

    ca, cb = patient_correct(rows_a), patient_correct(rows_b)
    common = sorted(set(ca) & set(cb))
    expected = stats.mcnemar_test([ca[p] for p in common], [cb[p] for p in common])
    assert by[("patient", "accuracy")]["p_value"] == pytest.approx(expected.p_value)
    assert by[("patient", "accuracy")]["test"].startswith("mcnemar")
    lesion = by[("lesion", "auc")]
    assert lesion["test"].startswith("cluster bootstrap") and 0 <= lesion["p_value"] <= 1
    assert "not treated as independent" in lesion["note"]
    assert lesion["n_lesions"] == len(rows_b)
    doc = read_json(tmp_path / "out" / "metrics.json")
    assert len(doc["Comparisons"]) == 4


def test_rerun_is_skipped_unless_overwrite(runner, tmp_path):
    labels, rows = cohort(seed=10, n_patients=9)
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows)
    run(runner, tmp_path, [pred], lab, "--no-plots")
    before = (tmp_path / "out" / "metrics.json").stat().st_mtime_ns
    result = run(runner, tmp_path, [pred], lab, "--no-plots")
    assert "up to date" in result.stderr
    assert (tmp_path / "out" / "metrics.json").stat().st_mtime_ns == before
    run(runner, tmp_path, [pred], lab, "--no-plots", "--overwrite")
    assert (tmp_path / "out" / "metrics.json").stat().st_mtime_ns != before
    result = run(runner, tmp_path, [pred], lab, "--no-plots", "--seed", "3")  # settings changed
    assert "up to date" not in result.stderr


# ----------------------------------------------------------------------------- bad input
def _bad_cases(tmp_path):
    labels, rows = cohort(seed=11, n_patients=6)
    good = [dict(r) for r in rows]

    def edit(fn):
        changed = [dict(r) for r in good]
        fn(changed)
        return changed

    return labels, {
        "probability above 1": (
            edit(lambda rs: rs[0].update(probs=(-0.2, 1.2))),
            "prob_colorectal = -0.2 is outside [0, 1]",
        ),
        "unknown participant": (
            edit(lambda rs: rs[0].update(participant_id="sub-999")),
            "unknown participant(s) sub-999",
        ),
        "two sets": (edit(lambda rs: rs[0].update(set="train")), "is in both the"),
        "lesion id missing": (
            edit(lambda rs: rs[0].update(lesion_id=None)),
            "does not follow the predictions schema",
        ),
    }


@pytest.mark.parametrize(
    "case", ["probability above 1", "unknown participant", "two sets", "lesion id missing"]
)
def test_bad_predictions_give_one_line_and_write_nothing(runner, tmp_path, case):
    labels, cases = _bad_cases(tmp_path)
    rows, message = cases[case]
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows)
    result = run(runner, tmp_path, [pred], lab, expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metcli: error: ")
    assert str(pred) in lines[0] and message in lines[0] and "Fix:" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_inputs_of_other_kinds(runner, tmp_path):
    labels, rows = cohort(seed=12, n_patients=6)
    lab = write_labels(tmp_path / "participants.tsv", labels)
    pred = write_predictions(tmp_path / "p" / "predictions.tsv", rows)
    # Not a number.
    text = pred.read_text().splitlines()
    cells = text[1].split("\t")
    cells[5] = "high"
    (tmp_path / "q").mkdir()
    bad = tmp_path / "q" / "predictions.tsv"
    bad.write_text("\n".join([text[0], "\t".join(cells), *text[2:]]) + "\n")
    result = run(runner, tmp_path, [bad], lab, expect=1)
    assert "prob_colorectal = 'high' is not a number" in result.stderr
    # A label that is not a class of the model.
    wrong = dict(labels)
    wrong[sorted(labels)[0]] = "liver"
    lab2 = write_labels(tmp_path / "other.tsv", wrong)
    result = run(runner, tmp_path, [pred], lab2, expect=1)
    assert "the label 'liver'" in result.stderr and "other.tsv" in result.stderr
    # A folder without predictions.
    (tmp_path / "empty").mkdir()
    result = run(runner, tmp_path, [tmp_path / "empty"], lab, expect=1)
    assert "no predictions.tsv" in result.stderr
    # --compare with one model is a usage error.
    result = run(runner, tmp_path, [pred], lab, "--compare", expect=2)
    assert "--compare needs two or more models" in result.stderr
    # No rows in the chosen set.
    result = run(runner, tmp_path, [pred], lab, "--set", "val", expect=1)
    assert "no rows in the val set" in result.stderr
    # The same model name in two files.
    other = write_predictions(tmp_path / "r" / "predictions.tsv", rows)
    result = run(runner, tmp_path, [pred, other], lab, expect=1)
    assert "model 'm' is also in" in result.stderr
    assert not (tmp_path / "out").exists()
    # Too few resamples.
    result = invoke(
        runner, ["evaluate", pred, tmp_path / "out", "--labels", lab, "--bootstrap", "10"], expect=2
    )
    assert not (tmp_path / "out").exists()


def test_library_import_is_light():
    code = textwrap.dedent("""
        import sys
        import metcli.evaluation.evaluate, metcli.evaluation.plots, metcli.evaluation.stats
        heavy = [m for m in ("matplotlib", "sklearn", "statsmodels") if m in sys.modules]
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ----------------------------------------------------------------------------- the report
def _report_run(runner, tmp_path):
    labels, rows_a = cohort(seed=13, n_patients=12, model="knn")
    _, rows_b = cohort(seed=13, strength=3.0, n_patients=12, model="rf")
    lab = write_labels(tmp_path / "participants.tsv", labels)
    fa = write_predictions(tmp_path / "a" / "predictions.tsv", rows_a)
    fb = write_predictions(tmp_path / "b" / "predictions.tsv", rows_b, sidecar={"selected": True})
    run(runner, tmp_path, [fa, fb], lab, "--compare")
    return tmp_path / "out" / "report.html"


def test_report_is_one_self_contained_page_with_every_section(runner, tmp_path):
    from metcli.evaluation.report import SECTIONS

    path = _report_run(runner, tmp_path)
    text = path.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in text, section
    assert "Research use only" in text
    assert "<script" not in text and "<link" not in text
    assert 'src="http' not in text and "url(http" not in text
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert text.count('src="data:image/png;base64,') == len(pngs) == 7
    assert "TRIPOD+AI" in text and "CLAIM" in text and "to be completed by the authors" in text
    assert "model chosen by cross-validation: rf" in text
    assert "Obuchowski" in text and "DeLong" in text and "Clopper-Pearson" in text
    validate(read_json(path.with_suffix(".json")), "sidecar")


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (apt-get install chromium)")
def test_report_opens_in_headless_chromium_and_shows_every_section(runner, tmp_path):
    from metcli.evaluation.report import SECTIONS

    path = _report_run(runner, tmp_path)
    probe = tmp_path / "probe.html"
    checker = (
        "<script>window.addEventListener('load', () => {const out = {};"
        f"for (const id of {json.dumps(list(SECTIONS))}) {{"
        "const el = document.getElementById(id);"
        "out[id] = el ? el.getBoundingClientRect().height : -1;}"
        "out.images = [...document.images].map(i => i.complete && i.naturalWidth > 0);"
        "document.body.setAttribute('data-check', JSON.stringify(out));});</script>"
    )
    probe.write_text(path.read_text().replace("</body>", checker + "</body>"))
    browser = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=5000",
    ]
    done = subprocess.run(
        [*browser, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    marker = 'data-check="'
    assert marker in done.stdout, done.stderr[-2000:]
    start = done.stdout.index(marker) + len(marker)
    found = json.loads(html.unescape(done.stdout[start : done.stdout.index('"', start)]))
    for section in SECTIONS:
        assert found[section] > 20, (section, found[section])
    assert len(found["images"]) == 7 and all(found["images"])
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000


def test_several_classes_compared_and_levels_chosen(runner, tmp_path):
    classes = ("colorectal", "pancreas", "breast")
    rng = np.random.default_rng(14)
    labels = {f"sub-{i:02d}": classes[i % 3] for i in range(1, 16)}
    files = []
    for model, strength in (("weak", 0.5), ("strong", 2.5)):
        rows = []
        for pid, label in labels.items():
            logits = rng.normal(0, 1, 3)
            logits[classes.index(label)] += strength
            p = np.exp(logits) / np.exp(logits).sum()
            rows.append(
                {
                    "participant_id": pid,
                    "lesion_id": None,
                    "level": "patient",
                    "model": model,
                    "probs": tuple(p),
                }
            )
        files.append(write_predictions(tmp_path / model / "predictions.tsv", rows, classes=classes))
    lab = write_labels(tmp_path / "participants.tsv", labels)
    run(runner, tmp_path, files, lab, "--compare", "--no-plots")
    _, comparisons = typed_rows(tmp_path / "out" / "comparisons.tsv", "comparisons")
    assert [(r["level"], r["metric"]) for r in comparisons] == [
        ("patient", "auc_macro"),
        *[("patient", "auc")] * 3,  # the paired DeLong test of each class
        ("patient", "accuracy"),
    ]
    macro = comparisons[0]
    assert macro["test"] == "patient bootstrap" and 0 <= macro["p_value"] <= 1
    _, metrics = typed_rows(tmp_path / "out" / "metrics.tsv", "metrics")
    assert macro["estimate_a"] == pytest.approx(
        metric(metrics, "weak", "patient", "auc_macro", "patient_bootstrap")["estimate"]
    )
    # Patient rows only: asking for the lesion level is an error that names the fix.
    result = run(runner, tmp_path, files[:1], lab, "--level", "lesion", expect=1, out="les")
    assert "has no lesion rows" in result.stderr and not (tmp_path / "les").exists()


# ----------------------------------------------------------------------------- lesion overlays
@pytest.fixture(scope="module")
def overlay_cohort(tmp_path_factory):
    """Two synthetic subjects (CT, truth lesion maps) and lesion predictions for them."""
    from metcli.lesions.tables import read_lesion_table
    from metcli.synth.synth import synth_cohort

    root = tmp_path_factory.mktemp("overlay")
    synth_cohort(root, n_colorectal=1, n_pancreatic=1, seed=0)
    labels = {
        r["participant_id"]: r["primary"] for r in read_tsv(root / "rawdata" / "participants.tsv")
    }
    rows = []
    for pid, label in sorted(labels.items()):
        table = (
            root
            / "derivatives"
            / "truth-lesions"
            / pid
            / "anat"
            / f"{pid}_ce-portal_desc-lesions_dseg.tsv"
        )
        kept = [r["index"] for r in read_lesion_table(table) if r["kept"]]
        # Predictions for the second and third lesions only (the first where there is one):
        # those come first in the overlay.
        for lesion in kept[1:3] or kept[:1]:
            p = 0.9 if label == "pancreatic" else 0.2
            rows.append(
                {"participant_id": pid, "lesion_id": lesion, "model": "knn", "probs": (1 - p, p)}
            )
    path = write_predictions(
        root / "pred" / "predictions.tsv", rows, classes=("colorectal", "pancreatic")
    )
    return root, path, labels


def test_overlays_show_each_predicted_lesion_on_ct_through_its_centroid(
    runner, tmp_path, overlay_cohort
):
    import SimpleITK as sitk
    from matplotlib.image import imread

    from metcli.lesions.tables import read_lesion_table

    root, predictions, labels = overlay_cohort
    out = tmp_path / "out"
    invoke(
        runner,
        [
            "evaluate",
            predictions,
            out,
            "--labels",
            root / "rawdata",
            *BOOT,
            "--raw",
            root / "rawdata",
            "--lesions",
            root / "derivatives" / "truth-lesions",
            "--overlay-lesions",
            "3",
            "--no-plots",
        ],
    )
    text = (out / "report.html").read_text()
    assert text.count('<figure class="overlay"') == 2
    # Asked for explicitly, the overlays are drawn even with --no-plots.
    assert text.count('src="data:image/png;base64,') == len(list(out.glob("*.png"))) == 2
    assert "W330/L10" in text and "Not shown" not in text
    for pid in sorted(labels):
        png = out / f"{pid}_ce-portal_desc-lesions_overlay.png"
        doc = read_json(png.with_suffix(".json"))
        validate(doc, "sidecar")
        stem = (
            root
            / "derivatives"
            / "truth-lesions"
            / pid
            / "anat"
            / f"{pid}_ce-portal_desc-lesions_dseg"
        )
        table = {r["index"]: r for r in read_lesion_table(stem.with_suffix(".tsv")) if r["kept"]}
        shown = [lesion["lesion_id"] for lesion in doc["Lesions"]]
        # The predicted lesions (2 and 3) first, then the largest other one; at most three.
        predicted = [2, 3] if len(table) >= 3 else [1]
        assert shown == ([2, 3, 1] if len(table) >= 3 else [1])
        lesion_map = sitk.ReadImage(str(stem) + ".nii.gz")
        ids = sitk.GetArrayFromImage(lesion_map)
        for lesion in doc["Lesions"]:
            row = table[lesion["lesion_id"]]
            k = round(
                (row["centroid_z_mm"] - lesion_map.GetOrigin()[2]) / lesion_map.GetSpacing()[2]
            )  # identity direction
            assert lesion["slice_index"] == k and np.any(ids[k] == lesion["lesion_id"])
            assert lesion["window_hu"] == [330.0, 10.0]
            assert lesion["predicted"] == (
                labels[pid] if lesion["lesion_id"] in predicted else None
            )
        pixels = imread(png)[..., :3]
        yellow = (pixels[..., 0] > 0.9) & (pixels[..., 1] > 0.7) & (pixels[..., 2] < 0.2)
        assert yellow.sum() > 50  # the lesion contours are drawn
    # Without --raw/--lesions the section says how to get the overlays.
    plain = tmp_path / "plain"
    invoke(
        runner, ["evaluate", predictions, plain, "--labels", root / "rawdata", *BOOT, "--no-plots"]
    )
    assert 'id="overlays"' in (plain / "report.html").read_text()
    assert "Not drawn: give <code>--raw" in (plain / "report.html").read_text()


def test_overlay_panels_are_the_ct_and_mask_in_radiological_orientation(tmp_path, overlay_cohort):
    import SimpleITK as sitk

    from metcli.evaluation import overlays as plots

    root, _predictions, _labels = overlay_cohort
    found, missing = plots.overlay_sources(
        root / "rawdata", root / "derivatives" / "truth-lesions", ["sub-001", "sub-999"]
    )
    assert list(found) == ["sub-001"] and "no lesion map" in missing["sub-999"]
    source = found["sub-001"]
    panels = plots.overlay_panels(source, n_lesions=1)
    panel = panels[0]
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(source["ct"])))
    ids = sitk.GetArrayFromImage(sitk.ReadImage(str(source["map"])))
    k = panel["slice_index"]
    # The crop is a window of slice k around the centroid: find it in the full slice.
    h, w = panel["ct"].shape
    matches = [
        (j, i)
        for j in range(ct.shape[1] - h + 1)
        for i in range(ct.shape[2] - w + 1)
        if np.array_equal(ct[k, j : j + h, i : i + w], panel["ct"])
    ]
    assert len(matches) == 1
    j, i = matches[0]
    assert np.array_equal(panel["lesion"], ids[k, j : j + h, i : i + w] == 1)
    assert panel["lesion"].sum() > 0
    # The same scan stored with flipped x and z axes gives the same picture.
    flipped = {}
    for key in ("ct", "map"):
        target = tmp_path / Path(source[key]).name
        sitk.WriteImage(
            sitk.Flip(sitk.ReadImage(str(source[key])), [True, False, True]), str(target)
        )
        flipped[key] = target
    again = plots.overlay_panels({**source, **flipped}, n_lesions=1)[0]
    assert np.array_equal(again["ct"], panel["ct"])
    assert np.array_equal(again["lesion"], panel["lesion"])
    assert again["slice_z_mm"] == pytest.approx(panel["slice_z_mm"])


def test_overlay_arguments_and_missing_scans(runner, tmp_path, overlay_cohort):
    root, predictions, _labels = overlay_cohort
    result = invoke(
        runner,
        [
            "evaluate",
            predictions,
            tmp_path / "a",
            "--labels",
            root / "rawdata",
            *BOOT,
            "--raw",
            root / "rawdata",
        ],
        expect=2,
    )
    assert "--raw and --lesions go together" in result.stderr
    assert not (tmp_path / "a").exists()
    partial = tmp_path / "lesions"
    shutil.copytree(root / "derivatives" / "truth-lesions", partial)
    shutil.rmtree(partial / "sub-002")
    invoke(
        runner,
        [
            "evaluate",
            predictions,
            tmp_path / "b",
            "--labels",
            root / "rawdata",
            *BOOT,
            "--no-plots",
            "--raw",
            root / "rawdata",
            "--lesions",
            partial,
        ],
    )
    text = (tmp_path / "b" / "report.html").read_text()
    assert text.count('<figure class="overlay"') == 1
    assert "Not shown: sub-002 (no lesion map" in text


def test_a_folder_with_its_own_group_table_is_read_once(tmp_path):
    from metcli.evaluation.inputs import find_prediction_files

    (tmp_path / "knn_smote").mkdir()
    for path in (tmp_path / "predictions.tsv", tmp_path / "knn_smote" / "predictions.tsv"):
        path.write_text("participant_id\n")
    assert find_prediction_files([tmp_path]) == [tmp_path / "predictions.tsv"]
    assert find_prediction_files([tmp_path / "knn_smote"]) == [
        tmp_path / "knn_smote" / "predictions.tsv"
    ]


def test_roc_figure_keeps_the_cv_choice_and_the_best_curves(tmp_path):
    """Sixteen models: the figure draws six (the CV choice first, then by AUC); the
    AUC in the legend is the curve's area, equal to scikit-learn's."""
    from sklearn.metrics import roc_curve

    from metcli.evaluation import plots

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 60)
    rows, expected = [], {}
    for k in range(16):
        score = truth * (k / 10.0) + rng.normal(size=60)
        expected[f"m{k:02d}"] = roc_auc_score(truth, score)
        fpr, tpr, thr = roc_curve(truth, score)
        rows += [
            {
                "model": f"m{k:02d}",
                "class": "b",
                "kind": "curve",
                "fpr": x,
                "tpr": y,
                "threshold": None,
            }
            for x, y in zip(fpr, tpr)
        ]
    groups = plots._groups(rows, "model", "class")
    keys = list(groups)
    aucs = [plots._curve_auc(groups[key]) for key in keys]
    for key, auc in zip(keys, aucs):
        assert auc == pytest.approx(expected[key[0]], abs=1e-12)
    shown = [keys[i][0] for i in plots.shown_roc_series(keys, aucs, first=["m03"])]
    best = sorted((m for m in expected if m != "m03"), key=lambda m: -expected[m])[:5]
    assert shown == ["m03", *best]
    plots.roc_figure(rows, tmp_path / "roc.png", first=["m03"], table_name="roc_patient.tsv")
    assert (tmp_path / "roc.png").stat().st_size > 10_000


def test_report_opens_each_files_chosen_model_and_folds_the_others():
    from metcli.evaluation import report

    def model(name, source, selected):
        level = {
            "level": "patient",
            "metrics": [
                {
                    "metric": "auc",
                    "class": "b",
                    "estimate": 0.7,
                    "ci_lower": 0.5,
                    "ci_upper": 0.9,
                    "ci_method": "delong",
                    "note": None,
                }
            ],
            "confusion_matrix": {"classes": ["a", "b"], "counts": [[3, 1], [1, 3]]},
        }
        return {"model": name, "source": source, "selected_by_cv": selected, "levels": [level]}

    models = [model(f"m{k}", "bids:predictions:predictions.tsv", k == 3) for k in range(6)]
    models.append(model("cnn", "bids:predictions2:predictions.tsv", None))
    assert report.chosen_models(models) == ["m3", "cnn"]
    page = report._metrics({"Models": models, "LesionLevel": "clustered", "ConfidenceLevel": 0.95})
    assert page.index("<h3>m3,") < page.index("<h3>cnn,") < page.index("<h3>m0,")
    assert page.count("<details>") == 5 and "<summary>m3</summary>" not in page
    few = report._metrics(
        {"Models": models[:3], "LesionLevel": "clustered", "ConfidenceLevel": 0.95}
    )
    assert "<details>" not in few
