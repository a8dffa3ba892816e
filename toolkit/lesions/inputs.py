"""A model card's image inputs: the preprocessing settings it records, its phases, and
the network inputs of a participant's lesions (2D slices or 3D volumes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metcli.core.errors import UsageError
from metcli.lesions.preprocess import ORIENTATION, PREPROCESSING_VERSION, SliceSettings
from metcli.lesions.slices import lesion_slices

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model inputs
#: The preprocessing settings this version reproduces; a card with any other is refused.
CARD_PREPROCESSING_KEYS = frozenset(
    {
        "window_width",
        "window_level",
        "size",
        "context_mm",
        "fov_mm",
        "preprocessing_version",
        "orientation",
        "channel_intensity",
        "channel_grids",
        "channel_registration",
        "resize",
    }
)


@dataclass
class LesionInputs:
    """The network inputs of one lesion.

    ``images`` is float32 ``[n, channels, size, size]``, one image per axial
    slice that contains the lesion (``slice_indices``: their z index in LPS
    orientation, inferior to superior); for a 3D card (``dims`` 3) it is
    ``[1, channels, size, size, size]``, the lesion's cube
    (:mod:`metcli.lesions.volumes`), and ``slice_indices`` are the slices that
    contain the lesion.
    """

    lesion_id: int
    slice_indices: list[int]
    images: np.ndarray


def _refuse(what: str, card_path, fix: str | None = None):
    from metcli.core.errors import InputError

    return InputError(
        what,
        path=card_path,
        fix=fix
        or "retrain the model with this metcli, "
        "or predict with the metcli version "
        "it was trained with (versions.metcli "
        "in model.json)",
    )


def settings_from_card(card: dict, *, card_path=None) -> SliceSettings:
    """The :class:`SliceSettings` of a model card, or an error for what this version cannot redo.

    Refused (:class:`~metcli.core.errors.InputError` naming ``card_path``): another
    ``preprocessing_version`` or orientation, a setting this version does not know, ``dims``
    other than 2 (the default) or 3, an input shape that is not ``[batch, channels, size,
    size(, size)]`` with the card's ``size`` and number of ``input.channels``, or invalid values.
    """
    pre = card.get("preprocessing")
    if not isinstance(pre, dict):
        raise _refuse(
            "the model card has no preprocessing settings",
            card_path,
            fix="give the model.json that train-cnn wrote",
        )
    dims = card.get("dims", 2)
    if dims not in (2, 3):
        raise _refuse(
            f"the model takes {dims}-dimensional inputs; this metcli makes 2D lesion "
            "slices and 3D lesion volumes only",
            card_path,
        )
    if dims == 3:
        from metcli.lesions.volumes import PREPROCESSING_VERSION as expected_version
    else:
        expected_version = PREPROCESSING_VERSION
    version = pre.get("preprocessing_version")
    if version != expected_version:
        raise _refuse(
            f"the model was trained with {dims}D lesion preprocessing version "
            f"{version}; this metcli reproduces version {expected_version} only",
            card_path,
        )
    if pre.get("orientation") != ORIENTATION:
        raise _refuse(
            f"the model's slices were taken in {pre.get('orientation')} orientation; "
            f"this metcli takes them in {ORIENTATION}",
            card_path,
        )
    unknown = sorted(set(pre) - CARD_PREPROCESSING_KEYS)
    if unknown:
        raise _refuse(
            f"the model's preprocessing has setting(s) {', '.join(unknown)} that this "
            "metcli does not know",
            card_path,
        )
    try:
        settings = SliceSettings(
            window_width=float(pre["window_width"]),
            window_level=float(pre["window_level"]),
            size=int(pre["size"]),
            context_mm=float(pre["context_mm"]),
            fov_mm=None if pre["fov_mm"] is None else float(pre["fov_mm"]),
            resize=str(pre.get("resize", "bilinear")),
        )
    except KeyError as exc:
        raise _refuse(
            f"the model's preprocessing lacks {exc.args[0]}",
            card_path,
            fix="give the model.json that train-cnn wrote",
        ) from None
    except (TypeError, ValueError, UsageError) as exc:
        what = exc.what if isinstance(exc, UsageError) else str(exc)
        raise _refuse(
            f"the model's preprocessing is invalid: {what}",
            card_path,
            fix="give the model.json that train-cnn wrote",
        ) from None
    shape = list(card.get("input", {}).get("shape", []))
    channels = list(card.get("input", {}).get("channels") or ["ct"])
    regions = card_regions(card, card_path=card_path)
    expected = ["batch", len(channels) * len(regions)] + [settings.size] * dims
    if shape != expected:
        raise _refuse(
            f"the model's input shape {shape} is not {expected}, the {dims}D "
            f"{len(channels)}-channel lesion inputs of size {settings.size} this "
            "metcli makes",
            card_path,
        )
    return settings


def card_regions(card: dict, *, card_path=None) -> list[str]:
    """The regions a card's network sees per channel: ``["tumour"]`` (the lesion's cube or
    slices, every card before ``train-cnn --arch almss``) or ``["tumour", "liver"]``
    (then the liver's cube of each channel follows the lesions' channels)."""
    regions = list(card.get("input", {}).get("regions") or ["tumour"])
    if regions not in (["tumour"], ["tumour", "liver"]):
        raise _refuse(
            f"the model takes the regions {regions}; this metcli makes tumour and liver cubes only",
            card_path,
        )
    if "liver" in regions and card.get("dims", 2) != 3:
        raise _refuse(
            "the model takes a 2D liver region; this metcli makes it in 3D only", card_path
        )
    return regions


def card_phases(card: dict) -> list[str] | None:
    """The contrast phases a card's network takes, in channel order.

    None: one channel, the CT of the lesion map's own phase (``channels``
    ``["ct"]``); otherwise ``card["phases"]``, the ``ce-`` labels of the CTs
    stacked as channels (``train-cnn --phases``).
    """
    phases = card.get("phases")
    return None if not phases else [str(p) for p in phases]


def model_inputs(
    card: dict,
    cts: dict,
    lesion_map,
    lesion_ids: Sequence[int],
    *,
    ct_paths: dict | None = None,
    lesion_map_path=None,
    card_path=None,
    liver_mask=None,
    liver_mask_path=None,
) -> list[LesionInputs]:
    """The inputs of the network a model card describes, for each lesion (training and predict).

    Args:
        card: the model card (``model.json``) or the part of it train-cnn builds
            first: ``preprocessing`` and ``input`` (``shape``, ``channels``).
        cts: contrast phase (``ce-`` entity, ``None`` without one) -> CT
            (SimpleITK image, HU).
        lesion_map: split-lesions' map on the CTs' grid (or a flipped or
            permuted copy of it).
        lesion_ids: the lesions to use (split-lesions' kept ones); an id
            missing from the map is a :class:`~metcli.core.errors.MaskError` naming
            ``lesion_map_path``.
        ct_paths, lesion_map_path, card_path: the files, for error messages.
        liver_mask: a segmentation (``dseg``: liver 1, lesion 2) on the lesion map's grid,
            for a card whose ``input.regions`` include ``liver``
            (:func:`liver_inputs`); ``liver_mask_path`` names it in errors.

    Cards: ``dims`` 2 (default), lesion slices (:func:`lesion_slices`), or 3,
    one cube per lesion (:func:`metcli.lesions.volumes.lesion_volumes`), with
    :func:`settings_from_card`'s settings; channels ``["ct"]`` (one CT, the
    lesion map's phase) or the phases of :func:`card_phases` in order (``cts``
    must hold each; every phase is preprocessed with the same lesion mask and
    crop and stacked as a channel). Anything else is refused.
    """
    from metcli.lesions.channel_inputs import card_intensities, prepare_channels

    settings = settings_from_card(card, card_path=card_path)
    order = _channel_order(card, cts, card_path)
    images = prepare_channels(
        {p: cts[p] for p in order},
        lesion_map,
        lesion_ids,
        card_intensities(card, order, card_path=card_path),
        window=(settings.window_width, settings.window_level),
        paths=ct_paths,
        lesion_map_path=lesion_map_path,
        register=str(card["preprocessing"].get("channel_registration", "none")),
    )
    per_channel = []
    for phase in order:
        per_channel.append(
            _channel_inputs(
                card,
                images[phase],
                lesion_map,
                lesion_ids,
                settings,
                ct_path=(ct_paths or {}).get(phase),
                lesion_map_path=lesion_map_path,
            )
        )
    liver = None
    if "liver" in card_regions(card, card_path=card_path):
        liver = liver_inputs(
            [images[p] for p in order],
            liver_mask,
            settings,
            liver_mask_path=liver_mask_path,
            card_path=card_path,
        )
    out = []
    for i, (lesion_id, indices, _images) in enumerate(per_channel[0]):
        stacked = np.stack([channel[i][2] for channel in per_channel], axis=1)
        if liver is not None:
            stacked = np.concatenate([stacked, liver], axis=1)
        out.append(LesionInputs(lesion_id, indices, stacked.astype(np.float32)))
    return out


def liver_inputs(
    channels: Sequence, liver_mask, settings: SliceSettings, *, liver_mask_path=None, card_path=None
) -> np.ndarray:
    """``[1, channels, size, size, size]``: the liver's cube in each channel (the global
    branch of ``--arch almss``): liver and lesions (labels 1 and 2 of ``liver_mask``) kept,
    the rest black, cropped to the cube around them and resized, by the rules of
    :mod:`metcli.lesions.volumes` with the card's window and size (no context, no fixed
    field of view)."""
    import SimpleITK as sitk

    from metcli.core.errors import MaskError
    from metcli.lesions.volumes import lesion_volumes

    if liver_mask is None:
        raise _refuse(
            "the model takes the liver region of each phase, but no liver mask was given",
            card_path,
            fix="give the segmentation folder (metcli segment's OUT_DIR) as the third input",
        )
    region = sitk.Cast(liver_mask > 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(region).any():
        raise MaskError(
            "the segmentation has no liver or lesion voxel",
            path=liver_mask_path,
            fix="give the participant's metcli segment output (labels 1 liver, 2 lesion)",
        )
    whole = SliceSettings(
        window_width=settings.window_width,
        window_level=settings.window_level,
        size=settings.size,
    )
    cubes = [
        lesion_volumes(
            image, region, lesion_ids=[1], settings=whole, lesion_map_path=liver_mask_path
        )[0].image
        for image in channels
    ]
    return np.stack(cubes)[None].astype(np.float32)


def _channel_order(card: dict, cts: dict, card_path) -> list:
    """The keys of ``cts`` in the card's channel order, or an error for what it cannot take."""
    channels = list(card.get("input", {}).get("channels", []))
    phases = card_phases(card)
    if phases is None:
        if channels != ["ct"]:
            raise _refuse(
                f"the model takes channel(s) {channels} but names no phases; this "
                "metcli makes one channel (ct) or one per phase",
                card_path,
            )
        if len(cts) != 1:
            names = ", ".join(str(p) for p in sorted(cts, key=str)) or "none"
            raise _refuse(
                f"the model takes one CT but {len(cts)} were given (phases: {names})",
                card_path,
                fix="give the CT of the lesion map's contrast phase only",
            )
        return list(cts)
    if channels != phases:
        raise _refuse(
            f"the model's channels {channels} are not its phases {phases}",
            card_path,
            fix="give the model.json that train-cnn wrote",
        )
    missing = [p for p in phases if p not in cts]
    if missing:
        raise _refuse(
            f"the model takes the phases {', '.join(phases)}; no CT of "
            f"{', '.join(missing)} was given",
            card_path,
            fix="give a CT of every phase the model takes",
        )
    return phases


def _channel_inputs(
    card: dict,
    ct,
    lesion_map,
    lesion_ids: Sequence[int],
    settings: SliceSettings,
    *,
    ct_path,
    lesion_map_path,
) -> list[tuple]:
    """(lesion id, slice indices, images ``[n, size, size(, size)]``) of each lesion, from
    one channel's CT: its slices (a 2D card) or its cube (3D)."""
    if card.get("dims", 2) == 3:
        from metcli.lesions.volumes import lesion_volumes

        made = lesion_volumes(
            ct,
            lesion_map,
            lesion_ids=lesion_ids,
            settings=settings,
            ct_path=ct_path,
            lesion_map_path=lesion_map_path,
        )
        return [(v.lesion_id, v.slice_indices, v.image[None]) for v in made]
    made = lesion_slices(
        ct,
        lesion_map,
        lesion_ids=lesion_ids,
        settings=settings,
        ct_path=ct_path,
        lesion_map_path=lesion_map_path,
    )
    return [(s.lesion_id, s.slice_indices, s.images) for s in made]
