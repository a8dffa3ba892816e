"""extract: per-lesion radiomics, parameters, failures, geometry, levels, the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import invoke, make_image
from metcli.core.errors import GeometryError, UsageError
from metcli.io import schemas
from metcli.io.bids import Entities
from metcli.io.files import read_json, read_tsv
from metcli.io.participants import write_participants
from metcli.lesions.split_lesions import split_lesions
from metcli.radiomics.acquisition import extract_acquisition
from metcli.radiomics.columns import RegionResult, table_columns
from metcli.radiomics.extract import extract
from metcli.radiomics.features import extract_features
from metcli.radiomics.params import PRESETS, load_params, params_from_dict

SPACING = (0.8, 0.8, 2.0)  # x, y, z (SimpleITK order)
ORIGIN = (10.0, -20.0, 5.0)
FIRSTORDER = {"featureClass": {"firstorder": None}}


# ----------------------------------------------------------------------------- helpers
def ellipsoid(shape, centre, radius_mm, spacing=SPACING) -> np.ndarray:
    """A boolean ellipsoid in an array [z, y, x] with physical radius (mm)."""
    z, y, x = np.indices(shape)
    sx, sy, sz = spacing
    return (
        ((z - centre[0]) * sz) ** 2 + ((y - centre[1]) * sy) ** 2 + ((x - centre[2]) * sx) ** 2
    ) <= radius_mm**2


def scene(seed=0, *, single_voxel=False, no_lesion=False):
    """(ct int16, dseg uint8) arrays [z, y, x]: a liver with three separate lesions."""
    rng = np.random.default_rng(seed)
    shape = (20, 48, 44)
    ct = rng.normal(60, 15, shape)
    dseg = np.zeros(shape, np.uint8)
    dseg[3:17, 5:43, 4:40] = 1
    if not no_lesion:
        for centre, radius, hu in (
            ((10, 16, 13), 5.5, 20),
            ((9, 33, 28), 4.5, 120),
            ((6, 34, 8), 3.0, -10),
        ):
            lesion = ellipsoid(shape, centre, radius)
            dseg[lesion] = 2
            ct[lesion] = rng.normal(hu, 25, int(lesion.sum()))
    if single_voxel:
        dseg[14, 40, 36] = 2
        ct[14, 40, 36] = 300
    return ct.astype(np.int16), dseg


def write(path: Path, array, *, spacing=SPACING, origin=ORIGIN, direction=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_image(array, spacing, origin, direction), str(path), useCompression=True)
    return path


def dataset(root: Path, subjects: dict[str, dict], *, phases=("portal",)) -> dict[str, Path]:
    """raw/ (CTs, participants.tsv), seg/ (dseg) and lesions/ (split-lesions' output)."""
    raw, seg, lesions = root / "raw", root / "seg", root / "lesions"
    write_participants(
        raw, [{"participant_id": f"sub-{s}", "primary": "colorectal"} for s in subjects]
    )
    for sub, options in subjects.items():
        for number, phase in enumerate(phases):
            ct, dseg = scene(seed=int(sub) * 10 + number, **options)
            write(raw / Entities(sub=sub, ce=phase, suffix="ct").relpath(), ct)
            write(seg / Entities(sub=sub, ce=phase, suffix="dseg").relpath(), dseg)
    split_lesions(seg, lesions, min_diameter_mm=0)
    return {"raw": raw, "seg": seg, "lesions": lesions, "out": root / "out"}


def features_table(out: Path, sub: str, phase="portal") -> Path:
    return (
        out
        / Entities(
            sub=sub, ce=phase, desc="radiomics", suffix="features", extension=".tsv"
        ).relpath()
    )


def lesion_files(lesions: Path, sub: str, phase="portal") -> tuple[Path, Path]:
    ent = Entities(sub=sub, ce=phase, desc="lesions", suffix="dseg")
    image = lesions / ent.relpath()
    return image, image.with_name(image.name[: -len(".nii.gz")] + ".tsv")


def typed(path: Path) -> tuple[list[str], list[dict]]:
    """A features table read back with types from the schema's patterns (independent of metcli)."""
    header = path.read_text().splitlines()[0].split("\t")
    rows = []
    for row in read_tsv(path):
        record = {}
        for key, text in row.items():
            if text == "n/a":
                record[key] = None
            elif key == "lesion_id" or key.endswith("Num"):
                record[key] = int(text)
            elif "original_" in key:
                record[key] = float(text)
            else:
                record[key] = text
        rows.append(record)
    return header, rows


def pyradiomics_whole_image(image, mask_array, settings: dict, classes: dict) -> dict:
    """pyradiomics itself on the whole image (no metcli code), for comparison."""
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.CRITICAL)
    mask = sitk.GetImageFromArray(mask_array.astype(np.uint8))
    mask.CopyInformation(image)
    extractor = featureextractor.RadiomicsFeatureExtractor(**settings)
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(**classes)
    return {
        k: float(v) for k, v in extractor.execute(image, mask).items() if k.startswith("original_")
    }


def max_relative_difference(ours: dict, theirs: dict) -> float:
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))[:5]
    worst = 0.0
    for key, value in theirs.items():
        if value == 0:
            worst = max(worst, abs(ours[key]))
        else:
            worst = max(worst, abs(ours[key] / value - 1))
    return worst


# ----------------------------------------------------------------------------- parameters
def test_presets_load_and_differ():
    resolved = {name: load_params(name) for name in PRESETS}
    assert len({p.sha256 for p in resolved.values()}) == len(PRESETS)
    study = resolved["study"]
    assert study.settings["binWidth"] == 25.0 and not study.resamples
    assert list(study.feature_classes)[:2] == ["shape", "shape2D"]
    assert set(study.feature_classes) == {
        "shape",
        "shape2D",
        "firstorder",
        "glcm",
        "glrlm",
        "glszm",
        "gldm",
        "ngtdm",
    }
    recommended = resolved["recommended"]
    assert recommended.settings["resampledPixelSpacing"] == [1.0, 1.0, 1.0]
    assert recommended.settings["resegmentRange"] == [-100.0, 400.0]
    assert resolved["ibsi"].settings["binWidth"] == 1.0


def test_resolution_is_canonical_and_metcli_owns_label():
    a = params_from_dict({"setting": {"binWidth": 25, "label": 3}})
    b = params_from_dict({"setting": {"binWidth": 25.0}})
    assert a.sha256 == b.sha256
    assert a.settings["label"] == 1 and a.settings["additionalInfo"] is False
    c = params_from_dict({"setting": {"binWidth": 10}})
    assert c.sha256 != a.sha256


@pytest.mark.parametrize(
    "text, needle",
    [
        ("setting:\n  binWidht: 25\n", "unknown setting 'binWidht' in setting"),
        (
            "setting:\n  binWidth: 25\nimageType:\n  Original: {binwidth: 3}\n",
            "unknown setting 'binwidth' in imageType/Original",
        ),
        ("featureClass:\n  glcmm:\n", "glcmm"),
        ("featureClass:\n  glcm: [Contrastt]\n", "Contrastt"),
        ("setting:\n  binWidth: wide\n", "binWidth"),
        ("settings:\n  binWidth: 25\n", "unknown top-level key 'settings'"),
        ("imageType:\n  LoG: {sigma: [1.0]}\n", "image type 'LoG' is not supported"),
        ("voxelSetting:\n  kernelRadius: 2\n", "voxelSetting"),
        ("setting: [binWidth\n", "not valid YAML"),
    ],
)
def test_bad_parameter_files_are_one_line_errors_naming_key_and_file(tmp_path, text, needle):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_params(path)
    message = info.value.one_line()
    assert needle in message and str(path) in message and "\n" not in message


def test_unknown_preset_is_a_usage_error():
    with pytest.raises(UsageError, match="neither a file nor a preset"):
        load_params("studdy")


# ----------------------------------------------------------------------------- one region
def test_crop_gives_pyradiomics_whole_image_values():
    """metcli's crop-per-lesion equals pyradiomics run on the whole image (no resampling)."""
    ct, dseg = scene(3)
    image = make_image(ct, SPACING, ORIGIN)
    lesion = (dseg == 2) & (np.indices(dseg.shape)[1] < 24)
    mask = make_image(lesion.astype(np.uint8), SPACING, ORIGIN)
    params = load_params("study")
    result = extract_features(image, mask, params)
    assert result.ok, result.message
    classes = {c: [] for c in params.feature_classes if c != "shape2D"}
    theirs = pyradiomics_whole_image(image, lesion, {"binWidth": 25}, classes)
    assert len(theirs) == 107
    assert max_relative_difference(result.features, theirs) < 1e-9


def test_crop_with_resampling_matches_pyradiomics_whole_image():
    """The resampling grid metcli lays over a crop is pyradiomics' whole-image grid."""
    rng = np.random.default_rng(7)
    shape = (30, 90, 96)
    smooth = rng.normal(0, 1, shape)
    from scipy import ndimage

    ct = (ndimage.gaussian_filter(smooth, 1.5) * 400 + 50).astype(np.float32)
    spacing = (0.71, 0.71, 2.5)
    image = make_image(ct, spacing, ORIGIN, (1, 0, 0, 0, -1, 0, 0, 0, 1))
    lesion = ellipsoid(shape, (14, 61, 37), 6.0, spacing)
    mask = make_image(lesion.astype(np.uint8), spacing, ORIGIN, (1, 0, 0, 0, -1, 0, 0, 0, 1))
    settings = {
        "binWidth": 25,
        "resampledPixelSpacing": [1, 1, 1],
        "interpolator": "sitkBSpline",
        "resegmentRange": [-300, 400],
    }
    classes = {"firstorder": [], "shape": [], "glcm": [], "glszm": []}
    result = extract_features(image, mask, {"setting": settings, "featureClass": classes})
    assert result.ok, result.message
    assert result.diagnostics["diagnostics_Mask-interpolated_VoxelNum"] > lesion.sum()
    assert (
        result.diagnostics["diagnostics_Mask-resegmented_VoxelNum"]
        <= result.diagnostics["diagnostics_Mask-interpolated_VoxelNum"]
    )
    theirs = pyradiomics_whole_image(image, lesion, settings, classes)
    assert max_relative_difference(result.features, theirs) < 1e-6


def test_shape2d_is_the_largest_axial_slice():
    ct, dseg = scene(4)
    lesion = (dseg == 2) & (np.indices(dseg.shape)[1] < 24)
    image = make_image(ct, SPACING, ORIGIN)
    result = extract_features(
        image,
        make_image(lesion.astype(np.uint8), SPACING, ORIGIN),
        {"featureClass": {"shape2D": None}},
    )
    assert result.ok, result.message
    counts = lesion.sum(axis=(1, 2))
    largest = int(np.argmax(counts))
    one_slice = np.zeros_like(lesion)
    one_slice[largest] = lesion[largest]
    theirs = pyradiomics_whole_image(
        image, one_slice, {"force2D": True, "force2Ddimension": 0}, {"shape2D": []}
    )
    assert max_relative_difference(result.features, theirs) < 1e-9
    area = counts[largest] * SPACING[0] * SPACING[1]
    assert result.features["original_shape2D_PixelSurface"] == pytest.approx(area)


def test_shape2d_follows_the_patient_axis_of_a_permuted_image():
    """With the image stored z-y-x permuted, the axial slice is still the patient's."""
    ct, dseg = scene(5)
    lesion = ((dseg == 2) & (np.indices(dseg.shape)[1] < 24)).astype(np.uint8)
    image = make_image(ct, SPACING, ORIGIN)
    mask = make_image(lesion, SPACING, ORIGIN)
    expected = extract_features(image, mask, {"featureClass": {"shape2D": None}})

    # same scene, array axes swapped: i <-> k, direction says so
    def swapped(array):
        return make_image(
            np.ascontiguousarray(np.swapaxes(array, 0, 2)),
            (SPACING[2], SPACING[1], SPACING[0]),
            ORIGIN,
            (0, 0, 1, 0, 1, 0, 1, 0, 0),
        )

    result = extract_features(swapped(ct), swapped(lesion), {"featureClass": {"shape2D": None}})
    assert result.ok and expected.ok
    for key in ("original_shape2D_PixelSurface", "original_shape2D_Perimeter"):
        assert result.features[key] == pytest.approx(expected.features[key], rel=1e-9)


def test_single_voxel_region_fails_explicitly():
    ct = np.full((6, 7, 8), 40, np.int16)
    mask = np.zeros(ct.shape, np.uint8)
    mask[3, 3, 3] = 1
    result = extract_features(make_image(ct), make_image(mask), "study")
    assert result.status == "failed:single_voxel"
    assert "1 segmented voxel" in result.message
    assert result.features and all(v is None for v in result.features.values())
    assert result.diagnostics["diagnostics_Mask-original_VoxelNum"] == 1


def test_mask_on_another_grid_names_both_files():
    ct = np.zeros((6, 7, 8), np.int16)
    mask = np.ones((6, 7, 8), np.uint8)
    with pytest.raises(GeometryError) as info:
        extract_features(
            make_image(ct),
            make_image(mask, spacing=(1, 1, 1.5)),
            FIRSTORDER,
            image_path="ct.nii.gz",
            mask_path="lesions.nii.gz",
        )
    assert "ct.nii.gz" in str(info.value) and "lesions.nii.gz" in str(info.value)


# ----------------------------------------------------------------------------- command line
def test_cli_tables_rows_values_and_provenance(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}, "002": {}})
    result = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]])
    assert "lesions: 6 extracted, 0 failed" in result.stderr
    params = load_params("study")
    columns = table_columns(params)
    for sub in ("001", "002"):
        table = features_table(paths["out"], sub)
        header, rows = typed(table)
        assert header == columns
        schemas.validate_rows(rows, header, "features", where=table)
        lesion_map, lesion_table = lesion_files(paths["lesions"], sub)
        kept = [int(r["index"]) for r in read_tsv(lesion_table) if r["kept"] == "true"]
        assert [r["lesion_id"] for r in rows] == kept == [1, 2, 3]
        assert all(r["status"] == "ok" and r["message"] is None for r in rows)
        # values: pyradiomics on the whole CT with this lesion's mask (no metcli code)
        ct = sitk.ReadImage(str(paths["raw"] / Entities(sub=sub, ce="portal").relpath()))
        ids = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_map)))
        theirs = pyradiomics_whole_image(
            ct, ids == 2, {"binWidth": 25}, {"firstorder": [], "glcm": [], "shape": []}
        )
        assert max_relative_difference(rows[1], theirs) < 1e-9
        assert rows[1]["diagnostics_Mask-original_VoxelNum"] == int((ids == 2).sum())
        sidecar = read_json(table.with_suffix("").with_suffix(".json"))
        prov = sidecar["Provenance"]
        assert sidecar["extraction_settings_sha256"] == prov["settings_sha256"]
        assert prov["settings"]["pyradiomics"] == params.as_dict()
        assert prov["settings"]["pyradiomics_sha256"] == params.sha256
        assert {u.split(":")[1] for u in sidecar["Sources"]} == {"raw", "lesions"}
    header, rows = typed(paths["out"] / "features.tsv")
    assert header == columns and len(rows) == 6
    assert [r["participant_id"] for r in rows] == ["sub-001"] * 3 + ["sub-002"] * 3
    assert (
        read_json(paths["out"] / "features.json")["extraction_settings_sha256"]
        == sidecar["extraction_settings_sha256"]
    )


def test_cli_single_voxel_lesion_fails_but_participant_succeeds(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {"single_voxel": True}})
    result = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]])
    assert "lesions: 4 extracted, 1 failed" in result.stderr
    header, rows = typed(features_table(paths["out"], "001"))
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(failed) == 1 and failed[0]["status"] == "failed:single_voxel"
    assert failed[0]["lesion_id"] == 4 and failed[0]["message"]
    feature_columns = [c for c in header if c.startswith("original_")]
    assert all(failed[0][c] is None for c in feature_columns)
    text = features_table(paths["out"], "001").read_text().splitlines()[-1].split("\t")
    values = dict(zip(header, text))
    assert all(values[c] == "n/a" for c in feature_columns)  # never 0
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r[c] is not None for r in ok for c in feature_columns)


def test_cli_lesion_map_without_lesions_gives_zero_rows(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {"no_lesion": True}})
    result = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]])
    assert "lesions: 0 extracted" in result.stderr
    table = features_table(paths["out"], "001")
    assert table.read_text().splitlines() == ["\t".join(table_columns(load_params("study")))]
    assert len(read_tsv(paths["out"] / "features.tsv")) == 0


def test_cli_grid_mismatch_names_both_files_and_flips_are_handled(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}, "002": {}, "003": {}})
    # 002: the lesion map shifted by 3 mm: another grid
    lesion_map, _ = lesion_files(paths["lesions"], "002")
    shifted = sitk.ReadImage(str(lesion_map))
    shifted.SetOrigin((ORIGIN[0] + 3.0, ORIGIN[1], ORIGIN[2]))
    sitk.WriteImage(shifted, str(lesion_map))
    # 003: the lesion map stored with its y axis flipped: the same grid, handled
    lesion_map, _ = lesion_files(paths["lesions"], "003")
    flipped = sitk.Flip(sitk.ReadImage(str(lesion_map)), [False, True, False])
    assert flipped.GetDirection() != sitk.ReadImage(str(lesion_map)).GetDirection()
    sitk.WriteImage(flipped, str(lesion_map))
    result = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]], expect=3)
    assert "sub-002_ce-portal_desc-lesions_dseg.nii.gz" in result.stderr
    assert "sub-002_ce-portal_ct.nii.gz" in result.stderr
    assert "do not describe the same physical grid" in result.stderr
    assert not features_table(paths["out"], "002").exists()
    _, rows = typed(features_table(paths["out"], "003"))
    assert [r["status"] for r in rows] == ["ok"] * 3
    # the flipped map gives the values of the unflipped scene
    reference = tmp_path / "reference"
    again = dataset(reference, {"003": {}})
    invoke(
        runner,
        ["extract", again["raw"], again["lesions"], again["out"], "--participant-label", "003"],
    )
    _, expected = typed(features_table(again["out"], "003"))
    for ours, theirs in zip(rows, expected):
        assert ours["original_firstorder_Mean"] == theirs["original_firstorder_Mean"]
        assert ours["original_glcm_Contrast"] == pytest.approx(theirs["original_glcm_Contrast"])


def test_cli_unknown_setting_is_a_one_line_usage_error(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}})
    params = tmp_path / "params.yaml"
    params.write_text("setting:\n  binWidth: 25\n  resegmentRnage: [-100, 400]\n")
    result = invoke(
        runner,
        ["extract", paths["raw"], paths["lesions"], paths["out"], "--params", params],
        expect=2,
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "resegmentRnage" in lines[0] and str(params) in lines[0]
    assert "did you mean 'resegmentRange'" in lines[0]
    assert not paths["out"].exists()


def test_cli_peritumoral_ring(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}})
    invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]], expect=None)
    refused = invoke(
        runner,
        ["extract", paths["raw"], paths["lesions"], tmp_path / "o2", "--peritumoral-mm", "3"],
        expect=2,
    )
    assert "--seg" in refused.stderr
    invoke(
        runner,
        [
            "extract",
            paths["raw"],
            paths["lesions"],
            tmp_path / "ring",
            "--seg",
            paths["seg"],
            "--peritumoral-mm",
            "3",
            "--params",
            FIRSTORDER_FILE(tmp_path),
        ],
    )
    header, rows = typed(features_table(tmp_path / "ring", "001"))
    assert "peritumoral_original_firstorder_Mean" in header
    assert not any(c.startswith("peritumoral_original_shape") for c in header)
    # independent ring: liver voxels within 3 mm (brute force over lesion voxel centres)
    lesion_map, _ = lesion_files(paths["lesions"], "001")
    ids = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_map)))
    dseg = sitk.GetArrayFromImage(
        sitk.ReadImage(
            str(paths["seg"] / Entities(sub="001", ce="portal", suffix="dseg").relpath())
        )
    )
    ct = sitk.GetArrayFromImage(
        sitk.ReadImage(str(paths["raw"] / Entities(sub="001", ce="portal").relpath()))
    )
    scale = np.array(SPACING[::-1])
    for row in rows:
        lesion = np.argwhere(ids == row["lesion_id"]) * scale
        liver = np.argwhere(dseg == 1)
        near = [
            tuple(v) for v in liver if np.min(np.linalg.norm(lesion - v * scale, axis=1)) <= 3.0
        ]
        assert row["peritumoral_status"] == "ok"
        assert row["peritumoral_diagnostics_Mask-original_VoxelNum"] == len(near)
        mean = float(np.mean([ct[v] for v in near]))
        assert row["peritumoral_original_firstorder_Mean"] == pytest.approx(mean)
        assert row["original_firstorder_Mean"] == pytest.approx(
            float(ct[ids == row["lesion_id"]].mean())
        )


def FIRSTORDER_FILE(tmp_path: Path) -> Path:  # noqa: N802 - a small factory
    path = tmp_path / "firstorder.yaml"
    path.write_text("featureClass:\n  firstorder:\n")
    return path


def test_cli_skip_rule_overwrite_and_parallel_jobs_agree(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}, "002": {}})
    invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]])
    first = features_table(paths["out"], "001").read_bytes()
    again = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]])
    assert "0 done, 2 skipped" in again.stderr
    other = invoke(
        runner,
        [
            "extract",
            paths["raw"],
            paths["lesions"],
            paths["out"],
            "--params",
            FIRSTORDER_FILE(tmp_path),
        ],
    )
    assert "2 done, 0 skipped" in other.stderr  # other settings: redone
    parallel = tmp_path / "parallel"
    invoke(runner, ["extract", paths["raw"], paths["lesions"], parallel, "--jobs", "2"])
    assert features_table(parallel, "001").read_bytes() == first
    invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"], "--overwrite"])
    assert features_table(paths["out"], "001").read_bytes() == first  # back to study


def test_cli_levels_phases_and_stale_outputs(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}, "002": {}}, phases=("portal", "arterial"))
    out = paths["out"]
    invoke(
        runner,
        [
            "extract",
            paths["raw"],
            paths["lesions"],
            out,
            "--participant-label",
            "001",
            "--phase",
            "portal",
        ],
    )
    assert features_table(out, "001").exists()
    assert not features_table(out, "001", "arterial").exists()
    assert not (out / "features.tsv").exists()  # participant level only
    refused = invoke(
        runner,
        ["extract", paths["raw"], paths["lesions"], out, "--level", "group", "--phase", "portal"],
        expect=1,
    )
    assert "sub-002" in refused.stderr and "participant level first" in refused.stderr
    invoke(
        runner,
        [
            "extract",
            paths["raw"],
            paths["lesions"],
            out,
            "--participant-label",
            "002",
            "--phase",
            "portal",
        ],
    )
    invoke(
        runner,
        ["extract", paths["raw"], paths["lesions"], out, "--level", "group", "--phase", "portal"],
    )
    _, rows = typed(out / "features.tsv")
    assert {(r["participant_id"], r["phase"]) for r in rows} == {
        ("sub-001", "portal"),
        ("sub-002", "portal"),
    }
    # a CT that changed makes its table stale: the group level refuses it
    ct_path = paths["raw"] / Entities(sub="002", ce="portal").relpath()
    ct = sitk.ReadImage(str(ct_path))
    sitk.WriteImage(ct + 1, str(ct_path))
    refused = invoke(
        runner,
        ["extract", paths["raw"], paths["lesions"], out, "--level", "group", "--phase", "portal"],
        expect=1,
    )
    assert "not made from the current inputs" in refused.stderr


def test_cli_missing_ct_fails_that_participant_only(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}, "002": {}})
    (paths["raw"] / Entities(sub="002", ce="portal").relpath()).unlink()
    result = invoke(runner, ["extract", paths["raw"], paths["lesions"], paths["out"]], expect=3)
    assert "no CT for the lesion map" in result.stderr
    assert features_table(paths["out"], "001").exists()
    assert not (paths["out"] / "features.tsv").exists()
    group = invoke(
        runner,
        ["extract", paths["raw"], paths["lesions"], paths["out"], "--level", "group"],
        expect=1,
    )
    assert "group level cannot be written" in group.stderr and "sub-002" in group.stderr


def test_library_refuses_a_map_and_table_that_disagree(tmp_path):
    paths = dataset(tmp_path, {"001": {}})
    lesion_map, table = lesion_files(paths["lesions"], "001")
    text = table.read_text().replace("\ttrue\t", "\tfalse\t", 1)
    table.write_text(text)
    with pytest.raises(Exception) as info:
        extract_acquisition(
            paths["raw"] / Entities(sub="001", ce="portal").relpath(),
            lesion_map,
            table,
            load_params("study"),
        )
    assert "do not describe the same lesions" in str(info.value)


def test_region_result_ok_flag():
    assert RegionResult("ok", {}).ok and not RegionResult("failed:x", {}).ok


def test_extract_refuses_bad_options(tmp_path):
    paths = dataset(tmp_path, {"001": {}})
    with pytest.raises(UsageError, match="--jobs"):
        extract(paths["raw"], paths["lesions"], paths["out"], jobs=0)
    with pytest.raises(UsageError, match="--seg is only used"):
        extract(paths["raw"], paths["lesions"], paths["out"], seg_dir=paths["seg"])
    with pytest.raises(UsageError, match="output folder"):
        extract(paths["raw"], paths["lesions"], paths["lesions"] / "x")
    assert json.loads((paths["lesions"] / "dataset_description.json").read_text())


def test_cli_recommended_preset_resamples_and_resegments(tmp_path, runner):
    paths = dataset(tmp_path, {"001": {}})
    invoke(
        runner,
        [
            "extract",
            paths["raw"],
            paths["lesions"],
            paths["out"],
            "--params",
            "recommended",
            "--jobs",
            "2",
        ],
    )
    table = features_table(paths["out"], "001")
    header, rows = typed(table)
    assert header == table_columns(load_params("recommended"))
    schemas.validate_rows(rows, header, "features", where=table)
    for row in rows:
        assert row["status"] == "ok"
        original = row["diagnostics_Mask-original_VoxelNum"]
        # 0.8 x 0.8 x 2 mm voxels resampled to 1 mm: about 1.28 times as many voxels
        assert 1.0 < row["diagnostics_Mask-interpolated_VoxelNum"] / original < 1.7
        assert (
            row["diagnostics_Mask-resegmented_VoxelNum"]
            <= row["diagnostics_Mask-interpolated_VoxelNum"]
        )
    sidecar = read_json(table.with_suffix("").with_suffix(".json"))
    assert sidecar["ExtractionParamsSource"] == "preset:recommended"
    assert sidecar["Provenance"]["settings"]["pyradiomics"]["setting"]["resegmentRange"] == [
        -100.0,
        400.0,
    ]
