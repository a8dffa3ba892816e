"""The preprocessing steps that 2D slices (:mod:`metcli.lesions.slices`) and 3D
volumes (:mod:`metcli.lesions.volumes`) share: settings, HU window, blackened
surroundings, square crops in millimetres, resizing, one orientation, lesion ids."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from metcli.core.errors import MaskError, UsageError

log = logging.getLogger(__name__)

#: Version of this preprocessing; model cards record it so that predict can refuse others.
PREPROCESSING_VERSION = 1
#: Resize modes (``SliceSettings.resize``) -> spline order of :func:`skimage.transform.resize`.
RESIZE_ORDERS = {"bilinear": 1, "bicubic": 3}


ORIENTATION = "LPS"


@dataclass(frozen=True)
class SliceSettings:
    """Parameters of :func:`lesion_slices` (all keyword, all validated)."""

    window_width: float = 330.0
    window_level: float = 10.0
    size: int = 224
    context_mm: float = 0.0
    fov_mm: float | None = None
    #: 2D slices' resize (``bilinear``, the study's; ``bicubic``: the MRI study's)
    resize: str = "bilinear"

    def __post_init__(self):
        if self.resize not in RESIZE_ORDERS:
            raise UsageError(
                f"--resize must be one of {', '.join(RESIZE_ORDERS)}, got {self.resize!r}",
                fix="give --resize bilinear or --resize bicubic",
            )
        if not np.isfinite(self.window_width) or self.window_width <= 0:
            raise UsageError(
                f"window width must be a positive number, got {self.window_width}",
                fix="give --window WIDTH,LEVEL, for example 330,10",
            )
        if not np.isfinite(self.window_level):
            raise UsageError(
                f"window level must be a finite number, got {self.window_level}",
                fix="give --window WIDTH,LEVEL, for example 330,10",
            )
        if int(self.size) != self.size or self.size < 2:
            raise UsageError(
                f"--size must be a whole number of at least 2, got {self.size}",
                fix="give for example --size 224",
            )
        if not np.isfinite(self.context_mm) or self.context_mm < 0:
            raise UsageError(
                f"--context-mm must be 0 or more, got {self.context_mm}",
                fix="give 0 (mask only) or a margin in mm",
            )
        if self.fov_mm is not None and (not np.isfinite(self.fov_mm) or self.fov_mm <= 0):
            raise UsageError(
                f"--fov-mm must be a positive number of mm, got {self.fov_mm}",
                fix="leave it out for the tight crop, or give for example 80",
            )

    @property
    def window_range(self) -> tuple[float, float]:
        """(lowest, highest) HU of the window."""
        half = self.window_width / 2.0
        return self.window_level - half, self.window_level + half

    def as_dict(self) -> dict:
        doc = asdict(self)
        if self.resize == "bilinear":  # the default: cards stay as they were before --resize
            del doc["resize"]
        doc["preprocessing_version"] = PREPROCESSING_VERSION
        doc["orientation"] = ORIENTATION
        return doc


def window(hu: np.ndarray, width: float = 330.0, level: float = 10.0) -> np.ndarray:
    """HU scaled to [0, 1] over ``[level - width/2, level + width/2]``, clipped (float32)."""
    low = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float64) - low) / float(width)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def keep_mask(lesion: np.ndarray, spacing_rc: tuple[float, float], context_mm: float) -> np.ndarray:
    """Pixels kept in a slice: the lesion, plus those within ``context_mm`` of it (in mm)."""
    lesion = np.asarray(lesion, dtype=bool)
    if context_mm <= 0:
        return lesion
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(~lesion, sampling=spacing_rc)
    return distance <= context_mm


def window_1d(lo: int, hi: int, pixel_mm: float, side_mm: float) -> tuple[int, int]:
    """(start, count) of a run of pixels covering ``side_mm`` centred on pixels lo..hi."""
    extent = hi - lo + 1
    count = max(int(round(side_mm / pixel_mm)), 1)
    start = lo - (count - extent) // 2 if count >= extent else lo + (extent - count) // 2
    return start, count


def _take(image: np.ndarray, r0: int, nr: int, c0: int, nc: int) -> np.ndarray:
    """image[r0:r0+nr, c0:c0+nc], black (0) where the window leaves the image."""
    out = np.zeros((nr, nc), dtype=image.dtype)
    rows, cols = image.shape
    rs, re = max(r0, 0), min(r0 + nr, rows)
    cs, ce = max(c0, 0), min(c0 + nc, cols)
    if rs < re and cs < ce:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = image[rs:re, cs:ce]
    return out


def square_crop(
    image: np.ndarray,
    region: np.ndarray,
    spacing_rc: tuple[float, float],
    fov_mm: float | None = None,
) -> np.ndarray:
    """The square (in mm) around ``region``'s bounding box, padded with black.

    Without ``fov_mm`` the side is the longer side of the bounding box in mm;
    with it, the side is ``fov_mm``. The result has as many rows and columns as
    cover that side at the pixel spacing (so it is square in mm, not always in
    pixels).
    """
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    r_lo, r_hi, c_lo, c_hi = rows[0], rows[-1], cols[0], cols[-1]
    sr, sc = spacing_rc
    side = fov_mm if fov_mm is not None else max((r_hi - r_lo + 1) * sr, (c_hi - c_lo + 1) * sc)
    r0, nr = window_1d(r_lo, r_hi, sr, side)
    c0, nc = window_1d(c_lo, c_hi, sc, side)
    return _take(image, r0, nr, c0, nc)


def resize_to(array: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """``array`` (2D or 3D, values in [0, 1]) resized to ``size`` along every axis
    (linear, or the spline ``order``: 3 is bicubic; anti-aliased when shrinking),
    float32 in [0, 1]."""
    from skimage.transform import resize

    shape = (int(size),) * array.ndim
    if array.shape == shape:
        return array.astype(np.float32)
    out = resize(
        array.astype(np.float64),
        shape,
        order=order,
        mode="edge",
        anti_aliasing=min(array.shape) > size,
        preserve_range=True,
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_square(image: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """``image`` resized to size x size (``mode``: bilinear or bicubic; anti-aliased when
    shrinking), float32."""
    return resize_to(image, size, RESIZE_ORDERS[mode])


def oriented_arrays(ct, lesion_map, *, ct_path=None, lesion_map_path=None):
    """(HU [z, y, x], lesion ids [z, y, x], spacing (z, y, x) mm), both in :data:`ORIENTATION`.

    The lesion map must be on the CT's grid or a flipped/permuted copy of it
    (:func:`metcli.imaging.geometry.to_reference_grid`; anything else is a GeometryError).
    """
    import SimpleITK as sitk

    from metcli.imaging.geometry import to_reference_grid

    lesion_map = to_reference_grid(
        lesion_map, ct, image_path=lesion_map_path, reference_path=ct_path
    )
    ct = sitk.DICOMOrient(ct, ORIENTATION)
    lesion_map = sitk.DICOMOrient(lesion_map, ORIENTATION)
    sx, sy, sz = ct.GetSpacing()
    return (
        sitk.GetArrayFromImage(ct),
        sitk.GetArrayFromImage(lesion_map),
        (float(sz), float(sy), float(sx)),
    )


def wanted_ids(
    ids: np.ndarray, lesion_ids: Sequence[int] | None, lesion_map_path=None
) -> list[int]:
    """The lesion ids to use: ``lesion_ids``, or every id in the map; an id the map
    lacks is a :class:`MaskError` naming the map."""
    present = set(int(v) for v in np.unique(ids)) - {0}
    wanted = sorted(present) if lesion_ids is None else [int(i) for i in lesion_ids]
    missing = [i for i in wanted if i not in present]
    if missing:
        raise MaskError(
            f"lesion id(s) {', '.join(map(str, missing))} are not in the lesion map",
            path=lesion_map_path,
            fix="give the lesion table written with this lesion map (split-lesions --overwrite)",
        )
    return wanted
