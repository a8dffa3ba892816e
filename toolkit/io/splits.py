"""Split files (``split.tsv``): participant_id, set (train, val, test), optional fold.

Splits are by patient: a participant in two sets is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metcli.core.errors import InputError
from metcli.io.files import NA

SPLIT_COLUMNS = ("participant_id", "set", "fold")
SETS = ("train", "val", "test")


# ----------------------------------------------------------------------------- split files
@dataclass
class SplitFile:
    """A split file: participant -> set (train, val, test) and optional fold."""

    sets: dict[str, str] = field(default_factory=dict)
    folds: dict[str, int] = field(default_factory=dict)


def read_split(path: Path) -> SplitFile:
    """Read a split file (participant_id, set, optional fold); a patient in two sets is refused."""
    from metcli.io.files import read_tsv

    path = Path(path)
    rows = read_tsv(path, required=("participant_id", "set"))
    split = SplitFile()
    for line, row in enumerate(rows, start=2):
        pid, which = row["participant_id"], row["set"]
        if not pid.startswith("sub-"):
            raise InputError(
                f"line {line}: participant_id {pid!r} does not start with 'sub-'",
                path=path,
                fix="write participant ids as sub-<label>",
            )
        if which not in SETS:
            raise InputError(
                f"line {line}: set {which!r} is not one of {', '.join(SETS)}",
                path=path,
                fix="use train, val or test",
            )
        if pid in split.sets:
            if split.sets[pid] != which:
                raise InputError(
                    f"{pid} is in two sets ({split.sets[pid]} and {which}); a "
                    "patient in both would leak into the test",
                    path=path,
                    fix="put each participant in one set",
                )
            raise InputError(
                f"{pid} is listed twice", path=path, fix="keep one row per participant"
            )
        split.sets[pid] = which
        fold = row.get("fold", NA)
        if fold not in (NA, "", None):
            try:
                split.folds[pid] = int(fold)
            except ValueError:
                raise InputError(
                    f"line {line}: fold {fold!r} is not an integer",
                    path=path,
                    fix="write folds as integers, or n/a",
                ) from None
    if not split.sets:
        raise InputError(
            "the split file lists no participant", path=path, fix="write one row per participant"
        )
    return split
