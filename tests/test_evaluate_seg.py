"""metcli evaluate-seg: voxel overlap, lesion detection by size band, classification agreement."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, invoke, make_image
from metcli.core.errors import UsageError
from metcli.evaluation.evaluate_seg import evaluate_seg
from metcli.evaluation.seg_measures import overlap_measures, size_band
from metcli.evaluation.seg_tables import read_typed_table
from metcli.io import schemas
from metcli.io.bids import Entities, find_files
from metcli.io.files import read_json
from metcli.lesions.split_lesions import split_lesions
from metcli.lesions.tables import read_lesion_table

BOOT = ["--bootstrap", "200"]
TABLES = {
    "overlap.tsv": "overlap",
    "detection.tsv": "detection",
    "detection_summary.tsv": "detection_summary",
    "classification_agreement.tsv": "classification_agreement",
}


# ----------------------------------------------------------------------------- helpers
def dseg_paths(root: Path) -> dict[str, Path]:
    return {a.entities.sub: a.path for a in find_files(root, suffix="dseg")}


def array_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def erode_lesions(truth: Path, out: Path) -> None:
    """The truth with its lesion label eroded by one voxel (SimpleITK BinaryErode, radius 1);
    the eroded-away voxels become liver."""
    for sub, path in dseg_paths(truth).items():
        image = sitk.ReadImage(str(path))
        lesion = sitk.Cast(image == 2, sitk.sitkUInt8)
        eroded = sitk.GetArrayFromImage(sitk.BinaryErode(lesion, [1, 1, 1]))
        array = sitk.GetArrayFromImage(image)
        array[(array == 2) & (eroded == 0)] = 1
        result = sitk.GetImageFromArray(array)
        result.CopyInformation(image)
        target = out / path.relative_to(truth)
        target.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(result, str(target), useCompression=True)


def check_written(out: Path) -> None:
    """Every table and sidecar under ``out`` follows its schema."""
    for path in sorted(out.rglob("*.tsv")):
        schema = TABLES.get(path.name) or (
            "overlap" if "desc-overlap" in path.name else "detection"
        )
        header = path.read_text().splitlines()[0].split("\t")
        schemas.validate_rows(read_typed_table(path, schema), header, schema, where=path)
        schemas.validate(read_json(path.with_suffix(".json")), "sidecar")
    schemas.validate(read_json(out / "dataset_description.json"), "dataset_description")
    assert not [p for p in out.rglob("*") if ".part" in p.name]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """4 small synthetic subjects, their truth, and the truth with eroded lesions (split)."""
    from metcli.synth.synth import synth_cohort

    root = tmp_path_factory.mktemp("cohort")
    synth_cohort(root, n_colorectal=2, n_pancreatic=2, seed=0)
    derivatives = root / "derivatives"
    erode_lesions(derivatives / "truth", derivatives / "eroded")
    report = split_lesions(derivatives / "eroded", derivatives / "eroded-lesions")
    assert not report.failed
    return derivatives


def run_cohort(runner, cohort: Path, out: Path, seg: str, *extra, expect=0):
    return invoke(
        runner,
        [
            "evaluate-seg",
            cohort / seg,
            cohort / "truth",
            out,
            "--lesions",
            cohort / f"{seg}-lesions",
            "--reference-lesions",
            cohort / "truth-lesions",
            *BOOT,
            *extra,
        ],
        expect=expect,
    )


# ----------------------------------------------------------------------------- voxel overlap
def test_overlap_measures_match_simpleitk_and_say_why_a_figure_is_undefined():
    rng = np.random.default_rng(3)
    seg = rng.integers(0, 3, (6, 7, 8))
    ref = np.where(rng.random((6, 7, 8)) < 0.7, seg, rng.integers(0, 3, (6, 7, 8)))
    filt = sitk.LabelOverlapMeasuresImageFilter()
    filt.Execute(
        sitk.GetImageFromArray(seg.astype(np.uint8)), sitk.GetImageFromArray(ref.astype(np.uint8))
    )
    for label in (1, 2):
        got = overlap_measures(seg, ref, (label,), 2.0)
        assert got["dice"] == pytest.approx(filt.GetDiceCoefficient(label))
        assert got["jaccard"] == pytest.approx(filt.GetJaccardCoefficient(label))
        # SimpleITK's "false negative error" is 1 - recall, its "false positive error" is
        # 1 - precision... of the reference against the segmentation: check by hand instead.
        s, r = seg == label, ref == label
        assert got["precision"] == pytest.approx((s & r).sum() / s.sum())
        assert got["recall"] == pytest.approx((s & r).sum() / r.sum())
        assert got["volume_mm3"] == 2.0 * s.sum() and got["note"] is None
    empty = np.zeros((3, 3, 3), int)
    one = empty.copy()
    one[1, 1, 1] = 2
    both = overlap_measures(empty, empty, (2,), 1.0)
    assert both["dice"] is None and both["jaccard"] is None and "both" in both["note"]
    missed = overlap_measures(empty, one, (2,), 1.0)
    assert missed["dice"] == 0 and missed["recall"] == 0 and missed["precision"] is None
    extra = overlap_measures(one, empty, (2,), 1.0)
    assert extra["dice"] == 0 and extra["precision"] == 0 and extra["recall"] is None


def test_size_bands_include_their_edges_as_documented():
    assert [size_band(d) for d in (0.0, 9.99, 10.0, 20.0, 20.01)] == [
        "under_10mm",
        "under_10mm",
        "10_to_20mm",
        "10_to_20mm",
        "over_20mm",
    ]


# ----------------------------------------------------------------------------- the cohort
def test_truth_against_itself_is_perfect(runner, cohort, tmp_path):
    out = tmp_path / "self"
    result = invoke(
        runner,
        [
            "evaluate-seg",
            cohort / "truth",
            cohort / "truth",
            out,
            "--lesions",
            cohort / "truth-lesions",
            "--reference-lesions",
            cohort / "truth-lesions",
            *BOOT,
        ],
    )
    check_written(out)
    overlap = read_typed_table(out / "overlap.tsv", "overlap")
    assert len(overlap) == 4 * 3
    assert all(
        r["dice"] == 1
        and r["jaccard"] == 1
        and r["precision"] == 1
        and r["recall"] == 1
        and r["false_positive_voxels"] == 0
        for r in overlap
    )
    summary = read_typed_table(out / "detection_summary.tsv", "detection_summary")
    truth = [
        r
        for p in sorted((cohort / "truth-lesions").rglob("*_dseg.tsv"))
        for r in read_lesion_table(p)
        if r["kept"]
    ]
    for row in summary:
        in_band = [
            r
            for r in truth
            if row["size_band"] in ("all", size_band(r["longest_axial_diameter_mm"]))
        ]
        assert row["n_reference_lesions"] == len(in_band) > 0
        assert row["detection_rate"] == 1 and row["n_missed"] == 0
        assert row["false_positives"] == 0 and row["false_positives_per_scan"] == 0
    detection = read_typed_table(out / "detection.tsv", "detection")
    assert all(
        r["kind"] == "reference"
        and r["dice"] == 1
        and r["predicted_lesion"] == r["reference_lesion"]
        for r in detection
    )
    doc = read_json(out / "overlap.json")
    dice = [s for s in doc["PatientLevelSummary"] if s["metric"] == "dice"]
    assert [s["mean"] for s in dice] == [1, 1, 1] and all(s["n_participants"] == 4 for s in dice)
    assert "dice\tlesion\t4\t1\t1\t1" in result.stdout
    assert "detection_rate\tall\t" in result.stdout


def test_eroded_masks_give_the_hand_computed_dice_and_miss_vanished_lesions(
    runner, cohort, tmp_path
):
    out = tmp_path / "eroded"
    run_cohort(runner, cohort, out, "eroded")
    check_written(out)
    overlap = read_typed_table(out / "overlap.tsv", "overlap")
    truth_paths, eroded_paths = dseg_paths(cohort / "truth"), dseg_paths(cohort / "eroded")
    per_patient_lesion_dice = []
    for sub in sorted(truth_paths):
        ref, seg = array_of(truth_paths[sub]), array_of(eroded_paths[sub])
        for label, values in (("liver", [1]), ("lesion", [2]), ("liver_and_lesions", [1, 2])):
            s, r = np.isin(seg, values), np.isin(ref, values)
            tp = np.sum(s & r)
            row = next(
                x for x in overlap if x["participant_id"] == f"sub-{sub}" and x["label"] == label
            )
            assert row["dice"] == pytest.approx(2 * tp / (s.sum() + r.sum()), abs=1e-9)
            assert row["jaccard"] == pytest.approx(tp / np.sum(s | r), abs=1e-9)
            assert row["precision"] == pytest.approx(tp / s.sum(), abs=1e-9)
            assert row["recall"] == pytest.approx(tp / r.sum(), abs=1e-9)
        lesion = next(
            x for x in overlap if x["participant_id"] == f"sub-{sub}" and x["label"] == "lesion"
        )
        # Erosion only removes lesion voxels: every one left is right, many are lost.
        assert lesion["precision"] == 1 and lesion["dice"] < 0.8
        liver_and_lesions = next(
            x
            for x in overlap
            if x["participant_id"] == f"sub-{sub}" and x["label"] == "liver_and_lesions"
        )
        assert liver_and_lesions["dice"] == 1  # the organ is unchanged
        per_patient_lesion_dice.append(lesion["dice"])
    summary = read_json(out / "overlap.json")["PatientLevelSummary"]
    lesion_dice = next(s for s in summary if s["label"] == "lesion" and s["metric"] == "dice")
    assert lesion_dice["mean"] == pytest.approx(np.mean(per_patient_lesion_dice))
    assert lesion_dice["ci_lower"] <= lesion_dice["mean"] <= lesion_dice["ci_upper"] < 1

    # Lesions: a truth lesion is found when a kept lesion of the eroded map overlaps it.
    detection = read_typed_table(out / "detection.tsv", "detection")
    expected = {band: [0, 0] for band in ("under_10mm", "10_to_20mm", "over_20mm")}
    for sub in sorted(truth_paths):
        name = f"sub-{sub}_ce-portal_desc-lesions_dseg"
        truth_map = array_of(cohort / "truth-lesions" / f"sub-{sub}" / "anat" / f"{name}.nii.gz")
        eroded_map = array_of(cohort / "eroded-lesions" / f"sub-{sub}" / "anat" / f"{name}.nii.gz")
        table = read_lesion_table(cohort / "truth-lesions" / f"sub-{sub}" / "anat" / f"{name}.tsv")
        for lesion in (r for r in table if r["kept"]):
            inside = eroded_map[truth_map == lesion["index"]]
            found = bool(np.any(inside > 0))
            band = size_band(lesion["longest_axial_diameter_mm"])
            expected[band][0] += 1
            expected[band][1] += found
            row = next(
                r
                for r in detection
                if r["participant_id"] == f"sub-{sub}" and r["reference_lesion"] == lesion["index"]
            )
            assert row["found"] is found and row["size_band"] == band
            if found:
                best = max(
                    set(inside[inside > 0].tolist()),
                    key=lambda p: (
                        2
                        * np.sum(inside == p)
                        / (np.sum(truth_map == lesion["index"]) + np.sum(eroded_map == p))
                    ),
                )
                assert row["predicted_lesion"] == best
                assert row["dice"] == pytest.approx(
                    2
                    * np.sum(inside == best)
                    / (np.sum(truth_map == lesion["index"]) + np.sum(eroded_map == best))
                )
            else:
                assert row["predicted_lesion"] is None and row["dice"] is None
    assert not [r for r in detection if r["kind"] == "false_positive"]
    rows = {
        r["size_band"]: r
        for r in read_typed_table(out / "detection_summary.tsv", "detection_summary")
    }
    for band, (total, found) in expected.items():
        assert (rows[band]["n_reference_lesions"], rows[band]["n_found"]) == (total, found)
        assert rows[band]["detection_rate"] == pytest.approx(found / total)
    # The cohort is chosen so that erosion makes small lesions vanish and keeps large ones.
    assert rows["under_10mm"]["n_missed"] > 0 and rows["over_20mm"]["n_missed"] == 0
    assert rows["all"]["n_found"] == sum(f for _t, f in expected.values())
    assert rows["all"]["false_positives_per_scan"] == 0


def test_same_seed_same_intervals_and_rerun_is_skipped(runner, cohort, tmp_path):
    out = tmp_path / "out"
    run_cohort(runner, cohort, out, "eroded", "--seed", "5")
    first = (out / "detection_summary.tsv").read_text()
    mtime = (out / "overlap.tsv").stat().st_mtime_ns
    again = run_cohort(runner, cohort, out, "eroded", "--seed", "5")
    assert "4 skipped" in again.stderr and (out / "overlap.tsv").stat().st_mtime_ns == mtime
    other = tmp_path / "other"
    run_cohort(runner, cohort, other, "eroded", "--seed", "5")
    assert (other / "detection_summary.tsv").read_text() == first


def test_participant_level_runs_then_group_level(runner, cohort, tmp_path):
    out, whole = tmp_path / "split", tmp_path / "whole"
    for label in ("001", "002", "003", "004"):
        run_cohort(runner, cohort, out, "eroded", "--participant-label", label)
        assert not (out / "overlap.tsv").exists()
    early = run_cohort(runner, cohort, tmp_path / "early", "eroded", "--participant-label", "001")
    assert "overlap" not in early.stdout
    run_cohort(runner, cohort, out, "eroded", "--level", "group")
    run_cohort(runner, cohort, whole, "eroded")
    for name in ("overlap.tsv", "detection.tsv", "detection_summary.tsv"):
        assert (out / name).read_text() == (whole / name).read_text(), name
    # The group level refuses stale participant tables.
    stale = tmp_path / "stale"
    run_cohort(runner, cohort, stale, "eroded", "--participant-label", "001")
    result = run_cohort(runner, cohort, stale, "eroded", "--level", "group", expect=1)
    assert "missing or was not made from the current inputs" in result.stderr


def test_a_mask_on_another_grid_is_one_error_naming_both_files(runner, cohort, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(cohort / "truth", moved)
    target = dseg_paths(moved)["002"]
    image = sitk.ReadImage(str(target))
    image.SetOrigin(tuple(o + 5.0 for o in image.GetOrigin()))
    sitk.WriteImage(image, str(target), useCompression=True)
    report = evaluate_seg(moved, cohort / "truth", tmp_path / "lib").report
    assert sorted(report.failed) == ["sub-002 portal"]
    message = report.failed["sub-002 portal"]
    assert "\n" not in message and "same physical grid" in message
    assert str(target) in message and str(dseg_paths(cohort / "truth")["002"]) in message
    assert len(report.done) == 3 and not (tmp_path / "lib" / "overlap.tsv").exists()
    result = invoke(runner, ["evaluate-seg", moved, cohort / "truth", tmp_path / "cli"], expect=3)
    assert "1 of 4 participant(s) failed: sub-002 portal" in result.stderr


def test_flipped_axes_of_the_same_grid_are_the_same_mask(cohort, tmp_path):
    flipped = tmp_path / "flipped"
    truth = dseg_paths(cohort / "truth")
    target = flipped / truth["001"].relative_to(cohort / "truth")
    target.parent.mkdir(parents=True)
    sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(truth["001"])), [True, False, True]), str(target))
    assert not np.array_equal(array_of(target), array_of(truth["001"]))
    result = evaluate_seg(
        flipped,
        cohort / "truth",
        tmp_path / "out",
        participants=["001"],
        level="both",
        n_bootstrap=200,
    )
    assert not result.report.failed
    rows = read_typed_table(tmp_path / "out" / "overlap.tsv", "overlap")
    assert [r["dice"] for r in rows] == [1, 1, 1]


def test_missing_reference_fails_that_acquisition_only(runner, cohort, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(cohort / "truth", partial)
    shutil.rmtree(partial / "sub-003")
    report = evaluate_seg(cohort / "truth", partial, tmp_path / "out").report
    assert list(report.failed) == ["sub-003 portal"]
    assert (
        "no reference segmentation sub-003_ce-portal_dseg.nii.gz" in report.failed["sub-003 portal"]
    )
    assert len(report.done) == 3


# ----------------------------------------------------------------------------- hand-built lesions
def _cube(array, z, y, x, size, value=2):
    array[z : z + size[0], y : y + size[1], x : x + size[2]] = value


def _write(root: Path, sub: str, array: np.ndarray) -> None:
    path = root / Entities(sub=sub, ce="portal", suffix="dseg").relpath()
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_image(array.astype(np.uint8), spacing=(3, 3, 3)), str(path))


def _predictions(path: Path, rows: list[tuple[str, int, str]], model: str) -> Path:
    classes = ("colorectal", "pancreatic")
    lines = [
        "participant_id\tlesion_id\tlevel\tmodel\tset\tprob_colorectal\tprob_pancreatic\tpredicted"
    ]
    for pid, lesion, cls in rows:
        p = 0.8 if cls == "pancreatic" else 0.2
        lines.append(f"{pid}\t{lesion}\tlesion\t{model}\ttest\t{1 - p}\t{p}\t{cls}")
    lines.append(f"{rows[0][0]}\tn/a\tpatient\t{model}\ttest\t0.5\t0.5\t{classes[0]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def hand_built(tmp_path):
    """Two participants on a 3 mm grid. Reference lesions (4x4x4 voxels, 12.7 mm axial
    diameter, except D: 2x2x2, 4.2 mm): A found exactly (Dice 1), B shifted by one voxel
    (Dice 48*2/128 = 0.75), C half covered (Dice 0.5), D missed; one false positive
    (3x3x3, 8.5 mm). sub-02 adds E, overlapped by two predicted lesions (E1: Dice 64/96,
    E2: Dice 32/80): E1 is its match."""
    ref, seg = tmp_path / "ref", tmp_path / "seg"
    for sub in ("01", "02"):
        r = np.ones((20, 24, 24), int)
        s = r.copy()
        _cube(r, 2, 2, 2, (4, 4, 4))
        _cube(s, 2, 2, 2, (4, 4, 4))  # A'
        _cube(r, 2, 2, 10, (4, 4, 4))
        _cube(s, 2, 2, 11, (4, 4, 4))  # B'
        _cube(r, 10, 12, 2, (4, 4, 4))
        _cube(s, 12, 12, 2, (4, 4, 4))  # C'
        _cube(r, 16, 18, 18, (2, 2, 2))  # D (missed)
        _cube(s, 10, 2, 18, (3, 3, 3))  # false positive
        if sub == "02":
            _cube(r, 2, 14, 14, (4, 4, 4))  # E
            _cube(s, 2, 14, 14, (2, 4, 4))  # E1: slices 2-3
            _cube(s, 5, 14, 14, (1, 4, 4))  # E2: slice 5
        _write(ref, sub, r)
        _write(seg, sub, s)
    for folder in (ref, seg):
        assert not split_lesions(
            folder, tmp_path / f"{folder.name}-lesions", min_diameter_mm=0
        ).failed

    def lesion_id(folder, sub, z, y, x):
        name = f"sub-{sub}_ce-portal_desc-lesions_dseg.nii.gz"
        return int(array_of(tmp_path / f"{folder}-lesions" / f"sub-{sub}" / "anat" / name)[z, y, x])

    ids = {
        sub: {
            "A": lesion_id("ref", sub, 3, 3, 3),
            "B": lesion_id("ref", sub, 3, 3, 12),
            "C": lesion_id("ref", sub, 12, 13, 3),
            "D": lesion_id("ref", sub, 16, 18, 18),
            "A'": lesion_id("seg", sub, 3, 3, 3),
            "B'": lesion_id("seg", sub, 3, 3, 12),
            "C'": lesion_id("seg", sub, 13, 13, 3),
            "FP": lesion_id("seg", sub, 11, 3, 19),
        }
        for sub in ("01", "02")
    }
    ids["02"].update(
        {
            "E": lesion_id("ref", "02", 3, 15, 15),
            "E1": lesion_id("seg", "02", 2, 15, 15),
            "E2": lesion_id("seg", "02", 5, 15, 15),
        }
    )
    assert all(v > 0 for d in ids.values() for v in d.values())
    return tmp_path, ids


def test_lesion_matching_on_hand_built_masks(runner, hand_built):
    root, ids = hand_built
    out = root / "out"
    invoke(
        runner,
        [
            "evaluate-seg",
            root / "seg",
            root / "ref",
            out,
            "--lesions",
            root / "seg-lesions",
            "--reference-lesions",
            root / "ref-lesions",
            *BOOT,
        ],
    )
    check_written(out)
    rows = read_typed_table(out / "detection.tsv", "detection")
    for sub in ("01", "02"):
        mine = {
            (r["kind"], r["reference_lesion"] or r["predicted_lesion"]): r
            for r in rows
            if r["participant_id"] == f"sub-{sub}"
        }
        i = ids[sub]
        for ref, pred, dice in (("A", "A'", 1.0), ("B", "B'", 0.75), ("C", "C'", 0.5)):
            row = mine[("reference", i[ref])]
            assert row["found"] and row["predicted_lesion"] == i[pred]
            assert row["dice"] == pytest.approx(dice) and row["size_band"] == "10_to_20mm"
            assert row["reference_diameter_mm"] == pytest.approx(3 * np.hypot(3, 3))
        missed = mine[("reference", i["D"])]
        assert not missed["found"] and missed["size_band"] == "under_10mm"
        fp = mine[("false_positive", i["FP"])]
        assert fp["size_band"] == "under_10mm" and fp["predicted_diameter_mm"] == pytest.approx(
            3 * np.hypot(2, 2)
        )
    e = next(
        r
        for r in rows
        if r["participant_id"] == "sub-02" and r["reference_lesion"] == ids["02"]["E"]
    )
    assert e["predicted_lesion"] == ids["02"]["E1"] and e["n_predicted_overlapping"] == 2
    assert e["dice"] == pytest.approx(64 / 96)
    assert sum(r["kind"] == "false_positive" for r in rows) == 2  # E2 overlaps E: not one
    summary = {
        r["size_band"]: r
        for r in read_typed_table(out / "detection_summary.tsv", "detection_summary")
    }
    assert (summary["10_to_20mm"]["n_reference_lesions"], summary["10_to_20mm"]["n_found"]) == (
        7,
        7,
    )
    assert (summary["under_10mm"]["n_found"], summary["under_10mm"]["n_missed"]) == (0, 2)
    assert summary["under_10mm"]["false_positives"] == 2
    assert summary["all"]["false_positives_per_scan"] == 1.0
    assert summary["all"]["detection_rate"] == pytest.approx(7 / 9)
    # Voxel level, lesion label of sub-01 by hand: reference 3*64 + 8, segmentation
    # 3*64 + 27, shared 64 + 48 + 32.
    overlap = read_typed_table(out / "overlap.tsv", "overlap")
    lesion = next(r for r in overlap if r["participant_id"] == "sub-01" and r["label"] == "lesion")
    assert lesion["dice"] == pytest.approx(2 * 144 / (200 + 219))


def test_classification_agreement_by_dice_band(runner, hand_built):
    root, ids = hand_built
    reference, automatic = [], []
    for sub in ("01", "02"):
        i, pid = ids[sub], f"sub-{sub}"
        reference += [
            (pid, i["A"], "colorectal"),
            (pid, i["B"], "colorectal"),
            (pid, i["C"], "pancreatic"),
            (pid, i["D"], "pancreatic"),
        ]
        automatic += [
            (pid, i["A'"], "colorectal"),
            (pid, i["B'"], "pancreatic"),
            (pid, i["C'"], "pancreatic"),
            (pid, i["FP"], "colorectal"),
        ]
    reference.append(("sub-02", ids["02"]["E"], "pancreatic"))
    automatic += [
        ("sub-02", ids["02"]["E1"], "colorectal"),
        ("sub-02", ids["02"]["E2"], "pancreatic"),
    ]
    ref_file = _predictions(root / "pred-ref" / "predictions.tsv", reference, "knn")
    auto_file = _predictions(root / "pred-auto" / "predictions.tsv", automatic, "knn")
    out = root / "agree"
    result = invoke(
        runner,
        [
            "evaluate-seg",
            root / "seg",
            root / "ref",
            out,
            "--lesions",
            root / "seg-lesions",
            "--reference-lesions",
            root / "ref-lesions",
            "--predictions",
            auto_file,
            "--reference-predictions",
            ref_file,
            *BOOT,
        ],
    )
    check_written(out)
    table = {
        r["dice_band"]: r
        for r in read_typed_table(out / "classification_agreement.tsv", "classification_agreement")
    }
    assert list(table) == ["0.00-0.50", "0.50-0.70", "0.70-0.90", "0.90-1.00", "all"]
    # A (Dice 1) agrees, B (0.75) does not, C (0.5) agrees, E (0.667) does not; twice, E once.
    expected = {
        "0.00-0.50": (0, 0),
        "0.50-0.70": (3, 2),
        "0.70-0.90": (2, 0),
        "0.90-1.00": (2, 2),
        "all": (7, 4),
    }
    for band, (n, agree) in expected.items():
        assert (table[band]["n_lesions"], table[band]["n_agree"]) == (n, agree), band
    assert table["0.00-0.50"]["agreement_rate"] is None
    assert table["all"]["agreement_rate"] == pytest.approx(4 / 7)
    assert table["all"]["model"] == table["all"]["reference_model"] == "knn"
    assert table["all"]["ci_lower"] <= 4 / 7 <= table["all"]["ci_upper"]
    detection = read_typed_table(out / "detection.tsv", "detection")
    b = next(
        r
        for r in detection
        if r["participant_id"] == "sub-01" and r["reference_lesion"] == ids["01"]["B"]
    )
    assert (b["predicted_class"], b["reference_predicted_class"], b["class_agrees"]) == (
        "pancreatic",
        "colorectal",
        False,
    )
    d = next(
        r
        for r in detection
        if r["participant_id"] == "sub-01" and r["reference_lesion"] == ids["01"]["D"]
    )
    assert d["class_agrees"] is None and d["reference_predicted_class"] == "pancreatic"
    assert read_json(out / "classification_agreement.json")["Lesions"]["compared"] == 7
    assert "class_agreement\tall\t7\t" in result.stdout


def test_bad_arguments_are_usage_errors(runner, hand_built):
    root, _ids = hand_built
    with pytest.raises(UsageError, match="--lesions and --reference-lesions go together"):
        evaluate_seg(root / "seg", root / "ref", root / "x", lesions_dir=root / "seg-lesions")
    with pytest.raises(UsageError, match="--predictions needs --lesions"):
        evaluate_seg(
            root / "seg", root / "ref", root / "x", predictions=root, reference_predictions=root
        )
    result = invoke(
        runner, ["evaluate-seg", root / "seg", root / "ref", root / "seg" / "out"], expect=2
    )
    assert "lies inside the input folder" in result.stderr
    result = invoke(
        runner,
        ["evaluate-seg", root / "seg", root / "ref", root / "y", "--dice-bands", "0.7,0.5"],
        expect=2,
    )
    assert "--dice-bands" in result.stderr and not (root / "y").exists()


def test_library_import_is_light():
    code = textwrap.dedent("""
        import sys
        import metcli.evaluation.evaluate_seg, metcli.cli.evaluate_seg
        heavy = [m for m in ("SimpleITK", "matplotlib", "sklearn", "scipy") if m in sys.modules]
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
