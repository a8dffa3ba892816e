"""import-dicom with MR series (issue 14 item 4): T2w, T1w, DWI (4D with .bval/.bvec) and
ADC maps; channel inference, series choice, the refusals; read back through
metcli.imaging.channel_images.

Every series is real DICOM written here with pydicom (MR Image Storage, shuffled file
names, an oblique orientation where geometry matters); diffusion series use the standard
tags DiffusionBValue (0018,9087) and DiffusionGradientOrientation (0018,9089) and follow
S = S0 exp(-b D) with a different diffusivity along each gradient direction.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import invoke
from metcli.core.errors import DicomError, UsageError
from metcli.imaging.channel_images import adc_image, read_channel
from metcli.imaging.dicom.import_dicom import import_dicom
from metcli.imaging.dicom.mr_volume import MR_SETTINGS
from metcli.io.channels import Channel
from metcli.io.schemas import validate

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID98765"
SHAPE = (6, 12, 10)  # slices, rows, columns
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


OBLIQUE = rotation(25, 12)


# ----------------------------------------------------------------------------- writing series
def _common(series_uid: str, description: str, image_type, rot, spacing_rc, attrs) -> dict:
    values = {
        "SOPClassUID": MR_STORAGE,
        "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "SeriesInstanceUID": series_uid,
        "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.77",
        "PositionReferenceIndicator": "",
        "Modality": "MR",
        "PatientName": PATIENT_NAME,
        "PatientID": PATIENT_ID,
        "PatientBirthDate": "19600101",
        "PatientSex": "F",
        "StudyDate": "20200202",
        "StudyTime": "101010",
        "ReferringPhysicianName": "",
        "StudyID": "1",
        "AccessionNumber": "ACC123456",
        "InstitutionName": "Sunnyvale General",
        "Manufacturer": "ACME",
        "ManufacturerModelName": "Magnet 1500",
        "MagneticFieldStrength": "1.5",
        "SeriesDescription": description,
        "SeriesNumber": 5,
        "ImageType": list(image_type),
        "ScanningSequence": "SE",
        "SequenceVariant": "SK",
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "SequenceName": "*h2d1_256",
        "EchoTime": "90",
        "RepetitionTime": "1200",
        "EchoTrainLength": "128",
        "FlipAngle": "150",
        "SliceThickness": "4.0",
        "PatientPosition": "HFS",
        "BodyPartExamined": "ABDOMEN",
        "ImageOrientationPatient": [f"{v:.8f}" for v in (*rot[:, 0], *rot[:, 1])],
        "PixelSpacing": [str(spacing_rc[0]), str(spacing_rc[1])],
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 0,
    }
    values.update(attrs)
    return values


def write_mr(
    folder: Path,
    volumes,
    *,
    description="t2_haste_tra",
    image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
    rot=None,
    step=3.5,
    spacing_rc=(0.9, 0.8),
    origin=(-40.0, -30.0, 20.0),
    attrs=None,
    series_uid=None,
    skip=(),
    seed=1,
) -> dict:
    """Write MR images: ``volumes`` is a list of (pixels [slice, row, column] uint16,
    per-volume attributes). ``skip`` lists (volume, slice) pairs not written."""
    folder.mkdir(parents=True, exist_ok=True)
    rot = np.eye(3) if rot is None else np.asarray(rot)
    series_uid = series_uid or generate_uid()
    common = _common(series_uid, description, image_type, rot, spacing_rc, attrs or {})
    jobs = [(v, k) for v in range(len(volumes)) for k in range(volumes[v][0].shape[0])]
    names = list(range(len(jobs)))
    random.Random(seed).shuffle(names)
    positions = [np.asarray(origin) + k * step * rot[:, 2] for k in range(volumes[0][0].shape[0])]
    paths = []
    for (v, k), name in zip(jobs, names):
        if (v, k) in skip:
            continue
        pixels, extra = volumes[v]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = common["SOPClassUID"]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        for key, value in {**common, **extra}.items():
            setattr(ds, key, value)
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.InstanceNumber = (7 * name + 3) % len(jobs) + 1
        ds.ImagePositionPatient = [f"{p:.6f}" for p in positions[k]]
        ds.Rows, ds.Columns = pixels.shape[1:]
        ds.PixelData = np.ascontiguousarray(pixels[k]).astype("<u2").tobytes()
        path = folder / f"MR{name:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return {"uid": series_uid, "paths": paths, "positions": positions, "rot": rot, "step": step}


def pixels(seed=0, shape=SHAPE, high=4000) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, high, size=shape).astype(np.uint16)


DIRECTIONS = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


def diffusion_truth(shape=SHAPE, seed=3):
    """S0 and a diffusivity (mm2/s) along each patient axis, per voxel."""
    rng = np.random.default_rng(seed)
    s0 = rng.uniform(12000, 20000, size=shape)
    d = {axis: rng.uniform(0.4e-3, 2.0e-3, size=shape) for axis in DIRECTIONS}
    return s0, d


def dwi_volumes(s0, d, *, trace_b=1500, directional_trace=False):
    """b=1500 trace, b=800 along z, x, y, b=0 (not in the output order on purpose)."""
    md = (d["x"] + d["y"] + d["z"]) / 3
    out = [(np.rint(s0 * np.exp(-trace_b * md)).astype(np.uint16), _b(trace_b, None, "ISOTROPIC"))]
    for axis in ("z", "x", "y"):
        signal = np.rint(s0 * np.exp(-800 * d[axis])).astype(np.uint16)
        out.append((signal, _b(800, DIRECTIONS[axis], "DIRECTIONAL")))
    if directional_trace:
        signal = np.rint(s0 * np.exp(-800 * md)).astype(np.uint16)
        out.append((signal, _b(800, None, "ISOTROPIC")))
    out.append((np.rint(s0).astype(np.uint16), _b(0, None, "NONE")))
    return out


def _b(b, direction, directionality):
    attrs = {"DiffusionBValue": float(b), "DiffusionDirectionality": directionality}
    if direction is not None:
        attrs["DiffusionGradientOrientation"] = [float(v) for v in direction]
    return attrs


DWI_ATTRS = {
    "ScanningSequence": "EP",
    "SequenceVariant": ["SK", "SP"],
    "SequenceName": "*ep_b800t",
    "EchoTime": "62",
    "RepetitionTime": "4500",
    "FlipAngle": "90",
}


def write_dwi(folder: Path, *, rot=OBLIQUE, **kwargs):
    s0, d = diffusion_truth()
    directional_trace = kwargs.pop("directional_trace", False)
    volumes = dwi_volumes(s0, d, directional_trace=directional_trace)
    truth = write_mr(
        folder, volumes, description="ep2d_diff_b0_800_1500", rot=rot, attrs=DWI_ATTRS, **kwargs
    )
    truth.update(s0=s0, d=d, md=(d["x"] + d["y"] + d["z"]) / 3)
    return truth


def write_adc(folder: Path, md: np.ndarray, *, rot=OBLIQUE):
    stored = np.rint(md * 1e6).astype(np.uint16)  # Siemens/GE: 1e-6 mm2/s
    return write_mr(
        folder,
        [(stored, {})],
        description="ep2d_diff_b0_800_1500_ADC",
        image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"),
        rot=rot,
        attrs=DWI_ATTRS,
    )


def sidecar_of(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def check_geometry(image, truth, shape=SHAPE):
    """The image's voxels lie where the DICOM slices say."""
    rot, (rows, columns) = truth["rot"], shape[1:]
    assert image.GetSize()[:3] == (columns, rows, shape[0])
    assert np.allclose(np.asarray(image.GetDirection()).reshape(-1, image.GetDimension())[:3, :3],
                       rot, atol=1e-6)  # fmt: skip
    assert np.allclose(image.GetSpacing()[:3], (0.8, 0.9, truth["step"]), atol=1e-6)
    for k, position in enumerate(truth["positions"]):
        index = (0, 0, k) + (0,) * (image.GetDimension() - 3)
        assert np.allclose(image.TransformIndexToPhysicalPoint(index)[:3], position, atol=1e-4)


def no_identity(text: str) -> None:
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19600101", "20200202", "Sunnyvale", "ACC123"):
        assert secret not in text
    assert "1.2.826.0.1.3680043" not in text  # no UID


# ----------------------------------------------------------------------------- T2w
def test_t2w_voxels_geometry_and_sidecar(tmp_path):
    data = pixels()
    truth = write_mr(tmp_path / "dicom" / "t2", [(data, {})], rot=OBLIQUE)
    raw = tmp_path / "raw"
    out = import_dicom(tmp_path / "dicom", raw, participant="1", primary="colorectal")
    assert out == raw / Channel("T2w").relpath("1")
    assert out == raw / "sub-1" / "anat" / "sub-1_T2w.nii.gz"
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(image), data)
    check_geometry(image, truth)
    doc = sidecar_of(out)
    validate(doc, "sidecar")
    validate(doc, "import_dicom")
    assert doc["Modality"] == "MR" and doc["Channel"] == "T2w"
    assert doc["ChannelSource"] == "inferred"
    assert doc["ChannelReason"] == "SeriesDescription 't2_haste_tra' contains 't2'"
    assert doc["EchoTime"] == 0.09 and doc["RepetitionTime"] == 1.2  # seconds, as BIDS asks
    assert doc["MagneticFieldStrength"] == 1.5 and doc["FlipAngle"] == 150
    assert doc["SliceThickness"] == 4.0 and doc["SpacingBetweenSlices"] == 3.5
    assert doc["Manufacturer"] == "ACME" and doc["ManufacturersModelName"] == "Magnet 1500"
    assert doc["SequenceName"] == "*h2d1_256" and doc["ScanningSequence"] == "SE"
    assert doc["Provenance"]["settings"] == MR_SETTINGS
    assert len(doc["SeriesInstanceUIDSha256"]) == 64
    no_identity(json.dumps(doc))
    assert "sub-1\tcolorectal" in (raw / "participants.tsv").read_text()


def test_t1w_phase_and_uint16_values(tmp_path):
    data = pixels(high=60000)
    write_mr(
        tmp_path / "t1",
        [(data, {})],
        description="t1_vibe_fs_tra_art",
        attrs={"ScanningSequence": "GR", "SequenceVariant": "SP", "EchoTime": "1.3",
               "RepetitionTime": "3.9", "FlipAngle": "10"},
    )  # fmt: skip
    out = import_dicom(tmp_path / "t1", tmp_path / "raw", participant="2", phase="arterial")
    assert out == tmp_path / "raw" / Channel("T1w", phase="arterial").relpath("2")
    assert out.name == "sub-2_ce-arterial_T1w.nii.gz"
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkUInt16
    assert np.array_equal(sitk.GetArrayFromImage(image), data)
    doc = sidecar_of(out)
    assert doc["Channel"] == "T1w-arterial" and doc["EchoTime"] == 0.0013


def test_channel_from_sequence_parameters_when_the_description_says_nothing(tmp_path):
    write_mr(tmp_path / "mr", [(pixels(), {})], description="series 7")
    out = import_dicom(tmp_path / "mr", tmp_path / "raw", participant="3")
    assert out.name == "sub-3_T2w.nii.gz"
    assert "long TE and TR" in sidecar_of(out)["ChannelReason"]


# ----------------------------------------------------------------------------- DWI
def test_dwi_4d_bval_bvec_and_read_channel(tmp_path):
    truth = write_dwi(tmp_path / "dwi")
    raw = tmp_path / "raw"
    out = import_dicom(tmp_path / "dwi", raw, participant="1")
    assert out == raw / Channel("DWI", bvalue=0).relpath("1")
    assert out == raw / "sub-1" / "dwi" / "sub-1_dwi.nii.gz"
    bval, bvec = out.with_name("sub-1_dwi.bval"), out.with_name("sub-1_dwi.bvec")
    assert bval.read_text() == "0 800 800 800 1500\n"  # one line, ordered by b then direction
    rows = bvec.read_text().splitlines()
    assert len(rows) == 3 and all(len(r.split()) == 5 for r in rows)
    vectors = np.array([[float(v) for v in r.split()] for r in rows]).T  # one row per volume
    assert np.allclose(vectors[[0, 4]], 0)  # b=0 and the isotropic trace: 0 0 0
    image = sitk.ReadImage(str(out))
    assert image.GetDimension() == 4 and image.GetSize()[3] == 5
    check_geometry(image, truth)
    # volumes in order: b0, b800 along (0,0,1) (z), (0,1,0) (y), (1,0,0) (x), b1500 trace
    expected = [truth["s0"]] + [truth["s0"] * np.exp(-800 * truth["d"][a]) for a in "zyx"]
    expected.append(truth["s0"] * np.exp(-1500 * truth["md"]))
    array = sitk.GetArrayFromImage(image)  # [volume, z, y, x]
    for index, wanted in enumerate(expected):
        assert np.array_equal(array[index], np.rint(wanted).astype(array.dtype))
    # read back through the channel model
    s0, md = truth["s0"], truth["md"]
    b800 = sitk.GetArrayFromImage(read_channel(raw, Channel("DWI", bvalue=800), "1"))
    assert np.allclose(b800, s0 * np.exp(-800 * md), rtol=2e-4)
    b0 = sitk.GetArrayFromImage(read_channel(raw, Channel("DWI", bvalue=0), "1"))
    assert np.allclose(b0, s0, rtol=1e-4)
    adc = sitk.GetArrayFromImage(read_channel(raw, Channel("ADC"), "1"))  # fitted
    assert np.allclose(adc, md, rtol=2e-3)
    doc = sidecar_of(out)
    validate(doc, "sidecar")
    validate(doc, "import_dicom")
    assert doc["Channel"] == "DWI" and "DiffusionBValue (0018,9087)" in doc["ChannelReason"]
    assert doc["DiffusionBValues"] == [0, 800, 1500] and doc["DiffusionVolumes"] == 5
    assert doc["EchoTime"] == 0.062 and doc["RepetitionTime"] == 4.5
    outputs = {o["name"] for o in doc["Provenance"]["outputs"]}
    assert outputs == {"sub-1_dwi.nii.gz", "sub-1_dwi.bval", "sub-1_dwi.bvec"}
    no_identity(json.dumps(doc))


@pytest.mark.parametrize("rot", [np.eye(3), OBLIQUE, rotation(160, -30)], ids=["ax", "obl", "rev"])
def test_bvec_is_the_gradient_along_the_nifti_axes_fsl_convention(tmp_path, rot):
    """Checked through nibabel's reading of the NIfTI header (RAS affine): bvec_k is the
    gradient along voxel axis k, the first axis flipped for a positive determinant."""
    import nibabel

    write_dwi(tmp_path / "dwi", rot=rot)
    out = import_dicom(tmp_path / "dwi", tmp_path / "raw", participant="1")
    affine = nibabel.load(str(out)).affine[:3, :3]
    axes = affine / np.linalg.norm(affine, axis=0)
    flip = np.array([-1.0 if np.linalg.det(affine) > 0 else 1.0, 1.0, 1.0])
    rows = out.with_name("sub-1_dwi.bvec").read_text().splitlines()
    vectors = np.array([[float(v) for v in r.split()] for r in rows]).T
    for index, axis in ((1, "z"), (2, "y"), (3, "x")):
        gradient_ras = LPS_TO_RAS @ np.asarray(DIRECTIONS[axis])
        assert np.allclose(vectors[index], (axes.T @ gradient_ras) * flip, atol=1e-5)
        # the rule as documented: (-g.r, g.c, g.n) with r, c, n the DICOM axes (LPS)
        g = np.asarray(DIRECTIONS[axis])
        rule = (-(g @ rot[:, 0]), g @ rot[:, 1], g @ rot[:, 2])
        assert np.allclose(vectors[index], rule, atol=1e-5)
        assert np.isclose(np.linalg.norm(vectors[index]), 1.0, atol=1e-5)


def test_adc_series_is_written_in_mm2_per_s_and_matches_the_fit(tmp_path):
    truth = write_dwi(tmp_path / "dicom" / "dwi")
    write_adc(tmp_path / "dicom" / "adc", truth["md"])
    raw = tmp_path / "raw"
    dwi = import_dicom(tmp_path / "dicom", raw, participant="1", channel="DWI")
    adc_path = import_dicom(tmp_path / "dicom", raw, participant="1", channel="ADC")
    assert adc_path == raw / Channel("ADC").relpath("1")
    assert adc_path == raw / "sub-1" / "dwi" / "sub-1_ADC.nii.gz"
    doc = sidecar_of(adc_path)
    assert doc["Units"] == "mm2/s" and doc["ADCScaleFactor"] == 1e-6
    assert doc["Channel"] == "ADC" and doc["ChannelInferred"] == "ADC"
    from_file = sitk.GetArrayFromImage(read_channel(raw, Channel("ADC"), "1"))
    assert np.allclose(from_file, truth["md"], atol=6e-7)
    fitted = sitk.GetArrayFromImage(adc_image(dwi))
    assert np.allclose(fitted, from_file, rtol=3e-3)
    assert sitk.ReadImage(str(adc_path)).GetPixelID() == sitk.sitkFloat32


def test_a_shells_derived_trace_volume_is_left_out(tmp_path):
    write_dwi(tmp_path / "dwi", directional_trace=True)
    out = import_dicom(tmp_path / "dwi", tmp_path / "raw", participant="1")
    assert out.with_name("sub-1_dwi.bval").read_text() == "0 800 800 800 1500\n"
    assert "b = 800" in sidecar_of(out)["DiffusionVolumesLeftOut"][0]


def test_dwi_channel_with_a_b_value(tmp_path):
    write_dwi(tmp_path / "dwi")
    out = import_dicom(tmp_path / "dwi", tmp_path / "raw", participant="1", channel="DWI-b800")
    assert out.name == "sub-1_dwi.nii.gz"
    with pytest.raises(DicomError, match="has no b = 1000 s/mm2 .*800, 1500"):
        import_dicom(tmp_path / "dwi", tmp_path / "raw2", participant="1", channel="DWI-b1000")


# ----------------------------------------------------------------------------- series choice
@pytest.fixture
def exam(tmp_path) -> Path:
    """A folder with a T2w, a DWI and an ADC series."""
    folder = tmp_path / "exam"
    write_mr(folder / "t2", [(pixels(), {})])
    truth = write_dwi(folder / "dwi")
    write_adc(folder / "adc", truth["md"])
    return folder


def test_several_mr_series_need_a_channel_or_a_description(exam, tmp_path, runner):
    with pytest.raises(UsageError, match="3 MR series found and no --channel") as err:
        import_dicom(exam, tmp_path / "raw", participant="1")
    text = str(err.value)
    assert "'t2_haste_tra'" in text and ": T2w" in text and ": DWI" in text and ": ADC" in text
    assert "--channel" in text and "--series-uid" in text
    raw = tmp_path / "raw"
    result = invoke(
        runner, ["import-dicom", exam, raw, "--participant-label", "1", "--channel", "T2w"]
    )
    assert result.stdout.strip() == str(raw / "sub-1" / "anat" / "sub-1_T2w.nii.gz")
    out = import_dicom(exam, raw, participant="2", series_description="EP2D.*_ADC$")
    assert out.name == "sub-2_ADC.nii.gz"
    out = import_dicom(exam, raw, participant="3", series_description="b0_800_1500", channel="DWI")
    assert out.name == "sub-3_dwi.nii.gz"
    with pytest.raises(UsageError, match="matches no series.*t2_haste_tra"):
        import_dicom(exam, raw, participant="4", series_description="vibe")
    with pytest.raises(DicomError, match="no MR series recognised as T1w.*ep2d_diff"):
        import_dicom(exam, raw, participant="4", channel="T1w")


def test_given_channel_is_recorded_and_uid_choice(tmp_path):
    truth = write_mr(tmp_path / "mr", [(pixels(), {})], description="series 7",
                     attrs={"ScanningSequence": "RM", "EchoTime": "3"})  # fmt: skip
    with pytest.raises(DicomError, match="cannot tell which channel.*Fix: name it with --channel"):
        import_dicom(tmp_path / "mr", tmp_path / "raw", participant="1")
    out = import_dicom(
        tmp_path / "mr", tmp_path / "raw", participant="1", series_uid=truth["uid"], channel="t2w"
    )
    doc = sidecar_of(out)
    assert out.name == "sub-1_T2w.nii.gz"
    assert (doc["Channel"], doc["ChannelSource"], doc["ChannelInferred"]) == (
        "T2w",
        "--channel",
        "unknown",
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channel": "portal"}, "not an MR channel"),
        ({"channel": "T2w", "phase": "arterial"}, "does not apply to a T2w"),
        ({"channel": "T1w-arterial", "phase": "portal"}, "name two phases"),
        ({"series_uid": "1.2.3", "series_description": "t2"}, "both name a series"),
    ],
)
def test_bad_channel_options_are_usage_errors(tmp_path, kwargs, message):
    write_mr(tmp_path / "mr", [(pixels(), {})])
    with pytest.raises(UsageError, match=message):
        import_dicom(tmp_path / "mr", tmp_path / "raw", participant="1", **kwargs)
    assert not (tmp_path / "raw").exists()


def test_ct_beside_mr_is_still_the_default(tmp_path):
    from test_import_dicom import known_hu, write_series

    write_series(tmp_path / "dicom" / "ct", known_hu((4, 16, 16)))
    write_mr(tmp_path / "dicom" / "t2", [(pixels(), {})])
    out = import_dicom(tmp_path / "dicom", tmp_path / "raw", participant="1")
    assert out.name == "sub-1_ct.nii.gz"
    out = import_dicom(tmp_path / "dicom", tmp_path / "raw", participant="1", channel="T2w")
    assert out.name == "sub-1_T2w.nii.gz"


def test_reimport_is_skipped_and_another_series_refused(tmp_path):
    write_dwi(tmp_path / "a")
    raw = tmp_path / "raw"
    out = import_dicom(tmp_path / "a", raw, participant="1")
    before = out.stat().st_ino
    import_dicom(tmp_path / "a", raw, participant="1")
    assert out.stat().st_ino == before
    write_dwi(tmp_path / "b", rot=np.eye(3))
    with pytest.raises(UsageError, match="sub-1 already has a DWI image imported from another"):
        import_dicom(tmp_path / "b", raw, participant="1")
    import_dicom(tmp_path / "b", raw, participant="1", overwrite=True)
    assert out.stat().st_ino != before


# ----------------------------------------------------------------------------- refusals
def _refusal(tmp_path, case):
    folder = tmp_path / "dicom"
    data = pixels()
    if case == "mixed":
        write_mr(folder, [(data, {})])
        ds = pydicom.dcmread(sorted(folder.iterdir())[2])
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        ds.save_as(sorted(folder.iterdir())[2])
    elif case == "missing-slice":
        write_mr(folder, [(data, {})], skip={(0, 3)})
    elif case == "dwi-missing-slice":
        write_dwi(folder, skip={(2, 4)})
    elif case == "rescale":
        volumes = [(data, {})]
        write_mr(folder, volumes, attrs={"RescaleSlope": "2", "RescaleIntercept": "0"})
        ds = pydicom.dcmread(sorted(folder.iterdir())[0])
        ds.RescaleSlope = "2.5"
        ds.save_as(sorted(folder.iterdir())[0])
    elif case == "dynamic":
        volumes = [(data, {"TemporalPositionIdentifier": t}) for t in (1, 2, 3)]
        write_mr(folder, volumes, description="t1_vibe_dyn")
    elif case == "phase":
        write_mr(folder, [(data, {})], image_type=("ORIGINAL", "PRIMARY", "P", "ND"))
    elif case == "private-b":
        volumes = [(data, {}), (pixels(1), {})]
        write_mr(folder, volumes, description="ep2d_diff", attrs={"Manufacturer": "GE"})
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
            ds.add_new((0x0043, 0x1039), "IS", ["800", "0", "0", "0"])
            ds.save_as(path)
    elif case == "enhanced":
        write_enhanced(folder)
    return folder


def write_enhanced(folder: Path) -> None:
    folder.mkdir(parents=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_MR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesDescription = generate_uid(), "MR", "series 3"
    ds.NumberOfFrames, ds.Rows, ds.Columns = 3, 8, 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((3, 8, 8), dtype="<u2").tobytes()
    ds.save_as(folder / "enhanced.dcm", enforce_file_format=True)


REFUSALS = {
    "mixed": r"no importable MR image series found; found: .*mixed orientations\): slices of mixed "
    "orientations",
    "missing-slice": r"slices 3 and 4 .* are 7 mm apart where the others are 3\.5 mm "
    r"\(1 slice missing\?\)",
    "dwi-missing-slice": r"the diffusion volume b = 800 s/mm2, direction \(1, 0, 0\) has 5 "
    r"slices where the series has 6 positions: missing at .* Fix: give the complete series",
    "rescale": r"RescaleSlope/RescaleIntercept vary between the images of the series "
    r"\(slopes 2, 2\.5",
    "dynamic": r"holds up to 3 images at one slice position \(18 images at 6 positions; "
    r"varying: TemporalPositionIdentifier 1, 2, 3\): a 4D series .* Fix: split it: .*"
    r"--series-description",
    "phase": r"is a phase image \(ImageType ORIGINAL/PRIMARY/P/ND\); metcli imports "
    r"magnitude images only",
    "private-b": r"has images without DiffusionBValue \(0018,9087\) .* private tags \(GE "
    r"\(0043,1039\)\).* Fix: convert the series with dcm2niix",
    "enhanced": r"is an Enhanced MR multi-frame object \(3 frames in one file\).* Fix: convert "
    r"it with dcm2niix",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line_and_write_nothing(tmp_path, runner, case):
    folder = _refusal(tmp_path, case)
    raw = tmp_path / "raw"
    with pytest.raises(DicomError, match=REFUSALS[case]):
        import_dicom(folder, raw, participant="9")
    result = invoke(runner, ["import-dicom", folder, raw, "--participant-label", "9"], expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metcli: error:"), result.stderr
    assert "Fix:" in lines[0] and result.stdout == ""
    assert not raw.exists() or not any(raw.iterdir())


def test_mixed_orientations_named_by_uid_name_the_files(tmp_path):
    folder = _refusal(tmp_path, "mixed")
    uid = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
    with pytest.raises(DicomError, match=r"mixes slice orientations: MR\d+ has .*\(sagittal\)"):
        import_dicom(folder, tmp_path / "raw", participant="9", series_uid=uid, channel="T2w")


# ----------------------------------------------------------------------------- other tools
def test_bids_validator_accepts_the_imported_t2w_and_dwi(exam, tmp_path):
    from test_bids_validator import VALIDATOR
    from test_bids_validator import validate as bids_validate

    if VALIDATOR is None or shutil.which("node") is None:
        pytest.skip("the BIDS validator is not installed (make test installs it)")
    raw = tmp_path / "rawdata"
    import_dicom(exam, raw, participant="01", channel="T2w", primary="colorectal")
    import_dicom(exam, raw, participant="01", channel="DWI")
    found = bids_validate(raw)
    assert found["errors"] == [], found["errors"]
    bval = raw / "sub-01" / "dwi" / "sub-01_dwi.bval"
    bval.write_text("0 800 800\n")  # not vacuous: the validator reads the diffusion files
    assert "VOLUME_COUNT_MISMATCH" in {e["key"] for e in bids_validate(raw)["errors"]}


def test_dciodvfy_accepts_the_test_series(tmp_path):
    """The synthetic MR files are valid MR images (where dciodvfy is installed); the
    diffusion tags are reported as a Standard Extended SOP Class, a warning."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    dwi = write_dwi(tmp_path / "dwi")
    files = [
        write_mr(tmp_path / "t2", [(pixels(), {})])["paths"][0],
        dwi["paths"][0],
        write_adc(tmp_path / "adc", dwi["md"])["paths"][0],
    ]
    for path in files:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]
        assert errors == [], errors


@pytest.mark.parametrize(
    "rot", [OBLIQUE, rotation(160, -30), rotation(0, 90)], ids=["obl", "rev", "cor"]
)
def test_bvecs_point_where_dcm2niix_s_do(tmp_path, rot):
    """The same series through dcm2niix (where installed): every volume's b-vector, taken
    to the world through its own NIfTI header (FSL's convention), is the same direction."""
    import nibabel

    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    s0, d = diffusion_truth()
    attrs = {**DWI_ATTRS, "Manufacturer": "SIEMENS"}  # dcm2niix keeps Siemens trace volumes
    write_mr(tmp_path / "dwi", dwi_volumes(s0, d), description="ep2d_diff", rot=rot, attrs=attrs)
    out = import_dicom(tmp_path / "dwi", tmp_path / "raw", participant="1")
    (tmp_path / "d2n").mkdir()
    subprocess.run(
        ["dcm2niix", "-z", "y", "-f", "dwi", "-o", str(tmp_path / "d2n"), str(tmp_path / "dwi")],
        capture_output=True,
        check=True,
        timeout=60,
    )

    def in_world(nifti: Path) -> list:
        affine = nibabel.load(str(nifti)).affine[:3, :3]
        axes = affine / np.linalg.norm(affine, axis=0)
        flip = np.array([-1.0 if np.linalg.det(affine) > 0 else 1.0, 1.0, 1.0])
        stem = str(nifti)[: -len(".nii.gz")]
        vectors, b_values = np.loadtxt(stem + ".bvec").T, np.loadtxt(stem + ".bval")
        return sorted(
            (round(float(b)), tuple(np.round(axes @ (v * flip), 4) + 0.0))
            for b, v in zip(b_values, vectors)
        )

    assert in_world(out) == in_world(tmp_path / "d2n" / "dwi.nii.gz")
