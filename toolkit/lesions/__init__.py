"""metcli.lesions: split-lesions, lesion maps and their pairing with CTs, and the lesion-
slice and lesion-volume preprocessing of image models.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "BURDEN_COLUMNS": "tables",
    "CHANNEL_GRIDS": "channel_inputs",
    "GROUP_LESION_COLUMNS": "tables",
    "LESION_COLUMNS": "tables",
    "LESION_SUFFIX": "maps",
    "REGISTRATIONS": "channel_inputs",
    "SliceSettings": "preprocess",
    "card_intensities": "channel_inputs",
    "card_phases": "inputs",
    "card_regions": "inputs",
    "liver_inputs": "inputs",
    "channel_files_by_key": "maps",
    "choose_lesion_map": "maps",
    "cube_crop": "volumes",
    "default_intensities": "channel_inputs",
    "find_lesion_maps": "maps",
    "kept_lesion_ids": "maps",
    "lesion_slices": "slices",
    "lesion_table_path": "maps",
    "lesion_volumes": "volumes",
    "max_pairwise_distance": "diameters",
    "model_inputs": "inputs",
    "output_paths": "split_lesions",
    "pair_images": "maps",
    "prepare_channels": "channel_inputs",
    "read_lesion_table": "tables",
    "resize_square": "preprocess",
    "settings_from_card": "inputs",
    "split_image": "label_lesions",
    "square_crop": "preprocess",
    "window": "preprocess",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
