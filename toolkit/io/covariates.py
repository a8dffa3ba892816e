"""Covariates: clinical columns of participants.tsv (age, sex, ...) as model inputs.

One encoding serves the radiomics models (``train-radiomics --covariates``) and the
image models (``train-cnn --covariates``), and predict replays it from the card:

* a column whose values all read as numbers is one **numeric** input
  (``covariate_<name>``); with ``standardise`` it is centred and scaled by the mean and
  the standard deviation of the training participants (recorded as ``center`` and
  ``scale``), which the neural networks need and the radiomics pipelines (which scale
  their inputs themselves) do not;
* any other column is **categorical**: one indicator input per level but the first in
  sorted order (``covariate_<name>_<level>``, 1 for that level, 0 otherwise; the first
  level is the ``reference``).

The spec (a list of dicts, one per input, in input order) is what a model card records.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import InputError


def _learn(rows: Mapping[str, Mapping[str, Any]], covariates: Sequence[str]) -> list[dict]:
    spec: list[dict] = []
    for name in covariates:
        present = [r.get(name) for r in rows.values() if r.get(name) not in (None, "")]
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
    return spec


def encode_covariates(
    rows: Mapping[str, Mapping[str, Any]],
    covariates: Sequence[str],
    *,
    spec: Sequence[Mapping[str, Any]] | None = None,
    standardise: bool = False,
) -> tuple[list[dict], dict[str, list[float]], list[str]]:
    """Covariate inputs per participant (see the module docstring).

    ``rows``: participant_id -> its participants.tsv row. ``spec`` (from a model card)
    fixes the encoding instead of learning it from ``rows``; ``standardise`` (when
    learning) adds ``center`` and ``scale`` to numeric inputs, from ``rows``' values.

    Returns (spec, {participant_id: values}, participants lacking a value).
    """
    learned = spec is None
    spec = _learn(rows, covariates) if learned else [dict(item) for item in spec]
    values: dict[str, list[float]] = {}
    lacking = []
    for pid, row in rows.items():
        record = []
        for item in spec:
            raw = row.get(item["column"])
            if raw in (None, ""):
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
    if learned and standardise and values:
        _add_scaling(spec, np.array(list(values.values()), dtype=float))
    for pid, record in values.items():
        values[pid] = [
            (v - item["center"]) / item["scale"] if "center" in item else v
            for v, item in zip(record, spec)
        ]
    return list(spec), values, sorted(lacking)


def _add_scaling(spec: list[dict], matrix: np.ndarray) -> None:
    """``center`` (mean) and ``scale`` (standard deviation, 1 when constant) of numeric inputs."""
    for i, item in enumerate(spec):
        if item["encoding"] == "numeric":
            sd = float(np.std(matrix[:, i]))
            item["center"] = round(float(np.mean(matrix[:, i])), 6)
            item["scale"] = round(sd, 6) if sd > 0 else 1.0
