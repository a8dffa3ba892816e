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

The spec is built by :mod:`metcli.segmentation.export_spec`, the export checked by
:mod:`metcli.segmentation.export_check`; the checkpoint is loaded weights-only
(:func:`metcli.segmentation.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metcli.core.errors import InputError, OutputError, UsageError
from metcli.segmentation.checkpoints import load_checkpoint, short_error
from metcli.segmentation.export_check import (
    DEFAULT_TOLERANCE,
    INPUT_NAME,
    OUTPUT_NAME,
    verify_export,
)
from metcli.segmentation.export_spec import (
    build_spec,
    check_exportable,
    configuration_name,
    ordered_spec,
    package_version,
)
from metcli.segmentation.onnx import ONNX_FILE, SPEC_FILE, SPEC_SCHEMA, check_spec_supported

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_ORIENTATION = "LPS"
CHECKPOINT_NAME = "checkpoint_final.pth"


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
        raise InputError(
            "nnU-Net model folder not found",
            path=model_dir,
            fix="give an nnU-Net v2 trained-model folder (it holds dataset.json, "
            "plans.json and fold_K/checkpoint_final.pth)",
        )
    files = {}
    for name in ("dataset.json", "plans.json"):
        if not (model_dir / name).is_file():
            raise InputError(
                f"the nnU-Net model folder has no {name}",
                path=model_dir,
                fix="give an nnU-Net v2 trained-model folder (it holds dataset.json, "
                "plans.json and fold_K/checkpoint_final.pth)",
            )
        files[name] = model_dir / name
    fold_name = f"fold_{fold}"
    checkpoint = model_dir / fold_name / CHECKPOINT_NAME
    if not checkpoint.is_file():
        found = sorted(p.parent.name for p in model_dir.glob(f"fold_*/{CHECKPOINT_NAME}"))
        have = (
            f"folds with {CHECKPOINT_NAME}: {', '.join(found)}"
            if found
            else f"no fold folder holds {CHECKPOINT_NAME}"
        )
        raise InputError(
            f"{fold_name}/{CHECKPOINT_NAME} not found ({have})",
            path=model_dir,
            fix="choose one of those folds with --fold, or finish the training",
        )
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


# ============================================================================ export
def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    fold: int | str = 0,
    opset: int = DEFAULT_OPSET,
    orientation: str | None = DEFAULT_ORIENTATION,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    overwrite: bool = False,
) -> ExportResult:
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
    from metcli.io.files import sha256_file

    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    fold, orientation = _check_settings(fold, opset, orientation, tolerance)
    files = model_files(model_dir, fold)
    if out_dir.resolve() == model_dir.resolve() or model_dir.resolve() in out_dir.resolve().parents:
        raise UsageError(
            f"the output folder {out_dir} is inside the model folder {model_dir}",
            fix="write the export somewhere else",
        )
    sources = {name: sha256_file(path) for name, path in files.items()}
    spec_path, onnx_path = out_dir / SPEC_FILE, out_dir / ONNX_FILE
    if not overwrite:
        old = _same_export(
            spec_path, onnx_path, sources=sources, orientation=orientation, opset=opset, fold=fold
        )
        if old is not None:
            log.info("%s already holds this export; skipped (use --overwrite to redo it)", out_dir)
            return ExportResult(out_dir, onnx_path, spec_path, old, skipped=True)

    source = _load_source(model_dir, files, fold)
    spec = build_spec(
        plans_manager=source.plans_manager,
        configuration_manager=source.configuration_manager,
        configuration=source.configuration,
        dataset_json=source.dataset_json,
        checkpoint=source.checkpoint,
        loading=source.loading,
        fold=fold,
        folder_name=model_dir.resolve().name,
        sources=sources,
        orientation=orientation,
        network_class=source.configuration_manager.network_arch_class_name,
    )
    spec, verification = _write_export(
        source, spec, onnx_path, spec_path, opset=opset, tolerance=tolerance, seed=seed
    )
    log.info(
        "exported %s fold %s to %s (max |ONNX Runtime - torch| = %.3g on the logits)",
        model_dir.name,
        fold,
        onnx_path,
        verification["max_abs_logit_difference"],
    )
    return ExportResult(out_dir, onnx_path, spec_path, spec)


def _check_settings(fold, opset, orientation, tolerance) -> tuple[int | str, str | None]:
    """The fold and orientation, checked with the opset and the tolerance."""
    fold = parse_fold(fold)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise UsageError(
            f"--opset must be an integer from 13 to 21, got {opset!r}", fix="use 17 (the default)"
        )
    if orientation is not None:
        orientation = _check_orientation(orientation)
    if not tolerance > 0:
        raise UsageError(
            f"--tolerance must be positive, got {tolerance!r}",
            fix="give a small positive number such as 1e-4 (the default)",
        )
    return fold, orientation


def _same_export(
    spec_path: Path,
    onnx_path: Path,
    *,
    sources: dict[str, str],
    orientation: str | None,
    opset: int,
    fold: int | str,
) -> dict | None:
    """The spec of an export already in place from the same files and settings, else None."""
    from metcli.io.files import read_json, sha256_file

    if not (spec_path.is_file() and onnx_path.is_file()):
        return None
    try:
        old = read_json(spec_path, schema=SPEC_SCHEMA)
    except Exception:  # noqa: BLE001 - anything unreadable is redone
        old = None
    same = (
        old is not None
        and old["source"]["files"] == sources
        and old["axes"]["orientation"] == orientation
        and old["onnx"]["opset"] == opset
        and old["source"]["fold"] == fold
    )
    if same and sha256_file(onnx_path) == old["onnx"]["sha256"]:
        return old
    return None


@dataclass
class _Source:
    """The nnU-Net model being exported: its files read, its network built with its weights."""

    dataset_json: dict
    checkpoint: dict
    loading: str
    configuration: str
    plans_manager: Any
    configuration_manager: Any
    network: Any
    in_channels: int
    heads: int


def _load_source(model_dir: Path, files: dict[str, Path], fold: int | str) -> _Source:
    """Read the model's files and build its network in eval mode, as nnU-Net's predictor does."""
    from metcli.io.files import read_json

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
    check_exportable(plans_manager, configuration_manager, dataset_json, model_dir)

    cm = configuration_manager
    with _quiet_stdout():
        in_channels = determine_num_input_channels(plans_manager, cm, dataset_json)
        heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        network = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            in_channels,
            heads,
            allow_init=False,
            deep_supervision=False,
        )
    try:
        network.load_state_dict(checkpoint["network_weights"], strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"the checkpoint's weights do not fit the network that plans.json "
            f"describes ({short_error(exc, 160)})",
            path=model_dir,
            fix="give the plans.json the model was trained with; a trainer that "
            "changes the architecture is not supported by the export",
        ) from None
    network.eval()
    return _Source(
        dataset_json,
        checkpoint,
        loading,
        configuration,
        plans_manager,
        cm,
        network,
        in_channels,
        heads,
    )


def _write_export(
    source: _Source,
    spec: dict,
    onnx_path: Path,
    spec_path: Path,
    *,
    opset: int,
    tolerance: float,
    seed: int,
) -> tuple[dict, dict]:
    """Write model.onnx and preprocessing.json (both or neither); the spec and its check."""
    from metcli.io.files import OutputSet, dump_json_to, sha256_file

    network, in_channels = source.network, source.in_channels
    patch = [int(p) for p in source.configuration_manager.patch_size]
    with OutputSet() as outputs:
        tmp_onnx = outputs.path(onnx_path)
        _torch_export(network, tmp_onnx, in_channels, patch, opset)
        verification = verify_export(
            network, tmp_onnx, in_channels, patch, tolerance=tolerance, seed=seed
        )
        spec["onnx"] = {
            "file": ONNX_FILE,
            "sha256": sha256_file(tmp_onnx),
            "opset": opset,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "input_shape": ["batch", in_channels, *patch],
            "output_shape": ["batch", source.heads, *patch],
            "exporter": "torch.onnx.export (TorchScript)",
            "torch_version": package_version("torch") or "unknown",
        }
        spec["verification"] = verification
        spec = ordered_spec(spec)
        check_spec_supported(spec, where=spec_path)
        tmp_spec = outputs.path(spec_path)
        dump_json_to(spec, tmp_spec, schema=SPEC_SCHEMA, where=spec_path)
    return spec, verification


def _check_orientation(code: str) -> str:
    text = str(code).strip().upper()
    axis_of = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
    if (
        len(text) != 3
        or any(c not in axis_of for c in text)
        or sorted(axis_of[c] for c in text) != [0, 1, 2]
    ):
        raise UsageError(
            f"orientation {code!r} is not a three-letter code with one letter of "
            "each of L/R, P/A, S/I",
            fix="use LPS (identity direction), RAS, or 'as-stored'",
        )
    return text


def _torch_export(network, target: Path, in_channels: int, patch: list[int], opset: int) -> None:
    import torch

    example = torch.zeros((1, in_channels, *patch), dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught, _quiet_stdout(), torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                network,
                (example,),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types
            raise OutputError(
                f"torch could not export the network to ONNX ({short_error(exc)})",
                path=target.parent,
                fix="try another --opset, or report the network class",
            ) from None
    for item in caught:
        log.debug("torch.onnx.export: %s", " ".join(str(item.message).split())[:200])
    from metcli.io.cards import canonical_onnx

    target.write_bytes(canonical_onnx(target.read_bytes()))  # the same bytes run after run
