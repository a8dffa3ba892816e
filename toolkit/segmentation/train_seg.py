"""``metcli train-seg``: train an nnU-Net v2 segmentation model on metcli folders.

:func:`train_seg` takes the CTs of a raw dataset and their ``_dseg.nii.gz`` masks
(0 background, 1 liver, 2 lesion), and runs nnU-Net v2's own pipeline on them:

1. the cases as an nnU-Net raw dataset (:mod:`metcli.segmentation.nnunet_dataset`);
2. nnU-Net's fingerprint, planning and preprocessing, then the plan's network
   (:mod:`metcli.segmentation.nnunet_training`: ``small`` for a CPU, or nnU-Net's
   ``default``);
3. nnU-Net's training of each fold (a killed run continues from nnU-Net's
   ``checkpoint_latest.pth`` when it is run again with the same inputs and settings);
4. the model folder that ``metcli segment --model OUT_DIR`` and ``metcli export-onnx``
   take, with ``SHA256SUMS``, a weights-manifest entry and the provenance sidecar
   ``train_seg.json`` (:mod:`metcli.segmentation.nnunet_export`).

nnU-Net's raw, preprocessed and results folders live in a work folder
(``OUT_DIR/.train-seg-work`` unless ``work_dir`` is given), removed after success
unless ``keep_work``. Validation cases (nnU-Net's per-epoch pseudo-Dice) are the
``val_participants``, or nnU-Net's 5-fold split made over participants (all CTs of
a participant on one side), or, for fold ``all``, the training cases themselves.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Sequence

from metcli.core.errors import InputError, UsageError
from metcli.segmentation.nnunet_dataset import TrainingCase
from metcli.segmentation.nnunet_training import CONFIGURATIONS, PlanSettings
from metcli.segmentation.train_seg_run import STATE_FILE, TrainRun, TrainSegResult, execute

log = logging.getLogger(__name__)

DATASET_ID = 990
WORK_NAME = ".train-seg-work"
N_SPLITS = 5


# ----------------------------------------------------------------------------- checks
def parse_folds(folds: Sequence[int | str] | None) -> list[str]:
    """``--fold`` values as ``"0"``..``"4"`` or ``"all"`` (default: fold 0)."""
    chosen: list[str] = []
    for fold in folds or [0]:
        text = str(fold).strip().lower()
        if text != "all" and not (text.isdigit() and int(text) < N_SPLITS):
            raise UsageError(
                f"--fold {fold!r} is not a fold number 0..{N_SPLITS - 1} or 'all'",
                fix="give --fold 0 (repeatable) or --fold all",
            )
        text = text if text == "all" else str(int(text))
        if text not in chosen:
            chosen.append(text)
    return chosen


def model_name(name: str | None, out_dir: Path) -> str:
    """The manifest name of the model: ``name``, or made from OUT_DIR's folder name."""
    if name is not None:
        if not re.match(r"^[a-z0-9][a-z0-9._-]*$", name):
            raise UsageError(
                f"--name {name!r} is not a valid model name",
                fix="use lower-case letters, digits, '.', '_' and '-' (starting with a "
                "letter or digit)",
            )
        return name
    text = re.sub(r"[^a-z0-9._-]+", "-", out_dir.resolve().name.lower()).strip("-._")
    return text or "train-seg-model"


def _check_options(configuration: str, threads, epochs, iterations) -> None:
    from metcli.core.threads import check_threads

    if configuration not in CONFIGURATIONS:
        raise UsageError(
            f"--configuration {configuration!r} is not one of {', '.join(CONFIGURATIONS)}",
            fix="choose one of those (3d_fullres is nnU-Net's usual one)",
        )
    check_threads(threads)
    for option, value in (("--epochs", epochs), ("--iterations-per-epoch", iterations)):
        if value is not None and (isinstance(value, bool) or int(value) < 1):
            raise UsageError(
                f"{option} must be at least 1, got {value!r}", fix=f"give {option} 1 or more"
            )


def make_splits(
    cases: Sequence[TrainingCase], folds: list[str], val_participants: Sequence[str] | None
) -> list[dict] | None:
    """nnU-Net's ``splits_final.json`` for the run (None: fold ``all`` only), checked.

    Every CT of a participant lies on one side of a split.
    """
    from metcli.io.bids import clean_label

    participants = sorted({c.participant for c in cases})
    by_participant = {
        p: sorted(c.case_id for c in cases if c.participant == p) for p in participants
    }
    if val_participants:
        if folds != ["0"]:
            raise UsageError(
                "--val-participants defines one split (fold 0); it cannot be used with "
                f"--fold {' '.join(folds)}",
                fix="leave out --fold (or give --fold 0), or leave out --val-participants",
            )
        val = sorted({clean_label(p, option="--val-participants") for p in val_participants})
        unknown = [p for p in val if p not in by_participant]
        if unknown:
            raise UsageError(
                f"--val-participants {', '.join(unknown)} is not a training participant",
                fix=f"choose among: {', '.join(participants[:30])}",
            )
        train = [p for p in participants if p not in val]
        _check_training_size(sum(len(by_participant[p]) for p in train), "after the validation")
        return [_split(train, val, by_participant)]
    _check_training_size(len(cases), "")
    if folds == ["all"]:
        return None
    if len(participants) < N_SPLITS:
        raise UsageError(
            f"nnU-Net's {N_SPLITS}-fold split needs at least {N_SPLITS} participants; "
            f"there are {len(participants)}",
            fix="give --val-participants, or --fold all (trains on every case)",
        )
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    # nnU-Net's own split (seed 12345, as its trainer makes it), over participants
    splits = generate_crossval_split(participants, seed=12345, n_splits=N_SPLITS)
    return [_split(list(s["train"]), list(s["val"]), by_participant) for s in splits]


def _split(train: list[str], val: list[str], by_participant: dict) -> dict:
    return {
        "train": [c for p in train for c in by_participant[p]],
        "val": [c for p in val for c in by_participant[p]],
    }


def _check_training_size(n: int, where: str) -> None:
    if n < 2:
        raise InputError(
            f"{n} training case(s) {where}: nnU-Net needs at least 2".replace("  ", " "),
            fix="add participants with a CT and its mask (or fewer --val-participants)",
        )


def _work_dir(work_dir: Path | None, out_dir: Path, inputs: list[Path]) -> Path:
    """The work folder, checked: ours (state file) or empty, outside the inputs."""
    from metcli.io.files import check_output_not_inside_input

    work = Path(work_dir) if work_dir is not None else out_dir / WORK_NAME
    check_output_not_inside_input(work, inputs)
    if work.is_dir() and any(work.iterdir()) and not (work / STATE_FILE).is_file():
        raise UsageError(
            f"the work folder {work} holds files that are not train-seg's",
            fix="give an empty or new folder with --work-dir",
        )
    return work


# ----------------------------------------------------------------------------- the run
def train_seg(
    raw_dir: str | Path,
    seg_dir: str | Path,
    out_dir: str | Path,
    *,
    configuration: str = "3d_fullres",
    folds: Sequence[int | str] | None = None,
    plan: str | PlanSettings = "small",
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    participants: Sequence[str] | None = None,
    val_participants: Sequence[str] | None = None,
    device: str = "auto",
    seed: int = 0,
    work_dir: str | Path | None = None,
    keep_work: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    dataset_id: int = DATASET_ID,
    dataset_name: str = "Metcli",
    on_epoch: Callable[[str, dict], None] | None = None,
) -> TrainSegResult:
    """Train an nnU-Net v2 model on the CTs of ``raw_dir`` and the masks of ``seg_dir``.

    Args:
        raw_dir, seg_dir: the CTs (``sub-*/[ses-*/]anat/*_ct.nii.gz``) and their masks
            (``..._dseg.nii.gz`` on each CT's grid: 0, 1, 2).
        out_dir: the model folder to write (not inside ``raw_dir`` or ``seg_dir``).
        configuration: nnU-Net configuration (``3d_fullres``, ``2d``, ``3d_lowres``).
        folds, plan: folds to train (0..4 or ``all``; default 0); ``small`` (CPU),
            ``default`` (nnU-Net's), or a :class:`PlanSettings`.
        epochs, iterations_per_epoch: the schedule (None: the plan's).
        participants, val_participants: who trains (None: every participant); who
            validates fold 0 (None: nnU-Net's 5-fold split over participants).
        device, seed: ``auto``/``cpu``/``cuda``; numpy's and torch's seed (nnU-Net's
            augmentation processes are not bit-for-bit reproducible).
        work_dir, keep_work: where nnU-Net's folders go (default
            ``OUT_DIR/.train-seg-work``); keep them after success.
        overwrite, name: train again even when OUT_DIR holds this model already; the
            model's name in its manifest entry (default: from OUT_DIR).
        workers, threads: nnU-Net's data-augmentation processes (None: 1 on the CPU);
            PyTorch's CPU threads (None: torch's current number).
        dataset_id, dataset_name: the nnU-Net dataset (``Dataset990_Metcli``);
        on_epoch: called with (fold, figures) after each epoch.
    """
    from metcli.core.devices import torch_device
    from metcli.io.files import check_output_not_inside_input
    from metcli.segmentation.nnunet_dataset import find_training_cases
    from metcli.segmentation.nnunet_training import default_workers, plan_settings

    out_dir, raw_dir, seg_dir = Path(out_dir), Path(raw_dir), Path(seg_dir)
    _check_options(configuration, threads, epochs, iterations_per_epoch)
    fold_list = parse_folds(folds)
    settings = plan_settings(plan).with_schedule(epochs=epochs, iterations=iterations_per_epoch)
    check_output_not_inside_input(out_dir, [raw_dir, seg_dir])
    cases = find_training_cases(raw_dir, seg_dir, participants)
    run = TrainRun(
        cases=cases,
        folds=fold_list,
        splits=make_splits(cases, fold_list, val_participants),
        plan=settings,
        configuration=configuration,
        dataset_id=int(dataset_id),
        dataset_name=f"Dataset{int(dataset_id):03d}_{dataset_name}",
        name=model_name(name, out_dir),
        device=torch_device(device),
        seed=int(seed),
    )
    return execute(
        run,
        roots=(raw_dir, seg_dir, out_dir),
        work=_work_dir(work_dir, out_dir, [raw_dir, seg_dir]),
        keep_work=keep_work,
        overwrite=overwrite,
        workers=default_workers(run.device) if workers is None else int(workers),
        threads=threads,
        on_epoch=on_epoch,
    )
