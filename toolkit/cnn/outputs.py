"""train-cnn's outputs: predictions, the ONNX export with its parity check, tables and the card.

:func:`write_outputs` writes every file of OUT_DIR in one
:class:`~metcli.io.files.OutputSet` (all appear, or none does; sidecars and
the card last), once :func:`metcli.cnn.fit.fit` has trained the network.
``model.onnx`` is canonical and records the ``metcli.*`` metadata its card
describes; the card records its own ``card_sha256`` (:mod:`metcli.io.cards`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli.cnn.cross_validation import CvResult
from metcli.cnn.data import Sample, stack, stack_covariates
from metcli.cnn.fit import LOG_COLUMNS, THRESHOLD, FitResult, FitSettings
from metcli.cnn.hierarchy_net import make_network
from metcli.cnn.options import CnnOptions
from metcli.core.errors import OutputError

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
PREDICTION_BASE = ["participant_id", "lesion_id", "level", "model", "set"]
CV_LOG_COLUMNS = ["fold"] + LOG_COLUMNS
#: How a lesion's probabilities come from its inputs' (predict reads the card's value).
LESION_AGGREGATE = {2: "mean of slice probabilities", 3: "one volume per lesion"}


@dataclass(frozen=True)
class TrainingRun:
    """What train-cnn's outputs are made of besides the fit: OUT_DIR, its provenance step
    and inputs, the split (and folds), the samples of each set, the classes, the card's
    input spec and the run's options."""

    out_dir: Path
    step: Any  # metcli.io.provenance.Step of the run
    inputs: list[dict]
    plan: dict[str, str]  # participant -> train, val or test
    folds: dict[str, int]  # training participant -> cross-validation fold
    parts: dict[str, list[Sample]]  # train, val, test -> samples
    classes: list[str]
    spec: dict  # dims, phases, input and preprocessing (metcli.cnn.options.input_spec)
    options: CnnOptions
    network: dict | None = None  # the architecture's own options (the card's network)
    covariates: list | None = None  # the covariates' spec (metcli.cnn.clinical)
    hierarchy: Any = None  # metcli.io.hierarchy.Hierarchy of a two-step model
    hierarchy_record: dict | None = None  # the card's hierarchy (groups, rule, steps)

    @property
    def dims(self) -> int:
        return int(self.spec["dims"])

    @property
    def model_name(self) -> str:
        return f"cnn-{self.options.arch}" + ("-3d" if self.dims == 3 else "")


def decide(probs: np.ndarray, classes: Sequence[str], cutoffs: dict | None = None) -> list[str]:
    """Binary: the positive (last) class at or above 0.5; otherwise the most probable class,
    or with ``cutoffs`` the rule of per-class cut-offs (:func:`metcli.io.cutoffs.decide`)."""
    if len(classes) == 2:
        return [classes[1] if p[1] >= THRESHOLD else classes[0] for p in probs]
    if cutoffs:
        from metcli.io.cutoffs import decide as by_cutoffs

        return by_cutoffs(np.asarray(probs), classes, cutoffs)
    return [classes[int(np.argmax(p))] for p in probs]


def validation_decision(run: TrainingRun, val_probs: np.ndarray | None) -> dict | None:
    """3+ classes: best-F1 cut-offs on the validation lesions (not patients: few of them)."""
    from metcli.io.cutoffs import choose_decision

    if val_probs is None:
        return None
    labels, rule = [s.label for s in run.parts["val"]], run.options.decision
    where = "the validation set's predictions (never the test set)"
    return choose_decision(rule, labels, val_probs, run.classes, chosen_on=where, level="lesion")


def export_onnx(model, sample: np.ndarray, covariates: np.ndarray | None = None):
    """model.onnx bytes (softmax included, dynamic batch) and its max difference to torch.

    ``sample``: a few network inputs ``[n, channels, *spatial]`` for the parity check;
    ``covariates`` ``[n, K]``: their clinical inputs, for a network that takes them (the
    graph's second input, ``covariates``).
    """
    import io
    import warnings

    import torch

    from metcli.core.devices import onnx_session as session

    class WithSoftmax(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image, *extra):
            return torch.softmax(self.net(image, *extra), dim=1)

    wrapped = WithSoftmax(model).cpu().eval()
    buffer = io.BytesIO()
    names, example, feeds = ["image"], [torch.zeros(2, *sample.shape[1:])], {"image": sample}
    if covariates is not None:
        names.append("covariates")
        example.append(torch.zeros(2, covariates.shape[1]))
        feeds["covariates"] = covariates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            tuple(example),
            buffer,
            dynamo=False,
            input_names=names,
            output_names=["probabilities"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "probabilities"]},
            opset_version=17,
        )
    data = buffer.getvalue()
    sess = session(data)
    with torch.no_grad():
        expected = wrapped(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    got = sess.run(["probabilities"], feeds)[0]
    difference = float(np.max(np.abs(got - expected)))
    if difference > PARITY_TOLERANCE:
        raise OutputError(
            f"ONNX Runtime and PyTorch differ by {difference:.2e} (more than {PARITY_TOLERANCE})",
            fix="report this with the versions in use",
        )
    return data, difference


def prediction_rows(
    samples: Sequence[Sample],
    lesion_probs: np.ndarray,
    classes: list[str],
    which: str,
    model_name: str,
    cutoffs: dict | None = None,
) -> list[dict[str, Any]]:
    """Lesion rows, then patient rows (mean of the patient's lesion probabilities);
    ``cutoffs``: the per-class cut-offs that decide (three classes or more)."""
    rows = []
    decided = decide(lesion_probs, classes, cutoffs)
    for sample, probs, predicted in zip(samples, lesion_probs, decided):
        row = {
            "participant_id": sample.participant_id,
            "lesion_id": sample.lesion_id,
            "level": "lesion",
            "model": model_name,
            "set": which,
            "predicted": predicted,
        }
        row.update({f"prob_{c}": round(float(p), 6) for c, p in zip(classes, probs)})
        rows.append(row)
    for pid in sorted({s.participant_id for s in samples}):
        mean = lesion_probs[[i for i, s in enumerate(samples) if s.participant_id == pid]].mean(0)
        row = {
            "participant_id": pid,
            "lesion_id": None,
            "level": "patient",
            "model": model_name,
            "set": which,
            "predicted": decide(mean[None], classes, cutoffs)[0],
        }
        row.update({f"prob_{c}": round(float(p), 6) for c, p in zip(classes, mean)})
        rows.append(row)
    return rows


def _predict(
    model, samples: Sequence[Sample], device: str, batch_size: int, amp: bool
) -> np.ndarray:
    from metcli.cnn.fit import lesion_probabilities, slice_probabilities

    images, _, owner = stack(samples)
    probs = slice_probabilities(model, images, device, batch_size, amp, stack_covariates(samples))
    return lesion_probabilities(probs, owner, len(samples))


def _selection(fit_settings: FitSettings, cv: CvResult | None) -> str:
    if cv is not None:
        k = len({r["fold"] for r in cv.rows})
        return (
            f"the last of {cv.epochs} epoch(s), the number chosen by {k}-fold "
            f"cross-validation on the training patients (best mean validation "
            f"{fit_settings.monitor})"
        )
    if fit_settings.monitor == "auc":
        return "the epoch with the highest validation AUC (ties: the lower validation loss)"
    return "the epoch with the lowest validation loss"


def write_outputs(
    run: TrainingRun,
    result: FitResult,
    cv: CvResult | None,
    fit_settings: FitSettings,
    *,
    versions: dict[str, str],
    torch_threads: int | None = None,
) -> float:
    """Write OUT_DIR's files and return the ONNX parity difference."""
    from metcli.io.bids import sidecar_path
    from metcli.io.cards import canonical_onnx, graph_metadata
    from metcli.io.files import OutputSet, write_tsv_to

    model, predictions, decision = _kept_model_predictions(run, result, fit_settings)
    model.cpu()
    some = (run.parts["val"] or run.parts["train"])[:4]
    covariates = stack_covariates(some)
    sample = stack(some)[0][:4]
    onnx_bytes, difference = export_onnx(
        model, sample, None if covariates is None else covariates[:4]
    )
    pred_extra = _prediction_extra(run.classes, run.dims)
    if decision is not None:  # the per-class cut-offs, in the card and the sidecars
        pred_extra["decision"] = decision
        if decision["rule"] != "argmax":
            pred_extra["threshold_source"] = "best-f1 per class on validation lesions"
    # canonical bytes, with the metcli.* metadata the card describes (metcli.io.cards)
    described = {
        "kind": "image",
        "classes": run.classes,
        "positive_class": pred_extra["positive_class"],
        "input": run.spec["input"],
    }
    onnx_bytes = canonical_onnx(onnx_bytes, graph_metadata(described))
    tables = _tables(run, result=result, cv=cv, predictions=predictions, pred_extra=pred_extra)
    training = _training_record(
        run, result=result, cv=cv, fit_settings=fit_settings, torch_threads=torch_threads
    )
    stale = []
    with OutputSet() as outs:
        for path, rows, columns, schema, extra in tables:
            if rows is None:  # a file of an earlier run would contradict this one
                stale += [path, sidecar_path(path)]
                continue
            tmp = outs.path(path)
            write_tsv_to(rows, columns, tmp, schema=schema, where=path)
            run.step.write_sidecar(outs, sidecar_path(path), run.inputs, {path: tmp}, extra=extra)
        _write_model(
            outs,
            run,
            result,
            onnx_bytes,
            difference,
            pred_extra=pred_extra,
            training=training,
            versions=versions,
        )
    for path in stale:
        path.unlink(missing_ok=True)
    return difference


def _kept_model_predictions(run: TrainingRun, result: FitResult, fit_settings: FitSettings):
    """The network with the kept weights (on the device) and its validation and test
    predictions rows (a set without patients has none)."""
    s = fit_settings
    channels = len(run.spec["input"]["channels"]) * len(run.spec["input"].get("regions", [1]))
    model = make_network(
        run.options.arch,
        len(run.classes),
        dims=run.dims,
        in_channels=channels,
        options=run.network,
        hierarchy=run.hierarchy,
    )
    model.load_state_dict(result.kept_state)
    model.to(s.device)
    probs = {
        which: _predict(model, run.parts[which], s.device, s.batch_size, s.amp)
        for which in ("val", "test")
        if run.parts[which]
    }
    decision = validation_decision(run, probs.get("val"))
    cutoffs = decision["cutoffs"] if decision and decision["rule"] != "argmax" else None
    predictions = {
        which: prediction_rows(run.parts[which], p, run.classes, which, run.model_name, cutoffs)
        for which, p in probs.items()
    }
    return model, predictions, decision


def _write_model(
    outs,
    run: TrainingRun,
    result: FitResult,
    onnx_bytes: bytes,
    difference: float,
    *,
    pred_extra: dict,
    training: dict,
    versions: dict[str, str],
) -> None:
    """``model/``: model.onnx, checkpoint.pt and the card (with provenance and its
    ``card_sha256``), in ``outs``."""

    from metcli.io.cards import with_checksum
    from metcli.io.files import dump_json_to, sha256_file

    model_dir = run.out_dir / "model"
    onnx_tmp = outs.path(model_dir / "model.onnx")
    onnx_tmp.write_bytes(onnx_bytes)
    ckpt_tmp = outs.path(model_dir / "checkpoint.pt")
    ckpt_tmp.write_bytes(checkpoint_bytes(result.kept_state))
    card = _card(
        run,
        pred_extra=pred_extra,
        training=training,
        versions=versions,
        onnx={
            "file": "model.onnx",
            "sha256": sha256_file(onnx_tmp),
            "max_abs_difference": difference,
        },
        checkpoint={"file": "checkpoint.pt", "sha256": sha256_file(ckpt_tmp)},
    )
    doc = run.step.sidecar(
        run.inputs,
        {model_dir / "model.onnx": onnx_tmp, model_dir / "checkpoint.pt": ckpt_tmp},
        extra=card,
    )
    doc = with_checksum(doc)
    card_path = model_dir / "model.json"
    dump_json_to(doc, outs.path(card_path), schema="cnn_card", where=card_path)


def _prediction_extra(classes: list[str], dims: int) -> dict:
    """The prediction tables' sidecar fields: classes, positive class and cut-off."""
    binary = len(classes) == 2
    unit = "mean slice probability" if dims == 2 else "lesion's volume probability"
    return {
        "classes": classes,
        "positive_class": classes[1] if binary else None,
        "threshold": THRESHOLD if binary else None,
        "threshold_source": f"fixed 0.5 cut-off on the {unit} (the study's rule), not tuned"
        if binary
        else "most probable class",
    }


def _tables(
    run: TrainingRun,
    *,
    result: FitResult,
    cv: CvResult | None,
    predictions: dict[str, list],
    pred_extra: dict,
) -> list[tuple[Path, Any, list[str], str, dict | None]]:
    """(path, rows or None when absent, columns, schema, sidecar fields) of each table."""
    out_dir = run.out_dir
    pred_columns = PREDICTION_BASE + [f"prob_{c}" for c in run.classes] + ["predicted"]
    split_rows = [
        {"participant_id": p, "set": v, "fold": run.folds.get(p)}
        for p, v in sorted(run.plan.items())
    ]
    return [
        (out_dir / "split.tsv", split_rows, ["participant_id", "set", "fold"], "split", None),
        (out_dir / "training_log.tsv", result.rows, LOG_COLUMNS, "training_log", None),
        (
            out_dir / "cv_log.tsv",
            None if cv is None else cv.rows,
            CV_LOG_COLUMNS,
            "training_log",
            None,
        ),
        (
            out_dir / "val_predictions.tsv",
            predictions.get("val"),
            pred_columns,
            "predictions",
            pred_extra,
        ),
        (
            out_dir / "predictions.tsv",
            predictions.get("test"),
            pred_columns,
            "predictions",
            pred_extra,
        ),
    ]


def _training_record(
    run: TrainingRun,
    *,
    result: FitResult,
    cv: CvResult | None,
    fit_settings: FitSettings,
    torch_threads: int | None,
) -> dict:
    """The card's ``training``: epochs, selection, cross-validation, optimiser, device."""
    s, o = fit_settings, run.options
    return {
        "epochs": o.epochs,
        "epochs_run": len(result.rows),
        "best_epoch": result.kept_epoch,
        "selection": _selection(s, cv),
        "monitor": o.monitor,
        "patience": o.patience,
        "stopped_early": result.stopped_early,
        "cv": None
        if cv is None
        else {
            "folds": len(set(run.folds.values())),
            "chosen_epochs": cv.epochs,
            "mean_val_loss": cv.mean_val_loss,
            "mean_val_auc": cv.mean_val_auc,
        },
        "batch_size": s.batch_size,
        "lr": s.lr,
        "seed": s.seed,
        "device": s.device,
        "amp": s.amp,
        "class_weighting": "inverse frequency",
        "augmentation": run.step.settings["augmentation"],
        "seconds_per_epoch": round(result.seconds_per_epoch, 3),
        # CPU results depend on the thread count (floating-point summation order)
        "torch_threads": torch_threads,
    }


def _card(
    run: TrainingRun,
    *,
    pred_extra: dict,
    training: dict,
    versions: dict[str, str],
    onnx: dict,
    checkpoint: dict,
) -> dict:
    """The model card (``model/model.json``) without its provenance."""
    classes, spec, parts, dims = run.classes, run.spec, run.parts, run.dims
    counts = {w: sum(1 for v in run.plan.values() if v == w) for w in ("train", "val", "test")}
    return {
        "card_version": 1,
        "kind": "image",
        "name": run.model_name,
        "task": "binary" if len(classes) == 2 else "multiclass",
        "architecture": run.options.arch,
        "dims": dims,
        "phases": spec["phases"],
        "label_column": run.options.label_column,
        "classes": classes,
        "positive_class": pred_extra["positive_class"],
        "input": spec["input"],
        **({"network": run.network} if run.network else {}),
        **({"covariates": run.covariates} if run.covariates else {}),
        **({"hierarchy": run.hierarchy_record} if run.hierarchy_record else {}),
        "outputs": {"probabilities": "probabilities"},
        "preprocessing": spec["preprocessing"],
        "lesion_aggregate": LESION_AGGREGATE[dims],
        "patient_aggregate": "mean",
        "threshold": pred_extra["threshold"],
        "threshold_source": pred_extra["threshold_source"],
        **({"decision": pred_extra["decision"]} if "decision" in pred_extra else {}),
        "split": {
            "source": "split file"
            if run.options.split is not None
            else "stratified at random by patient",
            "train_patients": counts["train"],
            "val_patients": counts["val"],
            "test_patients": counts["test"],
            "train_lesions": len(parts["train"]),
            "val_lesions": len(parts["val"]),
            "test_lesions": len(parts["test"]),
        },
        "training": training,
        "versions": versions,
        "onnx": onnx,
        "checkpoint": checkpoint,
    }


def checkpoint_bytes(state) -> bytes:
    """``torch.save`` of ``state`` into memory: a zip whose records do not carry the
    (random) temporary file's name, so the same weights give the same bytes."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
