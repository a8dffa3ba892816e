"""split-lesions: components, diameters in physical mm, the size rule, levels, outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import pdist

from conftest import invoke, make_image
from metcli.io import schemas
from metcli.io.bids import Entities
from metcli.io.files import read_json, read_tsv
from metcli.lesions.diameters import max_pairwise_distance
from metcli.lesions.label_lesions import label_lesions, split_image
from metcli.lesions.split_lesions import split_lesions
from metcli.lesions.tables import BURDEN_COLUMNS, GROUP_LESION_COLUMNS, LESION_COLUMNS

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


# ----------------------------------------------------------------------------- helpers
def write_seg(
    root: Path,
    sub: str,
    image_or_array,
    *,
    ses=None,
    ce=None,
    spacing=(1, 1, 1),
    origin=(0, 0, 0),
    direction=None,
) -> Path:
    """Write ``sub-<sub>[_ses][_ce]_dseg.nii.gz`` under ``root`` and return its path."""
    ent = Entities(sub=sub, ses=ses, ce=ce, suffix="dseg")
    path = root / ent.relpath()
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image_or_array
    if isinstance(image_or_array, np.ndarray):
        image = make_image(image_or_array, spacing, origin, direction)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def out_files(out: Path, sub: str, ses=None, ce=None) -> dict[str, Path]:
    ent = Entities(sub=sub, ses=ses, ce=ce, desc="lesions", suffix="dseg")
    base = out / ent.relpath()
    stem = base.name[: -len(".nii.gz")]
    return {
        "map": base,
        "tsv": base.with_name(stem + ".tsv"),
        "json": base.with_name(stem + ".json"),
    }


def typed(rows: list[dict], schema: str) -> list[dict]:
    """TSV text back to JSON values by the schema's declared types (independent of metcli)."""
    props = schemas.load_schema(schema)["properties"]
    out = []
    for row in rows:
        record = {}
        for key, text in row.items():
            types = props[key].get("type", [])
            types = [types] if isinstance(types, str) else types
            if text == "n/a":
                record[key] = None
            elif "boolean" in types:
                record[key] = {"true": True, "false": False}[text]
            elif "integer" in types:
                record[key] = int(text)
            elif "number" in types:
                record[key] = float(text)
            else:
                record[key] = text
        out.append(record)
    return out


def check_written(out: Path) -> None:
    """Every TSV and JSON under ``out``, read back, follows its schema."""
    tables = {"lesions.tsv": "lesions", "tumour_burden.tsv": "tumour_burden"}
    seen = 0
    for path in sorted(out.rglob("*")):
        if path.name.startswith(".") and ".part" in path.name:
            raise AssertionError(f"temporary file left behind: {path}")
        if path.suffix == ".tsv":
            schema = tables.get(path.name, "lesion_table")
            rows = read_tsv(path)
            header = path.read_text().splitlines()[0].split("\t")
            schemas.validate_rows(typed(rows, schema), header, schema, where=path)
            seen += 1
        elif path.suffix == ".json":
            schema = "dataset_description" if path.name == "dataset_description.json" else "sidecar"
            schemas.validate(read_json(path), schema, where=path)
            seen += 1
    assert seen


def cube(array, k, j, i, size=2, value=2):
    array[k : k + size, j : j + size, i : i + size] = value


@pytest.fixture
def seg_dir(tmp_path):
    return tmp_path / "seg"


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "derivatives" / "lesions"


# ----------------------------------------------------------------------------- components
def test_corner_and_edge_contacts_follow_the_connectivity():
    corner = np.zeros((6, 6, 6), np.uint8)
    cube(corner, 0, 0, 0)
    cube(corner, 2, 2, 2)  # touches the first cube at one corner only
    edge = np.zeros((6, 6, 6), np.uint8)
    cube(edge, 0, 0, 0)
    cube(edge, 0, 2, 2)  # shares one edge (along k) with the first cube
    expected = {"corner": {6: 2, 18: 2, 26: 1}, "edge": {6: 2, 18: 1, 26: 1}}
    for name, array in (("corner", corner), ("edge", edge)):
        for connectivity, count in expected[name].items():
            lesion_map, rows = label_lesions(
                make_image(array), connectivity=connectivity, min_diameter_mm=0
            )
            assert len(rows) == count, (name, connectivity)
            assert sum(r["voxels"] for r in rows) == 16
            ids = np.unique(sitk.GetArrayFromImage(lesion_map))
            assert ids.tolist() == list(range(count + 1))


def test_connectivity_on_the_command_line(runner, seg_dir, out_dir):
    array = np.zeros((8, 8, 8), np.uint8)
    cube(array, 0, 0, 0, size=3)
    cube(array, 3, 3, 3, size=3)
    write_seg(seg_dir, "01", array)
    invoke(runner, ["split-lesions", seg_dir, out_dir, "--connectivity", "6"])
    assert len(read_tsv(out_files(out_dir, "01")["tsv"])) == 2
    invoke(runner, ["split-lesions", seg_dir, out_dir])
    assert len(read_tsv(out_files(out_dir, "01")["tsv"])) == 1


def test_ids_by_decreasing_volume_and_only_kept_lesions_in_the_map():
    array = np.zeros((5, 20, 20), np.uint8)
    array[2, 2, 2] = 2  # 1 voxel, dropped
    array[1:4, 10:13, 10:16] = 2  # 54 voxels, largest
    array[2, 2:4, 10:17] = 2  # 14 voxels, axial diameter sqrt(37) > 5
    lesion_map, rows = label_lesions(make_image(array))
    assert [r["voxels"] for r in rows] == [54, 14, 1]
    assert [r["index"] for r in rows] == [1, 2, 3]
    assert [r["name"] for r in rows] == ["lesion-001", "lesion-002", "lesion-003"]
    assert [r["kept"] for r in rows] == [True, True, False]
    assert [r["reason"] for r in rows] == [None, None, "below_min_diameter"]
    values = sitk.GetArrayFromImage(lesion_map)
    assert lesion_map.GetPixelID() == sitk.sitkUInt16
    assert values[2, 2, 2] == 0 and values[2, 11, 12] == 1 and values[2, 3, 16] == 2
    assert np.count_nonzero(values == 1) == 54 and np.count_nonzero(values == 2) == 14
    assert set(rows[0]) == set(LESION_COLUMNS)


def test_equal_volumes_are_ordered_by_centroid_z_then_y_then_x():
    array = np.zeros((6, 6, 6), np.uint8)
    array[4, 0, 0] = array[0, 4, 0] = array[0, 0, 4] = array[0, 0, 0] = 2
    _map, rows = label_lesions(make_image(array), min_diameter_mm=0)
    assert [(r["centroid_z_mm"], r["centroid_y_mm"], r["centroid_x_mm"]) for r in rows] == [
        (0, 0, 0),
        (0, 0, 4),
        (0, 4, 0),
        (4, 0, 0),
    ]


# ----------------------------------------------------------------------------- measurements
def test_anisotropic_block_gives_the_hand_computed_values():
    array = np.zeros((6, 10, 20), np.uint8)
    array[1:4, 2:6, 5:15] = 2  # 3 slices x 4 rows x 10 columns
    image = make_image(array, spacing=(0.5, 0.5, 3.0), origin=(10, -20, 5))
    _map, (row,) = label_lesions(image, min_diameter_mm=0)
    assert row["voxels"] == 120
    assert row["volume_mm3"] == pytest.approx(120 * 0.75)
    # In one slice the outermost centres are 9 x 0.5 = 4.5 mm (x) and 3 x 0.5 = 1.5 mm (y) apart.
    assert row["longest_axial_diameter_mm"] == pytest.approx(math.sqrt(4.5**2 + 1.5**2))
    # Across slices 2 x 3 = 6 mm more in z.
    assert row["max_3d_diameter_mm"] == pytest.approx(math.sqrt(4.5**2 + 1.5**2 + 6**2))
    assert row["equivalent_diameter_mm"] == pytest.approx((6 * 90 / math.pi) ** (1 / 3))
    assert (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]) == pytest.approx(
        (10 + 0.5 * 9.5, -20 + 0.5 * 3.5, 5 + 3 * 2)
    )
    assert [row[f"bbox_{a}"] for a in ("i0", "j0", "k0", "i1", "j1", "k1")] == [5, 2, 1, 14, 5, 3]


def test_single_voxel_has_zero_caliper_diameters():
    array = np.zeros((3, 3, 3), np.uint8)
    array[1, 1, 1] = 2
    _map, (row,) = label_lesions(make_image(array, spacing=(0.8, 0.8, 2.0)), min_diameter_mm=0)
    assert row["longest_axial_diameter_mm"] == 0 and row["max_3d_diameter_mm"] == 0
    assert row["equivalent_diameter_mm"] == pytest.approx((6 * 1.28 / math.pi) ** (1 / 3))


def test_diagonal_lesion_uses_the_longest_slice_not_the_extent():
    array = np.zeros((4, 8, 8), np.uint8)
    for n in range(5):
        array[1, n, n] = 2  # diagonal in one slice: 4 * sqrt(2) mm
    array[2, 0, 0] = 2  # one more voxel in the next slice
    _map, (row,) = label_lesions(
        make_image(array, spacing=(1, 1, 2)), connectivity=26, min_diameter_mm=0
    )
    assert row["longest_axial_diameter_mm"] == pytest.approx(4 * math.sqrt(2))
    assert row["max_3d_diameter_mm"] == pytest.approx(math.sqrt(32 + 4))


def test_flipped_axes_give_the_same_physical_lesions():
    array = np.zeros((5, 12, 14), np.uint8)
    array[1:3, 2:5, 1:9] = 2
    array[3, 8:11, 9:12] = 2
    array[1:4, 8, 2] = 2
    array[1, 8, 5:8] = 2  # 3 voxels, like the one above: ordered by centroid
    spacing = (0.7, 0.9, 2.5)
    plain = make_image(array, spacing, origin=(-5, 3, 7))
    # The same voxels stored with x and z reversed: direction -1 on those axes, origins moved
    # so that every voxel centre lands on the same physical point.
    nz, _ny, nx = array.shape
    flipped = make_image(
        array[::-1, :, ::-1],
        spacing,
        origin=(-5 + (nx - 1) * 0.7, 3, 7 + (nz - 1) * 2.5),
        direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1),
    )
    _m1, rows1 = label_lesions(plain, min_diameter_mm=0)
    _m2, rows2 = label_lesions(flipped, min_diameter_mm=0)
    assert len(rows1) == len(rows2) == 4
    assert [r["voxels"] for r in rows1] == [48, 9, 3, 3]
    assert rows1[2]["centroid_z_mm"] < rows1[3]["centroid_z_mm"]
    for a, b in zip(rows1, rows2):
        for key in LESION_COLUMNS:
            if key.startswith("bbox_"):
                continue
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
    # The bounding boxes are in each image's own index space.
    assert rows2[0]["bbox_i0"] == nx - 1 - rows1[0]["bbox_i1"]


def test_axial_slices_follow_the_direction_matrix():
    # Index axis i runs along the patient's z axis (3 mm), j along x and k along y (0.5 mm).
    array = np.zeros((6, 12, 5), np.uint8)  # [k, j, i]
    array[0:4, 1:11, 1:4] = 2  # 3 slices (i) x 10 (j) x 4 (k)
    direction = (0, 1, 0, 0, 0, 1, 1, 0, 0)
    image = make_image(array, spacing=(3.0, 0.5, 0.5), direction=direction)
    result = split_image(image, min_diameter_mm=0)
    (row,) = result.rows
    assert result.slice_axis == 0
    assert row["longest_axial_diameter_mm"] == pytest.approx(math.sqrt(4.5**2 + 1.5**2))
    assert row["max_3d_diameter_mm"] == pytest.approx(math.sqrt(4.5**2 + 1.5**2 + 36))
    centroid = image.TransformContinuousIndexToPhysicalPoint((2.0, 5.5, 1.5))
    assert (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]) == pytest.approx(
        centroid
    )


def test_farthest_pair_matches_every_pair_on_random_point_sets():
    rng = np.random.default_rng(7)
    for trial in range(60):
        mask = rng.random((5, 6, 7)) < rng.uniform(0.05, 0.7)
        points = np.argwhere(mask).astype(float) * rng.uniform(0.3, 3.0, 3)
        if trial % 3 == 0:
            points[:, 0] = 1.5  # coplanar
        if trial % 5 == 0:
            points[:, :2] = 0.0  # collinear
        expected = pdist(points).max() if len(points) > 1 else 0.0
        assert max_pairwise_distance(points) == pytest.approx(expected, abs=1e-9)


def test_diameters_match_brute_force_on_a_random_oblique_blob():
    rng = np.random.default_rng(3)
    array = (rng.random((7, 9, 11)) < 0.45).astype(np.uint8) * 2
    angle = 0.3
    c, s = math.cos(angle), math.sin(angle)
    direction = (c, -s, 0, s, c, 0, 0, 0, 1)  # rotated about z: slices stay axial
    image = make_image(array, spacing=(0.6, 0.9, 1.7), origin=(4, 5, 6), direction=direction)
    _map, rows = label_lesions(image, min_diameter_mm=0)
    labels = sitk.GetArrayFromImage(_map)
    for row in rows:
        where = np.argwhere(labels == row["index"])  # [k, j, i]
        points = np.array(
            [image.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in where]
        )
        expected_3d = pdist(points).max() if len(points) > 1 else 0.0
        axial = 0.0
        for k in np.unique(where[:, 0]):
            in_slice = points[where[:, 0] == k]
            if len(in_slice) > 1:
                axial = max(axial, pdist(in_slice).max())
        assert row["max_3d_diameter_mm"] == pytest.approx(expected_3d, abs=1e-9)
        assert row["longest_axial_diameter_mm"] == pytest.approx(axial, abs=1e-9)


# ----------------------------------------------------------------------------- size rule
def test_a_4_mm_lesion_is_dropped_at_5_mm_and_kept_at_3(runner, seg_dir, out_dir):
    array = np.zeros((3, 8, 8), np.uint8)
    array[1, 3, 1:6] = 2  # 5 voxels in a row at 1 mm: centres 4 mm apart
    array[0, 0:2, 0:2] = 1
    write_seg(seg_dir, "01", array)
    files = out_files(out_dir, "01")
    invoke(runner, ["split-lesions", seg_dir, out_dir])
    (row,) = read_tsv(files["tsv"])
    assert row["longest_axial_diameter_mm"] == "4"
    assert (row["kept"], row["reason"]) == ("false", "below_min_diameter")
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(files["map"]))).any()

    invoke(runner, ["split-lesions", seg_dir, out_dir, "--min-diameter-mm", "3"])
    (row,) = read_tsv(files["tsv"])
    assert (row["kept"], row["reason"]) == ("true", "n/a")
    lesion_map = sitk.GetArrayFromImage(sitk.ReadImage(str(files["map"])))
    assert np.count_nonzero(lesion_map == 1) == 5 and lesion_map.max() == 1

    invoke(runner, ["split-lesions", seg_dir, out_dir, "--min-diameter-mm", "4"])
    assert read_tsv(files["tsv"])[0]["kept"] == "true"  # equal to the threshold is kept
    invoke(
        runner,
        [
            "split-lesions",
            seg_dir,
            out_dir,
            "--min-diameter-mm",
            "3",
            "--diameter-rule",
            "equivalent",
        ],
    )
    assert read_tsv(files["tsv"])[0]["kept"] == "false"  # 5 mm^3 -> 2.12 mm
    check_written(out_dir)


# ----------------------------------------------------------------------------- folders
def test_empty_lesion_label_gives_a_header_only_table(runner, seg_dir, out_dir):
    array = np.zeros((4, 5, 6), np.uint8)
    array[1:3, 1:4, 1:5] = 1
    write_seg(seg_dir, "01", array, ce="portal")
    result = invoke(runner, ["split-lesions", seg_dir, out_dir])
    assert "1 done" in result.stderr
    files = out_files(out_dir, "01", ce="portal")
    assert files["tsv"].read_text() == "\t".join(LESION_COLUMNS) + "\n"
    lesion_map = sitk.ReadImage(str(files["map"]))
    assert lesion_map.GetPixelID() == sitk.sitkUInt16 and lesion_map.GetSize() == (6, 5, 4)
    assert not sitk.GetArrayFromImage(lesion_map).any()
    assert read_tsv(out_dir / "lesions.tsv") == []
    (burden,) = read_tsv(out_dir / "tumour_burden.tsv")
    assert burden == {
        "participant_id": "sub-01",
        "session": "n/a",
        "phase": "portal",
        "n_components": "0",
        "n_lesions": "0",
        "lesion_volume_mm3": "0",
        "kept_lesion_volume_mm3": "0",
        "liver_volume_mm3": "24",
        "burden": "0",
    }
    check_written(out_dir)


def test_outputs_group_tables_and_tumour_burden(runner, seg_dir, out_dir):
    array = np.zeros((6, 10, 10), np.uint8)
    array[0:6, 0:10, 0:10] = 1  # 600 voxels of liver ...
    array[1:4, 1:7, 1:7] = 2  # ... minus a 108-voxel lesion
    array[5, 9, 9] = 2  # and a 1-voxel one, dropped
    spacing = (0.8, 0.8, 2.0)  # 1.28 mm^3 voxels; lesion-001 5.66 mm across
    write_seg(seg_dir, "01", array, ses="1", ce="portal", spacing=spacing)
    no_liver = np.zeros((3, 8, 8), np.uint8)
    no_liver[1, 1:7, 1:7] = 2
    write_seg(seg_dir, "02", no_liver)
    invoke(runner, ["split-lesions", seg_dir, out_dir])

    files = out_files(out_dir, "01", ses="1", ce="portal")
    assert all(p.is_file() for p in files.values())
    sidecar = read_json(files["json"])
    assert sidecar["Sources"] == ["bids:seg:sub-01/ses-1/anat/sub-01_ses-1_ce-portal_dseg.nii.gz"]
    assert sidecar["Provenance"]["settings"] == {
        "min_diameter_mm": 5.0,
        "diameter_rule": "axial",
        "connectivity": 26,
        "lesion_label": 2,
        "liver_label": 1,
    }
    assert {o["name"] for o in sidecar["Provenance"]["outputs"]} == {
        files["map"].name,
        files["tsv"].name,
    }
    assert sidecar["LiverLabelVoxels"] == 600 - 109 and sidecar["LesionLabelVoxels"] == 109
    assert str(out_dir.parent) not in files["json"].read_text()

    lesions = read_tsv(out_dir / "lesions.tsv")
    assert list(lesions[0]) == GROUP_LESION_COLUMNS
    assert [
        (r["participant_id"], r["session"], r["phase"], r["name"], r["kept"]) for r in lesions
    ] == [
        ("sub-01", "1", "portal", "lesion-001", "true"),
        ("sub-01", "1", "portal", "lesion-002", "false"),
        ("sub-02", "n/a", "n/a", "lesion-001", "true"),
    ]
    burden = {r["participant_id"]: r for r in read_tsv(out_dir / "tumour_burden.tsv")}
    assert list(burden["sub-01"]) == BURDEN_COLUMNS
    one = burden["sub-01"]
    assert (one["n_components"], one["n_lesions"]) == ("2", "1")
    assert float(one["lesion_volume_mm3"]) == pytest.approx(109 * 1.28)
    assert float(one["kept_lesion_volume_mm3"]) == pytest.approx(108 * 1.28)
    assert float(one["liver_volume_mm3"]) == pytest.approx(600 * 1.28)
    assert float(one["burden"]) == pytest.approx(109 / 600)
    assert (burden["sub-02"]["liver_volume_mm3"], burden["sub-02"]["burden"]) == ("n/a", "n/a")
    description = read_json(out_dir / "dataset_description.json")
    assert description["DatasetType"] == "derivative"
    assert description["DatasetLinks"] == {"seg": "../../seg"}
    check_written(out_dir)


def test_participant_then_group_level(runner, seg_dir, out_dir):
    array = np.zeros((4, 10, 10), np.uint8)
    array[1:3, 1:8, 1:8] = 2
    write_seg(seg_dir, "01", array)
    write_seg(seg_dir, "02", array)
    invoke(runner, ["split-lesions", seg_dir, out_dir, "--participant-label", "01"])
    assert out_files(out_dir, "01")["tsv"].is_file()
    assert not (out_dir / "sub-02").exists()
    assert not (out_dir / "lesions.tsv").exists() and not (out_dir / "tumour_burden.tsv").exists()

    result = invoke(runner, ["split-lesions", seg_dir, out_dir, "--level", "group"], expect=1)
    assert "run the participant level first" in result.stderr and "sub-02" in result.stderr
    assert not (out_dir / "lesions.tsv").exists()

    invoke(runner, ["split-lesions", seg_dir, out_dir, "--participant-label", "sub-02"])
    before = out_files(out_dir, "01")["tsv"].stat().st_mtime_ns
    invoke(runner, ["split-lesions", seg_dir, out_dir, "--level", "group"])
    assert out_files(out_dir, "01")["tsv"].stat().st_mtime_ns == before  # read, not redone
    assert [r["participant_id"] for r in read_tsv(out_dir / "lesions.tsv")] == ["sub-01", "sub-02"]
    check_written(out_dir)

    # The group level refuses tables made with other settings than the ones it is given.
    result = invoke(
        runner,
        ["split-lesions", seg_dir, out_dir, "--level", "group", "--min-diameter-mm", "2"],
        expect=1,
    )
    assert "with these settings" in result.stderr


def test_skip_rule(runner, seg_dir, out_dir):
    array = np.zeros((4, 10, 10), np.uint8)
    array[1:3, 1:8, 1:8] = 2
    write_seg(seg_dir, "01", array)
    files = out_files(out_dir, "01")
    first = invoke(runner, ["split-lesions", seg_dir, out_dir])
    assert "1 done, 0 skipped" in first.stderr
    stamp = {k: p.stat().st_mtime_ns for k, p in files.items()}
    again = invoke(runner, ["split-lesions", seg_dir, out_dir])
    assert "0 done, 1 skipped" in again.stderr
    assert {k: p.stat().st_mtime_ns for k, p in files.items()} == stamp
    changed = invoke(runner, ["split-lesions", seg_dir, out_dir, "--min-diameter-mm", "9"])
    assert "1 done, 0 skipped" in changed.stderr
    assert read_json(files["json"])["Provenance"]["settings"]["min_diameter_mm"] == 9.0
    assert read_tsv(files["tsv"])[0]["kept"] == "false"  # 6 mm x 6 mm square: 8.49 mm diagonal < 9
    forced = invoke(
        runner, ["split-lesions", seg_dir, out_dir, "--min-diameter-mm", "9", "--overwrite"]
    )
    assert "1 done, 0 skipped" in forced.stderr
    array[1, 9, 9] = 2  # the segmentation changed: redone
    write_seg(seg_dir, "01", array)
    assert (
        "1 done"
        in invoke(runner, ["split-lesions", seg_dir, out_dir, "--min-diameter-mm", "9"]).stderr
    )
    assert len(read_tsv(files["tsv"])) == 2


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "problem,message",
    [
        ("corrupt", "cannot read the segmentation"),
        ("2d", "2D"),
        ("fractional", "non-integer"),
        ("other labels", "label(s) 3, 7 besides background"),
    ],
)
def test_a_bad_segmentation_fails_only_its_participant(runner, seg_dir, out_dir, problem, message):
    good = np.zeros((4, 10, 10), np.uint8)
    good[1:3, 1:8, 1:8] = 2
    write_seg(seg_dir, "01", good)
    bad = Entities(sub="02", suffix="dseg").relpath()
    bad_path = seg_dir / bad
    bad_path.parent.mkdir(parents=True)
    if problem == "corrupt":
        write_seg(seg_dir, "02", good)
        data = bad_path.read_bytes()
        bad_path.write_bytes(data[: len(data) // 2])
    elif problem == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.full((10, 10), 2, np.uint8)), str(bad_path))
    elif problem == "other labels":
        other = good.copy()
        other[0, 0, :3] = 3
        other[3, 9, 9] = 7
        write_seg(seg_dir, "02", other)
    else:
        write_seg(seg_dir, "02", good.astype(np.float32) * 0.75)
    result = invoke(runner, ["split-lesions", seg_dir, out_dir], expect=3)
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())  # rich wraps long lines at the terminal's width
    assert f"{bad_path.name}: " in text and message in text, result.stderr
    assert "1 of 2 participant(s) failed: sub-02" in result.stderr
    assert out_files(out_dir, "01")["tsv"].is_file()
    assert not (out_dir / "sub-02").exists()
    assert not (out_dir / "lesions.tsv").exists()  # no cohort table with a participant missing
    # The rest of the cohort can still be summarised, leaving the bad one out.
    invoke(
        runner, ["split-lesions", seg_dir, out_dir, "--level", "group", "--participant-label", "01"]
    )
    assert (out_dir / "lesions.tsv").is_file()


def test_a_participant_without_segmentation_fails(runner, seg_dir, out_dir):
    array = np.zeros((4, 10, 10), np.uint8)
    write_seg(seg_dir, "01", array)
    (seg_dir / "sub-02" / "anat").mkdir(parents=True)
    result = invoke(runner, ["split-lesions", seg_dir, out_dir], expect=3)
    assert "sub-02" in result.stderr and "_dseg.nii.gz found" in result.stderr


def test_unknown_participant_is_a_usage_error_listing_the_valid_ones(runner, seg_dir, out_dir):
    array = np.zeros((3, 4, 4), np.uint8)
    write_seg(seg_dir, "01", array)
    write_seg(seg_dir, "02", array)
    result = invoke(
        runner, ["split-lesions", seg_dir, out_dir, "--participant-label", "03"], expect=2
    )
    assert "'03' is not a participant" in result.stderr and "01, 02" in result.stderr
    assert not out_dir.exists()


def test_output_inside_the_input_is_refused(runner, seg_dir):
    write_seg(seg_dir, "01", np.zeros((3, 4, 4), np.uint8))
    result = invoke(runner, ["split-lesions", seg_dir, seg_dir / "lesions"], expect=2)
    assert "inside the input folder" in result.stderr
    result = invoke(runner, ["split-lesions", seg_dir, seg_dir], expect=2)
    assert "is the input folder" in result.stderr


def test_library_checks_its_settings(seg_dir, out_dir):
    from metcli.core.errors import UsageError

    write_seg(seg_dir, "01", np.zeros((3, 4, 4), np.uint8))
    bad = [
        {"min_diameter_mm": -1},
        {"diameter_rule": "long"},
        {"connectivity": 8},
        {"lesion_label": 1},
        {"liver_label": 0},
    ]
    for kwargs in bad:
        with pytest.raises(UsageError):
            split_lesions(seg_dir, out_dir, **kwargs)
    assert not out_dir.exists()
    report = split_lesions(seg_dir, out_dir, participants=["01"], connectivity=18)
    assert report.done == ["sub-01"] and not (out_dir / "lesions.tsv").exists()


def test_the_group_schema_repeats_the_lesion_table():
    row = schemas.load_schema("lesion_table")
    group = schemas.load_schema("lesions")
    assert list(row["properties"]) == list(LESION_COLUMNS)
    assert list(group["properties"]) == GROUP_LESION_COLUMNS
    for key, spec in row["properties"].items():
        assert group["properties"][key] == spec
    assert list(schemas.load_schema("tumour_burden")["properties"]) == BURDEN_COLUMNS


def test_other_label_values_are_named_with_the_options_that_fix_them(runner, seg_dir, out_dir):
    """A segmentation labelled 5 (liver) and 7 (lesion) is refused with the defaults, which
    would drop both and report no burden, and split with --liver-label 5 --lesion-label 7."""
    array = np.zeros((4, 10, 10), np.uint8)
    array[:, 1:9, 1:9] = 5
    array[1:3, 2:5, 2:5] = 7
    write_seg(seg_dir, "01", array)
    result = invoke(runner, ["split-lesions", seg_dir, out_dir], expect=1)
    assert "label(s) 5, 7 besides background" in result.stderr
    assert "--lesion-label" in result.stderr and "--label-map" in result.stderr
    assert not (out_dir / "sub-01").exists()
    invoke(runner, ["split-lesions", seg_dir, out_dir, "--liver-label", "5", "--lesion-label", "7"])
    rows = read_tsv(out_files(out_dir, "01")["tsv"])
    assert len(rows) == 1 and int(rows[0]["voxels"]) == 2 * 3 * 3
