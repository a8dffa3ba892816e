"""Operating-system faults while writing outputs, as one line that names the output
folder, what happened and the fix.

A full disk, a file-size limit, a read-only file system or a folder without write
permission surface as :class:`OSError` from Python's writers, and as lines that a C
library (ITK's NIfTI writer) prints on stderr while it goes on, leaving a short file.
:func:`output_error` turns the first into an
:class:`~metcli.core.errors.OutputError`; :func:`c_errors_refused` keeps the second
off the terminal and refuses the write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from metcli.core.errors import OutputError

_KEEP = "finished outputs are kept and skipped when the same command runs again"

#: errno -> (what happened to the output folder, how to fix it).
_FAULTS = {
    errno.ENOSPC: (
        "no space left on its device",
        "free space there, or give another output folder; " + _KEEP,
    ),
    errno.EDQUOT: (
        "its disk quota is used up",
        "free space or raise the quota; " + _KEEP,
    ),
    errno.EFBIG: (
        "a file would exceed the file-size limit",
        "raise the limit ('ulimit -f unlimited') or write to another file system; " + _KEEP,
    ),
    errno.EROFS: (
        "its file system is read-only",
        "give an output folder on a writable file system",
    ),
    errno.EACCES: (
        "no permission to write there",
        "give a folder you may write to, or change its permissions",
    ),
    errno.EPERM: (
        "no permission to write there",
        "give a folder you may write to, or change its permissions",
    ),
}


def is_output_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is an OS fault of the kinds :func:`output_error` explains."""
    return isinstance(exc, OSError) and exc.errno in _FAULTS


def output_error(exc: OSError, folder: Path) -> OutputError:
    """The one-line :class:`OutputError` of an OS fault while writing into ``folder``."""
    if exc.errno in _FAULTS:
        what, fix = _FAULTS[exc.errno]
    else:
        what = f"cannot write there ({exc.strerror or exc})"
        fix = "check the output folder and run again"
    return OutputError(what, path=folder, fix=fix)


@contextlib.contextmanager
def c_errors_refused(target: Path) -> Iterator[None]:
    """Run a C-library writer with file descriptor 2 captured; refuse its errors.

    ITK's NIfTI writer prints ``** ERROR: NWAD: wrote only 0 of N bytes`` on a full
    disk and returns as if it had written the file. The captured text is checked
    afterwards: an error line raises :class:`OutputError` (the OS fault that explains
    it where one can be found: no space left, a file-size limit), else the text is
    dropped.
    """
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    if "** ERROR" in text or "wrote only" in text:
        raise _explain(text, Path(target))


def _explain(text: str, target: Path) -> OutputError:
    folder = target.parent
    with contextlib.suppress(OSError):
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < (1 << 20):
            return output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), folder)
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return output_error(OSError(errno.EFBIG, os.strerror(errno.EFBIG)), folder)
    line = " ".join(next(ln for ln in text.splitlines() if ln.strip()).split())
    return OutputError(
        f"the image writer failed ({line[:160]})",
        path=folder,
        fix="check the disk and the output folder, and run again",
    )
