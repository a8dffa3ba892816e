"""The 2024 ALMSS study's multi-branch network (issue 15, item 1): ``train-cnn --arch almss``.

Per phase a 3D ResNet on the tumour and one on the liver, age and sex through an MLP
added to each phase's features, an LSTM over the phases in clinical order. Checked here:
the network's wiring (ablations, shared weights, clinical order), the covariates'
encoding (fitted on the training patients only), the liver region, the card, ONNX parity
with two inputs, and predict reproducing train-cnn's test predictions with the
covariates taken from participants.tsv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from metcli.io.files import read_json, read_tsv

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

ARGS = [
    "--arch", "almss", "--phases", "portal,native,arterial,delayed", "--covariates", "age,sex",
    "--size", "16", "--epochs", "1", "--batch-size", "4", "--val-patients", "3",
    "--test-patients", "3", "--device", "cpu", "--threads", "1", "--seed", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """One PyTorch thread (conftest.torch_one_thread)."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A small almss cohort: four phases, three classes, three participants each."""
    from metcli.synth.almss_cohort import synth_almss_cohort

    out = tmp_path_factory.mktemp("almss-cnn") / "cohort"
    synth_almss_cohort(out, seed=5, class_counts={"hcc": 3, "icc": 3, "colorectal": 3})
    return out


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """train-cnn --arch almss on the cohort, then predict with the same covariates."""
    from click.testing import CliRunner

    from metcli.cli.main import cli

    runner = CliRunner()
    out = tmp_path_factory.mktemp("almss-model") / "out"
    raw = cohort / "rawdata"
    args = ["train-cnn", raw, cohort / "derivatives/truth-lesions", out, "--labels",
            raw / "participants.tsv", "--seg", cohort / "derivatives/truth", *ARGS]  # fmt: skip
    done = runner.invoke(cli, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    predicted = out.parent / "predicted"
    args = ["predict", out / "model", raw, cohort / "derivatives/truth-lesions",
            cohort / "derivatives/truth", predicted,
            "--participants", raw / "participants.tsv"]  # fmt: skip
    done = runner.invoke(cli, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    return out, predicted


def _net(**options):
    from metcli.cnn.networks import build_network

    channels = options.pop("phases", 4) * (2 if options.get("liver", True) else 1)
    return build_network("almss", 3, dims=3, in_channels=channels, options=options)


def test_the_network_takes_phases_regions_and_covariates():
    torch.manual_seed(0)
    net = _net(phases=4, covariates=3).eval()
    image, covariates = torch.rand(2, 8, 16, 16, 16), torch.rand(2, 3)
    assert net(image, covariates).shape == (2, 3)
    # the covariates reach the output
    assert not torch.allclose(net(image, covariates), net(image, covariates + 1))
    # the liver channels reach the output; without the liver branch they are not inputs
    changed = image.clone()
    changed[:, 4:] = 0
    assert not torch.allclose(net(image, covariates), net(changed, covariates))
    assert _net(phases=4, liver=False)(torch.rand(2, 4, 16, 16, 16)).shape == (2, 3)


def test_shared_backbones_have_one_resnet_per_region():
    separate = sum(p.numel() for p in _net(phases=4).parameters())
    shared = sum(p.numel() for p in _net(phases=4, shared=True).parameters())
    one = sum(p.numel() for p in _net(phases=4, shared=True).tumour.parameters())
    assert separate - shared == 2 * 3 * one  # three more tumour and three more liver ResNets


def test_the_lstm_reads_the_phases_in_clinical_order():
    from metcli.cnn.almss_net import clinical_order

    assert clinical_order(["portal", "native", "arterial", "delayed"]) == [1, 2, 0, 3]
    assert clinical_order(["T2w", "DWI-b800"]) == [0, 1]
    torch.manual_seed(0)
    net = _net(phases=2, liver=False, shared=True, order=[1, 0]).eval()
    image = torch.rand(1, 2, 16, 16, 16)
    sequence = net.phase_features(image)
    swapped = net.phase_features(image.flip(1))
    assert torch.allclose(sequence[:, 0], swapped[:, 1])  # step 1 is channel 1


def test_almss_refuses_2d_and_a_wrong_channel_count():
    from metcli.cnn.networks import build_network
    from metcli.core.errors import UsageError

    with pytest.raises(UsageError, match="3D network"):
        build_network("almss", 3, dims=2, in_channels=8)
    with pytest.raises(UsageError, match="takes 8 channels, not 6"):
        build_network("almss", 3, dims=3, in_channels=6, options={"phases": 4})


def test_covariates_are_scaled_by_the_training_patients_only(tmp_path):
    from metcli.cnn.clinical import fit_covariates
    from metcli.io.files import write_tsv

    rows = [
        {"participant_id": f"sub-{i}", "primary": "x", "age": age, "sex": sex}
        for i, (age, sex) in enumerate([(40, "F"), (60, "M"), (80, "M"), (100, "F")])
    ]
    path = tmp_path / "participants.tsv"
    write_tsv(rows, ["participant_id", "primary", "age", "sex"], path)
    plan = {"sub-0": "train", "sub-1": "train", "sub-2": "val", "sub-3": "test"}
    spec, values = fit_covariates(path, ["age", "sex"], plan)
    assert spec[0]["center"] == 50.0 and spec[0]["scale"] == 10.0  # of sub-0 and sub-1
    assert spec[1]["level"] == "M" and spec[1]["reference"] == "F"
    assert values["sub-3"].tolist() == [5.0, 0.0]
    assert values["sub-2"].tolist() == [3.0, 1.0]


def test_the_liver_cube_keeps_the_liver_and_blackens_the_rest(cohort):
    import SimpleITK as sitk

    from metcli.lesions.inputs import liver_inputs
    from metcli.lesions.preprocess import SliceSettings

    ct = sitk.ReadImage(str(next((cohort / "rawdata/sub-001/anat").glob("*ce-portal_ct.nii.gz"))))
    dseg = sitk.ReadImage(
        str(next((cohort / "derivatives/truth/sub-001/anat").glob("*_dseg.nii.gz")))
    )
    cube = liver_inputs([ct], dseg, SliceSettings(size=24))
    assert cube.shape == (1, 1, 24, 24, 24)
    assert 0.0 <= cube.min() and cube.max() <= 1.0
    # the liver fills its bounding cube in part: black outside, tissue inside
    assert 0.05 < float((cube > 0).mean()) < 0.95
    with pytest.raises(Exception, match="no liver or lesion voxel"):
        liver_inputs([ct], dseg * 0, SliceSettings(size=24))


def test_the_card_records_the_network_and_the_covariates(trained, cohort):
    out, _ = trained
    card = read_json(out / "model" / "model.json")
    assert card["architecture"] == "almss" and card["dims"] == 3
    assert card["input"]["shape"] == ["batch", 8, 16, 16, 16]
    assert card["input"]["regions"] == ["tumour", "liver"]
    assert card["input"]["covariates"]["columns"] == ["age", "sex"]
    assert card["network"]["order"] == [1, 2, 0, 3] and card["network"]["covariates"] == 2
    assert [c["name"] for c in card["covariates"]] == ["covariate_age", "covariate_sex_M"]
    assert card["onnx"]["max_abs_difference"] < 1e-4
    # the centre is the training patients' mean age, not the cohort's
    train = [r["participant_id"] for r in read_tsv(out / "split.tsv") if r["set"] == "train"]
    ages = {
        r["participant_id"]: float(r["age"])
        for r in read_tsv(cohort / "rawdata" / "participants.tsv")
    }
    assert card["covariates"][0]["center"] == pytest.approx(np.mean([ages[p] for p in train]))


@pytest.mark.parametrize("table", ["val_predictions.tsv", "predictions.tsv"])
def test_predict_reproduces_the_validation_and_test_predictions_with_covariates(trained, table):
    out, predicted = trained
    mine = {(r["participant_id"], r["lesion_id"], r["level"]): r for r in read_tsv(out / table)}
    again = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(predicted / "predictions.tsv")
    }
    assert mine and set(mine) <= set(again)
    classes = read_json(out / "model" / "model.json")["classes"]
    for key, row in mine.items():
        for c in classes:
            assert float(again[key][f"prob_{c}"]) == pytest.approx(
                float(row[f"prob_{c}"]), abs=2e-6
            )
        assert again[key]["predicted"] == row["predicted"]


def test_other_covariates_change_the_prediction(trained, cohort, tmp_path, runner):
    out, predicted = trained
    raw = cohort / "rawdata"
    rows = read_tsv(raw / "participants.tsv")
    for r in rows:
        r["age"] = str(float(r["age"]) + 40)
    from metcli.io.files import write_tsv

    other = tmp_path / "older.tsv"
    write_tsv(rows, list(rows[0]), other)
    lesions, seg = cohort / "derivatives/truth-lesions", cohort / "derivatives/truth"
    invoke(runner, ["predict", out / "model", raw, lesions, seg, tmp_path / "p",
                    "--participants", other, "--participant-label", "001"])  # fmt: skip
    table = next((tmp_path / "p").glob("sub-001/anat/*_predictions.tsv"))
    first = next(r for r in read_tsv(table) if r["level"] == "patient")
    before = next(
        r for r in read_tsv(predicted / "predictions.tsv")
        if r["level"] == "patient" and r["participant_id"] == "sub-001"
    )  # fmt: skip
    assert first["prob_hcc"] != before["prob_hcc"]


def test_predict_needs_the_covariates_and_the_segmentations(trained, cohort, tmp_path, runner):
    out, _ = trained
    raw, lesions = cohort / "rawdata", cohort / "derivatives/truth-lesions"
    done = invoke(runner, ["predict", out / "model", raw, lesions, tmp_path / "a"], expect=2)
    assert "RAW_DIR LESIONS_DIR SEG_DIR" in done.output
    seg = cohort / "derivatives/truth"
    done = invoke(runner, ["predict", out / "model", raw, lesions, seg, tmp_path / "b"], expect=2)
    assert "uses covariates (age, sex)" in done.output and "--participants" in done.output


def test_almss_options_are_refused_elsewhere(cohort, tmp_path, runner):
    raw = cohort / "rawdata"
    base = ["train-cnn", raw, cohort / "derivatives/truth-lesions", tmp_path / "o", "--labels",
            raw / "participants.tsv"]  # fmt: skip
    done = invoke(runner, [*base, "--arch", "resnet18", "--covariates", "age"], expect=2)
    assert "options of --arch almss" in done.output
    done = invoke(runner, [*base, "--arch", "almss"], expect=2)
    assert "--seg SEG_DIR" in done.output
    done = invoke(runner, [*base, "--arch", "almss", "--dims", "2", "--no-liver-branch"], expect=2)
    assert "3D network" in done.output


def test_phase_gradcam_equals_monais_gradcam_on_one_phase():
    """Grad-CAM by hand (every call of the tumour ResNet) against MONAI's GradCAM, on a
    one-phase network MONAI can explain (its hooked layer runs once)."""
    from monai.visualize import GradCAM

    from metcli.cnn.gradcam_phases import PhaseGradCam

    torch.manual_seed(3)
    net = _net(phases=1, liver=False).eval()
    images = np.random.default_rng(0).random((2, 1, 64, 64, 64)).astype(np.float32)
    with torch.no_grad():
        predicted = int(net(torch.from_numpy(images)).sum(0).argmax())
    mine = PhaseGradCam(net, threads=1)(images, predicted)[:, 0]
    cam = GradCAM(nn_module=net, target_layers="tumour.0.layer4", postprocessing=lambda x: x)
    theirs = cam(torch.from_numpy(images), class_idx=predicted).detach().numpy()[:, 0]
    peak = theirs.reshape(2, -1).max(axis=1)[:, None, None, None]
    theirs = np.divide(theirs, peak, out=np.zeros_like(theirs), where=peak > 0)
    assert mine.shape == (2, 64, 64, 64) and mine.max() == pytest.approx(1.0)
    assert len(np.unique(mine[0])) > 10  # a spatial map (2 cells a side), not a constant
    np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_phase_gradcam_gives_one_map_per_phase_in_channel_order():
    """A network reading channels (c0, c1, c2) in the order c2, c0, c1 and the same weights
    reading (c2, c0, c1) in their own order compute the same thing: their maps, each in its
    own channel order, are the same maps permuted."""
    from metcli.cnn.gradcam_phases import PhaseGradCam

    torch.manual_seed(4)
    net = _net(phases=3, liver=True, covariates=2, shared=True, order=[2, 0, 1]).eval()
    same = _net(phases=3, liver=True, covariates=2, shared=True).eval()
    same.load_state_dict(net.state_dict())
    images = np.random.default_rng(1).random((1, 6, 64, 64, 64)).astype(np.float32)
    permuted = images[:, [2, 0, 1, 5, 3, 4]]
    covariates = np.ones((1, 2), np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(images), torch.from_numpy(covariates))
    predicted = int(logits.argmax())
    maps = PhaseGradCam(net, threads=1)(images, predicted, covariates)
    again = PhaseGradCam(same, threads=1)(permuted, predicted, covariates)
    assert maps.shape == (1, 3, 64, 64, 64) and maps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(maps[:, [2, 0, 1]], again, atol=1e-5)


def test_explain_writes_one_panel_per_phase(trained, cohort, tmp_path, runner):
    from PIL import Image

    out, _ = trained
    raw = cohort / "rawdata"
    lesions, seg = cohort / "derivatives/truth-lesions", cohort / "derivatives/truth"
    invoke(runner, ["predict", out / "model", raw, lesions, seg, tmp_path / "x", "--explain",
                    "--participants", raw / "participants.tsv",
                    "--participant-label", "002"])  # fmt: skip
    png = next((tmp_path / "x").glob("sub-002/anat/*_gradcam.png"))
    assert Image.open(png).size == (4 * 16, 16)  # four phases side by side
    info = read_json(png.with_suffix(".json"))
    assert info["channel"] == ["portal", "native", "arterial", "delayed"]
    assert len(info["heat_map_max_per_channel"]) == 4


def test_phase_gradcam_of_a_two_step_model_hooks_step_1():
    from metcli.cnn.gradcam_phases import PhaseGradCam
    from metcli.cnn.hierarchy_net import make_network
    from metcli.io.hierarchy import Hierarchy

    hierarchy = Hierarchy({"hcc": ("hcc",), "metastasis": ("colorectal", "pancreatic")})
    torch.manual_seed(5)
    options = {"phases": 2, "liver": False, "covariates": 1}
    net = make_network(
        "almss", 3, dims=3, in_channels=2, options=options, hierarchy=hierarchy
    ).eval()
    images = np.random.default_rng(3).random((1, 2, 64, 64, 64)).astype(np.float32)
    cam = PhaseGradCam(net, threads=1, step="step1")
    maps = cam(images, 1, np.zeros((1, 1), np.float32))
    assert maps.shape == (1, 2, 64, 64, 64)
    assert cam.target_layer.startswith("steps.step1.tumour")
