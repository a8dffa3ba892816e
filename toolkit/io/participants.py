"""``participants.tsv``: who is in a raw dataset, their label and covariates."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from metcli.core.errors import InputError
from metcli.io.bids import clean_label, participant_folders
from metcli.io.files import NA, read_tsv, write_tsv
from metcli.io.rawdata import write_participants_dictionary

FILENAME = "participants.tsv"
BASE_COLUMNS = ("participant_id", "primary", "age", "sex", "site")


def participants_path(raw_dir: Path) -> Path:
    return Path(raw_dir) / FILENAME


def _typed(row: Mapping[str, str], path: Path, line: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        out[key] = None if value in (NA, "") else value
    pid = out.get("participant_id")
    if not pid or not str(pid).startswith("sub-"):
        raise InputError(
            f"line {line}: participant_id {pid!r} does not start with 'sub-'",
            path=path,
            fix="write participant ids as sub-<label>",
        )
    try:
        clean_label(pid)
    except Exception:
        raise InputError(
            f"line {line}: participant_id {pid!r} is not a valid label "
            "(letters and digits after 'sub-')",
            path=path,
            fix="rename the participant with letters and digits only",
        ) from None
    if out.get("age") is not None:
        try:
            out["age"] = float(out["age"])
        except ValueError:
            raise InputError(
                f"line {line}: age {out['age']!r} is not a number",
                path=path,
                fix="write ages as numbers, or n/a when unknown",
            ) from None
    return out


def read_participants(
    raw_dir: Path, *, required: Iterable[str] = ("participant_id",)
) -> list[dict[str, Any]]:
    """Rows of ``participants.tsv`` (``n/a`` becomes None, age a float).

    Raises :class:`InputError` when the file is missing, malformed, or lists a
    participant twice.
    """
    path = participants_path(raw_dir)
    if not path.is_file():
        raise InputError(
            "participants.tsv not found",
            path=path,
            fix="create it: a tab-separated table with a participant_id column "
            "(sub-<label>) and a primary column (the label)",
        )
    rows = [_typed(r, path, i) for i, r in enumerate(read_tsv(path, required=required), start=2)]
    seen = set()
    for row in rows:
        if row["participant_id"] in seen:
            raise InputError(
                f"{row['participant_id']} is listed twice",
                path=path,
                fix="keep one row per participant",
            )
        seen.add(row["participant_id"])
    return rows


def participant_labels(raw_dir: Path) -> list[str]:
    """Labels (without ``sub-``) of the participants listed in participants.tsv."""
    return [r["participant_id"][4:] for r in read_participants(raw_dir)]


def labels_by_participant(raw_dir: Path, column: str = "primary") -> dict[str, str]:
    """``{participant_id: label}`` for every participant with a label in ``column``."""
    rows = read_participants(raw_dir, required=("participant_id", column))
    return {r["participant_id"]: r[column] for r in rows if r.get(column) is not None}


def write_participants(raw_dir: Path, rows: list[Mapping[str, Any]]) -> Path:
    """Write participants.tsv atomically, rows sorted by participant_id."""
    columns = list(BASE_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    columns = [
        c for c in columns if c == "participant_id" or any(r.get(c) is not None for r in rows)
    ]
    ordered = sorted(rows, key=lambda r: r["participant_id"])
    path = write_tsv(ordered, columns, participants_path(raw_dir), schema="participants")
    write_participants_dictionary(raw_dir, columns, ordered)
    return path


def upsert_participant(raw_dir: Path, row: Mapping[str, Any]) -> Path:
    """Add a participant to participants.tsv, or update the given columns of its row."""
    path = participants_path(raw_dir)
    rows = read_participants(raw_dir) if path.is_file() else []
    for existing in rows:
        if existing["participant_id"] == row["participant_id"]:
            existing.update({k: v for k, v in row.items() if v is not None})
            break
    else:
        rows.append(dict(row))
    return write_participants(raw_dir, rows)


def dataset_participants(raw_dir: Path) -> list[str]:
    """Participants of a raw dataset: those in participants.tsv (it must exist)."""
    listed = participant_labels(raw_dir)
    return listed if listed else participant_folders(raw_dir)


# ----------------------------------------------------------------------------- labels
def read_label_rows(path: Path, column: str | None) -> list[dict[str, Any]]:
    """Rows of a participants table (a participants.tsv file or a folder holding one)."""
    path = Path(path)
    required = ("participant_id",) + ((column,) if column else ())
    if path.is_dir():
        return read_participants(path, required=required)
    if not path.is_file():
        raise InputError(
            "participants table not found",
            path=path,
            fix="give participants.tsv (participant_id and the label column)",
        )
    if path.name == "participants.tsv":
        return read_participants(path.parent, required=required)
    rows = [
        {k: (None if v in (NA, "") else v) for k, v in r.items()}
        for r in read_tsv(path, required=required)
    ]
    seen = set()
    for row in rows:
        pid = row["participant_id"]
        if not pid or not pid.startswith("sub-"):
            raise InputError(
                f"participant_id {pid!r} does not start with 'sub-'",
                path=path,
                fix="write participant ids as sub-<label>",
            )
        if pid in seen:
            raise InputError(
                f"{pid} is listed twice", path=path, fix="keep one row per participant"
            )
        seen.add(pid)
    return rows
