"""An image model's channels before slicing: each on the lesion map's grid, each with its
own intensity handling (issue 14, items 2 and 3).

The lesion map belongs to the reference channel (the one it was made on); every other
channel is resampled onto its grid in physical space (linear interpolation,
:func:`metcli.imaging.channels_grid.resample_to_reference`; an image already on that grid,
or on a flipped or permuted copy of it, comes back unchanged). A channel that does not
cover a lesion is a :class:`~metcli.core.errors.GeometryError` naming both files; the
voxels it does not cover around a lesion are black. Each channel's intensities are then
handled as the model card records (:mod:`metcli.imaging.intensity`: CT in HU for the
window, MR z-scored over the body, with its statistics from the channel's own grid).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metcli.imaging.intensity import ChannelIntensity, to_window, zscore_stats

#: What the card records about the channels' grids (``preprocessing.channel_grids``).
CHANNEL_GRIDS = "resampled onto the lesion map's grid (linear, physical space)"
REGISTRATIONS = ("none", "rigid", "affine")


def card_intensities(card: dict, channels: Sequence[str], *, card_path=None) -> dict:
    """``{channel: ChannelIntensity}`` from the card; a card without the record (made before
    MR channels) handles every channel in HU."""
    recorded = (card.get("preprocessing") or {}).get("channel_intensity") or {}
    return {
        c: ChannelIntensity.from_dict(recorded[c], where=card_path)
        if c in recorded
        else ChannelIntensity()
        for c in channels
    }


def default_intensities(
    channels: Sequence[str], overrides: dict | None = None, n4: Sequence[str] = ()
) -> dict[str, dict]:
    """The record train-cnn writes: each channel's rule, its kind's default (CT in HU, MR
    z-scored) unless ``overrides`` (channel -> :class:`ChannelIntensity`) names it; N4 for
    the channels in ``n4``."""
    from dataclasses import replace

    from metcli.core.errors import UsageError
    from metcli.io.channels import parse_channel

    overrides = dict(overrides or {})
    unknown = sorted((set(overrides) | set(n4)) - set(channels))
    if unknown:
        raise UsageError(
            f"--intensity/--n4 name channel(s) {', '.join(unknown)} that are not inputs",
            fix=f"name some of {', '.join(channels)}",
        )
    out = {}
    for name in channels:
        kind = "ct" if name == "ct" else parse_channel(name).kind
        rule = overrides.get(name) or ChannelIntensity.for_kind(kind)
        if name in n4:
            rule = replace(rule, n4=True)  # replace() validates again (__post_init__)
        out[name] = rule.as_dict()
    return out


def prepare_channels(
    images: dict,
    lesion_map,
    lesion_ids: Sequence[int],
    intensities: dict,
    *,
    window: tuple[float, float],
    paths: dict | None = None,
    lesion_map_path=None,
    register: str = "none",
) -> dict:
    """Each channel (SimpleITK image) on the lesion map's grid, in the window's values.

    With ``register`` (``rigid`` or ``affine``) every channel but the first (the
    reference, the lesion map's own) is first registered to it
    (:func:`metcli.imaging.registration.register`)."""
    import SimpleITK as sitk

    from metcli.imaging.channels_grid import check_covers, coverage, resample_to_reference
    from metcli.imaging.intensity import n4_correct

    width, level = window
    paths = paths or {}
    ids_array = None
    out = {}
    reference = next(iter(images.values()))
    for index, (name, image) in enumerate(images.items()):
        spec = intensities.get(name, ChannelIntensity())
        transform = None
        if register != "none" and index > 0:
            from metcli.imaging.registration import register as find_transform

            transform = find_transform(
                image,
                reference,
                kind=register,
                moving_path=paths.get(name),
                fixed_path=paths.get(next(iter(images))),
            )
        if spec.n4:
            image = n4_correct(image)
        stats = None
        if spec.method != "hu":
            stats = zscore_stats(sitk.GetArrayViewFromImage(image).astype(np.float64), spec)
        on_grid = resample_to_reference(image, lesion_map, transform=transform)
        if on_grid is not image:
            if ids_array is None:
                ids_array = sitk.GetArrayFromImage(lesion_map)
            covered = coverage(image, lesion_map, transform)
            check_covers(
                covered,
                ids_array,
                lesion_ids,
                channel_path=paths.get(name),
                reference_path=lesion_map_path,
            )
        array = sitk.GetArrayFromImage(on_grid)
        if spec.method == "hu" and not np.isnan(array).any():  # as it is, in its own type
            out[name] = on_grid
            continue
        values = to_window(array, spec, width, level, stats)
        values = np.where(np.isfinite(values), values, level - width / 2.0)
        values = values.astype(np.float32 if spec.method != "hu" else values.dtype)
        result = sitk.GetImageFromArray(values)
        result.CopyInformation(on_grid)
        out[name] = result
    return out
