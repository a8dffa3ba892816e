"""Lesions in worker processes: :class:`LesionPool`, and pyradiomics kept quiet.

pyradiomics adds its own stderr handler; metcli records a lesion's failure in
its row instead, so the handler is silenced while lesions are extracted (in
this process, or once in each worker).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import signal
import threading
from typing import Iterable, Iterator

from metcli.radiomics.columns import RegionResult
from metcli.radiomics.params import ExtractionParams
from metcli.radiomics.regions import Region, extract_region


def _quiet_radiomics() -> None:
    """pyradiomics adds its own stderr handler; metcli reports failures itself."""
    import radiomics

    radiomics.setVerbosity(logging.CRITICAL)


@contextlib.contextmanager
def radiomics_silenced() -> Iterator[None]:
    import radiomics

    handler = getattr(radiomics, "handler", None)
    level = handler.level if handler is not None else None
    _quiet_radiomics()
    try:
        yield
    finally:
        if handler is not None:
            handler.setLevel(level)


def _init_worker() -> None:
    import warnings

    import SimpleITK as sitk

    _quiet_radiomics()
    # a worker's stderr is the terminal's: numpy's RuntimeWarnings on odd lesions would
    # reach it raw (the command line routes the main process's warnings into its log)
    warnings.simplefilter("ignore")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one process per core already


def _work(item: tuple[Region, ExtractionParams]) -> RegionResult:
    region, params = item
    return extract_region(region, params)


def _submit_ignoring_interrupts(executor, item):
    """Submit ``item``; a worker started by this submission inherits an ignored SIGINT.

    Ctrl-C goes to every process of the terminal's process group. Workers that
    started with Python's default handler would each print a KeyboardInterrupt
    traceback (even while still importing); started with SIGINT ignored, only
    the parent sees it, and it stops the run with exit 130 and one line.
    The executor starts workers inside ``submit``, in this (the main) thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return executor.submit(_work, item)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return executor.submit(_work, item)
    finally:
        signal.signal(signal.SIGINT, previous)


class LesionPool:
    """Lesions in parallel over ``jobs`` processes; results in submission order.

    At most ``2 * jobs`` crops are in flight, so memory stays bounded by the
    crops of a few lesions whatever the number of lesions.
    """

    def __init__(self, jobs: int):
        self.jobs = int(jobs)
        self._executor = None

    def _ensure(self):
        if self._executor is None and self.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: SimpleITK's thread pool does not survive a fork, and
            # spawned workers are direct children (their CPU time is accounted)
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(
                max_workers=self.jobs, mp_context=context, initializer=_init_worker
            )
        return self._executor

    def map(self, items: Iterable[tuple[Region, ExtractionParams]]) -> Iterator[RegionResult]:
        executor = self._ensure()
        if executor is None:
            with radiomics_silenced():
                for item in items:
                    yield _work(item)
            return
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(_submit_ignoring_interrupts(executor, item))
            if len(pending) >= 2 * self.jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "LesionPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
