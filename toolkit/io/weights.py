"""Named segmentation models: the manifest, the cache under METCLI_HOME, downloads, checks.

``weights/manifest.json`` (shipped as ``metcli._weights``, schema ``weights_manifest``)
lists the models metcli knows by name: where each comes from (a folder shipped with
metcli, or a URL), its sha256, whether that checksum was verified by metcli's
maintainers, its licence, the nnU-Net dataset, configuration, folds and trainer,
the label map into metcli's labels (0 background, 1 liver, 2 lesion) and what
input it expects.

Downloaded models live in ``METCLI_HOME/models/<name>/`` (``METCLI_HOME`` defaults
to ``~/.cache/metcli``; an HPC site can point it at a shared, read-only folder).
Nothing downloads unless :func:`fetch` is called (``metcli weights fetch``). A
download (:mod:`metcli.io.downloads`) goes to a temporary file beside the cache,
its sha256 is checked while it streams, a zip archive is unpacked into a temporary
folder and renamed into place in one step; a wrong checksum, a broken archive or an
interrupted download leaves nothing behind. Each installed folder holds
``.metcli-install.json``: the archive's sha256 and the sha256 of every unpacked
file, which :func:`verify` re-checks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from metcli.core.errors import UsageError, WeightsError
from metcli.io.checksums import INSTALL_RECORD, VerifyResult, hash_tree, record_sha, verify_entry
from metcli.io.downloads import Progress, download, make_dirs, replace_dir, unpack

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = "weights_manifest"
#: Formats metcli's backends can run (others are listed for information only).
RUNNABLE_FORMATS = ("nnunetv2", "onnx-export")
#: Formats of pretrained network weights (one file; train-cnn --pretrained NAME).
PRETRAINED_FORMATS = ("timm-weights",)


# ============================================================================ places
def metcli_home() -> Path:
    """``METCLI_HOME``, or ``~/.cache/metcli`` (not created here)."""
    value = os.environ.get("METCLI_HOME")
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "metcli"


def models_dir() -> Path:
    return metcli_home() / "models"


def shipped_dir() -> Path:
    """The folder of the models that ship with metcli (the ``weights/`` package)."""
    return Path(str(resources.files("metcli._weights")))


# ============================================================================ manifest
@dataclass(frozen=True)
class ModelEntry:
    """One model of the manifest (see the schema for every field)."""

    name: str
    data: dict

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def shipped(self) -> bool:
        return self.data["source"] == "shipped"

    @property
    def runnable(self) -> bool:
        return self.data["format"] in RUNNABLE_FORMATS

    @property
    def pretrained(self) -> bool:
        """One weights file to initialise a network from (train-cnn ``--pretrained``)."""
        return self.data["format"] in PRETRAINED_FORMATS

    @property
    def expected_sha256(self) -> str | None:
        """The download's sha256: metcli's (``sha256``), else the publisher's
        (``publisher_sha256``, not recomputed by metcli), else None."""
        return (self.data.get("sha256") or self.data.get("publisher_sha256") or "").lower() or None

    @property
    def label_map(self) -> dict[int, int]:
        """Model label value -> metcli label value (values not listed are background)."""
        return {int(k): int(v) for k, v in self.data["label_map"].items()}

    def install_dir(self) -> Path:
        return shipped_dir() / self.data["path"] if self.shipped else models_dir() / self.name


def manifest_path() -> Path:
    return shipped_dir() / "manifest.json"


@functools.lru_cache(maxsize=4)
def _load_manifest_cached(path_text: str, mtime: float) -> tuple[ModelEntry, ...]:
    from metcli.io.files import read_json

    data = read_json(path_text, schema=MANIFEST_SCHEMA)
    entries, seen = [], set()
    for item in data["models"]:
        if item["name"] in seen:
            raise WeightsError(
                f"the manifest lists the model {item['name']!r} twice",
                path=path_text,
                fix="report this bug",
            )
        seen.add(item["name"])
        entries.append(ModelEntry(item["name"], item))
    return tuple(entries)


def load_manifest(path: str | Path | None = None) -> list[ModelEntry]:
    """The models of the manifest (metcli's own unless ``path`` is given), schema-checked."""
    path = Path(path) if path is not None else manifest_path()
    if not path.is_file():
        raise WeightsError("the weights manifest is missing", path=path, fix="reinstall metcli")
    return list(_load_manifest_cached(str(path), path.stat().st_mtime))


def list_models(manifest: str | Path | None = None) -> list[dict]:
    """One summary per model: name, description, format, source, verified, licence, status."""
    rows = []
    for entry in load_manifest(manifest):
        rows.append(
            {
                "name": entry.name,
                "description": entry["description"],
                "format": entry["format"],
                "source": entry["source"],
                "verified": bool(entry["verified"]),
                "licence": entry.get("licence"),
                "status": _status(entry),
            }
        )
    return rows


def _status(entry: ModelEntry) -> str:
    folder = entry.install_dir()
    if entry.shipped:
        return "shipped" if folder.is_dir() else "not built"
    if (folder / INSTALL_RECORD).is_file():
        return "installed"
    return "not installed" if entry.runnable or entry.pretrained else "listed only"


def get_entry(name: str, manifest: str | Path | None = None) -> ModelEntry:
    """The manifest entry named ``name``; an unknown name lists the known ones."""
    entries = load_manifest(manifest)
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries)
    fix = "use one of those names, or give the path of a model folder"
    if Path(name).exists():
        fix = f"a bare name is read as a model name: write ./{name} to use the folder"
    raise WeightsError(f"unknown model name {name!r} (known: {known})", fix=fix)


# ============================================================================ resolving
def names_a_path(name_or_path: str | Path) -> bool:
    """Whether a model argument is a path rather than a manifest name.

    The rule, the same in every command: a :class:`~pathlib.Path` object, or text
    that contains a path separator or starts with ``~``, is a path (``./demo`` is the
    folder ``demo`` in the current directory); anything else is a manifest name,
    whatever folders lie in the current directory.
    """
    if isinstance(name_or_path, Path):
        return True
    text = str(name_or_path)
    return "/" in text or os.sep in text or text.startswith("~")


def resolve_model(
    name_or_path: str | Path, *, manifest: str | Path | None = None, check: bool = True
) -> Path:
    """The folder of a model given by manifest name or by path.

    See :func:`names_a_path` for which is which. A path is taken as the user's own
    model folder and returned as it is. A name must be in the manifest; its folder
    must be shipped or installed (``metcli weights fetch NAME``), and with ``check``
    its files are re-hashed against the manifest / install record first (a mismatch
    is an error; a model whose checksum the manifest does not know is used with a
    warning). A bare name that is also a folder in the current directory is an
    error that says so: a name never silently means a folder, nor the reverse.
    """
    text = str(name_or_path)
    if names_a_path(name_or_path):
        candidate = Path(text).expanduser()
        if not candidate.exists():
            raise WeightsError(
                "model folder not found",
                path=candidate,
                fix="check the path, or give a model name from 'metcli weights list'",
            )
        if not candidate.is_dir():
            raise WeightsError(
                "a model must be a folder, not a file",
                path=candidate,
                fix="give the model folder (an nnU-Net v2 trained-model folder "
                "or a 'metcli export-onnx' output)",
            )
        return candidate
    if Path(text).exists() and text in {e.name for e in load_manifest(manifest)}:
        raise WeightsError(
            f"{text!r} is both a model name in the manifest and a folder in the current directory",
            fix=f"write ./{text} for the folder; to use the named model, "
            "run from another directory",
        )
    entry = get_entry(text, manifest)
    if not entry.runnable:
        raise WeightsError(
            f"model {entry.name!r} is in the {entry['format']} format, which "
            "metcli's backends cannot run",
            fix=entry.get("note") or "choose another model from 'metcli weights list'",
        )
    folder = entry.install_dir()
    if entry.shipped and not folder.is_dir():
        raise WeightsError(
            f"the shipped model {entry.name!r} is not in this installation",
            path=folder,
            fix="reinstall metcli, or build it with its recipe in weights/recipes/",
        )
    if not entry.shipped and not (folder / INSTALL_RECORD).is_file():
        raise WeightsError(
            f"model {entry.name!r} is not installed under {models_dir()}",
            fix=f"run 'metcli weights fetch {entry.name}' (or point METCLI_HOME "
            "at a folder where it is installed)",
        )
    if check:
        result = verify_entry(entry)
        if result.status == "mismatch":
            raise WeightsError(
                f"model {entry.name!r} failed its sha256 check: {result.detail}",
                path=folder,
                fix=f"run 'metcli weights fetch {entry.name}' again "
                "(or reinstall metcli for a shipped model)",
            )
        if result.status == "unverified":
            log.warning("model %s: %s", entry.name, result.detail)
    return model_root(folder, entry)


def model_root(folder: Path, entry: ModelEntry | None = None) -> Path:
    """The model folder inside an installed download (``path`` of the entry, or the one
    folder that holds plans.json or preprocessing.json)."""
    if entry is not None and not entry.shipped and entry.get("path"):
        return folder / entry["path"]
    if entry is not None and entry.shipped:
        return folder
    for marker in ("plans.json", "preprocessing.json"):
        hits = sorted(p.parent for p in folder.rglob(marker))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise WeightsError(
                f"the installed model holds {len(hits)} folders with {marker}",
                path=folder,
                fix="name the one to use in the manifest's 'path'",
            )
    return folder


# ============================================================================ verifying
def verify(name: str | None = None, *, manifest: str | Path | None = None) -> list[VerifyResult]:
    """Re-hash the installed (and shipped) models, or only ``name``."""
    entries = [get_entry(name, manifest)] if name is not None else load_manifest(manifest)
    return [verify_entry(entry) for entry in entries]


def pretrained_file(name: str, *, manifest: str | Path | None = None) -> tuple[Path, str]:
    """(path, sha256) of the installed weights file of the manifest entry ``name`` (a
    ``timm-weights`` entry), re-hashed first: it must match the manifest's sha256, else the
    publisher's, else the one recorded when ``metcli weights fetch`` downloaded it.
    Nothing is downloaded here."""
    from metcli.io.files import sha256_file

    entry = get_entry(name, manifest)
    if not entry.pretrained:
        raise WeightsError(
            f"{name!r} is a {entry['format']} model, not a file of network weights",
            fix="name a timm-weights entry of 'metcli weights list', or a weights file",
        )
    path = models_dir() / name / entry["path"]
    if not (models_dir() / name / INSTALL_RECORD).is_file() or not path.is_file():
        raise WeightsError(
            f"the weights {name!r} are not installed under {models_dir()}",
            fix=f"run 'metcli weights fetch {name}' once (or point METCLI_HOME at a folder "
            "where they are installed)",
        )
    expected = entry.expected_sha256 or record_sha(models_dir() / name)
    actual = sha256_file(path)
    if expected is None or actual != expected:
        raise WeightsError(
            f"the weights {name!r} failed their sha256 check: the file has "
            f"{actual[:16]}..., expected {str(expected)[:16]}...",
            path=path,
            fix=f"run 'metcli weights fetch {name} --overwrite' to download them again",
        )
    if not entry["verified"]:
        log.info("weights %s: sha256 %s matches %s", name, actual, _checksum_source(entry))
    return path, actual


def _checksum_source(entry: ModelEntry) -> str:
    if entry.get("sha256"):
        return "the manifest"
    if entry.get("publisher_sha256"):
        return "the publisher's checksum (not recomputed by metcli's maintainers)"
    return "the download's record (no published checksum)"


# ============================================================================ fetching
def fetch(
    name: str,
    *,
    url: str | None = None,
    sha256: str | None = None,
    allow_unverified: bool = False,
    progress: Progress | None = None,
    manifest: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Download, check and install the model ``name`` into ``METCLI_HOME/models/<name>/``.

    Args:
        name: a model of the manifest.
        url: download from this URL instead of the manifest's (a mirror); the
            manifest's sha256 still applies.
        sha256: the expected sha256 when the manifest has none (obtained from the
            publisher).
        allow_unverified: install even though no sha256 is known (the computed one
            is recorded and logged, so it can be pinned later).
        progress: called as ``progress(bytes_done, bytes_total_or_None)``.
        overwrite: replace an installed copy.

    Returns the installed model folder. On any failure nothing is left behind.
    """
    entry = get_entry(name, manifest)
    source, expected = _download_source(entry, url, sha256, allow_unverified)
    target = models_dir() / name
    if (target / INSTALL_RECORD).is_file() and not overwrite:
        result = verify_entry(entry)
        if result.status in ("ok", "unverified") and (
            expected is None or record_sha(target) == expected
        ):
            log.info("model %s is already installed in %s", name, target)
            return model_root(target, entry)
    _install(entry, source, expected, target, progress)
    log.info("model %s installed in %s", name, target)
    return model_root(target, entry)


def _download_source(
    entry: ModelEntry, url: str | None, sha256: str | None, allow_unverified: bool
) -> tuple[str, str | None]:
    """(URL, expected sha256 or None) of a model's download; refuses what cannot be fetched."""
    name = entry.name
    if entry.shipped:
        raise UsageError(
            f"model {name!r} ships with metcli; there is nothing to download",
            fix="use it by its name",
        )
    if not entry.runnable and not entry.pretrained:
        raise WeightsError(
            f"model {name!r} is in the {entry['format']} format, which metcli's "
            "backends cannot run; it is not downloaded",
            fix=entry.get("note") or "choose another model",
        )
    source = url or entry.get("url")
    if not source:
        raise UsageError(
            f"the manifest has no download URL for {name!r}", fix="give one with --url"
        )
    expected = entry.expected_sha256
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise UsageError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
        if expected and sha256 != expected:
            raise UsageError(
                f"--sha256 {sha256[:12]}... contradicts the manifest's "
                f"{expected[:12]}... for {name!r}",
                fix="drop --sha256",
            )
        expected = sha256
    if expected is None and not allow_unverified:
        raise WeightsError(
            f"no sha256 is known for {name!r} (the manifest marks it unverified: "
            f"{entry.get('note') or 'no checksum'}), so the download could not be "
            "checked",
            fix="give the publisher's checksum with --sha256, or "
            "accept an unchecked download with --allow-unverified",
        )
    return source, expected


def _install(
    entry: ModelEntry, source: str, expected: str | None, target: Path, progress: Progress | None
) -> None:
    """Download, check, unpack and record the model, then rename it to ``target``."""
    name = entry.name
    created = make_dirs(models_dir())
    tmp_file = tmp_dir = None
    try:
        tmp_file, actual, size = download(source, models_dir(), name, progress)
        if expected is not None and actual != expected:
            raise WeightsError(
                f"the download of {name!r} has sha256 {actual[:16]}..., the "
                f"expected one is {expected[:16]}...; it was refused and removed",
                fix="try again (the transfer may have been corrupted), or check the URL",
            )
        if expected is None:
            log.warning(
                "model %s downloaded without a known checksum; its sha256 is %s "
                "(pin it with --sha256 next time)",
                name,
                actual,
            )
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=models_dir()))
        if entry.pretrained:  # one weights file, kept under the manifest's name for it
            shutil.copyfile(tmp_file, tmp_dir / entry["path"])
        else:
            unpack(tmp_file, tmp_dir, source)
        files = hash_tree(tmp_dir)
        record = {
            "name": name,
            "url": source,
            "archive_sha256": actual,
            "archive_bytes": size,
            "sha256_expected": expected,
            "verified": expected is not None,
            "manifest_sha256": entry.get("sha256"),
            "files": files,
        }
        (tmp_dir / INSTALL_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        root = model_root(tmp_dir, entry)
        if not root.is_dir() and not entry.pretrained:
            raise WeightsError(
                f"the archive has no folder {entry.get('path')!r}",
                fix="report this: the manifest's 'path' is wrong",
            )
        replace_dir(tmp_dir, target)
        tmp_dir = None
    except BaseException:
        if tmp_file is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp_file.unlink()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: nothing of ours is left
        raise
    tmp_file.unlink()
