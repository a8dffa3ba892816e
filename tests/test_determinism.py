"""train-radiomics writes the same bytes whatever Python's hash seed.

skl2onnx lists a graph's opset imports in set order, so before metcli made its
ONNX bytes canonical (metcli.io.cards.canonical_onnx) model.onnx, and the sha256
of it in model.json, changed between identical runs. Each test runs the command
twice in fresh interpreters, with PYTHONHASHSEED 1 and 2, and compares every file
of the two output folders byte for byte. No file is allowed to differ: nothing
metcli writes there holds a time or a path of the run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_train_radiomics import (
    HIERARCHY,
    make_cohort,
    make_three_classes,
    write_features,
    write_labels,
)

FAST = [
    "--cv-folds",
    "3",
    "--cv-repeats",
    "1",
    "--inner-folds",
    "2",
    "--importance-trees",
    "10",
    "--importance-repeats",
    "2",
    "--sampler",
    "none",
    "--no-progress",
]


def _train(tmp_path, seed: int, args) -> dict[str, bytes]:
    """Run train-radiomics with PYTHONHASHSEED ``seed``; {relative path: bytes} of its output."""
    out = tmp_path / f"seed{seed}"
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    result = subprocess.run(
        [sys.executable, "-c", "from metcli.cli.main import main; main()", "train-radiomics"]
        + [str(a) for a in args[:1]]
        + [str(out)]
        + [str(a) for a in args[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _same_bytes(first: dict[str, bytes], second: dict[str, bytes]) -> None:
    assert sorted(first) == sorted(second)
    differ = [name for name in sorted(first) if first[name] != second[name]]
    assert not differ, differ


@pytest.mark.slow
def test_train_radiomics_writes_the_same_bytes_with_any_hash_seed(tmp_path):
    labels, rows = make_cohort(5, n_patients=16, signal=2.0)
    args = [
        write_features(tmp_path / "features", rows),
        "--labels",
        write_labels(tmp_path / "participants.tsv", labels),
        "--classifiers",
        "logistic-regression,xgboost",
        *FAST,
    ]
    first = _train(tmp_path, 1, args)
    second = _train(tmp_path, 2, args)
    assert {"logistic-regression_none/model.onnx", "xgboost_none/model.onnx"} <= set(first)
    _same_bytes(first, second)


@pytest.mark.slow
def test_a_hierarchical_model_writes_the_same_bytes_with_any_hash_seed(tmp_path):
    """The chained graph and its steps' graphs too."""
    labels, rows = make_three_classes(4)
    (tmp_path / "hierarchy.yaml").write_text(HIERARCHY)
    args = [
        write_features(tmp_path / "features", rows),
        "--labels",
        write_labels(tmp_path / "participants.tsv", labels),
        "--hierarchy",
        tmp_path / "hierarchy.yaml",
        "--classifiers",
        "logistic-regression",
        *FAST,
    ]
    first = _train(tmp_path, 1, args)
    second = _train(tmp_path, 2, args)
    assert "logistic-regression_none/step1/model.onnx" in first
    _same_bytes(first, second)
