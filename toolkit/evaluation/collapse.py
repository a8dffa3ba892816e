"""Collapsing a model's classes into groups before ``metcli evaluate`` scores it.

``--collapse malignant=HCC,metastasis`` evaluates a three-class model (benign, HCC,
metastasis) as the binary benign vs malignant task of the non-contrast MRI study: the
probabilities of a group's classes are summed (``prob_malignant = prob_HCC +
prob_metastasis``), the labels of participants.tsv (and readers' calls) are mapped to
their group, and the figures are those of a binary model whose positive class is the
first named group (``--positive-class`` chooses another).

The classes named in no group form one more class: it keeps its name when it is a
single class (``benign`` above), and is called ``other`` when several classes remain.
The option may be repeated (``--collapse A=x,y --collapse B=z``); with more than two
classes after collapsing, the model is scored as a multi-class model.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Mapping, Sequence

from metcli.core.errors import UsageError
from metcli.evaluation.inputs import DEFAULT_THRESHOLD, LEVELS, PROB_PREFIX, ModelPredictions

log = logging.getLogger(__name__)

#: The name of the classes no group names, when there are several of them.
OTHER = "other"

Groups = tuple[tuple[str, tuple[str, ...]], ...]


def parse_collapse(specs: Sequence[str] | Mapping[str, Sequence[str]] | None) -> Groups:
    """``("malignant=HCC,metastasis", ...)`` (or ``{name: classes}``) as ``((name, classes),)``.

    Raises:
        UsageError: for a spec without ``=``, an empty name or class, a class in two
            groups or a name given twice.
    """
    if not specs:
        return ()
    if isinstance(specs, Mapping):
        pairs = [(str(k), [str(c) for c in v]) for k, v in specs.items()]
    else:
        pairs = []
        for spec in specs:
            name, sep, members = str(spec).partition("=")
            if not sep:
                raise UsageError(
                    f"--collapse {spec!r} has no '='",
                    fix="write NAME=CLASS[,CLASS...], e.g. malignant=HCC,metastasis",
                )
            pairs.append((name, members.split(",")))
    groups: list[tuple[str, tuple[str, ...]]] = []
    seen: dict[str, str] = {}
    for name, members in pairs:
        name, members = name.strip(), tuple(m.strip() for m in members)
        if not name or not members or any(not m for m in members):
            raise UsageError(
                f"--collapse {name}={','.join(members)}: empty group name or class",
                fix="write NAME=CLASS[,CLASS...], e.g. malignant=HCC,metastasis",
            )
        if name in (g for g, _ in groups):
            raise UsageError(f"--collapse names the group {name!r} twice", fix="name it once")
        for member in members:
            if member in seen:
                raise UsageError(
                    f"--collapse puts class {member!r} in two groups ({seen[member]}, {name})",
                    fix="put each class in one group",
                )
            seen[member] = name
        groups.append((name, members))
    return tuple(groups)


def class_mapping(groups: Groups, classes: Sequence[str]) -> dict[str, str]:
    """``{original class: new class}`` for a model with ``classes``."""
    named = {member: name for name, members in groups for member in members}
    rest = [c for c in classes if c not in named]
    rest_name = rest[0] if len(rest) == 1 else OTHER
    return {c: named.get(c, rest_name) for c in classes}


def describe(groups: Groups) -> str:
    """``malignant = HCC + metastasis`` (for notes and the report)."""
    return "; ".join(f"{name} = {' + '.join(members)}" for name, members in groups)


def collapse_models(
    models: Sequence[ModelPredictions],
    labels: Mapping[str, str | None],
    groups: Groups,
    positive_class: str | None = None,
) -> tuple[list[ModelPredictions], dict[str, str | None], dict[str, str]]:
    """The models with their classes collapsed, the labels mapped, and the class mapping.

    Raises:
        UsageError: when a group names a class that a model lacks, when collapsing
            leaves fewer than two classes, or for a ``positive_class`` that is not a
            class after collapsing.
    """
    if not groups:
        return list(models), dict(labels), {}
    mapping: dict[str, str] = {}
    out = []
    for model in models:
        names = {name for name, _ in groups}
        if names <= set(model.classes):  # already in the collapsed classes
            out.append(model)
            continue
        missing = sorted({m for _, ms in groups for m in ms} - set(model.classes))
        if missing:
            raise UsageError(
                f"--collapse names class(es) {', '.join(missing)} that model {model.name} "
                f"lacks ({', '.join(model.classes)})",
                fix="name classes of the model's prob_ columns",
            )
        this = class_mapping(groups, model.classes)
        for original, new in this.items():
            if mapping.setdefault(original, new) != new:
                raise UsageError(
                    f"--collapse maps class {original!r} differently for model {model.name}",
                    fix="evaluate models with different classes separately",
                )
        out.append(_collapse_model(model, groups, this, positive_class))
    mapped = {pid: (None if v is None else mapping.get(v, v)) for pid, v in labels.items()}
    return out, mapped, mapping


def _collapse_model(
    model: ModelPredictions,
    groups: Groups,
    mapping: dict[str, str],
    positive_class: str | None,
) -> ModelPredictions:
    new_classes = list(dict.fromkeys(c for c in mapping.values() if c not in dict(groups)))
    new_classes += [name for name, _ in groups]
    if len(new_classes) < 2:
        raise UsageError(
            f"--collapse leaves model {model.name} with one class ({new_classes[0]})",
            fix="leave at least one class out of the groups, or name two groups",
        )
    rows = []
    for row in model.rows:
        new = {k: v for k, v in row.items() if not k.startswith(PROB_PREFIX)}
        for cls in new_classes:
            new[PROB_PREFIX + cls] = sum(
                row[PROB_PREFIX + c] for c in model.classes if mapping[c] == cls
            )
        new["predicted"] = None  # the collapsed model's own rule decides
        rows.append(new)
    text = describe(groups)
    if len(new_classes) > 2:
        positive, source, thresholds = None, f"multi-class after --collapse ({text})", {}
    else:
        if positive_class is not None and positive_class not in new_classes:
            raise UsageError(
                f"--positive-class {positive_class!r} is not a class after --collapse "
                f"({', '.join(new_classes)})",
                fix="name one of the collapsed classes",
            )
        positive = positive_class or groups[0][0]
        source = f"--collapse ({text})" if positive_class is None else "--positive-class"
        rule = f"default {DEFAULT_THRESHOLD} on the summed probability of {positive}"
        thresholds = {lv: (DEFAULT_THRESHOLD, rule) for lv in LEVELS}
    log.info("model %s: classes collapsed to %s (%s)", model.name, ", ".join(new_classes), text)
    return replace(
        model,
        classes=new_classes,
        positive_class=positive,
        positive_source=source,
        thresholds=thresholds,
        rows=rows,
    )
