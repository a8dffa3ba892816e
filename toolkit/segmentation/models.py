"""The model of ``metcli segment``: resolved from ``--model``, checked, hashed and opened.

:func:`resolve_segmentation_model` turns a weights-manifest name or a folder into
a :class:`SegmentationModel`; the backend's registry entry
(:mod:`metcli.segmentation.backends`) checks the folder, reads the model's labels
(:func:`model_labels_of`) and opens the segmenter (:func:`load_segmenter`). The
model's identity in provenance and in the skip rule is :func:`model_digest`: the
sha256 of the list of its files and their sha256.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from metcli.core.errors import InputError, UsageError
from metcli.segmentation.backends import Segmenter, get_backend
from metcli.segmentation.orientation import AS_STORED, check_orientation

DEFAULT_MODEL = "metcli-demo-nnunet"
_SUMS_FILE = "SHA256SUMS"


@dataclass
class SegmentationModel:
    """A resolved model: where it is, what identifies it, how its labels translate."""

    name: str
    path: Path
    backend: str
    files: dict[str, str]  #: relative path -> sha256 of the files in use
    sha256: str  #: :func:`model_digest` of ``files``
    manifest_map: dict[int, int] | None = None
    from_manifest: bool = False
    folds: list[str] | None = None
    orientation: str | None = None  #: code CTs are brought to first; None = as stored
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The sidecar's ``models`` entry."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "backend": self.backend,
            "source": "manifest" if self.from_manifest else "path",
            "folds": self.folds,
            "orientation": self.orientation or AS_STORED,
            "files": self.files,
        }


def model_digest(files: Mapping[str, str]) -> str:
    """sha256 of ``"<sha256>  <relative path>\\n"`` lines, sorted by path (sha256sum's format)."""
    text = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    bad = sorted(
        name for name, digest in files.items() if name in expected and expected[name] != digest
    )
    if bad:
        raise InputError(
            f"the model's files do not match its {_SUMS_FILE}: {', '.join(bad)}",
            path=path,
            fix="reinstall metcli (the shipped model was changed)",
        )


def _hash_files(path: Path, relpaths: Sequence[str]) -> dict[str, str]:
    """relative path -> sha256 of each file; a missing one is an :class:`InputError`."""
    from metcli.io.files import sha256_file

    files = {}
    for rel in relpaths:
        target = path / rel
        if not target.is_file():
            raise InputError(
                f"the model folder has no {rel}", path=path, fix="give a complete model folder"
            )
        files[rel] = sha256_file(target)
    return files


def resolve_segmentation_model(
    model: str | Path | None,
    *,
    backend: str = "nnunet",
    folds: Sequence[int | str] | None = None,
    orientation: str | None = None,
) -> SegmentationModel:
    """The model of ``--model`` (a manifest name or a folder), checked and hashed.

    A name must be in the weights manifest (an unknown name lists the known ones)
    and its files must match the manifest's sha256 (a shipped model the manifest
    has no sums for is checked against its ``SHA256SUMS``). A folder is the user's
    own, in the format of ``backend`` (nnunet: an nnU-Net v2 trained-model folder;
    onnx: a ``metcli export-onnx`` folder); the backend's entry checks it.

    ``orientation`` (a three-letter code or ``as-stored``) is what CTs are brought
    to before the network sees them. None: an ONNX export's own (fixed at export),
    a manifest model's ``input.orientation``, else ``as-stored`` (nnU-Net's own
    behaviour for a folder the user names). Both backends then see the same arrays.
    """
    from metcli.io import weights

    entry_of_backend = get_backend(backend)
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
    manifest_orientation = (
        (entry.get("input") or {}).get("orientation") if entry is not None else None
    )
    found = entry_of_backend.check_folder(
        path,
        name=name,
        folds=folds,
        orientation=orientation,
        manifest_orientation=manifest_orientation,
    )
    orientation = check_orientation(found.orientation)
    files = _hash_files(path, found.files)
    if entry is not None and entry.shipped and not entry.get("files"):
        _check_sums_file(path, files)
    return SegmentationModel(
        name=name,
        path=path,
        backend=backend,
        files=files,
        sha256=model_digest(files),
        manifest_map=entry.label_map if entry is not None else None,
        from_manifest=entry is not None,
        folds=found.folds,
        orientation=orientation,
    )


def model_labels_of(model: SegmentationModel) -> dict[str, int]:
    """The model's labels {name: value}, read from its folder without loading it."""
    return get_backend(model.backend).read_labels(model.path)


def load_segmenter(
    model: SegmentationModel,
    *,
    device: str = "auto",
    tta: bool = True,
    step_size: float = 0.5,
    threads: int | None = None,
) -> Segmenter:
    """The backend's segmenter for ``model`` (loaded once; ``predict(ct)`` per CT).

    ``threads``: CPU threads of the network: PyTorch's for the nnU-Net backend
    (None: torch's current number), ONNX Runtime's intra-op threads for the ONNX
    backend (None: its own choice).
    """
    return get_backend(model.backend).open(
        model, device=device, tta=tta, step_size=step_size, threads=threads
    )
