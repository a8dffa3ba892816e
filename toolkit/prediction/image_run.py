"""One run of an image model (:func:`metcli.prediction.image.predict_image`) after its
checks: the provenance record every output carries, each participant's predictions (its
lesions through the network) and files (the predictions table and, with ``--explain``, the
Grad-CAM heat maps of its lesions, each with a JSON sidecar), and the group table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metcli.core.batch import DONE, SKIPPED, BatchReport
from metcli.core.errors import InputError, MaskError

GRADCAM_SUFFIX = "gradcam"


def run_record(
    model_dir: Path,
    raw_dir: Path,
    lesions_dir: Path,
    out_dir: Path,
    card: dict,
    *,
    aggregate: str,
    session: str | None,
    explain: bool,
    backend,
    explainer,
    more_sources: dict | None = None,
):
    """(provenance step, sidecar extra keys, models, model files) of an image predict run;
    writes the dataset description. ``more_sources``: other input roots (``seg``,
    ``participants``) by name."""
    from metcli.io.files import sha256_file
    from metcli.io.provenance import Step, write_dataset_description
    from metcli.prediction.outputs import COMMAND, decision_extra

    model_files = [model_dir / "model.onnx", model_dir / "model.json"]
    if explain:
        model_files.append(model_dir / "checkpoint.pt")
    model_sha = sha256_file(model_dir / "model.onnx")
    sources = {"model": model_dir, "raw": raw_dir, "lesions": lesions_dir, **(more_sources or {})}
    step = Step(
        COMMAND,
        out_dir,
        sources,
        {
            "model_sha256": model_sha,
            "aggregate": aggregate,
            "session": session,
            "explain": bool(explain),
        },
    )
    write_dataset_description(
        out_dir,
        name="metcli predict",
        sources=sources,
        description=f"predictions of model {card['name']}",
    )
    extra = {
        "model": card["name"],
        "classes": card["classes"],
        "positive_class": card["positive_class"],
        "threshold": card["threshold"],
        "threshold_source": card["threshold_source"],
        "lesion_aggregate": card["lesion_aggregate"],
        "patient_aggregate": aggregate,
        "ExecutionProvider": backend.provider if backend is not None else None,
    }
    if explainer is not None:
        extra["TorchThreads"] = explainer.threads
    for key in ("positive_class", "threshold"):  # none for a multi-class model
        if extra[key] is None:
            del extra[key]
    extra.update(decision_extra(card))
    models = [{"name": card["name"], "sha256": model_sha}]
    if explain:
        models.append(
            {"name": f"{card['name']} checkpoint.pt", "sha256": card["checkpoint"]["sha256"]}
        )
    return step, extra, models, model_files


@dataclass
class ImageRun:
    """The state of an image predict run: the model, what every output records (provenance
    step, sidecar extra keys, models, model files), and what the group table collects."""

    card: dict
    out_dir: Path
    aggregate: str
    overwrite: bool
    do_participants: bool
    backend: Any  #: an ImageBackend (None at the group level)
    explainer: Any
    step: Any
    extra: dict
    models: list[dict]
    model_files: list[Path]
    report: BatchReport = field(default_factory=BatchReport)
    rows: list[dict] = field(default_factory=list)
    group_files: list[Path] = field(default_factory=list)
    recorded: list[dict] = field(default_factory=list)

    def work(self, job) -> str:
        """One participant: predicted and written, found current, or (the group level only)
        its current table read back."""
        from metcli.io.predictions import read_rows
        from metcli.prediction.outputs import current_predictions

        if job.problem is not None:
            raise job.problem
        inputs = self.step.inputs(job.files + self.model_files)
        path, sidecar = predictions_path(self.out_dir, job)
        self.report.outputs.extend([path, sidecar])
        if not self.do_participants:  # group level only: the participant's current files
            rows, _inputs, doc = current_predictions(
                self.step, path, job.participant_id, inputs=inputs
            )
            self.rows.extend(rows)
            self.group_files.extend(job.files)
            self.recorded.append(doc)
            return SKIPPED
        if not self.overwrite and self.step.is_done(sidecar, inputs):
            self.rows.extend(read_rows(path))
            self.group_files.extend(job.files)
            return SKIPPED
        rows, pictures = predict_participant(
            self.backend, self.explainer, job, self.card, self.aggregate, self.out_dir
        )
        write_participant(
            self.out_dir,
            job,
            path,
            sidecar,
            rows,
            pictures,
            self.card,
            self.step,
            inputs,
            self.extra,
            self.models,
        )
        self.report.outputs.extend(p for picture in pictures for p in picture[:2])
        self.rows.extend(rows)
        self.group_files.extend(job.files)
        return DONE

    def write_group_table(self) -> None:
        """``predictions.tsv`` of every participant's rows, with its sidecar."""
        from metcli.prediction.outputs import recorded_extra, write_group

        extra = self.extra if self.do_participants else recorded_extra(self.extra, self.recorded)
        self.report.outputs.extend(
            write_group(
                self.out_dir,
                self.rows,
                self.card,
                self.step,
                self.step.inputs(self.group_files + self.model_files),
                extra,
                self.models,
                self.overwrite,
            )
        )


def predict_participant(backend, explainer, job, card: dict, aggregate: str, out_dir: Path):
    """(prediction rows, [(png path, sidecar path, rgb array, sidecar extra)] for --explain)."""
    from metcli.io.cutoffs import apply_decision
    from metcli.io.predictions import prediction_rows
    from metcli.lesions.maps import kept_lesion_ids

    ids = kept_lesion_ids(job.lesion_table)
    if not ids:
        raise InputError(
            "no lesion kept by split-lesions (kept is false in every row)",
            path=job.lesion_table,
            fix="nothing to predict for this participant",
        )
    lesions = backend.lesion_inputs(job, ids)
    for lesion in lesions:
        if not len(lesion.images):
            raise MaskError(
                f"lesion {lesion.lesion_id} has no voxel in the lesion map",
                path=job.lesion_map,
                fix="run split-lesions again",
            )
    proba, per_slice = backend.lesion_probabilities(lesions, job.covariates)
    rows = prediction_rows(
        [job.participant_id] * len(lesions),
        [lesion.lesion_id for lesion in lesions],
        proba,
        card["classes"],
        model=card["name"],
        set_name="test",
        positive=card["positive_class"],
        threshold=card["threshold"],
        aggregate=aggregate,
    )
    apply_decision(rows, card["classes"], card.get("decision"), aggregate)
    pictures = []
    if explainer is not None:
        predicted = {r["lesion_id"]: r["predicted"] for r in rows if r["level"] == "lesion"}
        for lesion, slice_probs in zip(lesions, per_slice):
            pictures.append(
                gradcam_picture(
                    explainer, job, lesion, slice_probs, predicted[lesion.lesion_id], card, out_dir
                )
            )
    return rows, pictures


def predictions_path(out_dir: Path, job) -> tuple[Path, Path]:
    """(predictions table, its sidecar) of a job (:class:`~metcli.prediction.image.ImageJob`)."""
    from metcli.io.bids import Entities, derivative_path, sidecar_path

    sub, ses, ce = job.key
    entities = Entities(sub=sub, ses=ses, ce=ce, suffix="predictions", extension=".tsv")
    path = derivative_path(out_dir, entities, suffix="predictions", extension=".tsv")
    return path, sidecar_path(path)


def gradcam_picture(
    explainer, job, lesion, slice_probs: np.ndarray, label: str, card: dict, out_dir: Path
):
    """The PNG (as an array) and sidecar content of one lesion's heat map."""
    from metcli.cnn.gradcam import ALPHA, COLORMAP, overlay
    from metcli.io.bids import Entities, derivative_path, sidecar_path

    class_index = list(card["classes"]).index(label)
    channels = list(card["input"]["channels"])
    rgb = None
    if card.get("network"):  # a multi-branch network: one map per phase, side by side
        rgb, heat, where = _phase_pictures(
            explainer, job, lesion, slice_probs, class_index, channels
        )
    elif lesion.images.ndim == 5:  # 3D: one cube per lesion
        heat = explainer(lesion.images, class_index)[0]
        middle = heat.shape[0] // 2
        picture, heat = lesion.images[0, 0, middle], heat[middle]
        where = {
            "cube_slice": middle,
            "slice_choice": "the central axial slice of the lesion's cube",
            "probability": float(slice_probs[0, class_index]),
        }
    else:
        best = int(np.argmax(slice_probs[:, class_index]))  # first of equals: most inferior
        heat = explainer(lesion.images[best : best + 1], class_index)[0]
        picture = lesion.images[best, 0]
        where = {
            "slice_index": int(lesion.slice_indices[best]),
            "slice_choice": "the slice where the predicted class is most probable",
            "probability": float(slice_probs[best, class_index]),
            "slices": len(lesion.images),
        }
    rgb = overlay(picture, heat) if rgb is None else rgb
    sub, ses, ce = job.key
    entities = Entities(
        sub=sub,
        ses=ses,
        ce=ce,
        lesion=str(lesion.lesion_id),
        suffix=GRADCAM_SUFFIX,
        extension=".png",
    )
    path = derivative_path(Path(out_dir), entities, suffix=GRADCAM_SUFFIX, extension=".png")
    info = {
        "Description": f"Grad-CAM heat map of class {label} over the network's input "
        f"slice of lesion {lesion.lesion_id} of {job.participant_id}",
        "lesion_id": int(lesion.lesion_id),
        "class": label,
        **where,
        "channel": where.pop("channels", channels[0]),
        "method": "Grad-CAM (monai.visualize.GradCAM)",
        "target_layer": explainer.target_layer,
        "architecture": explainer.arch,
        "heat_map_scaling": "divided by its maximum (0: no positive evidence)",
        "colormap": COLORMAP,
        "max_opacity": ALPHA,
        "image": "the preprocessed network input (window, blackened surroundings, square "
        "crop, resize); rows anterior to posterior, columns right to left",
        "checkpoint_sha256": card["checkpoint"]["sha256"],
        "heat_map_max": float(heat.max()),
        "heat_map_mean": float(heat.mean()),
        "TorchThreads": explainer.threads,
    }
    return path, sidecar_path(path), rgb, info


def _phase_pictures(explainer, job, lesion, slice_probs, class_index: int, channels: list):
    """(RGB montage, heat maps, sidecar fields) of a multi-branch network: each channel's
    central axial slice of the lesion's cube under its own Grad-CAM map, left to right in
    channel order."""
    from metcli.cnn.gradcam import overlay

    covariates = None if job.covariates is None else job.covariates[None]
    heat = explainer(lesion.images, class_index, covariates)[0]  # [channels, *spatial]
    middle = heat.shape[1] // 2
    panels = [overlay(lesion.images[0, c, middle], heat[c, middle]) for c in range(len(heat))]
    where = {
        "cube_slice": middle,
        "slice_choice": "the central axial slice of the lesion's cube, one panel per channel",
        "probability": float(slice_probs[0, class_index]),
        "channels": channels,
        "panels": "left to right in the order of channels",
        "heat_map_max_per_channel": [float(h.max()) for h in heat],
    }
    return np.concatenate(panels, axis=1), heat, where


def write_participant(
    out_dir, job, path, sidecar, rows, pictures, card, step, inputs, extra, models
) -> None:
    """Heat-map PNGs (each with its sidecar), then the predictions and their sidecar, together."""
    from metcli.cnn.gradcam import write_png
    from metcli.io.files import OutputSet, write_tsv_to
    from metcli.io.predictions import prediction_columns

    with OutputSet() as outs:
        produced = {}
        for png, png_sidecar, rgb, info in pictures:
            tmp = outs.path(png)
            write_png(rgb, tmp)
            produced[png] = tmp
            step.write_sidecar(outs, png_sidecar, inputs, {png: tmp}, models=models, extra=info)
        tmp = outs.path(path)
        write_tsv_to(
            rows, prediction_columns(card["classes"]), tmp, schema="predictions", where=path
        )
        produced = {path: tmp, **produced}
        step.write_sidecar(
            outs,
            sidecar,
            inputs,
            produced,
            models=models,
            extra={
                "Description": f"Predictions of model {card['name']} for {job.participant_id}: "
                "one row per lesion and one for the patient",
                "Lesions": sum(1 for r in rows if r["level"] == "lesion"),
                **extra,
            },
        )
