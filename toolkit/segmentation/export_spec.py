"""The ``preprocessing.json`` of an ONNX export: what the ONNX backend needs to reproduce
nnU-Net's inference, read from an nnU-Net v2 model's plans, dataset.json and checkpoint.

:func:`check_exportable` refuses configurations the ONNX backend does not
reproduce; :func:`build_spec` writes the spec (without the ONNX file's record and
the verification, which the export adds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metcli._version import __version__
from metcli.core.errors import InputError
from metcli.segmentation.onnx import SPEC_FORMAT, SUPPORTED_NORMALIZATION, SUPPORTED_RESAMPLING
from metcli.segmentation.preprocessing import ANISOTROPY_THRESHOLD

#: The order of the spec's top-level keys in preprocessing.json.
SPEC_ORDER = [
    "format",
    "format_version",
    "metcli_version",
    "onnx",
    "source",
    "labels",
    "channels",
    "axes",
    "target_spacing",
    "patch_size",
    "crop_to_nonzero",
    "normalization",
    "resampling",
    "inference",
    "verification",
]


def configuration_name(checkpoint: dict, model_dir: Path, plans: dict) -> str:
    """The configuration the checkpoint was trained with (checkpoint, folder name, plans)."""
    init_args = checkpoint.get("init_args") or {}
    name = init_args.get("configuration") if isinstance(init_args, dict) else None
    configurations = plans.get("configurations", {})
    if name:
        if name not in configurations:
            raise InputError(
                f"the checkpoint's configuration {name!r} is not in plans.json "
                f"(it has {', '.join(configurations) or 'none'})",
                path=model_dir,
                fix="give the plans.json the model was trained with",
            )
        return name
    suffix = model_dir.name.rsplit("__", 1)[-1]
    if suffix in configurations:
        return suffix
    if len(configurations) == 1:
        return next(iter(configurations))
    raise InputError(
        "cannot tell which configuration the checkpoint was trained with (the "
        "checkpoint does not say, and the folder name does not end in one)",
        path=model_dir,
        fix="keep nnU-Net's folder name (Trainer__Plans__configuration)",
    )


# ============================================================================ the spec
def build_spec(
    *,
    plans_manager,
    configuration_manager,
    configuration: str,
    dataset_json: dict,
    checkpoint: dict,
    loading: str,
    fold,
    folder_name: str,
    sources: dict[str, str],
    orientation: str | None,
    network_class: str,
) -> dict:
    """``preprocessing.json`` without the ONNX and verification parts (filled after export)."""
    cm = configuration_manager
    plans = plans_manager.plans
    labels = {str(k): int(v) for k, v in dataset_json["labels"].items() if k != "ignore"}
    normalization = _normalization(plans_manager, cm)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
    epoch = checkpoint.get("current_epoch")
    version = package_version("nnunetv2")
    return {
        "format": SPEC_FORMAT,
        "format_version": 1,
        "metcli_version": __version__,
        "source": {
            "kind": "nnunetv2",
            "folder_name": folder_name,
            "dataset_name": plans.get("dataset_name"),
            "plans_name": plans.get("plans_name"),
            "configuration": configuration,
            "fold": fold,
            "trainer": checkpoint.get("trainer_name"),
            "epoch": int(epoch) if epoch is not None else None,
            "network_class": network_class,
            "checkpoint_loading": loading,
            "nnunetv2_version": version,
            "files": dict(sources),
        },
        "labels": dict(sorted(labels.items(), key=lambda kv: kv[1])),
        "channels": {str(k): str(v) for k, v in channels.items()},
        "axes": {
            "array_order": "zyx",
            "transpose_forward": [int(a) for a in plans_manager.transpose_forward],
            "transpose_backward": [int(a) for a in plans_manager.transpose_backward],
            "orientation": orientation,
        },
        "target_spacing": [float(s) for s in cm.spacing],
        "patch_size": [int(p) for p in cm.patch_size],
        "crop_to_nonzero": True,
        "normalization": normalization,
        "resampling": _resampling_spec(cm.configuration),
        "inference": {
            "mirror_axes": [int(a) for a in mirror_axes] if mirror_axes is not None else None,
            "gaussian_sigma_scale": 1.0 / 8,
            "default_step_size": 0.5,
            "nonlinearity": "softmax",
        },
    }


def _normalization(plans_manager, configuration_manager) -> dict[str, Any]:
    """The spec's ``normalization``: the scheme and, for CT, the dataset's intensity
    properties."""
    cm = configuration_manager
    scheme = cm.normalization_schemes[0]
    normalization: dict[str, Any] = {
        "scheme": scheme,
        "use_mask_for_norm": bool(cm.use_mask_for_norm[0]),
    }
    if scheme == "CTNormalization":
        props = plans_manager.foreground_intensity_properties_per_channel.get("0")
        if not props:
            raise InputError(
                "plans.json has no foreground intensity properties for channel 0, "
                "which CT normalisation needs",
                fix="give the plans.json nnU-Net wrote for this model",
            )
        normalization.update(
            clip_lower=float(props["percentile_00_5"]),
            clip_upper=float(props["percentile_99_5"]),
            mean=float(props["mean"]),
            std=float(props["std"]),
            source="plans.json foreground_intensity_properties_per_channel['0'] "
            "(the dataset fingerprint)",
        )
    return normalization


def _resampling_spec(config: dict) -> dict[str, Any]:
    """The spec's ``resampling``: data, segmentation and probabilities, from the
    configuration of plans.json."""

    def resampling(function: str, kwargs: dict) -> dict:
        return {
            "function": function,
            "is_seg": bool(kwargs.get("is_seg", False)),
            "order": int(kwargs.get("order", 3)),
            "order_z": int(kwargs.get("order_z", 0)),
            "force_separate_z": kwargs.get("force_separate_z"),
        }

    return {
        "data": resampling(
            config["resampling_fn_data"], config.get("resampling_fn_data_kwargs", {})
        ),
        "segmentation": resampling(
            config["resampling_fn_seg"], config.get("resampling_fn_seg_kwargs", {})
        ),
        "probabilities": resampling(
            config["resampling_fn_probabilities"],
            config.get("resampling_fn_probabilities_kwargs", {}),
        ),
        "anisotropy_threshold": float(ANISOTROPY_THRESHOLD),
    }


def package_version(name: str) -> str | None:
    """The installed version of a package, or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_exportable(plans_manager, configuration_manager, dataset_json: dict, where: Path) -> None:
    cm = configuration_manager
    fix = "use the nnU-Net backend for this model"
    if len(cm.patch_size) != 3:
        raise InputError(
            f"the configuration is {len(cm.patch_size)}D; the ONNX export handles 3D "
            "configurations only",
            path=where,
            fix=fix,
        )
    if cm.previous_stage_name is not None:
        raise InputError(
            "the configuration is a cascade stage (it needs the previous stage's "
            "segmentation as input); the ONNX export does not handle cascades",
            path=where,
            fix=fix,
        )
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channels) != 1:
        raise InputError(
            f"the model takes {len(channels)} input channels; the ONNX backend segments one CT",
            path=where,
            fix=fix,
        )
    label_manager = plans_manager.get_label_manager(dataset_json)
    if label_manager.has_regions:
        raise InputError(
            "the model is trained on overlapping regions (sigmoid outputs); the "
            "ONNX backend reproduces softmax label models only",
            path=where,
            fix=fix,
        )
    values = sorted(int(v) for k, v in dataset_json["labels"].items() if k != "ignore")
    if values != list(range(len(values))):
        raise InputError(
            f"the model's label values {values} are not 0..N-1",
            path=where,
            fix="nnU-Net v2 needs consecutive labels; check dataset.json",
        )
    scheme = cm.normalization_schemes[0]
    if scheme not in SUPPORTED_NORMALIZATION:
        raise InputError(
            f"normalisation scheme {scheme!r} is not reproduced by the ONNX backend",
            path=where,
            fix=fix,
        )
    config = cm.configuration
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if config.get(key) not in SUPPORTED_RESAMPLING:
            raise InputError(
                f"{key} {config.get(key)!r} is not reproduced by the ONNX backend",
                path=where,
                fix=fix,
            )


def ordered_spec(spec: dict) -> dict:
    """The spec with its keys in :data:`SPEC_ORDER`."""
    return {k: spec[k] for k in SPEC_ORDER if k in spec}
