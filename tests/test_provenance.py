"""Sidecars, dataset descriptions and the skip rule (metcli.io.provenance)."""

import json

from metcli.io import provenance, schemas
from metcli.io.files import OutputSet, read_json


def _step(tmp_path, **settings):
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    return provenance.Step("demo", tmp_path / "out", {"raw": raw}, settings or {"a": 1}), raw


def _write(step, inputs, out_file, sidecar, content="x"):
    with OutputSet() as outs:
        tmp = outs.path(out_file)
        tmp.write_text(content)
        step.write_sidecar(outs, sidecar, inputs, {out_file: tmp})


def test_uris_are_relative_and_identify_nobody(tmp_path):
    step, raw = _step(tmp_path)
    source = raw / "sub-001" / "anat" / "sub-001_ct.nii.gz"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"ct")
    assert step.uri(source) == "bids:raw:sub-001/anat/sub-001_ct.nii.gz"
    assert step.uri(tmp_path / "out" / "x.tsv") == "bids:self:x.tsv"
    outside = tmp_path / "Doe_John" / "scan.nii.gz"
    assert step.uri(outside) == "file:scan.nii.gz"


def test_skip_rule(tmp_path):
    step, raw = _step(tmp_path, threshold=5)
    source = raw / "in.nii.gz"
    source.write_bytes(b"one")
    out_file = tmp_path / "out" / "sub-1_dseg.tsv"
    sidecar = tmp_path / "out" / "sub-1_dseg.json"
    inputs = step.inputs([source])
    assert not step.is_done(sidecar, inputs)
    _write(step, inputs, out_file, sidecar)
    doc = read_json(sidecar)
    schemas.validate(doc, "sidecar")
    assert str(tmp_path) not in json.dumps(doc)
    assert doc["Sources"] == ["bids:raw:in.nii.gz"]
    assert doc["Provenance"]["outputs"][0]["name"] == "sub-1_dseg.tsv"
    assert step.is_done(sidecar, inputs)
    # same settings in another order: still done
    same, _ = _step(tmp_path, threshold=5)
    assert same.is_done(sidecar, inputs)
    # changed settings: redo
    changed, _ = _step(tmp_path, threshold=6)
    assert not changed.is_done(sidecar, inputs)
    # changed input: redo
    source.write_bytes(b"two")
    assert not step.is_done(sidecar, step.inputs([source]))
    # output edited or deleted after the run: redo
    out_file.write_text("tampered")
    assert not step.is_done(sidecar, inputs)
    out_file.unlink()
    assert not step.is_done(sidecar, inputs)


def test_corrupt_sidecar_means_not_done(tmp_path):
    step, raw = _step(tmp_path)
    sidecar = tmp_path / "out" / "x.json"
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text("{not json")
    assert not step.is_done(sidecar, [])


def test_dataset_description(tmp_path, monkeypatch):
    raw = tmp_path / "rawdata"
    raw.mkdir()
    out = tmp_path / "derivatives" / "seg"
    monkeypatch.setenv("METCLI_CONTAINER_TYPE", "apptainer")
    monkeypatch.setenv("METCLI_CONTAINER_TAG", "metcli:0.1.0")
    path = provenance.write_dataset_description(out, name="seg", sources={"raw": raw})
    doc = read_json(path, schema="dataset_description")
    assert doc["DatasetType"] == "derivative"
    assert doc["GeneratedBy"][0]["Name"] == "metcli"
    assert doc["GeneratedBy"][0]["Container"] == {"Type": "apptainer", "Tag": "metcli:0.1.0"}
    assert doc["DatasetLinks"] == {"raw": "../../rawdata"}
    assert doc["SourceDatasets"] == [{"URL": "bids:raw:"}]
    raw_doc = read_json(provenance.write_dataset_description(raw, name="demo", dataset_type="raw"))
    assert raw_doc["DatasetType"] == "raw" and "GeneratedBy" not in raw_doc
