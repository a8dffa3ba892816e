"""train-cnn: a tiny CPU training on a synthetic cohort, its outputs, ONNX parity, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import invoke

pytest.importorskip("torch")
pytest.importorskip("monai")
from metcli.errors import InputError, UsageError

ARGS = ["--arch", "densenet121", "--size", "32", "--epochs", "2", "--batch-size", "32",
        "--val-patients", "1", "--test-patients", "1", "--device", "cpu", "--seed", "3",
        "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One PyTorch thread: on a shared CPU, OpenMP threads waiting on each other are far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from metcli.synth import synth_cohort

    root = tmp_path_factory.mktemp("cnn")
    synth_cohort(root / "synth", n_colorectal=3, n_pancreatic=3, seed=5)
    return root


@pytest.fixture(scope="module")
def trained(cohort):
    from click.testing import CliRunner

    raw = cohort / "synth" / "rawdata"
    out = cohort / "out"
    invoke(CliRunner(), ["train-cnn", raw, cohort / "synth" / "derivatives" / "truth-lesions",
                         out, "--labels", raw / "participants.tsv", *ARGS])
    return out


def _rows(path):
    from metcli.fileio import read_tsv

    return read_tsv(path)


def test_writes_every_output_with_its_schema(trained):
    from metcli.fileio import read_json, sha256_file
    from metcli.schemas import validate, validate_rows

    model = trained / "model"
    for name in ("model.onnx", "model.json", "checkpoint.pt"):
        assert (model / name).is_file()
    for name in ("split", "training_log", "val_predictions", "predictions"):
        assert (trained / f"{name}.tsv").is_file() and (trained / f"{name}.json").is_file()
    card = read_json(model / "model.json", schema="cnn_card")
    validate(card, "cnn_card")
    assert card["classes"] == ["colorectal", "pancreatic"]
    assert card["positive_class"] == "pancreatic" and card["threshold"] == 0.5
    assert card["preprocessing"]["window_width"] == 330 and card["preprocessing"]["size"] == 32
    assert card["split"]["train_patients"] == 4 and card["split"]["test_patients"] == 1
    assert card["onnx"]["sha256"] == sha256_file(model / "model.onnx")
    assert card["checkpoint"]["sha256"] == sha256_file(model / "checkpoint.pt")
    log_rows = _rows(trained / "training_log.tsv")
    assert [r["epoch"] for r in log_rows] == ["1", "2"]
    typed = [{"epoch": int(r["epoch"]), "best": r["best"] == "true",
              **{k: None if r[k] == "n/a" else float(r[k])
                 for k in ("train_loss", "val_loss", "val_auc", "val_accuracy")}}
             for r in log_rows]
    validate_rows(typed, list(log_rows[0]), "training_log")
    assert typed[0]["best"]                    # the first epoch is always the best so far
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
    from metcli.evaluate import load_predictions
    from metcli.participants import labels_by_participant

    raw = cohort / "synth" / "rawdata"
    models = load_predictions([trained / "predictions.tsv"], labels_by_participant(raw),
                              raw / "participants.tsv")
    assert [m.name for m in models] == ["cnn-densenet121"]
    assert models[0].positive_class == "pancreatic"
    assert models[0].classes == ["colorectal", "pancreatic"]


def test_onnx_matches_the_checkpoint(trained):
    import onnxruntime as ort
    import torch

    from metcli.cnn_training import load_checkpoint

    net = load_checkpoint(trained / "model", "densenet121", 2)
    batch = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()
    sess = ort.InferenceSession(str(trained / "model" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"image": batch})[0]   # batch 3: the batch is dynamic
    assert got.shape == (3, 2)
    assert np.max(np.abs(got - expected)) < 1e-4


def test_same_seed_gives_the_same_run(trained, cohort, runner):
    raw = cohort / "synth" / "rawdata"
    again = cohort / "again"
    invoke(runner, ["train-cnn", raw, cohort / "synth" / "derivatives" / "truth-lesions", again,
                    "--labels", raw / "participants.tsv", *ARGS])
    for name in ("training_log.tsv", "split.tsv", "predictions.tsv", "val_predictions.tsv"):
        assert (again / name).read_bytes() == (trained / name).read_bytes(), name
    # A second call with the same inputs and settings skips the finished work.
    before = (again / "model" / "model.json").stat().st_mtime_ns
    result = invoke(runner, ["train-cnn", raw, cohort / "synth" / "derivatives" /
                             "truth-lesions", again, "--labels", raw / "participants.tsv", *ARGS])
    assert "nothing redone" in result.stderr
    assert (again / "model" / "model.json").stat().st_mtime_ns == before


def test_split_file_with_a_patient_in_two_sets_is_refused(cohort, runner, tmp_path):
    raw = cohort / "synth" / "rawdata"
    split = tmp_path / "split.tsv"
    split.write_text("participant_id\tset\nsub-001\ttrain\nsub-002\tval\nsub-001\ttest\n")
    result = invoke(runner, ["train-cnn", raw, cohort / "synth" / "derivatives" /
                             "truth-lesions", tmp_path / "out", "--labels",
                             raw / "participants.tsv", "--split", split, "--size", "32"],
                    expect=1)
    assert "two sets" in result.stderr
    assert not (tmp_path / "out" / "model").exists()


def test_plan_split_is_by_patient_and_stratified():
    from metcli.cnn_training import plan_split

    labels = {f"sub-{i:03d}": ("a" if i % 2 else "b") for i in range(1, 11)}
    plan = plan_split(labels, split=None, val_patients=2, test_patients=2, seed=0)
    for which in ("val", "test"):
        chosen = [p for p, s in plan.items() if s == which]
        assert sorted(labels[p] for p in chosen) == ["a", "b"]
    assert plan == plan_split(labels, split=None, val_patients=2, test_patients=2, seed=0)
    with pytest.raises(UsageError, match="no training patient"):
        plan_split(labels, split=None, val_patients=5, test_patients=5, seed=0)


def test_split_without_a_class_in_training_is_refused(tmp_path):
    from metcli.cnn_training import plan_split

    split = tmp_path / "split.tsv"
    split.write_text("participant_id\tset\nsub-001\ttrain\nsub-002\tval\nsub-003\ttest\n")
    with pytest.raises(InputError, match="no patient of class b"):
        plan_split({"sub-001": "a", "sub-002": "b", "sub-003": "b"}, split=split,
                   val_patients=1, test_patients=None, seed=0)


def test_slice_and_patient_aggregation():
    from metcli.cnn_training import Sample, decide, lesion_probabilities, prediction_rows

    slices = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    owner = np.array([0, 0, 1, 1])
    lesion = lesion_probabilities(slices, owner, 2)
    np.testing.assert_allclose(lesion, [[0.6, 0.4], [0.4, 0.6]])
    assert decide(np.array([[0.5, 0.5], [0.51, 0.49]]), ["x", "y"]) == ["y", "x"]
    assert decide(np.array([[0.2, 0.5, 0.3]]), ["x", "y", "z"]) == ["y"]
    samples = [Sample("sub-001", 1, 0, np.zeros((2, 4, 4))),
               Sample("sub-001", 2, 0, np.zeros((2, 4, 4)))]
    rows = prediction_rows(samples, lesion, ["x", "y"], "val", "m")
    assert [r["level"] for r in rows] == ["lesion", "lesion", "patient"]
    assert rows[2]["prob_y"] == pytest.approx(0.5) and rows[2]["predicted"] == "y"


def test_too_small_an_input_for_the_network_is_refused(cohort, runner, tmp_path):
    raw = cohort / "synth" / "rawdata"
    result = invoke(runner, ["train-cnn", raw, cohort / "synth" / "derivatives" /
                             "truth-lesions", tmp_path / "out", "--labels",
                             raw / "participants.tsv", "--size", "24"], expect=2)
    assert "--size 24 is too small for densenet121" in result.stderr


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    from metcli.cnn_training import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_participant_without_a_kept_lesion_is_left_out(cohort, tmp_path):
    import shutil

    from metcli.cnn_training import find_jobs

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
