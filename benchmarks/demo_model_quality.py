"""Quality of the demo segmentation model on a fresh synthetic cohort (issue 3's targets).

Writes a ``metcli synth`` cohort with a seed the demo model was not trained on
(training used seed 1001, see weights/recipes/train_demo_model.py), segments it
with ``metcli segment`` (nnU-Net backend by default), and compares the result
with the true masks:

* **liver Dice**, per scan, of the liver as an organ (labels 1 and 2 together, as
  in LiTS) and of the liver label alone; the mean over scans is reported.
* **lesions of 10 mm and more**: the true lesions (split-lesions' map of the truth,
  ``derivatives/truth-lesions``) whose longest axial diameter (split-lesions'
  default size rule) is at least ``--min-diameter`` mm. For each, the predicted
  lesion components (26-connected) that touch it are its match; its Dice is
  ``2 |T & P| / (|T| + |P|)``. Reported: the mean of these per-lesion Dice values
  (the target) and the pooled Dice over all of them (sums of the same terms).
* **detection**: a true lesion counts as found when its per-lesion Dice is at least
  ``--hit-dice`` (0.1: the prediction overlaps it substantially). Given per size
  band (5-10, 10-20, >= 20 mm) and for lesions >= 10 mm (the target); false
  positives are predicted components that touch no true lesion.

    python benchmarks/demo_model_quality.py                      # 12 scans, TTA on
    python benchmarks/demo_model_quality.py --subjects 3 --no-tta --json out.json

Targets (issue 3): liver Dice >= 0.95, lesion Dice >= 0.80 on lesions >= 10 mm,
detection >= 90% of those lesions. The exit code is 0 when all three are met, 1
otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EVAL_SEED = 2024
TARGETS = {"liver_dice": 0.95, "lesion_dice_10mm": 0.80, "detection_10mm": 0.90}
BANDS = ((5.0, 10.0), (10.0, 20.0), (20.0, float("inf")))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def score_scan(
    truth: np.ndarray,
    lesion_map: np.ndarray,
    diameters: dict[int, float],
    pred: np.ndarray,
    *,
    hit_dice: float,
) -> dict:
    """Scores of one scan: truth dseg, truth lesion ids map, {id: diameter}, predicted dseg."""
    from scipy import ndimage

    components, count = ndimage.label(pred == 2, structure=np.ones((3, 3, 3), bool))
    lesions = []
    touched = set()
    for lesion_id, diameter in diameters.items():
        true = lesion_map == lesion_id
        ids = np.unique(components[true])
        ids = ids[ids > 0]
        touched.update(int(i) for i in ids)
        matched = np.isin(components, ids) if ids.size else np.zeros_like(true)
        inter = int(np.logical_and(true, matched).sum())
        lesions.append(
            {
                "id": lesion_id,
                "diameter_mm": diameter,
                "true_voxels": int(true.sum()),
                "pred_voxels": int(matched.sum()),
                "overlap": inter,
                "dice": dice(true, matched),
            }
        )
    for lesion in lesions:
        lesion["found"] = lesion["dice"] >= hit_dice
    truth_lesion_any = truth == 2
    false_positive = [
        i
        for i in range(1, count + 1)
        if i not in touched and not (truth_lesion_any & (components == i)).any()
    ]
    return {
        "liver_dice": dice(truth > 0, pred > 0),
        "liver_label_dice": dice(truth == 1, pred == 1),
        "lesion_dice_all": dice(truth == 2, pred == 2),
        "lesions": lesions,
        "false_positives": len(false_positive),
    }


def summarise(scans: list[dict], *, min_diameter: float) -> dict:
    lesions = [les for scan in scans for les in scan["lesions"]]
    big = [les for les in lesions if les["diameter_mm"] >= min_diameter]
    pooled_num = sum(2 * les["overlap"] for les in big)
    pooled_den = sum(les["true_voxels"] + les["pred_voxels"] for les in big)
    bands = []
    for low, high in BANDS:
        band = [les for les in lesions if low <= les["diameter_mm"] < high]
        bands.append(
            {
                "band_mm": f"{low:g}-{high:g}" if high != float("inf") else f">={low:g}",
                "lesions": len(band),
                "found": sum(les["found"] for les in band),
                "detection": (sum(les["found"] for les in band) / len(band)) if band else None,
                "mean_dice": float(np.mean([les["dice"] for les in band])) if band else None,
            }
        )
    return {
        "scans": len(scans),
        "liver_dice": float(np.mean([s["liver_dice"] for s in scans])),
        "liver_dice_min": float(np.min([s["liver_dice"] for s in scans])),
        "liver_label_dice": float(np.mean([s["liver_label_dice"] for s in scans])),
        "lesions_10mm": len(big),
        "lesion_dice_10mm": float(np.mean([les["dice"] for les in big])) if big else None,
        "lesion_dice_10mm_pooled": pooled_num / pooled_den if pooled_den else None,
        "detection_10mm": (sum(les["found"] for les in big) / len(big)) if big else None,
        "lesion_dice_all_labels": float(np.mean([s["lesion_dice_all"] for s in scans])),
        "false_positives_per_scan": float(np.mean([s["false_positives"] for s in scans])),
        "bands": bands,
    }


def run(
    *,
    subjects: int = 12,
    seed: int = EVAL_SEED,
    model: str | None = None,
    backend: str = "nnunet",
    device: str = "auto",
    tta: bool = True,
    min_diameter: float = 10.0,
    hit_dice: float = 0.1,
    workdir: Path | None = None,
) -> dict:
    """Make the cohort, segment it, score it; returns the summary (with timings)."""
    from metcli.io.bids import find_files
    from metcli.lesions.split_lesions import output_paths
    from metcli.lesions.tables import read_lesion_table
    from metcli.segmentation.segment import output_path, segment
    from metcli.synth.synth import class_counts, synth_cohort

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="metcli-quality-")) if own else Path(workdir)
    try:
        n_colorectal, n_pancreatic = class_counts(subjects)
        synth_cohort(
            work / "cohort", n_colorectal=n_colorectal, n_pancreatic=n_pancreatic, seed=seed
        )
        raw = work / "cohort" / "rawdata"
        truth_dir = work / "cohort" / "derivatives" / "truth"
        lesions_dir = work / "cohort" / "derivatives" / "truth-lesions"
        seg_dir = work / "seg"
        start = time.perf_counter()
        report = segment(
            raw, seg_dir, model=model, backend=backend, device=device, tta=tta, overwrite=True
        )
        seconds = time.perf_counter() - start
        if report.failed:
            raise RuntimeError(f"segment failed: {report.failed}")
        scans = []
        for acq in find_files(truth_dir, suffix="dseg"):
            lesion_image, lesion_table, _ = output_paths(lesions_dir, acq)
            rows = read_lesion_table(lesion_table)
            diameters = {
                row["index"]: row["longest_axial_diameter_mm"] for row in rows if row["kept"]
            }
            pred = _array(output_path(seg_dir, acq))
            scans.append(
                score_scan(
                    _array(acq.path), _array(lesion_image), diameters, pred, hit_dice=hit_dice
                )
            )
        summary = summarise(scans, min_diameter=min_diameter)
        summary.update(
            {
                "seed": seed,
                "backend": backend,
                "tta": tta,
                "model": model or "metcli-demo-nnunet",
                "seconds_total": seconds,
                "seconds_per_scan": seconds / max(1, len(scans)),
                "min_diameter_mm": min_diameter,
                "hit_dice": hit_dice,
            }
        )
        summary["targets_met"] = all(
            summary[key] is not None and summary[key] >= target for key, target in TARGETS.items()
        )
        return summary
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", choices=("nnunet", "onnx"), default="nnunet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--min-diameter", type=float, default=10.0)
    parser.add_argument("--hit-dice", type=float, default=0.1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    summary = run(
        subjects=args.subjects,
        seed=args.seed,
        model=args.model,
        backend=args.backend,
        device=args.device,
        tta=args.tta,
        min_diameter=args.min_diameter,
        hit_dice=args.hit_dice,
        workdir=args.workdir,
    )
    print(
        f"demo model quality: {summary['scans']} scans of a fresh cohort (seed "
        f"{summary['seed']}), backend {summary['backend']}, TTA {'on' if args.tta else 'off'}"
    )
    print(
        f"  liver Dice (organ, mean)       {_fmt(summary['liver_dice'])}  (min "
        f"{_fmt(summary['liver_dice_min'])}; liver label alone {_fmt(summary['liver_label_dice'])})"
        f"  target >= {TARGETS['liver_dice']}"
    )
    print(
        f"  lesion Dice >= {args.min_diameter:g} mm (per lesion)  "
        f"{_fmt(summary['lesion_dice_10mm'])}  (pooled {_fmt(summary['lesion_dice_10mm_pooled'])}, "
        f"{summary['lesions_10mm']} lesions)  target >= {TARGETS['lesion_dice_10mm']}"
    )
    print(
        f"  detection >= {args.min_diameter:g} mm             {_fmt(summary['detection_10mm'])}"
        f"  target >= {TARGETS['detection_10mm']}"
    )
    for band in summary["bands"]:
        print(
            f"    {band['band_mm']:>8} mm: {band['found']}/{band['lesions']} found, mean Dice "
            f"{_fmt(band['mean_dice'])}"
        )
    print(f"  false-positive components per scan {summary['false_positives_per_scan']:.2f}")
    print(f"  time: {summary['seconds_per_scan']:.1f} s per scan (model loading included)")
    print(f"  targets met: {'yes' if summary['targets_met'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
