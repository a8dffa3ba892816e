"""train-cnn's training loop: one network trained for some epochs, resumable.

:func:`fit` trains a network of the registry :mod:`metcli.cnn.networks` (2D or
3D, any number of input channels)
with class-weighted cross-entropy, MONAI's ``RandAffine`` augmentation and
Adam, validates it after every epoch, keeps the best epoch's weights (lowest
validation loss, or highest validation AUC) and stops early after
``patience`` epochs without improvement. After every epoch it writes a resume
state atomically (model, optimiser, mixed-precision scaler, epoch, best
weights and score, log rows, and the random states of batch order,
augmentation and PyTorch; :mod:`metcli.cnn.resume`), so that a run
interrupted after epoch k and resumed gives the same weights, bit for bit on
the CPU, as a run that was never interrupted. The state is read back with
``torch.load(..., weights_only=True)``: it holds tensors and plain Python
values only.

:func:`metcli.cnn.cross_validation.choose_epochs` runs :func:`fit` on K folds
of the training patients to choose a number of epochs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metcli.cnn.data import Sample, stack, stack_covariates
from metcli.cnn.networks import build_network
from metcli.cnn.optim import start_recipe
from metcli.cnn.resume import (
    STATE_FORMAT,
    load_state,
    random_states,
    restore_random_states,
    save_state,
)
from metcli.core.errors import OutputError, UsageError

log = logging.getLogger(__name__)

MONITORS = ("loss", "auc")
THRESHOLD = 0.5
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "val_accuracy", "best"]


@dataclass(frozen=True)
class FitSettings:
    """What :func:`fit` needs besides the data (all checked by train-cnn first).

    ``monitor``: ``loss`` (lowest validation loss) or ``auc`` (highest
    lesion-level validation AUC, ties broken by the lower loss) picks the best
    epoch; ``patience``: stop after that many epochs without a better one
    (None: train every epoch); ``keep_last``: keep the last epoch's weights
    instead of the best (the fixed number of epochs chosen by CV).
    """

    arch: str
    n_classes: int
    epochs: int
    batch_size: int
    lr: float
    device: str = "cpu"
    seed: int = 0
    amp: bool = False
    monitor: str = "loss"
    patience: int | None = None
    keep_last: bool = False
    network: dict | None = None  #: the architecture's own options (the card's ``network``)
    recipe: Any = None  #: optimiser, schedule, augmentation, weights (metcli.cnn.optim.Recipe)


@dataclass
class FitResult:
    """The kept weights, the last epoch's weights and the training log."""

    kept_state: dict
    last_state: dict
    rows: list[dict]
    seconds_per_epoch: float
    kept_epoch: int
    stopped_early: bool = False


# ----------------------------------------------------------------------------- augmentation
def augmenter(seed: int, dims: int, size: int):
    """MONAI ``RandAffine``: p 0.9, rotation up to 15 degrees (about each axis in 3D),
    shear 0.1, shift up to 10 % of the side, zoom up to 10 %, black padding."""
    from monai.transforms import RandAffine

    angle = np.pi / 12
    augment = RandAffine(
        prob=0.9,
        rotate_range=(angle,) * (1 if dims == 2 else 3),
        shear_range=(0.1,) * (2 if dims == 2 else 6),
        translate_range=(0.1 * size,) * dims,
        scale_range=(0.1,) * dims,
        padding_mode="zeros",
        mode="bilinear",
    )
    augment.set_random_state(seed=seed)
    return augment


# ----------------------------------------------------------------------------- inference
def _autocast(device: str, amp: bool):
    import torch

    return torch.autocast(
        device_type=device, dtype=torch.float16 if device == "cuda" else torch.bfloat16, enabled=amp
    )


def forward(model, images, covariates, device: str):
    """The network's logits of a batch (numpy arrays; ``covariates`` None without any)."""
    import torch

    x = torch.from_numpy(images).to(device)
    if covariates is None:
        return model(x)
    return model(x, torch.from_numpy(covariates).to(device))


def slice_probabilities(
    model,
    images: np.ndarray,
    device: str,
    batch_size: int,
    amp: bool = False,
    covariates: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax probabilities of each input row (a slice, or a volume in 3D); ``covariates``:
    the rows' clinical inputs, for a network that takes them."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            with _autocast(device, amp):
                logits = forward(
                    model, images[part], None if covariates is None else covariates[part], device
                )
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def lesion_probabilities(slice_probs: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Mean probability of each lesion's inputs (rows in sample order)."""
    return np.stack([slice_probs[owner == i].mean(axis=0) for i in range(n)])


def auc_score(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> float | None:
    """Lesion-level AUC (one-vs-rest for several classes); None when a class is absent."""
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < n_classes:
        return None
    if n_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr"))


# ----------------------------------------------------------------------------- best epoch
class Monitor:
    """Which epoch is best so far by the monitored metric, and when to stop early.

    ``loss``: lower validation loss is better. ``auc``: higher validation AUC
    is better, an equal AUC with a lower loss too; an epoch without an AUC is
    never better. ``patience`` epochs in a row without a better one stop the run.
    """

    def __init__(self, kind: str, patience: int | None):
        if kind not in MONITORS:
            raise UsageError(f"--monitor must be one of {', '.join(MONITORS)}, got {kind!r}")
        self.kind, self.patience = kind, patience
        self.best: tuple | None = None
        self.best_epoch = 0
        self.since_best = 0

    def score(self, loss: float, auc: float | None) -> tuple | None:
        if not np.isfinite(loss) or (self.kind == "auc" and auc is None):
            return None
        return (-loss,) if self.kind == "loss" else (auc, -loss)

    def update(self, epoch: int, loss: float, auc: float | None) -> bool:
        """Record an epoch; True when it is the best so far."""
        score = self.score(loss, auc)
        if score is not None and (self.best is None or score > self.best):
            self.best, self.best_epoch, self.since_best = score, epoch, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state(self) -> dict:
        return {
            "best": None if self.best is None else [float(v) for v in self.best],
            "best_epoch": self.best_epoch,
            "since_best": self.since_best,
        }

    def load(self, state: dict) -> None:
        self.best = None if state["best"] is None else tuple(state["best"])
        self.best_epoch, self.since_best = int(state["best_epoch"]), int(state["since_best"])


def _clone(state_dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state_dict.items()}


# ----------------------------------------------------------------------------- the loop
@dataclass
class _Training:
    """One run of :func:`fit`: the network, its optimiser, the data and the random states."""

    settings: FitSettings
    model: Any
    loss_fn: Any
    optimiser: Any
    scaler: Any
    augment: Any
    rng: np.random.Generator
    monitor: Monitor
    images: np.ndarray
    labels: np.ndarray
    val: Sequence[Sample]
    val_inputs: tuple | None  #: (images, labels, owner) of the validation inputs
    label: str = ""
    covariates: np.ndarray | None = None  #: the training inputs' clinical values
    val_covariates: np.ndarray | None = None
    schedule: Any = None  #: the learning-rate schedule, stepped after each epoch (or None)

    def train_epoch(self) -> float:
        """One pass over the training inputs in a random order; the mean loss."""
        import torch

        s, images, labels = self.settings, self.images, self.labels
        spatial = images.shape[2:]
        self.model.train()
        order = self.rng.permutation(len(images))
        total = 0.0
        for start in range(0, len(order), s.batch_size):
            idx = order[start : start + s.batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # batch norm needs two samples; the input comes back next epoch
            batch = np.stack(
                [np.asarray(self.augment(images[i], spatial_size=spatial)) for i in idx]
            ).astype(np.float32)
            y = torch.from_numpy(labels[idx]).to(s.device)
            self.optimiser.zero_grad()
            with _autocast(s.device, s.amp):
                extra = None if self.covariates is None else self.covariates[idx]
                logits = forward(self.model, batch, extra, s.device)
            loss = self.loss_fn(logits.float(), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimiser)
            self.scaler.update()
            total += float(loss.item()) * len(idx)
        if self.schedule is not None:
            self.schedule.step()  # the next epoch's learning rate
        return total / len(images)

    def validate(self, row: dict) -> tuple[float, float | None]:
        """Validation loss, lesion AUC and accuracy into ``row``; (loss, AUC)."""
        import torch

        s = self.settings
        val_images, val_labels, val_owner = self.val_inputs
        val_lesion_labels = np.array([v.label for v in self.val])
        probs = slice_probabilities(
            self.model, val_images, s.device, s.batch_size, s.amp, self.val_covariates
        )
        with torch.no_grad():
            val_loss = float(
                self.loss_fn(
                    torch.log(torch.from_numpy(probs).clamp_min(1e-12)).to(s.device),
                    torch.from_numpy(val_labels).to(s.device),
                ).item()
            )
        lesion = lesion_probabilities(probs, val_owner, len(self.val))
        predicted = np.array(
            [int(np.argmax(p)) if s.n_classes > 2 else int(p[1] >= THRESHOLD) for p in lesion]
        )
        auc = auc_score(val_lesion_labels, lesion, s.n_classes)
        row.update(
            val_loss=round(val_loss, 6),
            val_auc=None if auc is None else round(auc, 6),
            val_accuracy=round(float(np.mean(predicted == val_lesion_labels)), 6),
        )
        return val_loss, auc

    def state(
        self, *, fingerprint: str, epoch: int, finished: bool, kept, rows: list, times: list
    ) -> dict:
        """The resume state after ``epoch`` (see :func:`save_state`)."""
        return {
            "format": STATE_FORMAT,
            "fingerprint": fingerprint,
            "epoch": epoch,
            "finished": finished,
            "model": self.model.state_dict(),
            "optimizer": self.optimiser.state_dict(),
            "scaler": self.scaler.state_dict(),
            "kept": kept,
            "rows": rows,
            "times": times,
            "monitor": self.monitor.state(),
            "random": random_states(self.rng, self.augment, self.settings.device),
        }

    def restore(self, state: dict) -> tuple:
        """Load a resume state; (kept, rows, times, first epoch, finished)."""
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.monitor.load(state["monitor"])
        restore_random_states(state["random"], self.rng, self.augment, self.settings.device)
        log.info(
            "%sresuming after epoch %d", f"{self.label}: " if self.label else "", state["epoch"]
        )
        return (
            state["kept"],
            list(state["rows"]),
            list(state["times"]),
            int(state["epoch"]) + 1,
            bool(state["finished"]),
        )


def _start(train: Sequence[Sample], val: Sequence[Sample], s: FitSettings, label: str) -> _Training:
    """The network (seeded), loss, optimiser, augmentation and random generator of a run."""
    import torch

    spatial = train[0].images.shape[2:]
    dims, channels = len(spatial), int(train[0].images.shape[1])
    torch.manual_seed(s.seed)
    if s.device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_network(
        s.arch, s.n_classes, dims=dims, in_channels=channels, options=s.network
    ).to(s.device)
    images, labels, _ = stack(train)
    val_inputs = stack(val) if val else None
    if not val and not s.keep_last:
        raise UsageError(
            "no validation lesions to choose the best epoch on",
            fix="give validation patients, or --cv-folds",
        )
    counts = np.bincount(labels, minlength=s.n_classes).astype(float)
    weights = counts.sum() / (s.n_classes * np.maximum(counts, 1.0))
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=s.device)
    )
    optimiser, schedule, augment = start_recipe(model, s, dims, int(spatial[0]), augmenter)
    scaler = torch.amp.GradScaler(s.device, enabled=s.amp and s.device == "cuda")
    return _Training(
        s,
        model,
        loss_fn,
        optimiser,
        scaler,
        augment,
        np.random.default_rng(s.seed),
        Monitor(s.monitor, s.patience),
        images,
        labels,
        val,
        val_inputs,
        label,
        stack_covariates(train),
        stack_covariates(val) if val else None,
        schedule=schedule,
    )


def fit(
    train: Sequence[Sample],
    val: Sequence[Sample],
    settings: FitSettings,
    *,
    state_path: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    label: str = "",
    progress: Callable[[str, str], None] | None = None,
) -> FitResult:
    """Train one network; see the module docstring.

    Args:
        train, val: the samples (``val`` may be empty with ``keep_last``).
        state_path: where the resume state is written after every epoch.
        resume: continue from ``state_path`` when it exists (it must carry
            ``fingerprint``, which names the run's inputs and settings).
        label: a prefix for the progress names (``fold 1``).
        progress: called with (``epoch N``, a status with the losses and AUC)
            after each epoch, once its resume state is written.
    """
    s = settings
    run = _start(train, val, s, label)
    prefix = f"{label}: " if label else ""
    kept, rows, times, first, finished = None, [], [], 1, False
    if resume and state_path is not None and Path(state_path).is_file():
        kept, rows, times, first, finished = run.restore(load_state(state_path, fingerprint))
    elif resume and state_path is not None:
        log.info("no resume state at %s; starting at epoch 1", Path(state_path).name)
    last_epoch = first - 1
    for epoch in range(first, s.epochs + 1):
        if finished:
            break
        row, val_loss, auc, finished, kept, seconds = _epoch(run, epoch, kept)
        rows.append(row)
        times.append(seconds)
        last_epoch = epoch
        if state_path is not None:
            save_state(
                Path(state_path),
                run.state(
                    fingerprint=fingerprint,
                    epoch=epoch,
                    finished=finished,
                    kept=kept,
                    rows=rows,
                    times=times,
                ),
            )
        log.info(
            "%sepoch %d: train loss %.4f, val loss %s",
            prefix,
            epoch,
            row["train_loss"],
            row["val_loss"],
        )
        if progress:
            progress(f"{label} epoch {epoch}".strip(), _status(row, val_loss, auc, bool(val)))
    return _result(run, kept, rows, times, ran=last_epoch >= first, prefix=prefix)


def _epoch(run: _Training, epoch: int, kept):
    """Train and validate one epoch: (its log row, validation loss, AUC, whether the run is
    finished, the kept weights, the seconds it took)."""
    s, monitor = run.settings, run.monitor
    started = time.perf_counter()
    row = {
        "epoch": epoch,
        "train_loss": round(run.train_epoch(), 6),
        "val_loss": None,
        "val_auc": None,
        "val_accuracy": None,
    }
    val_loss, auc = run.validate(row) if run.val else (float("nan"), None)
    improved = monitor.update(epoch, val_loss, auc) if run.val else False
    finished = epoch == s.epochs or (not s.keep_last and monitor.should_stop)
    row["best"] = (epoch == s.epochs) if s.keep_last else improved
    if row["best"]:
        kept = _clone(run.model.state_dict())
    return row, val_loss, auc, finished, kept, time.perf_counter() - started


def _result(run: _Training, kept, rows: list, times: list, *, ran: bool, prefix: str) -> FitResult:
    """The run's :class:`FitResult`; an error when no epoch was ever kept."""
    s = run.settings
    if kept is None:
        raise OutputError(
            "the validation loss was never finite; no checkpoint to keep",
            fix="lower --lr or check the input images",
        )
    stopped = not s.keep_last and run.monitor.should_stop and len(rows) < s.epochs
    if stopped and ran:
        log.info(
            "%sstopped early after epoch %d: no better %s for %d epochs",
            prefix,
            rows[-1]["epoch"],
            s.monitor,
            s.patience,
        )
    kept_epoch = max(r["epoch"] for r in rows if r["best"])
    return FitResult(
        kept, _clone(run.model.state_dict()), rows, float(np.mean(times)), kept_epoch, stopped
    )


def _status(row: dict, val_loss: float, auc: float | None, has_val: bool) -> str:
    """The progress status of an epoch: its losses and AUC."""
    status = f"train loss {row['train_loss']:.3f}"
    if has_val:
        status += f", val loss {val_loss:.3f}" + ("" if auc is None else f", AUC {auc:.3f}")
    return status
