"""The settings of ``metcli train-radiomics``: every option that changes the outputs, checked.

:func:`check_settings` turns keyword options (the command's, or a Python
caller's) into :class:`Settings`, naming the option in a :class:`UsageError`
when a value is not allowed. The classifier names are those of the registry
(:mod:`metcli.radiomics.classifiers`) when the settings are checked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from metcli.core.errors import UsageError
from metcli.radiomics.classifiers import CLASSIFIERS

COMMAND = "train-radiomics"
SAMPLERS = ("smote", "undersample", "none")
PROTOCOLS = ("nested-cv", "holdout")
THRESHOLD_RULES = ("youden", "f1")
LEVELS = ("patient", "lesion")


@dataclass
class Settings:
    """Everything that changes the outputs (recorded in provenance)."""

    label_column: str = "primary"
    positive_class: str | None = None
    classifiers: tuple[str, ...] = field(default_factory=lambda: tuple(CLASSIFIERS))
    samplers: tuple[str, ...] = ("smote", "undersample")
    pcc_threshold: float = 0.6
    max_features: int = 10
    protocol: str = "nested-cv"
    test_patients: int | None = None
    cv_folds: int = 5
    cv_repeats: int = 2
    inner_folds: int = 3
    group_by: str = "participant"
    search: str = "grid"
    search_iterations: int = 10
    threshold: str = "youden"
    threshold_level: str = "patient"
    patient_weights: bool = False
    covariates: tuple[str, ...] = ()
    phase: str | None = None
    session: str | None = None
    importance_trees: int = 100
    importance_repeats: int = 5
    seed: int = 0
    grids: dict | None = None
    hierarchy: dict | None = None
    decision: str = "argmax"  # multi-class: argmax or best-f1 (metcli.io.cutoffs)

    def record(self) -> dict:
        out = asdict(self)
        if self.decision == "argmax":  # the default: the records of earlier runs stay current
            del out["decision"]
        out["classifiers"] = list(self.classifiers)
        out["samplers"] = list(self.samplers)
        out["covariates"] = list(self.covariates)
        return out


def _names(value, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    items = list(value or [])
    if items == ["all"]:
        return tuple(allowed)
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise UsageError(
            f"{option} {','.join(bad) or '(empty)'} is not valid",
            fix=f"choose among all, {', '.join(allowed)} (comma-separated)",
        )
    return tuple(dict.fromkeys(items))


def check_settings(**options) -> Settings:
    """Settings from keyword options, each checked (UsageError names the option)."""
    unknown = set(options) - set(Settings.__dataclass_fields__)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(sorted(unknown))}")
    s = Settings(
        **{
            k: v
            for k, v in options.items()
            if v is not None
            or k in ("positive_class", "test_patients", "phase", "session", "grids", "hierarchy")
        }
    )
    s.classifiers = _names(s.classifiers, tuple(CLASSIFIERS), "--classifiers")
    s.samplers = _names(s.samplers, SAMPLERS, "--sampler")
    if isinstance(s.covariates, str):
        s.covariates = tuple(c.strip() for c in s.covariates.split(",") if c.strip())
    s.covariates = tuple(s.covariates)
    checks = [
        (0.0 < s.pcc_threshold <= 1.0, "--pcc-threshold must be in (0, 1]"),
        (s.max_features >= 1, "--max-features must be at least 1"),
        (s.protocol in PROTOCOLS, f"--protocol must be one of {', '.join(PROTOCOLS)}"),
        (s.cv_folds >= 2, "--cv-folds must be at least 2"),
        (s.cv_repeats >= 1, "--cv-repeats must be at least 1"),
        (s.inner_folds >= 2, "--inner-folds must be at least 2"),
        (s.group_by in ("participant", "site"), "--group-by must be participant or site"),
        (s.search in ("grid", "random"), "--search must be grid or random"),
        (s.search_iterations >= 1, "--search-iterations must be at least 1"),
        (s.threshold in THRESHOLD_RULES, "--threshold must be youden or f1"),
        (s.threshold_level in LEVELS, "--threshold-level must be patient or lesion"),
        (s.decision in ("argmax", "best-f1"), "--decision must be argmax or best-f1"),
        (
            s.importance_trees >= 1 and s.importance_repeats >= 1,
            "--importance-trees and --importance-repeats must be at least 1",
        ),
        (s.test_patients is None or s.test_patients >= 2, "--test-patients must be at least 2"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if s.patient_weights and s.samplers != ("none",):
        raise UsageError(
            "--patient-weights works with --sampler none only: SMOTE and "
            "undersampling make or drop lesions, which have no patient weight",
            fix="use --sampler none --patient-weights",
        )
    if s.hierarchy is not None and s.positive_class is not None:
        raise UsageError(
            "--positive-class does not apply to --hierarchy: the chained model "
            "has three labels or more (a binary step's positive class is its "
            "label that sorts last)",
            fix="leave --positive-class out",
        )
    if s.test_patients is not None and s.protocol != "holdout":
        raise UsageError("--test-patients needs --protocol holdout")
    if s.grids:
        for name, grid in s.grids.items():
            if name not in CLASSIFIERS or not isinstance(grid, dict):
                raise UsageError(f"grid for {name!r}: not a classifier or not a mapping")
    return s
