#!/usr/bin/env python
"""Train metcli's demo nnU-Net model on synthetic phantoms (the recipe of weights/demo/).

The demo model lets ``metcli segment`` run end to end on a fresh machine with no
download. It only knows ``metcli synth`` phantoms (small size: 96x96x48 voxels at
2x2x2.5 mm, a half-size abdomen): it is NOT a model for real CT.

What this script does, each stage skipped when its output is already there
(so an interrupted run continues where it stopped; run the same command again):

1. ``cohort``: a training cohort with :func:`metcli.synth.synth.synth_cohort` (seed
   :data:`COHORT_SEED`, which no test or benchmark uses).
2. ``raw``: the cohort as an nnU-Net v2 raw dataset ``Dataset990_MetcliDemo``
   (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json`` with
   the channel named ``CT`` so that nnU-Net uses its CT normalisation; labels
   background 0, liver 1, lesion 2).
3. ``plan``: nnU-Net's own fingerprint extraction, experiment planning and
   preprocessing (configuration ``3d_fullres``), through nnunetv2's Python API.
4. ``reduce``: a reduced copy of the plans (:data:`PLANS_IDENTIFIER`): fewer features
   per stage, a smaller patch, batch size 2, so that a 2-core CPU trains it in
   minutes. The preprocessed data of step 3 is reused (same data identifier).
5. ``train``: nnU-Net's own training code (``nnUNetTrainer``) through a subclass,
   :class:`nnUNetTrainer_metcliDemo` built by :func:`demo_trainer_class`, with fewer
   iterations per epoch, fewer epochs, a short validation and no left-right
   mirroring (the liver is lateral: see the class); the trainer is
   instantiated directly from Python (nnU-Net's class search is not needed). A
   checkpoint is written every :data:`SAVE_EVERY` epochs; a run that finds
   ``checkpoint_latest.pth`` continues from it. Uses CUDA when available.
6. ``export``: ``dataset.json``, ``plans.json`` and ``fold_0/checkpoint_final.pth``
   into ``weights/demo/metcli-demo-nnunet/``, the checkpoint stripped to what
   inference needs (network weights, configuration, mirroring axes; no optimizer
   state, no pickled plans or devices), so that it loads with
   ``torch.load(weights_only=True)``; ``SHA256SUMS`` lists the files' sha256.

Usage (from the repository root)::

    .venv/bin/python weights/recipes/train_demo_model.py --work-dir /tmp/metcli-demo-train
    .venv/bin/python weights/recipes/train_demo_model.py --work-dir ... --stage train \
        --time-epochs 1

Settings are the module constants below; the command-line options only change
where files go, the device and (for trials) the number of epochs. The training
is seeded (numpy, torch, the cohort), but nnU-Net's multi-process data
augmentation is not bit-for-bit reproducible.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "weights" / "demo" / "metcli-demo-nnunet"

# ------------------------------------------------------------------ the recipe's settings
#: Seed of the training cohort (tests and benchmarks use other seeds).
COHORT_SEED = 1001
#: Phantoms per class (small size preset of metcli synth).
N_COLORECTAL, N_PANCREATIC = 18, 18
#: Synth knobs of the training cohort: more lesions per phantom than the default
#: (more lesion voxels to learn from), the default size range of lesions.
SYNTH_KNOBS = {"lesions_colorectal": 4.0, "lesions_pancreatic": 6.0}
#: Cases held out for nnU-Net's per-epoch pseudo-Dice (fold 0's validation set).
N_VALIDATION = 3
DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_MetcliDemo"
CONFIGURATION = "3d_fullres"
LABELS = {"background": 0, "liver": 1, "lesion": 2}
PLANS_IDENTIFIER = "nnUNetPlans_metcliDemo"
#: The reduced network: patch (z, y, x in nnU-Net's axis order), features per stage.
PATCH_SIZE = (32, 48, 48)
FEATURES_PER_STAGE = (8, 16, 32, 64)
BATCH_SIZE = 2
#: Training schedule.
EPOCHS = 45
ITERATIONS_PER_EPOCH = 50
VALIDATION_ITERATIONS = 4
SAVE_EVERY = 2
INITIAL_LR = 1e-2
OVERSAMPLE_FOREGROUND = 0.5
TRAINING_SEED = 12345
FOLD = 0
#: Data-augmentation worker processes (nnU-Net's nnUNet_n_proc_DA) on a small CPU.
DA_PROCESSES = 1

log = logging.getLogger("train_demo_model")


# ------------------------------------------------------------------ helpers
def nnunet_folders(work_dir: Path) -> dict[str, Path]:
    return {
        "nnUNet_raw": work_dir / "nnUNet_raw",
        "nnUNet_preprocessed": work_dir / "nnUNet_preprocessed",
        "nnUNet_results": work_dir / "nnUNet_results",
    }


def set_nnunet_environment(work_dir: Path) -> None:
    """nnU-Net reads its folders from the environment: set them before importing it."""
    for key, path in nnunet_folders(work_dir).items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    os.environ.setdefault("nnUNet_n_proc_DA", str(DA_PROCESSES))
    os.environ.setdefault("nnUNet_compile", "false")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return torch.device(name)


# ------------------------------------------------------------------ 1. cohort
def make_cohort(work_dir: Path) -> Path:
    from metcli.synth.synth import synth_cohort

    cohort = work_dir / "cohort"
    log.info(
        "training cohort: %d phantoms, seed %d, knobs %s -> %s",
        N_COLORECTAL + N_PANCREATIC,
        COHORT_SEED,
        SYNTH_KNOBS,
        cohort,
    )
    synth_cohort(
        cohort,
        n_colorectal=N_COLORECTAL,
        n_pancreatic=N_PANCREATIC,
        seed=COHORT_SEED,
        size="small",
        truth_lesions=False,
        **SYNTH_KNOBS,
    )
    return cohort


# ------------------------------------------------------------------ 2. raw dataset
def make_raw_dataset(cohort: Path, work_dir: Path) -> Path:
    """The cohort as an nnU-Net v2 raw dataset (plain labels, channel 'CT')."""
    from metcli.io.bids import find_files

    raw = nnunet_folders(work_dir)["nnUNet_raw"] / DATASET_NAME
    images, labels = raw / "imagesTr", raw / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    cts = find_files(cohort / "rawdata", suffix="ct")
    truth = {
        a.entities.key: a.path for a in find_files(cohort / "derivatives" / "truth", suffix="dseg")
    }
    cases = []
    for acq in cts:
        case = f"metcli_{acq.entities.sub}"
        shutil.copyfile(acq.path, images / f"{case}_0000.nii.gz")
        shutil.copyfile(truth[acq.entities.key], labels / f"{case}.nii.gz")
        cases.append(case)
    dataset = {
        "name": "MetcliDemo",
        "description": "metcli synth phantoms (synthetic CT, small size); not real patients",
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "licence": "Apache-2.0 (synthetic data generated by metcli)",
        "reference": "metcli weights/recipes/train_demo_model.py",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    log.info("raw dataset: %d cases in %s", len(cases), raw)
    return raw


# ------------------------------------------------------------------ 3. plan and preprocess
def plan_and_preprocess(work_dir: Path) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    extract_fingerprint_dataset(
        DATASET_ID,
        num_processes=2,
        check_dataset_integrity=True,
        clean=True,
        verbose=False,
        show_progress_bar=False,
    )
    plan_experiment_dataset(DATASET_ID)
    preprocess_dataset(
        DATASET_ID,
        "nnUNetPlans",
        configurations=(CONFIGURATION,),
        num_processes=(2,),
        verbose=False,
        show_progress_bar=False,
    )


def write_split(work_dir: Path) -> None:
    """fold 0: all but the last N_VALIDATION cases for training (sorted case names)."""
    folder = nnunet_folders(work_dir)["nnUNet_preprocessed"] / DATASET_NAME
    raw = nnunet_folders(work_dir)["nnUNet_raw"] / DATASET_NAME / "labelsTr"
    cases = sorted(p.name[: -len(".nii.gz")] for p in raw.glob("*.nii.gz"))
    split = [{"train": cases[:-N_VALIDATION], "val": cases[-N_VALIDATION:]}]
    (folder / "splits_final.json").write_text(json.dumps(split, indent=2) + "\n")


# ------------------------------------------------------------------ 4. reduce the plans
def reduce_plans(work_dir: Path) -> Path:
    """Write PLANS_IDENTIFIER.json: nnU-Net's plans with a network a CPU can train."""
    folder = nnunet_folders(work_dir)["nnUNet_preprocessed"] / DATASET_NAME
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    config = copy.deepcopy(plans["configurations"][CONFIGURATION])
    arch = config["architecture"]["arch_kwargs"]
    n_stages = len(FEATURES_PER_STAGE)
    # Pool by 2 along an axis while the patch stays divisible; 3x3x3 kernels throughout.
    strides, size = [[1, 1, 1]], list(PATCH_SIZE)
    for _ in range(n_stages - 1):
        step = [2 if s % 2 == 0 and s // 2 >= 4 else 1 for s in size]
        size = [s // k for s, k in zip(size, step)]
        strides.append(step)
    config.update({"patch_size": list(PATCH_SIZE), "batch_size": BATCH_SIZE})
    arch.update(
        {
            "n_stages": n_stages,
            "features_per_stage": list(FEATURES_PER_STAGE),
            "kernel_sizes": [[3, 3, 3]] * n_stages,
            "strides": strides,
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        }
    )
    reduced = copy.deepcopy(plans)
    reduced["plans_name"] = PLANS_IDENTIFIER
    reduced["configurations"] = {CONFIGURATION: config}
    path = folder / f"{PLANS_IDENTIFIER}.json"
    path.write_text(json.dumps(reduced, indent=2) + "\n")
    log.info(
        "reduced plans: patch %s, features %s, strides %s, batch %d, spacing %s",
        PATCH_SIZE,
        FEATURES_PER_STAGE,
        strides,
        BATCH_SIZE,
        config["spacing"],
    )
    return path


# ------------------------------------------------------------------ 5. train
def demo_trainer_class():
    """nnUNetTrainer with the demo schedule (the network is nnU-Net's, from the plans)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainer_metcliDemo(nnUNetTrainer):
        epochs = EPOCHS

        def __init__(
            self,
            plans: dict,
            configuration: str,
            fold: int,
            dataset_json: dict,
            device: torch.device = torch.device("cuda"),
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
            self.num_val_iterations_per_epoch = VALIDATION_ITERATIONS
            self.num_epochs = type(self).epochs
            self.initial_lr = INITIAL_LR
            self.oversample_foreground_percent = OVERSAMPLE_FOREGROUND
            self.save_every = SAVE_EVERY

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            # No left-right mirroring (in training nor in test-time augmentation): the
            # liver lies on the patient's right, and a model that saw mirrored livers
            # finds livers in the left upper abdomen (as TotalSegmentator's trainers,
            # which do not mirror at all).
            rotation, dummy_2d, initial_patch, mirror_axes = (
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            )
            left_right = list(self.plans_manager.transpose_forward).index(2)  # the x axis
            mirror_axes = tuple(a for a in mirror_axes if a != left_right)
            self.inference_allowed_mirroring_axes = mirror_axes
            return rotation, dummy_2d, initial_patch, mirror_axes

    return nnUNetTrainer_metcliDemo


def train(work_dir: Path, device_name: str, epochs: int | None) -> Path:
    """Train fold 0, continuing from checkpoint_latest.pth when there is one."""
    import numpy as np
    import torch

    folders = nnunet_folders(work_dir)
    preprocessed = folders["nnUNet_preprocessed"] / DATASET_NAME
    plans = json.loads((preprocessed / f"{PLANS_IDENTIFIER}.json").read_text())
    plans["continue_training"] = True
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer_class = demo_trainer_class()
    if epochs is not None:
        trainer_class.epochs = epochs
    np.random.seed(TRAINING_SEED)
    torch.manual_seed(TRAINING_SEED)
    device = pick_device(device_name)
    trainer = trainer_class(
        plans=plans,
        configuration=CONFIGURATION,
        fold=FOLD,
        dataset_json=dataset_json,
        device=device,
    )
    out = Path(trainer.output_folder)
    final = out / "checkpoint_final.pth"
    if final.is_file() and epochs is None:
        log.info("training already finished: %s", final)
        return out
    latest = out / "checkpoint_latest.pth"
    if latest.is_file():
        # Our own checkpoint, written by this recipe: nnU-Net's loader unpickles it.
        trainer.load_checkpoint(str(latest))
        log.info("continuing from %s (epoch %d)", latest, trainer.current_epoch)
    start = time.time()
    trainer.run_training()
    log.info("training: %.1f min on %s", (time.time() - start) / 60, device)
    return out


# ------------------------------------------------------------------ 6. export
def export(work_dir: Path, out_dir: Path, checkpoint: str = "final") -> None:
    """Copy the model folder into the repository, checkpoint stripped, with SHA256SUMS.

    ``checkpoint``: ``final`` (the finished training), or ``best``/``latest`` to try
    an unfinished training (never ship those).
    """
    import torch

    trainer_class = demo_trainer_class()
    results = (
        nnunet_folders(work_dir)["nnUNet_results"]
        / DATASET_NAME
        / f"{trainer_class.__name__}__{PLANS_IDENTIFIER}__{CONFIGURATION}"
    )
    source = results / f"fold_{FOLD}" / f"checkpoint_{checkpoint}.pth"
    if not source.is_file():
        raise SystemExit(f"{source} not found: train first (--stage train)")
    from metcli.segmentation.checkpoints import load_checkpoint

    # weights_only=True with numpy's scalar types allowed: a full nnU-Net training
    # checkpoint needs nothing more (checked on this recipe's checkpoints).
    checkpoint, _how = load_checkpoint(source)
    mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
    stripped = {
        # As saved (no copies): tensors that share storage (nnU-Net's conv and
        # all_modules names of one layer) are then stored once.
        "network_weights": dict(checkpoint["network_weights"]),
        # The subclass only changes the schedule; the network is nnUNetTrainer's, so
        # nnU-Net's predictor can rebuild it without the recipe's class.
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": CONFIGURATION, "fold": FOLD},
        "inference_allowed_mirroring_axes": None
        if mirror_axes is None
        else [int(a) for a in mirror_axes],
        "current_epoch": int(checkpoint["current_epoch"]),
        "metcli": {
            "recipe": "weights/recipes/train_demo_model.py",
            "trained_with": trainer_class.__name__,
            "plans": PLANS_IDENTIFIER,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"fold_{FOLD}").mkdir(exist_ok=True)
    tmp = out_dir / f"fold_{FOLD}" / ".checkpoint_final.pth.part"
    torch.save(stripped, tmp)
    torch.load(tmp, map_location="cpu", weights_only=True)  # it must load without pickles
    os.replace(tmp, out_dir / f"fold_{FOLD}" / "checkpoint_final.pth")
    for name in ("dataset.json", "plans.json"):
        shutil.copyfile(results / name, out_dir / name)
    files = ["dataset.json", "plans.json", f"fold_{FOLD}/checkpoint_final.pth"]
    lines = [f"{sha256_of(out_dir / name)}  {name}" for name in files]
    (out_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    size = sum((out_dir / name).stat().st_size for name in files)
    log.info("exported %s (%.1f MB):\n%s", out_dir, size / 1e6, "\n".join(lines))


# ------------------------------------------------------------------ main
STAGES = ("cohort", "raw", "plan", "reduce", "train", "export")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/metcli-demo-train"),
        help="where the cohort, nnU-Net's folders and checkpoints go",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the exported model folder (default: weights/demo/metcli-demo-nnunet)",
    )
    parser.add_argument(
        "--stage",
        choices=("all", *STAGES),
        default="all",
        help="run one stage only (default: all, skipping finished ones)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--checkpoint",
        choices=("final", "best", "latest"),
        default="final",
        help="checkpoint to export (best/latest: trials of an unfinished run)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"train this many epochs instead of {EPOCHS} (trials only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    set_nnunet_environment(work)
    wanted = STAGES if args.stage == "all" else (args.stage,)
    preprocessed = nnunet_folders(work)["nnUNet_preprocessed"] / DATASET_NAME

    if "cohort" in wanted:
        make_cohort(work)
    if "raw" in wanted:
        raw = nnunet_folders(work)["nnUNet_raw"] / DATASET_NAME / "dataset.json"
        if args.stage == "raw" or not raw.is_file():
            make_raw_dataset(work / "cohort", work)
    if "plan" in wanted:
        if (
            args.stage == "plan"
            or not (preprocessed / "nnUNetPlans.json").is_file()
            or not (preprocessed / "gt_segmentations").is_dir()
        ):
            plan_and_preprocess(work)
        write_split(work)
    if "reduce" in wanted:
        reduce_plans(work)
    if "train" in wanted:
        train(work, args.device, args.epochs)
    if "export" in wanted:
        export(work, args.out.resolve(), args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
