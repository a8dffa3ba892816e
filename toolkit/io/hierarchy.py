"""Hierarchy files: groups of labels for two-step models (``--hierarchy FILE`` of
train-radiomics and train-cnn).

A hierarchy file (YAML or JSON, schema ``hierarchy``) names groups of labels::

    groups:
      metastasis: [colorectal, pancreatic]
      hcc: [hcc]

Step 1 predicts the group; step 2 (``step2-<group>``) the label within each group of two
labels or more. Group and label names sort everything: step 1's classes are the group
names in sorted order, a step 2's its labels in sorted order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from metcli.core.errors import InputError

log = logging.getLogger(__name__)

SCHEMA = "hierarchy"
STEP1 = "step1"


def step2_name(group: str) -> str:
    return f"step2-{group}"


@dataclass(frozen=True)
class Hierarchy:
    """Groups of labels: group name -> its labels (both in sorted order)."""

    groups: Mapping[str, tuple[str, ...]]
    source: str | None = None

    @property
    def group_names(self) -> list[str]:
        return sorted(self.groups)

    @property
    def labels(self) -> list[str]:
        return sorted(label for members in self.groups.values() for label in members)

    @property
    def split_groups(self) -> list[str]:
        """Groups of two labels or more: each gets a step 2."""
        return [g for g in self.group_names if len(self.groups[g]) > 1]

    @property
    def steps(self) -> list[str]:
        return [STEP1] + [step2_name(g) for g in self.split_groups]

    def group_of(self, label: str) -> str:
        for group, members in self.groups.items():
            if label in members:
                return group
        raise KeyError(label)

    def record(self) -> dict:
        return {"groups": {g: list(self.groups[g]) for g in self.group_names}}


def read_hierarchy(path) -> Hierarchy:
    """Read and check a hierarchy file (YAML, or JSON with a ``.json`` name)."""
    from metcli.io.schemas import validate

    path = Path(path)
    if not path.is_file():
        raise InputError(
            "hierarchy file not found",
            path=path,
            fix="give a YAML or JSON file with a groups mapping (see docs/train-radiomics.md)",
        )
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise InputError(
            f"not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
            f"({' '.join(str(exc).split())[:120]})",
            path=path,
            fix="write the file as YAML or JSON (see docs/train-radiomics.md)",
        ) from None
    validate(doc, SCHEMA, where=path)
    groups = {
        str(g): tuple(sorted(str(v) for v in members)) for g, members in doc["groups"].items()
    }
    seen: dict[str, str] = {}
    for group in sorted(groups):
        for label in groups[group]:
            if label in seen:
                raise InputError(
                    f"label {label!r} is in two groups ({seen[label]} and {group})",
                    path=path,
                    fix="put each label in one group",
                )
            seen[label] = group
    for group in sorted(groups):
        if group in seen and seen[group] != group:
            raise InputError(
                f"group name {group!r} is a label of group {seen[group]}",
                path=path,
                fix="give the group another name",
            )
    hierarchy = Hierarchy(groups, source=path.name)
    if not hierarchy.split_groups:
        raise InputError(
            "every group holds a single label, so the hierarchy is a flat model",
            path=path,
            fix="put two labels or more in a group, or train without --hierarchy",
        )
    log.info(
        "hierarchy %s: step1 predicts %s; %s",
        path.name,
        ", ".join(hierarchy.group_names),
        "; ".join(
            f"{step2_name(g)} predicts {', '.join(groups[g])}" for g in hierarchy.split_groups
        ),
    )
    return hierarchy


def check_labels(hierarchy: Hierarchy, present: Sequence[str], *, labels_path=None) -> None:
    """Every label of the cohort in a group, every label of the hierarchy in the cohort."""
    where = hierarchy.source
    table = Path(labels_path).name if labels_path else "the labels"
    unknown = sorted(set(present) - set(hierarchy.labels))
    if unknown:
        raise InputError(
            f"label {unknown[0]!r} of {table} is in no group of the hierarchy {where}",
            path=labels_path,
            fix="add it to a group of the hierarchy file, or leave its "
            "participants out of the labels",
        )
    absent = sorted(set(hierarchy.labels) - set(present))
    if absent:
        raise InputError(
            f"label {absent[0]!r} of group {hierarchy.group_of(absent[0])} in the "
            f"hierarchy {where} has no participant with features and a label",
            path=labels_path,
            fix="remove it from the hierarchy file or add participants with that label",
        )
