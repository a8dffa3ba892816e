"""The 2024 ALMSS study's deep arm on its synthetic world: the multi-branch network and its
ablations against a portal-phase-only model.

Runs, as a user does, each step as its own ``metcli`` command:

1. ``metcli synth OUT --scenario almss --class-counts hcc=N,icc=N,colorectal=N`` (four
   CT phases per participant on their own grids; age and sex depend on the class),
2. one ``metcli train-cnn`` per row of the table below, every row on the same
   ``split.tsv`` (the first run's stratified split), seed and epochs:

   =========================  ==================================================
   almss                      ``--arch almss``, 4 phases, liver branch, age + sex
   almss, no liver branch     ``--no-liver-branch`` (the study's ablation)
   almss, no covariates       without ``--covariates`` (the study's ablation)
   almss, portal phase only   ``--phases portal`` (liver branch, age + sex)
   resnet18 3D, portal only   ``--arch resnet18 --dims 3``: the single-phase CNN
   =========================  ==================================================

3. ``metcli predict`` of the full model on the test patients, compared with train-cnn's
   own test predictions (the ONNX model with covariates reproduces them).

It prints, per row, the test patients' patient-level macro AUC (the mean of the
one-vs-rest AUCs) with a 95% patient-bootstrap CI, each class's AUC, the seconds per
epoch, and checks the issue's claim: the full model's macro AUC above the
portal-phase-only models'.

    python benchmarks/almss_cnn.py                       # 12 per class, 12 epochs
    python benchmarks/almss_cnn.py --per-class 8 --epochs 6 --workdir /tmp/almss-cnn
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("colorectal", "hcc", "icc")
PHASES = "portal,native,arterial,delayed"
METCLI = [sys.executable, "-c", "from metcli.cli.main import main; main()"]
ROWS = {
    "almss": ["--arch", "almss", "--covariates", "age,sex"],
    "almss, no liver branch": ["--arch", "almss", "--covariates", "age,sex", "--no-liver-branch"],
    "almss, no covariates": ["--arch", "almss"],
    "almss, portal phase only": [
        "--arch",
        "almss",
        "--covariates",
        "age,sex",
        "--phases",
        "portal",
    ],
    "resnet18 3D, portal only": ["--arch", "resnet18", "--dims", "3", "--phases", "portal"],
}


def run(args: list, what: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([*METCLI, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}):\n{done.stderr}")
    return time.perf_counter() - start


def macro_auc(rows: list[dict], labels: dict[str, str], n_boot: int = 2000) -> dict:
    """Patient-level one-vs-rest AUC per class, their mean, and its patient-bootstrap CI."""
    from sklearn.metrics import roc_auc_score

    patients = [r for r in rows if r["level"] == "patient"]
    truth = np.array([labels[r["participant_id"]] for r in patients])
    proba = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in patients])

    def macro(idx):
        aucs = []
        for k, cls in enumerate(CLASSES):
            positive = truth[idx] == cls
            if positive.all() or not positive.any():
                return None
            aucs.append(roc_auc_score(positive, proba[idx, k]))
        return float(np.mean(aucs)), aucs

    point, per_class = macro(np.arange(len(patients)))
    rng = np.random.default_rng(0)
    boots = [macro(rng.integers(0, len(patients), len(patients))) for _ in range(n_boot)]
    values = [b[0] for b in boots if b is not None]
    lower, upper = np.percentile(values, [2.5, 97.5])
    return {"macro": point, "lower": lower, "upper": upper, "per_class": per_class}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7, help="synth's and training's seed")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from metcli.io.files import read_tsv

    root = args.workdir or Path(tempfile.mkdtemp(prefix="almss-cnn-"))
    if root.exists() and args.workdir is not None:
        shutil.rmtree(root)
    counts = ",".join(f"{c}={args.per_class}" for c in CLASSES)
    seconds = run(
        ["synth", root, "--scenario", "almss", "--class-counts", counts, "--seed", args.seed, "-q"],
        "synth",
    )
    print(f"synth: {3 * args.per_class} participants, {seconds:.0f} s")
    raw, lesions, seg = (
        root / "rawdata",
        root / "derivatives/truth-lesions",
        root / "derivatives/truth",
    )
    labels = {r["participant_id"]: r["primary"] for r in read_tsv(raw / "participants.tsv")}
    test = max(3, round(0.4 * args.per_class)) * 3
    common = [
        "--labels", raw / "participants.tsv", "--phases", PHASES, "--seg", seg,
        "--size", args.size, "--epochs", args.epochs, "--batch-size", 8,
        "--seed", args.seed, "--threads", 2, "-q",
    ]  # fmt: skip
    results, split = {}, None
    for name, options in ROWS.items():
        out = root / ("model-" + name.replace(" ", "").replace(",", "-"))
        extra = [*common]
        if "--arch" in options and options[options.index("--arch") + 1] != "almss":
            extra = [a for a in extra if a not in ("--seg", seg)]
        extra += ["--split", split] if split else ["--val-patients", 6, "--test-patients", test]
        # later rows give --phases again: click keeps the last
        seconds = run(["train-cnn", raw, lesions, out, *extra, *options], f"train-cnn ({name})")
        split = split or out / "split.tsv"
        card = __import__("json").loads((out / "model" / "model.json").read_text())
        results[name] = macro_auc(read_tsv(out / "predictions.tsv"), labels)
        results[name]["s_per_epoch"] = card["training"]["seconds_per_epoch"]
        results[name]["seconds"] = seconds
        results[name]["dir"] = out
    full = results["almss"]["dir"]
    run(
        ["predict", full / "model", raw, lesions, seg, root / "predict",
         "--participants", raw / "participants.tsv", "-q"],
        "predict",
    )  # fmt: skip
    _report(results, root, full, args)


def _report(results: dict, root: Path, full: Path, args) -> None:
    from metcli.io.files import read_tsv

    mine = {
        (r["participant_id"], r["lesion_id"]): [float(r[f"prob_{c}"]) for c in CLASSES]
        for r in read_tsv(full / "predictions.tsv")
    }
    again = {
        (r["participant_id"], r["lesion_id"]): [float(r[f"prob_{c}"]) for c in CLASSES]
        for r in read_tsv(root / "predict" / "predictions.tsv")
        if (r["participant_id"], r["lesion_id"]) in mine
    }
    gap = max(abs(a - b) for k in mine for a, b in zip(mine[k], again[k]))
    print(f"\ntest patients' patient-level AUC ({args.per_class} per class, {args.epochs} epochs)")
    print(f"{'model':28s} {'macro AUC [95% CI]':24s} " + " ".join(f"{c:>10s}" for c in CLASSES)
          + f" {'s/epoch':>8s}")  # fmt: skip
    for name, r in results.items():
        ci = f"{r['macro']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]"
        print(f"{name:28s} {ci:24s} " + " ".join(f"{a:10.3f}" for a in r["per_class"])
              + f" {r['s_per_epoch']:8.2f}")  # fmt: skip
    print(f"\npredict (ONNX, covariates from participants.tsv) vs train-cnn's test predictions: "
          f"largest difference {gap:.1e}")  # fmt: skip
    best_single = max(
        results[n]["macro"] for n in ("almss, portal phase only", "resnet18 3D, portal only")
    )
    verdict = "yes" if results["almss"]["macro"] > best_single else "NO"
    print(f"multi-phase model with covariates above the portal-only models: {verdict}")


if __name__ == "__main__":
    main()
