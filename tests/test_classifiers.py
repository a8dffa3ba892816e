"""The classifier registry of train-radiomics.

Every registered classifier passes the same conformance checks (a fit on a small
cohort of two classes, ONNX parity with ``predict_proba``, a model card that follows
its schema), so a new entry is tested without new test code. A classifier registered
at run time is a choice of the command, a name the results schema allows and a model
like the others. The docs table lists the registry.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_train_radiomics import FAST, frame_of, make_cohort, write_features, write_labels

from conftest import REPO, invoke
from metcli.core.errors import SchemaError, UsageError
from metcli.io import schemas
from metcli.io.files import read_json, read_tsv
from metcli.radiomics.classifiers import (
    CLASSIFIERS,
    Classifier,
    help_text,
    register,
    results_schema,
    unregister,
)

STUDY = (
    "xgboost",
    "random-forest",
    "linear-svm",
    "kernel-svm",
    "knn",
    "logistic-regression",
    "naive-bayes",
    "decision-tree",
)
#: |ONNX - scikit-learn| probabilities allowed (as in test_train_radiomics and the card's check).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small features table of two classes (with a signal), its labels, and new lesions."""
    folder = tmp_path_factory.mktemp("cohort")
    labels, rows = make_cohort(3, n_patients=18, signal=1.5)
    _, new_rows = make_cohort(99, n_patients=12, signal=1.5, first=500)
    return {
        "features": write_features(folder / "features", rows),
        "labels": write_labels(folder / "participants.tsv", labels),
        "new": frame_of(new_rows),
    }


@pytest.fixture
def extra_trees():
    """ExtraTreesClassifier registered as ``extra-trees`` for one test, then removed."""

    def factory(seed):
        from sklearn.ensemble import ExtraTreesClassifier

        return ExtraTreesClassifier(n_estimators=30, n_jobs=1, random_state=seed)

    entry = register(
        Classifier(
            "extra-trees",
            "extremely randomised trees (a test entry)",
            factory,
            grid={"min_samples_leaf": [1, 3]},
            space=lambda: {"min_samples_leaf": [1, 2, 3]},
        )
    )
    yield entry
    unregister(entry.name)


def onnx_probabilities(model_dir, frame) -> np.ndarray:
    """model.onnx run with ONNX Runtime on ``frame`` (its inputs by name, from the card)."""
    import onnxruntime as ort

    card = read_json(model_dir / "model.json")
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i["name"] for i in card["inputs"]]
    assert [i.name for i in sess.get_inputs()] == names
    return sess.run(["probabilities"], {n: frame[[n]].to_numpy(np.float32) for n in names})[0]


def check_conformance(name: str, cohort, out) -> None:
    """What every registry entry must do: fit (sample weights if it says it takes them),
    export to ONNX that reproduces ``predict_proba``, and write a card and results rows
    that follow their schemas."""
    from metcli.radiomics.train_radiomics import train_radiomics

    entry = CLASSIFIERS[name]
    grid = {k: [v[0]] for k, v in entry.grid.items()}  # one candidate: no inner search
    result = train_radiomics(
        cohort["features"],
        out,
        labels=cohort["labels"],
        classifiers=name,
        samplers="none",
        grids={name: grid},
        max_features=4,
        **FAST,
    )
    model_dir = out / f"{name}_none"
    reference = result.models[f"{name}_none"].pipeline.predict_proba(cohort["new"])
    difference = float(np.abs(onnx_probabilities(model_dir, cohort["new"]) - reference).max())
    assert difference < TOLERANCE, (name, difference)
    card = read_json(model_dir / "model.json")
    schemas.validate(card, "model_card")
    schemas.validate(card, "sidecar")
    assert card["classifier"] == name and card["onnx"]["max_abs_difference"] < TOLERANCE
    assert card["hyperparameters"] == {k: v[0] for k, v in grid.items()}
    assert ("unweighted" in card["sample_weighting"]) is (not entry.sample_weights)
    results = read_tsv(out / "results.tsv")
    assert {r["classifier"] for r in results} == {name} and len(results) == 2
    assert all(r["cv_auc"] != "n/a" for r in results), results


# ----------------------------------------------------------------------------- every entry
@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_every_registered_classifier_fits_exports_and_describes_itself(name, cohort, tmp_path):
    check_conformance(name, cohort, tmp_path / "out")


def test_the_registry_holds_the_study_classifiers_in_order():
    assert tuple(CLASSIFIERS)[: len(STUDY)] == STUDY
    assert [n for n, e in CLASSIFIERS.items() if not e.sample_weights] == ["knn"]


def test_register_refuses_bad_or_taken_names():
    entry = CLASSIFIERS["knn"]
    for name in ("knn", "all", "Extra_Trees", "svm2", "-svm"):
        with pytest.raises(UsageError):
            register(
                Classifier(name, "x", entry.factory, grid={"n_neighbors": [5]}, space=entry.space)
            )
    with pytest.raises(UsageError, match="one line"):
        register(Classifier("two-lines", "a\nb", entry.factory, grid={"k": [1]}, space=entry.space))
    with pytest.raises(UsageError, match="not one of"):
        unregister("no-such-classifier")
    assert "two-lines" not in CLASSIFIERS and "all" not in CLASSIFIERS


def test_results_schema_allows_the_registered_classifiers_only(tmp_path):
    from metcli.radiomics.outputs import RESULTS_COLUMNS, check_results

    in_file = schemas.load_schema("results")["properties"]["classifier"]
    assert "enum" not in in_file  # the file cannot know the registry
    assert results_schema()["properties"]["classifier"]["enum"] == list(CLASSIFIERS)
    row = {
        "classifier": "knn",
        "sampler": "none",
        "model": "knn_none",
        "level": "patient",
        "cv_auc": 0.7,
        "cv_auc_sd": None,
        "threshold": 0.5,
        "threshold_source": "youden",
        "n_features": 3,
        "hyperparameters": "{}",
        "selected_by_cv": True,
    }
    check_results([row], RESULTS_COLUMNS, where=tmp_path / "results.tsv")
    with pytest.raises(SchemaError, match="classifier"):
        check_results(
            [{**row, "classifier": "no-such-classifier"}],
            RESULTS_COLUMNS,
            where=tmp_path / "results.tsv",
        )


def test_docs_table_lists_the_registry():
    """docs/train-radiomics.md's table: name, description and default grid of every entry."""

    def value(v):
        return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    expected = [
        f"| `{e.name}` | {e.description} | "
        + "; ".join(f"`{k}` " + ", ".join(value(v) for v in values) for k, values in e.grid.items())
        + " |"
        for e in CLASSIFIERS.values()
    ]
    lines = [
        line.strip() for line in (REPO / "docs" / "train-radiomics.md").read_text().splitlines()
    ]
    start = lines.index("| classifier | description | default grid |") + 2
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert lines[start:end] == expected, "the table should read:\n" + "\n".join(expected)


# ----------------------------------------------------------------------------- run time
def test_a_classifier_registered_at_run_time_is_a_choice_a_schema_name_and_a_model(
    extra_trees, cohort, tmp_path, runner
):
    help_lines = invoke(runner, ["train-radiomics", "--help"]).stdout
    for entry in CLASSIFIERS.values():
        assert re.search(rf"\b{entry.name}: {re.escape(entry.description)}", help_lines), entry.name
    assert "extra-trees: extremely randomised trees" in help_text()
    assert "extra-trees" in results_schema()["properties"]["classifier"]["enum"]
    check_conformance("extra-trees", cohort, tmp_path / "library")
    # the command accepts it, also with worker processes (they get the entry too)
    out = tmp_path / "cli"
    invoke(
        runner,
        [
            "train-radiomics",
            cohort["features"],
            out,
            "--labels",
            cohort["labels"],
            "--classifiers",
            "extra-trees,naive-bayes",
            "--sampler",
            "none",
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
            "--jobs",
            "2",
        ],
    )
    results = read_tsv(out / "results.tsv")
    assert [r["classifier"] for r in results] == ["extra-trees"] * 2 + ["naive-bayes"] * 2
    assert (out / "extra-trees_none" / "model.onnx").is_file()


def test_an_unregistered_classifier_is_refused_by_the_command(cohort, tmp_path, runner):
    result = invoke(
        runner,
        [
            "train-radiomics",
            cohort["features"],
            tmp_path / "out",
            "--labels",
            cohort["labels"],
            "--classifiers",
            "extra-trees",
        ],
        expect=2,
    )
    assert "--classifiers extra-trees is not valid" in result.stderr
    assert "extra-trees" not in CLASSIFIERS
