"""One exception hierarchy for the whole library.

Every error metcli raises on purpose is a :class:`MetcliError`. Its message is
one line that names the file (or option), what is wrong and how to fix it, so
the command line can print it as it is. The command line maps the classes to
exit codes: :class:`UsageError` gives 2, every other :class:`MetcliError` 1.
"""

from __future__ import annotations

from pathlib import Path


class MetcliError(Exception):
    """Base class of every error metcli raises on purpose.

    Args:
        what: what is wrong, in one sentence.
        path: the file or folder concerned, if any.
        fix: how the user can fix it.
    """

    def __init__(self, what: str, *, path: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}: ")
        parts.append(self.what.rstrip("."))
        if self.fix:
            parts.append(f". Fix: {self.fix.rstrip('.')}")
        text = "".join(parts) + "."
        return " ".join(text.split())


class UsageError(MetcliError):
    """A bad argument or option value (exit code 2)."""


class InputError(MetcliError):
    """An input file or folder is missing, unreadable or malformed."""


class ImageError(InputError):
    """An image cannot be read or is not a usable 3D image."""


class GeometryError(InputError):
    """An image and a mask do not describe the same physical grid."""


class DicomError(InputError):
    """A DICOM series cannot be converted faithfully."""


class MaskError(InputError):
    """A segmentation (RTSTRUCT, DICOM-SEG, NRRD, NIfTI) cannot be imported."""


class WeightsError(InputError):
    """A model cannot be found, downloaded, verified or installed."""


class SchemaError(MetcliError):
    """A table or JSON document does not follow its schema."""


class OutputError(MetcliError):
    """An output cannot be written (permissions, disk, output inside input)."""


class ParticipantsFailed(MetcliError):
    """Some participants of a batch failed; the others were done (exit code 3).

    When every participant failed, :attr:`all_failed` is true and the command line
    exits 1: nothing was done.
    """

    def __init__(self, failures: dict[str, str], total: int):
        self.failures = dict(failures)
        self.total = total
        what = (
            f"all {total} participant(s) failed"
            if self.all_failed
            else f"{len(failures)} of {total} participant(s) failed"
        )
        super().__init__(
            what + ": " + ", ".join(sorted(failures)),
            fix="see the messages above, correct those inputs and run the same command again "
            "(finished participants are skipped)",
        )

    @property
    def all_failed(self) -> bool:
        return len(self.failures) >= self.total


class PartlyDone(MetcliError):
    """The group-level step failed after some participants finished (exit code 3).

    The participants' own outputs are complete and kept; a re-run skips them and
    redoes only the group-level step.
    """

    def __init__(self, cause: MetcliError, finished: int):
        self.cause = cause
        self.finished = int(finished)
        super().__init__(
            f"{cause.what.rstrip('.')}; {self.finished} participant(s) finished before this "
            "and their outputs are kept",
            path=cause.path,
            fix=(cause.fix.rstrip(".") + ", then run " if cause.fix else "run ")
            + "the same command again (finished participants are skipped)",
        )
