"""metcli.core: errors and their one-line messages, batch runs over participants, threads,
the one device rule, library versions.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "BatchReport": "batch",
    "CNN_LIBRARIES": "versions",
    "DONE": "batch",
    "DicomError": "errors",
    "FAILED": "batch",
    "GeometryError": "errors",
    "ImageError": "errors",
    "InputError": "errors",
    "MaskError": "errors",
    "MetcliError": "errors",
    "OutputError": "errors",
    "ParticipantsFailed": "errors",
    "PartlyDone": "errors",
    "Registry": "registry",
    "SKIPPED": "batch",
    "SchemaError": "errors",
    "UsageError": "errors",
    "WeightsError": "errors",
    "announce_total": "batch",
    "available_cpus": "threads",
    "check_device": "devices",
    "check_threads": "threads",
    "deterministic_options": "devices",
    "group_level": "batch",
    "limit_cpu_threads": "threads",
    "onnx_providers": "devices",
    "onnx_session": "devices",
    "run_each": "batch",
    "start_session": "devices",
    "torch_device": "devices",
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
