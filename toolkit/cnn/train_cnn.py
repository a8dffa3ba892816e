"""``train-cnn``: the study's lesion-slice CNN (MONAI), exported to ONNX with a model card.

Pipeline (:func:`train_cnn`):

* Every kept lesion (split-lesions' table) of every participant with a label
  gives its network inputs (:mod:`metcli.cnn.data`, with
  :func:`metcli.lesions.inputs.model_inputs`): its preprocessed axial slices
  (``dims=2``, the study) or one cube (``dims=3``,
  :mod:`metcli.lesions.volumes`); one channel (the lesion map's CT) or one per
  contrast phase (``phases``). They are computed once per run.
* Patients (never lesions) are split into train, val and test: from a split
  file (the predictions format of docs/architecture.md) or at random, stratified by class.
* A network of the registry :mod:`metcli.cnn.networks` (``densenet121`` or
  ``resnet18``, MONAI's, 2D or 3D) learns from scratch (:mod:`metcli.cnn.fit`):
  class-weighted cross-entropy, ``RandAffine`` augmentation, validation each
  epoch, the best epoch kept (lowest validation loss or highest AUC), optional
  early stopping (``patience``), or a fixed number of epochs chosen by
  cross-validation on the training patients (``cv_folds``); a resume state
  after every epoch (``resume``); mixed precision on CUDA (``amp``).
* Aggregation: a lesion's probabilities are the mean of its inputs'
  probabilities (its slices; one volume in 3D); a patient's are the mean of its
  lesions'. A binary model predicts the positive class at or above 0.5 (the
  study's cut-off); several classes: the most probable one.
* Export: ``model/model.onnx`` (input ``image`` float32 [batch, channels,
  size, size(, size)], output ``probabilities``, dynamic batch), checked
  against PyTorch with ONNX Runtime (more than 1e-4 apart fails the run),
  ``model/model.json`` (the card), ``model/checkpoint.pt``, validation and test
  predictions.

On the CPU the same inputs and seed give the same ``training_log.tsv`` and
weights, interrupted and resumed or not.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from metcli.cnn.data import Sample, find_jobs, load_samples, parse_phases, plan_split
from metcli.cnn.fit import (
    LOG_COLUMNS,
    MONITORS,
    THRESHOLD,
    FitSettings,
    choose_epochs,
    fit,
    lesion_probabilities,
    slice_probabilities,
)
from metcli.cnn.networks import build_network, get_architecture
from metcli.cnn.outputs import decide, export_onnx, prediction_rows, write_outputs
from metcli.core.batch import announce_total
from metcli.core.errors import InputError, UsageError

__all__ = [
    "THRESHOLD",
    "LOG_COLUMNS",
    "CnnResult",
    "Sample",
    "build_network",
    "check_options",
    "decide",
    "export_onnx",
    "find_jobs",
    "lesion_probabilities",
    "load_checkpoint",
    "plan_split",
    "prediction_rows",
    "slice_probabilities",
    "train_cnn",
]

log = logging.getLogger(__name__)

DEFAULT_SIZE = {2: 224, 3: 64}
#: Folder of OUT_DIR that holds the resume states while a run is unfinished.
RESUME_FOLDER = "resume"
AUGMENTATION = (
    "monai RandAffine (p 0.9): rotation up to 15 deg, shear 0.1, shift up to 10% "
    "of the side, zoom up to 10%, black padding"
)


@dataclass
class CnnResult:
    model_dir: Path
    skipped: bool = False
    excluded: dict[str, str] = field(default_factory=dict)
    seconds_per_epoch: float | None = None
    max_abs_difference: float | None = None
    epochs_run: int | None = None
    cv_epochs: int | None = None
    torch_threads: int | None = None


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


# ----------------------------------------------------------------------------- outputs
def _versions() -> dict[str, str]:
    from metcli.core.versions import CNN_LIBRARIES, versions

    out = versions()
    out.update(versions(CNN_LIBRARIES))
    return out


def input_spec(*, dims: int, phases: list[str] | None, size: int, slice_settings) -> dict:
    """The card's ``dims``, ``phases``, ``input`` and ``preprocessing``, for model_inputs."""
    from metcli.lesions import volumes as lesion_volumes

    preprocessing = slice_settings.as_dict()
    if dims == 3:
        preprocessing["preprocessing_version"] = lesion_volumes.PREPROCESSING_VERSION
    channels = list(phases) if phases else ["ct"]
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


# ----------------------------------------------------------------------------- the run
def _labels(
    labels: Path, label_column: str, positive_class: str | None, excluded: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    from metcli.io.participants import read_label_rows

    all_labels = {}
    for row in read_label_rows(Path(labels), label_column):
        if row.get(label_column) in (None, ""):
            excluded[row["participant_id"]] = "no label"
        else:
            all_labels[row["participant_id"]] = str(row[label_column])
    classes = sorted(set(all_labels.values()))
    if len(classes) < 2:
        raise InputError(
            f"the labels hold {len(classes)} class(es); at least 2 are needed",
            path=labels,
            fix=f"check the {label_column} column",
        )
    if positive_class is not None:
        if positive_class not in classes or len(classes) != 2:
            raise UsageError(
                f"--positive-class {positive_class!r} is not one of the two "
                f"classes ({', '.join(classes)})"
            )
        classes = [c for c in classes if c != positive_class] + [positive_class]
    return all_labels, classes


def train_cnn(
    raw_dir,
    lesions_dir,
    out_dir,
    *,
    labels,
    label_column: str = "primary",
    positive_class: str | None = None,
    arch: str = "densenet121",
    dims: int = 2,
    phases: str | Sequence[str] | None = None,
    window: tuple[float, float] = (330.0, 10.0),
    size: int | None = None,
    fov_mm: float | None = None,
    context_mm: float = 0.0,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-4,
    val_patients: int = 5,
    test_patients: int | None = None,
    split: Path | None = None,
    cv_folds: int | None = None,
    patience: int | None = None,
    monitor: str = "loss",
    device: str = "auto",
    amp: bool = False,
    seed: int = 0,
    resume: bool = False,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> CnnResult:
    """Train the lesion CNN and write OUT_DIR (see the module docstring and docs/train-cnn.md).

    Writes ``split.tsv``, ``training_log.tsv``, ``cv_log.tsv`` (with
    ``cv_folds``), ``val_predictions.tsv`` (absent without validation
    patients), ``predictions.tsv`` (absent without test patients), each with a
    JSON sidecar, and ``model/`` (``model.onnx``, ``model.json``,
    ``checkpoint.pt``). While the run is unfinished, ``OUT_DIR/resume/`` holds
    the resume states (``resume=True`` continues from them); a finished run
    removes it. ``size`` defaults to 224 (2D) or 64 (3D).

    ``threads``: PyTorch's CPU threads for the training and the export (set
    for this call and restored afterwards, :func:`metcli.core.threads.limit_cpu_threads`;
    None keeps torch's current number). It is not a setting of the skip rule,
    but on the CPU the weights depend on it (the order of floating-point sums):
    the same inputs, seed and number of threads give the same outputs. The
    number used is logged and returned (``torch_threads``).
    """
    from metcli.core.threads import limit_cpu_threads
    from metcli.io.files import check_output_not_inside_input, sha256_json
    from metcli.io.provenance import Step

    raw_dir, lesions_dir, out_dir = Path(raw_dir), Path(lesions_dir), Path(out_dir)
    require_libraries()
    size = DEFAULT_SIZE.get(dims, 224) if size is None else int(size)
    check_options(
        arch=arch,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_patients=val_patients,
        test_patients=test_patients,
        device=device,
        dims=dims,
        cv_folds=cv_folds,
        patience=patience,
        monitor=monitor,
    )
    phases, device, spec = _input_settings(
        split=split,
        test_patients=test_patients,
        threads=threads,
        phases=phases,
        device=device,
        amp=amp,
        window=window,
        size=size,
        context_mm=context_mm,
        fov_mm=fov_mm,
        dims=dims,
    )
    check_output_not_inside_input(out_dir, [raw_dir, lesions_dir])
    excluded: dict[str, str] = {}
    all_labels, classes = _labels(Path(labels), label_column, positive_class, excluded)
    settings = {
        "arch": arch,
        "label_column": label_column,
        "classes": classes,
        "dims": dims,
        "phases": phases,
        "preprocessing": spec["preprocessing"],
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "val_patients": val_patients,
        "test_patients": test_patients,
        "cv_folds": cv_folds,
        "patience": patience,
        "monitor": monitor,
        "amp": amp,
        "seed": seed,
        "device": device,
        "augmentation": AUGMENTATION,
        "threshold": THRESHOLD,
        "lesion_aggregate": "mean",
        "patient_aggregate": "mean",
    }
    step = Step("train-cnn", out_dir, {"raw": raw_dir, "lesions": lesions_dir}, settings)
    jobs = find_jobs(raw_dir, lesions_dir, all_labels, excluded, phases=phases)
    files = [f for j in jobs for f in (*j.cts.values(), j.lesion_map, j.lesion_table)]
    inputs = step.inputs(files + [Path(labels)] + ([Path(split)] if split is not None else []))
    if not overwrite and step.is_done(out_dir / "model" / "model.json", inputs):
        return CnnResult(out_dir / "model", skipped=True, excluded=excluded)
    plan, folds, parts = _split_samples(
        jobs,
        all_labels,
        classes,
        spec,
        split=split,
        val_patients=val_patients,
        test_patients=test_patients,
        cv_folds=cv_folds,
        monitor=monitor,
        seed=seed,
    )
    state_dir = _start_output(out_dir, {"raw": raw_dir, "lesions": lesions_dir}, resume)
    fingerprint = sha256_json(
        {
            "settings": step.settings_sha256,
            "inputs": sorted((i["uri"], i["sha256"]) for i in inputs),
        }
    )
    fit_settings = FitSettings(
        arch=arch,
        n_classes=len(classes),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        seed=seed,
        amp=amp,
        monitor=monitor,
        patience=patience,
    )
    with limit_cpu_threads(threads) as torch_threads:
        log.info("train-cnn: %d PyTorch CPU thread(s)", torch_threads)
        result, cv, fit_settings = _train(
            parts,
            folds,
            fit_settings,
            cv_folds=cv_folds,
            state_dir=state_dir,
            resume=resume,
            fingerprint=fingerprint,
            progress=progress,
        )
        difference = write_outputs(
            out_dir,
            step=step,
            inputs=inputs,
            result=result,
            cv=cv,
            parts=parts,
            plan=plan,
            folds=folds,
            classes=classes,
            spec=spec,
            arch=arch,
            label_column=label_column,
            split=split,
            fit_settings=fit_settings,
            epochs=epochs,
            monitor=monitor,
            patience=patience,
            versions=_versions(),
            torch_threads=torch_threads,
        )
    shutil.rmtree(state_dir, ignore_errors=True)
    return CnnResult(
        out_dir / "model",
        excluded=excluded,
        torch_threads=torch_threads,
        seconds_per_epoch=result.seconds_per_epoch,
        max_abs_difference=difference,
        epochs_run=len(result.rows),
        cv_epochs=None if cv is None else cv.epochs,
    )


def _input_settings(
    *,
    split,
    test_patients,
    threads,
    phases,
    device: str,
    amp: bool,
    window,
    size: int,
    context_mm: float,
    fov_mm,
    dims: int,
):
    """(phases, the torch device, :func:`input_spec`), after the remaining option checks."""
    from metcli.core.devices import torch_device
    from metcli.core.threads import check_threads
    from metcli.lesions.preprocess import SliceSettings

    if split is not None and test_patients is not None:
        raise UsageError("give --test-patients or --split, not both")
    check_threads(threads)
    phases = parse_phases(phases)
    device = torch_device(device, amp=amp)
    slice_settings = SliceSettings(
        window_width=float(window[0]),
        window_level=float(window[1]),
        size=size,
        context_mm=float(context_mm),
        fov_mm=fov_mm,
    )
    return (
        phases,
        device,
        input_spec(dims=dims, phases=phases, size=size, slice_settings=slice_settings),
    )


def _split_samples(
    jobs,
    all_labels: dict[str, str],
    classes: list[str],
    spec: dict,
    *,
    split,
    val_patients: int,
    test_patients,
    cv_folds,
    monitor: str,
    seed: int,
):
    """(the split plan, the training patients' folds, the train/val/test samples)."""
    job_labels = {j.participant_id: all_labels[j.participant_id] for j in jobs}
    plan = plan_split(
        job_labels,
        split=split,
        val_patients=val_patients,
        test_patients=test_patients,
        seed=seed,
        need_val=cv_folds is None,
    )
    folds = _folds(plan, job_labels, cv_folds, split, seed)
    samples = load_samples([j for j in jobs if j.participant_id in plan], all_labels, classes, spec)
    parts = {
        w: [s for s in samples if plan.get(s.participant_id) == w] for w in ("train", "val", "test")
    }
    if (
        monitor == "auc"
        and cv_folds is None
        and len({s.label for s in parts["val"]}) < len(classes)
    ):
        raise InputError(
            "--monitor auc needs validation lesions of every class; the "
            "validation patients lack some",
            path=split,
            fix="use --monitor loss, or more --val-patients",
        )
    return plan, folds, parts


def _start_output(out_dir: Path, sources: dict[str, Path], resume: bool) -> Path:
    """Write dataset_description.json; OUT_DIR/resume, cleared unless ``resume``."""
    from metcli.io.provenance import write_dataset_description

    write_dataset_description(out_dir, name="metcli train-cnn", sources=sources)
    state_dir = out_dir / RESUME_FOLDER
    if not resume and state_dir.exists():
        log.info(
            "starting over: the resume states of an earlier run are removed "
            "(--resume continues from them)"
        )
        shutil.rmtree(state_dir)
    return state_dir


def _train(
    parts: dict,
    folds: dict[str, int],
    fit_settings: FitSettings,
    *,
    cv_folds,
    state_dir: Path,
    resume: bool,
    fingerprint: str,
    progress,
):
    """(the fit, the cross-validation or None, the settings of the final fit)."""
    announce_total(progress, fit_settings.epochs * (1 + (cv_folds or 0)))
    cv = None
    if cv_folds is not None:
        cv = choose_epochs(
            parts["train"],
            folds,
            fit_settings,
            state_dir=state_dir,
            resume=resume,
            fingerprint=fingerprint,
            progress=progress,
        )
        fit_settings = replace(fit_settings, epochs=cv.epochs, keep_last=True)
    result = fit(
        parts["train"],
        parts["val"],
        fit_settings,
        state_path=state_dir / "train.pt",
        resume=resume,
        fingerprint=f"{fingerprint}:train",
        progress=progress,
    )
    return result, cv, fit_settings


def _folds(
    plan: dict[str, str],
    labels: dict[str, str],
    cv_folds: int | None,
    split: Path | None,
    seed: int,
) -> dict[str, int]:
    """The training patients' cross-validation folds (empty without ``cv_folds``)."""
    if cv_folds is None:
        return {}
    from metcli.cnn.data import assign_folds

    given = None
    if split is not None:
        from metcli.io.splits import read_split

        given = read_split(Path(split)).folds
    train = {p: labels[p] for p, s in plan.items() if s == "train"}
    return assign_folds(train, cv_folds, seed=seed, given=given, split=split)


def load_checkpoint(
    model_dir: Path,
    arch: str,
    n_classes: int,
    *,
    dims: int | None = None,
    in_channels: int | None = None,
):
    """The network with the weights of ``model_dir/checkpoint.pt`` (``weights_only=True``).

    ``dims`` and ``in_channels`` default to those of the checkpoint's first
    convolution (2D or 3D; one channel, or one per phase).
    """
    import torch

    state = torch.load(Path(model_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    first = next(v for v in state.values() if getattr(v, "ndim", 0) in (4, 5))
    model = build_network(
        arch, n_classes, dims=dims or first.ndim - 2, in_channels=in_channels or int(first.shape[1])
    )
    model.load_state_dict(state)
    return model.eval()
