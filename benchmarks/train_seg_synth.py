"""train-seg on synthetic phantoms on the CPU: time, and the new model's Dice on fresh phantoms.

1. a training cohort with ``metcli synth`` (seed 3003, ``small`` phantoms, the demo
   recipe's knobs: 4 / 6 mean lesions per phantom);
2. ``metcli train-seg`` with the ``small`` plan on the CPU (nnU-Net's own
   planning, preprocessing and training; the last 3 participants validate);
3. a fresh cohort (another seed, 4242) segmented by ``metcli segment --model OUT``
   with the new model (nnU-Net backend);
4. Dice against the true masks, per scan, averaged: the liver as an organ (labels
   1 and 2 together, as in LiTS), the liver label alone, and the lesion label
   (pooled over each scan's lesions).

    python benchmarks/train_seg_synth.py                      # 36 training phantoms
    python benchmarks/train_seg_synth.py --epochs 20 --keep /tmp/ts-bench

Target: liver Dice >= 0.9. The exit code is 0 when it is met, 1 otherwise.
Run it as a script (nnU-Net starts worker processes that re-import it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN_SEED, EVAL_SEED = 3003, 4242
KNOBS = {"lesions_colorectal": 4.0, "lesions_pancreatic": 6.0}
TARGET_LIVER_DICE = 0.9


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def metcli(*args) -> float:
    """Run a metcli command; its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metcli.cli.main", *map(str, args)], check=True)
    return time.perf_counter() - start


def score(truth_dir: Path, seg_dir: Path) -> dict:
    import SimpleITK as sitk

    from metcli.io.bids import find_files
    from metcli.segmentation.segment import output_path

    scans = []
    for acq in find_files(truth_dir, suffix="dseg"):
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(acq.path)))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(output_path(seg_dir, acq))))
        scans.append(
            {
                "liver": dice(truth > 0, pred > 0),
                "liver_label": dice(truth == 1, pred == 1),
                "lesion": dice(truth == 2, pred == 2),
            }
        )

    def mean(key):
        values = [s[key] for s in scans if s[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "scans": len(scans),
        "liver_dice": mean("liver"),
        "liver_dice_min": float(np.min([s["liver"] for s in scans])),
        "liver_label_dice": mean("liver_label"),
        "lesion_dice": mean("lesion"),
    }


def run(args, work: Path) -> dict:
    from metcli.synth.synth import synth_cohort

    start = time.perf_counter()
    train = synth_cohort(
        work / "train",
        n_colorectal=args.per_class,
        n_pancreatic=args.per_class,
        seed=TRAIN_SEED,
        truth_lesions=False,
        **KNOBS,
    )
    fresh = synth_cohort(
        work / "fresh",
        n_colorectal=args.fresh // 2,
        n_pancreatic=args.fresh - args.fresh // 2,
        seed=EVAL_SEED,
        truth_lesions=False,
    )
    synth_seconds = time.perf_counter() - start
    participants = sorted(p.name[4:] for p in (train / "rawdata").glob("sub-*"))
    options = ["--plan", "small", "--device", "cpu", "--threads", args.threads, "-v"]
    if args.epochs:
        options += ["--epochs", args.epochs]
    for label in participants[-3:]:
        options += ["--val-participants", label]
    model = work / "model"
    train_seconds = metcli(
        "train-seg", train / "rawdata", train / "derivatives" / "truth", model, *options
    )
    seg = work / "seg"
    tta = ["--tta"] if args.tta else ["--no-tta"]
    seg_seconds = metcli(
        "segment", fresh / "rawdata", seg, "--model", model, "--device", "cpu", *tta, "-q"
    )
    figures = score(fresh / "derivatives" / "truth", seg)
    sidecar = json.loads((model / "train_seg.json").read_text())
    figures.update(
        {
            "training_phantoms": len(participants),
            "epochs": sidecar["Provenance"]["settings"]["plan"]["epochs"],
            "synth_seconds": synth_seconds,
            "train_seconds": train_seconds,
            "segment_seconds": seg_seconds,
            "segment_seconds_per_scan": seg_seconds / max(1, figures["scans"]),
            "tta": args.tta,
        }
    )
    return figures


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=18, help="training phantoms per class")
    parser.add_argument("--fresh", type=int, default=8, help="phantoms of the fresh cohort")
    parser.add_argument("--epochs", type=int, default=None, help="default: the small plan's")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--keep", type=Path, default=None, help="keep the files here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="metcli-train-seg-"))
    try:
        figures = run(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"train-seg (small plan, CPU): {figures['training_phantoms']} training phantoms, "
        f"{figures['epochs']} epochs, {figures['train_seconds'] / 60:.1f} min "
        f"(synth {figures['synth_seconds']:.0f} s)"
    )
    print(
        f"segment with the new model: {figures['scans']} fresh phantoms (seed {EVAL_SEED}), "
        f"TTA {'on' if figures['tta'] else 'off'}, "
        f"{figures['segment_seconds_per_scan']:.1f} s per scan"
    )
    print(
        f"  liver Dice (organ, mean) {_fmt(figures['liver_dice'])} (min "
        f"{_fmt(figures['liver_dice_min'])}; liver label alone "
        f"{_fmt(figures['liver_label_dice'])})  target >= {TARGET_LIVER_DICE}"
    )
    print(f"  lesion Dice (mean per scan) {_fmt(figures['lesion_dice'])}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if (figures["liver_dice"] or 0) >= TARGET_LIVER_DICE else 1


if __name__ == "__main__":
    sys.exit(main())
