"""Model cards and their graphs check each other: predict refuses a model.json that no
longer describes its model.onnx (classes swapped, an input edited, the checksum edited),
accepts a card of an older metcli with a warning, and runs an unmodified model as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_train_radiomics import (
    FAST,
    NAMES,
    TINY_GRIDS,
    make_cohort,
    write_features,
    write_labels,
)

from conftest import invoke
from metcli.io.cards import (
    CHECKSUM,
    canonical_onnx,
    card_checksum,
    graph_metadata,
    read_graph,
)
from metcli.io.files import read_json, read_tsv, sha256_file

MODEL = "logistic-regression_none"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One binary model, trained once for this module, and features of new participants."""
    from metcli.radiomics.train_radiomics import train_radiomics

    root = tmp_path_factory.mktemp("cards")
    labels, rows = make_cohort(31, n_patients=16, signal=2.0)
    result = train_radiomics(
        write_features(root / "features", rows),
        root / "models",
        labels=write_labels(root / "participants.tsv", labels),
        classifiers="logistic-regression",
        samplers="none",
        grids=TINY_GRIDS,
        max_features=3,
        **FAST,
    )
    _, new_rows = make_cohort(32, n_patients=5, signal=2.0, first=100)
    return {
        "root": root,
        "model": root / "models" / MODEL,
        "result": result,
        "features": write_features(root / "new", new_rows),
        "rows": new_rows,
    }


def _copy(trained, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    return model


def _edit(model, change):
    card = read_json(model / "model.json")
    change(card)
    (model / "model.json").write_text(json.dumps(card, indent=2) + "\n")


def _probabilities(path):
    rows = [r for r in read_tsv(path) if r["level"] == "lesion"]
    keys = [(r["participant_id"], r["lesion_id"]) for r in rows]
    return keys, np.array(
        [[float(r["prob_colorectal"]), float(r["prob_pancreatic"])] for r in rows]
    )


def test_the_graph_records_what_its_card_says_and_the_card_its_checksum(trained):
    card = read_json(trained["model"] / "model.json")
    assert card[CHECKSUM] == card_checksum(card) and list(card)[-1] == CHECKSUM
    names, metadata = read_graph(trained["model"] / "model.onnx")
    assert names == [i["name"] for i in card["inputs"]]
    assert {k: json.loads(v) for k, v in metadata.items()} == {
        "metcli.kind": "radiomics",
        "metcli.classes": ["colorectal", "pancreatic"],
        "metcli.positive_class": "pancreatic",
        "metcli.inputs": names,
        "metcli.input_columns": [i["column"] for i in card["inputs"]],
    }
    assert metadata == graph_metadata(card)
    # the checksum is of the canonical JSON: key order and whitespace do not change it
    shuffled = json.loads(json.dumps(dict(reversed(list(card.items())))))
    assert card_checksum(shuffled) == card[CHECKSUM]
    # the result train-radiomics returns holds the bytes it wrote
    model = trained["result"].models[MODEL]
    assert model.onnx == (trained["model"] / "model.onnx").read_bytes()


def test_an_unmodified_model_predicts_as_the_graph_without_metadata(trained, tmp_path, runner):
    """The metadata changes nothing the graph computes: predict's probabilities are those of
    the pipeline's graph as converted, without metcli's metadata."""
    from metcli.core.devices import onnx_session
    from metcli.radiomics import onnx as onnx_export

    out = tmp_path / "out"
    result = invoke(runner, ["predict", trained["model"], trained["features"], out])
    assert "older metcli" not in result.stderr
    keys, got = _probabilities(out / "predictions.tsv")
    model = trained["result"].models[MODEL]
    plain = onnx_export.to_onnx(model.pipeline, model.inputs, model_name=MODEL)
    assert not read_graph_metadata(plain)
    order = {(p, str(lesion)): v for p, lesion, v in trained["rows"]}
    values = np.array([order[k] for k in keys])[:, [NAMES.index(n) for n in model.inputs]]
    expected = onnx_export.probabilities(onnx_session(plain), model.inputs, values)
    assert np.abs(got - expected).max() < 1e-9  # the table's 10 digits


def read_graph_metadata(blob: bytes) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(blob).metadata_props}


def _swap_classes(card):
    card["classes"] = card["classes"][::-1]


def _swap_and_recompute(card):
    _swap_classes(card)
    card["positive_class"] = card["classes"][1]
    card[CHECKSUM] = card_checksum(card)


def _other_column(card):
    other = next(n for n in NAMES if n not in [i["column"] for i in card["inputs"]])
    card["inputs"][0]["column"] = other


def _other_name(card):
    other = next(n for n in NAMES if n not in [i["name"] for i in card["inputs"]])
    card["inputs"][0]["name"] = card["inputs"][0]["column"] = other


@pytest.mark.parametrize(
    "change, message",
    [
        (_swap_classes, "classes (in output order) [pancreatic, colorectal] in model.json"),
        (_swap_and_recompute, "classes (in output order)"),
        (lambda c: c.update(positive_class="colorectal"), "positive class colorectal"),
        (_other_column, "the column of input 1 is original_"),
        (_other_name, "input 1 is"),
        (lambda c: c.update(inputs=c["inputs"][:-1]), "number of inputs"),
        (lambda c: c.update(kind="radiomics-hierarchy"), "kind radiomics-hierarchy"),
        (lambda c: c.update(card_sha256="0" * 64), "does not match its card_sha256"),
        (lambda c: c.update(threshold=0.01), "does not match its card_sha256"),
        (lambda c: c.pop(CHECKSUM), "has no card_sha256"),
    ],
)
def test_a_card_that_does_not_describe_its_model_is_refused(
    trained, tmp_path, runner, change, message
):
    model = _copy(trained, tmp_path)
    _edit(model, change)
    out = tmp_path / "out"
    result = invoke(runner, ["predict", model, trained["features"], out], expect=1)
    text = result.stderr
    assert text.count("\n") == 1, text
    assert message in text and str(model / "model.json") in text
    assert "copy the model folder again" in text and "do not edit model.json" in text
    assert not out.exists() or not (out / "predictions.tsv").exists()


def test_the_backend_checks_the_graph_it_opens(trained):
    """A card handed to the backend directly (not through load_card) is checked too."""
    from metcli.core.errors import InputError
    from metcli.prediction.radiomics import RadiomicsBackend

    card = read_json(trained["model"] / "model.json")
    RadiomicsBackend(trained["model"], card, ["CPUExecutionProvider"])
    _swap_classes(card)
    with pytest.raises(InputError, match="classes"):
        RadiomicsBackend(trained["model"], card, ["CPUExecutionProvider"])


def _as_older_metcli(model):
    """The model as an older metcli wrote it: no metadata in the graph, no checksum."""
    onnx_path = model / "model.onnx"
    onnx_path.write_bytes(canonical_onnx(onnx_path.read_bytes(), {}))

    def older(card):
        card.pop(CHECKSUM)
        card["onnx"]["sha256"] = sha256_file(onnx_path)

    _edit(model, older)


def test_a_card_of_an_older_metcli_runs_with_a_warning(trained, tmp_path, runner):
    invoke(runner, ["predict", trained["model"], trained["features"], tmp_path / "new"])
    model = _copy(trained, tmp_path)
    _as_older_metcli(model)
    assert not read_graph(model / "model.onnx")[1]
    result = invoke(runner, ["predict", model, trained["features"], tmp_path / "old"])
    assert "older metcli" in result.stderr and "retrain" in result.stderr
    for name in ("predictions.tsv",):
        assert _probabilities(tmp_path / "old" / name)[1].tolist() == (
            _probabilities(tmp_path / "new" / name)[1].tolist()
        )


def test_a_card_of_an_older_metcli_still_has_its_input_names_checked(trained, tmp_path, runner):
    model = _copy(trained, tmp_path)
    _as_older_metcli(model)
    _edit(model, _other_name)
    result = invoke(runner, ["predict", model, trained["features"], tmp_path / "out"], expect=1)
    assert "input 1 is" in result.stderr and "model.json" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_checksummed_card_beside_a_graph_without_metadata_is_refused(trained, tmp_path, runner):
    model = _copy(trained, tmp_path)
    onnx_path = model / "model.onnx"
    onnx_path.write_bytes(canonical_onnx(onnx_path.read_bytes(), {}))

    def rehash(card):
        card["onnx"]["sha256"] = sha256_file(onnx_path)
        card[CHECKSUM] = card_checksum(card)

    _edit(model, rehash)
    result = invoke(runner, ["predict", model, trained["features"], tmp_path / "out"], expect=1)
    assert "records no metcli metadata" in result.stderr and "model.json" in result.stderr


def test_canonical_onnx_sorts_what_sets_order():
    import onnx
    from onnx import TensorProto, helper

    def build(opsets, attributes):
        node = helper.make_node("Softmax", ["x"], ["y"])
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attributes)
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(*o) for o in opsets])
        for key, value in (("z", "1"), ("a", "2")):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model.SerializeToString()

    a = build([("", 17), ("ai.onnx.ml", 3)], [("axis", 1), ("zz", 2)])
    b = build([("ai.onnx.ml", 3), ("", 17)], [("zz", 2), ("axis", 1)])
    assert a != b and canonical_onnx(a) == canonical_onnx(b)
    assert canonical_onnx(canonical_onnx(a)) == canonical_onnx(a)
    stamped = onnx.load_from_string(canonical_onnx(a, {"metcli.kind": '"radiomics"'}))
    assert [p.key for p in stamped.metadata_props] == ["a", "metcli.kind", "z"]
    assert [o.domain for o in stamped.opset_import] == ["", "ai.onnx.ml"]
