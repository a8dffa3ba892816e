"""PyTorch's CPU threads for the commands that run torch (train-cnn, predict --explain, segment).

PyTorch picks its number of intra-op threads when it starts. On a machine where
other processes keep some cores busy, its OpenMP threads wait on each other and
a run can be ten times slower than with one thread (``metcli predict
--explain`` on two shared cores: 3 min 56 s with torch's default threads, 17 s
with one). The commands therefore take ``--threads N`` and run their torch work
inside :func:`limit_cpu_threads`, which sets ``torch.set_num_threads(N)`` for
that work only and puts the previous number back afterwards. Nothing is set at
import time and no environment variable is changed.

The command line's default is :func:`available_cpus`: the CPUs this process
may run on (``os.sched_getaffinity``), which follows the CPU set a SLURM job
or a container was given. The library's default (``threads=None``) keeps
whatever the caller set (``torch.get_num_threads()``).

The number of threads does not enter the skip rule's settings; the sidecars
record it (``TorchThreads``). See docs/train-cnn.md for what it changes in a
training run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from metcli.core.errors import UsageError

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: SLURM and container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None, *, option: str = "--threads") -> int | None:
    """``threads`` as an int of at least 1 (None stays None), or a :class:`UsageError`."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(
            f"{option} must be a whole number of at least 1, got {threads!r}",
            fix=f"give {option} 1 on a shared machine, or the CPUs you have",
        )
    return threads


def _torch():
    """torch if it is installed (imported), else None."""
    from importlib.util import find_spec

    if find_spec("torch") is None:
        return None
    import torch

    return torch


@contextlib.contextmanager
def limit_cpu_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the number before.

    ``threads=None`` keeps the current number. Yields the number of threads in
    use inside the block (``threads``, or the current one; without torch
    installed, ``threads`` or 1, and nothing is set). Not thread-safe: torch's
    setting is process-wide.
    """
    threads = check_threads(threads)
    torch = _torch()
    if torch is None:
        yield threads or 1
        return
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield before
        return
    torch.set_num_threads(threads)
    log.debug("torch CPU threads: %d (was %d)", threads, before)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
