"""Ctrl-C: a run with worker processes stops with exit 130 and one line, no traceback.

Ctrl-C sends SIGINT to every process of the terminal's process group, workers
included. extract's workers (spawned processes) start with SIGINT ignored, so
only the parent handles it (``metcli: error: interrupted ...``, exit 130).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def _ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (Linux: the SigIgn mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (2 - 1)))
    raise AssertionError(f"no SigIgn line for process {pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_extract_workers_ignore_ctrl_c_from_their_start():
    import signal

    from metcli.radiomics.workers import LesionPool, _submit_ignoring_interrupts

    before = signal.getsignal(signal.SIGINT)
    with LesionPool(2) as pool:
        executor = pool._ensure()
        futures = [_submit_ignoring_interrupts(executor, None) for _ in range(4)]
        for future in futures:
            with pytest.raises(TypeError):  # None is not a (region, params) item
                future.result(timeout=120)
        pids = list(executor._processes)
        assert pids and all(_ignores_sigint(pid) for pid in pids)
    assert signal.getsignal(signal.SIGINT) is before  # the parent's handler is back
