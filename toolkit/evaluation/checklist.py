"""The reporting checklist of ``report.html`` (``metcli evaluate``).

The items TRIPOD+AI and CLAIM ask a study to report: filled where metcli knows them from
the run (the metrics.json document), marked where the authors must fill them.
"""

from __future__ import annotations

from typing import Any, Mapping

Item = tuple[str, str, str, bool]

#: What an item says when only the authors can fill it.
AUTHOR = "to be completed by the authors"


def checklist(doc: Mapping[str, Any]) -> list[Item]:
    """(guideline, item, what metcli knows or what the authors must add, filled?)."""
    return _data_items(doc) + _analysis_items(doc) + _claim_items(doc)


def _data_items(doc: Mapping[str, Any]) -> list[Item]:
    """TRIPOD+AI 5-10: data, outcome, predictors, sample size, missing data."""
    models = doc["Models"]
    n_patients = max((lv["n_patients"] for m in models for lv in m["levels"]), default=0)
    return [
        (
            "TRIPOD+AI 5-6",
            "Data source, eligibility criteria, study dates and setting",
            AUTHOR,
            False,
        ),
        (
            "TRIPOD+AI 7",
            "Outcome: definition and how it was ascertained (reference standard)",
            "label: the primary tumour's origin from participants.tsv; how it was confirmed: "
            + AUTHOR,
            False,
        ),
        (
            "TRIPOD+AI 8",
            "Predictors / inputs and their preprocessing",
            "see the model card (model.json) of each model; " + AUTHOR,
            False,
        ),
        (
            "TRIPOD+AI 9",
            "Sample size",
            f"{n_patients} patients evaluated in the "
            f"{doc['Set']} set (counts per class and lesions in the summary)",
            True,
        ),
        ("TRIPOD+AI 10", "Missing data and how they were handled", AUTHOR, False),
    ]


def _analysis_items(doc: Mapping[str, Any]) -> list[Item]:
    """TRIPOD+AI 12-18: analysis, fairness, software and data availability."""
    from metcli._version import __version__

    models = doc["Models"]
    thresholds = "; ".join(
        f"{m['model']}: {lv['threshold_source']}" for m in models for lv in m["levels"][:1]
    )
    selected = [m["model"] for m in models if m.get("selected_by_cv")]
    return [
        (
            "TRIPOD+AI 12",
            "Analysis: unit of analysis and clustering",
            "the patient; lesion-level figures account for clustering (cluster bootstrap, "
            "Obuchowski's variance)",
            True,
        ),
        (
            "TRIPOD+AI 12",
            "Performance measures with confidence intervals",
            "AUC, accuracy, F1, sensitivity, specificity, PPV, NPV, Brier score, each with a "
            f"{int(doc['ConfidenceLevel'] * 100)}% interval",
            True,
        ),
        (
            "TRIPOD+AI 12",
            "Calibration",
            "reliability diagrams and mean predicted probability against the observed prevalence",
            True,
        ),
        ("TRIPOD+AI 12", "Classification threshold and how it was chosen", thresholds, True),
        (
            "TRIPOD+AI 12",
            "Model comparison and selection",
            ("model chosen by cross-validation: " + ", ".join(selected))
            if selected
            else "no model is marked as chosen by cross-validation; " + AUTHOR,
            bool(selected),
        ),
        ("TRIPOD+AI 14", "Fairness: performance in subgroups (sex, age, site)", AUTHOR, False),
        (
            "TRIPOD+AI 18",
            "Software and code availability",
            f"metcli {__version__} (settings and versions below)",
            True,
        ),
        ("TRIPOD+AI 18", "Data availability", AUTHOR, False),
    ]


def _claim_items(doc: Mapping[str, Any]) -> list[Item]:
    """CLAIM: data, ground truth, partitions, evaluation, robustness, failures."""
    return [
        ("CLAIM 7-9", "Data: sources, inclusion and exclusion, de-identification", AUTHOR, False),
        (
            "CLAIM 14-17",
            "Ground truth: reference standard, annotators, their agreement",
            AUTHOR,
            False,
        ),
        (
            "CLAIM 18-21",
            "Data partitions: sizes and that they are separate by patient",
            f"evaluated set: {doc['Set']}; a participant in two sets of a model is refused",
            True,
        ),
        (
            "CLAIM 28-32",
            "Evaluation metrics, statistical tests, uncertainty",
            "DeLong, Clopper-Pearson, patient bootstrap, McNemar and paired DeLong tests "
            "(methods below)",
            True,
        ),
        ("CLAIM 33", "Robustness or sensitivity analysis", AUTHOR, False),
        (
            "CLAIM 35",
            "Failure analysis: wrong predictions",
            "per-patient lesion grid (figures)",
            True,
        ),
        ("CLAIM 36-38", "Performance on external data, limitations, implications", AUTHOR, False),
    ]
