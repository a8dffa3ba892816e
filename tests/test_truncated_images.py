"""Images cut short or damaged are refused by every command, not read with zeros.

SimpleITK reads a .nii.gz whose end is missing without complaint and fills the
missing voxels with zeros; metcli.io.files.read_image refuses it (see
metcli.io.integrity), and every command reads its images through read_image.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from test_extract import dataset, features_table
from test_import_mask import one_line_error, small_ct, write_raw
from test_split_lesions import out_files, write_seg

from conftest import REPO, invoke, make_image
from metcli.io.bids import Entities


def cut(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def five_lesions() -> np.ndarray:
    """A liver with five separate lesions at increasing depth."""
    array = np.zeros((40, 40, 40), np.uint8)
    array[2:38, 4:36, 4:36] = 1
    for number, z in enumerate((4, 11, 18, 25, 32)):
        array[z : z + 3, 8 + 4 * number : 13 + 4 * number, 10:15] = 2
    return array


def reported(stderr: str, path: Path, what: str, *needles: str) -> None:
    """The batch log names ``path`` and what is wrong with it; the last line sums up.

    The log is wrapped to the terminal's width, so whitespace is left out of the
    comparison.
    """
    assert "Traceback" not in stderr, stderr
    flat = "".join(stderr.split())
    for needle in (f"{path}: cannot read the {what}: ", *needles):
        assert "".join(needle.split()) in flat, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("metcli: error: ") and "participant(s) failed" in last, stderr


def test_split_lesions_refuses_a_truncated_segmentation(runner, tmp_path):
    seg_dir, out_dir = tmp_path / "seg", tmp_path / "lesions"
    write_seg(seg_dir, "01", five_lesions())
    bad = cut(write_seg(seg_dir, "02", five_lesions()))
    silent = sitk.GetArrayFromImage(sitk.ReadImage(str(bad)))  # SimpleITK does not complain
    assert ndimage.label(silent == 2)[1] < 5
    result = invoke(runner, ["split-lesions", seg_dir, out_dir], expect=3)
    reported(result.stderr, bad, "segmentation", "the file is truncated")
    assert "1 of 2 participant(s) failed: sub-02" in result.stderr
    assert out_files(out_dir, "01")["tsv"].is_file()
    assert not (out_dir / "sub-02").exists()


def test_split_lesions_alone_on_a_truncated_segmentation_writes_nothing(runner, tmp_path):
    seg_dir, out_dir = tmp_path / "seg", tmp_path / "lesions"
    bad = cut(write_seg(seg_dir, "01", five_lesions()))
    result = invoke(runner, ["split-lesions", seg_dir, out_dir], expect=1)  # nothing done
    reported(result.stderr, bad, "segmentation", "truncated", "Fix: copy or export the file")
    assert not (out_dir / "sub-01").exists()


def test_extract_refuses_a_truncated_ct(runner, tmp_path):
    paths = dataset(tmp_path, {"001": {}, "002": {}})
    bad = cut(paths["raw"] / Entities(sub="002", ce="portal").relpath())
    result = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]], expect=3)
    reported(result.stderr, bad, "CT", "the file is truncated")
    assert features_table(paths["out"], "001").is_file()
    assert not (paths["out"] / "sub-002").exists()
    assert not (paths["out"] / "features.tsv").exists()


def test_extract_refuses_a_damaged_lesion_map(runner, tmp_path):
    paths = dataset(tmp_path, {"001": {}})
    lesion_map = (
        paths["lesions"] / Entities(sub="001", ce="portal", desc="lesions", suffix="dseg").relpath()
    )
    data = bytearray(lesion_map.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    lesion_map.write_bytes(bytes(data))
    result = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]], expect=1)
    reported(result.stderr, lesion_map, "lesion map", "the file is corrupted")
    assert not (paths["out"] / "sub-001").exists()


@pytest.mark.parametrize("which", ["mask", "ct"])
def test_import_mask_refuses_a_truncated_mask_or_ct(runner, tmp_path, which):
    raw = tmp_path / "raw"
    ct = small_ct()
    noise = np.random.default_rng(0).integers(-100, 200, (4, 24, 20)).astype(np.int16)
    ct = make_image(noise, spacing=ct.GetSpacing(), origin=ct.GetOrigin())
    ct_path = write_raw(raw, ct)
    labels = np.zeros((4, 24, 20), np.uint8)
    labels[:, 2:22, 2:18] = 1
    labels[:, 8:12, 6:10] = 2
    mask = tmp_path / "mask.nii.gz"
    sitk.WriteImage(make_image(labels, ct.GetSpacing(), ct.GetOrigin()), str(mask), True)
    bad = cut(mask if which == "mask" else ct_path)
    seg_dir = tmp_path / "seg"
    result = invoke(
        runner, ["import-mask", mask, raw, seg_dir, "--participant-label", "01"], expect=1
    )
    one_line_error(result, str(bad), "truncated", "copy or export the file again")
    assert not seg_dir.exists() or not any(seg_dir.rglob("*.nii.gz"))


def test_evaluate_seg_refuses_a_truncated_segmentation(runner, tmp_path):
    seg_dir, reference, out = tmp_path / "seg", tmp_path / "reference", tmp_path / "out"
    for sub in ("01", "02"):
        write_seg(reference, sub, five_lesions())
        write_seg(seg_dir, sub, five_lesions())
    bad = cut(seg_dir / Entities(sub="02", suffix="dseg").relpath())
    result = invoke(runner, ["evaluate-seg", seg_dir, reference, out], expect=3)
    reported(result.stderr, bad, "segmentation", "the file is truncated")
    assert not list(out.rglob("sub-02*"))


def test_no_library_module_reads_an_image_file_around_read_image():
    """Every command reads its images through read_image, so every one gets the check."""
    readers = re.compile(r"sitk\.ReadImage\(|ImageFileReader\(|nib\.load\(|ImageSeriesReader\(")
    allowed = {
        "io/files.py",  # read_image itself
        "imaging/dicom/pixels.py",  # one DICOM slice through GDCM, not a NIfTI or NRRD file
    }
    found = set()
    for path in (REPO / "toolkit").rglob("*.py"):
        if readers.search(path.read_text()):
            found.add(path.relative_to(REPO / "toolkit").as_posix())
    for path in (REPO / "cli").rglob("*.py"):
        if readers.search(path.read_text()):
            found.add(path.relative_to(REPO).as_posix())
    assert found <= allowed, sorted(found - allowed)
