"""Label maps of ``metcli segment``: a model's own labels translated into metcli's.

metcli's labels are 0 background, 1 liver, 2 lesion. A model's labels become
them by ``--label-map`` (:func:`parse_label_map`), the model's entry in the
weights manifest, or the model's label names (:data:`LABEL_ALIASES`); see
:func:`resolve_label_map`. :func:`apply_label_map` translates a label image.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from metcli.core.errors import InputError, UsageError
from metcli.imaging.labels import BACKGROUND, LABELS, LESION, LIVER

log = logging.getLogger(__name__)

#: Model label names read as metcli's labels when no label map is given.
LABEL_ALIASES = {
    "liver": LIVER,
    "lesion": LESION,
    "lesions": LESION,
    "tumor": LESION,
    "tumour": LESION,
    "liver_tumor": LESION,
    "liver_tumour": LESION,
    "liver_lesion": LESION,
    "cancer": LESION,
    "metastasis": LESION,
    "metastases": LESION,
}
_METCLI_NAMES = {name: value for value, name in LABELS.items()}


def parse_label_map(spec: str | Mapping[Any, Any] | None) -> list[tuple[str, int]] | None:
    """``"liver=liver,liver_tumor=lesion"`` (or ``"5=1,2=lesion"``) as (model key, metcli value).

    The left side is a model label name or value; the right side a metcli label name
    (background, liver, lesion) or value (0, 1, 2). A mapping is taken as it is.
    """
    if spec is None:
        return None
    items = spec.items() if isinstance(spec, Mapping) else None
    if items is None:
        text = str(spec).strip()
        if not text:
            return None
        items = []
        for part in text.split(","):
            left, sep, right = part.partition("=")
            if not sep or not left.strip() or not right.strip():
                raise UsageError(
                    f"--label-map entry {part.strip()!r} is not MODEL=METCLI",
                    fix="write it as 'liver=liver,liver_tumor=lesion' (model label "
                    "name or value = background, liver or lesion)",
                )
            items.append((left.strip(), right.strip()))
    out = []
    for left, right in items:
        target = str(right).strip().lower()
        if target in _METCLI_NAMES:
            value = _METCLI_NAMES[target]
        elif target.isdigit() and int(target) in LABELS:
            value = int(target)
        else:
            raise UsageError(
                f"--label-map target {right!r} is not a metcli label",
                fix="use background, liver or lesion (or 0, 1, 2)",
            )
        out.append((str(left).strip(), value))
    return out


def resolve_label_map(
    model_labels: Mapping[str, int], spec=None, *, manifest_map: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Model label value -> metcli label value; unlisted model labels become background.

    In order: the ``spec`` of ``--label-map`` (:func:`parse_label_map`), the model's
    manifest entry, or the model's label names (``liver``, and ``lesion`` or a
    synonym in :data:`LABEL_ALIASES`). At least one model label must become liver
    or lesion.
    """
    values = {int(v) for v in model_labels.values()}
    shown = ", ".join(f"{name}={value}" for name, value in model_labels.items())
    parsed = parse_label_map(spec)
    if parsed is not None:
        mapping: dict[int, int] = {}
        for key, target in parsed:
            if key in model_labels:
                source = int(model_labels[key])
            elif key.isdigit() and int(key) in values:
                source = int(key)
            else:
                raise UsageError(
                    f"--label-map: the model has no label {key!r}",
                    fix=f"use its label names or values: {shown}",
                )
            if source in mapping and mapping[source] != target:
                raise UsageError(f"--label-map maps model label {key!r} twice")
            mapping[source] = target
        how = "--label-map"
    elif manifest_map is not None:
        mapping = {int(k): int(v) for k, v in manifest_map.items()}
        how = "the weights manifest"
    else:
        mapping = {}
        for name, value in model_labels.items():
            target = LABEL_ALIASES.get(str(name).strip().lower())
            if target is not None:
                mapping[int(value)] = target
        how = "the model's label names"
    mapping = {k: v for k, v in mapping.items() if v != BACKGROUND}
    if not mapping:
        raise UsageError(
            f"no label of the model ({shown}) becomes liver or lesion (from {how})",
            fix="give --label-map, for example 'liver=liver,liver_tumor=lesion'",
        )
    targets = set(mapping.values())
    if LIVER not in targets or LESION not in targets:
        missing = "liver" if LIVER not in targets else "lesion"
        log.warning(
            "the model's labels (%s) give no %s label (from %s): the segmentations will have none",
            shown,
            missing,
            how,
        )
    return dict(sorted(mapping.items()))


def apply_label_map(label_image, mapping: Mapping[int, int]):
    """A uint8 metcli label image from a model's label image (same grid)."""
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(label_image)  # no copy; lut[array] is the one
    if array.size and array.min() < 0:
        raise InputError(f"the model wrote a negative label ({int(array.min())})")
    top = int(array.max()) if array.size else 0
    lut = np.zeros(max(top, max(mapping, default=0)) + 1, np.uint8)
    for source, target in mapping.items():
        lut[source] = target
    out = sitk.GetImageFromArray(lut[array])
    out.CopyInformation(label_image)
    return out
