"""Per-class cut-offs by best F1 (metcli.io.cutoffs) through train-radiomics, predict and
evaluate: chosen on out-of-fold predictions, recorded in the card, applied by predict,
reported by evaluate at the cut-offs and at argmax."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train_radiomics import (
    FAST,
    NAMES,
    TINY_GRIDS,
    _cli_args,
    make_cohort,
    write_features,
    write_labels,
)

from conftest import invoke
from metcli.io import schemas
from metcli.io.cutoffs import (
    FINAL_CLASS_RULE,
    apply_decision,
    best_f1_cutoff,
    best_f1_cutoffs,
    check_cutoffs,
    decide,
    decide_index,
)
from metcli.io.files import read_json, read_tsv

CLASSES = ("colorectal", "gastric", "pancreatic")


# ----------------------------------------------------------------------------- the library
def _brute_force(is_class, scores):
    """(best F1, the highest candidate reaching it, the cut-off: halfway to the next lower
    score) by sklearn's f1_score at every candidate."""
    from sklearn.metrics import f1_score

    best, chosen, below, previous = -1.0, None, None, 0.0
    for t in sorted(set(scores.tolist())):  # ascending: a tie moves to the higher candidate
        value = f1_score(is_class, scores >= t, zero_division=0)
        if value >= best - 1e-12:
            best, chosen, below = max(best, value), t, previous
        previous = t
    return best, chosen, (chosen + below) / 2


@pytest.mark.parametrize("seed", range(6))
def test_best_f1_cutoff_equals_brute_force_and_the_precision_recall_curve(seed):
    from sklearn.metrics import f1_score, precision_recall_curve

    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 60))
    is_class = rng.random(n) < rng.uniform(0.15, 0.6)
    is_class[0] = True
    scores = np.clip(rng.normal(0.4 + 0.25 * is_class, 0.2), 0, 1)
    if seed % 2:  # ties among the scores
        scores = np.round(scores, 1)
    cut = best_f1_cutoff(is_class, scores)
    best, candidate, expected = _brute_force(is_class, scores)
    assert cut == expected
    assert np.array_equal(scores >= cut, scores >= candidate)  # the same cases called
    assert not np.any(np.isclose(scores, cut, rtol=0, atol=1e-10)) or cut == 0.0
    assert f1_score(is_class, scores >= cut) == pytest.approx(best, abs=1e-12)
    precision, recall, thresholds = precision_recall_curve(is_class, scores)
    with np.errstate(all="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    assert f1.max() == pytest.approx(best, abs=1e-12)
    assert thresholds[np.flatnonzero(np.isclose(f1, f1.max(), atol=1e-12))].max() == candidate


def test_best_f1_cutoffs_are_one_class_against_the_rest():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1, 1], size=40)
    labels = [CLASSES[i] for i in rng.integers(0, 3, 40)]
    cut = best_f1_cutoffs(labels, probs, CLASSES)
    for k, c in enumerate(CLASSES):
        is_class = np.array([label == c for label in labels])
        assert cut[c] == _brute_force(is_class, probs[:, k])[2]
    assert best_f1_cutoffs(np.array([CLASSES.index(x) for x in labels]), probs, CLASSES) == cut
    # a class no case has: 1.0 (it can only add false positives)
    absent = best_f1_cutoffs(["colorectal", "gastric"] * 3, probs[:6], CLASSES)
    assert absent["pancreatic"] == 1.0


def _decide_by_hand(p, cut):
    reached = [k for k in range(len(p)) if round(p[k] - cut[k], 12) >= 0]
    if not reached:
        return int(np.argmax(p))
    return sorted(reached, key=lambda k: (-round(p[k] - cut[k], 12), -p[k], k))[0]


def test_decide_follows_the_documented_rule():
    cut = {"colorectal": 0.5, "gastric": 0.2, "pancreatic": 0.3}
    # the docstring's example: b and c reach their cut-offs, b by more; argmax says a
    assert decide(np.array([[0.45, 0.25, 0.30]]), CLASSES, cut) == ["gastric"]
    assert decide(np.array([[0.45, 0.15, 0.40]]), CLASSES, cut) == ["pancreatic"]  # one
    assert decide(np.array([[0.49, 0.19, 0.29]]), CLASSES, cut) == ["colorectal"]  # none
    # equal margins: the higher probability wins
    assert decide(np.array([[0.6, 0.3, 0.1]]), CLASSES, {**cut, "gastric": 0.2}) == ["colorectal"]
    rng = np.random.default_rng(0)
    probs = np.round(rng.dirichlet([1, 1, 1], size=300), 2)
    cuts = np.round(rng.uniform(0.1, 0.6, size=(300, 3)), 2)
    for p, c in zip(probs, cuts):
        assert decide_index(p[None], c)[0] == _decide_by_hand(p, c)
    assert "argmax" in FINAL_CLASS_RULE


def test_check_cutoffs_refuses_other_classes_and_values():
    from metcli.core.errors import InputError

    assert check_cutoffs({"a": 0.1, "b": 1}, ["a", "b"]) == {"a": 0.1, "b": 1.0}
    for bad in ({"a": 0.1}, {"a": 0.1, "b": 0.2, "c": 0.3}, {"a": 0.1, "b": 1.5}, [0.1, 0.2]):
        with pytest.raises(InputError) as info:
            check_cutoffs(bad, ["a", "b"])
        assert info.value.fix


def test_apply_decision_with_vote_recounts_the_lesions():
    rows = [
        {"participant_id": "sub-1", "lesion_id": i, "level": "lesion", "model": "m", "set": "t"}
        | dict(zip(["prob_a", "prob_b", "prob_c"], p))
        | {"predicted": "a"}
        for i, p in enumerate([(0.5, 0.3, 0.2), (0.45, 0.25, 0.3), (0.4, 0.35, 0.25)], start=1)
    ]
    rows.append(
        {"participant_id": "sub-1", "lesion_id": None, "level": "patient", "model": "m"}
        | {"set": "t", "prob_a": 1.0, "prob_b": 0.0, "prob_c": 0.0, "predicted": "a"}
    )
    decision = {"rule": "best-f1 per class", "cutoffs": {"a": 0.6, "b": 0.3, "c": 0.3}}
    apply_decision(rows, ["a", "b", "c"], decision, "vote")
    assert [r["predicted"] for r in rows[:3]] == ["b", "c", "b"]
    assert rows[3]["prob_b"] == pytest.approx(2 / 3) and rows[3]["predicted"] == "b"
    # argmax (or no decision) leaves the rows as they are
    again = apply_decision([dict(r) for r in rows], ["a", "b", "c"], {"rule": "argmax"}, "vote")
    assert [r["predicted"] for r in again] == [r["predicted"] for r in rows]


def test_image_models_decide_by_the_same_rule():
    pytest.importorskip("torch")
    from metcli.cnn import decide as cnn_decide

    probs = np.array([[0.45, 0.25, 0.30], [0.2, 0.1, 0.7]])
    cut = {"colorectal": 0.5, "gastric": 0.2, "pancreatic": 0.3}
    assert cnn_decide(probs, CLASSES, cut) == decide(probs, CLASSES, cut)
    assert cnn_decide(probs, CLASSES) == ["colorectal", "pancreatic"]
    assert cnn_decide(np.array([[0.6, 0.4]]), ["a", "b"], {"a": 0.9, "b": 0.9}) == ["a"]


# ----------------------------------------------------------------------------- the commands
def _units(rows, level):
    chosen = [r for r in rows if r["level"] == level]
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in chosen])
    return chosen, probs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-class logistic regression trained with --decision best-f1, and new features."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("cutoffs")
    labels, rows = make_cohort(7, n_patients=27, signal=1.2, classes=CLASSES)
    labels_path = write_labels(root / "participants.tsv", labels)
    args = ["--classifiers", "logistic-regression", "--sampler", "none"]
    args += ["--protocol", "holdout", "--test-patients", "6", "--decision", "best-f1"]
    invoke(
        CliRunner(), _cli_args(write_features(root / "f", rows), root / "out", labels_path, *args)
    )
    new_labels, new_rows = make_cohort(8, n_patients=12, signal=1.2, classes=CLASSES, first=200)
    return {
        "root": root,
        "model": root / "out" / "logistic-regression_none",
        "labels": labels,
        "new_features": write_features(root / "new", new_rows),
        "new_labels": write_labels(root / "new" / "participants.tsv", new_labels),
    }


def test_train_radiomics_chooses_the_cutoffs_on_out_of_fold_predictions(trained):
    from metcli.io.cards import card_checksum

    model = trained["model"]
    card = read_json(model / "model.json")
    schemas.validate(card, "model_card")
    decision = card["decision"]
    assert decision["rule"] == "best-f1 per class" and decision["level"] == "patient"
    assert "out-of-fold" in decision["chosen_on"] and decision["final_class"] == FINAL_CLASS_RULE
    assert card["card_sha256"] == card_checksum(card)  # the checksum covers the decision
    # recomputed from the out-of-fold predictions file (patient rows: mean of lesions)
    oof = read_tsv(model / "oof_predictions.tsv")
    patients, probs = _units(oof, "patient")
    truth = [trained["labels"][r["participant_id"]] for r in patients]
    again = best_f1_cutoffs(truth, probs, CLASSES)
    assert again.keys() == decision["cutoffs"].keys()
    for c in CLASSES:  # the table holds the probabilities to 10 significant digits
        assert again[c] == pytest.approx(decision["cutoffs"][c], abs=1e-9)
    assert not {r["participant_id"] for r in oof} & {
        r["participant_id"] for r in read_tsv(model / "predictions.tsv")
    }
    # the training tables' predicted column and sidecars follow the cut-offs
    for name in ("oof_predictions", "predictions"):
        rows = read_tsv(model / f"{name}.tsv")
        assert read_json(model / f"{name}.json")["decision"] == decision
        for level in ("lesion", "patient"):
            chosen, probs = _units(rows, level)
            expected = decide(probs, CLASSES, decision["cutoffs"])
            assert [r["predicted"] for r in chosen] == expected, (name, level)
    group = read_json(trained["root"] / "out" / "oof_predictions.json")
    assert group["models"]["logistic-regression_none"]["decision"] == decision
    results = read_tsv(trained["root"] / "out" / "results.tsv")
    assert all(r["threshold_source"].startswith("best-f1 per class") for r in results)


def test_predict_applies_the_cards_cutoffs_and_evaluate_reports_both_rules(
    trained, tmp_path, runner
):
    decision = read_json(trained["model"] / "model.json")["decision"]
    pred = tmp_path / "pred"
    invoke(runner, ["predict", trained["model"], trained["new_features"], pred, "--device", "cpu"])
    rows = read_tsv(pred / "predictions.tsv")
    assert read_json(pred / "predictions.json")["decision"] == decision
    changed = 0
    for level in ("lesion", "patient"):
        chosen, probs = _units(rows, level)
        expected = decide(probs, CLASSES, decision["cutoffs"])
        assert [r["predicted"] for r in chosen] == expected
        changed += sum(e != CLASSES[i] for e, i in zip(expected, probs.argmax(axis=1)))
    print(f"predict: {changed} of {len(rows)} rows decided otherwise than by argmax")

    out = tmp_path / "eval"
    invoke(runner, ["evaluate", pred, out, "--labels", trained["new_labels"], "--bootstrap", "100"])
    table = read_tsv(out / "cutoff_metrics.tsv")
    assert {r["rule"] for r in table} == {"argmax", "cutoffs"}
    assert {r["level"] for r in table} == {"patient", "lesion"}
    labels = {r["participant_id"]: r["primary"] for r in read_tsv(trained["new_labels"])}
    patients, probs = _units(rows, "patient")
    truth = np.array([CLASSES.index(labels[r["participant_id"]]) for r in patients])
    by_rule = {
        "argmax": probs.argmax(axis=1),
        "cutoffs": np.array(
            [CLASSES.index(c) for c in decide(probs, CLASSES, decision["cutoffs"])]
        ),
    }
    for rule, pred_index in by_rule.items():
        got = {
            (r["metric"], r["class"]): float(r["estimate"])
            for r in table
            if r["rule"] == rule and r["level"] == "patient"
        }
        assert got[("accuracy", "n/a")] == pytest.approx(np.mean(pred_index == truth), abs=1e-9)
        k = CLASSES.index("gastric")
        sens = np.mean(pred_index[truth == k] == k)
        assert got[("sensitivity", "gastric")] == pytest.approx(sens, abs=1e-9)
    doc = read_json(out / "metrics.json")
    assert doc["Cutoffs"][0]["cutoffs"] == decision["cutoffs"]
    assert doc["Cutoffs"][0]["rule_of_predicted_column"] == "best-f1 per class"
    page = (out / "report.html").read_text()
    assert 'id="cutoffs"' in page and "Per-class cut-offs" in page

    # --cutoffs FILE replaces the sidecar's
    given = {"colorectal": 0.9, "gastric": 0.9, "pancreatic": 0.05}
    (tmp_path / "cutoffs.json").write_text(json.dumps(given))
    out2 = tmp_path / "eval2"
    invoke(
        runner,
        ["evaluate", pred, out2, "--labels", trained["new_labels"], "--bootstrap", "100"]
        + ["--no-plots", "--cutoffs", tmp_path / "cutoffs.json"],
    )
    doc = read_json(out2 / "metrics.json")
    assert doc["Cutoffs"][0]["cutoffs"] == given and "--cutoffs" in doc["Cutoffs"][0]["source"]
    accuracy = next(
        float(r["estimate"])
        for r in read_tsv(out2 / "cutoff_metrics.tsv")
        if r["rule"] == "cutoffs" and r["level"] == "patient" and r["metric"] == "accuracy"
    )
    forced = np.array([CLASSES.index(c) for c in decide(probs, CLASSES, given)])
    assert accuracy == pytest.approx(np.mean(forced == truth), abs=1e-9)
    (tmp_path / "bad.json").write_text(json.dumps({"colorectal": 0.5}))
    bad = invoke(
        runner,
        ["evaluate", pred, tmp_path / "eval3", "--labels", trained["new_labels"]]
        + ["--cutoffs", tmp_path / "bad.json"],
        expect=1,
    )
    assert "missing gastric, pancreatic" in bad.stderr


def test_default_decision_is_argmax_with_the_cutoffs_recorded(tmp_path):
    from metcli.radiomics.train_radiomics import train_radiomics

    labels, rows = make_cohort(9, n_patients=18, signal=1.5, classes=CLASSES)
    train_radiomics(
        write_features(tmp_path / "f", rows),
        tmp_path / "out",
        labels=write_labels(tmp_path / "participants.tsv", labels),
        classifiers="naive-bayes",
        samplers="none",
        grids=TINY_GRIDS,
        **FAST,
    )
    model = tmp_path / "out" / "naive-bayes_none"
    card = read_json(model / "model.json")
    assert card["decision"]["rule"] == "argmax" and set(card["decision"]["cutoffs"]) == set(CLASSES)
    assert "decision" not in card["Provenance"]["settings"]  # earlier runs' settings unchanged
    oof = read_tsv(model / "oof_predictions.tsv")
    chosen, probs = _units(oof, "lesion")
    assert [r["predicted"] for r in chosen] == [CLASSES[i] for i in probs.argmax(axis=1)]


def test_hierarchy_steps_get_their_own_cutoffs(tmp_path):
    """Step 2 of a group of three labels has its own cut-offs (on its own out-of-fold
    predictions); the binary step 1 keeps its threshold; the chain has its own."""
    from metcli.io.predictions import aggregate_patients
    from metcli.radiomics.train_radiomics import train_radiomics

    labels_four = ("colorectal", "gastric", "hcc", "pancreatic")
    labels, rows = make_cohort(11, n_patients=32, signal=2.0, classes=labels_four)
    shift = np.zeros(len(NAMES))
    shift[-1] = 4.0
    rows = [(p, lesion, v + shift if labels[p] == "hcc" else v) for p, lesion, v in rows]
    (tmp_path / "h.yaml").write_text(
        "groups:\n  metastasis: [colorectal, gastric, pancreatic]\n  hcc: [hcc]\n"
    )
    result = train_radiomics(
        write_features(tmp_path / "f", rows),
        tmp_path / "out",
        labels=write_labels(tmp_path / "participants.tsv", labels),
        hierarchy=tmp_path / "h.yaml",
        classifiers="logistic-regression",
        samplers="none",
        grids=TINY_GRIDS,
        decision="best-f1",
        **FAST,
    )
    folder = tmp_path / "out" / "logistic-regression_none"
    chain = read_json(folder / "model.json")
    step1 = read_json(folder / "step1" / "model.json")
    step2 = read_json(folder / "step2-metastasis" / "model.json")
    assert "decision" not in step1 and step1["threshold"] is not None
    assert set(step2["decision"]["cutoffs"]) == {"colorectal", "gastric", "pancreatic"}
    assert set(chain["decision"]["cutoffs"]) == set(labels_four)
    # step 2's cut-offs: on its own out-of-fold predictions (the metastasis patients)
    part = result.models["logistic-regression_none"].steps["step2-metastasis"]
    cohort = result.steps["step2-metastasis"].cohort
    order, probs = aggregate_patients(cohort.participants, part.oof, cohort.classes)
    truth = [labels[p] for p in order]
    assert "hcc" not in truth and len(order) == sum(v != "hcc" for v in labels.values())
    assert best_f1_cutoffs(truth, probs, cohort.classes) == step2["decision"]["cutoffs"]


def test_image_models_decide_their_prediction_rows_by_the_cutoffs():
    """train-cnn's rows (lesions, then patients: mean of lesions) follow the cut-offs it
    chose on the validation lesions (metcli.cnn.outputs.validation_decision)."""
    pytest.importorskip("torch")
    from metcli.cnn import Sample, prediction_rows

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 30)
    probs = rng.dirichlet([1, 1, 1], size=30) * 0.5 + np.eye(3)[labels] * 0.5
    samples = [
        Sample(f"sub-{i // 3:02d}", i % 3 + 1, int(k), np.zeros((1, 1, 4, 4), np.float32))
        for i, k in enumerate(labels)
    ]
    cut = best_f1_cutoffs(labels, probs, CLASSES)
    rows = prediction_rows(samples, probs, list(CLASSES), "val", "cnn", cut)
    lesions = [r for r in rows if r["level"] == "lesion"]
    assert [r["predicted"] for r in lesions] == decide(probs, CLASSES, cut)
    patients = [r for r in rows if r["level"] == "patient"]
    means = np.array([probs[i : i + 3].mean(axis=0) for i in range(0, 30, 3)])
    assert [r["predicted"] for r in patients] == decide(means, CLASSES, cut)
    plain = prediction_rows(samples, probs, list(CLASSES), "val", "cnn")
    assert [r["predicted"] for r in plain if r["level"] == "lesion"] == [
        CLASSES[i] for i in probs.argmax(axis=1)
    ]
