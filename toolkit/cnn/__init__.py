"""metcli.cnn: the image models: data, networks, training, outputs and Grad-CAM.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "ALPHA": "gradcam",
    "Architecture": "networks",
    "COLORMAP": "gradcam",
    "FitSettings": "fit",
    "GradCam": "gradcam",
    "Monitor": "fit",
    "Sample": "train_cnn",
    "architecture_names": "networks",
    "architectures_help": "networks",
    "assign_folds": "data",
    "build_network": "networks",
    "check_options": "options",
    "decide": "train_cnn",
    "export_onnx": "train_cnn",
    "find_jobs": "train_cnn",
    "get_architecture": "networks",
    "lesion_probabilities": "train_cnn",
    "load_checkpoint": "train_cnn",
    "load_network": "gradcam",
    "load_state": "resume",
    "overlay": "gradcam",
    "plan_split": "train_cnn",
    "prediction_rows": "train_cnn",
    "register": "networks",
    "unregister": "networks",
    "write_png": "gradcam",
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
