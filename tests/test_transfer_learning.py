"""Transfer learning and the training recipe (issue 15 item 4, the non-contrast MRI study).

The must-show: the MRI scenario with Inception-ResNet-V2 initialised from a local weights
file runs end to end at a CPU-sized setting (``synth --modality mr`` -> ``train-cnn --arch
inception_resnet_v2 --channels T2w,DWI-b800 --pretrained FILE --size 75`` (the study uses
299) -> ``predict`` -> ``evaluate``), and the weights file's sha256 is checked. The
weights file is made here: a seeded timm Inception-ResNet-V2 (ImageNet's shape: 3 input
channels, 1000 classes) saved with safetensors, a real file of the architecture that is
not ImageNet's. Unit tests check the first convolution's adaptation, the learning-rate
schedule against its formula, the flips and rotations, and the ``any`` patient rule.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import invoke
from metcli.core.errors import UsageError, WeightsError
from metcli.io.files import read_json, read_tsv

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("timm")

#: The chain (train-cnn, predict, evaluate with a 55M-parameter network) takes about 60 s
#: on 2 cores.
pytestmark = pytest.mark.slow

LESION_COUNTS = "cyst=1,haemangioma=1,fnh=1,hcc=1,metastasis=1"
CNN = ["--arch", "inception_resnet_v2", "--channels", "T2w,DWI-b800", "--size", "75"]
CNN += ["--epochs", "1", "--batch-size", "4", "--lr", "1e-5", "--optimizer", "sgd"]
CNN += ["--warmup-epochs", "1", "--augment", "flip-rotate", "--rotate", "40"]
CNN += ["--val-patients", "3", "--test-patients", "0", "--device", "cpu", "--threads", "1"]
CNN += ["--seed", "3", "--no-progress", "-q"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """One PyTorch thread (conftest.torch_one_thread)."""


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """A seeded Inception-ResNet-V2 state dict with ImageNet's shape, as safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "irv2-seeded.safetensors"
    torch.manual_seed(11)
    net = timm.create_model("inception_resnet_v2", pretrained=False, num_classes=1000)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return {"path": path, "sha256": _sha(path), "conv": state["conv2d_1a.conv.weight"].clone()}


# ----------------------------------------------------------------------------- weights
def test_loading_adapts_the_first_convolution_and_renews_the_classifier(weights):
    import torch

    from metcli.cnn.networks import build_network
    from metcli.cnn.pretrained import load_pretrained, resolve_pretrained

    pretrained = resolve_pretrained(weights["path"])
    assert pretrained.sha256 == weights["sha256"] and pretrained.source == "file"
    rgb = weights["conv"]
    for channels, expected in ((2, rgb[:, :2] * 1.5), (1, rgb.sum(dim=1, keepdim=True))):
        torch.manual_seed(0)
        net = build_network("inception_resnet_v2", 3, dims=2, in_channels=channels)
        head = net.classif.weight.detach().clone()
        done = load_pretrained(net, pretrained)
        assert done["first_conv_adapted"] and done["classifier_dropped"]
        assert torch.allclose(net.conv2d_1a.conv.weight, expected, atol=1e-6)
        assert torch.equal(net.classif.weight, head)  # its own initialisation, 3 classes
        assert tuple(net.classif.weight.shape) == (3, 1536)
    from safetensors.torch import load_file

    deep = load_file(str(weights["path"]))["conv2d_7b.conv.weight"]
    assert torch.equal(net.conv2d_7b.conv.weight, deep)


def test_weights_of_another_network_or_a_changed_file_are_refused(weights, tmp_path):
    import torch

    from metcli.cnn.networks import build_network
    from metcli.cnn.pretrained import PretrainedFile, load_pretrained, resolve_pretrained

    other = tmp_path / "resnet.pt"
    torch.save(build_network("resnet18", 2, dims=2, in_channels=3).state_dict(), other)
    net = build_network("inception_resnet_v2", 2, dims=2, in_channels=2)
    with pytest.raises(WeightsError, match="do not fit the network") as err:
        load_pretrained(net, resolve_pretrained(other))
    assert "\n" not in str(err.value)
    stale = PretrainedFile(weights["path"], "0" * 64, "irv2", "file")
    with pytest.raises(WeightsError, match="changed since it was checked"):
        load_pretrained(net, stale)
    with pytest.raises(UsageError, match="needs a timm architecture"):
        load_pretrained(build_network("resnet18", 2, dims=2, in_channels=2), stale)
    with pytest.raises(WeightsError, match="not found"):
        resolve_pretrained(tmp_path / "missing.safetensors")


def _tiny_manifest(tmp_path, source, sha: str) -> tuple:
    entry = {
        "name": "tiny-weights",
        "description": "a tiny state dict",
        "format": "timm-weights",
        "source": "download",
        "path": "model.safetensors",
        "url": source.as_uri(),
        "sha256": None,
        "publisher_sha256": sha,
        "verified": False,
        "note": "test",
        "licence": None,
        "nnunet": dict.fromkeys(
            ["dataset_id", "dataset_name", "configuration", "folds", "trainer"]
        ),
        "labels": None,
        "label_map": {},
        "input": {"modality": "RGB", "units": "any", "channels": 3},
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"manifest_version": 1, "models": [entry]}))
    return path, entry


def test_a_manifest_name_is_fetched_once_and_rechecked_by_sha256(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from metcli.cnn.pretrained import resolve_pretrained
    from metcli.io.weights import fetch

    monkeypatch.setenv("METCLI_HOME", str(tmp_path / "home"))
    source = tmp_path / "tiny.safetensors"
    save_file({"w": torch.arange(6.0)}, str(source))
    good = _sha(source)
    manifest, _ = _tiny_manifest(tmp_path, source, good)
    with pytest.raises(WeightsError, match="not installed") as err:
        resolve_pretrained("tiny-weights", manifest=manifest)
    assert "metcli weights fetch tiny-weights" in err.value.fix
    installed = fetch("tiny-weights", manifest=manifest)
    assert installed.name == "model.safetensors" and _sha(installed) == good
    resolved = resolve_pretrained("tiny-weights", manifest=manifest)
    assert (resolved.sha256, resolved.source) == (good, "manifest")
    installed.write_bytes(installed.read_bytes() + b" ")  # the cached file changes
    with pytest.raises(WeightsError, match="failed their sha256 check") as err:
        resolve_pretrained("tiny-weights", manifest=manifest)
    assert "\n" not in str(err.value)
    wrong, _ = _tiny_manifest(tmp_path / "..", source, "f" * 64)
    with pytest.raises(WeightsError, match="refused and removed"):
        fetch("tiny-weights", manifest=wrong, overwrite=True)


def test_the_shipped_entry_refuses_a_cached_file_that_is_not_the_publishers(tmp_path, runner):
    """The manifest's inception-resnet-v2-tf-in1k carries the publisher's sha256: a file in
    the cache that does not match it is refused in one line (exit 1), before training;
    no download is attempted."""
    from metcli.io.weights import get_entry, metcli_home

    entry = get_entry("inception-resnet-v2-tf-in1k")
    assert entry.pretrained and entry["sha256"] is None and not entry["verified"]
    assert len(entry["publisher_sha256"]) == 64 and "huggingface.co/timm" in entry["url"]
    args = ["train-cnn", tmp_path, tmp_path, tmp_path / "out", "--labels", tmp_path / "p.tsv"]
    args += ["--arch", "inception_resnet_v2", "--pretrained", "inception-resnet-v2-tf-in1k"]
    (tmp_path / "p.tsv").write_text("participant_id\tprimary\nsub-1\ta\n")
    result = invoke(runner, args, expect=1)
    assert "not installed" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    folder = metcli_home() / "models" / entry.name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not the publisher's file")
    record = {"archive_sha256": hashlib.sha256(b"not the publisher's file").hexdigest()}
    (folder / ".metcli-install.json").write_text(json.dumps(record))
    result = invoke(runner, args, expect=1)
    assert "failed their sha256 check" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- recipe
@pytest.mark.parametrize(
    "warmup, step, gamma", [(0, None, 0.1), (3, None, 0.1), (2, 3, 0.5), (0, 2, 0.1)]
)
def test_the_learning_rate_of_each_epoch_follows_the_formula(warmup, step, gamma):
    import torch

    from metcli.cnn.optim import OptimSettings, make_optimiser, make_schedule

    settings = OptimSettings(
        optimizer="sgd", weight_decay=1e-4, warmup_epochs=warmup, lr_step=step, lr_gamma=gamma
    )
    net = torch.nn.Linear(2, 2)
    optimiser = make_optimiser(net, 0.01, settings)
    assert isinstance(optimiser, torch.optim.SGD)
    assert optimiser.param_groups[0]["momentum"] == 0.9
    assert optimiser.param_groups[0]["weight_decay"] == 1e-4
    schedule = make_schedule(optimiser, settings)
    assert (schedule is None) == (warmup == 0 and step is None)
    for epoch in range(1, 11):
        ramp = min(1.0, epoch / (warmup + 1)) if warmup else 1.0
        decay = gamma ** ((epoch - 1) // step) if step else 1.0
        assert optimiser.param_groups[0]["lr"] == pytest.approx(0.01 * ramp * decay, rel=1e-9)
        optimiser.step()
        if schedule is not None:
            schedule.step()


def test_the_schedule_resumes_with_the_optimisers_state():
    import torch

    from metcli.cnn.fit import FitSettings, augmenter
    from metcli.cnn.optim import OptimSettings, Recipe, start_recipe

    settings = FitSettings(
        arch="resnet18", n_classes=2, epochs=9, batch_size=2, lr=0.1,
        recipe=Recipe(OptimSettings(optimizer="sgd", warmup_epochs=2, lr_step=2, lr_gamma=0.5)),
    )  # fmt: skip
    first = torch.nn.Linear(2, 2)
    optimiser, schedule, _ = start_recipe(first, settings, 2, 8, augmenter)
    for _ in range(4):
        optimiser.step()
        schedule.step()
    saved = optimiser.state_dict()
    again, schedule_again, _ = start_recipe(torch.nn.Linear(2, 2), settings, 2, 8, augmenter)
    again.load_state_dict(saved)
    for _ in range(3):
        optimiser.step(), schedule.step()
        again.step(), schedule_again.step()
        assert again.param_groups[0]["lr"] == optimiser.param_groups[0]["lr"]
    assert optimiser.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def _bar() -> np.ndarray:
    """A channel-first 2D image [2, 33, 33]: a horizontal bar above the centre, brighter at
    one end (no flip leaves it as it is)."""
    image = np.zeros((2, 33, 33), np.float32)
    image[:, 12:15, 4:29] = np.linspace(0.3, 1.0, 25)
    return image


def _orientation(image: np.ndarray) -> float:
    """The angle (degrees) of the bright pixels' principal axis from the columns' axis."""
    rows, cols = np.nonzero(image[0] > 0.2)
    cov = np.cov(np.stack([cols - cols.mean(), rows - rows.mean()]))
    vector = np.linalg.eigh(cov)[1][:, -1]
    angle = np.degrees(np.arctan2(vector[1], vector[0]))
    return (angle + 90) % 180 - 90


def test_flips_and_rotations_are_applied_and_repeat_with_the_seed():
    from metcli.cnn.augment import AugmentSettings, build_augmenter
    from metcli.cnn.fit import augmenter

    image = _bar()
    flips_only = build_augmenter(AugmentSettings("flip-rotate", rotate=0), 5, 2, 33, augmenter)
    seen = set()
    for _ in range(40):
        out = flips_only(image)
        match = [
            name
            for name, ref in (
                ("none", image),
                ("horizontal", image[:, :, ::-1]),
                ("vertical", image[:, ::-1, :]),
                ("both", image[:, ::-1, ::-1]),
            )
            if np.array_equal(out, ref)
        ]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {"none", "horizontal", "vertical", "both"}
    rotating = AugmentSettings("flip-rotate", flips=(), rotate=40)
    angles = [
        _orientation(build_augmenter(rotating, s, 2, 33, augmenter)(image)) for s in range(30)
    ]
    assert max(abs(a) for a in angles) <= 42 and max(abs(a) for a in angles) > 20
    study = AugmentSettings("flip-rotate")
    first = [build_augmenter(study, 7, 2, 33, augmenter)(image) for _ in range(2)]
    runs = [build_augmenter(study, 7, 2, 33, augmenter) for _ in range(2)]
    assert all(np.array_equal(runs[0](image), runs[1](image)) for _ in range(5))
    assert np.array_equal(first[0], first[1])
    other = build_augmenter(study, 8, 2, 33, augmenter)
    assert not all(np.array_equal(other(image), runs[0](image)) for _ in range(5))
    assert np.array_equal(
        build_augmenter(AugmentSettings("none"), 1, 2, 33, augmenter)(image), image
    )
    with pytest.raises(UsageError, match="--flip and --rotate belong"):
        AugmentSettings("affine", rotate=40)


def test_any_lesion_called_malignant_makes_the_patient_malignant():
    from metcli.io.predictions import aggregate_patients, prediction_rows

    classes = ["benign", "hcc", "metastasis"]
    proba = np.array(
        [
            [0.8, 0.1, 0.1],  # p1: benign
            [0.3, 0.6, 0.1],  # p1: hcc (called malignant)
            [0.34, 0.33, 0.33],  # p2: benign, though its malignant sum is 0.66
            [0.7, 0.2, 0.1],  # p2: benign
        ]
    )
    people = ["p1", "p1", "p2", "p2"]
    order, patient = aggregate_patients(people, proba, classes, aggregate="any:hcc,metastasis")
    assert order == ["p1", "p2"]
    assert patient[0].tolist() == [0.3, 0.6, 0.1] and patient[1].tolist() == [0.34, 0.33, 0.33]
    rows = prediction_rows(
        people, [1, 2, 1, 2], proba, classes, model="m", set_name="test",
        positive=None, threshold=None, aggregate="any:hcc,metastasis",
    )  # fmt: skip
    called = {r["participant_id"]: r["predicted"] for r in rows if r["level"] == "patient"}
    assert called == {"p1": "hcc", "p2": "benign"}
    _, mean = aggregate_patients(people, proba, classes, aggregate="mean")
    assert mean[0].tolist() == pytest.approx([0.55, 0.35, 0.1])  # the mean rule would say benign
    for bad in ("any", "mean:hcc", "any:hcc,lung"):
        with pytest.raises(UsageError):
            aggregate_patients(people, proba, classes, aggregate=bad)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def chain(tmp_path_factory, weights) -> dict:
    root = tmp_path_factory.mktemp("tl")
    runner = CliRunner()
    synth = root / "synth"
    invoke(
        runner,
        ["synth", synth, "--modality", "mr", "--subjects", "6", "--lesion-counts", LESION_COUNTS,
         "--seed", "4", "-q"],
    )  # fmt: skip
    raw, lesions, out = synth / "rawdata", synth / "derivatives" / "truth-lesions", root / "cnn"
    args = ["train-cnn", raw, lesions, out, "--labels", raw / "participants.tsv", *CNN]
    invoke(runner, [*args, "--pretrained", weights["path"]])
    return {"root": root, "raw": raw, "lesions": lesions, "out": out, "args": args}


def test_dims_3_is_refused_for_the_2d_network(chain, runner):
    result = invoke(runner, [*chain["args"], "--dims", "3", "--overwrite"], expect=2)
    assert "inception_resnet_v2 is a 2D network" in result.stderr


def test_the_card_records_the_weights_file_and_the_recipe(chain, weights):
    from metcli.io.schemas import validate

    card = read_json(chain["out"] / "model" / "model.json")
    validate(card, "cnn_card")
    settings = card["Provenance"]["settings"]
    assert settings["pretrained"] == {
        "source": "file",
        "name": weights["path"].name,
        "file": weights["path"].name,
        "sha256": weights["sha256"],
    }
    assert settings["optimiser"]["optimizer"] == "sgd" and settings["optimiser"]["momentum"] == 0.9
    assert settings["optimiser"]["warmup_epochs"] == 1
    augmentation = card["training"]["augmentation"]
    assert augmentation["preset"] == "flip-rotate" and augmentation["rotate_degrees"] == 40
    assert augmentation["flips"] == ["horizontal", "vertical"]
    assert card["preprocessing"]["resize"] == "bicubic" and card["input"]["shape"][1:] == [
        2,
        75,
        75,
    ]
    assert card["onnx"]["max_abs_difference"] <= 1e-4  # train-cnn's ONNX parity check


def test_the_network_started_from_the_file(chain, weights):
    """conv2d_1a after one epoch at lr 1e-5 is the file's, adapted to two channels (R and G
    kernels times 1.5), up to the training step; a random start is far from it."""
    import torch

    state = torch.load(chain["out"] / "model" / "checkpoint.pt", weights_only=True)
    expected = weights["conv"][:, :2] * 1.5
    assert float((state["conv2d_1a.conv.weight"] - expected).abs().max()) < 5e-3
    from metcli.cnn.networks import build_network

    torch.manual_seed(3)  # the run's seed: what the network would start from without the file
    scratch = build_network("inception_resnet_v2", 3, dims=2, in_channels=2)
    assert float((scratch.conv2d_1a.conv.weight.detach() - expected).abs().max()) > 0.1


def test_rerunning_skips_and_predict_then_evaluate_run(chain, weights, runner):
    card = chain["out"] / "model" / "model.json"
    before = card.stat().st_mtime_ns
    invoke(runner, chain["args"] + ["--pretrained", weights["path"]])  # same file: skipped
    assert card.stat().st_mtime_ns == before
    result = invoke(runner, chain["args"] + ["--pretrained", chain["out"].parent / "missing"], 1)
    assert "not found" in result.stderr
    predictions = chain["root"] / "predict"
    invoke(
        runner,
        ["predict", chain["out"] / "model", chain["raw"], chain["lesions"], predictions,
         "--device", "cpu", "--no-progress", "-q"],
    )  # fmt: skip
    got = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(predictions / "predictions.tsv")
    }
    for row in read_tsv(chain["out"] / "val_predictions.tsv"):  # predict resizes bicubic too
        mine = got[(row["participant_id"], row["lesion_id"], row["level"])]
        for column in ("prob_benign", "prob_hcc", "prob_metastasis"):
            assert abs(float(mine[column]) - float(row[column])) < 1e-5, (row, mine)
    report = chain["root"] / "evaluate"
    invoke(
        runner,
        ["evaluate", predictions, report, "--labels", chain["raw"] / "participants.tsv",
         "--no-progress", "-q"],
    )  # fmt: skip
    assert (report / "metrics.tsv").is_file()
