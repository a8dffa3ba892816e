"""The tables of split-lesions: a participant's lesion table (its columns, and reading it
back with typed values) and the group level's ``lesions.tsv`` and ``tumour_burden.tsv``
(columns and one burden row). :mod:`metcli.lesions.split_lesions` defines their values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from metcli.core.errors import InputError

#: The lesion table's columns and how to read each back from text.
LESION_COLUMNS: dict[str, type] = {
    "index": int,
    "name": str,
    "voxels": int,
    "volume_mm3": float,
    "longest_axial_diameter_mm": float,
    "max_3d_diameter_mm": float,
    "equivalent_diameter_mm": float,
    "centroid_x_mm": float,
    "centroid_y_mm": float,
    "centroid_z_mm": float,
    "bbox_i0": int,
    "bbox_j0": int,
    "bbox_k0": int,
    "bbox_i1": int,
    "bbox_j1": int,
    "bbox_k1": int,
    "kept": bool,
    "reason": str,
}
GROUP_KEYS = ("participant_id", "session", "phase")
GROUP_LESION_COLUMNS = [*GROUP_KEYS, *LESION_COLUMNS]
BURDEN_COLUMNS = [
    *GROUP_KEYS,
    "n_components",
    "n_lesions",
    "lesion_volume_mm3",
    "kept_lesion_volume_mm3",
    "liver_volume_mm3",
    "burden",
]

LESIONS_TABLE = "lesions.tsv"
BURDEN_TABLE = "tumour_burden.tsv"


def read_lesion_table(path: Path) -> list[dict]:
    """A participant's lesion table with typed values (``n/a`` -> None)."""
    from metcli.io.files import read_tsv

    rows = read_tsv(path, required=LESION_COLUMNS)
    typed = []
    for number, row in enumerate(rows, start=2):
        record = {}
        for column, kind in LESION_COLUMNS.items():
            try:
                record[column] = _parse(row[column], kind)
            except ValueError:
                raise InputError(
                    f"line {number}, column {column}: {row[column]!r} is not "
                    f"{'true/false' if kind is bool else 'a ' + kind.__name__}",
                    path=path,
                    fix="write the table again with split-lesions --overwrite",
                ) from None
        typed.append(record)
    return typed


def _parse(text: str, kind: type):
    if text == "n/a":
        return None
    if kind is bool:
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    if kind is int:
        return int(text)
    if kind is float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    return text


def burden_row(
    keys: Mapping[str, Any], rows: Sequence[dict], liver_voxels: int, voxel_volume: float
) -> dict:
    """One row of ``tumour_burden.tsv`` (see :mod:`metcli.lesions.split_lesions`)."""
    lesion_volume = float(sum(row["volume_mm3"] for row in rows))
    kept_volume = float(sum(row["volume_mm3"] for row in rows if row["kept"]))
    liver_volume = (liver_voxels * voxel_volume + lesion_volume) if liver_voxels else None
    return {
        **keys,
        "n_components": len(rows),
        "n_lesions": sum(1 for row in rows if row["kept"]),
        "lesion_volume_mm3": lesion_volume,
        "kept_lesion_volume_mm3": kept_volume,
        "liver_volume_mm3": liver_volume,
        "burden": None if liver_volume is None else lesion_volume / liver_volume,
    }
