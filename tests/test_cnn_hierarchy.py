"""Hierarchical image models (issue 15, item 2): ``train-cnn --hierarchy FILE``.

Step 1 learns HCC / ICC / metastasis, step 2 the origin among the metastases, from one
split; one model folder whose ONNX graph gives the chained probabilities
P(label) = P(group) x P(label | group), which predict reproduces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from metcli.io.files import read_json, read_tsv

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

HIERARCHY = """groups:
  hcc: [hcc]
  icc: [icc]
  metastasis: [colorectal, pancreatic]
"""
ARGS = [
    "--arch", "resnet18", "--dims", "3", "--size", "16", "--epochs", "1", "--batch-size", "4",
    "--val-patients", "8", "--test-patients", "4", "--device", "cpu", "--threads", "1",
    "--seed", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """One PyTorch thread (conftest.torch_one_thread)."""


@pytest.fixture(scope="module")
def hierarchy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hierarchy") / "hierarchy.yaml"
    path.write_text(HIERARCHY)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hierarchy_file):
    """An almss cohort of four labels, a two-step model on it, and predict's output."""
    from click.testing import CliRunner

    from metcli.cli.main import cli
    from metcli.synth.almss_cohort import synth_almss_cohort

    root = tmp_path_factory.mktemp("cnn-hierarchy")
    cohort = synth_almss_cohort(
        root / "cohort",
        seed=4,
        class_counts={"hcc": 4, "icc": 4, "colorectal": 4, "pancreatic": 4},
    )
    raw, lesions = cohort / "rawdata", cohort / "derivatives/truth-lesions"
    runner = CliRunner()
    args = ["train-cnn", raw, lesions, root / "out", "--labels", raw / "participants.tsv",
            "--hierarchy", hierarchy_file, *ARGS]  # fmt: skip
    done = runner.invoke(cli, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, [str(a) for a in ["predict", root / "out/model", raw, lesions,
                                                root / "predicted"]])  # fmt: skip
    assert done.exit_code == 0, done.output
    return cohort, root / "out", root / "predicted"


def test_the_chain_is_p_group_times_p_label_in_group(hierarchy_file):
    from metcli.cnn.hierarchy_net import chained, make_network
    from metcli.io.hierarchy import read_hierarchy

    hierarchy = read_hierarchy(hierarchy_file)
    torch.manual_seed(0)
    net = make_network("resnet18", 4, dims=3, in_channels=1, hierarchy=hierarchy).eval()
    images = torch.rand(3, 1, 16, 16, 16)
    with torch.no_grad():
        mine = torch.softmax(net(images), dim=1).numpy()
        steps = {n: torch.softmax(s(images), dim=1).numpy() for n, s in net.steps.items()}
    assert steps["step1"].shape == (3, 3) and steps["step2-metastasis"].shape == (3, 2)
    np.testing.assert_allclose(mine, chained(steps, hierarchy), atol=1e-6)
    np.testing.assert_allclose(mine.sum(axis=1), 1.0, atol=1e-6)
    # the metastases' labels share step 1's probability of their group
    np.testing.assert_allclose(mine[:, 0] + mine[:, 3], steps["step1"][:, 2], atol=1e-6)


def test_step_2_learns_from_its_group_only(hierarchy_file):
    from metcli.cnn.data import Sample
    from metcli.cnn.hierarchy_net import step_samples
    from metcli.io.hierarchy import read_hierarchy

    hierarchy = read_hierarchy(hierarchy_file)
    classes = hierarchy.labels  # colorectal, hcc, icc, pancreatic
    samples = [Sample(f"sub-{i}", 1, i, np.zeros((1, 1, 2, 2, 2))) for i in range(4)]
    first = step_samples(samples, hierarchy, classes, "step1")
    assert [s.label for s in first] == [2, 0, 1, 2]  # metastasis, hcc, icc, metastasis
    second = step_samples(samples, hierarchy, classes, "step2-metastasis")
    assert [(s.participant_id, s.label) for s in second] == [("sub-0", 0), ("sub-3", 1)]


def test_one_model_folder_with_both_steps_and_one_split(trained):
    _, out, _ = trained
    card = read_json(out / "model" / "model.json")
    assert card["classes"] == ["colorectal", "hcc", "icc", "pancreatic"]
    assert set(card["hierarchy"]["steps"]) == {"step1", "step2-metastasis"}
    assert card["hierarchy"]["steps"]["step1"]["classes"] == ["hcc", "icc", "metastasis"]
    assert card["onnx"]["max_abs_difference"] < 1e-4
    sets = {r["set"] for r in read_tsv(out / "split.tsv")}
    assert sets == {"train", "val", "test"}
    rows = read_tsv(out / "predictions.tsv")
    for r in rows:
        total = sum(float(r[f"prob_{c}"]) for c in card["classes"])
        assert total == pytest.approx(1.0, abs=1e-5)


def test_predict_reproduces_the_chained_test_predictions(trained):
    _, out, predicted = trained
    classes = read_json(out / "model" / "model.json")["classes"]
    mine = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(out / "predictions.tsv")
    }
    again = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(predicted / "predictions.tsv")
    }
    assert mine and set(mine) <= set(again)
    for key, row in mine.items():
        for c in classes:
            assert float(again[key][f"prob_{c}"]) == pytest.approx(
                float(row[f"prob_{c}"]), abs=2e-6
            )


def test_a_label_outside_the_hierarchy_is_refused(trained, tmp_path, runner):
    cohort, _, _ = trained
    raw = cohort / "rawdata"
    partial = tmp_path / "h.yaml"
    partial.write_text("groups:\n  hcc: [hcc]\n  metastasis: [colorectal, pancreatic]\n")
    done = invoke(
        runner,
        ["train-cnn", raw, cohort / "derivatives/truth-lesions", tmp_path / "o", "--labels",
         raw / "participants.tsv", "--hierarchy", partial, *ARGS],
        expect=1,
    )  # fmt: skip
    assert "'icc'" in done.output and "no group" in done.output


def test_explain_maps_step_1s_features_for_the_chained_class(trained, tmp_path, runner):
    cohort, out, _ = trained
    raw, lesions = cohort / "rawdata", cohort / "derivatives/truth-lesions"
    invoke(runner, ["predict", out / "model", raw, lesions, tmp_path / "x", "--explain",
                    "--participant-label", "001"])  # fmt: skip
    png = next((tmp_path / "x").glob("sub-001/anat/*_gradcam.png"))
    info = read_json(png.with_suffix(".json"))
    assert info["target_layer"] == "steps.step1.layer4"
    assert info["class"] in read_json(out / "model" / "model.json")["classes"]
