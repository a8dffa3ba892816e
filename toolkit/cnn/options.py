"""train-cnn's options: what they are, which ones are refused, and the settings they make.

:class:`CnnOptions` holds the options of :func:`metcli.cnn.train_cnn.train_cnn`
(the command's, documented in docs/train-cnn.md) with their defaults;
:func:`resolve_options` checks them (:func:`check_options`, the devices, the
threads) and completes them (the default ``size``, the parsed ``phases``, the
torch device); :func:`settings_record` is what the run records and what its
skip rule compares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from metcli.cnn.data import parse_phases
from metcli.cnn.fit import MONITORS, THRESHOLD
from metcli.cnn.networks import get_architecture
from metcli.cnn.optim import recipe_record, resolve_recipe
from metcli.core.errors import UsageError

DEFAULT_SIZE = {2: 224, 3: 64}
AUGMENTATION = (
    "monai RandAffine (p 0.9): rotation up to 15 deg, shear 0.1, shift up to 10% "
    "of the side, zoom up to 10%, black padding"
)


@dataclass(frozen=True)
class CnnOptions:
    """The options of a train-cnn run, with their defaults (see docs/train-cnn.md).

    ``labels`` are read from ``label_column`` (``positive_class``: the positive
    class of a binary model); ``arch``, ``dims`` (2: every axial slice of a
    lesion, 3: one cube) and ``phases`` (contrast phases stacked as channels;
    None: the lesion map's CT) make the network's input; ``window`` (width,
    level in HU), ``size`` (None: 224 in 2D, 64 in 3D), ``fov_mm`` and
    ``context_mm`` its preprocessing; ``epochs``, ``batch_size``, ``lr``,
    ``patience``, ``monitor`` and ``cv_folds`` the training; ``val_patients``,
    ``test_patients`` and ``split`` (a split file) who is trained, validated and
    tested; ``device`` (``auto``, ``cpu``, ``cuda``), ``amp`` and ``seed`` how.
    """

    label_column: str = "primary"
    positive_class: str | None = None
    arch: str = "densenet121"
    dims: int = 2
    phases: str | Sequence[str] | None = None
    window: tuple[float, float] = (330.0, 10.0)
    size: int | None = None
    fov_mm: float | None = None
    context_mm: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    val_patients: int = 5
    test_patients: int | None = None
    split: Path | None = None
    cv_folds: int | None = None
    patience: int | None = None
    monitor: str = "loss"
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    register: str = "none"
    intensity: Sequence[str] = ()
    n4: Sequence[str] = ()
    # transfer learning and training recipe (metcli.cnn.optim, augment, pretrained)
    pretrained: object = None  #: a manifest name or a file (str), a PretrainedFile once resolved
    resize: str | None = None  #: 2D slices: bilinear or bicubic (None: the architecture's)
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    lr_step: int | None = None
    lr_gamma: float = 0.1
    augment: str = "affine"
    flip: str | Sequence[str] | None = None
    rotate: float | None = None
    decision: str = "argmax"  #: 3+ classes: argmax or best-f1 (cut-offs on validation)
    seg: Path | None = None  #: segmentations (dseg) for the liver region (``--arch almss``)
    covariates: str | Sequence[str] = ()  #: participants.tsv columns fed to the network
    liver_branch: bool = True  #: ``almss``: the liver branch (the study's ablation: off)
    shared_backbone: bool = False  #: ``almss``: one backbone for every phase
    hierarchy: Path | None = None  #: a hierarchy file: step 1 groups, step 2 within each


def check_options(
    *,
    arch: str,
    size: int,
    epochs: int,
    batch_size: int,
    lr: float,
    val_patients: int,
    test_patients: int | None,
    device: str,
    dims: int = 2,
    cv_folds: int | None = None,
    patience: int | None = None,
    monitor: str = "loss",
) -> None:
    """Refuse options train-cnn cannot run with (a :class:`UsageError` naming the option)."""
    min_size = get_architecture(arch).min_size
    if dims not in (2, 3):
        raise UsageError(f"--dims must be 2 or 3, got {dims!r}")
    if dims not in get_architecture(arch).dims:
        raise UsageError(
            f"--arch {arch} is a {' or '.join(map(str, get_architecture(arch).dims))}D network; "
            f"--dims {dims} is not possible",
            fix="leave --dims out, or choose another --arch",
        )
    if size < min_size:
        raise UsageError(
            f"--size {size} is too small for {arch}, which needs at least {min_size} pixels",
            fix=f"give --size {min_size} or more",
        )
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        if int(value) < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    if monitor not in MONITORS:
        raise UsageError(f"--monitor must be one of {', '.join(MONITORS)}, got {monitor!r}")
    if patience is not None and patience < 1:
        raise UsageError(f"--patience must be at least 1, got {patience}")
    if cv_folds is not None:
        if cv_folds < 2:
            raise UsageError(f"--cv-folds must be at least 2, got {cv_folds}")
        if patience is not None:
            raise UsageError(
                "--patience and --cv-folds are alternatives: cross-validation "
                "chooses a fixed number of epochs",
                fix="give one of them",
            )
    if val_patients < (0 if cv_folds else 1):
        raise UsageError(
            f"--val-patients must be at least 1, got {val_patients}",
            fix="the best epoch is chosen on the validation patients; with "
            "--cv-folds, 0 is allowed",
        )
    if test_patients is not None and test_patients < 0:
        raise UsageError(f"--test-patients must be 0 or more, got {test_patients}")
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")


def require_libraries() -> None:
    """torch and MONAI are optional (the ``cnn`` extra): a clear error when missing."""
    from importlib.util import find_spec

    missing = [name for name in ("torch", "monai") if find_spec(name) is None]
    if missing:
        raise UsageError(
            f"train-cnn needs {' and '.join(missing)}, which is not installed",
            fix="pip install 'metcli[cnn]' (torch and monai)",
        )


def input_spec(
    *,
    dims: int,
    phases: list[str] | None,
    size: int,
    slice_settings,
    register: str = "none",
    intensity: Sequence[str] = (),
    n4: Sequence[str] = (),
) -> dict:
    """The card's ``dims``, ``phases``, ``input`` and ``preprocessing``, for model_inputs.

    ``register``: how channels are aligned to the reference (the first); ``intensity``:
    ``CHANNEL=hu|zscore[:LOWER,UPPER]`` rules beside each kind's default; ``n4``: the MR
    channels to correct for the bias field first."""
    from metcli.lesions import volumes as lesion_volumes

    preprocessing = slice_settings.as_dict()
    if dims == 3:
        preprocessing["preprocessing_version"] = lesion_volumes.PREPROCESSING_VERSION
    channels = list(phases) if phases else ["ct"]
    from metcli.imaging.intensity import parse_intensity
    from metcli.lesions.channel_inputs import CHANNEL_GRIDS, REGISTRATIONS, default_intensities

    if register not in REGISTRATIONS or (register != "none" and len(channels) < 2):
        raise UsageError(
            f"--register {register} needs one of {', '.join(REGISTRATIONS)} and two channels "
            "or more",
            fix="give --phases with the reference channel first, or leave --register out",
        )
    overrides = dict(parse_intensity(text) for text in intensity)
    preprocessing["channel_intensity"] = default_intensities(channels, overrides, list(n4))
    preprocessing["channel_grids"] = CHANNEL_GRIDS
    preprocessing["channel_registration"] = register
    return {
        "dims": dims,
        "phases": list(phases) if phases else None,
        "input": {
            "name": "image",
            "shape": ["batch", len(channels)] + [size] * dims,
            "dtype": "float32",
            "channels": channels,
        },
        "preprocessing": preprocessing,
    }


def resolve_options(options: CnnOptions, *, threads: int | None) -> tuple[CnnOptions, dict]:
    """The options checked and completed (``size``, parsed ``phases``, the torch device),
    and :func:`input_spec` of them."""
    from metcli.core.devices import torch_device
    from metcli.core.threads import check_threads
    from metcli.lesions.preprocess import SliceSettings

    o = options
    if o.arch == "almss":
        o = replace(o, dims=3)  # a 3D network only
    arch = get_architecture(o.arch)
    default_size = arch.default_size if o.dims == 2 and arch.default_size else None
    size = (default_size or DEFAULT_SIZE.get(o.dims, 224)) if o.size is None else int(o.size)
    check_options(
        arch=o.arch,
        size=size,
        epochs=o.epochs,
        batch_size=o.batch_size,
        lr=o.lr,
        val_patients=o.val_patients,
        test_patients=o.test_patients,
        device=o.device,
        dims=o.dims,
        cv_folds=o.cv_folds,
        patience=o.patience,
        monitor=o.monitor,
    )
    if o.split is not None and o.test_patients is not None:
        raise UsageError("give --test-patients or --split, not both")
    check_threads(threads)
    o = replace(o, pretrained=resolve_recipe(o).pretrained)  # checks the recipe's options
    resize = o.resize or (arch.resize if o.dims == 2 else "bilinear")
    if o.dims == 3 and resize != "bilinear":
        raise UsageError("--resize bicubic is for 2D slices", fix="leave --resize out in 3D")
    if o.decision not in ("argmax", "best-f1"):
        raise UsageError(
            f"decision {o.decision!r} is not argmax or best-f1",
            fix="give --decision argmax or --decision best-f1",
        )
    phases = parse_phases(o.phases)
    device = torch_device(o.device, amp=o.amp)
    slice_settings = SliceSettings(
        window_width=float(o.window[0]),
        window_level=float(o.window[1]),
        size=size,
        context_mm=float(o.context_mm),
        fov_mm=o.fov_mm,
        resize=resize,
    )
    spec = input_spec(
        dims=o.dims,
        phases=phases,
        size=size,
        slice_settings=slice_settings,
        register=o.register,
        intensity=tuple(o.intensity or ()),
        n4=tuple(o.n4 or ()),
    )
    covariates = _check_almss(o)
    if o.arch == "almss" and o.liver_branch:
        spec["input"]["regions"] = ["tumour", "liver"]
        spec["input"]["shape"][1] *= 2
    return replace(o, size=size, phases=phases, device=device, covariates=covariates), spec


def _check_almss(o: CnnOptions) -> list[str]:
    """The covariate columns; refuses the ``almss`` options with another network."""
    from metcli.cnn.clinical import parse_covariates

    covariates = parse_covariates(o.covariates)
    if o.arch != "almss":
        if covariates or o.seg is not None or not o.liver_branch or o.shared_backbone:
            raise UsageError(
                "--covariates, --seg, --no-liver-branch and --shared-backbone are options "
                f"of --arch almss, not of {o.arch}",
                fix="give --arch almss, or leave these options out",
            )
    elif o.liver_branch and o.seg is None:
        raise UsageError(
            "--arch almss sees the liver of each phase: it needs the segmentations",
            fix="give --seg SEG_DIR (metcli segment's output), or --no-liver-branch",
        )
    return covariates


def settings_record(options: CnnOptions, classes: list[str], spec: dict) -> dict:
    """Everything that changes the model (recorded, hashed, compared by the skip rule)."""
    o = options
    return {
        "arch": o.arch,
        "label_column": o.label_column,
        "classes": classes,
        "dims": o.dims,
        "phases": o.phases,
        "preprocessing": spec["preprocessing"],
        "epochs": o.epochs,
        "batch_size": o.batch_size,
        "lr": o.lr,
        "val_patients": o.val_patients,
        "test_patients": o.test_patients,
        "cv_folds": o.cv_folds,
        "patience": o.patience,
        "monitor": o.monitor,
        "amp": o.amp,
        "seed": o.seed,
        "device": o.device,
        **recipe_record(resolve_recipe(o), AUGMENTATION),
        **(
            {
                "covariates": list(o.covariates),
                "liver_branch": o.liver_branch,
                "shared_backbone": o.shared_backbone,
            }
            if o.arch == "almss"
            else {}
        ),
        "threshold": THRESHOLD,
        **({"decision": o.decision} if o.decision != "argmax" else {}),
        "lesion_aggregate": "mean",
        "patient_aggregate": "mean",
    }
