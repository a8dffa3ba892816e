"""Reading a channel's image (:mod:`metcli.io.channels`): a CT phase or MR image as it is,
a diffusion shell as its trace image, the ADC from its file or computed.

Diffusion: BIDS keeps a diffusion series as one 4D file with its ``.bval``/``.bvec``.
The image of one b-value (``DWI-b800``) is the geometric mean of that shell's volumes
over their gradient directions: the trace-weighted image scanners show. The ADC, when
no ``_ADC`` file is given, is the mono-exponential fit S(b) = S0 exp(-b ADC) by least
squares on the logarithm of the trace images of every shell (Le Bihan et al., Radiology
1986; the scanners' own two-point ADC is the same fit on two shells), in mm2/s, clipped
to [0, 5e-3]; voxels without signal get 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metcli.core.errors import ImageError, InputError
from metcli.io.channels import Channel, channel_path, read_bvals, volumes_of

#: The largest ADC kept (mm2/s): free water at body temperature is about 3e-3.
ADC_MAX = 5e-3


def read_channel(root: Path, channel: Channel, sub: str, ses: str | None = None):
    """The channel's 3D SimpleITK image of one participant (and session)."""
    return read_channel_file(channel_path(root, channel, sub, ses), channel)


def read_channel_file(path: Path, channel: Channel | str | None):
    """The 3D image of ``channel`` from its file (:func:`metcli.io.channels.channel_path`);
    a channel given by name is parsed; None or ``ct`` is a CT."""
    from metcli.io.channels import parse_channel
    from metcli.io.files import read_image

    if channel is None or channel == "ct":
        channel = Channel("CT")
    elif isinstance(channel, str):
        channel = parse_channel(channel)
    path = Path(path)
    if channel.modality == "DWI":
        return shell_image(path, channel.bvalue)
    if channel.modality == "ADC" and path.name.endswith("_dwi.nii.gz"):
        return adc_image(path)
    what = "CT" if channel.kind == "ct" else f"{channel.name} image"
    return read_image(path, what=what)


def _series(path: Path):
    """The 4D diffusion series and its b-values (one per volume)."""
    from metcli.io.files import read_image

    series = read_image(path, what="diffusion series", dims=4)
    if series.GetDimension() == 3:  # a series of one volume: read_image drops its 4th axis
        import SimpleITK as sitk

        series = sitk.JoinSeries([series])
    bvals = read_bvals(path)
    if len(bvals) != series.GetSize()[3]:
        raise InputError(
            f"the .bval file lists {len(bvals)} b-value(s) for {series.GetSize()[3]} volume(s)",
            path=path,
            fix="give one b-value per volume (import the series again with metcli import-dicom)",
        )
    return series, bvals


def _volume(series, index: int) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(series[:, :, :, index]).astype(np.float64)


def _trace(series, indices: list[int]) -> np.ndarray:
    """Geometric mean of the volumes (the trace-weighted image of one shell)."""
    logs = [np.log(np.clip(_volume(series, i), 1e-6, None)) for i in indices]
    return np.exp(np.mean(logs, axis=0))


def _as_image(array: np.ndarray, series):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.float32))
    first = series[:, :, :, 0]
    image.CopyInformation(first)
    return image


def shell_image(path: Path, bvalue: int):
    """The trace image of the shell ``bvalue`` of a diffusion series."""
    series, bvals = _series(path)
    indices = volumes_of(bvals, bvalue)
    if not indices:
        shells = sorted({int(round(b)) for b in bvals})
        raise ImageError(
            f"the diffusion series has no volume of b = {bvalue} s/mm2 "
            f"(its b-values: {', '.join(map(str, shells))})",
            path=path,
            fix="choose one of its b-values in --channels (DWI-b<value>)",
        )
    return _as_image(_trace(series, indices), series)


def adc_image(path: Path):
    """The ADC map (mm2/s) fitted on every shell's trace image of a diffusion series."""
    series, bvals = _series(path)
    shells = sorted({0 if b < 50 else int(round(b)) for b in bvals})
    if len(shells) < 2:
        raise ImageError(
            "the ADC needs at least two b-values; the diffusion series has "
            + ", ".join(map(str, shells)),
            path=path,
            fix="give a series with two b-values or more, or the scanner's ADC map as "
            "..._ADC.nii.gz beside it",
        )
    b = np.asarray(shells, dtype=np.float64)
    logs = np.stack(
        [np.log(np.clip(_trace(series, volumes_of(bvals, s)), 1e-6, None)) for s in shells]
    )
    b_centred = b - b.mean()
    slope = np.tensordot(b_centred, logs - logs.mean(axis=0), axes=(0, 0)) / np.sum(b_centred**2)
    adc = np.clip(-slope, 0.0, ADC_MAX)
    no_signal = _trace(series, volumes_of(bvals, shells[0])) <= 1e-3
    adc[no_signal] = 0.0
    return _as_image(adc, series)
