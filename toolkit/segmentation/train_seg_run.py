"""One ``metcli train-seg`` run once its inputs are checked: the work folder, nnU-Net, outputs.

:func:`execute` applies the skip rule (OUT_DIR already holds the model of the same
inputs and settings), prepares the work folder (reused when a run with the same
inputs and settings stopped before the end; otherwise started over, keeping nnU-Net's
preprocessed data when only the training settings changed), runs nnU-Net
(:mod:`metcli.segmentation.nnunet_training`) and writes the model folder
(:mod:`metcli.segmentation.nnunet_export`), all files together, sidecar last.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from metcli.core.errors import MetcliError
from metcli.segmentation.nnunet_dataset import NNUNET_LABELS, TrainingCase
from metcli.segmentation.nnunet_export import CHECKPOINT, ENTRY, SUMS
from metcli.segmentation.nnunet_training import FOLDERS, PlanSettings

log = logging.getLogger(__name__)

COMMAND = "train-seg"
STATE_FILE = "train-seg-state.json"
SIDECAR = "train_seg.json"


@dataclass
class TrainRun:
    """The checked inputs and settings of one run."""

    cases: list[TrainingCase]
    folds: list[str]
    splits: list[dict] | None  #: nnU-Net's splits_final.json (None: fold all only)
    plan: PlanSettings
    configuration: str
    dataset_id: int
    dataset_name: str  #: ``Dataset<ID>_<Name>``
    name: str  #: the model's manifest name
    device: str  #: ``cpu`` or ``cuda``
    seed: int

    def settings(self) -> dict:
        """What decides the model (the skip rule's and the work folder's settings)."""
        return {
            "configuration": self.configuration,
            "folds": self.folds,
            "plan": self.plan.as_dict(),
            "splits": self.splits,
            "seed": self.seed,
            "dataset": self.dataset_name,
            "name": self.name,
            "labels": NNUNET_LABELS,
        }


@dataclass
class TrainSegResult:
    """What :func:`metcli.segmentation.train_seg.train_seg` did."""

    out_dir: Path
    name: str
    model_sha256: str
    entry_path: Path
    folds: list[str]
    skipped: bool
    seconds: float
    work_dir: Path | None  #: the kept work folder (None: removed)


# ----------------------------------------------------------------------------- work folder
def read_state(work: Path) -> dict:
    try:
        state = json.loads((work / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(work: Path, state: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def remove_work(work: Path) -> None:
    """Remove train-seg's files from the work folder (and the folder when it is then empty)."""
    for key in FOLDERS:
        shutil.rmtree(work / key, ignore_errors=True)
    (work / STATE_FILE).unlink(missing_ok=True)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def prepare_work(work: Path, inputs: list[dict], run: TrainRun) -> dict:
    """The work folder's state for this run: kept, partly reset, or new."""
    from metcli.io.files import sha256_json

    data_key = sha256_json(
        {"inputs": inputs, "configuration": run.configuration, "dataset": run.dataset_name}
    )
    training_key = sha256_json({"data": data_key, "settings": run.settings()})
    state = read_state(work)
    if state.get("data") != data_key:
        if state:
            log.info("work folder: other inputs than the last run; starting over")
        remove_work(work)
        state = {}
    elif state.get("training") != training_key:
        log.info("work folder: other training settings; nnU-Net's preprocessed data reused")
        shutil.rmtree(work / "nnUNet_results", ignore_errors=True)
    elif state.get("training"):
        log.warning("work folder %s: reusing an earlier run's files (same inputs, settings)", work)
    state.update(data=data_key, training=training_key)
    write_state(work, state)
    return state


# ----------------------------------------------------------------------------- nnU-Net
def _fold_arg(fold: str) -> int | str:
    return int(fold) if fold.isdigit() else fold


def run_nnunet(
    run: TrainRun, work: Path, state: dict, *, workers: int, on_epoch: Callable | None
) -> tuple[Path, str]:
    """Raw dataset, planning and preprocessing (once), then every fold; (results, plans)."""
    from metcli.segmentation.nnunet_dataset import write_raw_dataset
    from metcli.segmentation.nnunet_export import check_results
    from metcli.segmentation.nnunet_training import (
        TRAINER_NAME,
        nnunet_folders,
        plan_and_preprocess,
        reduce_plans,
        train_fold,
    )

    folders = nnunet_folders(work)
    preprocessed = folders["nnUNet_preprocessed"] / run.dataset_name
    if not state.get("prepared"):
        state["cohort"] = write_raw_dataset(
            run.cases,
            folders["nnUNet_raw"] / run.dataset_name,
            name=run.dataset_name.split("_", 1)[1],
            description=f"metcli train-seg: {len(run.cases)} CTs with their masks",
        )
        plan_and_preprocess(run.dataset_id, run.configuration, processes=max(1, workers))
        state["prepared"] = True
        write_state(work, state)
    if run.splits is not None:
        text = json.dumps(run.splits, indent=2) + "\n"
        (preprocessed / "splits_final.json").write_text(text, encoding="utf-8")
    plans_name = reduce_plans(preprocessed, run.configuration, run.plan)
    for fold in run.folds:

        def report(figures, fold=fold):
            _log_epoch(fold, figures)
            if on_epoch is not None:
                on_epoch(fold, figures)

        started = time.time()
        train_fold(
            preprocessed,
            plans_name,
            run.configuration,
            _fold_arg(fold),
            run.plan,
            device=run.device,
            seed=run.seed,
            workers=workers,
            on_epoch=report,
        )
        log.info("fold %s trained in %.1f min", fold, (time.time() - started) / 60)
    results = folders["nnUNet_results"] / run.dataset_name
    results = results / f"{TRAINER_NAME}__{plans_name}__{run.configuration}"
    check_results(results, run.folds)
    return results, plans_name


def _log_epoch(fold: str, figures: dict) -> None:
    names = [n for n in NNUNET_LABELS if n != "background"]
    dice = ", ".join(f"{n} {d:.3f}" for n, d in zip(names, figures["pseudo_dice"]))
    log.info(
        "fold %s epoch %d/%d: train loss %.4f, validation loss %.4f, pseudo Dice %s (%.0f s)",
        fold,
        figures["epoch"],
        figures["epochs"],
        figures["train_loss"] if figures["train_loss"] is not None else float("nan"),
        figures["val_loss"] if figures["val_loss"] is not None else float("nan"),
        dice or "n/a",
        figures["seconds"] or 0.0,
    )


# ----------------------------------------------------------------------------- outputs
def write_model(step, inputs: list[dict], run: TrainRun, results: Path, plans_name: str, cohort):
    """The model folder (see :mod:`metcli.segmentation.nnunet_export`); (sha256, entry path)."""
    import torch

    from metcli.io.files import OutputSet, dump_json_to, sha256_file
    from metcli.segmentation.models import model_digest
    from metcli.segmentation.nnunet_export import (
        manifest_entry,
        strip_checkpoint,
        training_log,
        write_sums,
    )

    out_dir = step.out_dir
    plans = json.loads((results / "plans.json").read_text(encoding="utf-8"))
    plans.pop("continue_training", None)
    labels = [n for n in NNUNET_LABELS if n != "background"]
    with OutputSet() as outs:
        tmp = {}
        for rel, doc in (
            ("dataset.json", json.loads((results / "dataset.json").read_text(encoding="utf-8"))),
            ("plans.json", plans),
        ):
            tmp[rel] = outs.path(out_dir / rel)
            dump_json_to(doc, tmp[rel])
        logs = {}
        for fold in run.folds:
            rel, source = f"fold_{fold}/{CHECKPOINT}", results / f"fold_{fold}" / CHECKPOINT
            (out_dir / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
            tmp[rel] = outs.path(out_dir / rel)
            stripped = strip_checkpoint(
                source, configuration=run.configuration, fold=fold, plans_name=plans_name
            )
            torch.save(stripped, tmp[rel])
            torch.load(tmp[rel], map_location="cpu", weights_only=True)  # loads without pickles
            logs[fold] = training_log(source, labels)
        files = {rel: sha256_file(path) for rel, path in tmp.items()}
        digest = model_digest(files)
        produced = {out_dir / "dataset.json": tmp["dataset.json"]}
        produced[out_dir / "plans.json"] = tmp["plans.json"]
        produced[out_dir / SUMS] = outs.path(out_dir / SUMS)
        write_sums(files, produced[out_dir / SUMS])
        entry = manifest_entry(
            name=run.name,
            files=files,
            plans=plans,
            dataset_id=run.dataset_id,
            dataset_name=run.dataset_name,
            configuration=run.configuration,
            folds=run.folds,
            plans_name=plans_name,
            labels=NNUNET_LABELS,
            cohort=dict(cohort, plan=run.plan.name, epochs=run.plan.epochs),
            model_sha256=digest,
        )
        produced[out_dir / ENTRY] = outs.path(out_dir / ENTRY)
        manifest = {"manifest_version": 1, "models": [entry]}
        dump_json_to(entry, produced[out_dir / ENTRY])
        from metcli.io.schemas import validate

        validate(manifest, "weights_manifest", where=out_dir / ENTRY)
        extra = {"Model": {"name": run.name, "sha256": digest, "files": files}, "Training": logs}
        step.write_sidecar(outs, out_dir / SIDECAR, inputs, produced, extra=extra)
    for folder in out_dir.glob("fold_*"):  # folds of an earlier run would be ensembled
        if folder.is_dir() and folder.name[len("fold_") :] not in run.folds:
            shutil.rmtree(folder)
    return digest, out_dir / ENTRY


def execute(
    run: TrainRun,
    *,
    roots: tuple[Path, Path, Path],
    work: Path,
    keep_work: bool,
    overwrite: bool,
    workers: int,
    threads: int | None,
    on_epoch: Callable | None,
) -> TrainSegResult:
    """Skip, or train and write the model folder (see the module).

    ``roots``: RAW_DIR, SEG_DIR and OUT_DIR.
    """
    from metcli.core.threads import limit_cpu_threads
    from metcli.io.provenance import Step
    from metcli.segmentation.nnunet_export import sums_match
    from metcli.segmentation.nnunet_training import training_environment

    start = time.time()
    raw_dir, seg_dir, out_dir = roots
    step = Step(COMMAND, out_dir, {"raw": raw_dir, "seg": seg_dir}, run.settings())
    inputs = step.inputs([p for c in run.cases for p in (c.ct.path, c.dseg.path)])
    sidecar = out_dir / SIDECAR
    if not overwrite and step.is_done(sidecar, inputs) and sums_match(out_dir):
        model = json.loads(sidecar.read_text(encoding="utf-8"))["Model"]
        log.info("%s already holds this model (same inputs and settings): skipped", out_dir)
        return TrainSegResult(
            out_dir, run.name, model["sha256"], out_dir / ENTRY, run.folds, True, 0.0, None
        )
    if overwrite:
        remove_work(work)
    new_out = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    state = prepare_work(work, inputs, run)
    try:
        with limit_cpu_threads(threads), training_environment(work, workers=workers):
            results, plans_name = run_nnunet(run, work, state, workers=workers, on_epoch=on_epoch)
            digest, entry = write_model(step, inputs, run, results, plans_name, state["cohort"])
    except MetcliError:
        if not state.get("prepared"):  # a refused input: nothing worth keeping
            remove_work(work)
            if new_out and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    if not keep_work:
        remove_work(work)
    seconds = time.time() - start
    log.info("model %s written to %s in %.1f min", run.name, out_dir, seconds / 60)
    return TrainSegResult(
        out_dir, run.name, digest, entry, run.folds, False, seconds, work if keep_work else None
    )
