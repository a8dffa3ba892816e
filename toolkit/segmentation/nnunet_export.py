"""The model folder ``metcli train-seg`` writes, from nnU-Net's training results.

An nnU-Net v2 trained-model folder that ``metcli segment --model DIR`` and
``metcli export-onnx`` take::

    OUT_DIR/dataset.json, plans.json        as nnU-Net's trainer wrote them
    OUT_DIR/fold_<k>/checkpoint_final.pth   stripped: loads with torch.load(weights_only=True)
    OUT_DIR/SHA256SUMS                      sha256 of the files above (sha256sum -c)
    OUT_DIR/manifest-entry.json             a weights-manifest entry of the model

The checkpoint keeps what inference needs: the network weights, ``trainer_name``
``nnUNetTrainer`` (metcli's trainer subclass changes the schedule and mirroring,
not the network, so nnU-Net rebuilds the network from plans.json without it),
the configuration and fold, the mirroring axes and the number of epochs; no
optimizer state, no pickled plans or devices.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Sequence

from metcli.core.errors import InputError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
SUMS = "SHA256SUMS"
ENTRY = "manifest-entry.json"


def strip_checkpoint(source: Path, *, configuration: str, fold: str, plans_name: str) -> dict:
    """nnU-Net's final checkpoint reduced to what inference needs (see the module)."""
    from metcli.segmentation.checkpoints import load_checkpoint
    from metcli.segmentation.nnunet_training import TRAINER_NAME

    checkpoint, _how = load_checkpoint(source)
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return {
        # as saved: tensors that share storage are then stored once
        "network_weights": dict(checkpoint["network_weights"]),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": configuration, "fold": fold},
        "inference_allowed_mirroring_axes": None if axes is None else [int(a) for a in axes],
        "current_epoch": int(checkpoint.get("current_epoch", 0)),
        "metcli": {"command": "train-seg", "trained_with": TRAINER_NAME, "plans": plans_name},
    }


def training_log(source: Path, labels: Sequence[str]) -> list[dict]:
    """One row per epoch of nnU-Net's training log (from the full checkpoint)."""
    from metcli.segmentation.checkpoints import load_checkpoint

    logging_ = load_checkpoint(source)[0].get("logging") or {}
    rows = []
    for epoch, loss in enumerate(logging_.get("train_losses", [])):

        def at(key, epoch=epoch):
            values = logging_.get(key, [])
            return values[epoch] if epoch < len(values) else None

        dice = at("dice_per_class_or_region") or []
        start, end = at("epoch_start_timestamps"), at("epoch_end_timestamps")
        row = {
            "epoch": epoch + 1,
            "train_loss": _round(loss),
            "val_loss": _round(at("val_losses")),
            "ema_pseudo_dice": _round(at("ema_fg_dice")),
            "learning_rate": _round(at("lrs"), 6),
            "seconds": None if start is None or end is None else _round(end - start, 1),
        }
        for label, value in zip(labels, dice):
            row[f"pseudo_dice_{label}"] = _round(value)
        rows.append(row)
    return rows


def _round(value, digits: int = 4):
    """A rounded float; None for a missing or non-finite value (JSON has no NaN)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def write_sums(files: dict[str, str], target: Path) -> None:
    """``SHA256SUMS`` (sha256sum's format) of ``files`` {relative path: sha256}."""
    target.write_text("".join(f"{files[n]}  {n}\n" for n in files), encoding="utf-8")


def sums_match(folder: Path) -> bool:
    """Whether every file that ``folder``'s SHA256SUMS lists is there with that sha256."""
    from metcli.io.files import sha256_file

    sums = folder / SUMS
    if not sums.is_file():
        return False
    for line in sums.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([0-9a-f]{64})\s+\*?(.+)$", line.strip())
        if not match:
            return False
        target = folder / match.group(2)
        if not target.is_file() or sha256_file(target) != match.group(1):
            return False
    return True


def spacing_xyz(plans: dict, configuration: str) -> list[float]:
    """The configuration's target spacing in x, y, z order (plans hold it transposed)."""
    config = plans["configurations"][configuration]
    while "spacing" not in config and "inherits_from" in config:
        config = plans["configurations"][config["inherits_from"]]
    transposed = [float(s) for s in config["spacing"]]
    forward = list(plans.get("transpose_forward", range(len(transposed))))
    zyx = [0.0] * len(transposed)
    for i, axis in enumerate(forward):
        zyx[axis] = transposed[i]
    return zyx[::-1]


def manifest_entry(
    *,
    name: str,
    files: dict[str, str],
    plans: dict,
    dataset_id: int,
    dataset_name: str,
    configuration: str,
    folds: Sequence[str],
    plans_name: str,
    labels: dict[str, int],
    cohort: dict,
    model_sha256: str,
) -> dict:
    """A weights-manifest entry of the model (``schemas/weights_manifest.schema.json``)."""
    phases = cohort["phases"]  # the training CTs' phases (None: no ce- entity)
    orientations = cohort["orientations"]
    return {
        "name": name,
        "description": f"nnU-Net v2 model trained by metcli train-seg on {cohort['n']} CTs "
        f"({configuration}, plan {cohort['plan']}, {cohort['epochs']} epochs).",
        "format": "nnunetv2",
        "source": "shipped",
        "path": name,
        "url": None,
        "sha256": None,
        "files": dict(files),
        "verified": True,
        "note": f"sha256 of each file as metcli train-seg wrote them; model sha256 "
        f"(segment's provenance) {model_sha256}. To use it by name, copy the folder to "
        f"weights/{name} (or change 'path') and add this entry to the manifest's models; "
        "for a download, set source 'download', url and sha256 of the archive.",
        "licence": None,
        "licence_note": "set the licence that the training data allow",
        "homepage": None,
        "citation": None,
        "intended_use": "CTs like the training cohort's (same scanner settings, phase, grid)",
        "nnunet": {
            "dataset_id": int(dataset_id),
            "dataset_name": dataset_name,
            "configuration": configuration,
            "folds": [int(f) if f.isdigit() else f for f in folds],
            "trainer": "nnUNetTrainer",
            "plans": plans_name,
        },
        "labels": dict(labels),
        "label_map": {str(v): v for v in sorted(labels.values())},
        "input": {
            "modality": "CT",
            "units": "HU",
            "channels": 1,
            "phase": phases[0] if len(phases) == 1 else None,
            "orientation": orientations[0] if len(orientations) == 1 else None,
            "spacing_mm": spacing_xyz(plans, configuration),
            "notes": "orientation: that of every training CT (null when they differed); "
            "spacing_mm: nnU-Net's target spacing, x, y, z",
        },
    }


def check_results(results: Path, folds: Sequence[str]) -> None:
    """Every fold's final checkpoint, plans.json and dataset.json must be there."""
    for rel in ("plans.json", "dataset.json", *(f"fold_{f}/{CHECKPOINT}" for f in folds)):
        if not (results / rel).is_file():
            raise InputError(
                f"nnU-Net's training left no {rel}",
                path=results,
                fix="run train-seg again (it continues), or with --overwrite",
            )
