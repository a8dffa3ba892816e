"""Small cohorts: SMOTE's neighbours and the KNN grid follow the smallest training set.

The rule (docs/train-radiomics.md, :mod:`metcli.radiomics.fold_limits`): every class
needs a lesion in every training set of a search (two with SMOTE), SMOTE's
``k_neighbors`` is ``min(5, smallest class - 1)``, and ``n_neighbors`` values above
the lesions KNN is fitted on are left out of the grid; what cannot run is a one-line
usage error before the first fit. Large enough training sets change nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_train_radiomics import (
    HIERARCHY,
    make_cohort,
    make_three_classes,
    write_features,
    write_labels,
)

from conftest import invoke
from metcli.core.errors import UsageError
from metcli.io.files import read_json, read_tsv
from metcli.radiomics.fold_limits import plan_search
from metcli.radiomics.settings import check_settings

SMALL = dict(cv_folds=3, cv_repeats=1, inner_folds=2, importance_trees=10, importance_repeats=2)


def one_lesion_each(n_patients: int):
    """Two balanced classes, one lesion per patient (the patient is the group)."""
    return np.array([0, 1] * (n_patients // 2)), np.arange(n_patients)


@pytest.fixture
def no_fit(monkeypatch):
    """Records every pipeline built (a pipeline is built for each fit)."""
    from metcli.radiomics import models

    built = []
    original = models.build_pipeline
    monkeypatch.setattr(
        models, "build_pipeline", lambda *a, **k: built.append(a) or original(*a, **k)
    )
    return built


# ----------------------------------------------------------------------------- the rule
def test_large_enough_folds_leave_the_search_as_asked():
    """30 patients, 3 inner folds: 20 lesions per training set, 10 per class."""
    y, groups = one_lesion_each(30)
    settings = check_settings(inner_folds=3)
    for sampler in ("smote", "undersample", "none"):
        plan = plan_search("knn", sampler, y, groups, settings=settings, n_classes=2)
        assert plan.pipeline_params() == {"clf__n_neighbors": [5, 9, 15]}
        assert plan.k_neighbors is None and not plan.changes() and len(plan.splits) == 3


def test_knn_values_that_cannot_fit_are_left_out_and_none_left_is_an_error():
    y, groups = one_lesion_each(18)  # inner training folds of 12 lesions, 6 per class
    settings = check_settings(inner_folds=3)
    plan = plan_search("knn", "none", y, groups, settings=settings, n_classes=2)
    assert plan.fit_size == 12 and plan.candidates == {"n_neighbors": [5, 9]}
    assert plan.left_out == {"n_neighbors": [15]} and plan.k_neighbors is None
    # a random search's integer range is cut at the fit size
    randomised = check_settings(inner_folds=3, search="random")
    plan = plan_search("knn", "none", y, groups, settings=randomised, n_classes=2)
    assert tuple(int(v) for v in plan.candidates["n_neighbors"].support()) == (3, 12)
    # 8 patients, 2 inner folds: 4 lesions per training set, below every value
    y, groups = one_lesion_each(8)
    with pytest.raises(UsageError, match=r"no n_neighbors of the search \(5, 9, 15\) fits"):
        plan_search("knn", "none", y, groups, settings=check_settings(inner_folds=2), n_classes=2)
    # other classifiers have no size-limited parameter
    plan = plan_search(
        "naive-bayes", "none", y, groups, settings=check_settings(inner_folds=2), n_classes=2
    )
    assert not plan.changes()


def test_smote_neighbours_follow_the_smallest_class_and_one_lesion_is_an_error():
    y, groups = one_lesion_each(12)  # inner training folds: 4 lesions per class
    plan = plan_search(
        "knn", "smote", y, groups, settings=check_settings(inner_folds=3), n_classes=2
    )
    assert plan.smallest_class == 4 and plan.k_neighbors == 3
    assert plan.pipeline_params()["sampler__k_neighbors"] == [3]
    # a single candidate is fitted on all the lesions only: 6 per class, k stays 5
    settings = check_settings(inner_folds=3, grids={"knn": {"n_neighbors": [5]}})
    plan = plan_search("knn", "smote", y, groups, settings=settings, n_classes=2)
    assert plan.single and plan.k_neighbors is None and plan.splits is None
    y, groups = one_lesion_each(4)  # inner training folds: 1 lesion per class
    with pytest.raises(UsageError, match="holds 1 lesion.* SMOTE needs at least 2"):
        plan_search(
            "naive-bayes", "smote", y, groups, settings=check_settings(inner_folds=2), n_classes=2
        )


# ----------------------------------------------------------------------------- whole runs
def test_six_patients_train_with_smote_adapted_and_recorded(tmp_path, caplog):
    """The crash of issue 13 ('n_neighbors=6 > n_samples'): now trained, and the card and
    results.tsv say which k_neighbors SMOTE used."""
    from metcli.radiomics.train_radiomics import train_radiomics

    labels, rows = make_cohort(3, n_patients=6, signal=2.0)
    result = train_radiomics(
        write_features(tmp_path / "f", rows),
        tmp_path / "out",
        labels=write_labels(tmp_path / "p.tsv", labels),
        classifiers="knn",
        samplers="smote",
        **SMALL,
    )
    model = result.models["knn_smote"]
    sampler = model.pipeline.named_steps["sampler"]
    card = read_json(tmp_path / "out" / "knn_smote" / "model.json")
    assert 1 <= card["hyperparameters"]["k_neighbors"] < 5
    assert sampler.k_neighbors == card["hyperparameters"]["k_neighbors"]
    assert card["hyperparameters"]["n_neighbors"] in (5, 9, 15)
    assert card["onnx"]["max_abs_difference"] < 1e-5
    tuned = {r["hyperparameters"] for r in read_tsv(tmp_path / "out" / "results.tsv")}
    assert tuned == {
        f'{{"k_neighbors":{sampler.k_neighbors},"n_neighbors":{card["hyperparameters"]["n_neighbors"]}}}'
    }
    assert any("knn with smote: small training sets" in r.message for r in caplog.records)


def test_smote_without_two_lesions_per_class_fails_in_one_line_before_any_fit(
    tmp_path, runner, no_fit
):
    labels, rows = make_cohort(3, n_patients=6, signal=2.0, lesions=(1, 1))
    result = invoke(
        runner,
        [
            "train-radiomics",
            write_features(tmp_path / "f", rows),
            tmp_path / "out",
            "--labels",
            write_labels(tmp_path / "p.tsv", labels),
            "--classifiers",
            "naive-bayes",
            "--sampler",
            "smote",
            "--cv-folds",
            "3",
            "--inner-folds",
            "2",
        ],
        expect=2,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("metcli: error")]
    assert len(lines) == 1 and "SMOTE needs at least 2 of every class" in lines[0], result.stderr
    assert "--sampler undersample or none" in lines[0]
    assert no_fit == [] and not (tmp_path / "out" / "results.tsv").exists()


def test_hierarchy_step2_groups_adapt_or_fail_before_any_fit(tmp_path, no_fit):
    """12 patients, 4 per label: step 2 (colorectal vs pancreatic) sees 5 or 6 patients
    per outer training fold."""
    from metcli.radiomics.train_radiomics import train_radiomics

    labels, rows = make_three_classes(1, n_patients=12)
    hierarchy = tmp_path / "hierarchy.yaml"
    hierarchy.write_text(HIERARCHY)
    features = write_features(tmp_path / "f", rows)
    labels_path = write_labels(tmp_path / "p.tsv", labels)
    with pytest.raises(
        UsageError, match="step2-metastasis in outer fold 1 .* leaves the classifier 4"
    ):
        train_radiomics(
            features,
            tmp_path / "refused",
            labels=labels_path,
            hierarchy=hierarchy,
            classifiers="knn",
            samplers="undersample",
            **SMALL,
        )
    assert no_fit == []
    result = train_radiomics(
        features,
        tmp_path / "out",
        labels=labels_path,
        hierarchy=hierarchy,
        classifiers="knn",
        samplers="smote",
        **SMALL,
    )
    step2 = result.models["knn_smote"].steps["step2-metastasis"]
    assert step2.hyperparameters["k_neighbors"] < 5
    assert step2.pipeline.named_steps["sampler"].k_neighbors == step2.hyperparameters["k_neighbors"]
    card = read_json(tmp_path / "out" / "knn_smote" / "step2-metastasis" / "model.json")
    assert card["hyperparameters"] == step2.hyperparameters
    assert no_fit  # the spy sees the fits of a run that goes ahead


def test_importance_selector_falls_back_to_the_training_rows_on_two_lesions():
    """No held-out split exists (one lesion per class): importances on the rows themselves."""
    import pandas as pd

    from metcli.radiomics.selection import PermutationImportanceSelector

    frame = pd.DataFrame({"a": [0.0, 1.0], "b": [1.0, 0.5]})
    selector = PermutationImportanceSelector(n_estimators=5, n_repeats=2)
    selector.fit(frame, np.array([0, 1]), groups=np.array(["p1", "p2"]))
    assert selector.support_.sum() >= 1
