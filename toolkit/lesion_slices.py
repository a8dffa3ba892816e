"""The study's lesion-slice preprocessing for 2D image models (train-cnn, predict).

For every kept lesion of a lesion map (split-lesions' ids), every axial slice
that contains the lesion becomes one square image, in this order:

1. **Window** (first, on Hounsfield units): width ``W`` and level ``L`` map
   ``[L - W/2, L + W/2]`` linearly to ``[0, 1]``; values outside are clipped.
   The study's abdominal window (330, 10) gives ``[-155, 175]`` HU.
2. **Blacken the surroundings**: pixels outside the lesion (in that slice) are
   set to black, the window's minimum (0 after scaling). With ``context_mm``
   > 0, pixels within that distance (in mm, in the slice plane, respecting the
   pixel spacing) of the lesion are kept as well.
3. **Square crop**: the bounding box of the kept pixels in that slice,
   enlarged to a square *in millimetres* (its longer side) with black padding,
   never stretched; the crop follows the pixel spacing, so anisotropic pixels
   cover the same distance in both directions. With ``fov_mm`` the crop is a
   fixed field of view of that many millimetres centred on the lesion's
   bounding box instead, so that the lesion's size is not hidden by the resize.
4. **Resize** to ``size`` x ``size`` with :func:`skimage.transform.resize`
   (bilinear, anti-aliased when shrinking).

The lesion map is matched to the CT in physical space
(:func:`metcli.geometry.to_reference_grid`: the same grid, or flipped or
permuted axes of it); both are then brought to one orientation (LPS) so that
a flipped copy of the same data gives the same slices. Slices are ordered from
inferior to superior; rows run anterior to posterior, columns right to left.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from metcli.errors import MaskError, UsageError

log = logging.getLogger(__name__)

#: Version of this preprocessing; model cards record it so that predict can refuse others.
PREPROCESSING_VERSION = 1
ORIENTATION = "LPS"


@dataclass(frozen=True)
class SliceSettings:
    """Parameters of :func:`lesion_slices` (all keyword, all validated)."""

    window_width: float = 330.0
    window_level: float = 10.0
    size: int = 224
    context_mm: float = 0.0
    fov_mm: float | None = None

    def __post_init__(self):
        if not np.isfinite(self.window_width) or self.window_width <= 0:
            raise UsageError(f"window width must be a positive number, got {self.window_width}",
                             fix="give --window WIDTH,LEVEL, for example 330,10")
        if not np.isfinite(self.window_level):
            raise UsageError(f"window level must be a finite number, got {self.window_level}",
                             fix="give --window WIDTH,LEVEL, for example 330,10")
        if int(self.size) != self.size or self.size < 2:
            raise UsageError(f"--size must be a whole number of at least 2, got {self.size}",
                             fix="give for example --size 224")
        if not np.isfinite(self.context_mm) or self.context_mm < 0:
            raise UsageError(f"--context-mm must be 0 or more, got {self.context_mm}",
                             fix="give 0 (mask only) or a margin in mm")
        if self.fov_mm is not None and (not np.isfinite(self.fov_mm) or self.fov_mm <= 0):
            raise UsageError(f"--fov-mm must be a positive number of mm, got {self.fov_mm}",
                             fix="leave it out for the tight crop, or give for example 80")

    @property
    def window_range(self) -> tuple[float, float]:
        """(lowest, highest) HU of the window."""
        half = self.window_width / 2.0
        return self.window_level - half, self.window_level + half

    def as_dict(self) -> dict:
        doc = asdict(self)
        doc["preprocessing_version"] = PREPROCESSING_VERSION
        doc["orientation"] = ORIENTATION
        return doc


@dataclass
class LesionSlices:
    """The images of one lesion: ``images`` (n, size, size) float32 in [0, 1]."""

    lesion_id: int
    slice_indices: list[int]
    images: np.ndarray


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


def _window_1d(lo: int, hi: int, pixel_mm: float, side_mm: float) -> tuple[int, int]:
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
        out[rs - r0:re - r0, cs - c0:ce - c0] = image[rs:re, cs:ce]
    return out


def square_crop(image: np.ndarray, region: np.ndarray, spacing_rc: tuple[float, float],
                fov_mm: float | None = None) -> np.ndarray:
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
    r0, nr = _window_1d(r_lo, r_hi, sr, side)
    c0, nc = _window_1d(c_lo, c_hi, sc, side)
    return _take(image, r0, nr, c0, nc)


def resize_to(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` (2D or 3D, values in [0, 1]) resized to ``size`` along every axis
    (linear; anti-aliased when shrinking), float32 in [0, 1]."""
    from skimage.transform import resize

    shape = (int(size),) * array.ndim
    if array.shape == shape:
        return array.astype(np.float32)
    out = resize(array.astype(np.float64), shape, order=1, mode="edge",
                 anti_aliasing=min(array.shape) > size, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` resized to size x size (bilinear; anti-aliased when shrinking), float32."""
    return resize_to(image, size)


def oriented_arrays(ct, lesion_map, *, ct_path=None, lesion_map_path=None):
    """(HU [z, y, x], lesion ids [z, y, x], spacing (z, y, x) mm), both in :data:`ORIENTATION`.

    The lesion map must be on the CT's grid or a flipped/permuted copy of it
    (:func:`metcli.geometry.to_reference_grid`; anything else is a GeometryError).
    """
    import SimpleITK as sitk

    from metcli.geometry import to_reference_grid

    lesion_map = to_reference_grid(lesion_map, ct, image_path=lesion_map_path,
                                   reference_path=ct_path)
    ct = sitk.DICOMOrient(ct, ORIENTATION)
    lesion_map = sitk.DICOMOrient(lesion_map, ORIENTATION)
    sx, sy, sz = ct.GetSpacing()
    return (sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lesion_map),
            (float(sz), float(sy), float(sx)))


def wanted_ids(ids: np.ndarray, lesion_ids: Sequence[int] | None, lesion_map_path=None
               ) -> list[int]:
    """The lesion ids to use: ``lesion_ids``, or every id in the map; an id the map
    lacks is a :class:`MaskError` naming the map."""
    present = set(int(v) for v in np.unique(ids)) - {0}
    wanted = sorted(present) if lesion_ids is None else [int(i) for i in lesion_ids]
    missing = [i for i in wanted if i not in present]
    if missing:
        raise MaskError(f"lesion id(s) {', '.join(map(str, missing))} are not in the lesion map",
                        path=lesion_map_path,
                        fix="give the lesion table written with this lesion map "
                            "(split-lesions --overwrite)")
    return wanted


def lesion_slices(ct, lesion_map, *, lesion_ids: Sequence[int] | None = None,
                  settings: SliceSettings | None = None, ct_path=None,
                  lesion_map_path=None) -> list[LesionSlices]:
    """The preprocessed axial slices of each lesion (see the module docstring).

    Args:
        ct: the CT (SimpleITK image, HU).
        lesion_map: split-lesions' map (0 background, 1..N lesion ids), on the
            CT's grid or a flipped/permuted copy of it.
        lesion_ids: the lesions to use (split-lesions' kept ones); default all
            ids present. An id missing from the map is a :class:`MaskError`.
        settings: :class:`SliceSettings` (default: the study's).
    """
    settings = settings or SliceSettings()
    hu, ids, spacing_zyx = oriented_arrays(ct, lesion_map, ct_path=ct_path,
                                           lesion_map_path=lesion_map_path)
    spacing_rc = spacing_zyx[1:]
    wanted = wanted_ids(ids, lesion_ids, lesion_map_path)
    result = []
    for lesion_id in wanted:
        mask = ids == lesion_id
        z_indices = np.flatnonzero(mask.any(axis=(1, 2)))
        images = []
        for z in z_indices:
            lesion = mask[z]
            windowed = window(hu[z], settings.window_width, settings.window_level)
            kept = keep_mask(lesion, spacing_rc, settings.context_mm)
            windowed[~kept] = 0.0
            crop = square_crop(windowed, kept, spacing_rc, settings.fov_mm)
            images.append(resize_square(crop, int(settings.size)))
        stack = (np.stack(images) if images else
                 np.zeros((0, settings.size, settings.size), np.float32))
        result.append(LesionSlices(lesion_id, [int(z) for z in z_indices], stack))
    return result


# ----------------------------------------------------------------------------- model inputs
#: The preprocessing settings this version reproduces; a card with any other is refused.
CARD_PREPROCESSING_KEYS = frozenset(
    {"window_width", "window_level", "size", "context_mm", "fov_mm", "preprocessing_version",
     "orientation"})


@dataclass
class LesionInputs:
    """The network inputs of one lesion.

    ``images`` is float32 ``[n, channels, size, size]``, one image per axial
    slice that contains the lesion (``slice_indices``: their z index in LPS
    orientation, inferior to superior); for a 3D card (``dims`` 3) it is
    ``[1, channels, size, size, size]``, the lesion's cube
    (:mod:`metcli.lesion_volumes`), and ``slice_indices`` are the slices that
    contain the lesion.
    """

    lesion_id: int
    slice_indices: list[int]
    images: np.ndarray


def _refuse(what: str, card_path, fix: str | None = None):
    from metcli.errors import InputError

    return InputError(what, path=card_path, fix=fix or "retrain the model with this metcli, "
                                                       "or predict with the metcli version "
                                                       "it was trained with (versions.metcli "
                                                       "in model.json)")


def settings_from_card(card: dict, *, card_path=None) -> SliceSettings:
    """The :class:`SliceSettings` of a model card, or an error for what this version cannot redo.

    Refused (:class:`~metcli.errors.InputError` naming ``card_path``): another
    ``preprocessing_version`` or orientation, a setting this version does not
    know, ``dims`` other than 2 (the default) or 3, an input shape that is not
    ``[batch, channels, size, size(, size)]`` with the card's ``size`` and
    number of ``input.channels``, or invalid values.
    """
    pre = card.get("preprocessing")
    if not isinstance(pre, dict):
        raise _refuse("the model card has no preprocessing settings", card_path,
                      fix="give the model.json that train-cnn wrote")
    dims = card.get("dims", 2)
    if dims not in (2, 3):
        raise _refuse(f"the model takes {dims}-dimensional inputs; this metcli makes 2D lesion "
                      "slices and 3D lesion volumes only", card_path)
    if dims == 3:
        from metcli.lesion_volumes import PREPROCESSING_VERSION as expected_version
    else:
        expected_version = PREPROCESSING_VERSION
    version = pre.get("preprocessing_version")
    if version != expected_version:
        raise _refuse(f"the model was trained with {dims}D lesion preprocessing version "
                      f"{version}; this metcli reproduces version {expected_version} only",
                      card_path)
    if pre.get("orientation") != ORIENTATION:
        raise _refuse(f"the model's slices were taken in {pre.get('orientation')} orientation; "
                      f"this metcli takes them in {ORIENTATION}", card_path)
    unknown = sorted(set(pre) - CARD_PREPROCESSING_KEYS)
    if unknown:
        raise _refuse(f"the model's preprocessing has setting(s) {', '.join(unknown)} that this "
                      "metcli does not know", card_path)
    try:
        settings = SliceSettings(window_width=float(pre["window_width"]),
                                 window_level=float(pre["window_level"]), size=int(pre["size"]),
                                 context_mm=float(pre["context_mm"]),
                                 fov_mm=None if pre["fov_mm"] is None else float(pre["fov_mm"]))
    except KeyError as exc:
        raise _refuse(f"the model's preprocessing lacks {exc.args[0]}", card_path,
                      fix="give the model.json that train-cnn wrote") from None
    except (TypeError, ValueError, UsageError) as exc:
        what = exc.what if isinstance(exc, UsageError) else str(exc)
        raise _refuse(f"the model's preprocessing is invalid: {what}", card_path,
                      fix="give the model.json that train-cnn wrote") from None
    shape = list(card.get("input", {}).get("shape", []))
    channels = list(card.get("input", {}).get("channels") or ["ct"])
    expected = ["batch", len(channels)] + [settings.size] * dims
    if shape != expected:
        raise _refuse(f"the model's input shape {shape} is not {expected}, the {dims}D "
                      f"{len(channels)}-channel lesion inputs of size {settings.size} this "
                      "metcli makes", card_path)
    return settings


def card_phases(card: dict) -> list[str] | None:
    """The contrast phases a card's network takes, in channel order.

    None: one channel, the CT of the lesion map's own phase (``channels``
    ``["ct"]``); otherwise ``card["phases"]``, the ``ce-`` labels of the CTs
    stacked as channels (``train-cnn --phases``).
    """
    phases = card.get("phases")
    return None if not phases else [str(p) for p in phases]


def model_inputs(card: dict, cts: dict, lesion_map, lesion_ids: Sequence[int], *,
                 ct_paths: dict | None = None, lesion_map_path=None,
                 card_path=None) -> list[LesionInputs]:
    """The inputs of the network a model card describes, for each lesion (training and predict).

    Args:
        card: the model card (``model.json``) or the part of it train-cnn builds
            first: ``preprocessing`` and ``input`` (``shape``, ``channels``).
        cts: contrast phase (``ce-`` entity, ``None`` without one) -> CT
            (SimpleITK image, HU).
        lesion_map: split-lesions' map on the CTs' grid (or a flipped or
            permuted copy of it).
        lesion_ids: the lesions to use (split-lesions' kept ones); an id
            missing from the map is a :class:`~metcli.errors.MaskError` naming
            ``lesion_map_path``.
        ct_paths, lesion_map_path, card_path: the files, for error messages.

    Cards: ``dims`` 2 (default), lesion slices (:func:`lesion_slices`), or 3,
    one cube per lesion (:func:`metcli.lesion_volumes.lesion_volumes`), with
    :func:`settings_from_card`'s settings; channels ``["ct"]`` (one CT, the
    lesion map's phase) or the phases of :func:`card_phases` in order (``cts``
    must hold each; every phase is preprocessed with the same lesion mask and
    crop and stacked as a channel). Anything else is refused.
    """
    settings = settings_from_card(card, card_path=card_path)
    channels = list(card.get("input", {}).get("channels", []))
    phases = card_phases(card)
    if phases is None:
        if channels != ["ct"]:
            raise _refuse(f"the model takes channel(s) {channels} but names no phases; this "
                          "metcli makes one channel (ct) or one per phase", card_path)
        if len(cts) != 1:
            names = ", ".join(str(p) for p in sorted(cts, key=str)) or "none"
            raise _refuse(f"the model takes one CT but {len(cts)} were given (phases: {names})",
                          card_path, fix="give the CT of the lesion map's contrast phase only")
        order = list(cts)
    else:
        if channels != phases:
            raise _refuse(f"the model's channels {channels} are not its phases {phases}",
                          card_path, fix="give the model.json that train-cnn wrote")
        missing = [p for p in phases if p not in cts]
        if missing:
            raise _refuse(f"the model takes the phases {', '.join(phases)}; no CT of "
                          f"{', '.join(missing)} was given", card_path,
                          fix="give a CT of every phase the model takes")
        order = phases
    per_channel = []
    for phase in order:
        ct_path = (ct_paths or {}).get(phase)
        if card.get("dims", 2) == 3:
            from metcli.lesion_volumes import lesion_volumes

            made = lesion_volumes(cts[phase], lesion_map, lesion_ids=lesion_ids,
                                  settings=settings, ct_path=ct_path,
                                  lesion_map_path=lesion_map_path)
            per_channel.append([(v.lesion_id, v.slice_indices, v.image[None]) for v in made])
        else:
            made = lesion_slices(cts[phase], lesion_map, lesion_ids=lesion_ids,
                                 settings=settings, ct_path=ct_path,
                                 lesion_map_path=lesion_map_path)
            per_channel.append([(s.lesion_id, s.slice_indices, s.images) for s in made])
    return [LesionInputs(lesion_id, indices,
                         np.stack([channel[i][2] for channel in per_channel],
                                  axis=1).astype(np.float32))
            for i, (lesion_id, indices, _images) in enumerate(per_channel[0])]
