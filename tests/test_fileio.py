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


# ----------------------------------------------------------------------------- cut or damaged
def noisy_volume(shape=(12, 32, 32), seed=0) -> np.ndarray:
    """int16 noise: it compresses little, so its voxels fill most of a .nii.gz."""
    return np.random.default_rng(seed).integers(-200, 300, shape).astype(np.int16)


def write_with_sitk(path, array, *, compress=True):
    import SimpleITK as sitk

    sitk.WriteImage(make_image(array, spacing=(0.8, 0.8, 2.0)), str(path), useCompression=compress)
    return path


def flip_middle(path, count=4):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for index in range(middle, middle + count):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def refused(path, *needles):
    with pytest.raises(ImageError) as info:
        fileio.read_image(path, what="CT")
    text = str(info.value)
    assert text.startswith(f"{path}: cannot read the CT: ") and "\n" not in text, text
    assert "Fix: copy or export the file again" in text, text
    for needle in needles:
        assert needle in text, text
    return text


def test_a_truncated_nii_gz_that_simpleitk_reads_as_zeros_is_refused(tmp_path):
    import SimpleITK as sitk

    array = noisy_volume()
    path = write_with_sitk(tmp_path / "ct.nii.gz", array)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    silent = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # no complaint from SimpleITK
    assert silent.shape == array.shape and not (silent[-1] == array[-1]).all()
    expected = 352 + array.size * 2
    refused(path, "truncated", "gzip stream ends early", f"of the {expected:,} its NIfTI header")


def test_a_nii_gz_with_damaged_bytes_is_refused_as_corrupted(tmp_path):
    path = write_with_sitk(tmp_path / "ct.nii.gz", noisy_volume())
    flip_middle(path)
    refused(path, "corrupted")


def test_a_truncated_uncompressed_nii_is_refused(tmp_path):
    import SimpleITK as sitk

    array = noisy_volume()
    path = write_with_sitk(tmp_path / "ct.nii", array, compress=False)
    expected = path.stat().st_size
    assert expected == 352 + array.size * 2
    path.write_bytes(path.read_bytes()[: int(expected * 0.6)])
    assert sitk.ReadImage(str(path)).GetSize() == (32, 32, 12)  # no complaint from SimpleITK
    refused(path, f"holds {int(expected * 0.6):,} bytes, fewer than the {expected:,}")


def test_a_complete_gzip_of_too_few_bytes_is_refused(tmp_path):
    plain = write_with_sitk(tmp_path / "ct.nii", noisy_volume(), compress=False)
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()[:-100]))
    refused(path, "decompressed bytes, fewer than the")


def test_a_truncated_nifti2_is_refused(tmp_path):
    import nibabel as nib

    array = noisy_volume().transpose(2, 1, 0)
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti2Image(array, np.eye(4)), str(path))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-2])
    refused(path, f"{size - 2:,} bytes, fewer than the {size:,}")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_damaged_compressed_nrrd_and_metaimage_data_are_refused(tmp_path, suffix):
    path = write_with_sitk(tmp_path / f"ct{suffix}", noisy_volume())
    flip_middle(path)
    refused(path, "corrupted", "checksum" if suffix == ".mha" else "gzip CRC check failed")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_compressed_nrrd_and_metaimage_are_refused(tmp_path, suffix):
    path = write_with_sitk(tmp_path / f"ct{suffix}", noisy_volume())
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    refused(path, "truncated", "stream ends early")


@pytest.mark.parametrize(
    "suffix,compress",
    [(".nii.gz", True), (".nii", False), (".nrrd", True), (".nrrd", False), (".mha", True)],
)
def test_complete_files_read_exactly_as_simpleitk_reads_them(tmp_path, suffix, compress):
    import SimpleITK as sitk

    path = write_with_sitk(tmp_path / f"ct{suffix}", noisy_volume(), compress=compress)
    ours, theirs = fileio.read_image(path), sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    assert ours.GetSpacing() == theirs.GetSpacing() and ours.GetOrigin() == theirs.GetOrigin()
    assert ours.GetPixelID() == theirs.GetPixelID()


def test_concatenated_gzip_members_and_zero_padding_are_complete(tmp_path):
    """zlib's gzread, which SimpleITK uses, reads members one after the other."""
    import SimpleITK as sitk

    array = noisy_volume()
    plain = write_with_sitk(tmp_path / "ct.nii", array, compress=False).read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]) + bytes(16))
    assert np.array_equal(sitk.GetArrayFromImage(fileio.read_image(path)), array)
    path.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:])[:-50])
    refused(path, "truncated")


def test_check_complete_is_the_one_check_for_other_readers(tmp_path):
    from metcli.io import check_complete

    path = write_with_sitk(tmp_path / "mask.nii.gz", noisy_volume())
    check_complete(path, "mask")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ImageError, match="cannot read the mask: the file is truncated"):
        check_complete(path, "mask")


# ----------------------------------------------------------------------------- stale temporaries
def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_runs_temporary_files_are_removed_when_the_output_is_written_again(tmp_path):
    """SIGKILL leaves ``.NAME.<pid>-<host>.XXXXXXXX.part.EXT``; the next write of NAME removes
    those of processes that are gone, and only those."""
    import os

    from metcli.io.temporaries import owner_tag

    _pid, host = owner_tag().split("-")
    dest = tmp_path / "table.tsv"
    stale = tmp_path / f".table.tsv.{_dead_pid()}-{host}.abcd1234.part.tsv"
    live = tmp_path / f".table.tsv.{os.getppid()}-{host}.abcd1234.part.tsv"
    elsewhere = tmp_path / f".table.tsv.{_dead_pid()}-00000000.abcd1234.part.tsv"
    unknown = tmp_path / ".table.tsv.abcd1234.part.tsv"  # no owner tag
    other = tmp_path / f".other.tsv.{_dead_pid()}-{host}.abcd1234.part.tsv"
    for path in (stale, live, elsewhere, unknown, other):
        path.write_text("partial")
    with fileio.atomic_path(dest) as tmp:
        assert tmp.name.startswith(f".table.tsv.{owner_tag()}.") and tmp.name.endswith(".part.tsv")
        tmp.write_text("whole")
    assert dest.read_text() == "whole"
    assert not stale.exists()
    assert live.exists() and elsewhere.exists() and unknown.exists() and other.exists()
