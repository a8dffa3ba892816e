"""The measures of ``metcli evaluate-seg``: voxel overlap and lesion detection.

Plain functions on label arrays and rows; the definitions are in
:mod:`metcli.evaluation.evaluate_seg` (part of the output contract). Their summaries
over participants are in :mod:`metcli.evaluation.seg_summaries`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from metcli.imaging.labels import LESION, LIVER

log = logging.getLogger(__name__)

OVERLAP_DESC, DETECTION_DESC = "overlap", "detection"

#: Regions compared: name -> the dseg labels that form it.
REGIONS: dict[str, tuple[int, ...]] = {
    "liver": (LIVER,),
    "lesion": (LESION,),
    "liver_and_lesions": (LIVER, LESION),
}
#: Size bands of lesions by longest axial diameter: (name, lower mm, upper mm).
SIZE_BANDS = (("under_10mm", None, 10.0), ("10_to_20mm", 10.0, 20.0), ("over_20mm", 20.0, None))


# ============================================================================= voxel overlap
def overlap_measures(
    seg: np.ndarray, ref: np.ndarray, labels: Sequence[int], voxel_volume_mm3: float
) -> dict[str, Any]:
    """Dice, Jaccard, precision, recall and volumes of one region (the voxels carrying
    any of ``labels``) of a segmentation against a reference on the same grid.

    Undefined figures are None and ``note`` says why (see the module's definitions).
    """
    seg_in = np.isin(seg, labels)
    ref_in = np.isin(ref, labels)
    tp = int(np.count_nonzero(seg_in & ref_in))
    n_seg = int(np.count_nonzero(seg_in))
    n_ref = int(np.count_nonzero(ref_in))
    fp, fn = n_seg - tp, n_ref - tp
    notes = []
    if n_seg == 0 and n_ref == 0:
        dice = jaccard = precision = recall = None
        notes.append("absent from both masks: overlap undefined (n/a, not 1)")
    else:
        dice = 2.0 * tp / (n_seg + n_ref)
        jaccard = tp / (tp + fp + fn)
        precision = tp / n_seg if n_seg else None
        recall = tp / n_ref if n_ref else None
        if n_seg == 0:
            notes.append("absent from the segmentation: precision undefined")
        if n_ref == 0:
            notes.append("absent from the reference: recall undefined")
    return {
        "dice": dice,
        "jaccard": jaccard,
        "precision": precision,
        "recall": recall,
        "volume_mm3": n_seg * voxel_volume_mm3,
        "reference_volume_mm3": n_ref * voxel_volume_mm3,
        "volume_difference_mm3": (n_seg - n_ref) * voxel_volume_mm3,
        "true_positive_voxels": tp,
        "false_positive_voxels": fp,
        "false_negative_voxels": fn,
        "note": "; ".join(notes) or None,
    }


def overlap_rows(seg: np.ndarray, ref: np.ndarray, voxel_volume_mm3: float) -> list[dict]:
    """One row per region (:data:`REGIONS`) of a segmentation against its reference."""
    return [
        {"label": name, **overlap_measures(seg, ref, labels, voxel_volume_mm3)}
        for name, labels in REGIONS.items()
    ]


# ============================================================================= lesion detection
def size_band(diameter_mm: float) -> str:
    """``under_10mm`` (< 10 mm), ``10_to_20mm`` (10 to 20 mm inclusive) or ``over_20mm``."""
    if diameter_mm < 10.0:
        return SIZE_BANDS[0][0]
    if diameter_mm <= 20.0:
        return SIZE_BANDS[1][0]
    return SIZE_BANDS[2][0]


def lesion_overlaps(
    pred_map: np.ndarray, ref_map: np.ndarray
) -> tuple[dict[tuple[int, int], int], np.ndarray, np.ndarray]:
    """Overlapping voxels of every (reference id, predicted id) pair that touches, and
    the voxel count of every id of each map (``counts[id]``)."""
    pred = np.asarray(pred_map, dtype=np.int64).ravel()
    ref = np.asarray(ref_map, dtype=np.int64).ravel()
    both = (pred > 0) & (ref > 0)
    width = int(pred.max(initial=0)) + 1
    pairs, counts = np.unique(ref[both] * width + pred[both], return_counts=True)
    overlaps = {(int(p // width), int(p % width)): int(c) for p, c in zip(pairs, counts)}
    return overlaps, np.bincount(pred, minlength=width), np.bincount(ref)


def detection_rows(
    pred_map: np.ndarray,
    ref_map: np.ndarray,
    pred_table: Sequence[Mapping[str, Any]],
    ref_table: Sequence[Mapping[str, Any]],
) -> list[dict]:
    """One row per kept reference lesion (found or missed) and one per false positive.

    ``pred_table`` and ``ref_table`` are split-lesions' lesion tables of the two maps
    (their kept rows give the diameters); see the module's definitions.
    """
    overlaps, pred_counts, ref_counts = lesion_overlaps(pred_map, ref_map)
    pred_rows = {int(r["index"]): r for r in pred_table if r["kept"]}
    ref_rows = {int(r["index"]): r for r in ref_table if r["kept"]}
    by_ref: dict[int, list[tuple[int, int]]] = {}
    by_pred: dict[int, list[int]] = {}
    for (r, p), n in overlaps.items():
        by_ref.setdefault(r, []).append((p, n))
        by_pred.setdefault(p, []).append(r)
    rows = []
    for r, info in sorted(ref_rows.items()):
        size_r = int(ref_counts[r]) if r < len(ref_counts) else 0
        row = {
            "kind": "reference",
            "reference_lesion": r,
            "reference_diameter_mm": float(info["longest_axial_diameter_mm"]),
            "reference_volume_mm3": float(info["volume_mm3"]),
            "size_band": size_band(float(info["longest_axial_diameter_mm"])),
            "found": False,
            "predicted_lesion": None,
            "predicted_diameter_mm": None,
            "predicted_volume_mm3": None,
            "overlap_voxels": 0,
            "dice": None,
            "n_predicted_overlapping": len(by_ref.get(r, [])),
        }
        candidates = []
        for p, n in by_ref.get(r, []):
            dice = 2.0 * n / (size_r + int(pred_counts[p]))
            candidates.append((-dice, -n, p, dice, n))
        if candidates:
            _d, _n, p, dice, n = min(candidates)
            match = pred_rows.get(p)
            row.update(
                {
                    "found": True,
                    "predicted_lesion": p,
                    "overlap_voxels": n,
                    "dice": dice,
                    "predicted_diameter_mm": None
                    if match is None
                    else float(match["longest_axial_diameter_mm"]),
                    "predicted_volume_mm3": None if match is None else float(match["volume_mm3"]),
                }
            )
        rows.append(row)
    for p, info in sorted(pred_rows.items()):
        if p in by_pred or p >= len(pred_counts) or pred_counts[p] == 0:
            continue
        rows.append(
            {
                "kind": "false_positive",
                "reference_lesion": None,
                "reference_diameter_mm": None,
                "reference_volume_mm3": None,
                "size_band": size_band(float(info["longest_axial_diameter_mm"])),
                "found": None,
                "predicted_lesion": p,
                "predicted_diameter_mm": float(info["longest_axial_diameter_mm"]),
                "predicted_volume_mm3": float(info["volume_mm3"]),
                "overlap_voxels": 0,
                "dice": None,
                "n_predicted_overlapping": None,
            }
        )
    return rows
