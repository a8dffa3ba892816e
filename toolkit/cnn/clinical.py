"""Clinical inputs of an image model (``train-cnn --covariates age,sex``).

The columns of participants.tsv are encoded by :mod:`metcli.io.covariates`: numeric
columns standardised with the mean and standard deviation of the **training**
patients only (never validation or test: no leakage), categorical ones as indicators
of every level but the first. The spec goes into the card (``covariates``) and
predict replays it (:func:`encode_for_card`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError


def parse_covariates(text) -> list[str]:
    """``age,sex`` (or a list) -> ``["age", "sex"]``; each name once."""
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [str(i).strip() for i in items if str(i).strip()]
    if len(set(names)) != len(names):
        raise UsageError(
            f"--covariates names a column twice: {','.join(names)}", fix="name each column once"
        )
    return names


def _rows(labels: Path, columns: Sequence[str]) -> dict[str, dict]:
    from metcli.io.participants import read_label_rows

    read = read_label_rows(Path(labels), None)
    missing = sorted(set(columns) - set(read[0] if read else ()))
    if missing:
        raise InputError(
            f"no column {', '.join(missing)} for --covariates",
            path=labels,
            fix="add the column(s) to participants.tsv, or name others with --covariates",
        )
    return {r["participant_id"]: r for r in read}


def fit_covariates(
    labels: Path, columns: Sequence[str], plan: dict[str, str]
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(the card's covariate spec, each planned participant's encoded values).

    The encoding is learned on the participants ``plan`` puts in ``train``; every
    planned participant must have a value of every column."""
    from metcli.io.covariates import encode_covariates

    rows = _rows(labels, columns)
    train = {p: rows.get(p, {}) for p, s in plan.items() if s == "train"}
    spec, _, _ = encode_covariates(train, columns, standardise=True)
    values = encode_for_card(spec, {p: rows.get(p, {}) for p in plan}, labels)
    return spec, values


def encode_for_card(spec: list[dict], rows: dict[str, dict], where: Path) -> dict[str, np.ndarray]:
    """Each participant's values by a card's spec; a participant lacking one is an error."""
    from metcli.io.covariates import encode_covariates

    _, values, lacking = encode_covariates(rows, [], spec=spec)
    if lacking:
        columns = ", ".join(sorted({item["column"] for item in spec}))
        raise InputError(
            f"{len(lacking)} participant(s) lack a value of {columns}: "
            f"{', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}",
            path=where,
            fix="fill in the values, or leave these participants out",
        )
    return {p: np.asarray(v, dtype=np.float32) for p, v in values.items()}
