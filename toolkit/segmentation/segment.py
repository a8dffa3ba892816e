"""Liver and lesion segmentation of every CT of a raw dataset (``metcli segment``).

For each CT (``rawdata/sub-<id>/[ses-<s>/]anat/..._ct.nii.gz``) :func:`segment` writes
``OUT_DIR/sub-<id>/[ses-<s>/]anat/..._dseg.nii.gz`` with metcli's labels (0
background, 1 liver, 2 lesion) on the exact grid of the CT, and a JSON sidecar
that names the model and its sha256; at the group level it writes the label
table ``dseg.tsv``.

The model is resolved by :func:`metcli.segmentation.models.resolve_segmentation_model`:
a name of the weights manifest (default: the demo model that ships with metcli,
which only knows synthetic phantoms) or a folder. The backend (``--backend``) is
an entry of the registry :mod:`metcli.segmentation.backends`: ``nnunet`` (nnU-Net's
own predictor on an nnU-Net v2 folder) or ``onnx`` (ONNX Runtime on a folder written
by ``metcli export-onnx``), or one registered by the user. Every backend returns
the model's own labels; a label map translates them into metcli's
(:mod:`metcli.segmentation.labelmaps`).

The model is loaded once per run, and only when some CT needs segmenting (a
re-run whose outputs are all current does not load it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from metcli.core.batch import DONE, FAILED, SKIPPED, BatchReport, group_level, run_each
from metcli.core.errors import GeometryError, InputError, MetcliError, UsageError
from metcli.imaging.labels import LABELS, LESION, LIVER
from metcli.io.bids import (
    DICOM_EXTENSION,
    Acquisition,
    derivative_path,
    find_files,
    resolve_levels,
    select_from_folder,
    sidecar_path,
)
from metcli.segmentation.backends import Segmenter, get_backend
from metcli.segmentation.labelmaps import apply_label_map, resolve_label_map
from metcli.segmentation.models import (
    SegmentationModel,
    load_segmenter,
    model_labels_of,
    resolve_segmentation_model,
)
from metcli.segmentation.orientation import AS_STORED

log = logging.getLogger(__name__)

COMMAND = "segment"
DEVICES = ("auto", "cpu", "cuda")
SEG_SUFFIX = "dseg"
CT_SUFFIX = "ct"
_DESCRIPTION = "liver and lesion segmentation (0 background, 1 liver, 2 lesion)"


# ============================================================================ the command
def check_settings(*, backend: str, device: str, tta: bool, step_size: float) -> None:
    """Refuse an unknown backend or device, a step size outside (0, 1], a tta not a bool."""
    get_backend(backend)
    if device not in DEVICES:
        raise UsageError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if (
        isinstance(step_size, bool)
        or not isinstance(step_size, (int, float))
        or not 0 < float(step_size) <= 1
    ):
        raise UsageError(
            f"--step-size must be a number in (0, 1], got {step_size!r}",
            fix="use 0.5 (nnU-Net's default), or up to 1 for speed",
        )
    if not isinstance(tta, bool):
        raise UsageError(f"tta must be true or false, got {tta!r}")


def output_path(out_dir: Path, acq: Acquisition) -> Path:
    """``OUT_DIR/sub-<id>/[ses-<s>/]anat/<ct name with _dseg>.nii.gz``."""
    return derivative_path(out_dir, acq.entities, suffix=SEG_SUFFIX, extension=".nii.gz")


def dicom_seg_path(out_dir: Path, acq: Acquisition) -> Path:
    """``OUT_DIR/sub-<id>/[ses-<s>/]anat/<ct name with _dseg>.dcm`` (``--dicom-seg``)."""
    return derivative_path(out_dir, acq.entities, suffix=SEG_SUFFIX, extension=DICOM_EXTENSION)


def find_cts(raw_dir: Path, participants: Sequence[str] | None) -> list[Acquisition]:
    """The CTs of the given participants (all participants: None)."""
    return find_files(Path(raw_dir), suffix=CT_SUFFIX, participants=participants)


def select(raw_dir: Path, participants: Sequence[str] | None) -> list[str]:
    """The participant labels of ``raw_dir`` to process (all, or the requested ones)."""
    return select_from_folder(
        raw_dir,
        participants,
        what="raw dataset folder",
        fix="give the rawdata folder (sub-*/anat/*_ct.nii.gz)",
    )


def segment(
    raw_dir,
    out_dir,
    *,
    model: str | Path | None = None,
    backend: str = "nnunet",
    device: str = "auto",
    folds: Sequence[int | str] | None = None,
    tta: bool = True,
    step_size: float = 0.5,
    label_map: str | Mapping | None = None,
    orientation: str | None = None,
    participants: Sequence[str] | str | None = None,
    level: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    dicom_seg: bool = False,
) -> BatchReport:
    """Segment liver and lesions in every CT of ``raw_dir`` into ``out_dir``.

    The options are those of ``metcli segment`` (docs/segment.md):
    ``model`` a weights-manifest name or a model folder (None: the demo model,
    :data:`metcli.segmentation.models.DEFAULT_MODEL`, synthetic phantoms only);
    ``backend`` a registered backend (:mod:`metcli.segmentation.backends`);
    ``device`` ``auto``, ``cpu`` or ``cuda``; ``folds`` the nnU-Net folds to ensemble
    (None: all); ``tta`` mirroring; ``step_size`` the sliding-window step (fraction
    of the patch); ``label_map`` the translation of the model's labels
    (:func:`metcli.segmentation.labelmaps.resolve_label_map`); ``orientation`` what
    CTs are brought to first (None: the model's own); ``participants`` and ``level``
    as in every per-participant command; ``threads`` the network's CPU threads (not
    a setting of the skip rule); ``progress`` called with (item, status) per CT;
    ``dicom_seg`` also writes ``..._dseg.dcm``, a DICOM-SEG referring to the CT's series
    (:mod:`metcli.imaging.dicom.seg_out`; a CT not from ``import-dicom`` fails).

    Returns a :class:`~metcli.core.batch.BatchReport` with one entry per CT (an
    unreadable or unusable CT fails that entry only). Raises :class:`UsageError` for
    bad settings, an unknown model name or participant, or the output inside the
    input; :class:`InputError` for a model folder that is incomplete or does not
    match its sha256.
    """
    from metcli.core.threads import check_threads
    from metcli.imaging.labels import write_label_table
    from metcli.io.files import check_output_not_inside_input

    check_settings(backend=backend, device=device, tta=tta, step_size=step_size)
    check_threads(threads)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    labels = [participants] if isinstance(participants, str) else participants
    do_participants, do_group = resolve_levels(level, labels)
    chosen = select(raw_dir, labels)
    check_output_not_inside_input(out_dir, [raw_dir])
    report = BatchReport()

    if do_participants:
        resolved = resolve_segmentation_model(
            model, backend=backend, folds=folds, orientation=orientation
        )
        _segment_participants(
            raw_dir,
            out_dir,
            chosen,
            resolved,
            label_map=label_map,
            device=device,
            tta=bool(tta),
            step_size=float(step_size),
            threads=threads,
            overwrite=overwrite,
            progress=progress,
            report=report,
            dicom_seg=bool(dicom_seg),
        )
    if do_group:
        with group_level(report):
            out_dir.mkdir(parents=True, exist_ok=True)
            if not (out_dir / "dataset_description.json").is_file():
                _write_description(out_dir, raw_dir)
            report.outputs.append(write_label_table(out_dir))
    return report


def _write_description(out_dir: Path, raw_dir: Path) -> None:
    from metcli.io.provenance import write_dataset_description

    write_dataset_description(
        out_dir, name="metcli segment", sources={"raw": raw_dir}, description=_DESCRIPTION
    )


def _segment_participants(
    raw_dir: Path,
    out_dir: Path,
    chosen: Sequence[str],
    model: SegmentationModel,
    *,
    label_map,
    device: str,
    tta: bool,
    step_size: float,
    threads: int | None,
    overwrite: bool,
    progress,
    report: BatchReport,
    dicom_seg: bool = False,
) -> None:
    """The participant level: every CT of ``chosen`` segmented (or skipped) into ``report``."""
    from metcli.io.provenance import Step

    mapping = resolve_label_map(model_labels_of(model), label_map, manifest_map=model.manifest_map)
    settings = {
        "model_sha256": model.sha256,
        "backend": model.backend,
        "folds": model.folds,
        "tta": tta,
        "step_size": step_size,
        "orientation": model.orientation or AS_STORED,
        "label_map": {str(k): v for k, v in mapping.items()},
    }
    if dicom_seg:  # only then: outputs made without it stay current
        settings["dicom_seg"] = True
    step = Step(COMMAND, out_dir, {"raw": raw_dir}, settings)
    _write_description(out_dir, raw_dir)
    acquisitions = find_cts(raw_dir, chosen)
    found = {a.entities.sub for a in acquisitions}
    for label in chosen:
        if label not in found:
            error = InputError(
                f"no sub-{label}[_ses-<s>][_ce-<phase>]_ct.nii.gz found",
                path=raw_dir / f"sub-{label}",
                fix="add the CT, or leave this participant out",
            )
            log.error("sub-%s: %s", label, error.one_line())
            report.record(f"sub-{label}", FAILED, error.one_line())
    runner = _Runner(
        step,
        out_dir,
        model,
        mapping,
        overwrite=overwrite,
        device=device,
        tta=tta,
        step_size=step_size,
        report=report,
        threads=threads,
        dicom_seg=dicom_seg,
    )
    runner.prepare(acquisitions)
    run_each(
        acquisitions,
        key=lambda a: a.entities.describe(),
        work=runner.work,
        progress=progress,
        report=report,
    )


class _Runner:
    """Per-CT work of one run; the model is loaded once, before the first CT needing it."""

    def __init__(
        self,
        step,
        out_dir: Path,
        model: SegmentationModel,
        mapping: dict[int, int],
        *,
        overwrite: bool,
        device: str,
        tta: bool,
        step_size: float,
        report: BatchReport,
        threads: int | None = None,
        dicom_seg: bool = False,
    ):
        self.step, self.out_dir, self.model, self.mapping = step, out_dir, model, mapping
        self.overwrite, self.device, self.tta, self.step_size = overwrite, device, tta, step_size
        self.report, self.threads, self.dicom_seg = report, threads, dicom_seg
        self.segmenter: Segmenter | None = None
        self._inputs: dict[Path, list[dict]] = {}
        self._sources: dict[Path, dict] = {}

    def _inputs_of(self, acq: Acquisition) -> list[dict]:
        """The CT (and with ``dicom_seg`` its sidecar, which holds DicomSource)."""
        if acq.path not in self._inputs:
            paths = [acq.path]
            if self.dicom_seg:  # a CT without DicomSource fails here, before the model runs
                from metcli.imaging.dicom.source import read_dicom_source

                self._sources[acq.path] = read_dicom_source(acq.path)
                paths.append(sidecar_path(acq.path))
            self._inputs[acq.path] = self.step.inputs(paths)
        return self._inputs[acq.path]

    def _outputs(self, acq: Acquisition) -> list[Path]:
        out_image = output_path(self.out_dir, acq)
        extra = [dicom_seg_path(self.out_dir, acq)] if self.dicom_seg else []
        return [out_image, *extra, sidecar_path(out_image)]

    def _write_dicom_seg(self, outs, acq: Acquisition, dseg) -> tuple[dict[Path, Path], dict]:
        """The DICOM-SEG of ``dseg`` through ``outs``: ({final path: temporary path}, what
        the sidecar records of it)."""
        from metcli.imaging.dicom.seg_out import write_dseg_seg

        final = dicom_seg_path(self.out_dir, acq)
        tmp = outs.path(final)
        record = write_dseg_seg(
            dseg,
            self._sources[acq.path],
            tmp,
            model=self.model.name,
            model_sha256=self.model.sha256,
            where=acq.path,
        )
        return {final: tmp}, record

    def _done(self, acq: Acquisition) -> bool:
        if self.overwrite:
            return False
        sidecar = sidecar_path(output_path(self.out_dir, acq))
        return self.step.is_done(sidecar, self._inputs_of(acq))

    def prepare(self, acquisitions: Sequence[Acquisition]) -> None:
        """Load the model if some CT needs it (errors here stop the run: exit 1)."""
        needed = False
        for acq in acquisitions:
            try:
                if not self._done(acq):
                    needed = True
                    break
            except (MetcliError, OSError):
                needed = True
                break
        if needed:
            self.segmenter = load_segmenter(
                self.model,
                device=self.device,
                tta=self.tta,
                step_size=self.step_size,
                threads=self.threads,
            )
            self.device_used = str(self.segmenter.device)

    def work(self, acq: Acquisition) -> str:
        from metcli.imaging.geometry import grid_difference
        from metcli.io.files import OutputSet, read_image, write_image_to
        from metcli.segmentation.streaming import check_ct_image

        out_image = output_path(self.out_dir, acq)
        sidecar = sidecar_path(out_image)
        inputs = self._inputs_of(acq)
        if self._done(acq):
            self.report.outputs.extend(self._outputs(acq))
            return SKIPPED
        ct = read_image(acq.path, what="CT")
        try:
            check_ct_image(ct)
            labels = self.segmenter.predict(ct)
        except MetcliError as exc:
            if exc.path is None:
                raise type(exc)(exc.what, path=acq.path, fix=exc.fix) from None
            raise
        dseg = apply_label_map(labels, self.mapping)
        difference = grid_difference(dseg, ct)
        if difference is not None:
            raise GeometryError(
                f"the {self.model.backend} backend returned a segmentation on "
                f"another grid than the CT's ({difference})",
                path=acq.path,
                fix="report this bug",
            )
        counts = _label_counts(_array(dseg))
        extra = {
            "Description": "Liver and lesion segmentation (0 background, 1 liver, 2 lesion) on "
            "the CT's grid",
            "Labels": {str(k): v for k, v in LABELS.items()},
            "Model": self.model.name,
            "Backend": self.model.backend,
            "Device": getattr(self, "device_used", self.device),
            "ModelLabelMap": {str(k): v for k, v in self.mapping.items()},
            "LiverVoxels": int(counts[LIVER]),
            "LesionVoxels": int(counts[LESION]),
        }
        extra.update(self.segmenter.sidecar_fields())  # not settings of the skip rule
        with OutputSet() as outs:
            tmp_image = outs.path(out_image)
            write_image_to(dseg, tmp_image)
            produced = {out_image: tmp_image}
            if self.dicom_seg:
                dcm, extra["DicomSeg"] = self._write_dicom_seg(outs, acq, dseg)
                produced.update(dcm)
            self.step.write_sidecar(
                outs, sidecar, inputs, produced, extra=extra, models=[self.model.record()]
            )
        log.info(
            "%s: liver %d voxels, lesion %d voxels",
            acq.entities.describe(),
            counts[LIVER],
            counts[LESION],
        )
        self.report.outputs.extend(self._outputs(acq))
        return DONE


def _label_counts(array: np.ndarray) -> np.ndarray:
    """Voxels per label value (at least 0, 1, 2) of a label array, slab by slab: a
    bincount of the whole array would first convert it to int64 (8 bytes a voxel)."""
    from metcli.segmentation.streaming import BLOCK_VOXELS

    counts = np.zeros(3, dtype=np.int64)
    step = max(1, BLOCK_VOXELS // max(1, int(np.prod(array.shape[1:]))))
    for first in range(0, array.shape[0], step):
        part = np.bincount(array[first : first + step].ravel())
        if len(part) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(part) - len(counts), np.int64)])
        counts[: len(part)] += part
    return counts


def _array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(image)
