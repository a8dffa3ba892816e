"""The tables around radiomics models: features, labels, split files, predictions.

Features come from ``metcli extract``: its output folder (whose group table is
``features.tsv``) or one features table. A table has the columns
``participant_id``, ``session``, ``phase``, ``lesion_id``, ``status`` (``ok`` or
``failed:<reason>``), ``message``, then the features (``original_<class>_<feature>``,
``peritumoral_original_...``, any other name) and ``diagnostics_*`` columns;
``message``, ``peritumoral_status``, ``peritumoral_message`` and the diagnostics
are not features. Missing values are ``n/a``. The JSON sidecar beside the
table records the extraction settings hash under ``extraction_settings_sha256``
(at its top level or under ``Provenance.settings``).

Tables from other tools (pyradiomics' own batch output with two columns added, a
spreadsheet) need only ``participant_id``, ``lesion_id`` and the features: ``session``
and ``phase`` (or ``channel``) default to ``n/a``, ``status`` to ``ok``, and
pyradiomics' ``Image`` and ``Mask`` path columns are not features. A ``.csv`` table is
read as comma-separated. A column named like a label (``primary``) is refused: the
labels come from participants.tsv, never from the features.

Covariates from participants.tsv are encoded by :mod:`metcli.io.covariates`;
:mod:`metcli.radiomics.cohort` joins features with labels. The predictions
format lives in :mod:`metcli.prediction.predict`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError
from metcli.io.covariates import encode_covariates  # noqa: F401 (the room's API)
from metcli.io.files import NA

log = logging.getLogger(__name__)

FEATURES_TABLE = "features.tsv"
ID_COLUMNS = ("participant_id", "session", "phase", "lesion_id", "status")
#: The columns every features table needs; the other identifiers have defaults.
REQUIRED_COLUMNS = ("participant_id", "lesion_id")
#: Defaults of the optional identifiers (``channel`` is read as ``phase``).
DEFAULTS = {"session": NA, "phase": NA, "status": "ok"}
#: Columns of extract's tables (and pyradiomics' batch output) that are neither
#: identifiers nor features.
TEXT_COLUMNS = ("message", "peritumoral_status", "peritumoral_message", "Image", "Mask", "channel")
#: Columns that would carry the label into the features (refused).
LABEL_COLUMNS = ("primary",)
SETTINGS_KEY = "extraction_settings_sha256"


# ----------------------------------------------------------------------------- features
def features_table_path(path: Path) -> Path:
    """The table to read for FEATURES: the file itself, or ``<folder>/features.tsv``."""
    path = Path(path)
    if path.is_dir():
        table = path / FEATURES_TABLE
        if not table.is_file():
            raise InputError(
                f"no {FEATURES_TABLE} in the features folder",
                path=path,
                fix="give the folder `metcli extract` wrote (after its group "
                "level) or a features table",
            )
        return table
    if not path.is_file():
        raise InputError(
            "features not found",
            path=path,
            fix="give extract's output folder or a features table (.tsv)",
        )
    return path


def extraction_settings_hash(table: Path) -> str | None:
    """The extraction settings hash from the sidecar beside ``table`` (None if absent)."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import read_json

    try:
        sidecar = sidecar_path(table)
    except InputError:
        sidecar = table.with_suffix(".json")
    if not sidecar.is_file():
        log.warning(
            "%s: no JSON sidecar beside the features table; the extraction settings "
            "are unknown (recorded as null)",
            table.name,
        )
        return None
    doc = read_json(sidecar)
    candidates = [doc]
    if isinstance(doc, dict) and isinstance(doc.get("Provenance"), dict):
        prov = doc["Provenance"]
        candidates.append(prov)
        if isinstance(prov.get("settings"), dict):
            candidates.append(prov["settings"])
    for where in candidates:
        if isinstance(where, dict) and isinstance(where.get(SETTINGS_KEY), str):
            return where[SETTINGS_KEY]
    log.warning(
        "%s: the sidecar has no %s; the extraction settings are unknown (recorded as null)",
        sidecar.name,
        SETTINGS_KEY,
    )
    return None


@dataclass
class FeatureTable:
    """Lesions (rows) by features (columns) of one or more extract outputs.

    ``keys`` holds one (participant_id, session, phase, lesion_id) per row of
    ``values`` (float64, NaN for missing). ``failed`` counts the rows left out
    for a non-ok status.
    """

    tables: list[Path]
    feature_names: list[str]
    keys: list[tuple[str, str | None, str | None, int]]
    values: np.ndarray
    settings_sha256: str | None
    failed: int = 0
    phase: str | None = None

    @property
    def participants(self) -> np.ndarray:
        return np.array([k[0] for k in self.keys], dtype=object)

    @property
    def lesion_ids(self) -> np.ndarray:
        return np.array([k[3] for k in self.keys], dtype=np.int64)

    def take(self, rows) -> "FeatureTable":
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return FeatureTable(
            self.tables,
            self.feature_names,
            [self.keys[i] for i in rows],
            self.values[rows],
            self.settings_sha256,
            self.failed,
            self.phase,
        )


def _is_feature(column: str) -> bool:
    return column not in ID_COLUMNS and column not in TEXT_COLUMNS and "diagnostics_" not in column


def _table_rows(table: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a features table (TSV, or CSV by its extension), with the
    optional identifiers filled in (:data:`DEFAULTS`)."""
    import csv

    from metcli.io.files import read_table

    delimiter = "," if table.suffix.lower() == ".csv" else "\t"
    rows = read_table(table, required=REQUIRED_COLUMNS, delimiter=delimiter)
    with open(table, encoding="utf-8-sig", newline="") as handle:
        header = [c.strip() for c in next(csv.reader(handle, delimiter=delimiter))]
    leaking = [c for c in header if c in LABEL_COLUMNS]
    if leaking:
        raise InputError(
            f"the features table has a label column ({', '.join(leaking)})",
            path=table,
            fix="remove it: the labels are read from participants.tsv (--labels), "
            "never from the features",
        )
    for row in rows:
        if "phase" not in row and "channel" in row:
            row["phase"] = row["channel"]
        for column, default in DEFAULTS.items():
            if row.get(column) in (None, ""):
                row[column] = default
    return header, rows


def _read_one(table: Path) -> tuple[list[str], list[tuple], list[list[float]], int]:
    header, rows = _table_rows(table)
    names = [c for c in header if _is_feature(c)]
    keys, values, failed = [], [], 0
    for line, row in enumerate(rows, start=2):
        status = row["status"]
        if status != "ok":
            if not status.startswith("failed"):
                raise InputError(
                    f"line {line}: status {status!r} is neither 'ok' nor 'failed:<reason>'",
                    path=table,
                    fix="write the table again with metcli extract",
                )
            failed += 1
            continue
        pid = row["participant_id"]
        if not pid.startswith("sub-") or len(pid) < 5:
            raise InputError(
                f"line {line}: participant_id {pid!r} does not start with 'sub-'",
                path=table,
                fix="write participant ids as sub-<label>",
            )
        try:
            lesion = int(row["lesion_id"])
        except ValueError:
            raise InputError(
                f"line {line}: lesion_id {row['lesion_id']!r} is not an integer",
                path=table,
                fix="write lesion ids as integers",
            ) from None
        record = []
        for name in names:
            text = row[name]
            if text in (NA, ""):
                record.append(math.nan)
                continue
            try:
                value = float(text)
            except ValueError:
                raise InputError(
                    f"line {line}, column {name}: {text!r} is not a number",
                    path=table,
                    fix="write numbers, or n/a when missing; a column that is not a feature "
                    "must be removed (or named diagnostics_<name>)",
                ) from None
            record.append(value if math.isfinite(value) else math.nan)
        session = None if row["session"] in (NA, "") else row["session"]
        phase = None if row["phase"] in (NA, "") else row["phase"]
        keys.append((pid, session, phase, lesion))
        values.append(record)
    return names, keys, values, failed


def read_features(
    paths: Sequence[Path] | Path,
    *,
    phase: str | None = None,
    session: str | None = None,
    phase_option: str = "--phase",
) -> FeatureTable:
    """Read one or more features tables (or extract folders) into a :class:`FeatureTable`.

    Rows whose status is not ``ok`` are left out with a warning (counted in
    ``failed``). Several phases need ``phase``; a participant with several
    sessions needs ``session``. Tables made with other extraction settings than
    each other are refused.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = [features_table_path(Path(p)) for p in paths]
    names: list[str] | None = None
    keys: list[tuple] = []
    values: list[list[float]] = []
    failed = 0
    hashes = []
    for table in tables:
        these, k, v, f = _read_one(table)
        if names is None:
            names = these
        elif these != names:
            other = sorted(set(these) ^ set(names))
            raise InputError(
                "the features differ from those of the first table"
                + (f" ({', '.join(other[:5])})" if other else " (other order)"),
                path=table,
                fix="give tables written by the same extract settings",
            )
        keys.extend(k)
        values.extend(v)
        failed += f
        hashes.append(extraction_settings_hash(table))
    if len(set(hashes)) > 1:
        raise InputError(
            "the features tables were made with different extraction settings "
            f"({', '.join(str(h)[:12] for h in hashes)})",
            path=tables[-1],
            fix="give tables extracted with the same settings",
        )
    if failed:
        log.warning("%d lesion row(s) with a failed extraction status left out", failed)
    if not names:
        raise InputError(
            "the table has no feature columns",
            path=tables[0],
            fix="give a features table written by metcli extract",
        )
    array = np.asarray(values, dtype=np.float64).reshape(len(keys), len(names))
    table = FeatureTable(tables, names, keys, array, hashes[0], failed)
    table = _choose_phase_and_session(table, phase, session, phase_option)
    seen = set()
    for key in table.keys:
        if key in seen:
            raise InputError(
                f"lesion {key[3]} of {key[0]} appears twice",
                path=tables[0],
                fix="give each lesion one row per phase",
            )
        seen.add(key)
    if not table.keys:
        raise InputError(
            "no lesion with status ok",
            path=tables[0],
            fix="check the extraction's failures (status column)",
        )
    return table


def _choose_phase_and_session(table: FeatureTable, phase, session, option) -> FeatureTable:
    phases = sorted({k[2] for k in table.keys}, key=str)
    if not table.keys:
        raise InputError(
            "the features hold no lesion: no row to predict or train on",
            fix="check split-lesions' tables (kept) and extract's output; a participant "
            "without a kept lesion has nothing to predict",
        )
    if phase is not None:
        if phase not in phases:
            raise UsageError(
                f"{option} {phase!r} is not in the features (phases: "
                f"{', '.join(map(str, phases))})",
                fix="give features of that phase" if option != "--phase" else "choose one of them",
            )
        table = table.take([i for i, k in enumerate(table.keys) if k[2] == phase])
    elif len(phases) > 1:
        raise UsageError(
            f"the features hold several phases ({', '.join(map(str, phases))})",
            fix="choose one with --phase",
        )
    if session is not None:
        table = table.take([i for i, k in enumerate(table.keys) if k[1] == session])
        if not table.keys:
            raise UsageError(
                f"--session {session!r} is not in the features",
                fix="choose a session the features have",
            )
    sessions: dict[str, set] = {}
    for key in table.keys:
        sessions.setdefault(key[0], set()).add(key[1])
    several = sorted(p for p, s in sessions.items() if len(s) > 1)
    if several:
        raise UsageError(
            f"{several[0]} has lesions from several sessions", fix="choose one with --session"
        )
    table.phase = table.keys[0][2] if table.keys else None
    return table
