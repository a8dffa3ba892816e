"""The backends of ``metcli segment``: a registry with one entry per backend.

A backend is a :class:`Backend`: its name (``--backend``), a description (the
command's help), how to check a model folder of its format, how to read the
model's labels without loading it, and how to open a :class:`Segmenter` (the
loaded model that segments one CT after another). metcli registers two:

- ``nnunet``: nnU-Net's own predictor on an nnU-Net v2 trained-model folder
  (:class:`metcli.segmentation.nnunet.NnunetSegmenter`);
- ``onnx``: ONNX Runtime on a folder written by ``metcli export-onnx``
  (:class:`metcli.segmentation.onnx.OnnxSegmenter`).

:func:`register` adds another; :func:`unregister` removes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from metcli.core.errors import UsageError
from metcli.core.registry import Registry
from metcli.segmentation.orientation import AS_STORED


@runtime_checkable
class Segmenter(Protocol):
    """A loaded model, as ``segment`` uses it."""

    #: The model's own labels, ``{name: value}``.
    labels: dict[str, int]
    #: Where the network runs (``cpu``, ``cuda`` or a torch device); the sidecars record it.
    device: Any

    def predict(self, ct) -> Any:
        """The label image of ``ct`` (a 3D SimpleITK image) in the model's labels, on its grid."""

    def sidecar_fields(self) -> dict[str, Any]:
        """Fields added to each sidecar (not settings of the skip rule); may be empty."""


@dataclass(frozen=True)
class ModelFolder:
    """What a backend found in a model folder."""

    files: list[str]  #: relative paths of the files that identify the model (hashed)
    folds: list[str] | None  #: folds in use; None where the backend has no folds
    orientation: str  #: code CTs are brought to first, or ``as-stored``


@dataclass(frozen=True)
class Backend:
    """One segmentation backend.

    Attributes:
        name: the value of ``--backend``.
        description: one line for the command's help.
        check_folder: ``(path, *, name, folds, orientation, manifest_orientation) ->``
            :class:`ModelFolder`. ``name`` names the model in messages; ``folds`` and
            ``orientation`` are the user's (None: not given); ``manifest_orientation``
            is the manifest's ``input.orientation`` (None: not a manifest model, or
            none given). Refuses a folder of another backend's format
            (:class:`UsageError`) and an incomplete one (:class:`InputError`).
        read_labels: ``(path) -> {name: value}``, the model's labels without loading it.
        open: ``(model, *, device, tta, step_size, threads) ->`` :class:`Segmenter`;
            ``model`` is a :class:`metcli.segmentation.models.SegmentationModel`.
    """

    name: str
    description: str
    check_folder: Callable[..., ModelFolder]
    read_labels: Callable[[Path], dict[str, int]]
    open: Callable[..., Segmenter]


_REGISTRY: Registry[Backend] = Registry(
    "segmentation backend",
    unknown=lambda name, known: f"--backend {name!r} is not one of {known}",
)
#: Add a :class:`Backend` (its name must be new); returns it.
register = _REGISTRY.register
#: Remove a backend by name; returns it.
unregister = _REGISTRY.unregister
#: The registered backend of a name; an unknown name lists the known ones.
get_backend = _REGISTRY.get
#: The registered backends' names, in the order they were registered.
backend_names = _REGISTRY.names
#: One sentence per backend, ``name: description``, for the command's help.
backends_help = _REGISTRY.help


# ============================================================================ nnunet
def _nnunet_folder(
    path: Path,
    *,
    name: str,
    folds: Sequence[int | str] | None,
    orientation: str | None,
    manifest_orientation: str | None,
) -> ModelFolder:
    from metcli.segmentation.nnunet import CHECKPOINT_NAME, read_model_folder, resolve_folds

    if (path / "preprocessing.json").is_file() and not (path / "plans.json").is_file():
        raise UsageError(
            f"{path.name} is an ONNX export, not an nnU-Net model folder",
            fix="use --backend onnx with it, or give an nnU-Net v2 model folder",
        )
    read_model_folder(path)
    used_folds = resolve_folds(path, folds)
    if orientation is None:
        orientation = manifest_orientation or AS_STORED
    files = [
        "dataset.json",
        "plans.json",
        *(f"fold_{fold}/{CHECKPOINT_NAME}" for fold in used_folds or []),
    ]
    return ModelFolder(files=files, folds=used_folds, orientation=orientation)


def _nnunet_labels(path: Path) -> dict[str, int]:
    from metcli.segmentation.nnunet import model_labels, read_model_folder

    dataset, _plans = read_model_folder(path)
    return model_labels(dataset, path=path / "dataset.json")


def _nnunet_open(
    model, *, device: str, tta: bool, step_size: float, threads: int | None
) -> Segmenter:
    from metcli.segmentation.nnunet import NnunetSegmenter

    return NnunetSegmenter(
        model.path,
        device=device,
        folds=model.folds,
        tta=tta,
        step_size=step_size,
        orientation=model.orientation,
        threads=threads,
    )


# ============================================================================ onnx
def _onnx_folder(
    path: Path,
    *,
    name: str,
    folds: Sequence[int | str] | None,
    orientation: str | None,
    manifest_orientation: str | None,
) -> ModelFolder:
    from metcli.segmentation.onnx import export_orientation

    if folds:
        raise UsageError(
            "--folds applies to the nnunet backend only (an ONNX export holds "
            "the folds it was exported with)"
        )
    if not (path / "preprocessing.json").is_file() and (path / "plans.json").is_file():
        raise UsageError(
            f"{name} is an nnU-Net model folder, not an ONNX export",
            fix=f"export it first (metcli export-onnx {path} ONNX_DIR) and give "
            "ONNX_DIR, or use --backend nnunet",
        )
    orientation = export_orientation(path, orientation)
    files = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    return ModelFolder(files=files, folds=None, orientation=orientation)


def _onnx_labels(path: Path) -> dict[str, int]:
    from metcli.segmentation.onnx import spec_labels

    return spec_labels(path)


def _onnx_open(
    model, *, device: str, tta: bool, step_size: float, threads: int | None
) -> Segmenter:
    from metcli.segmentation.onnx import OnnxSegmenter

    return OnnxSegmenter(model.path, device=device, tta=tta, step_size=step_size, threads=threads)


register(
    Backend(
        name="nnunet",
        description="nnU-Net's own predictor on an nnU-Net v2 trained-model folder",
        check_folder=_nnunet_folder,
        read_labels=_nnunet_labels,
        open=_nnunet_open,
    )
)
register(
    Backend(
        name="onnx",
        description="ONNX Runtime on a folder written by metcli export-onnx (no torch needed)",
        check_folder=_onnx_folder,
        read_labels=_onnx_labels,
        open=_onnx_open,
    )
)
