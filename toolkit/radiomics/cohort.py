"""The lesions a radiomics model learns from, and who is trained on and who is tested.

:func:`load_cohort` joins the features (:func:`metcli.radiomics.data.read_features`)
with the patients' labels and covariates (every lesion inherits its patient's);
:func:`plan_split` says, always by patient, who is trained on and who is tested
(a split file, a stratified hold-out set, or nested cross-validation alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError
from metcli.io.participants import read_label_rows
from metcli.io.splits import read_split
from metcli.radiomics.data import FeatureTable, encode_covariates, read_features

log = logging.getLogger(__name__)

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
