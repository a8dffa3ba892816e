"""Real CT through the chain (issue 16, item 6): the colorectal liver metastasis CTs of
../shared/data/crlm-tcia go import-dicom, split-lesions (on a hand-made mask), extract and
predict (a radiomics model trained on synth's cohort).

The mask is made by hand in the test: two spheres of 10 mm radius centred on soft tissue
(HU 20 to 150) near the middle of the scan, inside a "liver" of the soft tissue within
40 mm of them. It is not the patients' anatomy; what is checked is that real DICOM
(5 mm slices, padding -3024, 0.8 mm pixels) goes through every step and that the
numbers are those of the voxels: the lesion volumes against the spheres', the first-order
mean against the mean HU of the same voxels computed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from metcli.io.files import read_tsv

CASES = ("1004", "1006")
RADIUS_MM = 10.0
FAST = ["--classifiers", "logistic-regression", "--sampler", "none", "--cv-folds", 3,
        "--cv-repeats", 1, "--inner-folds", 2, "--importance-trees", 10,
        "--importance-repeats", 2, "--max-features", 3, "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def crlm(data_dir) -> Path:
    root = data_dir / "crlm-tcia"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (METCLI_TEST_DATA)")
    return root


def hand_made_mask(ct_path: Path, seg_path: Path) -> list[np.ndarray]:
    """Two spheres on soft tissue (label 2) in a 'liver' (label 1); the spheres' masks."""
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(ct_path))
    hu = sitk.GetArrayFromImage(ct).astype(float)
    spacing = np.array(ct.GetSpacing()[::-1])  # z, y, x
    zz, yy, xx = np.indices(hu.shape)
    soft = (hu > 20) & (hu < 150)
    mid = hu.shape[0] // 2
    candidates = np.argwhere(soft[mid - 1 : mid + 2]) + [mid - 1, 0, 0]
    centre_yx = np.median(candidates[:, 1:], axis=0)
    order = np.argsort(np.abs(candidates[:, 1:] - centre_yx).sum(axis=1))
    first = candidates[order[0]]
    far = np.linalg.norm((candidates - first) * spacing, axis=1)
    second = candidates[order[np.argmax(far[order] > 40.0)]]
    labels = np.zeros(hu.shape, np.uint8)
    spheres = []
    for centre in (first, second):
        distance = np.sqrt(
            ((zz - centre[0]) * spacing[0]) ** 2
            + ((yy - centre[1]) * spacing[1]) ** 2
            + ((xx - centre[2]) * spacing[2]) ** 2
        )
        labels[soft & (distance < 40.0)] = 1
        spheres.append(distance < RADIUS_MM)
    for sphere in spheres:
        labels[sphere] = 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    seg_path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(seg_path), True)
    return spheres


def test_real_ct_goes_through_import_split_extract_and_predict(crlm, runner, tmp_path):
    import SimpleITK as sitk

    raw = tmp_path / "rawdata"
    for case in CASES:
        invoke(
            runner,
            ["import-dicom", crlm / f"CRLM-CT-{case}" / "image", raw,
             "--participant-label", case, "--primary", "colorectal", "--phase", "portal", "-q"],
        )  # fmt: skip
    seg = tmp_path / "seg"
    spheres = {
        case: hand_made_mask(
            raw / f"sub-{case}" / "anat" / f"sub-{case}_ce-portal_ct.nii.gz",
            seg / f"sub-{case}" / "anat" / f"sub-{case}_ce-portal_dseg.nii.gz",
        )
        for case in CASES
    }
    lesions = tmp_path / "lesions"
    invoke(runner, ["split-lesions", seg, lesions, "-q"])
    for case in CASES:
        table = read_tsv(
            lesions / f"sub-{case}" / "anat" / f"sub-{case}_ce-portal_desc-lesions_dseg.tsv"
        )
        assert len(table) == 2 and all(r["kept"] == "true" for r in table)
        for row in table:
            sphere = 4 / 3 * np.pi * RADIUS_MM**3
            assert abs(float(row["volume_mm3"]) - sphere) < 0.25 * sphere, row
    features = tmp_path / "features"
    invoke(runner, ["extract", raw, lesions, features, "-q"])
    rows = read_tsv(features / "features.tsv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for case in CASES:
        ct = sitk.GetArrayFromImage(
            sitk.ReadImage(str(raw / f"sub-{case}" / "anat" / f"sub-{case}_ce-portal_ct.nii.gz"))
        )
        means = sorted(float(ct[s].mean()) for s in spheres[case])
        got = sorted(
            float(r["original_firstorder_Mean"])
            for r in rows
            if r["participant_id"] == f"sub-{case}"
        )
        assert np.allclose(got, means, atol=1e-3), (got, means)
    # a radiomics model trained on synth's cohort predicts every real lesion
    synth = tmp_path / "synth"
    invoke(runner, ["synth", synth, "--subjects", 10, "-q"])
    synth_features = tmp_path / "synth-features"
    invoke(runner, ["extract", synth / "rawdata", synth / "derivatives" / "truth-lesions",
                    synth_features, "-q"])  # fmt: skip
    models = tmp_path / "models"
    invoke(runner, ["train-radiomics", synth_features, models, "--labels",
                    synth / "rawdata" / "participants.tsv", *FAST])  # fmt: skip
    predicted = tmp_path / "predicted"
    invoke(runner, ["predict", models / "logistic-regression_none", features, predicted, "-q"])
    out = read_tsv(predicted / "predictions.tsv")
    assert len([r for r in out if r["level"] == "lesion"]) == 4
    assert len([r for r in out if r["level"] == "patient"]) == 2
    assert all(0.0 <= float(r["prob_pancreatic"]) <= 1.0 for r in out)
