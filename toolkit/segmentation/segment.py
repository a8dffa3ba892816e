"""Liver and lesion segmentation of every CT of a raw dataset (``metcli segment``).

For each CT (``rawdata/sub-<id>/[ses-<s>/]anat/..._ct.nii.gz``) :func:`segment` writes
``OUT_DIR/sub-<id>/[ses-<s>/]anat/..._dseg.nii.gz`` with metcli's labels (0
background, 1 liver, 2 lesion) on the exact grid of the CT, and a JSON sidecar
that names the model and its sha256; at the group level it writes the label
table ``dseg.tsv``.

The model is an nnU-Net v2 trained-model folder (``--backend nnunet``: nnU-Net's
own predictor, :class:`metcli.segmentation.nnunet.NnunetSegmenter`) or a folder written
by ``metcli export-onnx`` (``--backend onnx``:
:class:`metcli.segmentation.onnx.OnnxSegmenter`). It is named in the weights manifest
(default: the demo model that ships with metcli, which only knows synthetic
phantoms) or given by path. Both backends return the model's own labels; a label
map translates them into metcli's (see :func:`resolve_label_map`).

The model is loaded once per run, and only when some CT needs segmenting (a
re-run whose outputs are all current does not load it). The model's identity
in provenance and in the skip rule is :func:`model_digest`: the sha256 of the
list of its files and their sha256.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from metcli.core.batch import DONE, FAILED, SKIPPED, BatchReport, run_each
from metcli.io.bids import (Acquisition, derivative_path, find_files, participant_folders,
                         resolve_levels, select_participants, sidecar_path)
from metcli.imaging.labels import BACKGROUND, LABELS, LESION, LIVER
from metcli.core.errors import GeometryError, InputError, MetcliError, UsageError

log = logging.getLogger(__name__)

COMMAND = "segment"
DEFAULT_MODEL = "metcli-demo-nnunet"
BACKENDS = ("nnunet", "onnx")
DEVICES = ("auto", "cpu", "cuda")
AS_STORED = "as-stored"
SEG_SUFFIX = "dseg"
CT_SUFFIX = "ct"
#: Model label names read as metcli's labels when no label map is given.
LABEL_ALIASES = {
    "liver": LIVER,
    "lesion": LESION, "lesions": LESION, "tumor": LESION, "tumour": LESION,
    "liver_tumor": LESION, "liver_tumour": LESION, "liver_lesion": LESION,
    "cancer": LESION, "metastasis": LESION, "metastases": LESION,
}
_METCLI_NAMES = {name: value for value, name in LABELS.items()}
_SUMS_FILE = "SHA256SUMS"


# ============================================================================ label maps
def parse_label_map(spec: str | Mapping[Any, Any] | None) -> list[tuple[str, int]] | None:
    """``"liver=liver,liver_tumor=lesion"`` (or ``"5=1,2=lesion"``) as (model key, metcli value).

    The left side is a model label name or value; the right side a metcli label name
    (background, liver, lesion) or value (0, 1, 2). A mapping is taken as it is.
    """
    if spec is None:
        return None
    items = spec.items() if isinstance(spec, Mapping) else None
    if items is None:
        text = str(spec).strip()
        if not text:
            return None
        items = []
        for part in text.split(","):
            left, sep, right = part.partition("=")
            if not sep or not left.strip() or not right.strip():
                raise UsageError(f"--label-map entry {part.strip()!r} is not MODEL=METCLI",
                                 fix="write it as 'liver=liver,liver_tumor=lesion' (model label "
                                     "name or value = background, liver or lesion)")
            items.append((left.strip(), right.strip()))
    out = []
    for left, right in items:
        target = str(right).strip().lower()
        if target in _METCLI_NAMES:
            value = _METCLI_NAMES[target]
        elif target.isdigit() and int(target) in LABELS:
            value = int(target)
        else:
            raise UsageError(f"--label-map target {right!r} is not a metcli label",
                             fix="use background, liver or lesion (or 0, 1, 2)")
        out.append((str(left).strip(), value))
    return out


def resolve_label_map(model_labels: Mapping[str, int], spec=None, *,
                      manifest_map: Mapping[int, int] | None = None) -> dict[int, int]:
    """Model label value -> metcli label value; unlisted model labels become background.

    In order: the ``spec`` of ``--label-map`` (:func:`parse_label_map`), the model's
    manifest entry, or the model's label names (``liver``, and ``lesion`` or a
    synonym in :data:`LABEL_ALIASES`). At least one model label must become liver
    or lesion.
    """
    values = {int(v) for v in model_labels.values()}
    shown = ", ".join(f"{name}={value}" for name, value in model_labels.items())
    parsed = parse_label_map(spec)
    if parsed is not None:
        mapping: dict[int, int] = {}
        for key, target in parsed:
            if key in model_labels:
                source = int(model_labels[key])
            elif key.isdigit() and int(key) in values:
                source = int(key)
            else:
                raise UsageError(f"--label-map: the model has no label {key!r}",
                                 fix=f"use its label names or values: {shown}")
            if source in mapping and mapping[source] != target:
                raise UsageError(f"--label-map maps model label {key!r} twice")
            mapping[source] = target
        how = "--label-map"
    elif manifest_map is not None:
        mapping = {int(k): int(v) for k, v in manifest_map.items()}
        how = "the weights manifest"
    else:
        mapping = {}
        for name, value in model_labels.items():
            target = LABEL_ALIASES.get(str(name).strip().lower())
            if target is not None:
                mapping[int(value)] = target
        how = "the model's label names"
    mapping = {k: v for k, v in mapping.items() if v != BACKGROUND}
    if not mapping:
        raise UsageError(f"no label of the model ({shown}) becomes liver or lesion (from {how})",
                         fix="give --label-map, for example 'liver=liver,liver_tumor=lesion'")
    targets = set(mapping.values())
    if LIVER not in targets or LESION not in targets:
        missing = "liver" if LIVER not in targets else "lesion"
        log.warning("the model's labels (%s) give no %s label (from %s): the segmentations "
                    "will have none", shown, missing, how)
    return dict(sorted(mapping.items()))


def apply_label_map(label_image, mapping: Mapping[int, int]):
    """A uint8 metcli label image from a model's label image (same grid)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(label_image)
    if array.size and array.min() < 0:
        raise InputError(f"the model wrote a negative label ({int(array.min())})")
    top = int(array.max()) if array.size else 0
    lut = np.zeros(max(top, max(mapping, default=0)) + 1, np.uint8)
    for source, target in mapping.items():
        lut[source] = target
    out = sitk.GetImageFromArray(lut[array])
    out.CopyInformation(label_image)
    return out


# ============================================================================ models
@dataclass
class SegmentationModel:
    """A resolved model: where it is, what identifies it, how its labels translate."""

    name: str
    path: Path
    backend: str
    files: dict[str, str]            #: relative path -> sha256 of the files in use
    sha256: str                      #: :func:`model_digest` of ``files``
    manifest_map: dict[int, int] | None = None
    from_manifest: bool = False
    folds: list[str] | None = None
    orientation: str | None = None   #: code CTs are brought to first; None = as stored
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The sidecar's ``models`` entry."""
        return {"name": self.name, "sha256": self.sha256, "backend": self.backend,
                "source": "manifest" if self.from_manifest else "path",
                "folds": self.folds, "orientation": self.orientation or AS_STORED,
                "files": self.files}


def model_digest(files: Mapping[str, str]) -> str:
    """sha256 of ``"<sha256>  <relative path>\\n"`` lines, sorted by path (sha256sum's format)."""
    text = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _model_files(path: Path, backend: str, folds: Sequence[str] | None) -> list[str]:
    if backend == "nnunet":
        from metcli.segmentation.nnunet import CHECKPOINT_NAME

        return ["dataset.json", "plans.json",
                *(f"fold_{fold}/{CHECKPOINT_NAME}" for fold in folds or [])]
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in
                                             p.relative_to(path).parts))


def _check_sums_file(path: Path, files: Mapping[str, str]) -> None:
    """Check files against the folder's SHA256SUMS (shipped models the manifest has no sums for)."""
    sums = path / _SUMS_FILE
    if not sums.is_file():
        return
    expected = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([0-9a-f]{64})\s+\*?(.+)$", line.strip())
        if match:
            expected[match.group(2)] = match.group(1)
    bad = sorted(name for name, digest in files.items()
                 if name in expected and expected[name] != digest)
    if bad:
        raise InputError(f"the model's files do not match its {_SUMS_FILE}: {', '.join(bad)}",
                         path=path, fix="reinstall metcli (the shipped model was changed)")


def resolve_segmentation_model(model: str | Path | None, *, backend: str = "nnunet",
                               folds: Sequence[int | str] | None = None,
                               orientation: str | None = None) -> SegmentationModel:
    """The model of ``--model`` (a manifest name or a folder), checked and hashed.

    A name must be in the weights manifest (an unknown name lists the known ones)
    and its files must match the manifest's sha256 (a shipped model the manifest
    has no sums for is checked against its ``SHA256SUMS``). A folder is the user's
    own: an nnU-Net v2 trained-model folder for the nnunet backend, a
    ``metcli export-onnx`` folder for the onnx backend.

    ``orientation`` (a three-letter code or ``as-stored``) is what CTs are brought
    to before the network sees them. None: an ONNX export's own (fixed at export),
    a manifest model's ``input.orientation``, else ``as-stored`` (nnU-Net's own
    behaviour for a folder the user names). Both backends then see the same arrays.
    """
    from metcli.io import weights
    from metcli.io.files import sha256_file

    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    text = DEFAULT_MODEL if model is None or str(model).strip() == "" else str(model)
    from_manifest = not weights.names_a_path(model if isinstance(model, Path) else text)
    entry = None
    if from_manifest:
        try:
            entry = weights.get_entry(text)
        except weights.WeightsError as exc:
            if "unknown model name" not in exc.what:
                raise
            raise UsageError(f"--model: {exc.what}", fix=exc.fix) from None
    path = weights.resolve_model(text)
    name = entry.name if entry is not None else path.name
    manifest_map = entry.label_map if entry is not None else None

    if backend == "nnunet":
        from metcli.segmentation.nnunet import read_model_folder, resolve_folds

        if (path / "preprocessing.json").is_file() and not (path / "plans.json").is_file():
            raise UsageError(f"{path.name} is an ONNX export, not an nnU-Net model folder",
                             fix="use --backend onnx with it, or give an nnU-Net v2 model folder")
        read_model_folder(path)
        used_folds = resolve_folds(path, folds)
        if orientation is None:
            orientation = ((entry.get("input") or {}).get("orientation") if entry is not None
                           else None) or AS_STORED
    else:
        if folds:
            raise UsageError("--folds applies to the nnunet backend only (an ONNX export holds "
                             "the folds it was exported with)")
        if not (path / "preprocessing.json").is_file() and (path / "plans.json").is_file():
            raise UsageError(f"{name} is an nnU-Net model folder, not an ONNX export",
                             fix=f"export it first (metcli export-onnx {path} ONNX_DIR) and give "
                                 "ONNX_DIR, or use --backend nnunet")
        used_folds = None
        orientation = _export_orientation(path, orientation)
    orientation = _check_orientation(orientation)
    relpaths = _model_files(path, backend, used_folds)
    files = {}
    for rel in relpaths:
        target = path / rel
        if not target.is_file():
            raise InputError(f"the model folder has no {rel}", path=path,
                             fix="give a complete model folder")
        files[rel] = sha256_file(target)
    if entry is not None and entry.shipped and not entry.get("files"):
        _check_sums_file(path, files)
    return SegmentationModel(name=name, path=path, backend=backend, files=files,
                             sha256=model_digest(files), manifest_map=manifest_map,
                             from_manifest=entry is not None, folds=used_folds,
                             orientation=orientation)


def _check_orientation(code: str) -> str | None:
    """``as-stored`` -> None; a valid three-letter code -> itself, upper-case."""
    if str(code).strip().lower() == AS_STORED:
        return None
    from metcli.segmentation.onnx import orientation_transform

    code = str(code).strip().upper()
    if len(code) != 3:
        raise UsageError(f"--orientation {code!r} is not a three-letter code or {AS_STORED}",
                         fix="use for example LPS, RAS, or as-stored")
    orientation_transform((1, 0, 0, 0, 1, 0, 0, 0, 1), code)  # raises UsageError if invalid
    return code


def _export_orientation(path: Path, wanted: str | None) -> str:
    """The orientation an ONNX export was made for; another one asked for is refused."""
    from metcli.io.files import read_json

    spec = read_json(path / "preprocessing.json")
    axes = spec.get("axes") if isinstance(spec, dict) else None
    own = (axes or {}).get("orientation") if isinstance(axes, dict) else None
    own = AS_STORED if own is None else str(own)
    if wanted is not None and str(wanted).strip().upper() != own.upper():
        raise UsageError(f"--orientation {wanted} differs from the {own} the ONNX export was "
                         "made for", fix=f"leave --orientation out, or export again with "
                                         f"metcli export-onnx --orientation {wanted}")
    return own


def model_labels_of(model: SegmentationModel) -> dict[str, int]:
    """The model's labels {name: value}, read from its folder without loading it."""
    from metcli.io.files import read_json

    if model.backend == "nnunet":
        from metcli.segmentation.nnunet import model_labels, read_model_folder

        dataset, _plans = read_model_folder(model.path)
        return model_labels(dataset, path=model.path / "dataset.json")
    spec = read_json(model.path / "preprocessing.json")
    labels = spec.get("labels") if isinstance(spec, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError("preprocessing.json has no labels", path=model.path,
                         fix="export the model again with metcli export-onnx")
    return {str(k): int(v) for k, v in labels.items()}


def load_segmenter(model: SegmentationModel, *, device: str = "auto", tta: bool = True,
                   step_size: float = 0.5, threads: int | None = None):
    """The backend's segmenter for ``model`` (loaded once; ``predict(ct)`` per CT).

    ``threads``: CPU threads of the network: PyTorch's for the nnU-Net backend
    (None: torch's current number), ONNX Runtime's intra-op threads for the ONNX
    backend (None: its own choice).
    """
    if model.backend == "nnunet":
        from metcli.segmentation.nnunet import NnunetSegmenter

        return NnunetSegmenter(model.path, device=device, folds=model.folds, tta=tta,
                               step_size=step_size, orientation=model.orientation,
                               threads=threads)
    from metcli.segmentation.onnx import OnnxSegmenter

    return OnnxSegmenter(model.path, device=device, tta=tta, step_size=step_size,
                         threads=threads)


# ============================================================================ the command
def check_settings(*, backend: str, device: str, tta: bool, step_size: float) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise UsageError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or \
            not 0 < float(step_size) <= 1:
        raise UsageError(f"--step-size must be a number in (0, 1], got {step_size!r}",
                         fix="use 0.5 (nnU-Net's default), or up to 1 for speed")
    if not isinstance(tta, bool):
        raise UsageError(f"tta must be true or false, got {tta!r}")


def output_path(out_dir: Path, acq: Acquisition) -> Path:
    """``OUT_DIR/sub-<id>/[ses-<s>/]anat/<ct name with _dseg>.nii.gz``."""
    return derivative_path(out_dir, acq.entities, suffix=SEG_SUFFIX, extension=".nii.gz")


def find_cts(raw_dir: Path, participants: Sequence[str] | None) -> list[Acquisition]:
    return find_files(Path(raw_dir), suffix=CT_SUFFIX, participants=participants)


def select(raw_dir: Path, participants: Sequence[str] | None) -> list[str]:
    """The participant labels of ``raw_dir`` to process (all, or the requested ones)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise InputError("the raw dataset folder does not exist", path=raw_dir,
                         fix="give the rawdata folder (sub-*/anat/*_ct.nii.gz)")
    available = participant_folders(raw_dir)
    if not available:
        raise InputError("no sub-* participant folders found", path=raw_dir,
                         fix="give the rawdata folder (sub-*/anat/*_ct.nii.gz)")
    return select_participants(available, list(participants) if participants else None,
                               where=raw_dir)


def segment(raw_dir, out_dir, *, model: str | Path | None = None, backend: str = "nnunet",
            device: str = "auto", folds: Sequence[int | str] | None = None, tta: bool = True,
            step_size: float = 0.5, label_map: str | Mapping | None = None,
            orientation: str | None = None,
            participants: Sequence[str] | str | None = None, level: str | None = None,
            threads: int | None = None, overwrite: bool = False,
            progress: Callable[[str, str], None] | None = None) -> BatchReport:
    """Segment liver and lesions in every CT of ``raw_dir`` into ``out_dir``.

    Args:
        raw_dir: the raw dataset (``sub-<id>/[ses-<s>/]anat/..._ct.nii.gz``).
        out_dir: the derivatives folder to write (not inside ``raw_dir``, except under
            ``raw_dir/derivatives``).
        model: a weights-manifest name or a model folder; None = the demo model
            (:data:`DEFAULT_MODEL`, synthetic phantoms only).
        backend: ``nnunet`` (nnU-Net's predictor) or ``onnx`` (an export-onnx folder).
        device: ``auto``, ``cpu`` or ``cuda``.
        folds: nnU-Net folds to ensemble; None = all folds of the folder.
        tta: mirroring test-time augmentation.
        step_size: sliding-window step (fraction of the patch, nnU-Net's 0.5).
        label_map: translation of the model's labels (see :func:`resolve_label_map`).
        orientation: what CTs are brought to before the network sees them (a
            three-letter code or ``as-stored``); None = the model's own (see
            :func:`resolve_segmentation_model`).
        participants: labels to process (with or without ``sub-``); None = all.
        level: ``participant``, ``group`` or ``both``; None = both, or only the
            participant level when ``participants`` are given.
        threads: PyTorch's CPU threads of the nnU-Net backend (recorded in the
            sidecars as ``TorchThreads``, not a setting of the skip rule); None =
            torch's current number (:mod:`metcli.core.threads`).
        overwrite: redo outputs that are already done.
        progress: called with (item, status) after each CT.

    Returns:
        A :class:`~metcli.core.batch.BatchReport` with one entry per CT (``sub-001
        portal``); an unreadable or unusable CT fails that entry only.

    Raises:
        UsageError: bad settings, an unknown model name (the message lists the known
            ones), an unknown participant, the output inside the input.
        InputError: a model folder that is incomplete (no plans.json...) or does not
            match its sha256.
    """
    from metcli.imaging.labels import write_label_table
    from metcli.io.files import check_output_not_inside_input
    from metcli.io.provenance import Step, write_dataset_description

    check_settings(backend=backend, device=device, tta=tta, step_size=step_size)
    from metcli.core.threads import check_threads

    check_threads(threads)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    labels = [participants] if isinstance(participants, str) else participants
    do_participants, do_group = resolve_levels(level, labels)
    chosen = select(raw_dir, labels)
    check_output_not_inside_input(out_dir, [raw_dir])
    report = BatchReport()

    if do_participants:
        resolved = resolve_segmentation_model(model, backend=backend, folds=folds,
                                              orientation=orientation)
        mapping = resolve_label_map(model_labels_of(resolved), label_map,
                                    manifest_map=resolved.manifest_map)
        settings = {"model_sha256": resolved.sha256, "backend": backend,
                    "folds": resolved.folds, "tta": bool(tta), "step_size": float(step_size),
                    "orientation": resolved.orientation or AS_STORED,
                    "label_map": {str(k): v for k, v in mapping.items()}}
        step = Step(COMMAND, out_dir, {"raw": raw_dir}, settings)
        write_dataset_description(out_dir, name="metcli segment", sources={"raw": raw_dir},
                                  description="liver and lesion segmentation (0 background, "
                                              "1 liver, 2 lesion)")
        acquisitions = find_cts(raw_dir, chosen)
        found = {a.entities.sub for a in acquisitions}
        for label in chosen:
            if label not in found:
                error = InputError(f"no sub-{label}[_ses-<s>][_ce-<phase>]_ct.nii.gz found",
                                   path=raw_dir / f"sub-{label}",
                                   fix="add the CT, or leave this participant out")
                log.error("sub-%s: %s", label, error.one_line())
                report.record(f"sub-{label}", FAILED, error.one_line())
        runner = _Runner(step, out_dir, resolved, mapping, overwrite=overwrite, device=device,
                         tta=bool(tta), step_size=float(step_size), report=report,
                         threads=threads)
        runner.prepare(acquisitions)
        run_each(acquisitions, key=lambda a: a.entities.describe(), work=runner.work,
                 progress=progress, report=report)
    if do_group:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / "dataset_description.json").is_file():
            write_dataset_description(out_dir, name="metcli segment", sources={"raw": raw_dir},
                                      description="liver and lesion segmentation (0 background, "
                                                  "1 liver, 2 lesion)")
        report.outputs.append(write_label_table(out_dir))
    return report


class _Runner:
    """Per-CT work of one run; the model is loaded once, before the first CT needing it."""

    def __init__(self, step, out_dir: Path, model: SegmentationModel, mapping: dict[int, int], *,
                 overwrite: bool, device: str, tta: bool, step_size: float, report: BatchReport,
                 threads: int | None = None):
        self.step, self.out_dir, self.model, self.mapping = step, out_dir, model, mapping
        self.overwrite, self.device, self.tta, self.step_size = overwrite, device, tta, step_size
        self.report, self.threads = report, threads
        self.segmenter = None
        self._inputs: dict[Path, list[dict]] = {}

    def _inputs_of(self, acq: Acquisition) -> list[dict]:
        if acq.path not in self._inputs:
            self._inputs[acq.path] = self.step.inputs([acq.path])
        return self._inputs[acq.path]

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
            self.segmenter = load_segmenter(self.model, device=self.device, tta=self.tta,
                                            step_size=self.step_size, threads=self.threads)
            self.device_used = str(getattr(self.segmenter, "device", self.device))

    def work(self, acq: Acquisition) -> str:
        from metcli.io.files import OutputSet, read_image, write_image_to
        from metcli.imaging.geometry import grid_difference
        from metcli.segmentation.nnunet import check_ct

        out_image = output_path(self.out_dir, acq)
        sidecar = sidecar_path(out_image)
        inputs = self._inputs_of(acq)
        if self._done(acq):
            self.report.outputs.extend([out_image, sidecar])
            return SKIPPED
        ct = read_image(acq.path, what="CT")
        try:
            check_ct(ct)
            labels = self.segmenter.predict(ct)
        except MetcliError as exc:
            if exc.path is None:
                raise type(exc)(exc.what, path=acq.path, fix=exc.fix) from None
            raise
        dseg = apply_label_map(labels, self.mapping)
        difference = grid_difference(dseg, ct)
        if difference is not None:
            raise GeometryError(f"the {self.model.backend} backend returned a segmentation on "
                                f"another grid than the CT's ({difference})", path=acq.path,
                                fix="report this bug")
        counts = np.bincount(_array(dseg).ravel(), minlength=3)
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
        if self.model.backend == "nnunet":  # PyTorch's CPU threads (not a skip-rule setting)
            extra["TorchThreads"] = int(self.segmenter.threads)
        with OutputSet() as outs:
            tmp_image = outs.path(out_image)
            write_image_to(dseg, tmp_image)
            self.step.write_sidecar(outs, sidecar, inputs, {out_image: tmp_image}, extra=extra,
                                    models=[self.model.record()])
        log.info("%s: liver %d voxels, lesion %d voxels", acq.entities.describe(),
                 counts[LIVER], counts[LESION])
        self.report.outputs.extend([out_image, sidecar])
        return DONE


def _array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(image)
