"""Hierarchical image models (``train-cnn --hierarchy FILE``): the 2024 study's two steps.

Step 1 learns the group of a lesion (HCC, ICC, metastasis) from every training patient;
step 2 (``step2-<group>``) learns the label within each group of two labels or more (the
metastasis' origin) from that group's training patients only; all steps share one split
(the same validation and test patients), made from the labels. Each step is a network of
the same architecture and options, trained by :func:`metcli.cnn.fit.fit` with its own
best epoch. The chained probability of a label is, as for the radiomics hierarchy
(:mod:`metcli.io.hierarchy`)::

    P(label) = P(group) x P(label | group)        (P(label | group) = 1 for a group of one)

:class:`HierarchyNet` holds the steps and returns the logarithm of the chained
probabilities, so that the softmax of the export (:func:`metcli.cnn.outputs.export_onnx`)
gives them back exactly: one ``model.onnx`` and one ``checkpoint.pt`` hold both steps,
and predict runs them as any image model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from metcli.cnn.data import Sample
from metcli.io.hierarchy import STEP1, Hierarchy, step2_name

#: The card's description of the chain.
RULE = (
    "P(label) = P(group of the label) from step1 x P(label | group) from step2-<group>; "
    "P(label | group) = 1 for a group of one label"
)


def _module_class():
    import torch
    from torch import nn

    class HierarchyNet(nn.Module):
        """Steps (name -> network) chained into the log-probabilities of ``labels``."""

        def __init__(self, steps: dict, hierarchy: Hierarchy):
            super().__init__()
            self.steps = nn.ModuleDict(steps)
            groups = hierarchy.group_names
            self.columns = []  # per label: (group index, step 2 name or None, index in it)
            for label in hierarchy.labels:
                group = hierarchy.group_of(label)
                members = list(hierarchy.groups[group])
                split = len(members) > 1
                self.columns.append(
                    (
                        groups.index(group),
                        step2_name(group) if split else None,
                        members.index(label) if split else 0,
                    )
                )

        def forward(self, image, *extra):
            first = torch.softmax(self.steps[STEP1](image, *extra), dim=1)
            seconds = {
                name: torch.softmax(net(image, *extra), dim=1)
                for name, net in self.steps.items()
                if name != STEP1
            }
            columns = []
            for group, step, index in self.columns:
                p = first[:, group]
                if step is not None:
                    p = p * seconds[step][:, index]
                columns.append(p)
            return torch.log(torch.stack(columns, dim=1).clamp_min(1e-12))

    return HierarchyNet


def build_hierarchy_net(build: Callable[[str, int], Any], hierarchy: Hierarchy):
    """A :class:`HierarchyNet` whose step ``name`` of ``n`` classes is ``build(name, n)``."""
    steps = {STEP1: build(STEP1, len(hierarchy.group_names))}
    for group in hierarchy.split_groups:
        steps[step2_name(group)] = build(step2_name(group), len(hierarchy.groups[group]))
    return _module_class()(steps, hierarchy)


def make_network(
    arch: str,
    n_classes: int,
    *,
    dims: int,
    in_channels: int,
    options: dict | None = None,
    hierarchy: Hierarchy | None = None,
):
    """The network of a run or a card: one network, or the steps of ``hierarchy``."""
    from metcli.cnn.networks import build_network

    def build(_name: str, n: int):
        return build_network(arch, n, dims=dims, in_channels=in_channels, options=options)

    if hierarchy is None:
        return build("", n_classes)
    return build_hierarchy_net(build, hierarchy)


def card_hierarchy(card: dict) -> Hierarchy | None:
    """The :class:`Hierarchy` of a card's ``hierarchy`` (None for a flat model)."""
    record = card.get("hierarchy")
    if not record:
        return None
    groups = {str(g): tuple(sorted(map(str, m))) for g, m in record["groups"].items()}
    return Hierarchy(groups)


def step_samples(
    samples: Sequence[Sample], hierarchy: Hierarchy, classes: Sequence[str], step: str
) -> list[Sample]:
    """The samples a step learns from, relabelled with the step's class index."""
    if step == STEP1:
        groups = hierarchy.group_names
        return [
            replace(s, label=groups.index(hierarchy.group_of(classes[s.label]))) for s in samples
        ]
    group = next(g for g in hierarchy.split_groups if step2_name(g) == step)
    members = list(hierarchy.groups[group])
    return [
        replace(s, label=members.index(classes[s.label]))
        for s in samples
        if classes[s.label] in members
    ]


def hierarchy_record(hierarchy: Hierarchy, results: dict) -> dict:
    """The card's ``hierarchy``: groups, the rule, and each step's classes and best epoch."""
    steps = {}
    for name, result in results.items():
        group = None if name == STEP1 else name[len("step2-") :]
        steps[name] = {
            "classes": hierarchy.group_names if group is None else list(hierarchy.groups[group]),
            "best_epoch": result.kept_epoch,
            "epochs_run": len(result.rows),
        }
    return {**hierarchy.record(), "rule": RULE, "steps": steps}


def chained(probabilities: dict[str, np.ndarray], hierarchy: Hierarchy) -> np.ndarray:
    """The chained probabilities ``[n, labels]`` from each step's ``[n, classes]`` (numpy):
    the rule of :class:`HierarchyNet`, for checking it."""
    groups = hierarchy.group_names
    out = []
    for label in hierarchy.labels:
        group = hierarchy.group_of(label)
        p = probabilities[STEP1][:, groups.index(group)]
        members = list(hierarchy.groups[group])
        if len(members) > 1:
            p = p * probabilities[step2_name(group)][:, members.index(label)]
        out.append(p)
    return np.stack(out, axis=1)


def fit_steps(parts: dict, hierarchy: Hierarchy, classes: Sequence[str], settings, **fit_options):
    """Train every step on its samples (:func:`metcli.cnn.fit.fit`, the same validation and
    test patients) and chain them: (the chained :class:`~metcli.cnn.fit.FitResult`, each
    step's result). ``fit_options``: ``state_dir``, ``resume``, ``fingerprint``,
    ``progress``, ``dims``, ``in_channels``."""
    from metcli.cnn.fit import FitResult, fit

    state_dir, fingerprint = fit_options["state_dir"], fit_options["fingerprint"]
    results = {}
    for step in [STEP1] + [step2_name(g) for g in hierarchy.split_groups]:
        train = step_samples(parts["train"], hierarchy, classes, step)
        val = step_samples(parts["val"], hierarchy, classes, step)
        group = None if step == STEP1 else step[len("step2-") :]
        n = len(hierarchy.group_names if group is None else hierarchy.groups[group])
        results[step] = fit(
            train,
            val,
            replace(settings, n_classes=n),
            state_path=state_dir / f"{step}.pt",
            resume=fit_options["resume"],
            fingerprint=f"{fingerprint}:{step}",
            label=step,
            progress=fit_options["progress"],
        )
    net = make_network(
        settings.arch,
        len(classes),
        dims=fit_options["dims"],
        in_channels=fit_options["in_channels"],
        options=settings.network,
        hierarchy=hierarchy,
    )
    for step, result in results.items():
        net.steps[step].load_state_dict(result.kept_state)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    first = results[STEP1]
    chained_result = FitResult(
        state,
        state,
        first.rows,
        float(np.mean([r.seconds_per_epoch for r in results.values()])),
        first.kept_epoch,
        first.stopped_early,
    )
    return chained_result, results
