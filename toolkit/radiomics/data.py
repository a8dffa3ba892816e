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

Cohorts join features with labels (:func:`load_cohort`) and split files say who
is trained on and who is tested (:func:`plan_split`). The predictions format
lives in :mod:`metcli.prediction.predict`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError
from metcli.io.files import NA
from metcli.io.participants import read_label_rows
from metcli.io.splits import read_split

log = logging.getLogger(__name__)

FEATURES_TABLE = "features.tsv"
ID_COLUMNS = ("participant_id", "session", "phase", "lesion_id", "status")
#: Columns of extract's tables that are neither identifiers nor features.
TEXT_COLUMNS = ("message", "peritumoral_status", "peritumoral_message")
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


def _read_one(table: Path) -> tuple[list[str], list[tuple], list[list[float]], int]:
    from metcli.io.files import read_tsv

    rows = read_tsv(table, required=ID_COLUMNS)
    header = table.read_text(encoding="utf-8-sig").split("\n", 1)[0].rstrip("\r").split("\t")
    names = [c.strip() for c in header if _is_feature(c.strip())]
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
                    fix="write numbers, or n/a when missing",
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


# ----------------------------------------------------------------------------- covariates
def encode_covariates(
    rows: Mapping[str, Mapping[str, Any]],
    covariates: Sequence[str],
    *,
    spec: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[dict], dict[str, list[float]], list[str]]:
    """Covariate columns per participant.

    A covariate whose values all read as numbers is one numeric column
    (``covariate_<name>``); another one is categorical: one indicator column
    per level but the first in sorted order (``covariate_<name>_<level>``).
    ``spec`` (from a model card) fixes the encoding instead of learning it.

    Returns (spec, {participant_id: values}, participants lacking a value).
    """
    if spec is None:
        spec = []
        for name in covariates:
            present = [r.get(name) for r in rows.values() if r.get(name) is not None]
            if not present:
                raise InputError(
                    f"covariate {name!r} has no value for any participant",
                    fix=f"add a {name} column to participants.tsv",
                )
            try:
                [float(v) for v in present]
                spec.append({"name": f"covariate_{name}", "column": name, "encoding": "numeric"})
            except (TypeError, ValueError):
                levels = sorted({str(v) for v in present})
                for level in levels[1:]:
                    spec.append(
                        {
                            "name": f"covariate_{name}_{level}",
                            "column": name,
                            "encoding": "indicator",
                            "level": level,
                            "reference": levels[0],
                        }
                    )
    values: dict[str, list[float]] = {}
    lacking = []
    for pid, row in rows.items():
        record = []
        for item in spec:
            raw = row.get(item["column"])
            if raw is None:
                break
            if item["encoding"] == "numeric":
                try:
                    record.append(float(raw))
                except (TypeError, ValueError):
                    break
            else:
                record.append(1.0 if str(raw) == item["level"] else 0.0)
        else:
            values[pid] = record
            continue
        lacking.append(pid)
    return list(spec), values, sorted(lacking)


# ----------------------------------------------------------------------------- cohort
_CLASS_RE = r"^[A-Za-z0-9_.-]+$"


@dataclass
class Cohort:
    """The lesions a model learns from: features (and covariates), labels, groups."""

    frame: Any  # pandas DataFrame, one row per lesion
    y: np.ndarray  # class index per lesion
    classes: list[str]  # in the model card's order (binary: [negative, positive])
    positive: str | None
    participants: np.ndarray
    lesion_ids: np.ndarray
    sites: np.ndarray | None
    features: list[str]  # radiomics feature columns
    covariates: list[dict]  # covariate column specs (see encode_covariates)
    table: FeatureTable
    excluded: dict[str, str] = field(default_factory=dict)  # participant -> reason
    excluded_lesions: int = 0

    @property
    def keep(self) -> list[str]:
        return [c["name"] for c in self.covariates]

    def patient_labels(self) -> dict[str, str]:
        return {p: self.classes[c] for p, c in zip(self.participants, self.y)}


def load_cohort(
    features,
    labels: Path,
    *,
    label_column: str = "primary",
    positive_class: str | None = None,
    covariates: Sequence[str] = (),
    need_site: bool = False,
    phase: str | None = None,
    session: str | None = None,
) -> Cohort:
    """Features joined with the patients' labels (every lesion inherits its patient's).

    Participants without a label (or a needed covariate or site) are left out
    with a warning that lists them; so are lesions with a missing feature value
    (features missing for every lesion are dropped first).
    """
    import pandas as pd

    table = read_features(features, phase=phase, session=session)
    rows = {r["participant_id"]: r for r in read_label_rows(labels, label_column)}
    excluded, spec, cov_values = _left_out(
        table, rows, label_column=label_column, covariates=covariates, need_site=need_site
    )
    keep_rows = np.array([p not in excluded for p in table.participants], dtype=bool)
    table = table.take(keep_rows)
    if not table.keys:
        raise InputError(
            f"no lesion has a participant with a {label_column} label",
            path=labels,
            fix="check that participant ids match the features",
        )
    values = table.values
    empty = [n for n, col in zip(table.feature_names, values.T) if np.all(np.isnan(col))]
    if empty:
        log.warning(
            "%d feature(s) missing for every lesion, dropped: %s",
            len(empty),
            ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""),
        )
    names = [n for n in table.feature_names if n not in set(empty)]
    columns = [i for i, n in enumerate(table.feature_names) if n not in set(empty)]
    complete = ~np.any(np.isnan(values[:, columns]), axis=1)
    n_incomplete = int((~complete).sum())
    if n_incomplete:
        log.warning("%d lesion(s) with a missing feature value (n/a) left out", n_incomplete)
    table = table.take(complete)
    table.feature_names, table.values = names, table.values[:, columns]
    participants = table.participants
    frame = pd.DataFrame(table.values, columns=names)
    for j, item in enumerate(spec):
        frame[item["name"]] = [cov_values[p][j] for p in participants]
    # float32-cast: the ONNX model computes in float32, so train on values it can see
    frame = frame.astype(np.float32).astype(np.float64)
    label_of = {p: str(rows[p][label_column]) for p in set(participants.tolist())}
    positive, classes = _classes(label_of, positive_class, labels=labels, label_column=label_column)
    y = np.array([classes.index(label_of[p]) for p in participants], dtype=np.int64)
    sites = (
        np.array([str(rows[p]["site"]) for p in participants], dtype=object) if need_site else None
    )
    return Cohort(
        frame,
        y,
        classes,
        positive,
        participants,
        table.lesion_ids,
        sites,
        names,
        spec,
        table,
        excluded,
        n_incomplete,
    )


def _left_out(
    table: FeatureTable,
    rows: Mapping[str, Mapping[str, Any]],
    *,
    label_column: str,
    covariates: Sequence[str],
    need_site: bool,
):
    """(participants left out -> why, covariate spec, covariate values); warns if any."""
    excluded: dict[str, str] = {}
    for pid in sorted(set(table.participants.tolist())):
        if pid not in rows:
            excluded[pid] = "not in the labels file"
        elif rows[pid].get(label_column) is None:
            excluded[pid] = f"no {label_column} label"
        elif need_site and rows[pid].get("site") is None:
            excluded[pid] = "no site"
    spec, cov_values, lacking = (
        encode_covariates({p: r for p, r in rows.items() if p not in excluded}, covariates)
        if covariates
        else ([], {}, [])
    )
    for pid in lacking:
        if pid in set(table.participants.tolist()):
            excluded.setdefault(pid, "a covariate is missing")
    if excluded:
        log.warning(
            "%d participant(s) left out: %s",
            len(excluded),
            "; ".join(f"{p} ({why})" for p, why in sorted(excluded.items())),
        )
    return excluded, spec, cov_values


def _classes(
    label_of: Mapping[str, str], positive_class: str | None, *, labels: Path, label_column: str
) -> tuple[str | None, list[str]]:
    """(positive class or None, classes in output order) of the participants' labels.

    Binary: ``[negative, positive]``, the positive class being ``positive_class``
    or the label that sorts last; three or more: sorted, no positive class.
    """
    import re

    bad = sorted({v for v in label_of.values() if not re.match(_CLASS_RE, v)})
    if bad:
        raise InputError(
            f"label {bad[0]!r} has characters a class name cannot have",
            path=labels,
            fix="use letters, digits, '.', '_' and '-' in labels",
        )
    present = sorted(set(label_of.values()))
    if len(present) < 2:
        raise InputError(
            f"every labelled participant has the same {label_column} "
            f"({present[0]}); a classifier needs two classes at least",
            path=labels,
            fix="add participants of another class",
        )
    if positive_class is not None:
        if len(present) != 2:
            raise UsageError(
                f"--positive-class applies to two classes; the labels have {len(present)}",
                fix="leave --positive-class out",
            )
        if positive_class not in present:
            raise UsageError(
                f"--positive-class {positive_class!r} is not a label ({', '.join(present)})",
                fix="choose one of the labels",
            )
    if len(present) == 2:
        positive = positive_class or present[1]
        log.info("positive class: %s", positive)
        return positive, [c for c in present if c != positive] + [positive]
    return None, present


@dataclass
class SplitPlan:
    """Training and test participants, and outer folds fixed by a split file."""

    train: list[str]
    test: list[str]
    folds: dict[str, int] | None
    source: str


def plan_split(
    cohort: Cohort,
    *,
    protocol: str,
    test_patients: int | None,
    split: Path | None,
    seed: int,
    min_train_per_class: int = 2,
) -> SplitPlan:
    """Who is trained on and who is tested, always by patient."""
    labels = cohort.patient_labels()
    everyone = sorted(labels)
    if split is not None:
        if protocol != "holdout":
            raise UsageError("--split needs --protocol holdout")
        plan = read_split(split)
        missing = [p for p in everyone if p not in plan.sets]
        if missing:
            log.warning(
                "%d participant(s) not in the split file, left out: %s",
                len(missing),
                ", ".join(missing),
            )
        train = [p for p in everyone if plan.sets.get(p) in ("train", "val")]
        test = [p for p in everyone if plan.sets.get(p) == "test"]
        folds = {p: plan.folds[p] for p in train if p in plan.folds}
        fixed = folds if train and len(folds) == len(train) else None
        result = SplitPlan(train, test, fixed, "split file")
    elif protocol == "holdout":
        wanted = 8 if test_patients is None else int(test_patients)
        by_class = {c: sorted(p for p in everyone if labels[p] == c) for c in cohort.classes}
        if wanted >= len(everyone):
            raise UsageError(
                f"--test-patients {wanted} asks for as many patients as the cohort "
                f"has ({len(everyone)})",
                fix="lower --test-patients",
            )
        shares = {c: wanted * len(v) / len(everyone) for c, v in by_class.items()}
        counts = {c: max(1, int(np.floor(s))) for c, s in shares.items()}
        for c in sorted(by_class, key=lambda c: (-(shares[c] - np.floor(shares[c])), c)):
            if sum(counts.values()) >= wanted:
                break
            counts[c] += 1
        rng = np.random.default_rng(seed)
        test = []
        for c, members in by_class.items():
            if counts[c] > len(members) - min_train_per_class:
                raise UsageError(
                    f"--test-patients {wanted} needs {counts[c]} test patient(s) of "
                    f"class {c}, which has {len(members)} (at least "
                    f"{min_train_per_class} must stay for training)",
                    fix="lower --test-patients or add patients",
                )
            test.extend(rng.choice(members, size=counts[c], replace=False).tolist())
        test = sorted(test)
        result = SplitPlan(
            [p for p in everyone if p not in set(test)],
            test,
            None,
            f"{len(test)} test patients, stratified by class",
        )
    else:
        result = SplitPlan(everyone, [], None, "nested cross-validation, no test set")
    train_classes = {labels[p] for p in result.train}
    for c in cohort.classes:
        n = sum(1 for p in result.train if labels[p] == c)
        if n < min_train_per_class:
            raise InputError(
                f"the training set has {n} patient(s) of class {c}; at least "
                f"{min_train_per_class} are needed",
                path=split,
                fix="put more patients of that class in the training set",
            )
    if len(train_classes) < 2:
        raise InputError(
            "the training set has a single class",
            path=split,
            fix="put patients of every class in the training set",
        )
    return result
