"""The columns of a features table, and what extracting one region yields.

A features table (``..._desc-radiomics_features.tsv``, ``features.tsv``) has the
id columns, the status columns (and the ring's with a peritumoral ring), the
features in the order the parameters give (``<image type>_<class>_<feature>``,
then ``peritumoral_``-prefixed ones) and the diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from metcli.radiomics.params import SHAPE_CLASSES, ExtractionParams

PERITUMORAL = "peritumoral_"
STATUS_OK = "ok"

ID_COLUMNS = ("participant_id", "session", "phase", "lesion_id")
STATUS_COLUMNS = ("status", "message")
RING_STATUS_COLUMNS = ("peritumoral_status", "peritumoral_message")


@dataclass
class RegionResult:
    """Features of one region (a lesion, or one image and mask).

    ``status`` is ``ok`` or ``failed:<reason>``; when it failed, every feature
    is None and ``message`` says why. ``features`` holds every expected
    feature name (``original_<class>_<feature>``) in table order.
    """

    status: str
    features: dict[str, float | None]
    diagnostics: dict[str, int | None] = field(default_factory=dict)
    message: str | None = None
    ring_status: str | None = None
    ring_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def feature_names(
    params: ExtractionParams, *, prefix: str = "", classes: Iterable[str] | None = None
) -> list[str]:
    """The feature columns the parameters produce, in table order."""
    chosen = list(params.feature_classes) if classes is None else list(classes)
    names = []
    for image_type in params.image_types:
        lowered = image_type.lower()
        for cls in chosen:
            if cls in SHAPE_CLASSES and lowered != "original":
                continue
            names.extend(f"{prefix}{lowered}_{cls}_{name}" for name in params.feature_classes[cls])
    return names


def diagnostic_names(params: ExtractionParams, *, prefix: str = "") -> list[str]:
    names = [
        f"{prefix}diagnostics_Mask-original_VoxelNum",
        f"{prefix}diagnostics_Mask-original_VolumeNum",
    ]
    if params.resamples:
        names.append(f"{prefix}diagnostics_Mask-interpolated_VoxelNum")
    if params.resegments:
        names.append(f"{prefix}diagnostics_Mask-resegmented_VoxelNum")
    return names


def table_columns(params: ExtractionParams, *, peritumoral: bool = False) -> list[str]:
    """Columns of a features table made with these parameters."""
    columns = [*ID_COLUMNS, *STATUS_COLUMNS]
    if peritumoral:
        columns.extend(RING_STATUS_COLUMNS)
    columns.extend(feature_names(params))
    if peritumoral:
        columns.extend(feature_names(params, prefix=PERITUMORAL, classes=params.texture_classes))
    columns.extend(diagnostic_names(params))
    if peritumoral:
        columns.extend(diagnostic_names(params, prefix=PERITUMORAL))
    return columns
