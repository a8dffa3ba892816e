"""train-cnn on a synthetic cohort with a clear texture signal: lesion-level AUC and time per epoch.

Writes a ``metcli synth`` cohort whose classes differ clearly in the lesions'
interior (``texture_signal`` 24 HU, the largest synth allows: colorectal
lesions 12 HU brighter with a 12 HU texture, pancreatic ones 12 HU darker and
smooth; the default class differences in lesion count and size stay), trains
``metcli train-cnn`` on the true lesion maps (``derivatives/truth-lesions``)
on the CPU, and prints:

* the lesion-level validation AUC of the kept epoch (the issue's target:
  above 0.8), and the validation patients' patient-level AUC;
* the lesion-level AUC on the test patients, which played no part in training
  or in choosing the epoch (the honest figure);
* seconds per epoch, and the whole run's wall time.

    python benchmarks/train_cnn_synth.py                       # ResNet-18, 64 x 64
    python benchmarks/train_cnn_synth.py --arch densenet121 --size 64 --epochs 8

The exit code is 0 when the validation AUC is above 0.8, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

TARGET_AUC = 0.8


def lesion_auc(path: Path, positive: str, labels: dict[str, str], level: str = "lesion"):
    """AUC of prob_<positive> against the participants' labels, at one level."""
    from sklearn.metrics import roc_auc_score

    from metcli.io.files import read_tsv

    rows = [r for r in read_tsv(path) if r["level"] == level]
    y = [labels[r["participant_id"]] == positive for r in rows]
    if len(set(y)) < 2:
        return None, len(rows)
    return float(roc_auc_score(y, [float(r[f"prob_{positive}"]) for r in rows])), len(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=12, help="patients per class")
    parser.add_argument("--val-patients", type=int, default=6)
    parser.add_argument("--test-patients", type=int, default=6)
    parser.add_argument("--arch", default="densenet121", choices=["densenet121", "resnet18"])
    parser.add_argument("--dims", type=int, default=2, choices=[2, 3])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="PyTorch threads (1 on a CPU shared with other jobs)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the cohort and outputs here (default: a temporary folder)",
    )
    args = parser.parse_args(argv)

    import torch

    from metcli.cnn.train_cnn import train_cnn
    from metcli.io.files import read_json
    from metcli.io.participants import labels_by_participant
    from metcli.synth.synth import synth_cohort

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        started = time.perf_counter()
        synth_cohort(
            work / "synth",
            n_colorectal=args.per_class,
            n_pancreatic=args.per_class,
            seed=args.seed,
            texture_signal=24.0,
        )
        synth_seconds = time.perf_counter() - started
        raw = work / "synth" / "rawdata"
        started = time.perf_counter()
        result = train_cnn(
            raw,
            work / "synth" / "derivatives" / "truth-lesions",
            work / "cnn",
            labels=raw / "participants.tsv",
            arch=args.arch,
            dims=args.dims,
            size=args.size,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            val_patients=args.val_patients,
            test_patients=args.test_patients,
            patience=args.patience,
            device="cpu",
            seed=args.seed,
            overwrite=True,
        )
        train_seconds = time.perf_counter() - started
        card = read_json(work / "cnn" / "model" / "model.json")
        labels = labels_by_participant(raw)
        positive = card["positive_class"]
        val_auc, val_n = lesion_auc(work / "cnn" / "val_predictions.tsv", positive, labels)
        val_patient_auc, _ = lesion_auc(
            work / "cnn" / "val_predictions.tsv", positive, labels, "patient"
        )
        test_auc, test_n = (
            lesion_auc(work / "cnn" / "predictions.tsv", positive, labels)
            if args.test_patients
            else (None, 0)
        )
    split = card["split"]
    training = card["training"]
    print(
        f"cohort: {2 * args.per_class} patients (seed {args.seed}, texture_signal 24 HU), "
        f"synth {synth_seconds:.0f} s"
    )
    print(
        f"split: {split['train_patients']}/{split['val_patients']}/{split['test_patients']} "
        f"patients, {split['train_lesions']}/{split['val_lesions']}/{split['test_lesions']} "
        "lesions (train/val/test)"
    )
    print(
        f"model: {args.arch} {args.dims}D, size {args.size}, lr {args.lr}, batch "
        f"{args.batch_size}, {training['epochs_run']} of {args.epochs} epochs run, kept "
        f"epoch {training['best_epoch']}, {args.threads} thread(s)"
    )
    print(f"validation AUC (lesion level, {val_n} lesions): {val_auc:.3f}  [target > {TARGET_AUC}]")
    if val_patient_auc is not None:
        print(f"validation AUC (patient level): {val_patient_auc:.3f}")
    if test_auc is not None:
        print(
            f"test AUC (lesion level, {test_n} lesions, never seen in training or epoch "
            f"choice): {test_auc:.3f}"
        )
    print(
        f"seconds per epoch: {result.seconds_per_epoch:.1f}; whole train-cnn run "
        f"{train_seconds:.0f} s (inputs, training, predictions, ONNX export)"
    )
    return 0 if val_auc is not None and val_auc > TARGET_AUC else 1


if __name__ == "__main__":
    sys.exit(main())
