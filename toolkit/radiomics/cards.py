"""The model cards (model.json) train-radiomics writes: a flat model, a chain, a step.

A card says what the ONNX graph expects and gives (inputs in order, classes,
outputs), how the model was made (feature selection, sampler and weights,
tuned hyper-parameters, search, split) and how well it did (CV and test
metrics, the largest |ONNX - scikit-learn| difference); schema ``model_card``.

A card and its graph check each other (:mod:`metcli.io.cards`): before the
cards are made, :func:`stamp_graphs` writes into each graph the ``metcli.*``
metadata its card describes (kind, classes, positive class, input names and
columns), and the card written to model.json gets ``card_sha256``, the checksum
of its own content.
"""

from __future__ import annotations

import numpy as np

from metcli.core.versions import versions as model_versions
from metcli.radiomics.classifiers import get
from metcli.radiomics.models import model_name
from metcli.radiomics.results import ModelResult, TrainingResult, jsonable, onnx_sha256
from metcli.radiomics.settings import Settings

CARD_VERSION = 1


def _card_inputs(model: ModelResult, cohort) -> list[dict]:
    """The card's ``inputs``: each input of the graph, in order, and where it comes from."""
    covariates = {c["name"]: c for c in cohort.covariates}
    inputs = []
    for index, name in enumerate(model.inputs):
        if name in covariates:
            item = covariates[name]
            inputs.append(
                {
                    "index": index,
                    "name": name,
                    "source": "participants",
                    "column": item["column"],
                    "encoding": item["encoding"],
                    **(
                        {"level": item["level"], "reference": item["reference"]}
                        if item["encoding"] == "indicator"
                        else {}
                    ),
                }
            )
        else:
            inputs.append(
                {
                    "index": index,
                    "name": name,
                    "source": "features",
                    "column": name,
                    "encoding": "numeric",
                }
            )
    return inputs


def _sample_weighting(model: ModelResult, settings: Settings) -> str:
    """How the classifier's training lesions were weighted (the card's ``sample_weighting``)."""
    if model.sampler != "none":
        return "none (the sampler balances the classes)"
    text = (
        "class weights x 1/(lesions of the patient)"
        if settings.patient_weights
        else "class weights"
    )
    if not get(model.classifier).sample_weights:
        text += f" (not supported by {model.classifier}: unweighted)"
    return text


def _feature_selection(model: ModelResult, cohort, settings: Settings) -> dict:
    """The card's ``feature_selection``: the selection's settings and the features it kept."""
    covariates = {c["name"]: c for c in cohort.covariates}
    return {
        "pcc_threshold": settings.pcc_threshold,
        "max_features": settings.max_features,
        "importance_trees": settings.importance_trees,
        "importance_repeats": settings.importance_repeats,
        "candidates": len(cohort.features),
        "selected": [n for n in model.inputs if n not in covariates],
    }


def _search(model: ModelResult, cohort, settings: Settings) -> dict:
    """The card's ``search``: how the hyper-parameters were tuned."""
    return {
        "kind": "grid"
        if settings.search == "grid" or (settings.grids or {}).get(model.classifier) is not None
        else "random",
        "inner_folds": settings.inner_folds,
        "scoring": "roc_auc" if len(cohort.classes) == 2 else "roc_auc_ovr",
        "grouped_by": settings.group_by,
    }


def _split(cohort, plan, settings: Settings, train_rows, test_rows) -> dict:
    """The card's ``split``: the protocol and the patients and lesions of each set."""
    trained = set(cohort.participants[train_rows].tolist())
    n_patients = {
        c: sum(1 for p, lab in cohort.patient_labels().items() if lab == c and p in trained)
        for c in cohort.classes
    }
    return {
        "protocol": settings.protocol,
        "source": plan.source,
        "group_by": settings.group_by,
        "cv_folds": settings.cv_folds,
        "cv_repeats": settings.cv_repeats if plan.folds is None else 1,
        "train_patients": len(trained),
        "test_patients": len(set(cohort.participants[test_rows].tolist())),
        "train_lesions": int(len(train_rows)),
        "test_lesions": int(len(test_rows)),
        "train_patients_per_class": n_patients,
        "excluded_participants": len(cohort.excluded),
    }


def card(
    model: ModelResult,
    result: TrainingResult,
    cohort,
    plan,
    settings: Settings,
    train_rows,
    test_rows,
) -> dict:
    """The model card (model.json) of a flat model or of one step of a hierarchy."""
    from metcli.radiomics import onnx as onnx_export

    doc = {
        "Description": f"metcli radiomics model {model.name}: {model.classifier} with "
        f"{model.sampler} sampling; ONNX graph from the selected features "
        "(inputs, in order) to class probabilities",
        "card_version": CARD_VERSION,
        "kind": "radiomics",
        "name": model.name,
        "task": "binary" if len(cohort.classes) == 2 else "multiclass",
        "classifier": model.classifier,
        "sampler": model.sampler,
        "label_column": settings.label_column,
        "classes": list(cohort.classes),
        "positive_class": cohort.positive,
        "inputs": _card_inputs(model, cohort),
        "input_format": "one float32 tensor of shape [N, 1] per input, named as the input",
        "outputs": {
            "label": onnx_export.OUTPUT_LABEL,
            "probabilities": onnx_export.OUTPUT_PROBABILITIES,
        },
        "preprocessing": [
            "features as written by metcli extract (same extraction settings hash)",
            "lesions with a missing input value are not predicted",
            "inputs standardised with the training mean and SD inside the ONNX graph",
        ],
        "phase": cohort.table.phase,
        "extraction_settings_sha256": cohort.table.settings_sha256,
        "segmentation_model_sha256": None,
        "feature_selection": _feature_selection(model, cohort, settings),
        "sample_weighting": _sample_weighting(model, settings),
        "hyperparameters": model.hyperparameters,
        "search": _search(model, cohort, settings),
        "threshold": model.threshold,
        "threshold_source": model.threshold_source,
        "threshold_rule": settings.threshold if cohort.positive else None,
        "threshold_level": settings.threshold_level if cohort.positive else None,
        "patient_aggregate": "mean",
        "split": _split(cohort, plan, settings, train_rows, test_rows),
        "metrics": {"cv": jsonable(model.cv), "test": jsonable(model.test)},
        "selected_by_cv": model_name(model.classifier, model.sampler) == result.selected,
        "versions": model_versions(),
        "onnx": {
            "file": "model.onnx",
            "sha256": onnx_sha256(model.onnx),
            "opset": dict(onnx_export.TARGET_OPSET),
            "max_abs_difference": model.onnx_difference,
        },
    }
    if model.decision is not None:  # three classes or more: the per-class cut-offs
        doc["decision"] = model.decision
    return doc


def chain_card(
    model: ModelResult,
    result: TrainingResult,
    cohort,
    plan,
    settings: Settings,
    train_rows,
    test_rows,
) -> dict:
    """The card of a hierarchical model: how its steps chain, and the chain's metrics."""
    from metcli.radiomics.hierarchy import RULE

    doc = card(model, result, cohort, plan, settings, train_rows, test_rows)
    tree = result.hierarchy
    doc["Description"] = (
        f"metcli hierarchical radiomics model {model.name}: "
        f"{model.classifier} with {model.sampler} sampling in every step; "
        "model.onnx runs the steps and chains their probabilities "
        "(inputs: every step's inputs, in order)"
    )
    doc["kind"] = "radiomics-hierarchy"
    covariates = set(cohort.keep)
    doc["feature_selection"]["selected_by_step"] = {
        k: [n for n in v.inputs if n not in covariates] for k, v in model.steps.items()
    }
    steps = []
    for name, part in model.steps.items():
        data = result.steps[name]
        steps.append(
            {
                "name": name,
                "folder": name,
                "group": data.group,
                "predicts": (
                    "the group of the label"
                    if data.group is None
                    else f"the label within group {data.group}"
                ),
                "trained_on": (
                    "every training patient"
                    if data.group is None
                    else f"the training patients of group {data.group}"
                ),
                "classes": list(data.cohort.classes),
                "inputs": list(part.inputs),
                "onnx_sha256": onnx_sha256(part.onnx),
            }
        )
    doc["hierarchy"] = {
        "groups": tree.record()["groups"],
        "file": tree.source,
        "rule": RULE,
        "steps": steps,
    }
    return doc


def step_card(
    part: ModelResult, chained: ModelResult, result: TrainingResult, plan, settings: Settings
) -> dict:
    """The card of one step: a radiomics model folder of its own."""
    data = result.steps[part.step]
    rows = (
        np.flatnonzero(np.isin(data.cohort.participants, plan.train)),
        np.flatnonzero(np.isin(data.cohort.participants, plan.test)),
    )
    doc = card(part, result, data.cohort, plan, settings, *rows)
    what = (
        "the group (" + ", ".join(data.cohort.classes) + ")"
        if data.group is None
        else f"the label within group {data.group} ("
        + ", ".join(data.cohort.classes)
        + f"), trained on the patients of group {data.group} only"
    )
    doc["Description"] = (
        f"metcli radiomics model {part.name}: {part.step} of the "
        f"hierarchical model {chained.name}; predicts {what}"
    )
    doc["hierarchy_step"] = {
        "model": chained.name,
        "step": part.step,
        "group": data.group,
        "groups": result.hierarchy.record()["groups"],
    }
    return doc


def _graph_card(kind: str, model: ModelResult, cohort) -> dict:
    """The part of a card that its graph's metadata records."""
    return {
        "kind": kind,
        "classes": list(cohort.classes),
        "positive_class": cohort.positive,
        "inputs": _card_inputs(model, cohort),
    }


def stamp_graphs(result: TrainingResult, cohort) -> None:
    """Give every graph of ``result`` (flat models, chains and their steps) the
    ``metcli.*`` metadata of the card that will describe it
    (:func:`metcli.io.cards.graph_metadata`), before the cards record the graphs' sha256.

    Idempotent: a graph stamped again gets the same bytes.
    """
    from metcli.io.cards import canonical_onnx, graph_metadata

    for model in result.models.values():
        for name, part in model.steps.items():
            stamped = _graph_card("radiomics", part, result.steps[name].cohort)
            part.onnx = canonical_onnx(part.onnx, graph_metadata(stamped))
        kind = "radiomics-hierarchy" if model.steps else "radiomics"
        model.onnx = canonical_onnx(model.onnx, graph_metadata(_graph_card(kind, model, cohort)))
