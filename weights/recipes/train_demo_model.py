#!/usr/bin/env python
"""Train metcli's demo nnU-Net model on synthetic phantoms (the recipe of weights/demo/).

The demo model lets ``metcli segment`` run end to end on a fresh machine with no
download. It only knows ``metcli synth`` phantoms (small size: 96x96x48 voxels at
2x2x2.5 mm, a half-size abdomen): it is NOT a model for real CT.

What this script does (an interrupted run continues where it stopped: run the same
command again):

1. a training cohort with :func:`metcli.synth.synth.synth_cohort` (seed
   :data:`COHORT_SEED`, which no test or benchmark uses; finished phantoms are kept);
2. :func:`metcli.segmentation.train_seg.train_seg` (``metcli train-seg``) on it, with
   the recipe's plan (:func:`demo_plan`: nnU-Net's plans reduced to fewer features per
   stage, a smaller patch and batch size 2, so that a 2-core CPU trains it in
   minutes; 50 iterations per epoch, 45 epochs, a short validation and no left-right
   mirroring), the last :data:`N_VALIDATION` participants validating fold 0.
   train-seg runs nnU-Net's own planning, preprocessing and training, continues a
   killed training from nnU-Net's ``checkpoint_latest.pth``, and writes
   ``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth`` (stripped: it loads
   with ``torch.load(weights_only=True)``) and ``SHA256SUMS`` into
   ``weights/demo/metcli-demo-nnunet/`` (with its manifest entry and provenance).

The same model from the command line (the recipe's plan is train-seg's ``small``
plan, saved under another plans name)::

    metcli train-seg COHORT/rawdata COHORT/derivatives/truth OUT --plan small \
        --val-participants ... --device cpu

Usage (from the repository root)::

    .venv/bin/python weights/recipes/train_demo_model.py --work-dir /tmp/metcli-demo-train
    .venv/bin/python weights/recipes/train_demo_model.py --out /tmp/demo --epochs 1

Settings are the module constants below; the command-line options only change
where files go, the device and (for trials) the number of epochs. The training
is seeded (numpy, torch, the cohort), but nnU-Net's multi-process data
augmentation is not bit-for-bit reproducible.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
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
MODEL_NAME = "metcli-demo-nnunet"
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


def make_cohort(work_dir: Path) -> Path:
    """The training cohort (finished phantoms of an interrupted run are kept)."""
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


def demo_plan(epochs: int | None = None):
    """The recipe's network and schedule as train-seg's plan settings."""
    from metcli.segmentation import PlanSettings

    return PlanSettings(
        name="demo",
        plans_name=PLANS_IDENTIFIER,
        patch_size=PATCH_SIZE,
        features_per_stage=FEATURES_PER_STAGE,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS if epochs is None else epochs,
        iterations_per_epoch=ITERATIONS_PER_EPOCH,
        val_iterations=VALIDATION_ITERATIONS,
        save_every=SAVE_EVERY,
        initial_lr=INITIAL_LR,
        oversample_foreground=OVERSAMPLE_FOREGROUND,
    )


def train(cohort: Path, work_dir: Path, out_dir: Path, device: str, epochs: int | None):
    """train-seg on the cohort: fold 0, the last N_VALIDATION participants validate."""
    from metcli.segmentation.train_seg import train_seg

    participants = sorted(p.name[len("sub-") :] for p in (cohort / "rawdata").glob("sub-*"))
    result = train_seg(
        cohort / "rawdata",
        cohort / "derivatives" / "truth",
        out_dir,
        configuration=CONFIGURATION,
        folds=[FOLD],
        plan=demo_plan(epochs),
        val_participants=participants[-N_VALIDATION:],
        device=device,
        seed=TRAINING_SEED,
        work_dir=work_dir / "train-seg",
        name=MODEL_NAME,
        workers=DA_PROCESSES,
        threads=max(1, min(2, os.cpu_count() or 1)),
        dataset_id=DATASET_ID,
        dataset_name=DATASET_NAME.split("_", 1)[1],
    )
    log.info(
        "model %s in %s (sha256 %s), %.1f min",
        result.name,
        result.out_dir,
        result.model_sha256,
        result.seconds / 60,
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/metcli-demo-train"),
        help="where the cohort and nnU-Net's folders go",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the model folder (default: weights/demo/metcli-demo-nnunet)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"train this many epochs instead of {EPOCHS} (trials only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    logging.getLogger("metcli.segmentation").setLevel(logging.INFO)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cohort = make_cohort(work)
    train(cohort, work, args.out.resolve(), args.device, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
