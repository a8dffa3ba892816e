"""The ``almss`` scenario of ``metcli synth``: the world of the ALMSS study (Xin et al. 2024).

ALMSS is a hierarchical system on four-phase CT: it tells hepatocellular carcinoma (HCC)
and intrahepatic cholangiocarcinoma (ICC) from liver metastases, then the metastasis's
origin among six organ systems, from the liver and tumour in every phase plus age and sex.
This module holds what the scenario's classes are and how they differ (see
``docs/synth.md``, section "The almss scenario", for the values and their sources):

- :data:`ALMSS_CLASSES`: ``hcc``, ``icc`` and six metastasis origins (:data:`ORIGINS`), grouped
  by :data:`GROUPS` as the hierarchy file says (step 1 hcc / icc / metastasis);
- :class:`Enhancement`: a lesion's attenuation against the liver in each phase, for its
  core and its rim (capsule, peripheral rim enhancement);
- :class:`Demography`: age and sex by class;
- :class:`AlmssParams`: every knob, with :meth:`AlmssParams.null` (no class difference);
- :func:`class_sequence`: the class of each participant, in a ratio, interleaved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import numpy as np

from metcli.core.errors import UsageError
from metcli.synth.classes import TabulatedLesions, interleave

#: The contrast phases, in acquisition order, and the reference (truth) phase.
PHASES = ("native", "arterial", "portal", "delayed")
REFERENCE_PHASE = "portal"
#: The six metastasis origins (the organ systems of the metastasis step).
ORIGINS = ("colorectal", "pancreatic", "gastric", "lung", "breast", "neuroendocrine")
#: Every class, as participants.tsv's ``primary`` writes it.
ALMSS_CLASSES = ("hcc", "icc") + ORIGINS
#: Step 1 of the hierarchy: group -> its classes.
GROUPS = {"hcc": ("hcc",), "icc": ("icc",), "metastasis": ORIGINS}
#: Participants per class in one round of the default ratio: HCC : ICC : metastasis
#: 3 : 1 : 7, near the ALMSS cohort's 840 : 354 : 1911; colorectal, the commonest origin
#: of liver metastases, twice each other origin.
CLASS_RATIO = {
    "hcc": 3,
    "icc": 1,
    "colorectal": 2,
    "pancreatic": 1,
    "gastric": 1,
    "lung": 1,
    "breast": 1,
    "neuroendocrine": 1,
}


@dataclass(frozen=True)
class Enhancement:
    """A lesion's attenuation minus the liver's (HU) in each phase of :data:`PHASES`.

    ``rim_fraction``: the outer part of the lesion (fraction of its radius) that is rim
    (a capsule, peripheral rim enhancement); ``core`` and ``rim``: HU against the
    patient's liver in that phase, native, arterial, portal, delayed.
    """

    rim_fraction: float
    core: tuple[float, float, float, float]
    rim: tuple[float, float, float, float]

    def contrast(self, phase: str, in_rim: np.ndarray) -> np.ndarray:
        k = PHASES.index(phase)
        return np.where(in_rim, self.rim[k], self.core[k]).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rim_fraction": self.rim_fraction,
            "core": dict(zip(PHASES, self.core)),
            "rim": dict(zip(PHASES, self.rim)),
        }


#: Lesion - liver HU per class and phase (native, arterial, portal, delayed); see
#: docs/synth.md for the patterns and their references.
ENHANCEMENT = {
    # LI-RADS: non-rim arterial hyperenhancement, washout, enhancing capsule (the rim)
    "hcc": Enhancement(0.1, core=(-12, 40, -35, -40), rim=(-12, 40, 10, 10)),
    # rim arterial enhancement, progressive centripetal (delayed) enhancement of the core
    "icc": Enhancement(0.15, core=(-15, -25, -30, 0), rim=(-15, 25, 5, -5)),
    # hypovascular metastases: rim enhancement, hypo-attenuating in the portal phase
    "colorectal": Enhancement(0.25, core=(-20, -35, -55, -45), rim=(-15, 10, -20, -15)),
    "pancreatic": Enhancement(0.25, core=(-18, -30, -50, -40), rim=(-15, 12, -15, -15)),
    "gastric": Enhancement(0.25, core=(-18, -30, -45, -38), rim=(-15, 8, -15, -12)),
    "lung": Enhancement(0.25, core=(-15, -25, -40, -35), rim=(-12, 10, -12, -10)),
    # breast: mostly hypovascular, sometimes hypervascular: a mild arterial blush
    "breast": Enhancement(0.2, core=(-15, -5, -30, -25), rim=(-12, 15, -10, -10)),
    # hypervascular: arterial hyperenhancement, iso in the portal phase, washout
    "neuroendocrine": Enhancement(0.2, core=(-15, 50, -5, -15), rim=(-15, 55, 5, -5)),
}


@dataclass(frozen=True)
class Demography:
    """Age (years: normal, cut to 18..90) and sex (fraction male) of a class."""

    age_mean: float
    age_sd: float
    male: float

    def draw(self, rng: np.random.Generator) -> tuple[int, str]:
        age = int(np.clip(round(rng.normal(self.age_mean, self.age_sd)), 18, 90))
        return age, "M" if rng.uniform() < self.male else "F"

    def as_dict(self) -> dict[str, float]:
        return {"age_mean": self.age_mean, "age_sd": self.age_sd, "male": self.male}


DEMOGRAPHY = {
    "hcc": Demography(58.0, 11.0, 0.80),
    "icc": Demography(62.0, 10.0, 0.58),
    "colorectal": Demography(64.0, 11.0, 0.64),
    "pancreatic": Demography(65.0, 10.0, 0.48),
    "gastric": Demography(62.0, 11.0, 0.70),
    "lung": Demography(63.0, 10.0, 0.65),
    "breast": Demography(53.0, 11.0, 0.01),
    "neuroendocrine": Demography(56.0, 13.0, 0.50),
}
#: Mean lesions per patient (1 + Poisson(mean - 1)), scaled to the half-size liver of the
#: small grid; the 2023 study's means are 27.8 (pancreatic) and 9.3 (colorectal).
LESION_COUNTS = {
    "hcc": 1.5,
    "icc": 1.5,
    "colorectal": 3.0,
    "pancreatic": 6.0,
    "gastric": 4.0,
    "lung": 4.0,
    "breast": 5.0,
    "neuroendocrine": 6.0,
}
#: Mean lesion diameter (mm, log-normal).
DIAMETERS = {
    "hcc": 20.0,
    "icc": 22.0,
    "colorectal": 16.0,
    "pancreatic": 10.0,
    "gastric": 13.0,
    "lung": 12.0,
    "breast": 12.0,
    "neuroendocrine": 11.0,
}
#: The liver's mean HU per phase, and the tissues that enhance (others keep their HU).
LIVER_HU = {"native": 55.0, "arterial": 75.0, "portal": 115.0, "delayed": 95.0}
AORTA_HU = {"native": 40.0, "arterial": 280.0, "portal": 170.0, "delayed": 120.0}
MUSCLE_HU = {"native": 50.0, "arterial": 55.0, "portal": 60.0, "delayed": 58.0}
CAVITY_HU = {"native": 35.0, "arterial": 50.0, "portal": 65.0, "delayed": 60.0}


def _table(default: Mapping) -> Any:
    return field(default_factory=lambda: dict(default))


@dataclass(frozen=True)
class AlmssParams(TabulatedLesions):
    """Everything that shapes an almss participant but the grids and the random numbers.

    Per class (mappings over :data:`ALMSS_CLASSES`): ``lesion_counts`` (mean lesions per
    patient), ``diameters`` (mean diameter, mm), ``enhancement``
    (:class:`Enhancement`), ``demography`` (:class:`Demography`). Shared: the lesion
    knobs of the 2023 scenario (``patient_sd``, ``lesion_hu_sd``, ``lesion_texture_sd``,
    ``diameter_cv``, ``diameter_min``, ``diameter_max``, ``max_lesions``,
    ``irregularity``), the liver (``liver_hu`` per phase, ``liver_hu_sd`` between patients,
    ``liver_enhancement_sd`` of a patient's enhancement factor, ``liver_texture_sd``),
    the image (``noise_sd``, ``blur_mm``), and the motion between phases (``motion_mm``:
    SD of the craniocaudal shift, a third of it in-plane; ``rotation_deg``: SD of the
    rotation about each axis; ``table_offset_mm``: a phase's scan range starts up to this
    far from the portal one's).
    """

    lesion_counts: Mapping[str, float] = _table(LESION_COUNTS)
    diameters: Mapping[str, float] = _table(DIAMETERS)
    enhancement: Mapping[str, Enhancement] = _table(ENHANCEMENT)
    demography: Mapping[str, Demography] = _table(DEMOGRAPHY)
    liver_hu: Mapping[str, float] = _table(LIVER_HU)
    patient_sd: float = 4.0
    lesion_hu_sd: float = 3.0
    lesion_texture_sd: float = 6.0
    diameter_cv: float = 0.35
    diameter_min: float = 6.0
    diameter_max: float = 30.0
    max_lesions: int = 15
    irregularity: float = 0.12
    liver_hu_sd: float = 5.0
    liver_enhancement_sd: float = 0.08
    liver_texture_sd: float = 6.0
    noise_sd: float = 12.0
    blur_mm: float = 0.8
    motion_mm: float = 4.0
    rotation_deg: float = 1.0
    table_offset_mm: float = 6.0

    #: Lesion placement (:mod:`metcli.synth.placement`) adds the class's HU itself per
    #: phase, so the placed lesion's ``hu`` is its own offset (patient + lesion jitter).
    lesion_hu = 0.0

    # --- what lesion placement asks of its parameters (TabulatedLesions answers it)
    def known(self, cls: str) -> str:
        return _known(cls)

    def liver_phase_hu(self, phase: str, factor: float, offset: float) -> float:
        """A patient's liver mean in ``phase``: enhancement scaled by ``factor``, + offset."""
        native = self.liver_hu["native"]
        return float(native + factor * (self.liver_hu[phase] - native) + offset)

    def null(self) -> "AlmssParams":
        """The same parameters with every class given the average of all classes."""
        n = len(ALMSS_CLASSES)

        def mean(values) -> float:
            return float(sum(values) / n)

        enh = [self.enhancement[c] for c in ALMSS_CLASSES]
        average = Enhancement(
            mean(e.rim_fraction for e in enh),
            core=tuple(mean(e.core[k] for e in enh) for k in range(len(PHASES))),
            rim=tuple(mean(e.rim[k] for e in enh) for k in range(len(PHASES))),
        )
        demo = [self.demography[c] for c in ALMSS_CLASSES]
        age = mean(d.age_mean for d in demo)
        pooled_sd = math.sqrt(mean(d.age_sd**2 + (d.age_mean - age) ** 2 for d in demo))
        people = Demography(age, pooled_sd, mean(d.male for d in demo))
        count = mean(self.lesion_counts[c] for c in ALMSS_CLASSES)
        diameter = mean(self.diameters[c] for c in ALMSS_CLASSES)
        return replace(
            self,
            lesion_counts={c: count for c in ALMSS_CLASSES},
            diameters={c: diameter for c in ALMSS_CLASSES},
            enhancement={c: average for c in ALMSS_CLASSES},
            demography={c: people for c in ALMSS_CLASSES},
        )

    def knobs(self) -> dict[str, Any]:
        """Every parameter, JSON-able, for provenance."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in value.items()}
            out[f.name] = value
        return out

    def validate(self) -> "AlmssParams":
        """Raise :class:`UsageError` naming the parameter, the rule and the bad value."""
        _validate_scalars(self)
        for name, keys in (
            ("lesion_counts", ALMSS_CLASSES),
            ("diameters", ALMSS_CLASSES),
            ("enhancement", ALMSS_CLASSES),
            ("demography", ALMSS_CLASSES),
            ("liver_hu", PHASES),
        ):
            table = getattr(self, name)
            if set(table) != set(keys):
                raise UsageError(f"{name} must give a value for each of {', '.join(keys)}")
        for cls in ALMSS_CLASSES:
            _validate_class(self, cls)
        return self


_SCALARS = (
    "patient_sd",
    "lesion_hu_sd",
    "lesion_texture_sd",
    "diameter_cv",
    "liver_hu_sd",
    "liver_enhancement_sd",
    "liver_texture_sd",
    "noise_sd",
    "blur_mm",
    "motion_mm",
    "rotation_deg",
    "table_offset_mm",
)
#: The knobs of :class:`AlmssParams`, as :func:`~metcli.synth.almss_cohort.synth_almss_cohort`
#: takes them as keywords (mappings may give some classes only).
ALMSS_KNOBS = tuple(f.name for f in fields(AlmssParams))


def _finite(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _validate_scalars(params: AlmssParams) -> None:
    def need(name: str, ok: bool, rule: str) -> None:
        if not ok:
            raise UsageError(f"{name} must be {rule}, got {getattr(params, name)!r}")

    for name in _SCALARS + ("diameter_min", "diameter_max", "max_lesions", "irregularity"):
        need(name, _finite(getattr(params, name)), "a finite number")
    for name in _SCALARS:
        need(name, getattr(params, name) >= 0, "zero or positive")
    need(
        "max_lesions",
        int(params.max_lesions) == params.max_lesions and params.max_lesions >= 1,
        "a whole number >= 1",
    )
    need("diameter_min", params.diameter_min > 0, "positive (mm)")
    need("diameter_max", params.diameter_max >= params.diameter_min, "at least diameter_min")
    need("irregularity", 0 <= params.irregularity <= 0.4, "between 0 and 0.4")
    need("liver_enhancement_sd", params.liver_enhancement_sd <= 0.3, "at most 0.3")
    for phase, value in params.liver_hu.items():
        if not _finite(value):
            raise UsageError(f"liver_hu of {phase} must be a finite number, got {value!r}")


def _validate_class(params: AlmssParams, cls: str) -> None:
    count, diameter = params.lesion_counts[cls], params.diameters[cls]
    if not (_finite(count) and 1.0 <= count <= params.max_lesions):
        raise UsageError(
            f"lesion_counts of {cls} must be between 1 and max_lesions "
            f"({params.max_lesions}), got {count!r}",
            fix="raise max_lesions (--max-lesions) for larger counts",
        )
    if not (_finite(diameter) and params.diameter_min <= diameter <= params.diameter_max):
        raise UsageError(
            f"diameters of {cls} must be between diameter_min ({params.diameter_min}) and "
            f"diameter_max ({params.diameter_max}) mm, got {diameter!r}"
        )
    enh = params.enhancement[cls]
    values = (enh.rim_fraction, *enh.core, *enh.rim)
    if len(enh.core) != len(PHASES) or len(enh.rim) != len(PHASES):
        raise UsageError(f"enhancement of {cls} must give one value per phase")
    if not all(_finite(v) for v in values) or not 0 <= enh.rim_fraction <= 0.9:
        raise UsageError(
            f"enhancement of {cls} must be finite HU with a rim_fraction in [0, 0.9], got {enh}"
        )
    demo = params.demography[cls]
    if not (
        all(_finite(v) for v in (demo.age_mean, demo.age_sd, demo.male))
        and 18 <= demo.age_mean <= 90
        and demo.age_sd >= 0
        and 0 <= demo.male <= 1
    ):
        raise UsageError(
            f"demography of {cls} must have an age_mean in 18..90, an age_sd >= 0 and a "
            f"male fraction in [0, 1], got {demo}"
        )


def _known(cls: str) -> str:
    if cls not in ALMSS_CLASSES:
        raise UsageError(f"class {cls!r} is not one of {', '.join(ALMSS_CLASSES)}")
    return cls


def make_params(null: bool = False, **knobs: Any) -> AlmssParams:
    """:class:`AlmssParams` from keyword knobs; a mapping knob may give some classes (or
    phases) only, the others keep their defaults; None keeps a default."""
    unknown = sorted(set(knobs) - set(ALMSS_KNOBS))
    if unknown:
        raise UsageError(
            f"unknown almss parameter(s) {', '.join(unknown)}",
            fix=f"use some of: {', '.join(ALMSS_KNOBS)}",
        )
    defaults = AlmssParams()
    resolved: dict[str, Any] = {}
    for name, value in knobs.items():
        if value is None:
            continue
        base = getattr(defaults, name)
        if isinstance(base, Mapping):
            if not isinstance(value, Mapping):
                raise UsageError(f"{name} must be a mapping of class to value, got {value!r}")
            keys = PHASES if name == "liver_hu" else ALMSS_CLASSES
            for key in value:
                if key not in keys:
                    raise UsageError(f"{name}: {key!r} is not one of {', '.join(keys)}")
            value = {**base, **value}
        resolved[name] = value
    params = replace(defaults, **resolved).validate()
    return params.null().validate() if null else params


# ============================================================================ class counts
def class_sequence(counts: Mapping[str, int], total: int | None = None) -> list[str]:
    """The class of each participant: ``counts`` (or a ratio, with ``total``) interleaved
    (:func:`metcli.synth.classes.interleave`; ties in the order of :data:`ALMSS_CLASSES`)."""
    return interleave(counts, ALMSS_CLASSES, total)


def class_counts_of(sequence) -> dict[str, int]:
    return {c: list(sequence).count(c) for c in ALMSS_CLASSES}


def parse_class_values(
    text: str, what: str, cast: Callable[[str], Any] = float, keys=ALMSS_CLASSES
) -> dict[str, Any]:
    """``"hcc=6,icc=2"`` -> ``{"hcc": 6, "icc": 2}`` (the option ``what`` in errors)."""
    out: dict[str, Any] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            raise UsageError(
                f"{what}: {part.strip()!r} is not CLASS=VALUE with a class of {', '.join(keys)}",
                fix=f"for example {what} {keys[0]}=2,{keys[-1]}=3",
            )
        try:
            out[key] = cast(value.strip())
        except ValueError:
            raise UsageError(f"{what}: {value.strip()!r} of {key} is not a valid number") from None
    if not out:
        raise UsageError(f"{what} is empty", fix=f"for example {what} {keys[0]}=2")
    return out
