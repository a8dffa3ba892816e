"""Running a command over participants: go on past failures, report at the end.

The library never stops a batch at the first bad participant: each failure is
recorded with its one-line message, the others are done, and the caller gets a
:class:`BatchReport`. The command line prints its summary and exits 3 when some
participants failed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

from metcli.core.errors import MetcliError, ParticipantsFailed, PartlyDone

log = logging.getLogger(__name__)

T = TypeVar("T")

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class BatchReport:
    """What happened to each item (participant, or participant and phase) of a run."""

    status: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    outputs: list = field(default_factory=list)

    def record(self, key: str, status: str, message: str = "") -> None:
        self.status[key] = status
        if message:
            self.messages[key] = message

    @property
    def failed(self) -> dict[str, str]:
        return {k: self.messages.get(k, "") for k, s in self.status.items() if s == FAILED}

    @property
    def done(self) -> list[str]:
        return [k for k, s in self.status.items() if s == DONE]

    @property
    def skipped(self) -> list[str]:
        return [k for k, s in self.status.items() if s == SKIPPED]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for v in self.status.values() if v == s) for s in (DONE, SKIPPED, FAILED)}

    def merge(self, other: "BatchReport") -> "BatchReport":
        self.status.update(other.status)
        self.messages.update(other.messages)
        self.outputs.extend(other.outputs)
        return self


#: ``progress(name, status)`` after each item. A callback may also have ``start(total)``,
#: which the library calls with the number of items before the first (see
#: :func:`announce_total`), so that the caller never has to count them itself.
ProgressFn = Callable[[str, str], None]


def announce_total(progress: ProgressFn | None, total: int) -> None:
    """Tell ``progress`` how many items follow, if it wants to know (``start(total)``)."""
    start = getattr(progress, "start", None)
    if callable(start):
        start(int(total))


def run_each(
    items: Iterable[T],
    key: Callable[[T], str],
    work: Callable[[T], str],
    *,
    progress: ProgressFn | None = None,
    report: BatchReport | None = None,
) -> BatchReport:
    """Call ``work(item)`` for each item; it returns DONE or SKIPPED.

    A :class:`MetcliError` (or an unexpected exception) marks that item FAILED with
    its message and the batch goes on. ``KeyboardInterrupt`` stops the batch.
    """
    report = report if report is not None else BatchReport()
    items = list(items)
    announce_total(progress, len(items))
    for item in items:
        name = key(item)
        try:
            status = work(item)
            report.record(name, status)
        except MetcliError as exc:
            log.error("%s: %s", name, exc.one_line())
            report.record(name, FAILED, exc.one_line())
        except (MemoryError, RecursionError, Exception) as exc:  # noqa: BLE001 - keep the batch going
            log.error(
                "%s: unexpected error: %s", name, exc, exc_info=log.isEnabledFor(logging.DEBUG)
            )
            report.record(
                name,
                FAILED,
                f"unexpected error ({type(exc).__name__}: {exc}); "
                "run with --debug for the traceback and report it",
            )
        if progress is not None:
            progress(name, report.status[name])
    return report


@contextlib.contextmanager
def group_level(report: BatchReport) -> Iterator[None]:
    """Run a batch's group-level step (cohort tables) after its participants.

    An error there after some participants finished (done now, or skipped as done
    before) becomes :class:`PartlyDone`, which the command line reports with exit code
    3: their outputs are complete and kept, only the group-level files are missing.
    """
    try:
        yield
    except (ParticipantsFailed, PartlyDone):
        raise
    except MetcliError as exc:
        finished = len(report.done) + len(report.skipped)
        if finished:
            raise PartlyDone(exc, finished) from exc
        raise
