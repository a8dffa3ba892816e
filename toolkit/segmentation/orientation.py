"""Lossless changes of array axes that bring a CT to a model's orientation.

Both backends of ``metcli segment`` may bring every CT to the orientation the
model was trained in before the network sees it (:func:`orientation_transform`),
and map the labels back onto the CT's own grid; nothing is resampled.
``as-stored`` (:data:`AS_STORED`) keeps the array as it is stored, which is what
nnU-Net itself does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metcli.core.errors import UsageError

#: The orientation option's value for "feed the array as stored".
AS_STORED = "as-stored"


@dataclass(frozen=True)
class AxisTransform:
    """A lossless change of array axes: ``oriented = flip(transpose(array, perm), flips)``.

    Arrays are numpy arrays indexed [z, y, x] as SimpleITK gives them.
    """

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Input array -> oriented array (the last three axes)."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        axes = tuple(lead + k for k, f in enumerate(self.flips) if f)
        return np.flip(out, axes) if axes else out

    def backward(self, array: np.ndarray) -> np.ndarray:
        """Oriented array -> input array (the last three axes)."""
        lead = array.ndim - 3
        axes = tuple(lead + k for k, f in enumerate(self.flips) if f)
        out = np.flip(array, axes) if axes else array
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return np.transpose(out, tuple(range(lead)) + tuple(lead + p for p in inverse))

    def spacing_zyx(self, spacing_zyx: Sequence[float]) -> list[float]:
        return [float(spacing_zyx[p]) for p in self.perm]


def orientation_transform(direction: Sequence[float], code: str | None) -> AxisTransform:
    """The axis permutation and flips that bring an image with ``direction`` to ``code``.

    ``code`` is a three-letter orientation as SimpleITK's ``DICOMOrient`` reads it
    (``LPS`` is the identity direction; ``RAS`` is what nibabel's canonical
    orientation becomes when SimpleITK reads it). The closest orientation is used,
    as ``DICOMOrient`` does; the image is never resampled. ``None`` keeps the axes.
    """
    if code is None:
        return AxisTransform((0, 1, 2), (False, False, False))
    import SimpleITK as sitk

    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetDirection(tuple(float(d) for d in direction))
    try:
        oriented = sitk.DICOMOrient(probe, code)
    except RuntimeError:
        raise UsageError(
            f"orientation {code!r} is not a valid three-letter code",
            fix="use one letter of each of L/R, P/A, S/I, e.g. LPS or RAS",
        ) from None
    d_in = np.asarray(direction, float).reshape(3, 3)
    d_out = np.asarray(oriented.GetDirection(), float).reshape(3, 3)
    dots = d_in.T @ d_out  # [i, j]: input ITK axis i against oriented ITK axis j
    itk_perm = [int(np.argmax(np.abs(dots[:, j]))) for j in range(3)]
    itk_flip = [bool(dots[itk_perm[j], j] < 0) for j in range(3)]
    # numpy axis k is ITK axis 2 - k.
    perm = tuple(2 - itk_perm[2 - k] for k in range(3))
    flips = tuple(itk_flip[2 - k] for k in range(3))
    return AxisTransform(perm, flips)  # type: ignore[arg-type]


def check_orientation(code: str) -> str | None:
    """``as-stored`` -> None; a valid three-letter code -> itself, upper-case."""
    if str(code).strip().lower() == AS_STORED:
        return None
    code = str(code).strip().upper()
    if len(code) != 3:
        raise UsageError(
            f"--orientation {code!r} is not a three-letter code or {AS_STORED}",
            fix="use for example LPS, RAS, or as-stored",
        )
    orientation_transform((1, 0, 0, 0, 1, 0, 0, 0, 1), code)  # raises UsageError if invalid
    return code
