"""Temporary files of atomic writes, and those a killed run leaves behind.

Every output is written to ``.NAME.<pid>-<host>.XXXXXXXX.part.EXT`` beside ``NAME``
(:func:`metcli.io.files.atomic_path`) and renamed when complete. SIGKILL (a cluster's
time limit, the out-of-memory killer) gives no chance to remove it; the next run that
writes ``NAME`` removes the ones whose process is gone. The owner tag keeps that safe
when several processes write into one folder (array tasks of the same cohort): a file
of a live process, of another machine or of an unknown owner is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def owner_tag() -> str:
    """``<pid>-<host>`` of this process, in its temporary files' names: a later run can
    tell a file a killed run left (its process is gone) from one a live run is writing
    (another array task of the same cohort, on this machine or another)."""
    host = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
    return f"{os.getpid()}-{host}"


def remove_stale_temporaries(dest: Path) -> None:
    """Remove the temporary files of ``dest`` that a killed run of this machine left
    (SIGKILL gives no chance to clean up): their process no longer exists. Temporary
    files of live processes, of other machines and of unknown owners are left alone."""
    _pid, host = owner_tag().split("-")
    prefix = f".{dest.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(dest.parent):
            name = entry.name
            if not name.startswith(prefix) or ".part" not in name:
                continue
            tag = name[len(prefix) :].split(".", 1)[0]
            owner, _, owner_host = tag.partition("-")
            if owner_host != host or not owner.isdigit() or _alive(int(owner)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                log.debug("removed %s, left by a killed run", entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
