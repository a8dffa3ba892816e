"""metcli.segmentation: the segment run, its backends (nnU-Net v2, ONNX Runtime), and nnU-
Net's export to ONNX.

The names in ``__all__`` are this room's public API: the names other rooms, the
command line, the tests and the benchmarks use. Each is imported from its module on
first use, so importing the room stays light.
"""

from __future__ import annotations

import importlib

#: public name -> the module of this room that defines it
_API = {
    "Backend": "backends",
    "CtSource": "streaming",
    "DEFAULT_PLAN": "nnunet_training",
    "LabelResampler": "resample_back",
    "ModelFolder": "backends",
    "NNUNET_FOLDERS": "nnunet",
    "NNUNET_LABELS": "nnunet_dataset",
    "NnunetSegmenter": "nnunet",
    "OnnxSegmenter": "onnx",
    "PlanSettings": "nnunet_training",
    "SMALL_PLAN": "nnunet_training",
    "Segmenter": "backends",
    "TrainSegResult": "train_seg_run",
    "TrainingCase": "nnunet_dataset",
    "apply_label_map": "labelmaps",
    "backend_names": "backends",
    "backends_help": "backends",
    "check_ct": "nnunet",
    "compute_new_shape": "preprocessing",
    "find_training_cases": "nnunet_dataset",
    "gaussian_importance": "sliding_window",
    "get_backend": "backends",
    "load_checkpoint": "checkpoints",
    "load_segmenter": "models",
    "load_spec": "onnx",
    "make_splits": "train_seg",
    "model_digest": "models",
    "model_labels_of": "models",
    "nnunet_environment": "nnunet",
    "nonzero_bbox": "preprocessing",
    "orientation_transform": "orientation",
    "output_path": "segment",
    "parse_fold": "export_onnx",
    "read_model_folder": "nnunet",
    "register": "backends",
    "resample_source": "streaming",
    "resample_to_shape": "preprocessing",
    "resolve_folds": "nnunet",
    "resolve_label_map": "labelmaps",
    "resolve_segmentation_model": "models",
    "separate_z": "preprocessing",
    "sliding_window_steps": "sliding_window",
    "training_environment": "nnunet_training",
    "unregister": "backends",
    "write_raw_dataset": "nnunet_dataset",
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
