"""Provenance: dataset descriptions, JSON sidecars and the skip rule.

Every output file has a JSON sidecar (``x_dseg.nii.gz`` and ``x_dseg.tsv`` share
``x_dseg.json``) that records the metcli version, the command, its resolved
settings, every input with its sha256 and every output with its sha256. Paths
are BIDS URIs (``bids:<dataset>:<path inside it>``) relative to the dataset
roots of the run, never absolute paths, so no sidecar carries a folder name
that could identify a patient.

The skip rule: an output counts as done only when its sidecar exists, records
the same inputs (sha256) and the same settings, and every output it lists is on
disk with the recorded sha256. Anything else is redone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from metcli._version import __version__
from metcli.core.errors import InputError, OutputError
from metcli.io.files import dump_json_to, read_json, sha256_file, sha256_json, write_json

log = logging.getLogger(__name__)

SELF = "self"
SOURCE_URL = "https://github.com/metcli/metcli"


def container_info() -> dict | None:
    """The container metcli runs in, as the images declare it through the environment."""
    kind = os.environ.get("METCLI_CONTAINER_TYPE")
    if not kind:
        return None
    info = {"Type": kind}
    tag = os.environ.get("METCLI_CONTAINER_TAG")
    if tag:
        info["Tag"] = tag
    return info


def generated_by(description: str | None = None) -> list[dict]:
    entry: dict[str, Any] = {"Name": "metcli", "Version": __version__, "CodeURL": SOURCE_URL}
    if description:
        entry["Description"] = description
    container = container_info()
    if container:
        entry["Container"] = container
    return [entry]


def _relative_link(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(Path(target).resolve(), Path(start).resolve())
    except ValueError:  # another drive on Windows: keep only the folder name
        return Path(target).name


def write_dataset_description(
    out_dir: Path,
    *,
    name: str,
    sources: Mapping[str, Path] | None = None,
    dataset_type: str = "derivative",
    description: str | None = None,
    authors: Sequence[str] | None = None,
    readme: str | None = None,
) -> Path:
    """Write (or refresh) ``dataset_description.json`` of a dataset metcli writes.

    A raw dataset also gets what BIDS tools expect around it
    (:func:`metcli.io.rawdata.write_raw_extras`: ``.bidsignore`` for the CT names BIDS
    does not define, a ``README`` from ``readme`` unless one is there).
    """
    out_dir = Path(out_dir)
    doc: dict[str, Any] = {"Name": name, "BIDSVersion": "1.10.0", "DatasetType": dataset_type}
    if authors:
        doc["Authors"] = [str(a) for a in authors]
    if dataset_type == "raw":
        from metcli.io.rawdata import write_raw_extras

        write_raw_extras(
            out_dir,
            readme=readme
            or f"{name}\n\nImages in metcli's BIDS-like layout (docs/bids.md: CT as _ct, "
            "MR under BIDS' own names); describe the cohort, its acquisition and its "
            "licence here.",
        )
    if dataset_type == "derivative":
        doc["GeneratedBy"] = generated_by(description)
    if sources:
        doc["SourceDatasets"] = [{"URL": f"bids:{key}:"} for key in sources]
        doc["DatasetLinks"] = {key: _relative_link(path, out_dir) for key, path in sources.items()}
    path = out_dir / "dataset_description.json"
    if path.is_file():
        try:
            if read_json(path) == doc:
                return path
        except InputError:
            pass
    write_json(doc, path, schema="dataset_description")
    return path


@dataclass
class Step:
    """The provenance context of one command run.

    Args:
        command: the subcommand name (``split-lesions``).
        out_dir: the folder the command writes (the ``self`` dataset).
        roots: the input dataset roots by name (``{"raw": raw_dir, "seg": seg_dir}``).
        settings: the resolved settings; anything that changes outputs belongs here.
    """

    command: str
    out_dir: Path
    roots: Mapping[str, Path]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self._roots = {SELF: self.out_dir.resolve()}
        for key, value in self.roots.items():
            self._roots[key] = Path(value).resolve()
        self.settings_sha256 = sha256_json(dict(self.settings))

    def uri(self, path: Path) -> str:
        """``bids:<root>:<relative path>`` for a path under one of the roots."""
        resolved = Path(path).resolve()
        best = None
        for key, root in self._roots.items():
            if resolved == root or root in resolved.parents:
                rel = resolved.relative_to(root).as_posix()
                if best is None or len(rel) < len(best[1]):
                    best = (key, "" if rel == "." else rel)
        if best is None:
            # Outside every root: keep only the file name, never the folders above it.
            return f"file:{resolved.name}"
        return f"bids:{best[0]}:{best[1]}"

    def inputs(self, paths: Iterable[Path]) -> list[dict]:
        """Input records (uri, sha256) for files."""
        return [{"uri": self.uri(p), "sha256": sha256_file(p)} for p in paths]

    def is_done(self, sidecar: Path, inputs: list[dict]) -> bool:
        """The skip rule (see the module docstring)."""
        sidecar = Path(sidecar)
        if not sidecar.is_file():
            return False
        try:
            doc = read_json(sidecar)
            prov = doc["Provenance"]
        except (InputError, KeyError, TypeError):
            return False
        if prov.get("command") != self.command:
            return False
        if prov.get("settings_sha256") != self.settings_sha256:
            log.info("%s: settings changed, redoing", sidecar.name)
            return False
        if _input_key(prov.get("inputs", [])) != _input_key(inputs):
            log.info("%s: inputs changed, redoing", sidecar.name)
            return False
        for out in prov.get("outputs", []):
            target = sidecar.parent / out.get("name", "")
            if not target.is_file() or sha256_file(target) != out.get("sha256"):
                log.info("%s: output %s missing or changed, redoing", sidecar.name, out.get("name"))
                return False
        return True

    def sidecar(
        self,
        inputs: list[dict],
        produced: Mapping[Path, Path],
        *,
        extra: Mapping[str, Any] | None = None,
        models: list[dict] | None = None,
    ) -> dict:
        """The sidecar document for outputs ``produced`` ({final path: temporary path})."""
        outputs = [
            {"name": Path(final).name, "sha256": sha256_file(tmp)}
            for final, tmp in produced.items()
        ]
        prov: dict[str, Any] = {
            "metcli_version": __version__,
            "command": self.command,
            "settings": _jsonable(dict(self.settings)),
            "settings_sha256": self.settings_sha256,
            "inputs": inputs,
            "outputs": outputs,
        }
        if models:
            prov["models"] = models
        container = container_info()
        if container:
            prov["container"] = container
        doc: dict[str, Any] = {}
        if extra:
            doc.update(_jsonable(dict(extra)))
        doc["Sources"] = [record["uri"] for record in inputs]
        doc["Provenance"] = prov
        return doc

    def write_sidecar(
        self,
        outputs,
        sidecar_path: Path,
        inputs: list[dict],
        produced: Mapping[Path, Path],
        **kwargs,
    ) -> None:
        """Add the sidecar to an :class:`~metcli.io.files.OutputSet`, after the data files."""
        doc = self.sidecar(inputs, produced, **kwargs)
        tmp = outputs.path(sidecar_path)
        dump_json_to(doc, tmp, schema="sidecar", where=sidecar_path)


def _input_key(records: Iterable[Mapping]) -> list[tuple[str, str]]:
    return sorted((str(r.get("uri")), str(r.get("sha256"))) for r in records)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        items = [_jsonable(v) for v in obj]
        return sorted(items, key=str) if isinstance(obj, set) else items
    if isinstance(obj, Path):
        raise OutputError(
            f"internal: a path ({obj.name}) was put in provenance settings; "
            "record paths as inputs instead",
            fix="this is a bug in metcli: run again with --debug and report the traceback",
        )
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj
