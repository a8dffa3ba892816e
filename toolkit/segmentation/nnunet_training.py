"""nnU-Net v2's planning, preprocessing and training, run from Python for ``metcli train-seg``.

Nothing of nnU-Net is reimplemented here: its fingerprint extraction, experiment
planning and preprocessing run through ``nnunetv2.experiment_planning.
plan_and_preprocess_api``; training is nnU-Net's ``nnUNetTrainer``, through the
subclass :func:`trainer_class` builds, which only sets the schedule (epochs,
iterations per epoch, learning rate, checkpoint interval) and turns off left-right
mirroring. What metcli adds:

* :class:`PlanSettings`: the ``small`` plan (:data:`SMALL_PLAN`, a network a 2-core
  CPU trains in minutes: fewer features per stage, a smaller patch, batch size 2,
  fewer iterations and epochs; :func:`reduce_plans` writes it as a copy of nnU-Net's
  plans that reuses nnU-Net's preprocessed data) and the ``default`` plan
  (:data:`DEFAULT_PLAN`: nnU-Net's own plans and schedule).
* :func:`training_environment`: nnU-Net's folder variables (``nnUNet_raw``,
  ``nnUNet_preprocessed``, ``nnUNet_results``), its data-augmentation processes
  (``nnUNet_n_proc_DA``) and ``nnUNet_compile`` set for the run only and restored
  afterwards; nnU-Net's prints go to this module's logger (debug), never stdout.
  nnunetv2 is imported inside it (releases before 2.8 read the folders when
  imported; their module-level copies are pointed at the run's folders too).
* :func:`train_fold`: one fold, continuing from nnU-Net's ``checkpoint_latest.pth``
  when a killed run left one (after checking that it loads weights-only).

No left-right mirroring: nnU-Net mirrors along every axis by default, but the liver
lies on the patient's right, and a model that saw mirrored livers finds livers in
the left upper abdomen (found when the demo model was trained). The trainer mirrors
along the other axes only, in training and in test-time augmentation (the
checkpoint's ``inference_allowed_mirroring_axes``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from metcli.core.errors import InputError, UsageError

log = logging.getLogger(__name__)

FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: The configurations train-seg trains (the cascade needs a trained 3d_lowres first).
CONFIGURATIONS = ("3d_fullres", "2d", "3d_lowres")
#: nnU-Net's own plans (what its planner writes).
NNUNET_PLANS = "nnUNetPlans"
#: The trainer subclass's name (its results folder is named after it).
TRAINER_NAME = "nnUNetTrainer_metcli"


@dataclass(frozen=True)
class PlanSettings:
    """The network and schedule of a training.

    ``patch_size`` and ``features_per_stage`` None keep nnU-Net's own plans (then
    ``plans_name`` is nnU-Net's ``nnUNetPlans``); otherwise :func:`reduce_plans`
    writes them as ``plans_name``. ``patch_size`` is in nnU-Net's axis order (z, y, x
    for an axial CT), clipped to nnU-Net's own patch.
    """

    name: str
    plans_name: str
    patch_size: tuple[int, ...] | None
    features_per_stage: tuple[int, ...] | None
    batch_size: int | None
    epochs: int
    iterations_per_epoch: int
    val_iterations: int
    save_every: int
    initial_lr: float = 1e-2
    oversample_foreground: float = 0.33

    def with_schedule(self, *, epochs: int | None = None, iterations: int | None = None):
        """A copy with another number of epochs / iterations per epoch (None: unchanged)."""
        changes = {}
        if epochs is not None:
            changes["epochs"] = int(epochs)
        if iterations is not None:
            changes["iterations_per_epoch"] = int(iterations)
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


#: The CPU plan (the demo model's settings): 7-9 s per epoch on 2 idle CPU cores
#: (docs/train-seg.md).
SMALL_PLAN = PlanSettings(
    name="small",
    plans_name="nnUNetPlans_metcliSmall",
    patch_size=(32, 48, 48),
    features_per_stage=(8, 16, 32, 64),
    batch_size=2,
    epochs=45,
    iterations_per_epoch=50,
    val_iterations=4,
    save_every=2,
    oversample_foreground=0.5,
)
#: nnU-Net's own network and schedule (1000 epochs of 250 iterations: a GPU's job).
DEFAULT_PLAN = PlanSettings(
    name="default",
    plans_name=NNUNET_PLANS,
    patch_size=None,
    features_per_stage=None,
    batch_size=None,
    epochs=1000,
    iterations_per_epoch=250,
    val_iterations=50,
    save_every=50,
)
PLANS = {"small": SMALL_PLAN, "default": DEFAULT_PLAN}


def plan_settings(plan: str | PlanSettings) -> PlanSettings:
    """The :class:`PlanSettings` of ``--plan`` (``small``, ``default``) or as given."""
    if isinstance(plan, PlanSettings):
        return plan
    if plan not in PLANS:
        raise UsageError(
            f"--plan {plan!r} is not one of {', '.join(PLANS)}",
            fix="use small on a CPU, default (nnU-Net's own) on a GPU",
        )
    return PLANS[plan]


# ----------------------------------------------------------------------------- environment
class _LogWriter(io.TextIOBase):
    """A text stream that sends each line to the log (nnU-Net's prints)."""

    def __init__(self, level: int = logging.DEBUG):
        self.level, self.buffer_text = level, ""

    def write(self, text: str) -> int:
        self.buffer_text += text
        while "\n" in self.buffer_text:
            line, self.buffer_text = self.buffer_text.split("\n", 1)
            if line.strip():
                log.log(self.level, "nnU-Net: %s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        pass


def _old_path_globals(values: dict[str, str]) -> list[tuple[object, str, object]]:
    """Point module-level copies of nnU-Net's folders at ``values`` (nnunetv2 < 2.8).

    nnunetv2 2.8 reads its folders from the environment when it uses them; earlier
    releases read them once, when ``nnunetv2.paths`` is imported, and their modules
    hold copies. Returns what was replaced, to put back.
    """
    paths = sys.modules.get("nnunetv2.paths")
    if paths is None or not isinstance(getattr(paths, "nnUNet_raw", None), (str, type(None))):
        return []
    replaced = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("nnunetv2") or module is None:
            continue
        for key in FOLDERS:
            if key in vars(module):
                replaced.append((module, key, vars(module)[key]))
                setattr(module, key, values[key])
    return replaced


def nnunet_folders(work_dir: Path) -> dict[str, Path]:
    """nnU-Net's three folders inside ``work_dir``."""
    return {key: Path(work_dir) / key for key in FOLDERS}


@contextlib.contextmanager
def training_environment(work_dir: Path, *, workers: int) -> Iterator[None]:
    """nnU-Net's variables set for the run (and restored after), its prints logged.

    ``workers``: nnU-Net's processes (``nnUNet_n_proc_DA``; :func:`train_fold` sets the
    data-augmentation processes itself). ``nnUNet_compile`` is ``false`` unless set.
    """
    values = {key: str(path) for key, path in nnunet_folders(work_dir).items()}
    for path in values.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    # nnU-Net's planner sets torch's threads to nnUNet_n_proc_DA: at least 1 there
    wanted = dict(values, nnUNet_n_proc_DA=str(max(1, int(workers))))
    wanted["nnUNet_compile"] = os.environ.get("nnUNet_compile", "false")
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    replaced = _old_path_globals(values)
    try:
        with (
            contextlib.redirect_stdout(_LogWriter()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for module, key, value in replaced:
            setattr(module, key, value)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def default_workers(device: str) -> int:
    """Data-augmentation processes: 1 on the CPU (training needs the cores), more on a GPU."""
    from metcli.core.threads import available_cpus

    return 1 if device == "cpu" else max(1, min(8, available_cpus() - 1))


# ----------------------------------------------------------------------------- planning
def plan_and_preprocess(dataset_id: int, configuration: str, *, processes: int) -> dict:
    """nnU-Net's fingerprint, plans and preprocessing of ``configuration``; its plans."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    extract_fingerprint_dataset(
        dataset_id,
        num_processes=processes,
        check_dataset_integrity=False,  # train-seg checked grids and labels itself
        clean=True,
        verbose=False,
        show_progress_bar=False,
    )
    plans, _identifier = plan_experiment_dataset(dataset_id)
    if configuration not in plans["configurations"]:
        raise UsageError(
            f"nnU-Net planned no {configuration} configuration for this dataset "
            f"(planned: {', '.join(plans['configurations'])})",
            fix="choose one of those with --configuration",
        )
    preprocess_dataset(
        dataset_id,
        NNUNET_PLANS,
        configurations=(configuration,),
        num_processes=(processes,),
        verbose=False,
        show_progress_bar=False,
    )
    return plans


def _resolved_configuration(plans: dict, configuration: str) -> dict:
    """A configuration of the plans with what it inherits filled in."""
    config = copy.deepcopy(plans["configurations"][configuration])
    parent = config.pop("inherits_from", None)
    if parent is not None:
        merged = _resolved_configuration(plans, parent)
        merged.update(config)
        return merged
    return config


def reduce_plans(preprocessed: Path, configuration: str, plan: PlanSettings) -> str:
    """Write ``plan.plans_name``.json (nnU-Net's plans with a smaller network); its name.

    The data identifier stays nnU-Net's, so the preprocessed data is reused. The
    patch is clipped to nnU-Net's own; the network pools by 2 along an axis while
    the patch stays divisible and at least 4 voxels; 3x3(x3) kernels throughout.
    """
    if plan.patch_size is None or plan.features_per_stage is None:
        return plan.plans_name
    plans = json.loads((preprocessed / f"{NNUNET_PLANS}.json").read_text(encoding="utf-8"))
    config = _resolved_configuration(plans, configuration)
    dims = len(config["patch_size"])
    wanted = list(plan.patch_size)[-dims:]
    patch = [min(int(w), int(p)) for w, p in zip(wanted, config["patch_size"])]
    n_stages = len(plan.features_per_stage)
    if n_stages < 3:  # nnU-Net's deep-supervision loss weights are 0/0 with one decoder stage
        raise UsageError(
            f"plan {plan.name!r} has {n_stages} stages; nnU-Net's training needs at least 3",
            fix="give features_per_stage at least three values",
        )
    strides, size = [[1] * dims], list(patch)
    for _ in range(n_stages - 1):
        step = [2 if s % 2 == 0 and s // 2 >= 4 else 1 for s in size]
        size = [s // k for s, k in zip(size, step)]
        strides.append(step)
    config.update({"patch_size": patch})
    if plan.batch_size is not None:
        config["batch_size"] = int(plan.batch_size)
    config["architecture"]["arch_kwargs"].update(
        {
            "n_stages": n_stages,
            "features_per_stage": list(plan.features_per_stage),
            "kernel_sizes": [[3] * dims] * n_stages,
            "strides": strides,
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        }
    )
    reduced = copy.deepcopy(plans)
    reduced["plans_name"] = plan.plans_name
    reduced["configurations"] = {configuration: config}
    path = preprocessed / f"{plan.plans_name}.json"
    path.write_text(json.dumps(reduced, indent=2) + "\n", encoding="utf-8")
    log.info(
        "plan %s: patch %s, features per stage %s, strides %s, batch %s, spacing %s mm",
        plan.name,
        patch,
        list(plan.features_per_stage),
        strides,
        config.get("batch_size"),
        config["spacing"],
    )
    return plan.plans_name


# ----------------------------------------------------------------------------- training
def trainer_class(plan: PlanSettings, on_epoch: Callable[[object], None] | None = None):
    """nnUNetTrainer with ``plan``'s schedule and no left-right mirroring."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainer_metcli(nnUNetTrainer):
        def __init__(
            self,
            plans: dict,
            configuration: str,
            fold: int,
            dataset_json: dict,
            device: torch.device = torch.device("cuda"),
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = plan.iterations_per_epoch
            self.num_val_iterations_per_epoch = plan.val_iterations
            self.num_epochs = plan.epochs
            self.initial_lr = plan.initial_lr
            self.oversample_foreground_percent = plan.oversample_foreground
            self.save_every = plan.save_every

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rotation, dummy_2d, initial_patch, mirror_axes = (
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            )
            dims = len(self.configuration_manager.patch_size)
            # the image's x axis in nnU-Net's array order (2D: the last of (y, x))
            left_right = list(self.plans_manager.transpose_forward).index(2) - (3 - dims)
            mirror_axes = tuple(a for a in (mirror_axes or ()) if a != left_right)
            self.inference_allowed_mirroring_axes = mirror_axes
            return rotation, dummy_2d, initial_patch, mirror_axes

        def on_epoch_end(self):
            super().on_epoch_end()
            if on_epoch is not None:
                on_epoch(self)

    nnUNetTrainer_metcli.__name__ = nnUNetTrainer_metcli.__qualname__ = TRAINER_NAME
    return nnUNetTrainer_metcli


def epoch_summary(trainer) -> dict:
    """The last finished epoch's figures from nnU-Net's logger."""
    logger = trainer.logger

    def last(key):
        try:
            return float(logger.get_value(key, step=-1))
        except (IndexError, KeyError, TypeError):
            return None

    try:
        dice = [float(d) for d in logger.get_value("dice_per_class_or_region", step=-1)]
    except (IndexError, KeyError, TypeError):
        dice = []
    start, end = last("epoch_start_timestamps"), last("epoch_end_timestamps")
    return {
        "epoch": int(trainer.current_epoch),  # epochs done
        "epochs": int(trainer.num_epochs),
        "train_loss": last("train_losses"),
        "val_loss": last("val_losses"),
        "pseudo_dice": dice,
        "seconds": None if start is None or end is None else end - start,
    }


def _check_resumable(latest: Path) -> None:
    """A checkpoint a killed run left must load weights-only before nnU-Net unpickles it."""
    from metcli.segmentation.checkpoints import load_checkpoint

    try:
        load_checkpoint(latest)
    except InputError as exc:
        raise InputError(
            f"cannot continue from it: {exc.what}",
            path=latest,
            fix="delete it (training then starts over), or run again with --overwrite",
        ) from None


def train_fold(
    preprocessed: Path,
    plans_name: str,
    configuration: str,
    fold: int | str,
    plan: PlanSettings,
    *,
    device: str,
    seed: int,
    workers: int = 1,
    on_epoch: Callable[[dict], None] | None = None,
) -> Path:
    """Train one fold with nnU-Net; the fold's output folder (``checkpoint_final.pth``).

    ``workers``: data-augmentation processes (0: augmentation runs in this process);
    call it inside :func:`training_environment`, which restores the variable. A fold
    that finished is not trained again; one a killed run left with a
    ``checkpoint_latest.pth`` continues from it.
    """
    import random

    import numpy as np
    import torch

    plans = json.loads((preprocessed / f"{plans_name}.json").read_text(encoding="utf-8"))
    plans["continue_training"] = True  # nnunetv2 2.8's trainer pops it (its logger's resume)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text(encoding="utf-8"))
    os.environ["nnUNet_n_proc_DA"] = str(int(workers))
    callback = None if on_epoch is None else (lambda trainer: on_epoch(epoch_summary(trainer)))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    trainer = trainer_class(plan, callback)(
        plans=plans,
        configuration=configuration,
        fold=fold,
        dataset_json=dataset_json,
        device=torch.device(device),
    )
    out = Path(trainer.output_folder)
    if (out / "checkpoint_final.pth").is_file():
        log.info("fold %s: training already finished", fold)
        return out
    latest = out / "checkpoint_latest.pth"
    if latest.is_file():
        _check_resumable(latest)
        trainer.load_checkpoint(str(latest))  # checked above: it loads weights-only
        log.warning("fold %s: continuing from epoch %d", fold, trainer.current_epoch)
    trainer.run_training()
    return out
