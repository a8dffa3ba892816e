"""Each channel's intensities, as an image model sees them.

CT is in Hounsfield units: the model card's window (width, level) maps it to [0, 1]
(:func:`metcli.lesions.preprocess.window`). MR has no absolute unit: each image is
normalised on its own (Nyul and Udupa 1999; the z-score of the body is what nnU-Net and
most MR radiomics pipelines use):

1. the body: voxels above the image's Otsu threshold (:func:`skimage.filters.threshold_otsu`);
2. intensities clipped to the body's ``lower``-th and ``upper``-th percentiles (0.5 and
   99.5 by default: a few bright vessels or artefacts do not set the scale);
3. z-scores over the body (mean 0, standard deviation 1);
4. z in [-3, 3] mapped to the card's window, so that the window gives
   (z + 3) / 6 clipped to [0, 1]: every channel, CT or MR, ends in [0, 1] through the
   same crop, blackening and resize.

The method and its parameters of every channel are recorded in the model card
(``preprocessing.channel_intensity``), and predict applies exactly the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from metcli.core.errors import InputError, UsageError

METHODS = ("hu", "zscore")
#: z-scores from -Z_RANGE to +Z_RANGE fill the window
Z_RANGE = 3.0


@dataclass(frozen=True)
class ChannelIntensity:
    """How one channel's intensities are handled (``hu``: as they are, for the window)."""

    method: str = "hu"
    lower_percentile: float | None = None
    upper_percentile: float | None = None
    #: N4 bias-field correction (SimpleITK) before the z-score (MR only)
    n4: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(
                f"intensity method {self.method!r} is not one of {', '.join(METHODS)}",
                fix="use hu for CT, zscore for MR",
            )
        if self.n4 and self.method != "zscore":
            raise UsageError(
                "N4 bias-field correction is for MR channels (zscore), not for HU",
                fix="leave --n4 out for CT channels",
            )
        if self.method == "zscore":
            lo, hi = self.lower_percentile, self.upper_percentile
            if lo is None or hi is None or not 0 <= lo < hi <= 100:
                raise UsageError(
                    f"the MR percentiles must satisfy 0 <= lower < upper <= 100, got {lo}, {hi}",
                    fix="use 0.5 and 99.5 (the default)",
                )

    @classmethod
    def for_kind(cls, kind: str) -> "ChannelIntensity":
        """The default of a channel kind: ``ct`` in HU, ``mr`` z-scored over the body."""
        return cls("hu") if kind == "ct" else cls("zscore", 0.5, 99.5)

    @classmethod
    def from_dict(cls, doc: dict, *, where=None) -> "ChannelIntensity":
        try:
            return cls(**doc)
        except TypeError as exc:
            raise InputError(
                f"a channel's intensity record is malformed ({exc})",
                path=where,
                fix="give the model.json that train-cnn wrote, unchanged",
            ) from None

    def as_dict(self) -> dict:
        return asdict(self)


def body_mask(array: np.ndarray) -> np.ndarray:
    """Voxels above the Otsu threshold of the finite voxels (the body, in MR)."""
    from skimage.filters import threshold_otsu

    finite = np.isfinite(array)
    values = array[finite]
    if values.size == 0 or values.min() == values.max():
        return finite
    return finite & (array > threshold_otsu(values))


def zscore_stats(array: np.ndarray, spec: ChannelIntensity) -> tuple[float, float, float, float]:
    """(lowest, highest, mean, standard deviation) of the body after clipping."""
    body = body_mask(array)
    values = array[body].astype(np.float64)
    if values.size < 2:
        raise InputError(
            "the MR image has no body voxels to normalise (it is empty or constant)",
            fix="check the image",
        )
    lo, hi = np.percentile(values, [spec.lower_percentile, spec.upper_percentile])
    clipped = np.clip(values, lo, hi)
    sd = float(clipped.std())
    return float(lo), float(hi), float(clipped.mean()), sd if sd > 0 else 1.0


def to_window(
    array: np.ndarray, spec: ChannelIntensity, width: float, level: float, stats=None
) -> np.ndarray:
    """``array`` in the values the window expects: HU as they are; MR z-scores mapped so
    that z = -3 is the window's low end and z = +3 its high end. ``stats`` (from
    :func:`zscore_stats`) may come from the channel's own grid before resampling."""
    if spec.method == "hu":
        return array
    lo, hi, mean, sd = stats if stats is not None else zscore_stats(array, spec)
    z = (np.clip(array.astype(np.float64), lo, hi) - mean) / sd
    low = level - width / 2.0
    return (low + (z + Z_RANGE) / (2 * Z_RANGE) * width).astype(np.float32)


def parse_intensity(text: str) -> tuple[str, ChannelIntensity]:
    """``T2w=zscore:1,99`` (or ``T2w=zscore``, ``portal=hu``) -> (channel, rule)."""
    channel, sep, rule = str(text).partition("=")
    method, _, bounds = rule.strip().partition(":")
    try:
        if not sep or not channel.strip():
            raise ValueError
        if method == "zscore":
            lo, hi = (float(v) for v in bounds.split(",")) if bounds else (0.5, 99.5)
            return channel.strip(), ChannelIntensity("zscore", lo, hi)
        if method == "hu" and not bounds:
            return channel.strip(), ChannelIntensity("hu")
        raise ValueError
    except ValueError:
        raise UsageError(
            f"--intensity {text!r} is not CHANNEL=hu or CHANNEL=zscore[:LOWER,UPPER]",
            fix="for example --intensity T2w=zscore:1,99",
        ) from None


def n4_correct(image, *, shrink: int = 4, iterations: tuple[int, ...] = (50, 50, 30)):
    """``image`` divided by the bias field SimpleITK's N4 (Tustison et al. 2010) fits on a
    ``shrink``-times smaller copy, inside the body (Otsu); float32, same grid."""
    import SimpleITK as sitk

    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    small = sitk.Shrink(image, [shrink] * image.GetDimension())
    small_mask = sitk.Shrink(mask, [shrink] * image.GetDimension())
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    return sitk.Cast(image / sitk.Exp(log_field), sitk.sitkFloat32)
