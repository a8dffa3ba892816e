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
weights, interrupted and resumed or not. The options
(:class:`~metcli.cnn.options.CnnOptions`) are checked, completed and recorded
by :mod:`metcli.cnn.options`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from metcli.cnn.almss_net import HIDDEN, WIDTH, clinical_order
from metcli.cnn.cross_validation import choose_epochs
from metcli.cnn.data import Sample, find_jobs, find_liver_masks, load_samples, plan_split
from metcli.cnn.fit import (
    LOG_COLUMNS,
    THRESHOLD,
    FitSettings,
    fit,
    lesion_probabilities,
    slice_probabilities,
)
from metcli.cnn.hierarchy_net import fit_steps, hierarchy_record, make_network
from metcli.cnn.networks import build_network
from metcli.cnn.optim import resolve_recipe
from metcli.cnn.options import CnnOptions, require_libraries, resolve_options, settings_record
from metcli.cnn.outputs import TrainingRun, decide, export_onnx, prediction_rows, write_outputs
from metcli.core.batch import announce_total
from metcli.core.errors import InputError, UsageError

__all__ = [
    "THRESHOLD",
    "LOG_COLUMNS",
    "CnnResult",
    "Sample",
    "build_network",
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

#: Folder of OUT_DIR that holds the resume states while a run is unfinished.
RESUME_FOLDER = "resume"


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


# ----------------------------------------------------------------------------- outputs
def _versions() -> dict[str, str]:
    from metcli.core.versions import CNN_LIBRARIES, versions

    out = versions()
    out.update(versions(CNN_LIBRARIES))
    return out


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
                f"classes ({', '.join(classes)})",
                fix="name one of them, or leave --positive-class out for more than two classes",
            )
        classes = [c for c in classes if c != positive_class] + [positive_class]
    return all_labels, classes


def train_cnn(
    raw_dir,
    lesions_dir,
    out_dir,
    *,
    labels,
    resume: bool = False,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    **options,
) -> CnnResult:
    """Train the lesion CNN and write OUT_DIR (see the module docstring and docs/train-cnn.md).

    ``options`` are the fields of :class:`~metcli.cnn.options.CnnOptions`. Writes
    ``split.tsv``, ``training_log.tsv``, ``cv_log.tsv`` (with ``cv_folds``),
    ``val_predictions.tsv`` (absent without validation patients), ``predictions.tsv``
    (absent without test patients), each with a JSON sidecar, and ``model/``
    (``model.onnx``, ``model.json``, ``checkpoint.pt``). While the run is unfinished,
    ``OUT_DIR/resume/`` holds the resume states (``resume=True`` continues from them).

    ``threads``: PyTorch's CPU threads for the training and the export, for this call
    only (:func:`metcli.core.threads.limit_cpu_threads`; None keeps torch's number). Not
    a setting of the skip rule, but on the CPU the weights depend on it; the number
    used is logged and returned (``torch_threads``).
    """
    from metcli.core.threads import limit_cpu_threads
    from metcli.io.files import check_output_not_inside_input
    from metcli.io.provenance import Step

    opts = CnnOptions(**options)
    raw_dir, lesions_dir, out_dir = Path(raw_dir), Path(lesions_dir), Path(out_dir)
    require_libraries()
    opts, spec = resolve_options(opts, threads=threads)
    check_output_not_inside_input(out_dir, [raw_dir, lesions_dir])
    excluded: dict[str, str] = {}
    all_labels, classes = _labels(Path(labels), opts.label_column, opts.positive_class, excluded)
    hierarchy = _hierarchy(opts, classes, Path(labels))
    sources = {"raw": raw_dir, "lesions": lesions_dir, **({"seg": opts.seg} if opts.seg else {})}
    step = Step("train-cnn", out_dir, sources, settings_record(opts, classes, spec))
    jobs, files = _jobs(raw_dir, lesions_dir, all_labels, excluded, opts)
    inputs = step.inputs(files + [Path(labels)])
    if not overwrite and step.is_done(out_dir / "model" / "model.json", inputs):
        return CnnResult(out_dir / "model", skipped=True, excluded=excluded)
    plan, folds, parts = _split_samples(jobs, all_labels, classes, spec, opts)
    covariates = _add_covariates(Path(labels), opts, plan, parts, spec)
    run = TrainingRun(
        out_dir,
        step,
        inputs,
        plan,
        folds,
        parts,
        classes,
        spec,
        opts,
        network=network_options(opts, len(covariates or [])),
        covariates=covariates,
        hierarchy=hierarchy,
    )
    state_dir = _start_output(out_dir, sources, resume)
    with limit_cpu_threads(threads) as torch_threads:
        log.info("train-cnn: %d PyTorch CPU thread(s)", torch_threads)
        result, cv, fit_settings, steps = _train(run, state_dir, resume=resume, progress=progress)
        if steps:
            run = replace(run, hierarchy_record=hierarchy_record(hierarchy, steps))
        difference = write_outputs(
            run, result, cv, fit_settings, versions=_versions(), torch_threads=torch_threads
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


def _jobs(raw_dir: Path, lesions_dir: Path, labels: dict, excluded: dict, options: CnnOptions):
    """(the participants' jobs, every input file: images, tables, split and hierarchy)."""
    o = options
    jobs = find_jobs(raw_dir, lesions_dir, labels, excluded, phases=o.phases)
    if o.seg is not None:
        jobs = find_liver_masks(Path(o.seg), jobs, excluded)
    files = [f for j in jobs for f in (*j.cts.values(), j.lesion_map, j.lesion_table)]
    files += [j.liver_mask for j in jobs if j.liver_mask is not None]
    return jobs, files + [Path(p) for p in (o.split, o.hierarchy) if p is not None]


def _split_samples(
    jobs, all_labels: dict[str, str], classes: list[str], spec: dict, options: CnnOptions
):
    """(the split plan, the training patients' folds, the train/val/test samples)."""
    o = options
    job_labels = {j.participant_id: all_labels[j.participant_id] for j in jobs}
    plan = plan_split(
        job_labels,
        split=o.split,
        val_patients=o.val_patients,
        test_patients=o.test_patients,
        seed=o.seed,
        need_val=o.cv_folds is None,
    )
    folds = _folds(plan, job_labels, o.cv_folds, o.split, o.seed)
    samples = load_samples([j for j in jobs if j.participant_id in plan], all_labels, classes, spec)
    parts = {
        w: [s for s in samples if plan.get(s.participant_id) == w] for w in ("train", "val", "test")
    }
    if (
        o.monitor == "auc"
        and o.cv_folds is None
        and len({s.label for s in parts["val"]}) < len(classes)
    ):
        raise InputError(
            "--monitor auc needs validation lesions of every class; the "
            "validation patients lack some",
            path=o.split,
            fix="use --monitor loss, or more --val-patients",
        )
    return plan, folds, parts


def network_options(options: CnnOptions, n_covariates: int) -> dict | None:
    """The card's ``network``: the architecture's own options (None for the others)."""
    o = options
    if o.arch != "almss":
        return None
    return {
        "phases": len(o.phases or ["ct"]),
        "liver": bool(o.liver_branch),
        "covariates": n_covariates,
        "shared": bool(o.shared_backbone),
        "width": WIDTH,
        "hidden": HIDDEN,
        "order": clinical_order(list(o.phases or ["ct"])),
    }


def _add_covariates(labels: Path, options: CnnOptions, plan, parts, spec: dict):
    """The covariates' spec (None without ``--covariates``); each sample gets its values,
    the card's input its second tensor."""
    if not options.covariates:
        return None
    from metcli.cnn.clinical import fit_covariates

    covariates, values = fit_covariates(labels, list(options.covariates), plan)
    for samples in parts.values():
        for sample in samples:
            sample.covariates = values[sample.participant_id]
    spec["input"]["covariates"] = {
        "name": "covariates",
        "shape": ["batch", len(covariates)],
        "columns": list(options.covariates),
    }
    return covariates


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


def _train(run: TrainingRun, state_dir: Path, *, resume: bool, progress):
    """(the fit, the cross-validation or None, the settings of the final fit)."""
    from metcli.io.files import sha256_json

    o, parts = run.options, run.parts
    fingerprint = sha256_json(
        {
            "settings": run.step.settings_sha256,
            "inputs": sorted((i["uri"], i["sha256"]) for i in run.inputs),
        }
    )
    fit_settings = FitSettings(
        arch=o.arch,
        n_classes=len(run.classes),
        epochs=o.epochs,
        batch_size=o.batch_size,
        lr=o.lr,
        device=o.device,
        seed=o.seed,
        amp=o.amp,
        monitor=o.monitor,
        patience=o.patience,
        network=run.network,
        recipe=resolve_recipe(o),  # optimiser, schedule, augmentation, --pretrained
    )
    steps = 1 if run.hierarchy is None else 1 + len(run.hierarchy.split_groups)
    announce_total(progress, fit_settings.epochs * (1 + (o.cv_folds or 0)) * steps)
    cv = None
    if o.cv_folds is not None:
        cv = choose_epochs(
            parts["train"],
            run.folds,
            fit_settings,
            state_dir=state_dir,
            resume=resume,
            fingerprint=fingerprint,
            progress=progress,
        )
        fit_settings = replace(fit_settings, epochs=cv.epochs, keep_last=True)
    if run.hierarchy is not None:
        spec = run.spec["input"]
        result, steps = fit_steps(
            parts,
            run.hierarchy,
            run.classes,
            fit_settings,
            state_dir=state_dir,
            resume=resume,
            fingerprint=fingerprint,
            progress=progress,
            dims=run.dims,
            in_channels=int(spec["shape"][1]),
        )
        return result, cv, fit_settings, steps
    result = fit(
        parts["train"],
        parts["val"],
        fit_settings,
        state_path=state_dir / "train.pt",
        resume=resume,
        fingerprint=f"{fingerprint}:train",
        progress=progress,
    )
    return result, cv, fit_settings, None


def _hierarchy(options: CnnOptions, classes: list[str], labels: Path):
    """The hierarchy of ``--hierarchy`` (checked against the labels), or None."""
    if options.hierarchy is None:
        return None
    from metcli.io.hierarchy import check_labels, read_hierarchy

    if options.cv_folds is not None or options.positive_class is not None:
        raise UsageError(
            "--hierarchy trains each step on its own validation patients; it takes neither "
            "--cv-folds nor --positive-class",
            fix="leave those options out",
        )
    hierarchy = read_hierarchy(Path(options.hierarchy))
    check_labels(hierarchy, classes, labels_path=labels)
    return hierarchy


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
    options: dict | None = None,
    hierarchy=None,
):
    """The network with the weights of ``model_dir/checkpoint.pt`` (``weights_only=True``).

    ``dims`` and ``in_channels`` default to those of the checkpoint's first
    convolution (2D or 3D; one channel, or one per phase); ``options``: the card's
    ``network`` (the architecture's own options); ``hierarchy``: the
    :class:`~metcli.io.hierarchy.Hierarchy` of a two-step model (its steps' networks).
    """
    import torch

    state = torch.load(Path(model_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    first = next(v for v in state.values() if getattr(v, "ndim", 0) in (4, 5))
    if options and in_channels is None:
        raise UsageError(
            f"the {arch} network's channels are not those of its first convolution",
            fix="give in_channels (the card's input shape)",
        )
    model = make_network(
        arch,
        n_classes,
        dims=dims or first.ndim - 2,
        in_channels=in_channels or int(first.shape[1]),
        options=options,
        hierarchy=hierarchy,
    )
    model.load_state_dict(state)
    return model.eval()
