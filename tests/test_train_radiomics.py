"""train-radiomics: leakage-safe selection and CV, ONNX parity, outputs and bad input.

Every cohort is synthetic (numpy) and written in extract's features-table format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from metcli.io import schemas
from metcli.io.files import read_json, read_tsv

HASH = "a" * 64
OTHER_HASH = "b" * 64
NAMES = [
    "original_firstorder_Mean",
    "original_glcm_Contrast",
    "original_shape_Sphericity",
    "original_glrlm_RunEntropy",
    "original_gldm_DependenceEntropy",
    "original_ngtdm_Busyness",
]
FAST = dict(cv_folds=3, cv_repeats=1, inner_folds=2, importance_trees=10, importance_repeats=2)
TINY_GRIDS = {
    "xgboost": {"n_estimators": [20], "max_depth": [2]},
    "random-forest": {"n_estimators": [20]},
    "linear-svm": {"C": [1.0]},
    "kernel-svm": {"C": [1.0]},
    "knn": {"n_neighbors": [5]},
    "logistic-regression": {"C": [1.0]},
    "naive-bayes": {"var_smoothing": [1e-9]},
    "decision-tree": {"max_depth": [3]},
}


# ----------------------------------------------------------------------------- synthetic data
def make_cohort(
    seed,
    *,
    n_patients=24,
    names=NAMES,
    signal=0.0,
    patient_sd=1.0,
    lesion_sd=0.5,
    classes=("colorectal", "pancreatic"),
    lesions=(2, 6),
    first=0,
):
    """Labels per patient and lesion rows; class k shifts feature k-1 by ``signal``."""
    rng = np.random.default_rng(seed)
    labels = np.array([classes[i % len(classes)] for i in range(n_patients)], dtype=object)
    rng.shuffle(labels)
    rows = []
    for p in range(n_patients):
        pid = f"sub-{first + p:03d}"
        centre = rng.normal(0.0, patient_sd, len(names))
        k = classes.index(labels[p])
        if k:
            centre[k - 1] += signal
        for lesion in range(1, int(rng.integers(lesions[0], lesions[1] + 1)) + 1):
            rows.append((pid, lesion, centre + rng.normal(0.0, lesion_sd, len(names))))
    return {f"sub-{first + p:03d}": labels[p] for p in range(n_patients)}, rows


def write_features(
    folder: Path, rows, *, names=NAMES, settings_hash=HASH, failed=(), hash_under_provenance=False
) -> Path:
    """extract's group table (features.tsv) and its sidecar in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    header = (
        ["participant_id", "session", "phase", "lesion_id", "status", "message"]
        + names
        + ["diagnostics_Mask-original_VoxelNum"]
    )
    lines = ["\t".join(header)]
    for pid, lesion, values in rows:
        status = "failed:too_small" if (pid, lesion) in failed else "ok"
        cells = ["n/a"] * len(names) if status != "ok" else [repr(float(v)) for v in values]
        lines.append(
            "\t".join(
                [
                    pid,
                    "n/a",
                    "portal",
                    str(lesion),
                    status,
                    "n/a" if status == "ok" else "too small",
                ]
                + cells
                + ["42"]
            )
        )
    (folder / "features.tsv").write_text("\n".join(lines) + "\n")
    doc = (
        {"Provenance": {"settings": {"extraction_settings_sha256": settings_hash}}}
        if hash_under_provenance
        else {"extraction_settings_sha256": settings_hash}
    )
    (folder / "features.json").write_text(json.dumps(doc))
    return folder


def write_labels(path: Path, labels: dict, *, column="primary", extra=None) -> Path:
    extra = extra or {}
    columns = ["participant_id", column] + sorted({k for v in extra.values() for k in v})
    lines = ["\t".join(columns)]
    for pid, label in sorted(labels.items()):
        cells = [pid, "n/a" if label is None else str(label)]
        cells += [str(extra.get(pid, {}).get(c, "n/a")) for c in columns[2:]]
        lines.append("\t".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def frame_of(rows, names=NAMES):
    """The lesions as the model sees them (float32-representable values)."""
    import pandas as pd

    values = np.array([r[2] for r in rows], dtype=np.float64)
    return pd.DataFrame(values.astype(np.float32).astype(np.float64), columns=names)


def null_band(n0: int, n1: int, z: float = 3.0) -> tuple[float, float]:
    """Chance band of a patient-level AUC under the null (Hanley & McNeil variance)."""
    sd = math.sqrt((n0 + n1 + 1) / (12.0 * n0 * n1))
    return 0.5 - z * sd, 0.5 + z * sd


# ----------------------------------------------------------------------------- selection steps
def test_correlation_filter_rule_is_documented_and_order_independent():
    import pandas as pd

    from metcli.radiomics.selection import CorrelationFilter

    rng = np.random.default_rng(0)
    a, c, d = rng.normal(size=(3, 200))
    data = {
        "a": a,
        "c": c,
        "d": d,
        "hub": a + c,  # |r| ~ 0.71 with a and with c
        "z_copy": d + rng.normal(0, 0.01, 200),  # same as d: the name sorting last goes
        "const": np.ones(200),
    }
    frame = pd.DataFrame(data)
    fitted = CorrelationFilter(threshold=0.6).fit(frame)
    assert sorted(fitted.get_feature_names_out()) == ["a", "c", "d"]
    reasons = {row["feature"]: row["reason"] for row in fitted.dropped_}
    assert reasons == {"const": "constant", "hub": "correlated", "z_copy": "correlated"}
    kept = frame[list(fitted.get_feature_names_out())]
    assert np.abs(np.corrcoef(kept.to_numpy(), rowvar=False) - np.eye(3)).max() <= 0.6
    for seed in range(5):
        order = list(np.random.default_rng(seed).permutation(frame.columns))
        again = CorrelationFilter(threshold=0.6).fit(frame[order])
        assert sorted(again.get_feature_names_out()) == ["a", "c", "d"]
        assert list(again.transform(frame[order]).columns) == [
            c for c in order if c in ("a", "c", "d")
        ]
    # a covariate is never dropped, however correlated
    keep = CorrelationFilter(threshold=0.6, keep=("hub",)).fit(frame)
    assert "hub" in keep.get_feature_names_out()


def test_cached_filter_fits_equal_fresh_ones(tmp_path):
    """The CV shares one filter fit per training fold through a cache keyed by the data."""
    import pandas as pd

    from metcli.radiomics.selection import CorrelationFilter

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 50))
    frame = pd.DataFrame({"a": a, "b": b, "a2": a + rng.normal(0, 0.1, 50), "const": np.zeros(50)})
    fresh = CorrelationFilter(threshold=0.6).fit(frame)
    first = CorrelationFilter(threshold=0.6, cache_dir=str(tmp_path)).fit(frame)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = CorrelationFilter(threshold=0.6, cache_dir=str(tmp_path)).fit(frame)
    for fit in (first, again):
        assert fit.support_.tolist() == fresh.support_.tolist()
        assert fit.dropped_ == fresh.dropped_
    # other values or another threshold are other entries, not a stale hit
    other = frame.assign(b=a + rng.normal(0, 0.1, 50))  # now a, a2 and b correlate
    cached = CorrelationFilter(threshold=0.6, cache_dir=str(tmp_path)).fit(other)
    assert cached.support_.tolist() == CorrelationFilter(threshold=0.6).fit(other).support_.tolist()
    assert cached.support_.sum() == fresh.support_.sum() - 1
    CorrelationFilter(threshold=0.95, cache_dir=str(tmp_path)).fit(frame)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_importance_selector_ranks_the_signal_first_and_keeps_covariates():
    import pandas as pd

    from metcli.radiomics.selection import PermutationImportanceSelector

    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(40), 3)
    y = np.repeat(rng.permutation([0, 1] * 20), 3)
    frame = pd.DataFrame(
        {
            "noise1": rng.normal(size=120),
            "signal": y * 2.0 + rng.normal(size=120),
            "noise2": rng.normal(size=120),
            "covariate_age": rng.normal(size=120),
        }
    )
    sel = PermutationImportanceSelector(
        max_features=1, n_estimators=30, n_repeats=3, keep=("covariate_age",), random_state=0
    )
    sel.fit(frame, y, groups=patients)
    assert sel.ranking_[0] == "signal"
    assert list(sel.get_feature_names_out()) == ["signal", "covariate_age"]
    assert np.isnan(sel.importances_[3]) and sel.importances_[1] > 0.1


def test_patient_weights_make_patients_and_classes_count_equally():
    from metcli.radiomics.models import lesion_weights

    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    patients = np.array(["a", "a", "a", "a", "b", "c", "c", "d"])
    w = lesion_weights(y, patients, per_patient=True)
    per_patient = {p: w[patients == p].sum() for p in "abcd"}
    assert per_patient["a"] == pytest.approx(per_patient["b"])
    assert per_patient["c"] == pytest.approx(per_patient["d"])
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())
    balanced = lesion_weights(y, patients, per_patient=False)
    assert balanced[y == 0].sum() == pytest.approx(balanced[y == 1].sum())


def test_thresholds_youden_and_f1():
    from metcli.radiomics.metrics import choose_threshold

    truth = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9])
    # youden: >= 0.6 gives tpr 3/4, fpr 0 (0.75); >= 0.35 gives 1 - 1/4 (0.75): highest wins
    assert choose_threshold(truth, scores, "youden") == 0.6
    # f1: >= 0.35 -> tp 4, fp 1 -> 8/9; >= 0.6 -> 6/7
    assert choose_threshold(truth, scores, "f1") == 0.35


# ----------------------------------------------------------------------------- honesty of the CV
def _patient_auc(proba, y, patients):
    from metcli.io.predictions import aggregate_patients
    from metcli.radiomics.metrics import auc

    order, p = aggregate_patients(patients, proba, ["a", "b"])
    truth = np.array([y[np.flatnonzero(patients == q)[0]] for q in order])
    return auc(truth, p, positive_index=1)


def test_null_cohort_grouped_cv_stays_at_chance_while_lesion_level_cv_leaks():
    """Lesions of a patient share a strong offset; labels are random per patient."""
    from metcli.radiomics.models import cross_validate
    from metcli.radiomics.settings import check_settings

    settings = check_settings(
        classifiers="knn",
        samplers="none",
        grids={"knn": {"n_neighbors": [3]}},
        cv_folds=4,
        **{k: v for k, v in FAST.items() if k != "cv_folds"},
    )
    grouped, leaky = [], []
    for seed in range(4):
        labels, rows = make_cohort(
            seed, n_patients=30, patient_sd=3.0, lesion_sd=0.3, lesions=(3, 6)
        )
        frame = frame_of(rows)
        patients = np.array([r[0] for r in rows], dtype=object)
        y = np.array([labels[p] == "pancreatic" for p in patients], dtype=int)
        lesions = np.arange(len(rows)).astype(str)
        for groups, sink in ((patients, grouped), (lesions, leaky)):
            out = cross_validate(
                frame,
                y,
                patients=groups,
                cv_groups=groups,
                models=[("knn", "none")],
                settings=settings,
                n_classes=2,
            )
            sink.append(_patient_auc(out.mean_oof("knn_none"), y, patients))
    low, high = null_band(15, 15)
    assert all(low < a < high for a in grouped), (grouped, (low, high))
    sd = (high - 0.5) / 3.0
    assert abs(np.mean(grouped) - 0.5) < 3.0 * sd / math.sqrt(len(grouped)), grouped
    assert min(leaky) > 0.9, leaky
    print(
        f"null cohort: grouped CV patient AUCs {np.round(grouped, 3).tolist()}, "
        f"lesion-level (leaky) {np.round(leaky, 3).tolist()}, band {low:.2f}-{high:.2f}"
    )


def test_known_signal_gives_auc_well_above_chance(tmp_path):
    from metcli.radiomics.train_radiomics import train_radiomics

    labels, rows = make_cohort(11, n_patients=24, signal=2.5)
    features = write_features(tmp_path / "features", rows)
    result = train_radiomics(
        features,
        tmp_path / "out",
        labels=write_labels(tmp_path / "participants.tsv", labels),
        classifiers="logistic-regression,decision-tree",
        samplers="none",
        grids=TINY_GRIDS,
        **FAST,
    )
    table = {(r["model"], r["level"]): r for r in read_tsv(tmp_path / "out" / "results.tsv")}
    best = float(table[(result.selected, "patient")]["cv_auc"])
    assert best > 0.85, table
    assert float(table[("logistic-regression_none", "patient")]["cv_auc"]) > 0.85
    # the signal feature is what the final models use, and the table says so
    selected = {r["feature"]: r for r in read_tsv(tmp_path / "out" / "selected_features.tsv")}
    assert selected[NAMES[0]]["selected"] == "true" and selected[NAMES[0]]["rank"] == "1"
    assert float(selected[NAMES[0]]["selection_frequency"]) == 1.0
    print(f"known signal: patient-level CV AUC {best:.3f} ({result.selected})")


# ----------------------------------------------------------------------------- ONNX parity
def _onnx_probabilities(model_dir: Path, frame):
    import onnxruntime as ort

    card = read_json(model_dir / "model.json")
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i["name"] for i in card["inputs"]]
    assert [i.name for i in sess.get_inputs()] == names
    feeds = {n: frame[[n]].to_numpy(np.float32) for n in names}
    return sess.run(["probabilities"], feeds)[0], card


def test_onnx_reproduces_predict_proba_with_three_classes(tmp_path):
    """Two classes are tested for every registered classifier (tests/test_classifiers.py)."""
    from metcli.radiomics.train_radiomics import train_radiomics

    classes = ("colorectal", "gastric", "pancreatic")
    labels, rows = make_cohort(3, n_patients=21, signal=1.5, classes=classes)
    chosen = ("xgboost", "logistic-regression", "kernel-svm")
    result = train_radiomics(
        write_features(tmp_path / "f", rows),
        tmp_path / "out",
        labels=write_labels(tmp_path / "p.tsv", labels),
        classifiers=",".join(chosen),
        samplers="none",
        grids=TINY_GRIDS,
        max_features=4,
        **FAST,
    )
    _, new_rows = make_cohort(99, n_patients=12, signal=1.5, classes=classes, first=500)
    frame = frame_of(new_rows)
    differences = {}
    for name, model in result.models.items():
        onnx_proba, card = _onnx_probabilities(tmp_path / "out" / name, frame)
        reference = model.pipeline.predict_proba(frame)
        differences[name.split("_")[0]] = float(np.abs(onnx_proba - reference).max())
        assert differences[name.split("_")[0]] < 1e-5, (name, differences)
        assert card["classes"] == sorted(classes)
        assert card["onnx"]["max_abs_difference"] < 1e-5
    assert len(differences) == len(chosen)
    print(
        f"ONNX max |difference| ({len(classes)} classes): "
        + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
    )


# ----------------------------------------------------------------------------- outputs (CLI)
def _cli_args(features, out, labels, *extra):
    return [
        "train-radiomics",
        features,
        out,
        "--labels",
        labels,
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
    ] + list(extra)


def test_holdout_outputs_follow_the_contract_and_are_byte_identical_with_any_jobs(tmp_path, runner):
    labels, rows = make_cohort(5, n_patients=20, signal=2.0)
    features = write_features(tmp_path / "features", rows)
    labels_path = write_labels(tmp_path / "raw" / "participants.tsv", labels)
    args = [
        "--classifiers",
        "naive-bayes",
        "--sampler",
        "smote,undersample",
        "--protocol",
        "holdout",
        "--test-patients",
        "6",
        "--seed",
        "3",
    ]
    first = invoke(runner, _cli_args(features, tmp_path / "a", labels_path, *args))
    # the same again, with the outer folds shared by two worker processes
    invoke(runner, _cli_args(features, tmp_path / "b", labels_path, *args, "--jobs", "2"))
    out = tmp_path / "a"
    for name in (
        "results.tsv",
        "selected_features.tsv",
        "split.tsv",
        "oof_predictions.tsv",
        "predictions.tsv",
    ):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # stdout: the chosen model's folder
    results = read_tsv(out / "results.tsv")
    chosen = {r["model"] for r in results if r["selected_by_cv"] == "true"}
    assert len(chosen) == 1 and first.stdout.strip() == str(out / chosen.pop())
    assert len(results) == 2 * 2
    # chosen on CV alone: highest patient-level cv_auc
    patient = [r for r in results if r["level"] == "patient"]
    top = max(float(r["cv_auc"]) for r in patient)
    assert any(float(r["cv_auc"]) == top and r["selected_by_cv"] == "true" for r in patient)
    # split by patient, stratified: 3 + 3 test patients, nobody in two sets
    split = read_tsv(out / "split.tsv")
    test = [r["participant_id"] for r in split if r["set"] == "test"]
    assert len(test) == 6 and len({r["participant_id"] for r in split}) == len(split) == 20
    assert sorted(labels[p] for p in test) == ["colorectal"] * 3 + ["pancreatic"] * 3
    predictions = read_tsv(out / "predictions.tsv")
    assert {r["participant_id"] for r in predictions} == set(test)
    assert {r["set"] for r in predictions} == {"test"}
    oof = read_tsv(out / "oof_predictions.tsv")
    assert not {r["participant_id"] for r in oof} & set(test)
    # patient rows are the mean of the lesion rows
    lesion = [
        float(r["prob_pancreatic"])
        for r in oof
        if r["level"] == "lesion"
        and r["participant_id"] == oof[0]["participant_id"]
        and r["model"] == oof[0]["model"]
    ]
    patient_row = next(
        r
        for r in oof
        if r["level"] == "patient"
        and r["participant_id"] == oof[0]["participant_id"]
        and r["model"] == oof[0]["model"]
    )
    assert float(patient_row["prob_pancreatic"]) == pytest.approx(np.mean(lesion), abs=1e-9)
    # sidecars: what evaluate reads
    side = read_json(out / "predictions.json")
    assert (
        side["classes"] == ["colorectal", "pancreatic"] and side["positive_class"] == "pancreatic"
    )
    assert sum(m["selected"] for m in side["models"].values()) == 1
    model_dir = out / "naive-bayes_smote"
    card = read_json(model_dir / "model.json")
    schemas.validate(card, "model_card")
    schemas.validate(card, "sidecar")
    assert card["extraction_settings_sha256"] == HASH
    assert card["split"]["test_patients"] == 6 and card["sampler"] == "smote"
    assert card["threshold"] == read_json(model_dir / "predictions.json")["threshold"]
    from metcli.io.files import sha256_file

    assert card["onnx"]["sha256"] == sha256_file(model_dir / "model.onnx")
    for path in out.rglob("*.tsv"):
        header = path.read_text().splitlines()[0].split("\t")
        schema = {
            "results.tsv": "results",
            "selected_features.tsv": "selected_features",
            "split.tsv": "split",
        }.get(path.name, "predictions")
        assert set(schemas.load_schema(schema)["required"]) <= set(header), path
        assert path.with_suffix(".json").is_file(), path
    assert (out / "dataset_description.json").is_file()
    assert not [p for p in out.rglob(".*part*")]
    # the same run again is skipped (outputs current)
    again = invoke(runner, _cli_args(features, out, labels_path, *args))
    assert "nothing redone" in again.stderr


def test_failed_rows_and_unlabelled_participants_are_left_out_with_a_warning(tmp_path, runner):
    labels, rows = make_cohort(7, n_patients=16, signal=2.0)
    labels["sub-003"] = None  # no label: listed, left out
    features = write_features(
        tmp_path / "f", rows, failed={("sub-001", 1)}, hash_under_provenance=True
    )
    labels_path = write_labels(tmp_path / "participants.tsv", labels)
    result = invoke(
        runner,
        _cli_args(
            features,
            tmp_path / "out",
            labels_path,
            "--classifiers",
            "naive-bayes",
            "--sampler",
            "none",
        ),
    )
    assert "sub-003" in result.stderr and "no primary label" in result.stderr
    assert "failed extraction status" in result.stderr
    split = {r["participant_id"] for r in read_tsv(tmp_path / "out" / "split.tsv")}
    assert "sub-003" not in split and len(split) == 15
    oof = read_tsv(tmp_path / "out" / "oof_predictions.tsv")
    assert not [r for r in oof if r["participant_id"] == "sub-001" and r["lesion_id"] == "1"]
    card = read_json(tmp_path / "out" / "naive-bayes_none" / "model.json")
    assert card["extraction_settings_sha256"] == HASH  # found under Provenance.settings


def test_overlapping_split_file_is_refused(tmp_path, runner):
    labels, rows = make_cohort(2, n_patients=12, signal=2.0)
    features = write_features(tmp_path / "f", rows)
    split = tmp_path / "split.tsv"
    split.write_text(
        "participant_id\tset\tfold\n"
        + "".join(
            f"{p}\t{'test' if i < 4 else 'train'}\tn/a\n" for i, p in enumerate(sorted(labels))
        )
        + "sub-000\ttrain\t0\n"
    )
    result = invoke(
        runner,
        _cli_args(
            features,
            tmp_path / "out",
            write_labels(tmp_path / "participants.tsv", labels),
            "--protocol",
            "holdout",
            "--split",
            split,
            "--classifiers",
            "knn",
        ),
        expect=1,
    )
    assert "sub-000 is in two sets" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out" / "results.tsv").exists()


@pytest.mark.parametrize(
    "case, expect, message",
    [
        ("no label column", 1, "missing column(s) primary"),
        ("single class", 1, "a classifier needs two classes"),
        ("too few patients", 2, "--test-patients 12"),
        ("patient weights with smote", 2, "--patient-weights works with --sampler none"),
        ("class too small for test set", 2, "needs 4 test patient(s) of class colorectal"),
    ],
)
def test_bad_input_gives_one_line_errors(tmp_path, runner, case, expect, message):
    labels, rows = make_cohort(4, n_patients=10, signal=1.0)
    features = write_features(tmp_path / "f", rows)
    args = ["--classifiers", "knn", "--sampler", "none"]
    labels_path = tmp_path / "participants.tsv"
    if case == "no label column":
        write_labels(labels_path, labels, column="origin")
    elif case == "single class":
        write_labels(labels_path, {p: "colorectal" for p in labels})
    else:
        write_labels(labels_path, labels)
    if case == "too few patients":
        args += ["--protocol", "holdout", "--test-patients", "12"]
    elif case == "patient weights with smote":
        args = ["--sampler", "smote", "--patient-weights"]
    elif case == "class too small for test set":
        args += ["--protocol", "holdout", "--test-patients", "7"]
    result = invoke(
        runner, _cli_args(features, tmp_path / "out", labels_path, *args), expect=expect
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("metcli: error")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_site_grouping_random_search_and_patient_weights(tmp_path):
    """Leave-site-out folds hold whole sites; weights and a random search run through."""
    from metcli.radiomics.train_radiomics import train_radiomics

    labels, rows = make_cohort(8, n_patients=24, signal=2.0)
    sites = {p: {"site": f"S{i % 4}"} for i, p in enumerate(sorted(labels))}
    result = train_radiomics(
        write_features(tmp_path / "f", rows),
        tmp_path / "out",
        labels=write_labels(tmp_path / "p.tsv", labels, extra=sites),
        classifiers="logistic-regression",
        samplers="none",
        patient_weights=True,
        group_by="site",
        search="random",
        search_iterations=2,
        cv_folds=4,
        cv_repeats=1,
        inner_folds=2,
        importance_trees=10,
        importance_repeats=2,
    )
    split = read_tsv(tmp_path / "out" / "split.tsv")
    fold_of_site = {}
    for row in split:
        fold_of_site.setdefault(sites[row["participant_id"]]["site"], set()).add(row["fold"])
    assert all(len(folds) == 1 for folds in fold_of_site.values()), fold_of_site
    assert len({f for folds in fold_of_site.values() for f in folds}) == 4
    card = read_json(tmp_path / "out" / "logistic-regression_none" / "model.json")
    assert card["sample_weighting"] == "class weights x 1/(lesions of the patient)"
    assert card["search"]["kind"] == "random" and card["split"]["group_by"] == "site"
    assert "C" in card["hyperparameters"]
    assert result.results[0]["cv_auc"] is not None


def test_split_file_with_folds_is_followed(tmp_path, runner):
    labels, rows = make_cohort(9, n_patients=16, signal=2.0)
    ordered = sorted(labels)
    test = ordered[:2] + [p for p in ordered if labels[p] != labels[ordered[0]]][:2]
    test = sorted(set(test))
    train = [p for p in ordered if p not in test]
    split = tmp_path / "split.tsv"
    split.write_text(
        "participant_id\tset\tfold\n"
        + "".join(f"{p}\ttest\tn/a\n" for p in test)
        + "".join(
            f"{p}\t{'val' if i % 5 == 0 else 'train'}\t{i % 3}\n" for i, p in enumerate(train)
        )
    )
    invoke(
        runner,
        _cli_args(
            write_features(tmp_path / "f", rows),
            tmp_path / "out",
            write_labels(tmp_path / "participants.tsv", labels),
            "--protocol",
            "holdout",
            "--split",
            split,
            "--classifiers",
            "naive-bayes",
            "--sampler",
            "none",
        ),
    )
    written = {r["participant_id"]: r for r in read_tsv(tmp_path / "out" / "split.tsv")}
    assert sorted(p for p, r in written.items() if r["set"] == "test") == test
    assert all(written[p]["fold"] == str(i % 3) for i, p in enumerate(train))
    card = read_json(tmp_path / "out" / "naive-bayes_none" / "model.json")
    assert card["split"]["source"] == "split file" and card["split"]["cv_repeats"] == 1


# ----------------------------------------------------------------------------- hierarchy
HIERARCHY = "groups:\n  metastasis: [colorectal, pancreatic]\n  hcc: [hcc]\n"
THREE = ("colorectal", "hcc", "pancreatic")


def make_three_classes(seed, *, n_patients=27, first=0):
    """hcc far from the metastases on feature 0 (step 1 is easy); pancreatic vs
    colorectal shifted by 2 SD on feature 1 (step 2 is harder)."""
    labels, rows = make_cohort(seed, n_patients=n_patients, signal=2.0, classes=THREE, first=first)
    shift = np.zeros(len(NAMES))
    shift[0] = 4.0
    return labels, [(p, lesion, v + shift if labels[p] == "hcc" else v) for p, lesion, v in rows]


@pytest.mark.parametrize(
    "case, expect, message",
    [
        ("label in two groups", 1, "label 'colorectal' is in two groups"),
        ("single labels only", 1, "every group holds a single label"),
        ("not the schema", 1, "does not follow the hierarchy schema"),
        ("label in no group", 1, "label 'pancreatic' of participants.tsv is in no group"),
        ("label without patients", 1, "label 'icc' of group icc in the hierarchy"),
        ("positive class", 2, "--positive-class does not apply to --hierarchy"),
    ],
)
def test_bad_hierarchy_files_give_one_line_errors(tmp_path, runner, case, expect, message):
    labels, rows = make_three_classes(1, n_patients=12)
    hierarchy = tmp_path / "hierarchy.yaml"
    hierarchy.write_text(
        {
            "label in two groups": "groups:\n  metastasis: [colorectal, pancreatic]\n"
            "  other: [colorectal, hcc]\n",
            "single labels only": "groups:\n  a: [colorectal]\n  b: [hcc]\n  c: [pancreatic]\n",
            "not the schema": "groups:\n  metastasis: [colorectal, pancreatic]\nsecond: [x]\n",
            "label in no group": "groups:\n  metastasis: [colorectal, gastric]\n  hcc: [hcc]\n",
            "label without patients": HIERARCHY + "  icc: [icc]\n",
        }.get(case, HIERARCHY)
    )
    extra = ["--positive-class", "hcc"] if case == "positive class" else []
    result = invoke(
        runner,
        _cli_args(
            write_features(tmp_path / "f", rows),
            tmp_path / "out",
            write_labels(tmp_path / "participants.tsv", labels),
            "--hierarchy",
            hierarchy,
            "--classifiers",
            "knn",
            "--sampler",
            "none",
            *extra,
        ),
        expect=expect,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("metcli: error")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out" / "results.tsv").exists()


def test_hierarchical_model_chains_its_steps_on_the_same_patient_folds(tmp_path, monkeypatch):
    """Step 1 (hcc vs metastasis) is easy, step 2 (colorectal vs pancreatic) learns from the
    metastasis patients; every fit of either step sees the training patients of one outer
    fold (the same folds for both) or all of them, never a test patient."""
    from metcli.io.files import sha256_file
    from metcli.radiomics import hierarchy as radiomics_hierarchy
    from metcli.radiomics import train_radiomics as radiomics_training
    from metcli.radiomics.models import fit_search

    calls = []

    def spy(classifier, sampler, X, y, *, patients, **kwargs):
        calls.append((classifier, frozenset(np.asarray(patients).tolist())))
        return fit_search(classifier, sampler, X, y, patients=patients, **kwargs)

    monkeypatch.setattr(radiomics_hierarchy, "fit_search", spy)
    monkeypatch.setattr(radiomics_training, "fit_search", spy)
    labels, rows = make_three_classes(2)
    hierarchy = tmp_path / "hierarchy.yaml"
    hierarchy.write_text(HIERARCHY)
    result = radiomics_training.train_radiomics(
        write_features(tmp_path / "f", rows),
        tmp_path / "out",
        labels=write_labels(tmp_path / "participants.tsv", labels),
        hierarchy=hierarchy,
        classifiers="logistic-regression,naive-bayes",
        samplers="none",
        grids=TINY_GRIDS,
        protocol="holdout",
        test_patients=6,
        **FAST,
    )
    out = tmp_path / "out"

    # -- the same patient-level split and folds for both steps, test patients never fitted
    split = read_tsv(out / "split.tsv")
    test = {r["participant_id"] for r in split if r["set"] == "test"}
    fold_of = {r["participant_id"]: r["fold"] for r in split if r["set"] == "train"}
    assert len(test) == 6 and sorted(labels[p] for p in test) == sorted(THREE * 2)
    eligible = {"step1": set(fold_of), "step2": {p for p in fold_of if labels[p] != "hcc"}}
    kinds = {"step1": [], "step2": []}
    for classifier, patients in calls:
        assert not patients & test
        step = "step2" if all(labels[p] != "hcc" for p in patients) else "step1"
        left_out = eligible[step] - patients
        assert patients <= eligible[step]
        folds = {fold_of[p] for p in left_out}
        assert len(folds) <= 1 and left_out == {p for p in eligible[step] if fold_of[p] in folds}, (
            step,
            left_out,
        )
        kinds[step].append(folds.pop() if folds else "final")
    for step in kinds:  # 3 outer folds + the final fit, for each of the two classifiers
        assert sorted(kinds[step]) == sorted(["0", "1", "2", "final"] * 2), kinds

    # -- the model folder: the chain, its steps, and cards that say how they chain
    name = "logistic-regression_none"
    card = read_json(out / name / "model.json")
    schemas.validate(card, "model_card")
    assert card["kind"] == "radiomics-hierarchy" and card["classes"] == list(THREE)
    assert card["positive_class"] is None and card["threshold"] is None
    steps = {s["name"]: s for s in card["hierarchy"]["steps"]}
    assert sorted(steps) == ["step1", "step2-metastasis"]
    assert card["hierarchy"]["groups"] == {
        "hcc": ["hcc"],
        "metastasis": ["colorectal", "pancreatic"],
    }
    for step, entry in steps.items():
        sub = read_json(out / name / entry["folder"] / "model.json")
        schemas.validate(sub, "model_card")
        assert sub["kind"] == "radiomics" and sub["classes"] == entry["classes"]
        assert entry["onnx_sha256"] == sha256_file(out / name / step / "model.onnx")
        assert [i["name"] for i in sub["inputs"]] == entry["inputs"]
        assert set(entry["inputs"]) <= {i["name"] for i in card["inputs"]}
    assert steps["step1"]["classes"] == ["hcc", "metastasis"]
    assert steps["step2-metastasis"]["classes"] == ["colorectal", "pancreatic"]
    step2 = read_json(out / name / "step2-metastasis" / "model.json")
    assert step2["split"]["train_patients"] == 14 and step2["split"]["test_patients"] == 4

    # -- chained probabilities: P(group) x P(label | group), out of fold and on the test set
    model = result.models[name]
    parts = model.steps
    oof = read_tsv(out / name / "oof_predictions.tsv")
    lesions = [r for r in oof if r["level"] == "lesion"]
    proba = np.array([[float(r[f"prob_{c}"]) for c in THREE] for r in lesions])
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert np.allclose(proba[:, 1], parts["step1"].oof[:, 0], atol=1e-9)  # P(hcc)
    metastasis = np.array([labels[r["participant_id"]] != "hcc" for r in lesions])
    within = proba[metastasis][:, [0, 2]] / proba[metastasis][:, [0, 2]].sum(axis=1, keepdims=True)
    assert np.allclose(within, parts["step2-metastasis"].oof, atol=1e-9)
    test_rows = [
        r
        for r in read_tsv(out / "predictions.tsv")
        if r["model"] == name and r["level"] == "lesion"
    ]
    assert {r["participant_id"] for r in test_rows} == test
    index = {(p, lesion): i for i, (p, lesion, _) in enumerate(rows)}
    frame = frame_of(rows).iloc[
        [index[(r["participant_id"], int(r["lesion_id"]))] for r in test_rows]
    ]
    p1 = parts["step1"].pipeline.predict_proba(frame)
    p2 = parts["step2-metastasis"].pipeline.predict_proba(frame)
    expected = np.column_stack([p1[:, 1] * p2[:, 0], p1[:, 0], p1[:, 1] * p2[:, 1]])
    got = np.array([[float(r[f"prob_{c}"]) for c in THREE] for r in test_rows])
    assert np.abs(got - expected).max() < 1e-9
    assert [r["predicted"] for r in test_rows] == [THREE[i] for i in got.argmax(axis=1)]

    # -- group-level tables: chain rows (chosen on CV) and step rows; one selection per step
    results = read_tsv(out / "results.tsv")
    assert len(results) == 2 * 3 * 2  # models x (chain, step1, step2) x levels
    assert {r["step"] for r in results} == {"chain", "step1", "step2-metastasis"}
    assert all(r["step"] == "chain" for r in results if r["selected_by_cv"] == "true")
    assert sum(r["selected_by_cv"] == "true" for r in results) == 2
    step1 = [float(r["cv_auc"]) for r in results if r["step"] == "step1"]
    assert min(step1) > 0.95, step1
    selected = read_tsv(out / "selected_features.tsv")
    assert len(selected) == 2 * len(NAMES)
    first = next(r for r in selected if r["step"] == "step1" and r["rank"] == "1")
    assert first["feature"] == NAMES[0]  # the hcc shift
    side = read_json(out / "predictions.json")
    assert side["classes"] == list(THREE) and "positive_class" not in side
    print(
        "hierarchy: step1 patient/lesion CV AUCs",
        step1,
        "chain",
        [r["cv_auc"] for r in results if r["step"] == "chain"],
    )
