"""predict: ONNX Runtime reproduces scikit-learn, inputs are checked against the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train_radiomics import (
    FAST,
    HASH,
    NAMES,
    OTHER_HASH,
    TINY_GRIDS,
    frame_of,
    make_cohort,
    write_features,
    write_labels,
)

from conftest import invoke
from metcli.io.files import read_json, read_tsv


def _covariates(labels, seed):
    rng = np.random.default_rng(seed)
    return {
        p: {"age": int(rng.integers(40, 80)), "sex": "F" if rng.random() < 0.5 else "M"}
        for p in labels
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two models (with the covariates age and sex) trained once for this module."""
    from metcli.radiomics.train_radiomics import train_radiomics

    root = tmp_path_factory.mktemp("trained")
    labels, rows = make_cohort(21, n_patients=20, signal=2.0)
    extra = _covariates(labels, 0)
    result = train_radiomics(
        write_features(root / "features", rows),
        root / "models",
        labels=write_labels(root / "participants.tsv", labels, extra=extra),
        classifiers="logistic-regression,random-forest",
        samplers="none",
        covariates="age,sex",
        grids=TINY_GRIDS,
        **FAST,
    )
    # new participants: features from "another run of extract" with the same settings
    new_labels, new_rows = make_cohort(22, n_patients=6, signal=2.0, first=100)
    new_rows = [r for r in new_rows]
    participants = write_labels(
        root / "new" / "participants.tsv", new_labels, extra=_covariates(new_labels, 1)
    )
    return {
        "root": root,
        "result": result,
        "rows": new_rows,
        "labels": new_labels,
        "participants": participants,
    }


def _expected(trained, name, rows):
    import pandas as pd

    frame = frame_of(rows)
    participants = read_tsv(trained["participants"])
    by_pid = {r["participant_id"]: r for r in participants}
    frame["covariate_age"] = [float(by_pid[r[0]]["age"]) for r in rows]
    frame["covariate_sex_M"] = [1.0 if by_pid[r[0]]["sex"] == "M" else 0.0 for r in rows]
    pipeline = trained["result"].models[name].pipeline
    return pipeline.predict_proba(pd.DataFrame(frame.astype(np.float32).astype(np.float64)))


@pytest.mark.parametrize("name", ["logistic-regression_none", "random-forest_none"])
def test_predict_reproduces_the_scikit_learn_probabilities(trained, tmp_path, runner, name):
    features = write_features(tmp_path / "extract2", trained["rows"])
    model_dir = trained["root"] / "models" / name
    out = tmp_path / "pred"
    result = invoke(
        runner,
        [
            "predict",
            model_dir,
            features,
            out,
            "--participants",
            trained["participants"],
            "--device",
            "cpu",
        ],
    )
    assert result.stdout.strip() == str(out / "predictions.tsv")
    card = read_json(model_dir / "model.json")
    assert [i["name"] for i in card["inputs"]][-2:] == ["covariate_age", "covariate_sex_M"]
    rows = read_tsv(out / "predictions.tsv")
    lesions = [r for r in rows if r["level"] == "lesion"]
    expected = _expected(trained, name, trained["rows"])
    got = np.array([[float(r["prob_colorectal"]), float(r["prob_pancreatic"])] for r in lesions])
    order = {(r[0], r[1]): i for i, r in enumerate(trained["rows"])}
    index = [order[(r["participant_id"], int(r["lesion_id"]))] for r in lesions]
    assert np.abs(got - expected[index]).max() < 1e-5
    # the card's threshold decides, lesion and patient rows alike; patient = mean of lesions
    threshold = card["threshold"]
    for row in rows:
        p = float(row["prob_pancreatic"])
        assert row["predicted"] == ("pancreatic" if p >= threshold else "colorectal")
        assert row["model"] == name and row["set"] == "test"
    for pid in trained["labels"]:
        mine = [float(r["prob_pancreatic"]) for r in lesions if r["participant_id"] == pid]
        patient = next(r for r in rows if r["participant_id"] == pid and r["level"] == "patient")
        assert patient["lesion_id"] == "n/a"
        assert float(patient["prob_pancreatic"]) == pytest.approx(np.mean(mine), abs=1e-9)
        per = out / pid / "anat" / f"{pid}_ce-portal_predictions.tsv"
        assert per.is_file() and per.with_suffix(".json").is_file()
        assert {r["participant_id"] for r in read_tsv(per)} == {pid}
    side = read_json(out / "predictions.json")
    assert side["classes"] == card["classes"] and side["threshold"] == threshold
    assert side["Provenance"]["models"][0]["sha256"] == card["onnx"]["sha256"]
    # a second run finds everything current
    again = invoke(
        runner, ["predict", model_dir, features, out, "--participants", trained["participants"]]
    )
    assert "6 skipped" in again.stderr


def test_missing_feature_is_refused_naming_it(trained, tmp_path, runner):
    name = "logistic-regression_none"
    card = read_json(trained["root"] / "models" / name / "model.json")
    dropped = card["inputs"][0]["name"]
    keep = [n for n in NAMES if n != dropped]
    rows = [(p, lesion, v[[NAMES.index(n) for n in keep]]) for p, lesion, v in trained["rows"]]
    features = write_features(tmp_path / "f", rows, names=keep)
    result = invoke(
        runner,
        [
            "predict",
            trained["root"] / "models" / name,
            features,
            tmp_path / "out",
            "--participants",
            trained["participants"],
        ],
        expect=1,
    )
    assert f"the features lack {dropped}" in result.stderr
    assert str(trained["root"] / "models" / name / "model.json") in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out" / "predictions.tsv").exists()


def test_a_participants_table_without_a_covariate_column_is_refused_naming_it(
    trained, tmp_path, runner
):
    name = "logistic-regression_none"
    rows = read_tsv(trained["participants"])
    lacking = tmp_path / "participants.tsv"
    columns = [c for c in rows[0] if c != "sex"]
    lacking.write_text(
        "\t".join(columns) + "\n" + "".join("\t".join(r[c] for c in columns) + "\n" for r in rows)
    )
    features = write_features(tmp_path / "f", trained["rows"])
    model = trained["root"] / "models" / name
    result = invoke(
        runner,
        ["predict", model, features, tmp_path / "out", "--participants", lacking],
        expect=1,
    )
    assert result.stderr.count("\n") == 1
    assert "no column sex" in result.stderr and str(model / "model.json") in result.stderr
    assert str(lacking) in result.stderr
    assert not (tmp_path / "out" / "predictions.tsv").exists()


def test_other_extraction_settings_are_refused(trained, tmp_path, runner):
    features = write_features(tmp_path / "f", trained["rows"], settings_hash=OTHER_HASH)
    result = invoke(
        runner,
        [
            "predict",
            trained["root"] / "models" / "random-forest_none",
            features,
            tmp_path / "out",
            "--participants",
            trained["participants"],
        ],
        expect=1,
    )
    assert "extracted with other settings" in result.stderr and OTHER_HASH[:12] in result.stderr
    assert HASH[:12] in result.stderr


def test_covariates_are_needed_and_a_participant_without_them_fails_alone(
    trained, tmp_path, runner
):
    model = trained["root"] / "models" / "logistic-regression_none"
    features = write_features(tmp_path / "f", trained["rows"])
    result = invoke(runner, ["predict", model, features, tmp_path / "a"], expect=2)
    assert "uses covariates (age, sex)" in result.stderr
    lacking = tmp_path / "participants.tsv"
    rows = read_tsv(trained["participants"])
    rows[0]["sex"] = "n/a"
    lacking.write_text(
        "\t".join(rows[0]) + "\n" + "".join("\t".join(r.values()) + "\n" for r in rows)
    )
    result = invoke(
        runner, ["predict", model, features, tmp_path / "b", "--participants", lacking], expect=3
    )
    assert rows[0]["participant_id"] in result.stderr
    written = {r["participant_id"] for r in read_tsv(tmp_path / "b" / "predictions.tsv")}
    assert written == set(trained["labels"]) - {rows[0]["participant_id"]}


def test_a_changed_model_file_is_refused(trained, tmp_path, runner):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained["root"] / "models" / "random-forest_none", model)
    (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes() + b"\0")
    features = write_features(tmp_path / "f", trained["rows"])
    result = invoke(runner, ["predict", model, features, tmp_path / "out"], expect=1)
    assert "does not match the sha256 in its card" in result.stderr


def test_cuda_request_without_cuda_is_a_usage_error(trained, tmp_path, runner):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    features = write_features(tmp_path / "f", trained["rows"])
    result = invoke(
        runner,
        [
            "predict",
            trained["root"] / "models" / "random-forest_none",
            features,
            tmp_path / "out",
            "--participants",
            trained["participants"],
            "--device",
            "cuda",
        ],
        expect=2,
    )
    assert "no CUDA provider" in result.stderr and "onnxruntime-gpu" in result.stderr
    assert not (tmp_path / "out" / "predictions.tsv").exists()
    invoke(
        runner,
        [
            "predict",
            trained["root"] / "models" / "random-forest_none",
            features,
            tmp_path / "out",
            "--participants",
            trained["participants"],
        ],
    )
    side = read_json(tmp_path / "out" / "predictions.json")
    assert side["ExecutionProvider"] == "CPUExecutionProvider"


def test_patient_aggregation_rules():
    from metcli.io.predictions import aggregate_patients, prediction_rows

    classes = ["colorectal", "pancreatic"]
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    pids = ["sub-1", "sub-1", "sub-1", "sub-2"]
    _, mean = aggregate_patients(pids, proba, classes)
    _, peak = aggregate_patients(pids, proba, classes, aggregate="max", positive="pancreatic")
    _, vote = aggregate_patients(
        pids, proba, classes, aggregate="vote", positive="pancreatic", threshold=0.5
    )
    assert mean[0, 1] == pytest.approx(1.4 / 3) and peak[0, 1] == pytest.approx(0.7)
    assert vote[0, 1] == pytest.approx(2 / 3) and vote[1, 1] == 0.0
    rows = prediction_rows(
        pids,
        [1, 2, 3, 1],
        proba,
        classes,
        model="m",
        set_name="test",
        positive="pancreatic",
        threshold=0.5,
        aggregate="vote",
    )
    patient = [r for r in rows if r["level"] == "patient"]
    assert [r["predicted"] for r in patient] == ["pancreatic", "colorectal"]
    assert json.dumps([r["lesion_id"] for r in patient]) == "[null, null]"


def test_sum_aggregation_is_a_softmax_of_the_summed_probabilities():
    from metcli.io.predictions import aggregate_patients, prediction_rows

    classes = ["colorectal", "pancreatic"]
    proba = np.array([[0.3, 0.7]] * 3 + [[0.3, 0.7]] + [[0.9, 0.1], [0.3, 0.7]])
    pids = ["sub-1"] * 3 + ["sub-2"] + ["sub-3"] * 2
    order, summed = aggregate_patients(pids, proba, classes, aggregate="sum", positive="pancreatic")
    _, mean = aggregate_patients(pids, proba, classes)
    assert order == ["sub-1", "sub-2", "sub-3"]
    assert np.allclose(summed.sum(axis=1), 1.0)
    # same mean, but three agreeing lesions make the patient more certain than one
    assert mean[0, 1] == pytest.approx(mean[1, 1]) and summed[0, 1] > summed[1, 1] > 0.5
    # two classes: the logistic function of the summed evidence, sum of (2p - 1)
    assert summed[0, 1] == pytest.approx(1.0 / (1.0 + np.exp(-3 * 0.4)))
    assert summed[1, 1] == pytest.approx(1.0 / (1.0 + np.exp(-0.4)))
    assert summed[2, 0] > 0.5
    # several classes: softmax of the per-class sums
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    _, per = aggregate_patients(["sub-1", "sub-1"], three, ["a", "b", "c"], aggregate="sum")
    totals = three.sum(axis=0)
    assert np.allclose(per[0], np.exp(totals) / np.exp(totals).sum())
    # hundreds of lesions do not overflow
    _, many = aggregate_patients(
        ["sub-1"] * 2000,
        np.tile([[0.01, 0.99]], (2000, 1)),
        classes,
        aggregate="sum",
        positive="pancreatic",
    )
    assert np.isfinite(many).all() and many[0, 1] == pytest.approx(1.0)
    # the patient gets the class with the larger sum; the card's threshold (chosen on means)
    # still decides the lesion rows
    rows = prediction_rows(
        pids,
        [1, 2, 3, 1, 1, 2],
        proba,
        classes,
        model="m",
        set_name="test",
        positive="pancreatic",
        threshold=0.9,
        aggregate="sum",
    )
    patient = {r["participant_id"]: r["predicted"] for r in rows if r["level"] == "patient"}
    assert patient == {"sub-1": "pancreatic", "sub-2": "pancreatic", "sub-3": "colorectal"}
    assert {r["predicted"] for r in rows if r["level"] == "lesion"} == {"colorectal"}


def test_predict_runs_a_hierarchical_models_chain(tmp_path, runner):
    """model.onnx of a hierarchy reproduces P(group) x P(label | group) of the fitted steps;
    a feature only step 2 needs is checked like any other input."""
    import pandas as pd
    from test_train_radiomics import HIERARCHY, THREE, make_three_classes

    from metcli.radiomics.train_radiomics import train_radiomics

    labels, rows = make_three_classes(4)
    (tmp_path / "hierarchy.yaml").write_text(HIERARCHY)
    result = train_radiomics(
        write_features(tmp_path / "features", rows),
        tmp_path / "models",
        labels=write_labels(tmp_path / "participants.tsv", labels),
        hierarchy=tmp_path / "hierarchy.yaml",
        classifiers="logistic-regression",
        samplers="none",
        grids=TINY_GRIDS,
        **FAST,
    )
    model_dir = tmp_path / "models" / "logistic-regression_none"
    _, new_rows = make_three_classes(5, n_patients=9, first=300)
    features = write_features(tmp_path / "extract2", new_rows)
    out = tmp_path / "pred"
    invoke(runner, ["predict", model_dir, features, out, "--aggregate", "sum", "--device", "cpu"])
    got = read_tsv(out / "predictions.tsv")
    lesions = [r for r in got if r["level"] == "lesion"]
    order = {(p, lesion): i for i, (p, lesion, _) in enumerate(new_rows)}
    index = [order[(r["participant_id"], int(r["lesion_id"]))] for r in lesions]
    frame = pd.DataFrame(frame_of(new_rows).to_numpy()[index], columns=NAMES)
    chained = result.models["logistic-regression_none"]
    parts = chained.steps
    p1 = parts["step1"].pipeline.predict_proba(frame)  # hcc, metastasis
    p2 = parts["step2-metastasis"].pipeline.predict_proba(frame)  # colorectal, pancreatic
    expected = np.column_stack([p1[:, 1] * p2[:, 0], p1[:, 0], p1[:, 1] * p2[:, 1]])
    proba = np.array([[float(r[f"prob_{c}"]) for c in THREE] for r in lesions])
    assert np.abs(proba - expected).max() < 1e-5
    assert np.abs(chained.pipeline.predict_proba(frame) - expected).max() < 1e-12
    assert [r["predicted"] for r in lesions] == [THREE[i] for i in proba.argmax(axis=1)]
    for pid in {r["participant_id"] for r in lesions}:
        mine = proba[[i for i, r in enumerate(lesions) if r["participant_id"] == pid]]
        patient = next(r for r in got if r["participant_id"] == pid and r["level"] == "patient")
        soft = np.exp(mine.sum(axis=0) - mine.sum(axis=0).max())
        assert np.allclose(
            [float(patient[f"prob_{c}"]) for c in THREE], soft / soft.sum(), atol=1e-9
        )
    side = read_json(out / "predictions.json")
    assert side["patient_aggregate"] == "sum" and side["classes"] == list(THREE)
    # a features table without an input of step 2 is refused, naming it
    card = read_json(model_dir / "model.json")
    step2 = next(s for s in card["hierarchy"]["steps"] if s["name"] == "step2-metastasis")
    dropped = step2["inputs"][0]
    keep = [n for n in NAMES if n != dropped]
    cut = [(p, lesion, v[[NAMES.index(n) for n in keep]]) for p, lesion, v in new_rows]
    refused = invoke(
        runner,
        [
            "predict",
            model_dir,
            write_features(tmp_path / "cut", cut, names=keep),
            tmp_path / "pred2",
        ],
        expect=1,
    )
    assert f"the features lack {dropped}" in refused.stderr


def _write_extract_folder(folder, rows):
    """An extract folder: one ..._desc-radiomics_features.tsv (+ sidecar) per participant and
    the group's features.tsv."""
    write_features(folder, rows)
    header, *lines = (folder / "features.tsv").read_text().splitlines()
    for pid in sorted({r[0] for r in rows}):
        anat = folder / pid / "anat"
        anat.mkdir(parents=True)
        mine = [line for line in lines if line.split("\t")[0] == pid]
        (anat / f"{pid}_ce-portal_desc-radiomics_features.tsv").write_text(
            "\n".join([header] + mine) + "\n"
        )
        (anat / f"{pid}_ce-portal_desc-radiomics_features.json").write_text(
            json.dumps({"extraction_settings_sha256": HASH})
        )
    return folder


@pytest.mark.parametrize("kind", ["table", "extract folder"])
def test_participant_runs_then_the_group_level_give_the_full_runs_predictions(
    trained, tmp_path, runner, kind
):
    """A single table's rows are filtered per participant; extract's folder gives each
    participant's own table. The group level reads the participants' files back."""
    model = trained["root"] / "models" / "logistic-regression_none"
    folder = _write_extract_folder(tmp_path / "extract", trained["rows"])
    given = folder / "features.tsv" if kind == "table" else folder
    common = ["--participants", trained["participants"], "--device", "cpu"]
    full, split = tmp_path / "full", tmp_path / "split"
    invoke(runner, ["predict", model, folder, full, *common])
    labels = sorted(trained["labels"])
    first = invoke(
        runner,
        [
            "predict",
            model,
            given,
            split,
            *common,
            "--participant-label",
            labels[0],
            "--participant-label",
            labels[1][4:],
        ],
    )
    assert first.stdout == "" and "2 done" in first.stderr
    assert not (split / "predictions.tsv").exists()
    assert sorted(p.name for p in split.glob("sub-*")) == labels[:2]
    # the group level before every participant is done: the others are named, exit 3
    early = invoke(runner, ["predict", model, given, split, *common, "--level", "group"], expect=3)
    assert f"no current predictions of {labels[2]}" in early.stderr
    assert {r["participant_id"] for r in read_tsv(split / "predictions.tsv")} == set(labels[:2])
    invoke(
        runner,
        [
            "predict",
            model,
            given,
            split,
            *common,
            "--level",
            "participant",
            *[x for label in labels[2:] for x in ("--participant-label", label)],
        ],
    )
    group = invoke(runner, ["predict", model, given, split, *common, "--level", "group"])
    assert group.stdout.strip() == str(split / "predictions.tsv")
    assert "6 skipped" in group.stderr
    assert (split / "predictions.tsv").read_bytes() == (full / "predictions.tsv").read_bytes()
    for pid in labels:
        name = f"{pid}/anat/{pid}_ce-portal_predictions.tsv"
        assert (split / name).read_bytes() == (full / name).read_bytes()
    side = read_json(split / "predictions.json", schema="sidecar")
    sources = {s.split(":")[-1] for s in side["Sources"]}
    if kind == "table":  # the same inputs as the full run: the same sidecar
        assert (split / "predictions.json").read_bytes() == (full / "predictions.json").read_bytes()
    else:  # the participants' own tables
        assert f"{labels[0]}/anat/{labels[0]}_ce-portal_desc-radiomics_features.tsv" in sources
        assert "features.tsv" not in sources
        # a participant's sidecar names its own table only, whoever shared its run
        own = read_json(split / labels[0] / "anat" / f"{labels[0]}_ce-portal_predictions.json")
        tables = [s for s in own["Sources"] if s.startswith("bids:features:")]
        assert tables == [
            f"bids:features:{labels[0]}/anat/{labels[0]}_ce-portal_desc-radiomics_features.tsv"
        ]
    assert side["ExecutionProvider"] == "CPUExecutionProvider"
    # a full run finds everything current
    again = invoke(runner, ["predict", model, folder, full, *common])
    assert "6 skipped" in again.stderr


def test_an_unknown_participant_label_is_a_usage_error_naming_it(trained, tmp_path, runner):
    model = trained["root"] / "models" / "logistic-regression_none"
    features = write_features(tmp_path / "f", trained["rows"])
    for given in (features, features / "features.tsv"):
        result = invoke(
            runner,
            [
                "predict",
                model,
                given,
                tmp_path / "out",
                "--participants",
                trained["participants"],
                "--participant-label",
                "sub-999",
            ],
            expect=2,
        )
        assert "--participant-label 'sub-999' is not a participant" in result.stderr
        assert result.stderr.count("\n") == 1
    assert not list((tmp_path / "out").glob("sub-*"))
