"""metcli.imaging: image geometry (one physical grid), label maps, manual mask import,
DICOM series (read, import, write).

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "BACKGROUND": "labels",
    "ChannelIntensity": "intensity",
    "ContourCounts": "rtstruct",
    "DICOM_SOURCE_KEY": "dicom.source",
    "FRACTIONAL_THRESHOLD": "dicom_seg",
    "LABELS": "labels",
    "LESION": "labels",
    "LIVER": "labels",
    "MR_SETTINGS": "dicom.mr_volume",
    "NO_LESION": "dicom.seg_out",
    "Registration": "registration",
    "RegistrationSettings": "registration",
    "SETTINGS": "dicom.import_dicom",
    "SegmentSpec": "dicom.seg_out",
    "adc_image": "channel_images",
    "affine_parts": "registration",
    "check_covers": "channels_grid",
    "coverage": "channels_grid",
    "ct_dicom_origin": "dicom_checks",
    "ct_to_dicom_series": "dicom.writer",
    "dicom_source": "dicom.source",
    "dseg_segments": "dicom.seg_out",
    "find_mask_file": "mask_files",
    "find_series": "dicom.series",
    "grid_difference": "geometry",
    "import_dicom": "dicom.import_dicom",
    "label_from_name": "mask_labels",
    "label_image_to_dseg": "label_image",
    "lesion_segments": "dicom.seg_out",
    "linked_raw_dir": "dicom.seg_out",
    "mask_to_dseg": "import_mask",
    "n4_correct": "intensity",
    "orientation_code": "geometry",
    "parse_intensity": "intensity",
    "parse_label_map": "mask_labels",
    "place_on_grid": "geometry",
    "rasterize_rtstruct": "rtstruct",
    "read_channel": "channel_images",
    "read_channel_file": "channel_images",
    "read_ct_series": "dicom.volume",
    "read_dicom_seg": "dicom_seg",
    "read_dicom_source": "dicom.source",
    "read_transform": "registration",
    "register": "registration",
    "remove_stale_slices": "dicom.writer",
    "resample_to_reference": "channels_grid",
    "select_series": "dicom.series",
    "series_sha256": "dicom.import_dicom",
    "shell_image": "channel_images",
    "source_ct_path": "dicom.seg_out",
    "source_datasets": "dicom.seg_out",
    "source_frames": "dicom.seg_out",
    "to_reference_grid": "geometry",
    "to_window": "intensity",
    "uid_sha256": "dicom.metadata",
    "voxel_volume_mm3": "geometry",
    "write_dicom_seg": "dicom.seg_out",
    "write_dseg_seg": "dicom.seg_out",
    "write_label_table": "labels",
    "write_lesion_seg": "dicom.seg_out",
    "zscore_stats": "intensity",
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
