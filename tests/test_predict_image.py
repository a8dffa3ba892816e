"""predict with an image model (train-cnn): training's predictions again, Grad-CAM, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import invoke

pytest.importorskip("torch")
pytest.importorskip("monai")
from metcli.io.files import read_json, read_tsv  # noqa: E402

SIZE = 64  # Grad-CAM's map is size/32 cells a side: 64 gives 2x2, 32 a single (constant) cell
TRAIN = [
    "--arch",
    "densenet121",
    "--size",
    str(SIZE),
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--val-patients",
    "1",
    "--test-patients",
    "0",
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
    from click.testing import CliRunner

    from metcli.synth.synth import synth_cohort

    root = tmp_path_factory.mktemp("cnn-predict")
    synth_cohort(root / "synth", n_colorectal=3, n_pancreatic=3, seed=5)
    raw, lesions = root / "synth" / "rawdata", root / "synth" / "derivatives" / "truth-lesions"
    invoke(
        CliRunner(),
        ["train-cnn", raw, lesions, root / "train", "--labels", raw / "participants.tsv", *TRAIN],
    )
    return {
        "root": root,
        "raw": raw,
        "lesions": lesions,
        "model": root / "train" / "model",
        "train": root / "train",
    }


@pytest.fixture(scope="module")
def predicted(cohort):
    """metcli predict --explain on every participant (once for the module)."""
    from click.testing import CliRunner

    out = cohort["root"] / "pred"
    result = invoke(
        CliRunner(),
        [
            "predict",
            cohort["model"],
            cohort["raw"],
            cohort["lesions"],
            out,
            "--device",
            "cpu",
            "--explain",
            "--threads",
            "1",
        ],
    )
    assert result.stdout.strip() == str(out / "predictions.tsv")
    return out


def _copy_participants(cohort, tmp_path, labels):
    """A raw and a lesions folder with only some participants (sub-<label>)."""
    raw, lesions = tmp_path / "raw", tmp_path / "lesions"
    for src, dst in ((cohort["raw"], raw), (cohort["lesions"], lesions)):
        dst.mkdir()
        for label in labels:
            shutil.copytree(src / f"sub-{label}", dst / f"sub-{label}")
    return raw, lesions


def test_predict_reproduces_the_validation_predictions_of_training(cohort, predicted):
    expected = read_tsv(cohort["train"] / "val_predictions.tsv")
    got = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(predicted / "predictions.tsv")
    }
    assert expected
    for row in expected:
        mine = got[(row["participant_id"], row["lesion_id"], row["level"])]
        for column in ("prob_colorectal", "prob_pancreatic"):
            assert abs(float(mine[column]) - float(row[column])) < 1e-5, (row, mine)
        assert mine["predicted"] == row["predicted"] and mine["set"] == "test"
    # every participant: one table of its own, lesions (split-lesions' kept ids) then the patient
    from metcli.lesions.maps import kept_lesion_ids

    for pid in [f"sub-00{i}" for i in range(1, 7)]:
        table = predicted / pid / "anat" / f"{pid}_ce-portal_predictions.tsv"
        rows = read_tsv(table)
        kept = kept_lesion_ids(
            cohort["lesions"] / pid / "anat" / f"{pid}_ce-portal_desc-lesions_dseg.tsv"
        )
        assert [int(r["lesion_id"]) for r in rows if r["level"] == "lesion"] == kept
        lesion = [float(r["prob_pancreatic"]) for r in rows if r["level"] == "lesion"]
        assert float(rows[-1]["prob_pancreatic"]) == pytest.approx(np.mean(lesion), abs=1e-9)
        assert rows[-1]["level"] == "patient" and rows[-1]["lesion_id"] == "n/a"
    side = read_json(predicted / "predictions.json", schema="sidecar")
    card = read_json(cohort["model"] / "model.json")
    assert side["classes"] == card["classes"] and side["threshold"] == 0.5
    assert side["ExecutionProvider"] == "CPUExecutionProvider"
    assert side["lesion_aggregate"] == "mean of slice probabilities"
    assert side["Provenance"]["models"][0]["sha256"] == card["onnx"]["sha256"]


def test_a_second_run_skips_the_finished_participants(cohort, predicted, runner):
    before = (predicted / "predictions.tsv").read_bytes()
    result = invoke(
        runner,
        [
            "predict",
            cohort["model"],
            cohort["raw"],
            cohort["lesions"],
            predicted,
            "--device",
            "cpu",
            "--explain",
            "--threads",
            "1",
        ],
    )
    assert "0 done, 6 skipped" in result.stderr
    assert (predicted / "predictions.tsv").read_bytes() == before


def test_explain_writes_a_heat_map_png_per_lesion(cohort, predicted):
    from PIL import Image

    card = read_json(cohort["model"] / "model.json")
    rows = [r for r in read_tsv(predicted / "predictions.tsv") if r["level"] == "lesion"]
    for row in rows:
        pid, lesion = row["participant_id"], row["lesion_id"]
        png = predicted / pid / "anat" / f"{pid}_ce-portal_lesion-{lesion}_gradcam.png"
        with Image.open(png) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB"
            assert picture.size == (SIZE, SIZE)
            pixels = np.asarray(picture)
        assert pixels.std() > 0
        info = read_json(png.with_suffix(".json"), schema="sidecar")
        assert info["class"] == row["predicted"] and info["lesion_id"] == int(lesion)
        assert info["target_layer"] == "class_layers.relu"
        assert info["checkpoint_sha256"] == card["checkpoint"]["sha256"]
        assert info["heat_map_max"] in (0.0, 1.0)
        assert info["TorchThreads"] == 1  # --threads reached Grad-CAM; not a setting
        assert "threads" not in json.dumps(info["Provenance"]["settings"])
        assert [o["name"] for o in info["Provenance"]["outputs"]] == [png.name]
    # the predictions' sidecar lists the pictures, so a deleted one is redone
    side = read_json(predicted / "sub-001" / "anat" / "sub-001_ce-portal_predictions.json")
    names = [o["name"] for o in side["Provenance"]["outputs"]]
    assert "sub-001_ce-portal_lesion-1_gradcam.png" in names
    assert side["Provenance"]["settings"]["explain"] is True
    assert side["TorchThreads"] == 1


def test_the_heat_map_is_spatial_and_follows_the_class(cohort):
    from metcli.cnn.gradcam import GradCam, load_network
    from metcli.prediction.image import ImageBackend, find_image_jobs
    from metcli.prediction.outputs import load_card

    card = load_card(cohort["model"])
    backend = ImageBackend(cohort["model"], card, device="cpu")
    job = find_image_jobs(cohort["raw"], cohort["lesions"])[0]
    lesion = backend.lesion_inputs(job, [1])[0]
    cam = GradCam(load_network(cohort["model"], card), "densenet121")
    maps = {c: cam(lesion.images, c) for c in (0, 1)}
    for heat in maps.values():
        assert heat.shape == (len(lesion.images), SIZE, SIZE) and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() <= 1
    spatial = [h for heat in maps.values() for h in heat if h.max() > 0]
    assert spatial and all(h.std() > 1e-3 and h.max() == pytest.approx(1.0) for h in spatial)
    assert not np.allclose(maps[0], maps[1])  # another class, another map


def test_pytorch_and_onnx_runtime_agree(cohort):
    from metcli.prediction.image import ImageBackend, find_image_jobs
    from metcli.prediction.outputs import load_card

    card = load_card(cohort["model"])
    onnx = ImageBackend(cohort["model"], card, device="cpu")
    torch_backend = ImageBackend(cohort["model"], card, device="cpu", runtime="torch")
    job = find_image_jobs(cohort["raw"], cohort["lesions"])[2]
    lesions = onnx.lesion_inputs(job, [1, 2])
    a, slices_a = onnx.lesion_probabilities(lesions)
    b, slices_b = torch_backend.lesion_probabilities(lesions)
    assert a.shape == (2, 2) and sum(len(s) for s in slices_a) > 2
    assert np.max(np.abs(a - b)) < 1e-4
    assert max(np.max(np.abs(x - y)) for x, y in zip(slices_a, slices_b)) < 1e-4


def test_missing_lesion_map_and_missing_lesion_id_fail_their_participant(cohort, tmp_path, runner):
    raw, lesions = _copy_participants(cohort, tmp_path, ["001", "002", "003"])
    for path in (lesions / "sub-001" / "anat").glob("*_desc-lesions_dseg.*"):
        path.unlink()
    table = lesions / "sub-002" / "anat" / "sub-002_ce-portal_desc-lesions_dseg.tsv"
    lines = table.read_text().splitlines()
    header = lines[0].split("\t")
    extra = lines[1].split("\t")
    extra[header.index("index")], extra[header.index("kept")] = "99", "true"
    table.write_text("\n".join(lines + ["\t".join(extra)]) + "\n")
    out = tmp_path / "out"
    result = invoke(
        runner, ["predict", cohort["model"], raw, lesions, out, "--device", "cpu"], expect=3
    )
    text = " ".join(result.stderr.split())
    assert "no lesion map for sub-001" in text
    assert "lesion id(s) 99 are not in the lesion map" in text
    assert "sub-002_ce-portal_desc-lesions_dseg.nii.gz" in text
    assert {r["participant_id"] for r in read_tsv(out / "predictions.tsv")} == {"sub-003"}
    assert not (out / "sub-002").exists()


def test_cuda_without_cuda_is_a_clear_error(cohort, tmp_path, runner):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    result = invoke(
        runner,
        [
            "predict",
            cohort["model"],
            cohort["raw"],
            cohort["lesions"],
            tmp_path / "out",
            "--device",
            "cuda",
        ],
        expect=2,
    )
    assert "--device cuda was asked for but this ONNX Runtime has no CUDA provider" in " ".join(
        result.stderr.split()
    )
    assert not (tmp_path / "out" / "predictions.tsv").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["preprocessing"].update(preprocessing_version=2),
            "preprocessing version 2; this metcli reproduces version 1 only",
        ),
        (lambda c: c["preprocessing"].update(orientation="RAS"), "taken in RAS orientation"),
        (lambda c: c["input"].update(shape=["batch", 1, SIZE, SIZE + 1]), "input shape"),
        (lambda c: c.update(lesion_aggregate="max of slice probabilities"), "aggregates slices"),
    ],
)
def test_a_card_whose_preprocessing_cannot_be_reproduced_is_refused(
    cohort, tmp_path, runner, change, message
):
    """A card that another metcli wrote consistently (its checksum over its content) but whose
    preprocessing this one cannot reproduce; edited by hand, the checksum refuses it first."""
    from metcli.io.cards import card_checksum

    model = tmp_path / "model"
    shutil.copytree(cohort["model"], model)
    card = read_json(model / "model.json")
    change(card)
    (model / "model.json").write_text(json.dumps(card))
    args = ["predict", model, cohort["raw"], cohort["lesions"], tmp_path / "out", "--device", "cpu"]
    result = invoke(runner, args, expect=1)
    text = " ".join(result.stderr.split())
    assert "does not match its card_sha256" in text and "model.json" in text
    card["card_sha256"] = card_checksum(card)
    (model / "model.json").write_text(json.dumps(card))
    result = invoke(runner, args, expect=1)
    text = " ".join(result.stderr.split())
    assert message in text and "model.json" in text
    assert not (tmp_path / "out" / "predictions.tsv").exists()


def test_the_graph_records_what_the_image_card_says(cohort):
    from metcli.io.cards import card_checksum, graph_metadata, read_graph

    card = read_json(cohort["model"] / "model.json")
    assert card["card_sha256"] == card_checksum(card)
    names, metadata = read_graph(cohort["model"] / "model.onnx")
    assert names == [card["input"]["name"]] == ["image"]
    assert metadata == graph_metadata(card)
    assert json.loads(metadata["metcli.classes"]) == ["colorectal", "pancreatic"]
    assert json.loads(metadata["metcli.kind"]) == "image"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(classes=c["classes"][::-1]), "classes (in output order)"),
        (lambda c: c["input"].update(name="ct"), "input 1 is ct in model.json, image in"),
        (lambda c: c.update(threshold=0.2), "does not match its card_sha256"),
    ],
)
def test_an_image_card_that_does_not_describe_its_model_is_refused(
    cohort, tmp_path, runner, change, message
):
    model = tmp_path / "model"
    shutil.copytree(cohort["model"], model)
    card = read_json(model / "model.json")
    change(card)
    (model / "model.json").write_text(json.dumps(card))
    result = invoke(
        runner,
        ["predict", model, cohort["raw"], cohort["lesions"], tmp_path / "out", "--device", "cpu"],
        expect=1,
    )
    assert result.stderr.count("\n") == 1
    text = " ".join(result.stderr.split())
    assert message in text and str(model / "model.json") in text
    assert not (tmp_path / "out" / "predictions.tsv").exists()


def test_a_changed_checkpoint_is_refused_by_explain(cohort, tmp_path, runner):
    model = tmp_path / "model"
    shutil.copytree(cohort["model"], model)
    with open(model / "checkpoint.pt", "ab") as handle:
        handle.write(b"\0")
    raw, lesions = _copy_participants(cohort, tmp_path, ["001"])
    result = invoke(
        runner, ["predict", model, raw, lesions, tmp_path / "out", "--explain"], expect=1
    )
    assert "checkpoint.pt does not match the sha256 in its card" in " ".join(result.stderr.split())


def test_model_inputs_are_the_lesion_slices_with_a_channel_axis():
    from conftest import make_image
    from metcli.core.errors import InputError, MaskError
    from metcli.lesions.inputs import model_inputs
    from metcli.lesions.preprocess import SliceSettings
    from metcli.lesions.slices import lesion_slices

    rng = np.random.default_rng(0)
    ct = make_image(rng.normal(40, 60, (6, 20, 24)), spacing=(0.8, 0.7, 2.0))
    ids = np.zeros((6, 20, 24), np.uint8)
    ids[1:4, 5:12, 6:15] = 1
    ids[3:5, 14:18, 2:6] = 2
    lesion_map = make_image(ids, spacing=(0.8, 0.7, 2.0))
    settings = SliceSettings(size=16, context_mm=2.0)
    card = {
        "preprocessing": settings.as_dict(),
        "input": {"name": "image", "shape": ["batch", 1, 16, 16], "channels": ["ct"]},
    }
    got = model_inputs(card, {"portal": ct}, lesion_map, [1, 2])
    expected = lesion_slices(ct, lesion_map, lesion_ids=[1, 2], settings=settings)
    assert (
        [g.slice_indices for g in got] == [e.slice_indices for e in expected] == [[1, 2, 3], [3, 4]]
    )
    for g, e in zip(got, expected):
        assert g.images.shape == (len(e.images), 1, 16, 16) and g.images.dtype == np.float32
        np.testing.assert_array_equal(g.images[:, 0], e.images)
    with pytest.raises(MaskError, match="lesion id"):
        model_inputs(card, {"portal": ct}, lesion_map, [3], lesion_map_path="map.nii.gz")
    with pytest.raises(InputError, match="one CT but 2 were given"):
        model_inputs(card, {"portal": ct, "arterial": ct}, lesion_map, [1])
    card["preprocessing"]["sharpen"] = True
    with pytest.raises(InputError, match="sharpen that this metcli does not know"):
        model_inputs(card, {"portal": ct}, lesion_map, [1])


def test_a_3d_model_with_two_phases_reproduces_its_validation_predictions(cohort, tmp_path, runner):
    """--dims 3 and --phases: predict finds one CT per phase and makes the same cubes."""
    raw = tmp_path / "raw"
    shutil.copytree(cohort["raw"], raw)
    for ct in raw.glob("sub-*/anat/*_ce-portal_ct.nii.gz"):
        shutil.copy(ct, ct.with_name(ct.name.replace("ce-portal", "ce-arterial")))
    train = tmp_path / "train"
    invoke(
        runner,
        [
            "train-cnn",
            raw,
            cohort["lesions"],
            train,
            "--labels",
            raw / "participants.tsv",
            "--dims",
            "3",
            "--phases",
            "arterial,portal",
            "--size",
            "32",
            "--epochs",
            "1",
            "--val-patients",
            "1",
            "--test-patients",
            "0",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--threads",
            "1",
            "--no-progress",
        ],
    )
    card = read_json(train / "model" / "model.json")
    assert card["dims"] == 3 and card["input"]["channels"] == ["arterial", "portal"]
    out = tmp_path / "pred"
    invoke(runner, ["predict", train / "model", raw, cohort["lesions"], out, "--device", "cpu"])
    got = {
        (r["participant_id"], r["lesion_id"], r["level"]): r
        for r in read_tsv(out / "predictions.tsv")
    }
    expected = read_tsv(train / "val_predictions.tsv")
    assert expected
    for row in expected:
        mine = got[(row["participant_id"], row["lesion_id"], row["level"])]
        assert abs(float(mine["prob_pancreatic"]) - float(row["prob_pancreatic"])) < 1e-5
    # the participant-level file keeps the lesion map's name (its phase, portal)
    assert (out / "sub-001" / "anat" / "sub-001_ce-portal_predictions.tsv").is_file()
    # a participant without one of the phases fails alone
    (raw / "sub-002" / "anat" / "sub-002_ce-arterial_ct.nii.gz").unlink()
    result = invoke(
        runner,
        ["predict", train / "model", raw, cohort["lesions"], tmp_path / "pred2", "--device", "cpu"],
        expect=3,
    )
    assert "no CT of phase(s) arterial for sub-002" in " ".join(result.stderr.split())


def test_the_lesion_entity_names_one_lesion():
    from metcli.io import bids

    name = "sub-001_ses-1_ce-portal_lesion-12_gradcam.png"
    entities = bids.parse_name(name)
    assert (entities.sub, entities.ses, entities.ce, entities.lesion, entities.suffix) == (
        "001",
        "1",
        "portal",
        "12",
        "gradcam",
    )
    assert bids.build_name(entities) == name
    assert bids.sidecar_path(bids.Path(name)).name == name.replace(".png", ".json")
    assert (
        bids.Entities(sub="001", ce="portal")
        .with_(lesion="3", suffix="gradcam", extension=".png")
        .name
        == "sub-001_ce-portal_lesion-3_gradcam.png"
    )


def test_participant_runs_then_the_group_level_give_the_full_runs_predictions(
    cohort, predicted, tmp_path, runner
):
    """Per-participant runs write only their participants' files; --level group reads them
    back into the predictions.tsv of one full run."""
    args = [cohort["model"], cohort["raw"], cohort["lesions"]]
    split = tmp_path / "split"
    first = invoke(
        runner,
        [
            "predict",
            *args,
            split,
            "--device",
            "cpu",
            "--participant-label",
            "001",
            "--participant-label",
            "sub-002",
        ],
    )
    assert first.stdout == "" and "2 done" in first.stderr
    assert sorted(p.name for p in split.glob("sub-*")) == ["sub-001", "sub-002"]
    assert not (split / "predictions.tsv").exists()
    early = invoke(runner, ["predict", *args, split, "--level", "group"], expect=3)
    assert "no current predictions of sub-003" in " ".join(early.stderr.split())
    invoke(
        runner,
        [
            "predict",
            *args,
            split,
            "--device",
            "cpu",
            "--level",
            "participant",
            *[x for i in range(3, 7) for x in ("--participant-label", f"00{i}")],
        ],
    )
    group = invoke(runner, ["predict", *args, split, "--level", "group"])
    assert group.stdout.strip() == str(split / "predictions.tsv") and "6 skipped" in group.stderr
    # the same table as the full run (which also ran --explain: the rows do not change)
    assert (split / "predictions.tsv").read_bytes() == (predicted / "predictions.tsv").read_bytes()
    side = read_json(split / "predictions.json", schema="sidecar")
    assert side["ExecutionProvider"] == "CPUExecutionProvider" and "TorchThreads" not in side
    assert not list(split.glob("sub-*/anat/*_gradcam.png"))
    # --explain at the participant level: that participant's heat maps only
    one = tmp_path / "one"
    invoke(
        runner,
        [
            "predict",
            *args,
            one,
            "--device",
            "cpu",
            "--explain",
            "--threads",
            "1",
            "--participant-label",
            "004",
        ],
    )
    pngs = sorted(p.name for p in one.glob("sub-*/anat/*_gradcam.png"))
    assert pngs and all(name.startswith("sub-004_") for name in pngs)
    assert not (one / "predictions.tsv").exists()


def test_an_unknown_participant_label_is_a_usage_error_naming_it(cohort, tmp_path, runner):
    result = invoke(
        runner,
        [
            "predict",
            cohort["model"],
            cohort["raw"],
            cohort["lesions"],
            tmp_path / "out",
            "--participant-label",
            "042",
        ],
        expect=2,
    )
    assert "--participant-label '042' is not a participant" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_limit_cpu_threads_sets_and_restores_torchs_threads():
    import torch

    from metcli.core.errors import UsageError
    from metcli.core.threads import available_cpus, limit_cpu_threads

    before = torch.get_num_threads()
    with limit_cpu_threads(before + 1) as used:
        assert used == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with limit_cpu_threads(before + 2):
            raise RuntimeError("the number comes back after an error too")
    assert torch.get_num_threads() == before
    with limit_cpu_threads(None) as used:  # None keeps the caller's number
        assert used == torch.get_num_threads() == before
    with pytest.raises(UsageError, match="--threads must be a whole number of at least 1"):
        with limit_cpu_threads(0):
            pass
    assert 1 <= available_cpus()
