"""Channel names (metcli.io.channels) and channel images (metcli.imaging.channel_images):
CT phases, MR suffixes, diffusion shells as trace images and the ADC fitted on them.

The diffusion series is made with the mono-exponential model S = S0 exp(-b D) with a
different D along each gradient direction (anisotropic tissue): the trace image of a
shell is then S0 exp(-b MD), MD the mean of the three D, and the ADC fitted on the
shells is MD exactly (Le Bihan 1986; Basser 1994 for the trace).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metcli.core.errors import ImageError, InputError, UsageError
from metcli.imaging.channel_images import read_channel
from metcli.io.channels import Channel, channel_files, parse_channel, parse_channels


@pytest.mark.parametrize(
    "name,channel,relpath",
    [
        ("portal", Channel("CT", phase="portal"), "sub-1/anat/sub-1_ce-portal_ct.nii.gz"),
        ("ct", Channel("CT"), "sub-1/anat/sub-1_ct.nii.gz"),
        ("T2w", Channel("T2w"), "sub-1/anat/sub-1_T2w.nii.gz"),
        (
            "T1w-arterial",
            Channel("T1w", phase="arterial"),
            "sub-1/anat/sub-1_ce-arterial_T1w.nii.gz",
        ),
        ("DWI-b800", Channel("DWI", bvalue=800), "sub-1/dwi/sub-1_dwi.nii.gz"),
        ("ADC", Channel("ADC"), "sub-1/dwi/sub-1_ADC.nii.gz"),
    ],
)
def test_channel_names_parse_and_lie_where_bids_puts_them(name, channel, relpath):
    assert parse_channel(name) == channel
    assert channel.name == name
    assert channel.relpath("1").as_posix() == relpath
    assert channel.kind == ("ct" if channel.modality == "CT" else "mr")


def test_bad_channel_lists_are_usage_errors():
    with pytest.raises(UsageError, match="'DWI-800' is not a channel name"):
        parse_channel("DWI-800")
    assert parse_channel("venous") == Channel("CT", phase="venous")  # any phase label
    with pytest.raises(UsageError, match="names a channel twice"):
        parse_channels("portal,arterial,portal")
    assert [c.name for c in parse_channels(["T2w, DWI-b800", "ADC"])] == ["T2w", "DWI-b800", "ADC"]


MD = {"lesion": 1.0e-3, "liver": 1.4e-3}  # mm2/s, mean diffusivity
BVALS = [0, 0, 50, 50, 50, 800, 800, 800, 1500, 1500, 1500]
DIRECTIONS = [None, None, 0, 1, 2, 0, 1, 2, 0, 1, 2]


def write_dwi(root: Path, *, bvals=BVALS, bval_file=True) -> dict:
    """A 4D diffusion series of a liver with a lesion; returns the truth."""
    import SimpleITK as sitk

    shape = (12, 24, 24)
    s0 = np.full(shape, 800.0)
    md = np.full(shape, MD["liver"])
    lesion = np.zeros(shape, bool)
    lesion[4:8, 8:14, 8:14] = True
    md[lesion], s0[lesion] = MD["lesion"], 1000.0
    anisotropy = np.array([1.3, 0.9, 0.8])  # D along x, y, z as multiples of MD (mean 1)
    volumes = []
    for b, direction in zip(bvals, DIRECTIONS[: len(bvals)]):
        d = md if direction is None else md * anisotropy[direction]
        volumes.append(s0 * np.exp(-b * d))
    image = sitk.JoinSeries([sitk.GetImageFromArray(v.astype(np.float32)) for v in volumes])
    image.SetSpacing((1.5, 1.5, 5.0, 1.0))
    path = root / "sub-1" / "dwi" / "sub-1_dwi.nii.gz"
    path.parent.mkdir(parents=True)
    sitk.WriteImage(image, str(path), True)
    if bval_file:
        path.with_name("sub-1_dwi.bval").write_text(" ".join(map(str, bvals)) + "\n")
    path.with_name("sub-1_dwi.bvec").write_text("0 0 1 0 0 1 0 0 1 0 0\n" * 3)
    return {"s0": s0, "md": md, "lesion": lesion, "path": path}


def test_a_shell_is_its_trace_image(tmp_path):
    import SimpleITK as sitk

    truth = write_dwi(tmp_path)
    image = read_channel(tmp_path, parse_channel("DWI-b800"), "1")
    assert image.GetDimension() == 3 and image.GetSpacing() == (1.5, 1.5, 5.0)
    expected = truth["s0"] * np.exp(-800 * truth["md"])
    assert np.allclose(sitk.GetArrayFromImage(image), expected, rtol=1e-5)


def test_the_adc_fitted_on_the_shells_is_the_mean_diffusivity(tmp_path):
    import SimpleITK as sitk

    truth = write_dwi(tmp_path)
    adc = sitk.GetArrayFromImage(read_channel(tmp_path, parse_channel("ADC"), "1"))
    assert np.allclose(adc, truth["md"], rtol=1e-4)
    assert adc[truth["lesion"]].mean() < adc[~truth["lesion"]].mean()


def test_a_given_adc_map_is_read_as_it_is(tmp_path):
    import SimpleITK as sitk

    truth = write_dwi(tmp_path)
    given = sitk.GetImageFromArray((truth["md"] * 0.9).astype(np.float32))
    sitk.WriteImage(given, str(truth["path"].with_name("sub-1_ADC.nii.gz")))
    adc = sitk.GetArrayFromImage(read_channel(tmp_path, parse_channel("ADC"), "1"))
    assert np.allclose(adc, truth["md"] * 0.9)


def test_diffusion_faults_name_the_file_and_the_fix(tmp_path):
    write_dwi(tmp_path / "a")
    with pytest.raises(ImageError, match=r"no volume of b = 1000 .*0, 50, 800, 1500"):
        read_channel(tmp_path / "a", parse_channel("DWI-b1000"), "1")
    write_dwi(tmp_path / "b", bval_file=False)
    with pytest.raises(InputError, match="no .bval file"):
        read_channel(tmp_path / "b", parse_channel("DWI-b800"), "1")
    truth = write_dwi(tmp_path / "c")
    truth["path"].with_name("sub-1_dwi.bval").write_text("0 800\n")
    with pytest.raises(InputError, match=r"lists 2 b-value\(s\) for 11 volume"):
        read_channel(tmp_path / "c", parse_channel("DWI-b800"), "1")
    files = channel_files(tmp_path / "c", parse_channel("ADC"), "1")
    assert [f.name for f in files] == ["sub-1_dwi.nii.gz", "sub-1_dwi.bval", "sub-1_dwi.bvec"]
