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
CHANNEL_GRIDS = "resampled onto the lesion map's grid (linear, physical space, no registration)"


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


def default_intensities(channels: Sequence[str]) -> dict[str, dict]:
    """The record train-cnn writes: each channel's default by its kind (CT or MR)."""
    from metcli.io.channels import parse_channel

    out = {}
    for name in channels:
        kind = "ct" if name == "ct" else parse_channel(name).kind
        out[name] = ChannelIntensity.for_kind(kind).as_dict()
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
) -> dict:
    """Each channel (SimpleITK image) on the lesion map's grid, in the window's values."""
    import SimpleITK as sitk

    from metcli.imaging.channels_grid import check_covers, coverage, resample_to_reference

    width, level = window
    paths = paths or {}
    ids_array = None
    out = {}
    for name, image in images.items():
        spec = intensities.get(name, ChannelIntensity())
        stats = None
        if spec.method != "hu":
            stats = zscore_stats(sitk.GetArrayViewFromImage(image).astype(np.float64), spec)
        on_grid = resample_to_reference(image, lesion_map)
        if on_grid is not image:
            if ids_array is None:
                ids_array = sitk.GetArrayFromImage(lesion_map)
            covered = coverage(image, lesion_map)
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
