"""metcli.synth: synthetic cohorts: CT and MR phantoms with liver and lesions, truth masks
and lesion tables.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "ALMSS_SIZES": "phases",
    "ALMSS_TRUTH_COLUMNS": "truth",
    "AlmssParams": "almss",
    "CLASS_RATIO": "almss",
    "ALMSS_CLASSES": "almss",
    "Grid": "phantom",
    "LESION_TYPES": "mri",
    "MR_CLASSES": "mri",
    "MR_SIZES": "mri_phantom",
    "MRI_TRUTH_COLUMNS": "truth",
    "MriParams": "mri",
    "ORIGINS": "almss",
    "PHASES": "almss",
    "Subject": "subjects",
    "almss_phantom": "multiphase",
    "almss_row": "almss_subjects",
    "class_sequence": "almss",
    "hierarchy_groups": "almss_cohort",
    "lesion_types": "mri",
    "make_mri_params": "mri",
    "mr_class_sequence": "mri",
    "mri_participant": "mri_subjects",
    "mri_phantom": "mri_phantom",
    "mri_row": "mri_subjects",
    "parse_class_values": "almss",
    "participant_phantom": "almss_subjects",
    "synth_almss_cohort": "almss_cohort",
    "SIZES": "phantom",
    "SynthParams": "phantom",
    "TRUTH_COLUMNS": "truth",
    "class_counts": "synth",
    "grid_for": "phantom",
    "make_phantom": "phantom",
    "phantom_arrays": "phantom",
    "read_truth_lesions": "truth",
    "synth_cohort": "synth",
    "synth_mri_cohort": "mri_cohort",
    "volume_list": "mri_phantom",
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
