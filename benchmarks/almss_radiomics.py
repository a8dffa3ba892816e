"""The 2024 ALMSS study's radiomics arm on its synthetic world, real and null.

Runs, as a user does, each step as its own ``metcli`` command:

1. ``metcli synth OUT --scenario almss --class-counts ...`` (four CT phases per
   participant, each on its own grid, a breath-hold apart; eight classes),
2. ``metcli extract rawdata derivatives/truth-lesions features --channels
   native,arterial,portal,delayed --register rigid --seg derivatives/truth
   --liver-features`` (every phase registered to the portal phase, resampled onto its
   grid, each lesion and the liver extracted in every phase),
3. ``metcli train-radiomics features models --labels participants.tsv --hierarchy
   hierarchy.yaml`` (step 1 HCC / ICC / metastasis, step 2 the origin among six; nested
   cross-validation), once per cross-validation seed (``--cv-seeds``: with 48
   participants the macro AUC moves with the split by several hundredths),

once on the cohort and once on its null twin (``--null``: every class alike). From the
out-of-fold predictions of the whole chain it prints, per class, the patient-level
one-vs-rest AUC with its DeLong 95% CI, and checks the issue's claim: on the cohort
every class above chance (AUC > 0.5) and the macro AUC's CI above 0.5; on the null
cohort the macro AUC, averaged over the seeds, within 0.1 of 0.5; and the cohort above
its null twin at every seed. It also prints the registration error against the motion
synth recorded (``TransformFromReference``) and the time of each step.

    python benchmarks/almss_radiomics.py                      # 6 per class, --jobs 2
    python benchmarks/almss_radiomics.py --per-class 4 --workdir /tmp/almss
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

CLASSES = ("hcc", "icc", "colorectal", "pancreatic", "gastric", "lung", "breast", "neuroendocrine")
PHASES = "native,arterial,portal,delayed"
METCLI = [sys.executable, "-c", "from metcli.cli.main import main; main()"]


def run(args: list, what: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([*METCLI, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}):\n{done.stderr}")
    return time.perf_counter() - start


def chain(root: Path, per_class: int, seed: int, jobs: int, null: bool) -> dict:
    """synth, extract, train-radiomics; the seconds of each step."""
    counts = ",".join(f"{c}={per_class}" for c in CLASSES)
    times = {}
    times["synth"] = run(
        ["synth", root, "--scenario", "almss", "--class-counts", counts, "--seed", seed, "-q"]
        + (["--null"] if null else []),
        "synth",
    )
    times["extract"] = run(
        [
            "extract", root / "rawdata", root / "derivatives" / "truth-lesions",
            root / "features", "--channels", PHASES, "--register", "rigid",
            "--seg", root / "derivatives" / "truth", "--liver-features", "--jobs", jobs, "-q",
        ],
        "extract",
    )  # fmt: skip
    return times


def train(root: Path, seed: int, jobs: int) -> float:
    """train-radiomics with the hierarchy, cross-validation seeded by ``seed``."""
    return run(
        [
            "train-radiomics", root / "features", root / f"models-{seed}",
            "--labels", root / "rawdata" / "participants.tsv",
            "--hierarchy", root / "hierarchy.yaml",
            "--classifiers", "random-forest,logistic-regression", "--sampler", "none",
            "--cv-folds", 3, "--cv-repeats", 2, "--inner-folds", 2,
            "--jobs", jobs, "--seed", seed, "-q",
        ],
        "train-radiomics",
    )  # fmt: skip


def per_class_auc(root: Path, model: str, seed: int) -> dict:
    """Patient-level one-vs-rest AUC with its DeLong CI per class, and the macro mean."""
    from metcli.evaluation.stats import delong_ci
    from metcli.io.files import read_tsv

    labels = {
        r["participant_id"]: r["primary"] for r in read_tsv(root / "rawdata" / "participants.tsv")
    }
    rows = [
        r for r in read_tsv(root / f"models-{seed}" / "oof_predictions.tsv")
        if r["level"] == "patient" and r["model"] == model
    ]  # fmt: skip
    # repeated CV: average each patient's out-of-fold probabilities over the repeats
    by_patient: dict[str, list] = {}
    for r in rows:
        by_patient.setdefault(r["participant_id"], []).append(
            [float(r[f"prob_{c}"]) for c in CLASSES]
        )
    patients = sorted(by_patient)
    proba = np.array([np.mean(by_patient[p], axis=0) for p in patients])
    truth = [labels[p] for p in patients]
    out = {}
    for k, cls in enumerate(CLASSES):
        positive = np.array([t == cls for t in truth])
        ci = delong_ci(proba[:, k], positive)
        out[cls] = (ci.auc, ci.lower, ci.upper)
    aucs = np.array([v[0] for v in out.values()])
    # the macro AUC's CI: the mean of the classes' AUCs, its variance from theirs (independent
    # classes assumed; a conservative bound for the one-vs-rest AUCs of one model)
    half = np.array([(v[2] - v[1]) / 2 for v in out.values()])
    se = np.sqrt(np.sum((half / 1.96) ** 2)) / len(CLASSES)
    out["macro"] = (aucs.mean(), aucs.mean() - 1.96 * se, aucs.mean() + 1.96 * se)
    return out


def registration_error(root: Path) -> float:
    """The largest distance (mm), over points within 40 mm of each phase's centre, between
    the transform extract found and the motion synth recorded."""
    worst = 0.0
    rng = np.random.default_rng(0)
    for sidecar in sorted((root / "features").rglob("sub-*_features.json")):
        channels = json.loads(sidecar.read_text())["Channels"]
        sub = sidecar.name.split("_")[0]
        for phase, record in channels.items():
            if "transform" not in record:
                continue
            truth_path = root / "rawdata" / sub / "anat" / f"{sub}_ce-{phase}_ct.json"
            truth = json.loads(truth_path.read_text())["TransformFromReference"]
            found = record["transform"]
            centre = np.asarray(found["centre_mm"])
            points = centre + rng.normal(0, 20, (200, 3)).clip(-40, 40)
            a = points @ np.asarray(truth["matrix"]).T + np.asarray(truth["offset_mm"])
            b = points @ np.asarray(found["matrix"]).T + np.asarray(found["offset_mm"])
            worst = max(worst, float(np.linalg.norm(a - b, axis=1).max()))
    return worst


def report(name: str, aucs: dict) -> None:
    print(f"\n{name}: patient-level one-vs-rest AUC (DeLong 95% CI), out-of-fold, whole chain")
    for cls, (auc, low, high) in aucs.items():
        print(f"  {cls:15s} {auc:.3f} ({low:.3f}-{high:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="synth's seed")
    parser.add_argument("--cv-seeds", default="1,2,3", help="train-radiomics' seeds (splits)")
    parser.add_argument("--model", default="random-forest_none")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the outputs found in --workdir (analyse again)"
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="almss-"))
    cv_seeds = [int(s) for s in args.cv_seeds.split(",")]
    macro: dict[str, list[float]] = {}
    pooled: dict[str, dict] = {}
    for name, null in (("cohort", False), ("null cohort", True)):
        root = work / name.replace(" ", "-")
        if not (args.reuse and (root / "features" / "features.tsv").is_file()):
            shutil.rmtree(root, ignore_errors=True)
            times = chain(root, args.per_class, args.seed, args.jobs, null)
            print(f"{name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
        for seed in cv_seeds:
            if not (args.reuse and (root / f"models-{seed}" / "oof_predictions.tsv").is_file()):
                print(f"{name}: train-radiomics (seed {seed}) {train(root, seed, args.jobs):.0f} s")
            aucs = per_class_auc(root, args.model, seed)
            macro.setdefault(name, []).append(aucs["macro"][0])
            if seed == cv_seeds[0]:
                pooled[name] = aucs
                report(f"{name}, cross-validation seed {seed}", aucs)
        print(
            f"  macro AUC per cross-validation seed: {', '.join(f'{m:.3f}' for m in macro[name])}"
        )
        error = registration_error(root)
        print(f"  registration: largest error against synth's motion {error:.2f} mm")
    cohort, null = pooled["cohort"], float(np.mean(macro["null cohort"]))
    checks = {
        "every class above chance on the cohort": all(cohort[c][0] > 0.5 for c in CLASSES),
        "macro AUC's CI above 0.5 on the cohort": cohort["macro"][1] > 0.5,
        "null cohort: macro AUC, mean over the seeds, within 0.1 of 0.5": abs(null - 0.5) < 0.1,
        "cohort above the null cohort at every seed": all(
            c > n for c, n in zip(macro["cohort"], macro["null cohort"])
        ),
    }
    print()
    for what, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {what}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
