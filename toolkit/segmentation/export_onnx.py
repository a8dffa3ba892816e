"""Export an nnU-Net v2 trained model to ONNX with the spec of its preprocessing.

nnU-Net has no exporter of its own. :func:`export_onnx` reads a standard nnU-Net v2
trained-model folder (``dataset.json``, ``plans.json``, ``fold_K/checkpoint_final.pth``),
builds the network the way nnU-Net's predictor does (its ``PlansManager``,
``ConfigurationManager`` and ``get_network_from_plans``, deep supervision off, so
the network has one output: the logits at full resolution), loads the weights,
and writes into ``OUT_DIR``:

- ``model.onnx``: the network (``torch.onnx.export``, TorchScript exporter), input
  ``input`` of shape (batch, channels, *patch) with a dynamic batch axis, output
  ``logits`` of shape (batch, heads, *patch);
- ``preprocessing.json`` (schema ``onnx_segmentation``): what
  :class:`metcli.segmentation.onnx.OnnxSegmenter` needs to reproduce nnU-Net's inference
  (axes, cropping, CT normalisation from the dataset fingerprint, resampling orders,
  patch size, mirroring axes, labels), the sha256 of the source files and of the
  ONNX file, and the export's verification: ONNX Runtime's logits against torch's
  on a random input and a phantom (largest difference relative to the logits'
  range, refused above the tolerance; argmax labels identical beyond ties).

Checkpoints are pickles. :func:`load_checkpoint`, which the nnU-Net backend uses
too, loads them with ``torch.load(weights_only=True)`` only, allowing numpy
scalars and dtypes besides (nnU-Net's own checkpoints store numpy floats in their
training log, which the plain weights-only loader refuses). A checkpoint that
needs more is refused with the name of what the restricted loader refused and
how to strip it; metcli never unpickles a checkpoint fully.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metcli._version import __version__
from metcli.core.errors import InputError, OutputError, UsageError
from metcli.segmentation.onnx import (ANISOTROPY_THRESHOLD, ONNX_FILE, SPEC_FILE, SPEC_FORMAT,
                                 SPEC_SCHEMA, SUPPORTED_NORMALIZATION, SUPPORTED_RESAMPLING,
                                 check_spec_supported)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_ORIENTATION = "LPS"
#: Largest allowed |ONNX Runtime - torch| on the logits of the verification inputs,
#: as a fraction of the range of torch's logits.
DEFAULT_TOLERANCE = 1e-4
CHECKPOINT_NAME = "checkpoint_final.pth"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote or found already done."""

    out_dir: Path
    onnx_path: Path
    spec_path: Path
    spec: dict
    skipped: bool = False

    @property
    def max_abs_logit_difference(self) -> float:
        return float(self.spec["verification"]["max_abs_logit_difference"])


# ============================================================================ model folder
def model_files(model_dir: str | Path, fold: int | str) -> dict[str, Path]:
    """The three files of an nnU-Net v2 model folder that the export reads; checked."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("nnU-Net model folder not found", path=model_dir,
                         fix="give an nnU-Net v2 trained-model folder (it holds dataset.json, "
                             "plans.json and fold_K/checkpoint_final.pth)")
    files = {}
    for name in ("dataset.json", "plans.json"):
        if not (model_dir / name).is_file():
            raise InputError(f"the nnU-Net model folder has no {name}", path=model_dir,
                             fix="give an nnU-Net v2 trained-model folder (it holds dataset.json, "
                                 "plans.json and fold_K/checkpoint_final.pth)")
        files[name] = model_dir / name
    fold_name = f"fold_{fold}"
    checkpoint = model_dir / fold_name / CHECKPOINT_NAME
    if not checkpoint.is_file():
        found = sorted(p.parent.name for p in model_dir.glob(f"fold_*/{CHECKPOINT_NAME}"))
        have = f"folds with {CHECKPOINT_NAME}: {', '.join(found)}" if found else \
            f"no fold folder holds {CHECKPOINT_NAME}"
        raise InputError(f"{fold_name}/{CHECKPOINT_NAME} not found ({have})", path=model_dir,
                         fix="choose one of those folds with --fold, or finish the training")
    files[f"{fold_name}/{CHECKPOINT_NAME}"] = checkpoint
    return files


def parse_fold(value: Any) -> int | str:
    """A fold as nnU-Net names it: a non-negative integer or ``all``."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        fold = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--fold must be a non-negative integer or 'all', got {value!r}") from None
    if fold < 0:
        raise UsageError(f"--fold must be a non-negative integer or 'all', got {value!r}")
    return fold


@contextlib.contextmanager
def _quiet_stdout():
    """nnunetv2 (and torch's exporter) may print on stdout, which carries results only."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def load_checkpoint(path: str | Path) -> tuple[dict, str]:
    """An nnU-Net checkpoint as a dict, and how it was loaded.

    ``torch.load(weights_only=True)``, then the same with numpy's scalar constructor
    and dtype classes allowed (nothing that runs code). A checkpoint that needs
    more is an :class:`InputError` naming what was refused and how to strip it;
    one without ``network_weights`` is not an nnU-Net v2 checkpoint.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise InputError("not a PyTorch checkpoint (torch.save writes a zip archive; this file "
                         "is not one)", path=path,
                         fix="give the checkpoint_final.pth nnU-Net v2 wrote (copy it again if "
                             "it was truncated)")
    checkpoint, how = None, "weights_only"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise InputError(f"cannot read the checkpoint ({_short(exc)})", path=path,
                             fix="check that the file is a complete PyTorch checkpoint") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise InputError(f"cannot read the checkpoint ({_short(exc)})", path=path,
                         fix="check that the file is a complete PyTorch checkpoint") from None
    if checkpoint is None:
        how = "weights_only+numpy_scalars"
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError(f"the checkpoint holds Python objects that a weights-only load "
                             f"refuses ({_refused_global(exc)}); metcli does not unpickle "
                             "checkpoints fully", path=path,
                             fix="strip it, in an environment you trust, to network_weights, "
                                 "trainer_name, init_args and inference_allowed_mirroring_axes "
                                 "(docs/onnx.md shows how)") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise InputError("the checkpoint has no 'network_weights'; it is not an nnU-Net v2 "
                         "checkpoint", path=path, fix="give the checkpoint_final.pth nnU-Net "
                                                      "v2 wrote")
    return checkpoint, how


def _numpy_safe_globals() -> list:
    """numpy's scalar constructor and dtype classes (what nnU-Net's training log pickles)."""
    core = getattr(np, "_core", None) or np.core
    allowed: list = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _refused_global(exc: Exception) -> str:
    import re

    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"GLOBAL {match.group(1)}" if match else "an object it does not allow"


def _short(exc: Exception, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def configuration_name(checkpoint: dict, model_dir: Path, plans: dict) -> str:
    """The configuration the checkpoint was trained with (checkpoint, folder name, plans)."""
    init_args = checkpoint.get("init_args") or {}
    name = init_args.get("configuration") if isinstance(init_args, dict) else None
    configurations = plans.get("configurations", {})
    if name:
        if name not in configurations:
            raise InputError(f"the checkpoint's configuration {name!r} is not in plans.json "
                             f"(it has {', '.join(configurations) or 'none'})", path=model_dir,
                             fix="give the plans.json the model was trained with")
        return name
    suffix = model_dir.name.rsplit("__", 1)[-1]
    if suffix in configurations:
        return suffix
    if len(configurations) == 1:
        return next(iter(configurations))
    raise InputError("cannot tell which configuration the checkpoint was trained with (the "
                     "checkpoint does not say, and the folder name does not end in one)",
                     path=model_dir, fix="keep nnU-Net's folder name "
                                         "(Trainer__Plans__configuration)")


# ============================================================================ the spec
def build_spec(*, plans_manager, configuration_manager, configuration: str, dataset_json: dict,
               checkpoint: dict, loading: str, fold, folder_name: str, sources: dict[str, str],
               orientation: str | None, network_class: str) -> dict:
    """``preprocessing.json`` without the ONNX and verification parts (filled after export)."""
    cm = configuration_manager
    plans = plans_manager.plans
    labels = {str(k): int(v) for k, v in dataset_json["labels"].items() if k != "ignore"}
    scheme = cm.normalization_schemes[0]
    normalization: dict[str, Any] = {"scheme": scheme,
                                     "use_mask_for_norm": bool(cm.use_mask_for_norm[0])}
    if scheme == "CTNormalization":
        props = plans_manager.foreground_intensity_properties_per_channel.get("0")
        if not props:
            raise InputError("plans.json has no foreground intensity properties for channel 0, "
                             "which CT normalisation needs", fix="give the plans.json nnU-Net "
                                                                 "wrote for this model")
        normalization.update(clip_lower=float(props["percentile_00_5"]),
                             clip_upper=float(props["percentile_99_5"]),
                             mean=float(props["mean"]), std=float(props["std"]),
                             source="plans.json foreground_intensity_properties_per_channel['0'] "
                                    "(the dataset fingerprint)")

    def resampling(function: str, kwargs: dict) -> dict:
        return {"function": function, "is_seg": bool(kwargs.get("is_seg", False)),
                "order": int(kwargs.get("order", 3)), "order_z": int(kwargs.get("order_z", 0)),
                "force_separate_z": kwargs.get("force_separate_z")}

    config = cm.configuration
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
    epoch = checkpoint.get("current_epoch")
    version = _package_version("nnunetv2")
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
        "axes": {"array_order": "zyx",
                 "transpose_forward": [int(a) for a in plans_manager.transpose_forward],
                 "transpose_backward": [int(a) for a in plans_manager.transpose_backward],
                 "orientation": orientation},
        "target_spacing": [float(s) for s in cm.spacing],
        "patch_size": [int(p) for p in cm.patch_size],
        "crop_to_nonzero": True,
        "normalization": normalization,
        "resampling": {
            "data": resampling(config["resampling_fn_data"],
                               config.get("resampling_fn_data_kwargs", {})),
            "segmentation": resampling(config["resampling_fn_seg"],
                                       config.get("resampling_fn_seg_kwargs", {})),
            "probabilities": resampling(config["resampling_fn_probabilities"],
                                        config.get("resampling_fn_probabilities_kwargs", {})),
            "anisotropy_threshold": float(ANISOTROPY_THRESHOLD),
        },
        "inference": {
            "mirror_axes": [int(a) for a in mirror_axes] if mirror_axes is not None else None,
            "gaussian_sigma_scale": 1.0 / 8,
            "default_step_size": 0.5,
            "nonlinearity": "softmax",
        },
    }


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _check_supported(plans_manager, configuration_manager, dataset_json: dict, where: Path) -> None:
    cm = configuration_manager
    fix = "use the nnU-Net backend for this model"
    if len(cm.patch_size) != 3:
        raise InputError(f"the configuration is {len(cm.patch_size)}D; the ONNX export handles 3D "
                         "configurations only", path=where, fix=fix)
    if cm.previous_stage_name is not None:
        raise InputError("the configuration is a cascade stage (it needs the previous stage's "
                         "segmentation as input); the ONNX export does not handle cascades",
                         path=where, fix=fix)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channels) != 1:
        raise InputError(f"the model takes {len(channels)} input channels; the ONNX backend "
                         "segments one CT", path=where, fix=fix)
    label_manager = plans_manager.get_label_manager(dataset_json)
    if label_manager.has_regions:
        raise InputError("the model is trained on overlapping regions (sigmoid outputs); the "
                         "ONNX backend reproduces softmax label models only", path=where, fix=fix)
    values = sorted(int(v) for k, v in dataset_json["labels"].items() if k != "ignore")
    if values != list(range(len(values))):
        raise InputError(f"the model's label values {values} are not 0..N-1", path=where,
                         fix="nnU-Net v2 needs consecutive labels; check dataset.json")
    scheme = cm.normalization_schemes[0]
    if scheme not in SUPPORTED_NORMALIZATION:
        raise InputError(f"normalisation scheme {scheme!r} is not reproduced by the ONNX backend",
                         path=where, fix=fix)
    config = cm.configuration
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if config.get(key) not in SUPPORTED_RESAMPLING:
            raise InputError(f"{key} {config.get(key)!r} is not reproduced by the ONNX backend",
                             path=where, fix=fix)


# ============================================================================ export
def export_onnx(model_dir: str | Path, out_dir: str | Path, *, fold: int | str = 0,
                opset: int = DEFAULT_OPSET, orientation: str | None = DEFAULT_ORIENTATION,
                tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
                overwrite: bool = False) -> ExportResult:
    """Export fold ``fold`` of the nnU-Net v2 model in ``model_dir`` to ``out_dir``.

    Args:
        model_dir: an nnU-Net v2 trained-model folder (dataset.json, plans.json,
            fold_K/checkpoint_final.pth).
        out_dir: where ``model.onnx`` and ``preprocessing.json`` go (created).
        fold: the fold to export (an integer or ``all``).
        opset: the ONNX opset (17 by default).
        orientation: the orientation code (SimpleITK ``DICOMOrient``; ``LPS`` is the
            identity direction) the CT is brought to before inference: the
            orientation of the model's training images; ``None`` keeps CTs as stored,
            exactly as nnU-Net does.
        tolerance: the largest |ONNX Runtime - torch| accepted on the logits of the
            verification inputs, as a fraction of the logits' range; a larger one
            (or labels that differ beyond ties) refuses the export.
        seed: seed of the random verification input.
        overwrite: export again even when ``out_dir`` holds an export of the same
            source files with the same settings.
    """
    from metcli.io.files import OutputSet, dump_json_to, read_json, sha256_file

    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    fold = parse_fold(fold)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise UsageError(f"--opset must be an integer from 13 to 21, got {opset!r}",
                         fix="use 17 (the default)")
    if orientation is not None:
        orientation = _check_orientation(orientation)
    if not tolerance > 0:
        raise UsageError(f"tolerance must be positive, got {tolerance!r}")
    files = model_files(model_dir, fold)
    if out_dir.resolve() == model_dir.resolve() or model_dir.resolve() in out_dir.resolve().parents:
        raise UsageError(f"the output folder {out_dir} is inside the model folder {model_dir}",
                         fix="write the export somewhere else")
    sources = {name: sha256_file(path) for name, path in files.items()}
    spec_path, onnx_path = out_dir / SPEC_FILE, out_dir / ONNX_FILE

    if not overwrite and spec_path.is_file() and onnx_path.is_file():
        try:
            old = read_json(spec_path, schema=SPEC_SCHEMA)
        except Exception:  # noqa: BLE001 - anything unreadable is redone
            old = None
        same = old is not None and old["source"]["files"] == sources \
            and old["axes"]["orientation"] == orientation and old["onnx"]["opset"] == opset \
            and old["source"]["fold"] == fold
        if same and sha256_file(onnx_path) == old["onnx"]["sha256"]:
            log.info("%s already holds this export; skipped (use --overwrite to redo it)", out_dir)
            return ExportResult(out_dir, onnx_path, spec_path, old, skipped=True)

    dataset_json = read_json(files["dataset.json"])
    plans = read_json(files["plans.json"])
    checkpoint, loading = load_checkpoint(files[f"fold_{fold}/{CHECKPOINT_NAME}"])
    configuration = configuration_name(checkpoint, model_dir, plans)

    with _quiet_stdout():
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
    _check_supported(plans_manager, configuration_manager, dataset_json, model_dir)

    cm = configuration_manager
    with _quiet_stdout():
        in_channels = determine_num_input_channels(plans_manager, cm, dataset_json)
        heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        network = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                         cm.network_arch_init_kwargs_req_import, in_channels, heads,
                                         allow_init=False, deep_supervision=False)
    try:
        network.load_state_dict(checkpoint["network_weights"], strict=True)
    except RuntimeError as exc:
        raise InputError(f"the checkpoint's weights do not fit the network that plans.json "
                         f"describes ({_short(exc, 160)})", path=model_dir,
                         fix="give the plans.json the model was trained with; a trainer that "
                             "changes the architecture is not supported by the export") from None
    network.eval()

    spec = build_spec(plans_manager=plans_manager, configuration_manager=cm,
                      configuration=configuration, dataset_json=dataset_json,
                      checkpoint=checkpoint, loading=loading, fold=fold,
                      folder_name=model_dir.resolve().name, sources=sources,
                      orientation=orientation, network_class=cm.network_arch_class_name)
    patch = [int(p) for p in cm.patch_size]

    with OutputSet() as outputs:
        tmp_onnx = outputs.path(onnx_path)
        _torch_export(network, tmp_onnx, in_channels, patch, opset)
        verification = verify_export(network, tmp_onnx, in_channels, patch, tolerance=tolerance,
                                     seed=seed)
        spec["onnx"] = {"file": ONNX_FILE, "sha256": sha256_file(tmp_onnx), "opset": opset,
                        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                        "input_shape": ["batch", in_channels, *patch],
                        "output_shape": ["batch", heads, *patch],
                        "exporter": "torch.onnx.export (TorchScript)",
                        "torch_version": _package_version("torch") or "unknown"}
        spec["verification"] = verification
        spec = _ordered(spec)
        check_spec_supported(spec, where=spec_path)
        tmp_spec = outputs.path(spec_path)
        dump_json_to(spec, tmp_spec, schema=SPEC_SCHEMA, where=spec_path)
    log.info("exported %s fold %s to %s (max |ONNX Runtime - torch| = %.3g on the logits)",
             model_dir.name, fold, onnx_path, verification["max_abs_logit_difference"])
    return ExportResult(out_dir, onnx_path, spec_path, spec)


def _ordered(spec: dict) -> dict:
    order = ["format", "format_version", "metcli_version", "onnx", "source", "labels", "channels",
             "axes", "target_spacing", "patch_size", "crop_to_nonzero", "normalization",
             "resampling", "inference", "verification"]
    return {k: spec[k] for k in order if k in spec}


def _check_orientation(code: str) -> str:
    text = str(code).strip().upper()
    axis_of = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
    if len(text) != 3 or any(c not in axis_of for c in text) \
            or sorted(axis_of[c] for c in text) != [0, 1, 2]:
        raise UsageError(f"orientation {code!r} is not a three-letter code with one letter of "
                         "each of L/R, P/A, S/I", fix="use LPS (identity direction), RAS, or "
                                                      "'as-stored'")
    return text


def _torch_export(network, target: Path, in_channels: int, patch: list[int], opset: int) -> None:
    import torch

    example = torch.zeros((1, in_channels, *patch), dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught, _quiet_stdout(), torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(network, (example,), str(target), dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types
            raise OutputError(f"torch could not export the network to ONNX ({_short(exc)})",
                              path=target.parent,
                              fix="try another --opset, or report the network class") from None
    for item in caught:
        log.debug("torch.onnx.export: %s", " ".join(str(item.message).split())[:200])


def verify_export(network, onnx_path: Path, in_channels: int, patch: list[int], *,
                  tolerance: float = DEFAULT_TOLERANCE, seed: int = 0, batch: int = 2) -> dict:
    """Compare ONNX Runtime with torch on two inputs; refuse what changes the result.

    The inputs are a standard-normal sample and a phantom (a smooth ellipsoid with
    two spheres in normalised intensities, as nnU-Net's CT normalisation gives).
    Two things are checked on both: the largest |ONNX Runtime - torch| on the
    logits, relative to the range of torch's logits (an absolute bound on a 3D
    U-Net's logits would be below the float32 accumulation noise that differs
    between SIMD paths, AVX2 vs AVX-512), must not exceed ``tolerance``; and the
    argmax labels must be identical wherever torch's top two logits differ by more
    than twice that largest difference (closer voxels are ties within the noise and
    are counted, not judged).
    """
    import onnx
    import onnxruntime as ort
    import torch

    try:
        onnx.checker.check_model(str(onnx_path))
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"the exported ONNX model is not valid ({_short(exc)})",
                          path=onnx_path.parent, fix="report the network class and opset") from None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    inputs = {"random": rng.standard_normal((batch, in_channels, *patch)).astype(np.float32),
              "phantom": _phantom_input(in_channels, patch, rng)}
    checks = {}
    for name, sample in inputs.items():
        with torch.no_grad():
            expected = network(torch.from_numpy(sample)).numpy()
        actual = session.run(None, {INPUT_NAME: sample})[0]
        if actual.shape != expected.shape:
            raise OutputError(f"ONNX Runtime's output shape {actual.shape} differs from torch's "
                              f"{expected.shape}", path=onnx_path.parent, fix="report this")
        checks[name] = _compare_logits(expected, actual)
    for name, check in checks.items():
        if not check["relative_difference"] <= tolerance:
            raise OutputError(f"ONNX Runtime's logits differ from torch's by up to "
                              f"{check['max_abs_logit_difference']:.3g} on the {name} input, "
                              f"{check['relative_difference']:.3g} of the logits' range "
                              f"(tolerance {tolerance:g}); the export was refused",
                              path=onnx_path.parent, fix="try another --opset, or report this")
        if check["label_disagreements"]:
            raise OutputError(f"ONNX Runtime's labels differ from torch's in "
                              f"{check['label_disagreements']} voxels of the {name} input that "
                              "are not ties; the export was refused",
                              path=onnx_path.parent, fix="try another --opset, or report this")
    worst = max(checks.values(), key=lambda c: c["relative_difference"])
    return {"passed": True, "max_abs_logit_difference": worst["max_abs_logit_difference"],
            "relative_logit_difference": worst["relative_difference"],
            "tolerance": float(tolerance), "tolerance_kind": "relative to the logits' range",
            "labels_identical_beyond_ties": True,
            "tied_voxels": int(sum(c["tied_voxels"] for c in checks.values())),
            "inputs": sorted(checks), "input_shape": [batch, in_channels, *patch],
            "seed": int(seed),
            "reference": "torch (CPU, float32) on a standard-normal input and a phantom",
            "onnxruntime_version": ort.__version__, "execution_provider": "CPUExecutionProvider"}


def _compare_logits(expected: np.ndarray, actual: np.ndarray) -> dict:
    """Largest difference (absolute and relative to the range) and label agreement."""
    expected64, actual64 = expected.astype(np.float64), actual.astype(np.float64)
    difference = float(np.max(np.abs(actual64 - expected64)))
    spread = float(np.max(expected64) - np.min(expected64))
    relative = difference / spread if spread > 0 else (0.0 if difference == 0 else np.inf)
    if expected.shape[1] > 1:
        top_two = np.sort(expected64, axis=1)[:, -2:]
        tied = (top_two[:, 1] - top_two[:, 0]) <= 2 * difference
    else:
        tied = np.zeros(expected.shape[:1] + expected.shape[2:], dtype=bool)
    differ = np.argmax(expected64, axis=1) != np.argmax(actual64, axis=1)
    return {"max_abs_logit_difference": difference, "relative_difference": float(relative),
            "tied_voxels": int(tied.sum()), "label_disagreements": int((differ & ~tied).sum())}


def _phantom_input(in_channels: int, patch: list[int], rng: np.random.Generator) -> np.ndarray:
    """One patch of a smooth phantom in z-scored intensities: background, an ellipsoid
    and two darker spheres inside it, with a little noise."""
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in patch], indexing="ij")
    image = np.where(sum((g / 0.7) ** 2 for g in grid) <= 1.0, 1.0, -1.5)
    for centre, size in (((0.25, 0.2, -0.1), 0.25), ((-0.3, -0.15, 0.2), 0.15)):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= size ** 2
        image = np.where(inside, -0.5, image)
    image = image + 0.1 * rng.standard_normal(image.shape)
    return np.repeat(image[None, None], in_channels, axis=1).astype(np.float32)
