"""train-cnn's augmentation presets (``--augment``, ``--flip``, ``--rotate``).

* ``affine`` (the default): the study's MONAI ``RandAffine``
  (:func:`metcli.cnn.fit.augmenter`), unchanged.
* ``flip-rotate`` (the non-contrast MRI study's): random flips, each with probability
  0.5 (``--flip``: ``horizontal`` mirrors the columns, left-right; ``vertical`` the rows,
  up-down; default both), then a rotation by an angle drawn uniformly from
  ``[-DEG, DEG]`` degrees (``--rotate``, default 40; 0: none) about the image centre,
  bilinear, black outside; MONAI's ``RandFlip`` and ``RandRotate``. 2D only.
* ``none``: the inputs as they are.

All draws of a :class:`FlipRotate` come from one NumPy ``RandomState`` seeded with the
run's seed, so the same seed gives the same augmented images, and the resume state
(:mod:`metcli.cnn.resume`, which saves ``R`` and ``rand_affine_grid.R`` as it does for
``RandAffine``) restores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np

from metcli.core.errors import UsageError

PRESETS = ("affine", "flip-rotate", "none")
FLIPS = ("horizontal", "vertical")
DEFAULT_ROTATE = 40.0


@dataclass(frozen=True)
class AugmentSettings:
    """An augmentation preset and its fields (``flips``, ``rotate``: ``flip-rotate`` only;
    None: the preset's defaults)."""

    preset: str = "affine"
    flips: Sequence[str] | None = None
    rotate: float | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UsageError(
                f"--augment must be one of {', '.join(PRESETS)}, got {self.preset!r}",
                fix="give --augment affine (the default), flip-rotate or none",
            )
        if self.preset != "flip-rotate" and (self.flips is not None or self.rotate is not None):
            raise UsageError(
                f"--flip and --rotate belong to --augment flip-rotate, not {self.preset}",
                fix="give --augment flip-rotate, or leave --flip and --rotate out",
            )
        unknown = [f for f in (self.flips or ()) if f not in FLIPS]
        if unknown:
            raise UsageError(
                f"--flip takes {' and '.join(FLIPS)} (comma-separated) or none, got "
                f"{', '.join(unknown)}",
                fix="give for example --flip horizontal,vertical",
            )
        if self.rotate is not None and not 0.0 <= self.rotate <= 180.0:
            raise UsageError(
                f"--rotate must be between 0 and 180 degrees, got {self.rotate}",
                fix="give for example --rotate 40 (the MRI study's)",
            )

    @property
    def resolved_flips(self) -> tuple[str, ...]:
        return tuple(FLIPS if self.flips is None else [f for f in FLIPS if f in self.flips])

    @property
    def resolved_rotate(self) -> float:
        return DEFAULT_ROTATE if self.rotate is None else float(self.rotate)

    def record(self) -> dict | None:
        """What the settings record and the card keep (None: ``affine``, which keeps its
        own description)."""
        if self.preset == "affine":
            return None
        if self.preset == "none":
            return {"preset": "none"}
        return {
            "preset": "flip-rotate",
            "flips": list(self.resolved_flips),
            "flip_probability": 0.5,
            "rotate_degrees": self.resolved_rotate,
            "rotation": "uniform in [-rotate_degrees, rotate_degrees] about the centre, "
            "bilinear, black outside",
            "library": "monai RandFlip, RandRotate",
        }


class FlipRotate:
    """Random flips and an in-plane rotation of a channel-first 2D image ``[C, H, W]``.

    ``R`` is the one random generator of every draw; ``rand_affine_grid.R`` names it
    again (the attribute the resume state reads from a ``RandAffine``).
    """

    def __init__(self, flips: Sequence[str], degrees: float, seed: int):
        from monai.transforms import RandFlip, RandRotate

        self.R = np.random.RandomState(seed)
        self.rand_affine_grid = SimpleNamespace(R=self.R)
        self.transforms = [
            RandFlip(prob=0.5, spatial_axis=1 if name == "horizontal" else 0)
            for name in FLIPS
            if name in flips
        ]
        if degrees > 0:
            self.transforms.append(
                RandRotate(
                    range_x=float(np.deg2rad(degrees)),
                    prob=1.0,
                    keep_size=True,
                    mode="bilinear",
                    padding_mode="zeros",
                )
            )
        for transform in self.transforms:
            transform.set_random_state(state=self.R)

    def __call__(self, image, spatial_size=None) -> np.ndarray:
        import torch

        out = torch.as_tensor(np.asarray(image, dtype=np.float32))
        for transform in self.transforms:
            out = transform(out)
        return np.asarray(out, dtype=np.float32)


def build_augmenter(
    settings: AugmentSettings | None, seed: int, dims: int, size: int, default: Callable
):
    """The training loop's augmenter: ``default(seed, dims, size)`` (the study's
    ``RandAffine``) for ``affine`` or None, else a :class:`FlipRotate`."""
    s = settings or AugmentSettings()
    if s.preset == "affine":
        return default(seed, dims, size)
    if s.preset == "flip-rotate" and dims != 2:
        raise UsageError(
            "--augment flip-rotate is for 2D slices", fix="use --dims 2, or --augment affine"
        )
    if s.preset == "none":
        return FlipRotate((), 0.0, seed)
    return FlipRotate(s.resolved_flips, s.resolved_rotate, seed)
