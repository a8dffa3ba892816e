"""train-cnn: a tiny CPU training on a synthetic cohort, its outputs, ONNX parity, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import invoke

pytest.importorskip("torch")
pytest.importorskip("monai")
from metcli.core.errors import InputError, UsageError

ARGS = [
    "--arch",
    "densenet121",
    "--size",
    "32",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--val-patients",
    "1",
    "--test-patients",
    "1",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test of this module with one PyTorch thread (conftest.torch_one_thread)."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from metcli.synth.synth import synth_cohort

    root = tmp_path_factory.mktemp("cnn")
    synth_cohort(root / "synth", n_colorectal=3, n_pancreatic=3, seed=5)
    return root


@pytest.fixture(scope="module")
def trained(cohort):
    from click.testing import CliRunner

    raw = cohort / "synth" / "rawdata"
    out = cohort / "out"
    invoke(
        CliRunner(),
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            out,
            "--labels",
            raw / "participants.tsv",
            *ARGS,
        ],
    )
    return out


def _rows(path):
    from metcli.io.files import read_tsv

    return read_tsv(path)


def test_writes_every_output_with_its_schema(trained):
    from metcli.io.files import read_json, sha256_file
    from metcli.io.schemas import validate, validate_rows

    model = trained / "model"
    for name in ("model.onnx", "model.json", "checkpoint.pt"):
        assert (model / name).is_file()
    for name in ("split", "training_log", "val_predictions", "predictions"):
        assert (trained / f"{name}.tsv").is_file() and (trained / f"{name}.json").is_file()
    card = read_json(model / "model.json", schema="cnn_card")
    validate(card, "cnn_card")
    assert card["classes"] == ["colorectal", "pancreatic"]
    assert card["positive_class"] == "pancreatic" and card["threshold"] == 0.5
    assert card["training"]["torch_threads"] == 1  # ARGS give --threads 1
    assert card["preprocessing"]["window_width"] == 330 and card["preprocessing"]["size"] == 32
    assert card["split"]["train_patients"] == 4 and card["split"]["test_patients"] == 1
    assert card["onnx"]["sha256"] == sha256_file(model / "model.onnx")
    assert card["checkpoint"]["sha256"] == sha256_file(model / "checkpoint.pt")
    log_rows = _rows(trained / "training_log.tsv")
    assert [r["epoch"] for r in log_rows] == ["1", "2"]
    typed = [
        {
            "epoch": int(r["epoch"]),
            "best": r["best"] == "true",
            **{
                k: None if r[k] == "n/a" else float(r[k])
                for k in ("train_loss", "val_loss", "val_auc", "val_accuracy")
            },
        }
        for r in log_rows
    ]
    validate_rows(typed, list(log_rows[0]), "training_log")
    assert typed[0]["best"]  # the first epoch is always the best so far
    split = {r["participant_id"]: r["set"] for r in _rows(trained / "split.tsv")}
    assert sorted(split.values()) == ["test", "train", "train", "train", "train", "val"]
    sidecar = read_json(trained / "predictions.json")
    assert sidecar["positive_class"] == "pancreatic" and "0.5" in sidecar["threshold_source"]


def test_predictions_aggregate_lesions_and_patients(trained):
    for name, which in (("val_predictions", "val"), ("predictions", "test")):
        rows = _rows(trained / f"{name}.tsv")
        split = {r["participant_id"]: r["set"] for r in _rows(trained / "split.tsv")}
        assert {r["set"] for r in rows} == {which}
        assert all(split[r["participant_id"]] == which for r in rows)
        lesions = [r for r in rows if r["level"] == "lesion"]
        patients = [r for r in rows if r["level"] == "patient"]
        assert lesions and len(patients) == 1 and patients[0]["lesion_id"] == "n/a"
        mean = np.mean([float(r["prob_pancreatic"]) for r in lesions])
        assert float(patients[0]["prob_pancreatic"]) == pytest.approx(mean, abs=2e-6)
        for r in rows:
            p = float(r["prob_pancreatic"])
            assert p + float(r["prob_colorectal"]) == pytest.approx(1, abs=2e-6)
            assert r["predicted"] == ("pancreatic" if p >= 0.5 else "colorectal")


def test_evaluate_reads_the_predictions(trained, cohort):
    from metcli.evaluation.evaluate import load_predictions
    from metcli.io.participants import labels_by_participant

    raw = cohort / "synth" / "rawdata"
    models = load_predictions(
        [trained / "predictions.tsv"], labels_by_participant(raw), raw / "participants.tsv"
    )
    assert [m.name for m in models] == ["cnn-densenet121"]
    assert models[0].positive_class == "pancreatic"
    assert models[0].classes == ["colorectal", "pancreatic"]


def test_onnx_matches_the_checkpoint(trained):
    import onnxruntime as ort
    import torch

    from metcli.cnn.train_cnn import load_checkpoint

    net = load_checkpoint(trained / "model", "densenet121", 2)
    batch = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()
    sess = ort.InferenceSession(
        str(trained / "model" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = sess.run(["probabilities"], {"image": batch})[0]  # batch 3: the batch is dynamic
    assert got.shape == (3, 2)
    assert np.max(np.abs(got - expected)) < 1e-4


def test_same_seed_gives_the_same_run(trained, cohort, runner):
    raw = cohort / "synth" / "rawdata"
    again = cohort / "again"
    invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            again,
            "--labels",
            raw / "participants.tsv",
            *ARGS,
        ],
    )
    for name in ("training_log.tsv", "split.tsv", "predictions.tsv", "val_predictions.tsv"):
        assert (again / name).read_bytes() == (trained / name).read_bytes(), name
    # A second call with the same inputs and settings skips the finished work.
    before = (again / "model" / "model.json").stat().st_mtime_ns
    result = invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            again,
            "--labels",
            raw / "participants.tsv",
            *ARGS,
        ],
    )
    assert "nothing redone" in result.stderr
    assert (again / "model" / "model.json").stat().st_mtime_ns == before


def test_split_file_with_a_patient_in_two_sets_is_refused(cohort, runner, tmp_path):
    raw = cohort / "synth" / "rawdata"
    split = tmp_path / "split.tsv"
    split.write_text("participant_id\tset\nsub-001\ttrain\nsub-002\tval\nsub-001\ttest\n")
    result = invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            tmp_path / "out",
            "--labels",
            raw / "participants.tsv",
            "--split",
            split,
            "--size",
            "32",
        ],
        expect=1,
    )
    assert "two sets" in result.stderr
    assert not (tmp_path / "out" / "model").exists()


def test_plan_split_is_by_patient_and_stratified():
    from metcli.cnn.train_cnn import plan_split

    labels = {f"sub-{i:03d}": ("a" if i % 2 else "b") for i in range(1, 11)}
    plan = plan_split(labels, split=None, val_patients=2, test_patients=2, seed=0)
    for which in ("val", "test"):
        chosen = [p for p, s in plan.items() if s == which]
        assert sorted(labels[p] for p in chosen) == ["a", "b"]
    assert plan == plan_split(labels, split=None, val_patients=2, test_patients=2, seed=0)
    with pytest.raises(UsageError, match="no training patient"):
        plan_split(labels, split=None, val_patients=5, test_patients=5, seed=0)


def test_split_without_a_class_in_training_is_refused(tmp_path):
    from metcli.cnn.train_cnn import plan_split

    split = tmp_path / "split.tsv"
    split.write_text("participant_id\tset\nsub-001\ttrain\nsub-002\tval\nsub-003\ttest\n")
    with pytest.raises(InputError, match="no patient of class b"):
        plan_split(
            {"sub-001": "a", "sub-002": "b", "sub-003": "b"},
            split=split,
            val_patients=1,
            test_patients=None,
            seed=0,
        )


def test_a_radiomics_split_gets_validation_patients_from_its_training_set(tmp_path):
    """train-radiomics' split.tsv has train and test only: the CNN keeps its test set
    and validates on training patients, stratified, the same for a seed."""
    from metcli.cnn.train_cnn import plan_split

    labels = {f"sub-{i:03d}": ("a" if i % 2 else "b") for i in range(1, 13)}
    split = tmp_path / "split.tsv"
    split.write_text(
        "participant_id\tset\n"
        + "".join(f"{p}\t{'test' if i < 4 else 'train'}\n" for i, p in enumerate(sorted(labels)))
    )
    plan = plan_split(labels, split=split, val_patients=2, test_patients=None, seed=0)
    assert [p for p, s in sorted(plan.items()) if s == "test"] == sorted(labels)[:4]
    val = [p for p, s in plan.items() if s == "val"]
    assert sorted(labels[p] for p in val) == ["a", "b"]
    assert plan == plan_split(labels, split=split, val_patients=2, test_patients=None, seed=0)
    with pytest.raises(UsageError, match="no training patient"):
        plan_split(labels, split=split, val_patients=8, test_patients=None, seed=0)


def test_slice_and_patient_aggregation():
    from metcli.cnn.train_cnn import Sample, decide, lesion_probabilities, prediction_rows

    slices = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    owner = np.array([0, 0, 1, 1])
    lesion = lesion_probabilities(slices, owner, 2)
    np.testing.assert_allclose(lesion, [[0.6, 0.4], [0.4, 0.6]])
    assert decide(np.array([[0.5, 0.5], [0.51, 0.49]]), ["x", "y"]) == ["y", "x"]
    assert decide(np.array([[0.2, 0.5, 0.3]]), ["x", "y", "z"]) == ["y"]
    samples = [
        Sample("sub-001", 1, 0, np.zeros((2, 4, 4))),
        Sample("sub-001", 2, 0, np.zeros((2, 4, 4))),
    ]
    rows = prediction_rows(samples, lesion, ["x", "y"], "val", "m")
    assert [r["level"] for r in rows] == ["lesion", "lesion", "patient"]
    assert rows[2]["prob_y"] == pytest.approx(0.5) and rows[2]["predicted"] == "y"


def test_too_small_an_input_for_the_network_is_refused(cohort, runner, tmp_path):
    raw = cohort / "synth" / "rawdata"
    result = invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            tmp_path / "out",
            "--labels",
            raw / "participants.tsv",
            "--size",
            "24",
        ],
        expect=2,
    )
    assert "--size 24 is too small for densenet121" in result.stderr


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    from metcli.core.devices import torch_device as resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_participant_without_a_kept_lesion_is_left_out(cohort, tmp_path):
    import shutil

    from metcli.cnn.train_cnn import find_jobs

    lesions = tmp_path / "lesions"
    shutil.copytree(cohort / "synth" / "derivatives" / "truth-lesions", lesions)
    table = next((lesions / "sub-002").rglob("*_desc-lesions_dseg.tsv"))
    lines = table.read_text().splitlines()
    kept = lines[0].split("\t").index("kept")
    rows = [line.split("\t") for line in lines[1:]]
    for row in rows:
        row[kept] = "false"
    table.write_text("\n".join([lines[0]] + ["\t".join(r) for r in rows]) + "\n")
    labels = {f"sub-00{i}": "a" for i in range(1, 4)} | {"sub-099": "b"}
    excluded: dict[str, str] = {}
    jobs = find_jobs(cohort / "synth" / "rawdata", lesions, labels, excluded)
    assert [j.participant_id for j in jobs] == ["sub-001", "sub-003"]
    assert excluded == {"sub-002": "no kept lesion", "sub-099": "no lesion map"}
    assert all(j.lesion_ids and j.ct.name.endswith("_ct.nii.gz") for j in jobs)


# ----------------------------------------------------------------------------- the training loop
def _toy(
    n: int, seed: int, *, flip: bool = False, size: int = 16, dims: int = 2, channels: int = 1
):
    """n lesions of 2 inputs each (1 in 3D); class 1 is brighter (labels swapped with flip)."""
    from metcli.cnn.train_cnn import Sample

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % 2
        shape = (2 if dims == 2 else 1, channels) + (size,) * dims
        images = (rng.random(shape, dtype=np.float32) * 0.5 + 0.4 * label).astype(np.float32)
        samples.append(Sample(f"sub-{i:03d}", 1, 1 - label if flip else label, images))
    return samples


def _settings(**changes):
    from metcli.cnn.fit import FitSettings

    return FitSettings(
        **{
            "arch": "resnet18",
            "n_classes": 2,
            "epochs": 3,
            "batch_size": 4,
            "lr": 1e-3,
            "seed": 7,
            **changes,
        }
    )


def test_an_interrupted_fit_resumes_to_the_same_weights(tmp_path):
    import torch

    from metcli.cnn.fit import fit
    from metcli.cnn.resume import load_state

    train, val = _toy(8, 0), _toy(4, 1)
    whole = fit(train, val, _settings(), state_path=tmp_path / "whole.pt", fingerprint="run")

    def interrupt_after_epoch_1(name, status):
        if name == "epoch 1":
            raise KeyboardInterrupt

    state = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(
            train,
            val,
            _settings(),
            state_path=state,
            fingerprint="run",
            progress=interrupt_after_epoch_1,
        )
    saved = load_state(state, "run")
    assert saved["epoch"] == 1 and not saved["finished"] and len(saved["rows"]) == 1
    resumed = fit(train, val, _settings(), state_path=state, resume=True, fingerprint="run")
    assert resumed.rows == whole.rows and [r["epoch"] for r in resumed.rows] == [1, 2, 3]
    for name, value in whole.last_state.items():
        assert torch.equal(value, resumed.last_state[name]), name
    for name, value in whole.kept_state.items():
        assert torch.equal(value, resumed.kept_state[name]), name
    # The weights did change after epoch 1: the comparison above is not trivial.
    assert not torch.equal(saved["model"]["conv1.weight"], whole.last_state["conv1.weight"])
    with pytest.raises(UsageError, match="other inputs or settings"):
        fit(train, val, _settings(), state_path=state, resume=True, fingerprint="another")


def test_early_stopping_ends_the_run_after_patience_epochs_without_a_better_loss():
    from metcli.cnn.fit import fit

    train = _toy(8, 0)
    # Validation labels are the training labels swapped: learning makes the validation worse.
    result = fit(train, _toy(8, 0, flip=True), _settings(epochs=6, patience=1, seed=0))
    assert result.stopped_early and len(result.rows) < 6
    assert [r["best"] for r in result.rows][-1] is False
    assert result.kept_epoch == max(r["epoch"] for r in result.rows if r["best"])
    best = min(result.rows, key=lambda r: r["val_loss"])
    assert best["epoch"] == result.kept_epoch


def test_the_monitor_picks_the_best_epoch_and_counts_patience():
    from metcli.cnn.fit import Monitor

    loss = Monitor("loss", patience=2)
    assert [loss.update(e, v, None) for e, v in enumerate([0.9, 0.7, 0.8, 0.7], 1)] == [
        True,
        True,
        False,
        False,
    ]
    assert loss.best_epoch == 2 and loss.should_stop
    auc = Monitor("auc", patience=None)
    steps = [(0.9, 0.6), (0.8, 0.6), (0.5, 0.6), (0.4, None), (0.7, 0.7)]
    assert [auc.update(e, v, a) for e, (v, a) in enumerate(steps, 1)] == [
        True,
        True,
        True,
        False,
        True,
    ]  # equal AUC with a lower loss is better
    assert auc.best_epoch == 5 and not auc.should_stop
    again = Monitor("auc", patience=None)
    again.load(auc.state())
    assert again.best == auc.best and not again.update(6, 0.1, 0.69)


def test_mixed_precision_code_path_runs(tmp_path):
    """On the CPU train-cnn refuses --amp; the loop's autocast path itself runs (bfloat16)."""
    from metcli.cnn.fit import fit
    from metcli.cnn.resume import load_state

    result = fit(
        _toy(4, 0),
        _toy(2, 1),
        _settings(epochs=1, amp=True),
        state_path=tmp_path / "amp.pt",
        fingerprint="amp",
    )
    assert np.isfinite(result.rows[0]["train_loss"]) and np.isfinite(result.rows[0]["val_loss"])
    assert load_state(tmp_path / "amp.pt", "amp")["scaler"] == {}  # no scaler off CUDA


def test_folds_are_by_patient_and_stratified():
    from metcli.cnn.data import assign_folds

    labels = {f"sub-{i:03d}": ("a" if i < 6 else "b") for i in range(10)}
    folds = assign_folds(labels, 3, seed=0)
    assert sorted(folds) == sorted(labels) and set(folds.values()) == {0, 1, 2}
    for f in range(3):
        members = [p for p, g in folds.items() if g == f]
        assert {labels[p] for p in members} == {"a", "b"}
    assert folds == assign_folds(labels, 3, seed=0)
    given = {p: 5 if i % 2 else 9 for i, p in enumerate(sorted(labels))}
    assert set(assign_folds(labels, 2, seed=0, given=given).values()) == {0, 1}
    with pytest.raises(UsageError, match="2 folds"):
        assign_folds(labels, 3, seed=0, given=given)
    with pytest.raises(UsageError, match="at least 11"):
        assign_folds(labels, 11, seed=0)


# ----------------------------------------------------------------------------- the command
def test_resume_after_an_interruption_gives_the_uninterrupted_run(trained, cohort, runner):
    import torch

    from metcli.cnn.train_cnn import train_cnn

    raw = cohort / "synth" / "rawdata"
    lesions = cohort / "synth" / "derivatives" / "truth-lesions"
    out = cohort / "resumed"

    def interrupt_after_epoch_1(name, status):
        if name == "epoch 1":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cnn(
            raw,
            lesions,
            out,
            labels=raw / "participants.tsv",
            arch="densenet121",
            size=32,
            epochs=2,
            batch_size=32,
            val_patients=1,
            test_patients=1,
            device="cpu",
            seed=3,
            progress=interrupt_after_epoch_1,
        )
    assert (out / "resume" / "train.pt").is_file() and not (out / "model").exists()
    bad = invoke(
        runner,
        [
            "train-cnn",
            raw,
            lesions,
            out,
            "--labels",
            raw / "participants.tsv",
            *ARGS,
            "--lr",
            "0.001",
            "--resume",
        ],
        expect=2,
    )
    assert "resume state was written by a run with other inputs or settings" in bad.stderr
    invoke(
        runner,
        ["train-cnn", raw, lesions, out, "--labels", raw / "participants.tsv", *ARGS, "--resume"],
    )
    for name in ("training_log.tsv", "val_predictions.tsv", "predictions.tsv"):
        assert (out / name).read_bytes() == (trained / name).read_bytes(), name
    mine = torch.load(out / "model" / "checkpoint.pt", weights_only=True)
    theirs = torch.load(trained / "model" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert not (out / "resume").exists()


def test_cv_folds_choose_the_epochs_and_train_on_every_training_patient(cohort, runner):
    from metcli.io.files import read_json
    from metcli.io.schemas import validate

    raw = cohort / "synth" / "rawdata"
    out = cohort / "cv"
    result = invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            out,
            "--labels",
            raw / "participants.tsv",
            "--arch",
            "resnet18",
            "--size",
            "16",
            "--epochs",
            "2",
            "--cv-folds",
            "2",
            "--val-patients",
            "0",
            "--test-patients",
            "2",
            "--device",
            "cpu",
            "--seed",
            "1",
            "--threads",
            "1",
            "-v",
            "--no-progress",
        ],
    )
    # --threads reaches the training (logged; not a setting of the skip rule)
    assert "train-cnn: 1 PyTorch CPU thread(s)" in " ".join(result.stderr.split())
    cv_rows = _rows(out / "cv_log.tsv")
    assert sorted((r["fold"], r["epoch"]) for r in cv_rows) == [
        ("0", "1"),
        ("0", "2"),
        ("1", "1"),
        ("1", "2"),
    ]
    mean = [
        np.mean([float(r["val_loss"]) for r in cv_rows if r["epoch"] == str(e)]) for e in (1, 2)
    ]
    chosen = int(np.argmin(mean)) + 1
    card = read_json(out / "model" / "model.json")
    validate(card, "cnn_card")
    assert card["training"]["cv"]["chosen_epochs"] == chosen == card["training"]["best_epoch"]
    assert card["training"]["cv"]["mean_val_loss"] == pytest.approx(mean, abs=2e-6)
    log_rows = _rows(out / "training_log.tsv")
    assert [r["epoch"] for r in log_rows] == [str(e) for e in range(1, chosen + 1)]
    assert [r["best"] for r in log_rows][-1] == "true" and log_rows[-1]["val_loss"] == "n/a"
    split = _rows(out / "split.tsv")
    train = [r for r in split if r["set"] == "train"]
    assert len(train) == 4 and {r["fold"] for r in train} == {"0", "1"}
    assert all(r["fold"] == "n/a" for r in split if r["set"] == "test")
    assert card["split"]["train_patients"] == 4 and card["split"]["val_patients"] == 0
    assert not (out / "val_predictions.tsv").exists() and (out / "predictions.tsv").is_file()


def test_3d_multiphase_model_exports_and_matches_its_checkpoint(cohort, runner, tmp_path):
    import shutil

    import onnxruntime as ort
    import SimpleITK as sitk
    import torch

    from metcli.cnn.train_cnn import load_checkpoint
    from metcli.io.bids import find_files
    from metcli.io.files import read_json
    from metcli.io.schemas import validate

    raw = tmp_path / "rawdata"
    shutil.copytree(cohort / "synth" / "rawdata", raw)
    pancreatic = [
        r["participant_id"] for r in _rows(raw / "participants.tsv") if r["primary"] == "pancreatic"
    ]
    for acq in find_files(raw, suffix="ct"):
        if acq.entities.participant_id == pancreatic[-1]:
            continue  # no arterial phase: left out with a warning
        portal = sitk.ReadImage(str(acq.path))
        arterial = sitk.Flip(portal + 30, [True, False, False])  # a flipped copy of the grid
        name = acq.entities.with_(ce="arterial").name
        sitk.WriteImage(arterial, str(acq.path.with_name(name)))
    out = tmp_path / "out"
    result = invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            out,
            "--labels",
            raw / "participants.tsv",
            "--dims",
            "3",
            "--phases",
            "portal,arterial",
            "--arch",
            "resnet18",
            "--size",
            "16",
            "--epochs",
            "1",
            "--val-patients",
            "1",
            "--test-patients",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
        ],
    )
    assert f"{pancreatic[-1]} (no CT of phase(s) arterial for {pancreatic[-1]})" in result.stderr
    card = read_json(out / "model" / "model.json")
    validate(card, "cnn_card")
    assert card["dims"] == 3 and card["phases"] == ["portal", "arterial"]
    assert card["input"]["shape"] == ["batch", 2, 16, 16, 16]
    assert card["input"]["channels"] == ["portal", "arterial"]
    assert card["name"] == "cnn-resnet18-3d" and card["split"]["train_patients"] == 3
    net = load_checkpoint(out / "model", "resnet18", 2)  # 3D, 2 channels: from the file
    batch = np.random.default_rng(0).random((3, 2, 16, 16, 16), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()
    sess = ort.InferenceSession(
        str(out / "model" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = sess.run(["probabilities"], {"image": batch})[0]
    assert got.shape == (3, 2) and np.max(np.abs(got - expected)) < 1e-4
    rows = _rows(out / "val_predictions.tsv")
    assert {r["level"] for r in rows} == {"lesion", "patient"}


def test_amp_on_the_cpu_and_other_bad_combinations_are_usage_errors(cohort, runner, tmp_path):
    raw = cohort / "synth" / "rawdata"
    lesions = cohort / "synth" / "derivatives" / "truth-lesions"
    base = [
        "train-cnn",
        raw,
        lesions,
        tmp_path / "out",
        "--labels",
        raw / "participants.tsv",
        "--size",
        "32",
    ]
    for extra, message in (
        (["--device", "cpu", "--amp"], "--amp (automatic mixed precision) needs a CUDA GPU"),
        (["--cv-folds", "2", "--patience", "2"], "alternatives"),
        (["--val-patients", "0"], "--val-patients must be at least 1"),
        (["--phases", "portal,portal"], "a phase twice"),
    ):
        result = invoke(runner, base + extra, expect=2)
        assert message in result.stderr, extra
    import torch

    if not torch.cuda.is_available():
        result = invoke(runner, base + ["--device", "cuda"], expect=2)
        assert "no CUDA GPU" in result.stderr
    assert not (tmp_path / "out" / "model").exists()


def test_monitor_auc_needs_validation_lesions_of_every_class(cohort, runner, tmp_path):
    raw = cohort / "synth" / "rawdata"
    result = invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort / "synth" / "derivatives" / "truth-lesions",
            tmp_path / "out",
            "--labels",
            raw / "participants.tsv",
            *ARGS,
            "--monitor",
            "auc",
        ],
        expect=1,
    )
    assert "--monitor auc needs validation lesions of every class" in result.stderr
