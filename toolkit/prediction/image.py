"""Image models (train-cnn) in ``metcli predict``: CTs and lesion maps to predictions.

``metcli predict MODEL_DIR RAW_DIR LESIONS_DIR OUT_DIR`` with a model whose
card has ``kind`` ``image`` runs :func:`predict_image`, participant by
participant (one participant's images in memory at a time):

1. **Inputs**: each participant's lesion map (split-lesions'
   ``..._desc-lesions_dseg.nii.gz``, found with :func:`metcli.io.bids.find_files`),
   the CT of the same participant, session and phase in RAW_DIR (a model with
   ``phases``: one CT of each phase, same participant and session; with
   several lesion maps, the one of the first phase, as train-cnn does), and
   the lesions split-lesions kept (``kept`` true in the lesion table beside
   the map). A participant with no lesion map, several (sessions or phases:
   ``--session`` picks one session), no matching CT or no kept lesion fails
   alone with a message naming the file; so does a kept lesion id missing from
   the lesion map.
2. **Preprocessing**: :func:`metcli.lesions.inputs.model_inputs`, the function
   train-cnn uses, with the card's settings. The card is checked first
   (:func:`metcli.lesions.inputs.settings_from_card`): another preprocessing
   version, orientation, input shape, channel set or an unknown setting is
   refused before anything runs.
3. **Network**: ``model.onnx`` with ONNX Runtime (checked against the card's
   sha256), on CUDA when this ONNX Runtime has the CUDA provider and
   ``--device`` is ``auto`` or ``cuda``; ``--device cuda`` without it is an
   error. The CPU session uses one thread (the same outputs on every run).
4. **Aggregation**: a lesion's probabilities are the mean of its slices'
   probabilities (the card's ``lesion_aggregate``; a 3D model has one input
   per lesion, whose probabilities are the lesion's); the patient's follow
   ``--aggregate`` (:func:`metcli.io.predictions.aggregate_patients`); the card's
   threshold decides (:func:`metcli.io.predictions.prediction_rows`).
5. **Outputs**: the predictions format (docs/architecture.md) (set ``test``) per participant
   and for the group, as for radiomics models, with JSON sidecars.
6. ``--explain``: per lesion, ``sub-<id>[_ses-<s>][_ce-<phase>]_lesion-<n>_gradcam.png``,
   the network's input slice where the predicted class is most probable (3D:
   the central axial slice of the lesion's cube; several phases: the first
   phase's channel), with the Grad-CAM heat map of that class over it
   (:mod:`metcli.cnn.gradcam`, computed with ``checkpoint.pt``), and a JSON
   sidecar (slice, class, probability, target layer, checkpoint sha256).

A participant whose outputs are current (the same inputs, model and settings)
is skipped; its rows are read back for the group table. ``participant_label``
and ``level`` run one level only (as :func:`metcli.prediction.predict.predict`): the group
level (``level="group"``) builds no network and reads every participant's
current table back; a participant without one fails there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError

log = logging.getLogger(__name__)

RUNTIMES = ("onnx", "torch")
#: The lesion aggregations train-cnn writes (2D, 3D); both are the mean over the lesion's inputs.
LESION_AGGREGATES = ("mean of slice probabilities", "one volume per lesion")
#: Slices per network call.
BATCH = 64


@dataclass
class ImageJob:
    """One participant's lesion map, its CT(s) and lesion table (``problem``: why it cannot run)."""

    participant_id: str
    key: tuple[str, str | None, str | None]  # sub, ses, ce of the lesion map
    lesion_map: Path | None = None
    cts: dict = field(default_factory=dict)  # phase -> Path
    lesion_table: Path | None = None
    problem: InputError | None = None
    liver_mask: Path | None = None  #: the segmentation, for a card with a liver region
    participants: Path | None = None  #: participants.tsv, for a card with covariates
    covariates: np.ndarray | None = None  #: the encoded covariates (float32 [K])

    @property
    def files(self) -> list[Path]:
        extra = [p for p in (self.liver_mask, self.participants) if p is not None]
        return [*self.cts.values(), self.lesion_map, self.lesion_table, *extra]


def find_image_jobs(
    raw_dir: Path,
    lesions_dir: Path,
    *,
    session: str | None = None,
    phases: Sequence[str] | None = None,
) -> list[ImageJob]:
    """One job per participant found in RAW_DIR or LESIONS_DIR (sorted).

    Without ``phases`` the CT is the lesion map's own (same participant,
    session and phase); with ``phases`` (the card's), one CT per phase.
    """
    from metcli.io.bids import find_files
    from metcli.lesions.maps import (
        channel_files_by_key,
        choose_lesion_map,
        find_lesion_maps,
        pair_images,
    )

    raw_dir, lesions_dir = Path(raw_dir), Path(lesions_dir)
    maps = find_lesion_maps(lesions_dir)
    if not maps:
        raise InputError(
            "no split-lesions lesion map (sub-*/.../*_desc-lesions_dseg.nii.gz)",
            path=lesions_dir,
            fix="give the folder `metcli split-lesions` wrote",
        )
    cts = find_files(raw_dir, suffix="ct")
    by_pid: dict[str, list] = {}
    for acq in maps:
        by_pid.setdefault(acq.entities.participant_id, []).append(acq)
    ct_by_key = {a.entities.key: a.path for a in cts}
    if phases:
        ct_by_key.update(channel_files_by_key(raw_dir, sorted(p[4:] for p in by_pid), phases))
    jobs = []
    for pid in sorted(set(by_pid) | {a.entities.participant_id for a in cts}):
        job = ImageJob(pid, (pid[4:], session, None))
        try:
            acq = choose_lesion_map(
                pid, by_pid.get(pid, []), phases=phases, session=session, where=lesions_dir
            )
            job.key, job.lesion_map = acq.entities.key, acq.path
            job.lesion_table = acq.path.with_name(acq.entities.with_(extension=".tsv").name)
            pairing = pair_images(acq, ct_by_key, raw_dir=raw_dir, phases=phases)
        except InputError as exc:
            job.problem = exc
        else:
            job.cts = pairing.cts
        jobs.append(job)
    return jobs


class ImageBackend:
    """A train-cnn model: lesion inputs -> slice, lesion probabilities (ONNX Runtime or PyTorch).

    Args:
        model_dir: the model folder (``model.onnx``, ``model.json``, ``checkpoint.pt``).
        card: its card (:func:`metcli.prediction.outputs.load_card`).
        providers: ONNX Runtime providers; default from ``device``.
        device: ``auto``, ``cpu`` or ``cuda`` (``cuda`` without CUDA is a
            :class:`~metcli.core.errors.UsageError`).
        runtime: ``onnx`` (what predict uses) or ``torch`` (``checkpoint.pt``,
            sha256-checked; to compare the two and for the heat maps).
    """

    kind = "image"

    def __init__(
        self,
        model_dir: Path,
        card: dict,
        providers: Sequence[str] | None = None,
        *,
        device: str = "auto",
        runtime: str = "onnx",
    ):
        from metcli.lesions.inputs import card_phases, settings_from_card

        self.model_dir = Path(model_dir)
        self.card = card
        self.card_path = self.model_dir / "model.json"
        if runtime not in RUNTIMES:
            raise UsageError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {device!r} is not one of auto, cpu, cuda")
        self.settings = settings_from_card(card, card_path=self.card_path)
        if card.get("lesion_aggregate") not in LESION_AGGREGATES:
            raise InputError(
                f"the model aggregates slices to lesions by "
                f"{card.get('lesion_aggregate')!r}; this metcli reproduces "
                f"{' or '.join(map(repr, LESION_AGGREGATES))} only",
                path=self.card_path,
                fix="retrain the model with this metcli",
            )
        self.phases = card_phases(card)
        self.dims = int(card.get("dims", 2))
        self.classes = list(card["classes"])
        self.runtime = runtime
        if runtime == "onnx":
            self._open_onnx(providers, device)
        else:
            from metcli.cnn.gradcam import load_network
            from metcli.core.devices import torch_device

            self.torch_device = torch_device(device)
            self.net = load_network(self.model_dir, card, device=self.torch_device)
            self.provider = f"torch ({self.torch_device})"

    @classmethod
    def predict(cls, model_dir, card: dict, inputs: Sequence[Path], out_dir, **options):
        """:func:`predict_image` with ``inputs`` (RAW_DIR, LESIONS_DIR): the hook that
        metcli.prediction.predict calls."""
        from metcli.lesions.inputs import card_regions

        inputs = [Path(p) for p in inputs]
        liver = "liver" in card_regions(card, card_path=Path(model_dir) / "model.json")
        wanted = "RAW_DIR LESIONS_DIR SEG_DIR" if liver else "RAW_DIR LESIONS_DIR"
        if len(inputs) != len(wanted.split()) or not all(p.is_dir() for p in inputs):
            raise UsageError(
                f"model {card['name']} is an image model: give {wanted} "
                f"(got {len(inputs)} input(s))",
                fix=f"metcli predict MODEL_DIR {wanted} OUT_DIR"
                + (" (SEG_DIR: metcli segment's output, for the liver region)" if liver else ""),
            )
        if liver:
            options["seg_dir"] = inputs[2]
        return predict_image(model_dir, inputs[0], inputs[1], out_dir, card=card, **options)

    def _open_onnx(self, providers, device: str) -> None:
        from metcli.core.devices import deterministic_options, start_session
        from metcli.prediction.outputs import check_session

        self.session, self.provider = start_session(
            self.model_dir / "model.onnx",
            device,
            options=deterministic_options(),
            providers=providers,
        )
        check_session(self.session, self.card, self.card_path)
        self.input_name = self.card["input"]["name"]
        self.output_name = self.card["outputs"]["probabilities"]

    def lesion_inputs(self, job: ImageJob, lesion_ids: Sequence[int]):
        """The preprocessed network inputs of each lesion (:func:`model_inputs`)."""
        from metcli.imaging.channel_images import read_channel_file
        from metcli.io.files import read_image
        from metcli.lesions.inputs import model_inputs

        cts = {phase: read_channel_file(path, phase) for phase, path in job.cts.items()}
        lesion_map = read_image(job.lesion_map, what="lesion map")
        liver = None if job.liver_mask is None else read_image(job.liver_mask, what="segmentation")
        return model_inputs(
            self.card,
            cts,
            lesion_map,
            lesion_ids,
            ct_paths=job.cts,
            lesion_map_path=job.lesion_map,
            card_path=self.card_path,
            liver_mask=liver,
            liver_mask_path=job.liver_mask,
        )

    def slice_probabilities(self, images: np.ndarray, covariates=None) -> np.ndarray:
        """Class probabilities ``[n, classes]`` (float64) of network inputs ``[n, C, *spatial]``
        (``covariates``: one participant's encoded covariates, for a card with them)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        extra = []
        if covariates is not None:
            extra = [np.repeat(np.asarray(covariates, np.float32)[None], len(images), axis=0)]
        out = []
        for start in range(0, len(images), BATCH):
            batch = [images[start : start + BATCH]] + [e[start : start + BATCH] for e in extra]
            if self.runtime == "onnx":
                names = [self.input_name] + (
                    [self.card["input"]["covariates"]["name"]] if extra else []
                )
                feeds = dict(zip(names, batch))
                out.append(self.session.run([self.output_name], feeds)[0])
            else:
                import torch

                with torch.no_grad():
                    logits = self.net(*(torch.from_numpy(b).to(self.torch_device) for b in batch))
                    out.append(torch.softmax(logits, dim=1).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.classes)))
        return np.clip(np.concatenate(out).astype(np.float64), 0.0, 1.0)

    def lesion_probabilities(self, lesions, covariates=None) -> tuple[np.ndarray, list]:
        """(lesion probabilities [lesions, classes], each lesion's input probabilities).

        A lesion's probabilities are the mean over its inputs (slices; 3D: its one cube).
        """
        counts = [len(lesion.images) for lesion in lesions]
        if not counts:
            return np.zeros((0, len(self.classes))), []
        probs = self.slice_probabilities(
            np.concatenate([lesion.images for lesion in lesions]), covariates
        )
        per_lesion = np.split(probs, np.cumsum(counts)[:-1])
        return np.stack([p.mean(axis=0) for p in per_lesion]), per_lesion


def predict_image(
    model_dir,
    raw_dir,
    lesions_dir,
    out_dir,
    *,
    card: dict | None = None,
    aggregate: str = "mean",
    device: str = "auto",
    session: str | None = None,
    explain: bool = False,
    participants=None,
    participant_label: Sequence[str] | str | None = None,
    level: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    seg_dir=None,
):
    """Predict every participant of RAW_DIR/LESIONS_DIR with an image model (module docstring).

    ``seg_dir``: the segmentations whose liver a card with a liver region takes
    (``--arch almss``); ``participants``: participants.tsv with a card's covariates.

    ``participant_label`` and ``level`` choose participants and levels as in
    :func:`metcli.prediction.predict.predict`; ``threads``: PyTorch's CPU threads for the
    Grad-CAM maps of ``explain`` (None: the current number). Returns a
    :class:`~metcli.core.batch.BatchReport`; its ``outputs`` lists the files written or
    found current.
    """
    from metcli.core.batch import group_level, run_each
    from metcli.io.files import check_output_not_inside_input
    from metcli.prediction.image_run import ImageRun, run_record
    from metcli.prediction.outputs import check_run_options, load_card

    model_dir, raw_dir, lesions_dir, out_dir = (
        Path(p) for p in (model_dir, raw_dir, lesions_dir, out_dir)
    )
    labels, do_participants, do_group = check_run_options(
        aggregate, threads, participant_label, level
    )
    card = card if card is not None else load_card(model_dir)
    _check_image_card(card, model_dir)
    check_output_not_inside_input(out_dir, [model_dir, raw_dir, lesions_dir])
    jobs = _chosen_jobs(raw_dir, lesions_dir, card, session=session, labels=labels)
    if seg_dir is not None:
        add_liver_masks(jobs, Path(seg_dir))
    participants = add_covariates(jobs, card, participants)
    backend = explainer = None
    if do_participants:
        backend, explainer = _open_model(
            model_dir, card, device=device, explain=explain, threads=threads
        )
    record = run_record(
        model_dir,
        raw_dir,
        lesions_dir,
        out_dir,
        card,
        aggregate=aggregate,
        session=session,
        explain=explain,
        backend=backend,
        explainer=explainer,
        more_sources=_more_sources(seg_dir, participants),
    )
    run = ImageRun(
        card, out_dir, aggregate, overwrite, do_participants, backend, explainer, *record
    )
    run_each(
        jobs, key=lambda j: j.participant_id, work=run.work, progress=progress, report=run.report
    )
    if do_group and run.rows:
        with group_level(run.report):
            run.write_group_table()
    return run.report


def _more_sources(seg_dir, participants) -> dict[str, Path]:
    """The input roots besides the model, RAW_DIR and LESIONS_DIR: SEG_DIR, participants'."""
    roots = {"seg": seg_dir, "participants": None if participants is None else participants.parent}
    return {name: Path(path) for name, path in roots.items() if path is not None}


def add_liver_masks(jobs: Sequence[ImageJob], seg_dir: Path) -> None:
    """Each job's segmentation: the ``dseg`` of its lesion map's participant, session and
    phase in ``seg_dir``; a job without one fails alone."""
    from metcli.io.bids import find_files

    found = {a.entities.key: a.path for a in find_files(seg_dir, suffix="dseg", desc=None)}
    for job in jobs:
        if job.problem is None and job.key not in found:
            job.problem = InputError(
                f"{job.participant_id}: no segmentation (dseg) of its lesion map's phase",
                path=seg_dir,
                fix="give the folder metcli segment wrote for these CTs as SEG_DIR",
            )
        job.liver_mask = found.get(job.key)


def add_covariates(jobs: Sequence[ImageJob], card: dict, participants) -> Path | None:
    """Each job's covariates by the card's spec (a participant lacking one fails alone);
    participants.tsv's path, or None for a card without covariates."""
    spec = card.get("covariates")
    if not spec:
        if participants is not None:
            log.warning("model %s uses no covariates; --participants is not used", card["name"])
        return None
    from metcli.cnn.clinical import encode_for_card
    from metcli.io.participants import read_label_rows

    columns = ", ".join(sorted({item["column"] for item in spec}))
    if participants is None:
        raise UsageError(
            f"model {card['name']} uses covariates ({columns})",
            fix="give participants.tsv with --participants",
        )
    path = Path(participants)
    path = path / "participants.tsv" if path.is_dir() else path
    rows = {r["participant_id"]: r for r in read_label_rows(path, None)}
    for job in jobs:
        job.participants = path
        try:
            job.covariates = encode_for_card(
                spec, {job.participant_id: rows.get(job.participant_id, {})}, path
            )[job.participant_id]
        except InputError as exc:
            if job.problem is None:
                job.problem = exc
    return path


def _check_image_card(card: dict, model_dir: Path) -> None:
    if card.get("kind") != "image":
        raise InputError(
            f"model {card['name']} is a {card.get('kind')} model, not an image model",
            path=model_dir,
            fix="use metcli predict MODEL_DIR FEATURES OUT_DIR",
        )


def _chosen_jobs(
    raw_dir: Path, lesions_dir: Path, card: dict, *, session: str | None, labels: list[str] | None
) -> list[ImageJob]:
    """The image jobs of the chosen participants (all without ``labels``)."""
    from metcli.io.bids import select_participants
    from metcli.lesions.inputs import card_phases

    jobs = find_image_jobs(raw_dir, lesions_dir, session=session, phases=card_phases(card))
    if labels:
        chosen = set(
            select_participants([j.participant_id[4:] for j in jobs], labels, where=lesions_dir)
        )
        jobs = [j for j in jobs if j.participant_id[4:] in chosen]
    return jobs


def _open_model(model_dir: Path, card: dict, *, device: str, explain: bool, threads: int | None):
    """The ONNX backend and, with ``explain``, the Grad-CAM explainer."""
    backend = ImageBackend(model_dir, card, device=device)
    explainer = _explainer(model_dir, card, device, threads) if explain else None
    log.info("running %s on %s", card["name"], backend.provider)
    return backend, explainer


def _explainer(model_dir: Path, card: dict, device: str, threads: int | None = None):
    from metcli.cnn.gradcam import GradCam, load_network
    from metcli.core.devices import torch_device

    net = load_network(model_dir, card, device=torch_device(device))
    # a two-step model: the maps of step 1's features, for the chained probability
    step = "step1" if card.get("hierarchy") else None
    if card.get("network"):  # a multi-branch network: one map per phase
        from metcli.cnn.gradcam_phases import PhaseGradCam

        return PhaseGradCam(net, threads=threads, step=step)
    prefix = "" if step is None else f"steps.{step}."
    return GradCam(net, card["architecture"], threads=threads, prefix=prefix)
