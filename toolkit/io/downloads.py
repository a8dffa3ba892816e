"""Downloads into a cache: streamed and hashed, unpacked safely, put in place in one step.

:func:`download` streams a URL into a temporary file beside the cache and hashes it
while it streams; :func:`unpack` unpacks a zip archive, refusing members that would
leave the folder; :func:`replace_dir` renames a folder into place. A failure leaves
nothing behind. :mod:`metcli.io.weights` installs named models with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from metcli.core.errors import OutputError, WeightsError

DOWNLOAD_TIMEOUT_S = 60
CHUNK = 1 << 20

#: ``progress(bytes_done, bytes_total_or_None)``.
Progress = Callable[[int, "int | None"], None]


def make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return the ones created (outermost first)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the model cache ({exc.strerror})",
            path=path,
            fix="set METCLI_HOME to a folder you can write to",
        ) from None
    return list(reversed(missing))


def download(url: str, folder: Path, name: str, progress: Progress | None) -> tuple[Path, str, int]:
    """Stream ``url`` into a temporary file in ``folder``, hashing it; remove it on failure."""
    import socket
    import urllib.error
    import urllib.request

    fd, text = tempfile.mkstemp(prefix=f".{name}.", suffix=".download", dir=folder)
    path = Path(text)
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            request = urllib.request.Request(url, headers={"User-Agent": "metcli"})
            try:
                response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)  # noqa: S310
            except urllib.error.HTTPError as exc:
                raise WeightsError(
                    f"cannot download {url} (HTTP {exc.code} {exc.reason})",
                    fix="check the URL, or give a mirror with --url",
                ) from None
            except (urllib.error.URLError, socket.timeout, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise WeightsError(
                    f"cannot download {url} ({_reason(reason)})",
                    fix="check the network connection (metcli works offline "
                    "with models already installed), or give a reachable "
                    "mirror with --url",
                ) from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if progress is not None:
                    progress(0, total)
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (socket.timeout, OSError) as exc:
                        raise WeightsError(
                            f"the download of {url} broke off after {done} bytes ({_reason(exc)})",
                            fix="try again",
                        ) from None
                    if not block:
                        break
                    handle.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                if total is not None and done != total:
                    raise WeightsError(
                        f"the download of {url} is incomplete ({done} of {total} bytes)",
                        fix="try again",
                    )
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return path, digest.hexdigest(), done


def _reason(exc: Any) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def unpack(archive: Path, folder: Path, source: str) -> None:
    """Unpack a zip archive into ``folder``, refusing members that would leave it."""
    if not zipfile.is_zipfile(archive):
        raise WeightsError(
            f"the download from {source} is not a zip archive",
            fix="give the URL of the model's zip archive",
        )
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
                if (
                    member.filename.startswith(("/", "\\"))
                    or ".." in parts
                    or (parts and ":" in parts[0])
                ):
                    raise WeightsError(
                        f"the archive from {source} has an unsafe member name "
                        f"{member.filename!r}; it was refused",
                        fix="use an archive from a trusted source",
                    )
            bad = zf.testzip()
            if bad is not None:
                raise WeightsError(
                    f"the archive from {source} is corrupt (member {bad!r})",
                    fix="download it again",
                )
            zf.extractall(folder)
    except zipfile.BadZipFile as exc:
        raise WeightsError(
            f"the archive from {source} is corrupt ({exc})", fix="download it again"
        ) from None


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target`` by rename; an old copy is moved aside and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
