"""train-cnn's optimiser and learning-rate schedule (``--optimizer``, ``--momentum``,
``--weight-decay``, ``--warmup-epochs``, ``--lr-step``, ``--lr-gamma``).

The default (:class:`OptimSettings` as it is) is the study's: Adam at ``--lr``, no weight
decay, a constant learning rate; :func:`make_optimiser` then builds exactly the Adam the
training loop always built, so default runs are unchanged. ``sgd`` is SGD with momentum
(0.9 by default). The schedule (:func:`make_schedule`, PyTorch's
``torch.optim.lr_scheduler``, stepped once after every epoch) gives epoch ``e`` (1, 2,
...) the learning rate

    lr * w(e) * gamma ** floor((e - 1) / step)

where ``w(e) = e / (W + 1)`` for the ``W`` warm-up epochs (``e <= W``), 1 after them (a
linear warm-up that reaches ``lr`` in epoch ``W + 1``), and the step decay is absent
without ``--lr-step``. The schedule's state is part of the resume state.
"""

from __future__ import annotations

from dataclasses import dataclass

from metcli.core.errors import UsageError

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OptimSettings:
    """The optimiser and its schedule (see the module docstring); checked on creation."""

    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    lr_step: int | None = None
    lr_gamma: float = 0.1

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(
                f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
                fix="give --optimizer adam or --optimizer sgd",
            )
        if not 0.0 <= self.momentum < 1.0:
            raise UsageError(
                f"--momentum must be in [0, 1), got {self.momentum}", fix="give for example 0.9"
            )
        if not self.weight_decay >= 0.0:
            raise UsageError(
                f"--weight-decay must be 0 or more, got {self.weight_decay}",
                fix="give for example 0.0001, or 0 for none",
            )
        if int(self.warmup_epochs) != self.warmup_epochs or self.warmup_epochs < 0:
            raise UsageError(
                f"--warmup-epochs must be a whole number of 0 or more, got {self.warmup_epochs}",
                fix="give for example --warmup-epochs 5, or 0 for none",
            )
        if self.lr_step is not None and (int(self.lr_step) != self.lr_step or self.lr_step < 1):
            raise UsageError(
                f"--lr-step must be a whole number of epochs of at least 1, got {self.lr_step}",
                fix="give for example --lr-step 10, or leave it out for a constant rate",
            )
        if not 0.0 < self.lr_gamma <= 1.0:
            raise UsageError(
                f"--lr-gamma must be in (0, 1], got {self.lr_gamma}", fix="give for example 0.1"
            )
        if self.optimizer == "adam" and self.momentum != 0.9:
            raise UsageError(
                "--momentum is SGD's; Adam has none",
                fix="give --optimizer sgd, or leave --momentum out",
            )

    @property
    def is_default(self) -> bool:
        """Whether these are the study's settings (Adam, constant rate, no weight decay)."""
        return self == OptimSettings()

    def as_dict(self) -> dict:
        """What the settings record and the card keep."""
        return {
            "optimizer": self.optimizer,
            "momentum": self.momentum if self.optimizer == "sgd" else None,
            "weight_decay": self.weight_decay,
            "warmup_epochs": int(self.warmup_epochs),
            "lr_step": None if self.lr_step is None else int(self.lr_step),
            "lr_gamma": self.lr_gamma if self.lr_step is not None else None,
            "schedule": "lr * min(1, e / (warmup + 1)) * gamma ** floor((e - 1) / step) "
            "for epoch e = 1, 2, ... (torch.optim.lr_scheduler LinearLR and StepLR, "
            "stepped after each epoch)",
        }


def make_optimiser(model, lr: float, settings: OptimSettings | None = None):
    """The optimiser of ``model``'s parameters (None: the study's Adam)."""
    import torch

    s = settings or OptimSettings()
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay
        )
    if s.weight_decay:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=s.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=lr)


def make_schedule(optimiser, settings: OptimSettings | None = None):
    """The learning-rate schedule (stepped after every epoch), or None for a constant rate.

    On creation it sets the first epoch's rate; each ``step()`` sets the next epoch's.
    """
    from torch.optim import lr_scheduler

    s = settings or OptimSettings()
    parts = []
    if s.warmup_epochs:
        warmup = int(s.warmup_epochs)
        parts.append(
            lr_scheduler.LinearLR(
                optimiser, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup
            )
        )
    if s.lr_step is not None:
        parts.append(lr_scheduler.StepLR(optimiser, step_size=int(s.lr_step), gamma=s.lr_gamma))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else lr_scheduler.ChainedScheduler(parts, optimiser)


@dataclass(frozen=True)
class Recipe:
    """What the training loop builds otherwise than the study's defaults: the optimiser
    and schedule, the augmentation (:class:`metcli.cnn.augment.AugmentSettings`) and the
    weights to start from (:class:`metcli.cnn.pretrained.PretrainedFile`, None: random)."""

    optim: OptimSettings = OptimSettings()
    augment: object = None
    pretrained: object = None


# ----------------------------------------------------------------------------- the run's recipe
def resolve_recipe(options) -> Recipe:
    """The :class:`Recipe` of train-cnn's options (a
    :class:`~metcli.cnn.options.CnnOptions`), checked: the optimiser and schedule, the
    augmentation, and ``--pretrained`` resolved to a checked file."""
    from metcli.cnn.augment import AugmentSettings
    from metcli.cnn.pretrained import PretrainedFile, resolve_pretrained

    o = options
    optim = OptimSettings(
        optimizer=o.optimizer,
        momentum=float(o.momentum),
        weight_decay=float(o.weight_decay),
        warmup_epochs=int(o.warmup_epochs),
        lr_step=None if o.lr_step is None else int(o.lr_step),
        lr_gamma=float(o.lr_gamma),
    )
    flips = o.flip
    if isinstance(flips, str):
        flips = [] if flips.strip() == "none" else [f.strip() for f in flips.split(",") if f]
    augment = AugmentSettings(
        preset=o.augment,
        flips=None if flips is None else tuple(flips),
        rotate=None if o.rotate is None else float(o.rotate),
    )
    if augment.preset == "flip-rotate" and o.dims != 2:
        raise UsageError(
            "--augment flip-rotate is for 2D slices", fix="use --dims 2, or --augment affine"
        )
    pretrained = o.pretrained
    if pretrained is not None and not isinstance(pretrained, PretrainedFile):
        pretrained = resolve_pretrained(pretrained)
    return Recipe(optim, augment, pretrained)


def recipe_record(recipe: Recipe, default_augmentation: str) -> dict:
    """The settings record's ``augmentation`` and, when not the defaults, ``optimiser``
    and ``pretrained`` (default runs record what they always did)."""
    augmentation = recipe.augment.record() if recipe.augment is not None else None
    out = {"augmentation": default_augmentation if augmentation is None else augmentation}
    if not recipe.optim.is_default:
        out["optimiser"] = recipe.optim.as_dict()
    if recipe.pretrained is not None:
        out["pretrained"] = recipe.pretrained.record()
    return out


def start_recipe(model, settings, dims: int, size: int, default_augmenter):
    """The training loop's start (:func:`metcli.cnn.fit.fit`): ``settings.recipe``'s
    weights loaded into ``model``, then (optimiser, schedule or None, augmenter).

    The schedule's state travels inside the optimiser's ``state_dict`` (the resume
    state), so an interrupted run resumes at the right learning rate."""
    from metcli.cnn.augment import build_augmenter
    from metcli.cnn.pretrained import initialise

    recipe = getattr(settings, "recipe", None) or Recipe()
    initialise(model, recipe.pretrained)
    optimiser = make_optimiser(model, settings.lr, recipe.optim)
    schedule = make_schedule(optimiser, recipe.optim)
    if schedule is not None:
        _keep_schedule_state(optimiser, schedule)
    augment = build_augmenter(recipe.augment, settings.seed, dims, size, default_augmenter)
    return optimiser, schedule, augment


SCHEDULE_KEY = "metcli_schedule"


def _keep_schedule_state(optimiser, schedule) -> None:
    """Save ``schedule``'s state with the optimiser's and load it back with it."""

    def save(_optimiser, state: dict) -> dict:
        state[SCHEDULE_KEY] = schedule.state_dict()
        return state

    def load(_optimiser, state: dict) -> dict:
        state = dict(state)
        saved = state.pop(SCHEDULE_KEY, None)
        if saved is not None:
            schedule.load_state_dict(saved)
        return state

    optimiser.register_state_dict_post_hook(save)
    optimiser.register_load_state_dict_pre_hook(load)
