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
    "AugmentSettings": "augment",
    "COLORMAP": "gradcam",
    "FitSettings": "fit",
    "FlipRotate": "augment",
    "GradCam": "gradcam",
    "Monitor": "fit",
    "OptimSettings": "optim",
    "PhaseGradCam": "gradcam_phases",
    "PretrainedFile": "pretrained",
    "Recipe": "optim",
    "Sample": "train_cnn",
    "architecture_names": "networks",
    "architectures_help": "networks",
    "assign_folds": "data",
    "augmenter": "fit",
    "build_augmenter": "augment",
    "build_network": "networks",
    "chained": "hierarchy_net",
    "check_options": "options",
    "clinical_order": "almss_net",
    "decide": "train_cnn",
    "encode_for_card": "clinical",
    "export_onnx": "train_cnn",
    "find_jobs": "train_cnn",
    "fit_covariates": "clinical",
    "get_architecture": "networks",
    "lesion_probabilities": "train_cnn",
    "load_checkpoint": "train_cnn",
    "load_network": "gradcam",
    "load_pretrained": "pretrained",
    "load_state": "resume",
    "make_network": "hierarchy_net",
    "make_optimiser": "optim",
    "make_schedule": "optim",
    "overlay": "gradcam",
    "plan_split": "train_cnn",
    "prediction_rows": "train_cnn",
    "register": "networks",
    "resolve_pretrained": "pretrained",
    "start_recipe": "optim",
    "step_samples": "hierarchy_net",
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
