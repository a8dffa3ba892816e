"""metcli evaluate --readers: readers' operating points, Clopper-Pearson intervals, McNemar's
test against the model (exact binomial and R's mcnemar.test), the ROC figure and report,
and Table 1 through the command line."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy.stats import beta, binomtest, chi2
from test_evaluate import typed_rows, write_predictions

from conftest import invoke
from metcli.io.files import read_json
from metcli.io.schemas import validate, validate_rows

BINARY = ("colorectal", "pancreas")
BOOT = ["--bootstrap", "200"]


def _r_available() -> bool:
    return shutil.which("Rscript") is not None


def _rscript(code: str) -> list[float]:
    done = subprocess.run(
        ["Rscript", "-e", f"options(digits = 15); {code}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [float(v) for v in done.stdout.split()]


def binary_study(tmp_path, n=40, seed=0, reader_accuracy=(0.7, 0.85), assisted=True):
    """Patient-level predictions of a binary model, labels with age/sex/site, readers' calls.

    Returns (labels path, predictions path, readers path, labels, model probabilities,
    readers' calls ``{(reader, assisted): {pid: call}}``).
    """
    rng = np.random.default_rng(seed)
    labels = {f"sub-{i:03d}": BINARY[int(i % 3 == 0)] for i in range(1, n + 1)}
    lines = ["participant_id\tprimary\tage\tsex\tsite"]
    for pid, label in labels.items():
        sex = "F" if rng.random() < 0.5 else "M"
        site = "A" if rng.random() < 0.6 else "B"
        lines.append(f"{pid}\t{label}\t{int(rng.integers(40, 85))}\t{sex}\t{site}")
    lab = tmp_path / "participants.tsv"
    lab.write_text("\n".join(lines) + "\n")
    prob = {}
    for pid, label in labels.items():
        logit = rng.normal(1.0 if label == "pancreas" else -1.0, 1.2)
        prob[pid] = float(1 / (1 + np.exp(-logit)))
    rows = [{"participant_id": p, "level": "patient", "probs": (1 - q, q)} for p, q in prob.items()]
    pred = write_predictions(
        tmp_path / "m" / "predictions.tsv", rows, BINARY, sidecar={"positive_class": "pancreas"}
    )
    calls: dict[tuple, dict[str, str]] = {}
    out = ["participant_id\treader\tcall" + ("\tassisted" if assisted else "")]
    for number, acc in enumerate(reader_accuracy, start=1):
        for help_, bonus in (("no", 0.0), ("yes", 0.1)) if assisted else ((None, 0.0),):
            key = (f"R{number}", help_)
            calls[key] = {}
            for pid, label in labels.items():
                right = rng.random() < acc + bonus
                call = label if right else BINARY[1 - BINARY.index(label)]
                calls[key][pid] = call
                out.append(f"{pid}\tR{number}\t{call}" + (f"\t{help_}" if assisted else ""))
    readers = tmp_path / "readers.tsv"
    readers.write_text("\n".join(out) + "\n")
    return lab, pred, readers, labels, prob, calls


def evaluate(runner, tmp_path, pred, lab, *extra, expect=0, out="out"):
    return invoke(
        runner,
        ["evaluate", pred, tmp_path / out, "--labels", lab, *BOOT, *extra],
        expect=expect,
    )


# ----------------------------------------------------------------------------- figures
def test_reader_rates_intervals_and_mcnemar_by_hand(runner, tmp_path):
    lab, pred, readers, labels, prob, calls = binary_study(tmp_path, n=90, seed=3)
    evaluate(runner, tmp_path, pred, lab, "--readers", readers, "--level", "patient", "--no-plots")
    columns, rows = typed_rows(tmp_path / "out" / "readers.tsv", "reader_results")
    validate_rows(rows, columns, "reader_results")
    assert len(rows) == 4 and {r["class"] for r in rows} == {"pancreas"}
    model_right = {p: (prob[p] >= 0.5) == (labels[p] == "pancreas") for p in labels}
    seen_methods = set()
    for row in rows:
        call = calls[(row["reader"], row["assisted"])]
        pos = [p for p in labels if labels[p] == "pancreas"]
        neg = [p for p in labels if labels[p] != "pancreas"]
        tp = sum(call[p] == "pancreas" for p in pos)
        tn = sum(call[p] != "pancreas" for p in neg)
        assert (row["n_positive"], row["n_negative"]) == (len(pos), len(neg))
        assert row["sensitivity"] == pytest.approx(tp / len(pos))
        assert row["specificity"] == pytest.approx(tn / len(neg))
        # Clopper-Pearson from the beta quantiles.
        assert row["sensitivity_ci_lower"] == pytest.approx(beta.ppf(0.025, tp, len(pos) - tp + 1))
        assert row["sensitivity_ci_upper"] == pytest.approx(beta.ppf(0.975, tp + 1, len(pos) - tp))
        reader_right = {p: call[p] == labels[p] for p in labels}
        b = sum(reader_right[p] and not model_right[p] for p in labels)
        c = sum(model_right[p] and not reader_right[p] for p in labels)
        assert (row["reader_only_correct"], row["model_only_correct"]) == (b, c)
        assert row["model_accuracy"] == pytest.approx(np.mean(list(model_right.values())))
        if b + c < 25:
            assert row["mcnemar_test"] == "mcnemar exact binomial"
            assert row["mcnemar_p_value"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
        else:
            statistic = (abs(b - c) - 1) ** 2 / (b + c)
            assert row["mcnemar_test"].startswith("mcnemar chi-square")
            assert row["mcnemar_statistic"] == pytest.approx(statistic)
            assert row["mcnemar_p_value"] == pytest.approx(chi2.sf(statistic, 1))
        seen_methods.add(row["mcnemar_test"].split()[1])
    assert seen_methods == {"exact", "chi-square,"}, "both branches of McNemar's test"


@pytest.mark.skipif(not _r_available(), reason="Rscript is not installed (apt-get install r-base)")
def test_mcnemar_and_clopper_pearson_agree_with_r(runner, tmp_path):
    lab, pred, readers, labels, prob, calls = binary_study(tmp_path, n=90, seed=3)
    evaluate(runner, tmp_path, pred, lab, "--readers", readers, "--level", "patient", "--no-plots")
    _, rows = typed_rows(tmp_path / "out" / "readers.tsv", "reader_results")
    model_right = {p: (prob[p] >= 0.5) == (labels[p] == "pancreas") for p in labels}
    for row in rows:
        call = calls[(row["reader"], row["assisted"])]
        r = [call[p] == labels[p] for p in labels]
        m = [model_right[p] for p in labels]
        table = [sum(a and b for a, b in zip(r, m)), row["model_only_correct"]]
        table = [*table, row["reader_only_correct"], sum(not a and not b for a, b in zip(r, m))]
        # R: matrix by column: [both right, only model right; only reader right, both wrong]
        # rows = reader right / wrong, columns = model right / wrong.
        rt = f"matrix(c({table[0]}, {table[2]}, {table[1]}, {table[3]}), nrow = 2)"
        b, c = row["reader_only_correct"], row["model_only_correct"]
        if b + c < 25:
            (p,) = _rscript(f"cat(binom.test({b}, {b + c}, 0.5)$p.value)")
        else:
            (p,) = _rscript(f"cat(mcnemar.test({rt}, correct = TRUE)$p.value)")
        assert row["mcnemar_p_value"] == pytest.approx(p, rel=1e-8), row["reader"]
        tp = round(row["sensitivity"] * row["n_positive"])
        low, high = _rscript(f"cat(binom.test({tp}, {row['n_positive']})$conf.int)")
        assert (row["sensitivity_ci_lower"], row["sensitivity_ci_upper"]) == pytest.approx(
            (low, high), rel=1e-8
        )


def test_several_classes_one_row_per_class_against_the_rest(runner, tmp_path):
    classes = ("benign", "HCC", "metastasis")
    rng = np.random.default_rng(5)
    labels = {f"sub-{i:02d}": classes[i % 3] for i in range(1, 25)}
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tprimary\n" + "".join(f"{p}\t{c}\n" for p, c in labels.items())
    )
    rows, calls = [], {}
    for pid, label in labels.items():
        logits = rng.normal(0, 1, 3)
        logits[classes.index(label)] += 1.5
        p = np.exp(logits) / np.exp(logits).sum()
        rows.append({"participant_id": pid, "level": "patient", "probs": tuple(p)})
        calls[pid] = label if rng.random() < 0.7 else classes[(classes.index(label) + 1) % 3]
    pred = write_predictions(tmp_path / "m" / "predictions.tsv", rows, classes)
    # The reader read 20 of the 24 patients (and one patient the model did not see is absent).
    read = sorted(labels)[:20]
    (tmp_path / "readers.tsv").write_text(
        "participant_id\treader\tcall\n" + "".join(f"{p}\tDr A\t{calls[p]}\n" for p in read)
    )
    lab = tmp_path / "participants.tsv"
    evaluate(runner, tmp_path, pred, lab, "--readers", tmp_path / "readers.tsv")
    _, out = typed_rows(tmp_path / "out" / "readers.tsv", "reader_results")
    assert [r["class"] for r in out] == list(classes)
    for row in out:
        pos = [p for p in read if labels[p] == row["class"]]
        neg = [p for p in read if labels[p] != row["class"]]
        assert row["n_patients"] == 20 and row["assisted"] is None
        assert row["sensitivity"] == pytest.approx(np.mean([calls[p] == row["class"] for p in pos]))
        assert row["specificity"] == pytest.approx(np.mean([calls[p] != row["class"] for p in neg]))
        assert "paired on the 20 of the model's 24 patients" in row["note"]
    # Each class's point on the ROC figure's table: (1 - specificity, sensitivity).
    _, roc = typed_rows(tmp_path / "out" / "roc_patient.tsv", "roc")
    points = {r["class"]: r for r in roc if r["kind"] == "reader"}
    assert set(points) == set(classes)
    for row in out:
        point = points[row["class"]]
        assert point["reader"] == "Dr A" and point["assisted"] is None
        assert (point["fpr"], point["tpr"]) == pytest.approx(
            (1 - row["specificity"], row["sensitivity"])
        )
    assert all(r["reader"] is None for r in roc if r["kind"] != "reader")


def test_reader_points_drawn_with_names_open_filled_and_arrows():
    from metcli.evaluation.canvas import agg_figure
    from metcli.evaluation.readers import draw_reader_points

    rows = [
        {"model": "m", "class": "p", "kind": "curve", "fpr": 0.0, "tpr": 0.0},
        *[
            {
                "model": "m",
                "class": "p",
                "kind": "reader",
                "fpr": x,
                "tpr": y,
                "reader": name,
                "assisted": help_,
            }
            for name, help_, x, y in (
                ("R1", "no", 0.3, 0.6),
                ("R1", "yes", 0.2, 0.8),
                ("R2", "no", 0.1, 0.5),
                ("R2", "yes", 0.15, 0.7),
            )
        ],
    ]
    figure = agg_figure(4, 4)
    ax = figure.add_subplot(1, 1, 1)
    assert draw_reader_points(ax, rows, {("m", "p"): "red"}) == 4
    points = [
        (ln.get_xdata()[0], ln.get_ydata()[0], ln.get_markerfacecolor())
        for ln in ax.lines
        if len(ln.get_xdata())
    ]
    assert {(x, y) for x, y, _ in points} == {(0.3, 0.6), (0.2, 0.8), (0.1, 0.5), (0.15, 0.7)}
    open_ = {(x, y) for x, y, face in points if face == "white"}
    assert open_ == {(0.3, 0.6), (0.1, 0.5)}, "without the model: open markers"
    arrows = [a for a in ax.texts if getattr(a, "arrow_patch", None) is not None]
    assert len(arrows) == 2
    assert {a.xy for a in arrows} == {(0.2, 0.8), (0.15, 0.7)}
    labels = [h.get_label() for h in ax.get_legend_handles_labels()[0]]
    assert {"reader R1", "reader R2"} <= set(labels)
    assert any("without the model" in label for label in labels)
    # A series not drawn (not in the colours) gets no reader point.
    ax2 = agg_figure(4, 4).add_subplot(1, 1, 1)
    assert draw_reader_points(ax2, rows, {}) == 0


# ----------------------------------------------------------------------------- the command
def test_cli_readers_and_table1_end_to_end(runner, tmp_path):
    lab, pred, readers, labels, _prob, _calls = binary_study(tmp_path, n=30, seed=7)
    evaluate(runner, tmp_path, pred, lab, "--readers", readers, "--table1-columns", "age,sex")
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"readers.tsv", "readers.json", "table1.tsv", "table1.json"} <= names
    for name, schema in (
        ("readers", "reader_results"),
        ("table1", "table1"),
        ("roc_patient", "roc"),
    ):
        columns, rows = typed_rows(out / f"{name}.tsv", schema)
        validate_rows(rows, columns, schema)
        validate(read_json(out / f"{name}.json"), "sidecar")
    _, table1 = typed_rows(out / "table1.tsv", "table1")
    assert [r["characteristic"] for r in table1] == ["patients", "age", "sex", "sex", "sex"]
    assert table1[0]["overall"] == "30" and table1[0]["pancreas"] == "10"
    doc = read_json(out / "metrics.json")
    validate(doc, "metrics_json")
    assert len(doc["Readers"]) == 4 and doc["Table1"]["rows"][1]["test"] == "Kruskal-Wallis"
    assert doc["Provenance"]["settings"]["table1_columns"] == ["age", "sex"]
    assert any(i["uri"].endswith("readers.tsv") for i in doc["Provenance"]["inputs"])
    text = (out / "report.html").read_text()
    for needle in (
        '<section id="readers">',
        '<section id="table1">',
        "McNemar",
        "Kruskal-Wallis",
        "median [IQR]",
        "<td>R2</td>",
    ):
        assert needle in text, needle
    _, roc = typed_rows(out / "roc_patient.tsv", "roc")
    assert {(r["reader"], r["assisted"]) for r in roc if r["kind"] == "reader"} == {
        ("R1", "no"),
        ("R1", "yes"),
        ("R2", "no"),
        ("R2", "yes"),
    }
    # The ROC figure changes with the readers' points.
    evaluate(runner, tmp_path, pred, lab, "--table1-columns", "none", out="plain")
    plain = tmp_path / "plain"
    assert (plain / "roc_patient.png").read_bytes() != (out / "roc_patient.png").read_bytes()
    assert not (plain / "readers.tsv").exists() and not (plain / "table1.tsv").exists()
    assert "No reader study was given" in (plain / "report.html").read_text()
    assert "Readers" not in read_json(plain / "metrics.json")


@pytest.mark.parametrize(
    "content, expect, message",
    [
        ("participant_id\treader\tcall\nsub-999\tR1\tpancreas\n", 1, "not in the labels"),
        ("participant_id\treader\tcall\nsub-001\tR1\tliver\n", 1, "is not a class"),
        (
            "participant_id\treader\tcall\nsub-001\tR1\tpancreas\nsub-001\tR1\tcolorectal\n",
            1,
            "reads sub-001 twice",
        ),
        ("participant_id\treader\tcall\tassisted\nsub-001\tR1\tpancreas\tmaybe\n", 1, "yes, no"),
        ("participant_id\treader\nsub-001\tR1\n", 1, "call"),
    ],
)
def test_bad_readers_tables_give_one_line_and_write_nothing(
    runner, tmp_path, content, expect, message
):
    lab, pred, readers, *_ = binary_study(tmp_path, n=12, seed=1)
    readers.write_text(content)
    result = evaluate(runner, tmp_path, pred, lab, "--readers", readers, expect=expect)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_readers_need_the_patient_level(runner, tmp_path):
    lab, pred, readers, *_ = binary_study(tmp_path, n=12, seed=1)
    result = evaluate(
        runner, tmp_path, pred, lab, "--readers", readers, "--level", "lesion", expect=2
    )
    assert "--readers needs the patient level" in result.stderr
