"""import-mask: RTSTRUCT, DICOM-SEG, NIfTI and NRRD masks onto the CT grid, in physical space."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke, make_image

PHANTOM_VOXELS = 125_256


# ----------------------------------------------------------------------------- helpers
def write_raw(raw: Path, ct_image, label: str = "01", *, phase: str | None = None) -> Path:
    """A raw dataset with one CT (a SimpleITK image or a file to copy) and participants.tsv."""
    import SimpleITK as sitk

    from metcli.io.bids import Entities
    from metcli.io.participants import write_participants

    path = raw / Entities(sub=label, ce=phase).relpath()
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(ct_image, (str, Path)):
        shutil.copyfile(ct_image, path)
    else:
        sitk.WriteImage(ct_image, str(path), useCompression=True)
    write_participants(raw, [{"participant_id": f"sub-{label}", "primary": "colorectal"}])
    return path


def read_array(path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_dicom_series(folder: Path):
    """A DICOM CT series read with SimpleITK (not with metcli), and its files in slice order."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(files)
    return reader.Execute(), list(files)


def small_ct():
    """A tiny CT: 4 slices of 20 x 24 voxels, 1 x 1.5 mm in plane, 2 mm slices."""
    array = np.zeros((4, 24, 20), dtype=np.int16)
    return make_image(array, spacing=(1.0, 1.5, 2.0), origin=(10.0, -5.0, 3.0))


def physical(image, index_xyz):
    return image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_xyz])


def write_rtstruct(
    path: Path,
    rois: dict[str, list[np.ndarray]],
    *,
    frame_uid: str | None = None,
    series_uid: str | None = None,
) -> Path:
    """An RTSTRUCT whose ROIs hold the given closed contours (points in mm, (n, 3)).

    ``frame_uid`` is the frame of reference its ROIs name (default a new UID);
    ``series_uid`` adds a ReferencedFrameOfReferenceSequence naming that CT series.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    frame = frame_uid or generate_uid()
    if series_uid is not None:
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        study = Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        study.ReferencedSOPInstanceUID = generate_uid()
        study.RTReferencedSeriesSequence = Sequence([series])
        reference = Dataset()
        reference.FrameOfReferenceUID = frame
        reference.RTReferencedStudySequence = Sequence([study])
        ds.ReferencedFrameOfReferenceSequence = Sequence([reference])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        roi.ReferencedFrameOfReferenceUID = frame
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence()
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.6f}" for v in np.asarray(points, float).ravel()]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def square(image, z_index: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """A contour through four corners given in continuous voxel index, as points in mm."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return np.array([physical(image, (x, y, z_index)) for x, y in corners])


def one_line_error(result, *needles: str) -> str:
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# ----------------------------------------------------------------------------- real data
@pytest.fixture
def phantom_raw(tmp_path, data_dir):
    raw = tmp_path / "raw"
    write_raw(raw, data_dir / "ibsi1-ct-phantom" / "nifti" / "image.nii.gz", label="ibsi")
    return raw


@pytest.fixture(scope="module")
def totalseg(tmp_path_factory):
    """The JPEG-2000 DICOM series example_ct_dicom as a raw dataset, and its segmentation."""
    from conftest import test_data_dir

    folder = test_data_dir() / "totalseg-example"
    if not folder.is_dir():
        pytest.skip(f"reference data not found at {folder} (set METCLI_TEST_DATA)")
    ct, files = read_dicom_series(folder / "example_ct_dicom")
    raw = tmp_path_factory.mktemp("totalseg") / "raw"
    ct_path = write_raw(raw, ct, label="ts")
    return {
        "ct": ct,
        "files": files,
        "raw": raw,
        "ct_path": ct_path,
        "seg": folder / "example_seg_dicom.nii.gz",
    }


@pytest.mark.data
def test_rtstruct_of_ibsi_phantom_gives_the_reference_mask_exactly(data_dir):
    from metcli.imaging.rtstruct import rasterize_rtstruct
    from metcli.io.files import read_image

    phantom = data_dir / "ibsi1-ct-phantom"
    reference = read_image(phantom / "nifti" / "image.nii.gz")
    rtstruct = next((phantom / "dicom" / "mask").iterdir())
    masks = rasterize_rtstruct(rtstruct, reference, ["GTV-1"])
    expected = read_array(phantom / "nifti" / "mask.nii.gz") == 1
    assert list(masks) == ["GTV-1"]
    assert int(expected.sum()) == PHANTOM_VOXELS
    assert int(masks["GTV-1"].sum()) == PHANTOM_VOXELS
    assert int(np.count_nonzero(masks["GTV-1"] != expected)) == 0


@pytest.mark.data
def test_cli_imports_phantom_rtstruct_with_provenance_and_skip_rule(
    runner, phantom_raw, tmp_path, data_dir
):
    phantom = data_dir / "ibsi1-ct-phantom"
    seg = tmp_path / "seg"
    args = [
        "import-mask",
        phantom / "dicom" / "mask",
        phantom_raw,
        seg,
        "--participant-label",
        "sub-ibsi",
    ]
    result = invoke(runner, args)
    out = seg / "sub-ibsi" / "anat" / "sub-ibsi_dseg.nii.gz"
    assert result.stdout.strip() == str(out)
    dseg = read_array(out)
    expected = read_array(phantom / "nifti" / "mask.nii.gz") == 1
    assert set(np.unique(dseg)) == {0, 2}  # GTV-1 is a lesion by its name
    assert np.array_equal(dseg == 2, expected)

    sidecar = out.with_name("sub-ibsi_dseg.json")
    doc = json.loads(sidecar.read_text())
    assert doc["MaskFormat"] == "RTSTRUCT"
    assert doc["LabelMapping"] == {"GTV-1": "lesion"}
    assert doc["VoxelCounts"] == {"liver": 0, "lesion": PHANTOM_VOXELS}
    checks = doc["DicomChecks"]  # the CT was copied from NIfTI: no DICOM origin to compare
    assert checks["frame_of_reference"]["checked"] is False
    assert "no DICOM origin" in checks["referenced_series"]["reason"]
    assert checks["contours"] == {
        "GTV-1": {"contours": 26, "outside": 0, "beyond_slices": 0, "outside_grid": 0}
    }
    assert "SegmentationType" not in doc
    assert [i["uri"] for i in doc["Provenance"]["inputs"]] == [
        "bids:raw:sub-ibsi/anat/sub-ibsi_ct.nii.gz",
        "bids:mask:DCM_RS_00060.dcm",
    ]
    assert str(tmp_path) not in sidecar.read_text()  # no absolute paths
    description = json.loads((seg / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (seg / "dseg.tsv").read_text().splitlines()[1:] == [
        "0\tbackground\tBG",
        "1\tliver\tLIV",
        "2\tlesion\tLES",
    ]

    # Done: skipped (the sidecar is not rewritten); --overwrite or other settings redo it.
    before = sidecar.stat().st_mtime_ns
    invoke(runner, args)
    assert sidecar.stat().st_mtime_ns == before
    invoke(runner, args + ["--overwrite"])
    assert sidecar.stat().st_mtime_ns != before
    again = sidecar.stat().st_mtime_ns
    invoke(runner, args + ["--label-map", "GTV-1=liver"])
    assert sidecar.stat().st_mtime_ns != again
    assert np.array_equal(read_array(out) == 1, expected)


@pytest.mark.data
def test_flipped_totalseg_nifti_lands_on_the_liver(runner, totalseg, tmp_path):
    import SimpleITK as sitk

    seg_dir = tmp_path / "seg"
    invoke(
        runner,
        [
            "import-mask",
            totalseg["seg"],
            totalseg["raw"],
            seg_dir,
            "--participant-label",
            "ts",
            "--label-map",
            "5=liver",
        ],
    )
    dseg = read_array(seg_dir / "sub-ts" / "anat" / "sub-ts_dseg.nii.gz")
    ct = sitk.GetArrayFromImage(totalseg["ct"]).astype(float)
    source = read_array(totalseg["seg"])
    assert set(np.unique(dseg)) == {0, 1}
    assert int((dseg == 1).sum()) == int((source == 5).sum())  # voxel count preserved
    assert 80 < ct[dseg == 1].mean() < 100  # about 89 HU: on the liver
    assert ct[source == 5].mean() < 0  # what an overlay by array index would give (about -75)


@pytest.mark.data
def test_multilabel_image_without_label_map_lists_its_values(runner, totalseg, tmp_path):
    seg_dir = tmp_path / "seg"
    result = invoke(
        runner,
        ["import-mask", totalseg["seg"], totalseg["raw"], seg_dir, "--participant-label", "ts"],
        expect=1,
    )
    one_line_error(result, str(totalseg["seg"]), "0, 1, 5, 6", "--label-map")
    assert not seg_dir.exists()
    result = invoke(
        runner,
        [
            "import-mask",
            totalseg["seg"],
            totalseg["raw"],
            seg_dir,
            "--participant-label",
            "ts",
            "--label-map",
            "4=liver",
        ],
        expect=1,
    )
    one_line_error(result, "value 4")


@pytest.mark.data
def test_dicom_seg_built_with_highdicom_comes_back_on_the_ct_grid(runner, totalseg, tmp_path):
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk
    from pydicom.sr.codedict import codes

    from metcli.imaging.dicom_seg import read_dicom_seg
    from metcli.imaging.geometry import to_reference_grid

    ct = totalseg["ct"]
    liver = sitk.GetArrayFromImage(to_reference_grid(sitk.ReadImage(str(totalseg["seg"])), ct)) == 5
    # A lesion inside the liver on a few slices only: the SEG omits the empty frames.
    lesion = np.zeros_like(liver)
    z, y, x = np.nonzero(liver)
    cz, cy, cx = int(np.median(z)), int(np.median(y)), int(np.median(x))
    lesion[cz - 2 : cz + 3, cy - 6 : cy + 6, cx - 6 : cx + 6] = True
    lesion &= liver
    assert lesion.sum() > 100 and lesion.any(axis=(1, 2)).sum() == 5

    sources = [pydicom.dcmread(f) for f in totalseg["files"]]  # JPEG 2000: pylibjpeg-openjpeg
    study, series, frame = hd.UID(), hd.UID(), hd.UID()
    for ds in sources:  # the example is anonymised down to empty UIDs
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame

    def describe(number, name):
        category, kind = (
            (codes.SCT.Organ, codes.SCT.Liver)
            if name == "Liver"
            else (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)
        )
        return hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )

    def write_seg(path, pixel_array, segment_descriptions):
        hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixel_array.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions,
            series_instance_uid=hd.UID(),
            series_number=99,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="metcli tests",
            manufacturer_model_name="test",
            software_versions="0",
            device_serial_number="0",
        ).save_as(path)
        return path

    seg_path = write_seg(
        tmp_path / "liver_seg.dcm",
        np.stack([liver, lesion], axis=-1),
        [describe(1, "Liver"), describe(2, "Tumour")],
    )

    masks = read_dicom_seg(seg_path, ct)
    assert list(masks) == ["Liver", "Tumour"]
    assert np.array_equal(masks["Liver"], liver)
    assert np.array_equal(masks["Tumour"], lesion)

    seg_dir = tmp_path / "seg"
    invoke(runner, ["import-mask", seg_path, totalseg["raw"], seg_dir, "--participant-label", "ts"])
    dseg = read_array(seg_dir / "sub-ts" / "anat" / "sub-ts_dseg.nii.gz")
    assert np.array_equal(dseg == 2, lesion)  # lesion wins over liver
    assert np.array_equal(dseg == 1, liver & ~lesion)
    doc = json.loads((seg_dir / "sub-ts" / "anat" / "sub-ts_dseg.json").read_text())
    assert doc["MaskFormat"] == "DICOM-SEG"
    assert doc["LabelMapping"] == {"Liver": "liver", "Tumour": "lesion"}

    # Segments chosen by number; an unknown one is refused with the labels listed.
    invoke(
        runner,
        [
            "import-mask",
            seg_path,
            totalseg["raw"],
            seg_dir,
            "--participant-label",
            "ts",
            "--label-map",
            "1=lesion",
            "--overwrite",
        ],
    )
    assert np.array_equal(
        read_array(seg_dir / "sub-ts" / "anat" / "sub-ts_dseg.nii.gz") == 2, liver
    )
    result = invoke(
        runner,
        [
            "import-mask",
            seg_path,
            totalseg["raw"],
            seg_dir,
            "--participant-label",
            "ts",
            "--label-map",
            "Spleen=liver",
        ],
        expect=1,
    )
    one_line_error(result, "'Spleen'", "'Liver'", "'Tumour'")

    # A SEG of the lesion alone holds 5 of the 20 slices (empty frames omitted), flipped in z.
    lesion_only = write_seg(tmp_path / "lesion_seg.dcm", lesion, [describe(1, "Tumour")])
    volume = hd.seg.segread(lesion_only).get_volume()
    assert volume.spatial_shape[0] == 5 and volume.affine[2, 0] < 0
    assert np.array_equal(read_dicom_seg(lesion_only, ct)["Tumour"], lesion)


# ----------------------------------------------------------------------------- synthetic data
def test_place_on_grid_accepts_only_an_exact_voxel_correspondence():
    from metcli.core.errors import GeometryError
    from metcli.imaging.geometry import place_on_grid

    ct = small_ct()  # 4 x 24 x 20 voxels (z, y, x), spacing (x, y, z) 1, 1.5, 2 mm
    expected = np.zeros((4, 24, 20), dtype=bool)
    expected[1, 3, 5] = expected[2, 10, 7] = True
    # The mask: slices 1..2 only, stored with z flipped and x/y swapped: array (z', x, y).
    part = np.zeros((2, 20, 24), dtype=bool)
    part[1, 5, 3] = part[0, 7, 10] = True
    affine = np.zeros((4, 4))
    affine[:3, 0] = (0, 0, -2.0)  # z' runs from slice 2 down to slice 1
    affine[:3, 1] = (1.0, 0, 0)
    affine[:3, 2] = (0, 1.5, 0)
    affine[:3, 3] = physical(ct, (0, 0, 2))
    affine[3, 3] = 1
    assert np.array_equal(place_on_grid(part, affine, ct), expected)

    shifted = affine.copy()
    shifted[:3, 3] += (0.4, 0, 0)
    with pytest.raises(GeometryError, match="0.4 mm off"):
        place_on_grid(part, shifted, ct, mask_path="m.dcm", reference_path="ct.nii.gz")
    coarser = affine.copy()
    coarser[:3, 1] = (2.0, 0, 0)
    with pytest.raises(GeometryError, match="m.dcm and ct.nii.gz .* spacing"):
        place_on_grid(part, coarser, ct, mask_path="m.dcm", reference_path="ct.nii.gz")
    beyond = affine.copy()
    beyond[:3, 3] = physical(ct, (0, 0, 4))
    with pytest.raises(GeometryError, match="outside the image"):
        place_on_grid(part, beyond, ct)


def test_nrrd_label_image_with_flipped_permuted_axes_round_trips(runner, tmp_path):
    import SimpleITK as sitk

    ct = small_ct()
    raw = tmp_path / "raw"
    write_raw(raw, ct, phase="portal")
    labels = np.zeros((4, 24, 20), dtype=np.uint8)
    labels[1:3, 4:18, 3:15] = 1
    labels[2, 8:11, 5:9] = 2
    mask = make_image(labels, spacing=ct.GetSpacing(), origin=ct.GetOrigin())
    stored = sitk.Flip(sitk.PermuteAxes(mask, [1, 0, 2]), [False, True, False])
    assert stored.GetSize() != mask.GetSize()  # really stored another way
    nrrd = tmp_path / "manual.nrrd"
    sitk.WriteImage(stored, str(nrrd))

    seg_dir = tmp_path / "seg"
    result = invoke(
        runner,
        ["import-mask", nrrd, raw, seg_dir, "--participant-label", "01", "--phase", "portal"],
    )
    out = seg_dir / "sub-01" / "anat" / "sub-01_ce-portal_dseg.nii.gz"
    assert result.stdout.strip() == str(out)
    assert np.array_equal(read_array(out), labels)
    written = sitk.ReadImage(str(out))
    assert written.GetSpacing() == ct.GetSpacing() and written.GetOrigin() == ct.GetOrigin()


def test_rtstruct_holes_names_overlap_and_inclusion_rule(tmp_path):
    from metcli.imaging.import_mask import mask_to_dseg
    from metcli.imaging.rtstruct import rasterize_rtstruct

    ct = small_ct()
    rtstruct = write_rtstruct(
        tmp_path / "rs.dcm",
        {
            # An outer contour with a hole, and a second contour on another slice.
            "Liver": [
                square(ct, 1, 1.5, 15.5, 2.5, 20.5),
                square(ct, 1, 5.5, 8.5, 6.5, 9.5),
                square(ct, 2, 1.5, 15.5, 2.5, 20.5),
            ],
            # Vertices on voxel centres: centres on the edges are inside.
            "GTV 1": [square(ct, 1, 12, 14, 3, 5)],
            "Body": [square(ct, 0, 0.5, 18.5, 0.5, 22.5)],
        },
    )
    liver = np.zeros((4, 24, 20), dtype=bool)
    liver[1:3, 3:21, 2:16] = True
    liver[1, 7:10, 6:9] = False  # the hole
    gtv = np.zeros_like(liver)
    gtv[1, 3:6, 12:15] = True

    masks = rasterize_rtstruct(rtstruct, ct)
    assert list(masks) == ["Liver", "GTV 1", "Body"]
    assert np.array_equal(masks["Liver"], liver)
    assert np.array_equal(masks["GTV 1"], gtv)
    assert int(masks["Body"].sum()) == 18 * 22

    dseg, applied = mask_to_dseg(rtstruct, "RTSTRUCT", ct)
    assert applied == {"Liver": "liver", "GTV 1": "lesion"}  # Body: neither, not imported
    expected = np.where(gtv, 2, np.where(liver, 1, 0))
    assert np.array_equal(dseg, expected)

    dseg, applied = mask_to_dseg(
        rtstruct, "RTSTRUCT", ct, label_map={"body": 1}, roi_names=["Body", "gtv 1"]
    )
    assert applied == {"GTV 1": "lesion", "Body": "liver"}
    assert int((dseg == 2).sum()) == 9 and int((dseg == 1).sum()) == 18 * 22  # Body: slice 0


def test_rtstruct_contour_between_slices_is_a_geometry_error(runner, tmp_path):
    ct = small_ct()
    raw = tmp_path / "raw"
    ct_path = write_raw(raw, ct)
    rtstruct = write_rtstruct(tmp_path / "rs.dcm", {"GTV-1": [square(ct, 1.5, 2, 8, 2, 8)]})
    seg_dir = tmp_path / "seg"
    result = invoke(
        runner, ["import-mask", rtstruct, raw, seg_dir, "--participant-label", "01"], expect=1
    )
    one_line_error(result, str(rtstruct), str(ct_path), "between two slices")
    assert not seg_dir.exists()


def test_rtstruct_without_liver_or_lesion_names_lists_them(runner, tmp_path):
    ct = small_ct()
    raw = tmp_path / "raw"
    write_raw(raw, ct)
    rtstruct = write_rtstruct(
        tmp_path / "rs.dcm",
        {"Body": [square(ct, 1, 2, 8, 2, 8)], "Spinal cord": [square(ct, 1, 3, 4, 3, 4)]},
    )
    seg_dir = tmp_path / "seg"
    result = invoke(
        runner, ["import-mask", rtstruct, raw, seg_dir, "--participant-label", "01"], expect=1
    )
    one_line_error(result, "'Body'", "'Spinal cord'", "--label-map")
    result = invoke(
        runner,
        [
            "import-mask",
            rtstruct,
            raw,
            seg_dir,
            "--participant-label",
            "01",
            "--roi-name",
            "Kidney",
        ],
        expect=1,
    )
    one_line_error(result, "'Kidney'", "'Body'")
    invoke(
        runner,
        [
            "import-mask",
            rtstruct,
            raw,
            seg_dir,
            "--participant-label",
            "01",
            "--label-map",
            "body=liver,Spinal cord=lesion",
        ],
    )
    dseg = read_array(seg_dir / "sub-01" / "anat" / "sub-01_dseg.nii.gz")
    assert int((dseg == 1).sum()) == 7 * 7 - 4 and int((dseg == 2).sum()) == 4


@pytest.mark.parametrize("change", ["origin", "spacing"])
def test_mask_on_another_grid_is_refused_naming_both_files(runner, tmp_path, change):
    ct = small_ct()
    raw = tmp_path / "raw"
    ct_path = write_raw(raw, ct)
    labels = np.zeros((4, 24, 20), dtype=np.uint8)
    labels[1:3, 5:10, 5:10] = 1
    if change == "origin":
        origin = np.add(ct.GetOrigin(), (5.0, 0.0, 0.0))
        other = make_image(labels, spacing=ct.GetSpacing(), origin=origin)
    else:
        other = make_image(labels, spacing=(1.0, 1.5, 2.5), origin=ct.GetOrigin())
    import SimpleITK as sitk

    mask = tmp_path / "mask.nii.gz"
    sitk.WriteImage(other, str(mask))
    seg_dir = tmp_path / "seg"
    result = invoke(
        runner, ["import-mask", mask, raw, seg_dir, "--participant-label", "01"], expect=1
    )
    one_line_error(result, str(mask), str(ct_path), "same physical grid", change)
    assert not seg_dir.exists()


def test_corrupt_mask_is_one_line_error_and_writes_nothing(runner, tmp_path):
    import SimpleITK as sitk

    raw = tmp_path / "raw"
    write_raw(raw, small_ct())
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(make_image(np.ones((4, 24, 20), dtype=np.uint8)), str(good))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(good.read_bytes()[:60])
    seg_dir = tmp_path / "seg"
    result = invoke(
        runner, ["import-mask", corrupt, raw, seg_dir, "--participant-label", "01"], expect=1
    )
    one_line_error(result, str(corrupt))
    assert not seg_dir.exists() or not any(seg_dir.rglob("*"))


def test_usage_errors(runner, tmp_path):
    import SimpleITK as sitk

    raw = tmp_path / "raw"
    write_raw(raw, small_ct())
    mask = tmp_path / "mask.nii.gz"
    sitk.WriteImage(small_ct(), str(mask))
    seg_dir = tmp_path / "seg"
    base = ["import-mask", mask, raw, seg_dir]
    one_line_error(invoke(runner, base + ["--participant-label", "../x"], expect=2), "'../x'")
    one_line_error(
        invoke(runner, base + ["--participant-label", "02"], expect=2),
        "'02'",
        "01",
        "participants.tsv",
    )
    one_line_error(
        invoke(runner, base + ["--participant-label", "01", "--label-map", "5=spleen"], expect=2),
        "spleen",
    )
    one_line_error(
        invoke(runner, base + ["--participant-label", "01", "--phase", "arterial"], expect=1),
        "no CT image",
        "ce-arterial",
    )
    one_line_error(
        invoke(runner, base + ["--participant-label", "01", "--roi-name", "GTV"], expect=2),
        "--roi-name",
    )
    (raw / "participants.tsv").unlink()
    one_line_error(
        invoke(runner, base + ["--participant-label", "01"], expect=1),
        str(raw / "participants.tsv"),
    )
    assert not seg_dir.exists()


def test_parse_label_map():
    from metcli.core.errors import UsageError
    from metcli.imaging.mask_labels import label_from_name, parse_label_map

    assert parse_label_map("GTV-1=lesion, Liver=LIVER") == {"GTV-1": 2, "Liver": 1}
    assert parse_label_map(["5=liver", "2=lesion"]) == {"5": 1, "2": 2}
    assert parse_label_map("a=b=lesion") == {"a=b": 2}
    assert parse_label_map(None) is None
    for bad in ("5", "=liver", "5=liver,5=lesion", "5=kidney"):
        with pytest.raises(UsageError):
            parse_label_map(bad)
    assert [
        label_from_name(n)
        for n in ("Liver", "liver metastasis 2", "GTV-1", "Tumor", "tumour", "Lesion_3", "Body")
    ] == [1, 2, 2, 2, 2, 2, None]
