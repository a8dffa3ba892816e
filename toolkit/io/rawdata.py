"""The files around a raw dataset that BIDS tools expect: ``.bidsignore``, ``README``
and ``participants.json``.

BIDS has no CT datatype yet (BEP024 proposes one), so metcli's ``_ct`` images and
their sidecars are listed in ``.bidsignore``: the BIDS validator then skips them and
checks the rest (``dataset_description.json``, ``participants.tsv`` and its data
dictionary ``participants.json``, MR images under their BIDS names). A dataset whose
subjects hold only CT has no file the validator counts as data; the validator's
``SUBJECT_FOLDERS`` error that follows is turned into a warning by the configuration
metcli ships (``schemas/bids-validator-config.json``, docs/bids.md).

Each file is written when missing and never overwritten: a user's README or
data dictionary stays as the user wrote it (``.bidsignore`` gets metcli's lines added).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from metcli.io.files import atomic_path, read_json, write_json

#: metcli's names that BIDS does not define (yet): CT images and their sidecars.
BIDSIGNORE = (
    "**/*_ct.nii.gz",
    "**/*_ct.nii",
    "**/*_ct.json",
    "**/*_ADC.nii.gz",
    "**/*_ADC.json",
)

#: The data dictionary of participants.tsv's columns metcli knows (BIDS' format).
COLUMN_DESCRIPTIONS: dict[str, dict[str, Any]] = {
    "participant_id": {"Description": "participant identifier (sub-<label>)"},
    "primary": {
        "Description": "the label to predict: the primary tumour (origin) of the liver "
        "lesions, or the lesion class of the study",
    },
    "age": {"Description": "age at imaging", "Units": "year"},
    "sex": {
        "Description": "sex of the participant",
        "Levels": {"M": "male", "F": "female", "O": "other"},
    },
    "site": {"Description": "the hospital or scanner site the images come from"},
}


def write_bidsignore(raw_dir: Path, extra: Iterable[str] = ()) -> Path:
    """``.bidsignore`` with metcli's lines (and ``extra``) added to any already there."""
    path = Path(raw_dir) / ".bidsignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    wanted = [line for line in (*BIDSIGNORE, *extra) if line not in lines]
    if wanted or not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines + wanted) + "\n", encoding="utf-8")
    return path


def write_readme(raw_dir: Path, text: str) -> Path:
    """``README`` (BIDS recommends one) unless the dataset has one already."""
    raw_dir = Path(raw_dir)
    for existing in ("README", "README.md", "README.rst", "README.txt"):
        if (raw_dir / existing).is_file():
            return raw_dir / existing
    path = raw_dir / "README"
    with atomic_path(path) as tmp:
        tmp.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def participants_dictionary(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The BIDS data dictionary of ``columns``: metcli's descriptions, and the levels of
    ``primary`` as its rows hold them. Columns metcli does not know are left out (the
    validator warns about them; the user describes them)."""
    doc: dict[str, Any] = {}
    for column in columns:
        if column not in COLUMN_DESCRIPTIONS:
            continue
        entry = dict(COLUMN_DESCRIPTIONS[column])
        if column == "primary":
            levels = sorted({str(r[column]) for r in rows if r.get(column) is not None})
            if levels:
                entry["Levels"] = {level: f"{level} (class label)" for level in levels}
        if column == "sex":
            present = {str(r[column]) for r in rows if r.get(column) is not None}
            if present and not present <= set(entry["Levels"]):
                entry.pop("Levels")
        doc[column] = entry
    return doc


def write_participants_dictionary(
    raw_dir: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> Path:
    """``participants.json`` beside participants.tsv: metcli's columns described, and
    any description already there kept as it is."""
    path = Path(raw_dir) / "participants.json"
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = dict(read_json(path))
        except Exception:  # noqa: BLE001 - a broken dictionary is rewritten
            existing = {}
    doc = {**participants_dictionary(columns, rows), **existing}
    if doc != existing or not path.is_file():
        write_json(doc, path)
    return path


def write_raw_extras(raw_dir: Path, *, readme: str) -> None:
    """``.bidsignore`` and ``README`` of a raw dataset metcli writes."""
    write_bidsignore(raw_dir)
    write_readme(raw_dir, readme)
