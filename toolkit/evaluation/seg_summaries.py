"""The group-level summaries of ``metcli evaluate-seg``: overlap per patient, detection
by size band and classification agreement by Dice band, each with a patient (cluster)
bootstrap interval.

Plain functions on the rows of the participant tables; the definitions are in
:mod:`metcli.evaluation.evaluate_seg` (part of the output contract).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from metcli.core.errors import UsageError
from metcli.evaluation.seg_measures import REGIONS, SIZE_BANDS

ALL = "all"
#: Inner edges of the Dice bands of the classification-agreement table.
DEFAULT_DICE_EDGES = (0.5, 0.7, 0.9)
OVERLAP_METRICS = ("dice", "jaccard", "precision", "recall")
CLUSTER_NOTE = "participants resampled with all their lesions (cluster bootstrap)"


def _cluster_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    clusters: Sequence[str],
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> tuple[float | None, float | None, int | None, str, str | None]:
    """Percentile interval of ``sum(num) / sum(den)`` resampling clusters (participants).

    Returns (lower, upper, resamples used, method, note).
    """
    from metcli.evaluation import bootstrap

    names = sorted(set(clusters))
    if len(names) < 2:
        return None, None, None, "none", "one participant: no interval"
    index = {c: i for i, c in enumerate(names)}
    of = np.array([index[c] for c in clusters], dtype=int)
    num = np.bincount(of, weights=np.asarray(numerators, dtype=float), minlength=len(names))
    den = np.bincount(of, weights=np.asarray(denominators, dtype=float), minlength=len(names))
    weights = bootstrap.cluster_bootstrap_weights(np.zeros(len(names)), n_boot, seed)
    top, bottom = weights @ num, weights @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)
    low, high, used = bootstrap.percentile_interval(boot, level)
    if used == 0:
        return None, None, None, "none", "no usable resample"
    return low, high, used, "patient_bootstrap", None


def patient_summary(
    rows: Sequence[Mapping[str, Any]], *, n_boot: int, seed: int, level: float = 0.95
) -> list[dict[str, Any]]:
    """Per region and metric: the mean over participants (each the mean of its
    acquisitions) with a patient-bootstrap interval, the median and the range; and
    the pooled ("global") Dice of all voxels, with a patient-bootstrap interval."""
    boot = {"n_boot": n_boot, "seed": seed, "level": level}
    out = []
    for region in REGIONS:
        region_rows = [r for r in rows if r["label"] == region]
        for metric in OVERLAP_METRICS:
            out.append(_metric_summary(region, metric, region_rows, **boot))
        out.append(_global_dice(region, region_rows, **boot))
    return out


def _metric_summary(
    region: str,
    metric: str,
    region_rows: Sequence[Mapping[str, Any]],
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """One metric of one region: the mean over participants with its interval."""
    per_patient: dict[str, list[float]] = {}
    undefined = set()
    for row in region_rows:
        if row[metric] is None:
            undefined.add(row["participant_id"])
        else:
            per_patient.setdefault(row["participant_id"], []).append(float(row[metric]))
    values = {p: float(np.mean(v)) for p, v in per_patient.items()}
    entry: dict[str, Any] = {
        "label": region,
        "metric": metric,
        "n_participants": len(values),
        "n_participants_undefined": len(undefined - set(values)),
    }
    if not values:
        entry.update(
            {
                "mean": None,
                "ci_lower": None,
                "ci_upper": None,
                "ci_method": "none",
                "bootstrap_resamples": None,
                "median": None,
                "minimum": None,
                "maximum": None,
                "note": "undefined for every participant",
            }
        )
        return entry
    array = np.array(list(values.values()))
    low, high, used, method, note = _cluster_ratio(
        array, np.ones(len(array)), list(values), n_boot=n_boot, seed=seed, level=level
    )
    entry.update(
        {
            "mean": float(array.mean()),
            "ci_lower": low,
            "ci_upper": high,
            "ci_method": method,
            "bootstrap_resamples": used,
            "median": float(np.median(array)),
            "minimum": float(array.min()),
            "maximum": float(array.max()),
            "note": note,
        }
    )
    return entry


def _global_dice(
    region: str, region_rows: Sequence[Mapping[str, Any]], *, n_boot: int, seed: int, level: float
) -> dict[str, Any]:
    """The Dice of one region pooled over every voxel of every scan, with its interval."""
    tp = np.array([r["true_positive_voxels"] for r in region_rows], dtype=float)
    fp = np.array([r["false_positive_voxels"] for r in region_rows], dtype=float)
    fn = np.array([r["false_negative_voxels"] for r in region_rows], dtype=float)
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    entry: dict[str, Any] = {
        "label": region,
        "metric": "dice_global",
        "n_participants": len({r["participant_id"] for r in region_rows}),
        "n_participants_undefined": 0,
        "median": None,
        "minimum": None,
        "maximum": None,
    }
    if total > 0:
        low, high, used, method, note = _cluster_ratio(
            2 * tp,
            2 * tp + fp + fn,
            [r["participant_id"] for r in region_rows],
            n_boot=n_boot,
            seed=seed,
            level=level,
        )
        entry.update(
            {
                "mean": float(2 * tp.sum() / total),
                "ci_lower": low,
                "ci_upper": high,
                "ci_method": method,
                "bootstrap_resamples": used,
                "note": "pooled over every voxel of every scan: 2 sum(TP) / "
                "(2 sum(TP) + sum(FP) + sum(FN))" + (f"; {note}" if note else ""),
            }
        )
    else:
        entry.update(
            {
                "mean": None,
                "ci_lower": None,
                "ci_upper": None,
                "ci_method": "none",
                "bootstrap_resamples": None,
                "note": "absent from every mask",
            }
        )
    return entry


def detection_summary(
    rows: Sequence[Mapping[str, Any]],
    scans: Sequence[tuple],
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Detection rate and false positives per scan, by size band and overall.

    ``scans`` lists every compared acquisition ``(participant_id, session, phase)``:
    false positives per scan divide by all of them, with or without lesions.
    """
    n_scans = len(scans)
    out = []
    for name, lower, upper in (*SIZE_BANDS, (ALL, None, None)):
        refs = [r for r in rows if r["kind"] == "reference" and name in (ALL, r["size_band"])]
        fps = [r for r in rows if r["kind"] == "false_positive" and name in (ALL, r["size_band"])]
        found = sum(1 for r in refs if r["found"])
        entry: dict[str, Any] = {
            "size_band": name,
            "band_lower_mm": lower,
            "band_upper_mm": upper,
            "n_reference_lesions": len(refs),
            "n_found": found,
            "n_missed": len(refs) - found,
            "ci_level": level,
            "n_participants": len({r["participant_id"] for r in refs}),
            "n_scans": n_scans,
            "false_positives": len(fps),
            "false_positives_per_scan": len(fps) / n_scans if n_scans else None,
        }
        entry.update(
            _rate_with_interval(
                "detection_rate",
                refs,
                "found",
                "no reference lesion in this band",
                n_boot=n_boot,
                seed=seed,
                level=level,
            )
        )
        out.append(entry)
    return out


def dice_bands(edges: Sequence[float]) -> list[tuple[str, float, float]]:
    """(name, lower, upper) of the Dice bands: [0, e1), [e1, e2), ..., [ek, 1]."""
    cuts = [0.0, *[float(e) for e in edges], 1.0]
    return [(f"{lo:.2f}-{hi:.2f}", lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _in_band(dice: float, lower: float, upper: float) -> bool:
    return lower <= dice < upper or (upper == 1.0 and dice == 1.0)


def check_dice_edges(edges: Sequence[float] | None) -> tuple[float, ...]:
    edges = DEFAULT_DICE_EDGES if edges is None else tuple(edges)
    try:
        values = tuple(float(e) for e in edges)
    except (TypeError, ValueError):
        raise UsageError(f"--dice-bands must be numbers, got {edges!r}") from None
    if (
        not values
        or any(not 0.0 < v < 1.0 for v in values)
        or any(b <= a for a, b in zip(values, values[1:]))
    ):
        raise UsageError(
            f"--dice-bands {','.join(map(str, edges))} must be increasing numbers "
            "between 0 and 1 (the inner edges of the bands)",
            fix="for example 0.5,0.7,0.9",
        )
    return values


def agreement_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    model: str,
    reference_model: str,
    edges: Sequence[float],
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Agreement of the predicted class between the two mask sets by Dice band of the
    lesion (found reference lesions with a prediction from both), and overall."""
    compared = [r for r in rows if r.get("class_agrees") is not None]
    out = []
    for name, lower, upper in (*dice_bands(edges), (ALL, 0.0, 1.0)):
        inside = [r for r in compared if name == ALL or _in_band(r["dice"], lower, upper)]
        agree = sum(1 for r in inside if r["class_agrees"])
        entry: dict[str, Any] = {
            "model": model,
            "reference_model": reference_model,
            "dice_band": name,
            "dice_lower": lower,
            "dice_upper": upper,
            "n_lesions": len(inside),
            "n_agree": agree,
            "ci_level": level,
            "n_participants": len({r["participant_id"] for r in inside}),
        }
        entry.update(
            _rate_with_interval(
                "agreement_rate",
                inside,
                "class_agrees",
                "no matched lesion in this band",
                n_boot=n_boot,
                seed=seed,
                level=level,
            )
        )
        out.append(entry)
    return out


def _rate_with_interval(
    key: str,
    rows: Sequence[dict],
    flag: str,
    empty_note: str,
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict:
    """The share of ``rows`` whose ``flag`` is true, as ``key``, with its patient
    (cluster) bootstrap interval; all None with ``empty_note`` when there is no row."""
    if not rows:
        return {
            key: None,
            "ci_lower": None,
            "ci_upper": None,
            "ci_method": "none",
            "bootstrap_resamples": None,
            "note": empty_note,
        }
    hits = [1.0 if r[flag] else 0.0 for r in rows]
    low, high, used, method, note = _cluster_ratio(
        hits,
        np.ones(len(rows)),
        [r["participant_id"] for r in rows],
        n_boot=n_boot,
        seed=seed,
        level=level,
    )
    return {
        key: sum(hits) / len(rows),
        "ci_lower": low,
        "ci_upper": high,
        "ci_method": "cluster_bootstrap" if method != "none" else "none",
        "bootstrap_resamples": used,
        "note": note or CLUSTER_NOTE,
    }
