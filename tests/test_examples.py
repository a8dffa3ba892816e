"""examples/: the main job as a script users copy (issue 16, item 4), and its Table 3."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_evaluate import cohort, metric, run, typed_rows, write_labels, write_predictions

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.mark.parametrize("script", ["run_demo.sh", "table3.sh"])
def test_the_scripts_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(
            ["shellcheck", str(EXAMPLES / script)], capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout


def test_the_main_job_uses_only_documented_commands_and_make_demo_runs_it():
    import click

    from metcli.cli.main import cli

    known = set(cli.list_commands(click.Context(cli)))
    text = (EXAMPLES / "run_demo.sh").read_text()
    used = re.findall(r"^metcli ([a-z-]+)", text, flags=re.M)
    assert used and set(used) <= known, set(used) - known
    assert {"synth", "segment", "split-lesions", "extract", "train-radiomics", "train-cnn"} <= set(
        used
    )
    assert "examples/run_demo.sh $(DEMO)" in (REPO / "Makefile").read_text()
    for name in ("synth", "segment", "extract", "evaluate"):
        assert f"metcli {name}" in text


def test_table3_prints_auc_and_accuracy_with_their_intervals(runner, tmp_path):
    labels, rows = cohort(n_patients=16, seed=2)
    predictions = write_predictions(tmp_path / "pred" / "predictions.tsv", rows)
    run(runner, tmp_path, [predictions.parent], write_labels(tmp_path / "p.tsv", labels))
    metrics = tmp_path / "out" / "metrics.tsv"
    done = subprocess.run(
        ["bash", str(EXAMPLES / "table3.sh"), str(metrics)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["model", "level"]
    _columns, typed = typed_rows(metrics, "metrics")
    auc = metric(typed, "m", "patient", "auc", "delong")
    accuracy = metric(typed, "m", "patient", "accuracy", "patient_bootstrap")
    patient = next(line for line in lines[1:] if line.split()[1] == "patient")
    assert f"{auc['estimate']:.2f} ({auc['ci_lower']:.2f}-{auc['ci_upper']:.2f})" in patient
    assert f"{accuracy['estimate']:.2f} ({accuracy['ci_lower']:.2f}" in patient
    assert any(line.split()[1] == "lesion" for line in lines[1:])
    missing = subprocess.run(
        ["bash", str(EXAMPLES / "table3.sh"), str(tmp_path / "none.tsv")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "run metcli evaluate first" in missing.stderr
