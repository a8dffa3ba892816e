"""The tables of ``metcli evaluate-seg``: their columns, their file names, and reading
them back with the types their schemas declare.

Participant level: one ``..._desc-overlap_metrics.tsv`` (and, with lesion maps, one
``..._desc-detection_metrics.tsv``) per acquisition; group level: ``overlap.tsv``,
``detection.tsv``, ``detection_summary.tsv`` and ``classification_agreement.tsv``
(see :mod:`metcli.evaluation.evaluate_seg` for the definitions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metcli.core.errors import InputError
from metcli.io.bids import Entities, derivative_path

METRICS_SUFFIX = "metrics"
OVERLAP_DESC, DETECTION_DESC = "overlap", "detection"

OVERLAP_COLUMNS = (
    "participant_id",
    "session",
    "phase",
    "label",
    "dice",
    "jaccard",
    "precision",
    "recall",
    "volume_mm3",
    "reference_volume_mm3",
    "volume_difference_mm3",
    "true_positive_voxels",
    "false_positive_voxels",
    "false_negative_voxels",
    "note",
)
DETECTION_COLUMNS = (
    "participant_id",
    "session",
    "phase",
    "kind",
    "reference_lesion",
    "reference_diameter_mm",
    "reference_volume_mm3",
    "size_band",
    "found",
    "predicted_lesion",
    "predicted_diameter_mm",
    "predicted_volume_mm3",
    "overlap_voxels",
    "dice",
    "n_predicted_overlapping",
)
CLASS_COLUMNS = ("predicted_class", "reference_predicted_class", "class_agrees")
SUMMARY_COLUMNS = (
    "size_band",
    "band_lower_mm",
    "band_upper_mm",
    "n_reference_lesions",
    "n_found",
    "n_missed",
    "detection_rate",
    "ci_lower",
    "ci_upper",
    "ci_method",
    "ci_level",
    "bootstrap_resamples",
    "n_participants",
    "n_scans",
    "false_positives",
    "false_positives_per_scan",
    "note",
)
AGREEMENT_COLUMNS = (
    "model",
    "reference_model",
    "dice_band",
    "dice_lower",
    "dice_upper",
    "n_lesions",
    "n_agree",
    "agreement_rate",
    "ci_lower",
    "ci_upper",
    "ci_method",
    "ci_level",
    "bootstrap_resamples",
    "n_participants",
    "note",
)

OVERLAP_TABLE, DETECTION_TABLE = "overlap.tsv", "detection.tsv"
SUMMARY_TABLE, AGREEMENT_TABLE = "detection_summary.tsv", "classification_agreement.tsv"


def output_paths(out_dir: Path, ent: Entities) -> tuple[Path, Path]:
    """(overlap table, detection table) of one acquisition in ``out_dir``."""
    overlap = derivative_path(
        out_dir, ent, desc=OVERLAP_DESC, suffix=METRICS_SUFFIX, extension=".tsv"
    )
    detection = derivative_path(
        out_dir, ent, desc=DETECTION_DESC, suffix=METRICS_SUFFIX, extension=".tsv"
    )
    return overlap, detection


def read_typed_table(path: Path, schema: str) -> list[dict[str, Any]]:
    """A table metcli wrote, read back with the types its schema declares (n/a -> None)."""
    from metcli.io.files import NA, read_tsv
    from metcli.io.schemas import load_schema

    properties = load_schema(schema)["properties"]
    out = []
    for number, row in enumerate(read_tsv(path), start=2):
        typed: dict[str, Any] = {}
        for key, text in row.items():
            kinds = properties.get(key, {}).get("type", "string")
            kinds = [kinds] if isinstance(kinds, str) else kinds
            try:
                if text == NA and "null" in kinds:
                    typed[key] = None
                elif "boolean" in kinds:
                    typed[key] = {"true": True, "false": False}[text]
                elif "integer" in kinds:
                    typed[key] = int(text)
                elif "number" in kinds:
                    typed[key] = float(text)
                else:
                    typed[key] = text
            except (KeyError, ValueError):
                raise InputError(
                    f"line {number}, column {key}: {text!r} is not valid",
                    path=path,
                    fix="write the table again with --overwrite",
                ) from None
        out.append(typed)
    return out
