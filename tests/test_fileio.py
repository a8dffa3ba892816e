"""Atomic writes, tables, images and participants.tsv (metcli.io.files, metcli.io.participants)."""

import gzip
import os

import numpy as np
import pytest

from conftest import make_image
from metcli.core.errors import ImageError, InputError, SchemaError, UsageError
from metcli.io import files as fileio
from metcli.io import participants


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "table.tsv"
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half a tab")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_atomic_image_keeps_extension(tmp_path):
    target = tmp_path / "sub-1_ct.nii.gz"
    with fileio.atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz")
        fileio.write_image_to(make_image(np.zeros((2, 3, 4), np.int16)), tmp)
    with gzip.open(target) as handle:  # really a gzip-compressed NIfTI
        assert len(handle.read(348)) == 348


def test_output_set_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.json"
    with pytest.raises(ValueError):
        with fileio.OutputSet() as outs:
            outs.path(a).write_text("a")
            outs.path(b).write_text("b")
            raise ValueError("failure before commit")
    assert list(tmp_path.iterdir()) == []
    with fileio.OutputSet() as outs:
        outs.path(a).write_text("a")
        outs.path(b).write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv", "b.json"]


def test_tsv_round_trip_and_na(tmp_path):
    path = tmp_path / "t.tsv"
    rows = [{"index": 1, "name": "liver", "abbreviation": None}, {"index": 2, "name": "x"}]
    fileio.write_tsv(rows, ["index", "name", "abbreviation"], path, schema="dseg_labels")
    assert path.read_text() == "index\tname\tabbreviation\n1\tliver\tn/a\n2\tx\tn/a\n"
    assert fileio.read_tsv(path) == [
        {"index": "1", "name": "liver", "abbreviation": "n/a"},
        {"index": "2", "name": "x", "abbreviation": "n/a"},
    ]
    with pytest.raises(InputError, match="missing column"):
        fileio.read_tsv(path, required=["label"])


def test_tsv_schema_checked_before_writing(tmp_path):
    path = tmp_path / "t.tsv"
    with pytest.raises(SchemaError, match="line 2"):
        fileio.write_tsv(
            [{"index": "one", "name": "liver"}], ["index", "name"], path, schema="dseg_labels"
        )
    with pytest.raises(SchemaError, match="does not allow"):
        fileio.write_tsv(
            [{"index": 1, "name": "liver", "x": 1}],
            ["index", "name", "x"],
            path,
            schema="dseg_labels",
        )
    assert not path.exists()


def test_format_value():
    assert fileio.format_value(float("nan")) == "n/a"
    assert fileio.format_value(np.float32(0.5)) == "0.5"
    assert fileio.format_value(1 / 3) == "0.3333333333"
    assert fileio.format_value(True) == "true"
    with pytest.raises(ValueError):
        fileio.format_value("a\tb")


def test_read_image_errors(tmp_path):
    corrupt = tmp_path / "corrupt.nii.gz"
    good = tmp_path / "good.nii.gz"
    fileio.write_image(make_image(np.ones((4, 5, 6), np.int16)), good)
    corrupt.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError) as info:
        fileio.read_image(corrupt)
    assert str(corrupt) in str(info.value) and "\n" not in str(info.value)
    flat = tmp_path / "flat.nii.gz"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(flat))
    with pytest.raises(ImageError, match="2D"):
        fileio.read_image(flat)
    with pytest.raises(ImageError, match="not found"):
        fileio.read_image(tmp_path / "missing.nii.gz")
    assert fileio.read_image(good).GetSize() == (6, 5, 4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_read_image_refuses_nan_and_infinity(tmp_path, suffix):
    """SimpleITK reads NaN in a NIfTI file as 0: read_image looks in the file itself."""
    import SimpleITK as sitk

    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 2] = np.inf
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    if suffix == ".nii.gz":
        assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()
    with pytest.raises(ImageError, match="2 voxel") as info:
        fileio.read_image(path, what="CT")
    assert str(path) in str(info.value)
    array[:] = 1.5
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert fileio.read_image(path).GetPixelID() == sitk.sitkFloat32


def test_output_not_inside_input(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    fileio.check_output_not_inside_input(tmp_path / "out", [raw])
    fileio.check_output_not_inside_input(raw / "derivatives" / "seg", [raw])
    for bad in (raw, raw / "seg"):
        with pytest.raises(UsageError):
            fileio.check_output_not_inside_input(bad, [raw])
    with pytest.raises(UsageError):
        fileio.check_output_not_inside_input(tmp_path, [raw])


def test_participants_round_trip(tmp_path):
    rows = [
        {"participant_id": "sub-002", "primary": "pancreatic", "age": 61.0, "sex": "F"},
        {"participant_id": "sub-001", "primary": "colorectal", "age": None, "sex": "M"},
    ]
    participants.write_participants(tmp_path, rows)
    text = (tmp_path / "participants.tsv").read_text()
    assert text.splitlines()[0] == "participant_id\tprimary\tage\tsex"
    assert text.splitlines()[1] == "sub-001\tcolorectal\tn/a\tM"
    read = participants.read_participants(tmp_path)
    assert read[1] == {
        "participant_id": "sub-002",
        "primary": "pancreatic",
        "age": 61.0,
        "sex": "F",
    }
    participants.upsert_participant(
        tmp_path, {"participant_id": "sub-003", "primary": "colorectal"}
    )
    participants.upsert_participant(tmp_path, {"participant_id": "sub-001", "age": 70})
    assert participants.participant_labels(tmp_path) == ["001", "002", "003"]
    assert participants.read_participants(tmp_path)[0]["age"] == 70.0
    assert participants.labels_by_participant(tmp_path)["sub-003"] == "colorectal"


def test_participants_errors(tmp_path):
    with pytest.raises(InputError) as info:
        participants.read_participants(tmp_path)
    assert "participants.tsv" in str(info.value) and "participant_id" in str(info.value)
    (tmp_path / "participants.tsv").write_text("participant_id\tprimary\n001\tcolorectal\n")
    with pytest.raises(InputError, match="sub-"):
        participants.read_participants(tmp_path)
    (tmp_path / "participants.tsv").write_text("participant_id\tprimary\nsub-1\tx\nsub-1\ty\n")
    with pytest.raises(InputError, match="twice"):
        participants.read_participants(tmp_path)
    (tmp_path / "participants.tsv").write_text("participant_id\tprimary\nsub-1\tx\textra\n")
    with pytest.raises(InputError, match="line 2"):
        participants.read_participants(tmp_path)


def test_written_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = fileio.write_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
