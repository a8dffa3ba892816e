"""The MR world of ``metcli synth --modality mr``: non-contrast liver MRI (T2w and DWI) of
benign lesions, hepatocellular carcinoma and metastases.

The non-contrast MRI study (Inception-ResNet V2) tells benign lesions, primary malignant
tumours (HCC) and metastases apart on T2-weighted and diffusion-weighted images stacked
as channels. This module holds what the classes are and how they look (see
``docs/synth.md``, section "The MR world", for the values and their sources):

- :data:`MR_CLASSES`: ``benign``, ``hcc``, ``metastasis`` (participants.tsv's ``primary``);
  a benign participant has one :data:`LESION_TYPES` of :data:`BENIGN_TYPES` (haemangioma,
  cyst, focal nodular hyperplasia), in turn;
- :class:`Look`: a lesion type's T2w signal (relative to the patient's liver) and ADC,
  with an optional pattern (target, central scar, capsule) in a part of the lesion;
- the tissues' T2w signal and ADC (:data:`TISSUE_T2`, :data:`TISSUE_ADC`);
- :class:`MriParams`: every knob, with :meth:`MriParams.null` (no class difference);
- :func:`mr_class_sequence`: the class of each participant, interleaved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from metcli.core.errors import UsageError
from metcli.synth.almss import Demography, _finite
from metcli.synth.anatomy import (
    AIR,
    AORTA,
    CANAL,
    CAVITY,
    CORTICAL_BONE,
    FAT,
    MARROW,
    MUSCLE,
    VISCERAL_FAT,
)
from metcli.synth.classes import TabulatedLesions, interleave

SCENARIO = "mri"
#: The classes, as participants.tsv's ``primary`` writes them.
MR_CLASSES = ("benign", "hcc", "metastasis")
#: The lesion types; a benign participant's lesions are of one benign type.
LESION_TYPES = ("cyst", "haemangioma", "fnh", "hcc", "metastasis")
#: The benign types, in the order benign participants take them.
BENIGN_TYPES = ("haemangioma", "cyst", "fnh")
CLASS_OF = {"cyst": "benign", "haemangioma": "benign", "fnh": "benign"}
CLASS_OF.update(hcc="hcc", metastasis="metastasis")
#: Participants per class in one round of the default ratio.
MR_CLASS_RATIO = {"benign": 1, "hcc": 1, "metastasis": 1}
DEFAULT_SUBJECTS = 12
#: The sequences, the reference (the truth's grid) first.
SEQUENCES = ("T2w", "dwi")
REFERENCE = "T2w"
#: Diffusion weightings (s/mm2) and gradient directions (patient frame, LPS), in the order
#: import-dicom orders the volumes (by b, then by direction): b = 0 once, then each
#: direction per shell.
B_VALUES = (0, 50, 800)
DIRECTIONS = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))
#: Echo times (ms): the b = 0 image is T2-weighted at the shorter echo of the EPI readout,
#: so a tissue with T2w signal r (relative to liver at TE_T2W) has r ** (TE_DWI / TE_T2W)
#: at b = 0 (S ~ exp(-TE / T2), the same proton density).
TE_T2W, TE_DWI = 90.0, 60.0
TR_T2W, TR_DWI = 2500.0, 4500.0
#: Where a pattern lies: inside rho < boundary (centre) or outside rho > boundary (rim).
PATTERN_REGION = {"target": "centre", "scar": "centre", "capsule": "rim", "uniform": "none"}


@dataclass(frozen=True)
class Look:
    """A lesion type on non-contrast MRI.

    ``t2``: T2w signal relative to the patient's liver; ``adc``: mm2/s. A lesion shows
    ``pattern`` with ``probability``: the part inside (centre: target, scar) or outside
    (rim: capsule) ``boundary`` (of the lesion's boundary function, 1 at its surface) has
    ``pattern_t2`` and ``pattern_adc`` instead.
    """

    t2: float
    adc: float
    pattern: str = "uniform"
    probability: float = 0.0
    boundary: float = 0.0
    pattern_t2: float = 0.0
    pattern_adc: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: The lesion types (see docs/synth.md for the sources): T2w relative to liver, ADC mm2/s.
LOOKS = {
    # simple cysts: fluid, very bright on T2w, free diffusion
    "cyst": Look(4.5, 3.0e-3),
    # haemangiomas: bright on T2w ("light bulb"), high ADC (T2 shine-through)
    "haemangioma": Look(3.2, 2.0e-3),
    # FNH: near-isointense, ADC near liver; a T2-bright central scar in about half
    "fnh": Look(1.1, 1.35e-3, "scar", 0.5, 0.3, 2.2, 1.8e-3),
    # HCC: moderately T2-bright, restricted diffusion; a T2-dark capsule in most
    "hcc": Look(1.6, 1.05e-3, "capsule", 0.6, 0.88, 0.8, 1.2e-3),
    # metastases: moderately T2-bright, restricted; often a target (brighter, freer centre)
    "metastasis": Look(1.6, 1.0e-3, "target", 0.6, 0.55, 2.4, 1.5e-3),
}
#: T2w signal of the other tissues, relative to a standard liver (fat-suppressed T2w TSE).
TISSUE_T2 = {
    AIR: 0.0,
    FAT: 0.35,
    MUSCLE: 0.75,
    CAVITY: 1.6,
    VISCERAL_FAT: 0.35,
    CORTICAL_BONE: 0.05,
    MARROW: 0.5,
    CANAL: 5.0,
    AORTA: 0.15,
}
#: Their ADC (mm2/s).
TISSUE_ADC = {
    AIR: 0.0,
    FAT: 0.2e-3,
    MUSCLE: 1.45e-3,
    CAVITY: 2.0e-3,
    VISCERAL_FAT: 0.2e-3,
    CORTICAL_BONE: 0.3e-3,
    MARROW: 0.45e-3,
    CANAL: 3.0e-3,
    AORTA: 2.0e-3,
}
DEMOGRAPHY = {
    "haemangioma": Demography(48.0, 12.0, 0.30),
    "cyst": Demography(60.0, 12.0, 0.40),
    "fnh": Demography(38.0, 10.0, 0.12),
    "hcc": Demography(62.0, 10.0, 0.78),
    "metastasis": Demography(63.0, 11.0, 0.52),
}
#: Mean lesions per patient (1 + Poisson(mean - 1)), for the small grid's half-size liver.
LESION_COUNTS = {"cyst": 2.5, "haemangioma": 1.5, "fnh": 1.2, "hcc": 1.5, "metastasis": 3.5}
#: Mean lesion diameter (mm, log-normal).
DIAMETERS = {"cyst": 12.0, "haemangioma": 16.0, "fnh": 20.0, "hcc": 22.0, "metastasis": 14.0}


def _table(default: Mapping) -> Any:
    return field(default_factory=lambda: dict(default))


@dataclass(frozen=True)
class MriParams(TabulatedLesions):
    """Everything that shapes an MR participant but the grids and the random numbers.

    Per lesion type (:data:`LESION_TYPES`): ``lesion_counts``, ``diameters``, ``looks``,
    ``demography``. The patient: ``liver_adc`` and ``liver_adc_sd`` (mm2/s),
    ``liver_t2_sd`` (log SD of the liver's T2w signal between patients), ``patient_sd``
    (log SD of a patient's lesion T2w factor, shared by its lesions), ``lesion_hu_sd``
    (log SD of one lesion's T2w factor; the name lesion placement reads),
    ``lesion_adc_sd`` (log SD of one lesion's ADC); the textures (relative SDs); the
    image: ``t2_snr`` and ``dwi_snr`` (a standard liver's signal over the noise SD, on
    T2w and at b = 0), ``bias_sd`` and ``bias_mm`` (the bias field: log SD and smoothness,
    scaled by the anatomy), ``scale_min`` and ``scale_max`` (the scanner's arbitrary
    scaling, per participant and sequence), ``blur_mm`` and ``dwi_blur_mm``; the motion
    between the sequences (``motion_mm``, ``rotation_deg``, ``table_offset_mm``).
    """

    lesion_counts: Mapping[str, float] = _table(LESION_COUNTS)
    diameters: Mapping[str, float] = _table(DIAMETERS)
    looks: Mapping[str, Look] = _table(LOOKS)
    demography: Mapping[str, Demography] = _table(DEMOGRAPHY)
    liver_adc: float = 1.25e-3
    liver_adc_sd: float = 0.08e-3
    liver_t2_sd: float = 0.10
    patient_sd: float = 0.08
    lesion_hu_sd: float = 0.08
    lesion_adc_sd: float = 0.06
    liver_texture_sd: float = 0.05
    lesion_texture_sd: float = 0.08
    adc_texture_sd: float = 0.05
    diameter_cv: float = 0.35
    diameter_min: float = 6.0
    diameter_max: float = 30.0
    max_lesions: int = 15
    irregularity: float = 0.12
    t2_snr: float = 35.0
    dwi_snr: float = 30.0
    bias_sd: float = 0.15
    bias_mm: float = 80.0
    scale_min: float = 300.0
    scale_max: float = 3000.0
    blur_mm: float = 0.8
    dwi_blur_mm: float = 1.5
    motion_mm: float = 2.0
    rotation_deg: float = 0.5
    table_offset_mm: float = 4.0

    #: Lesion placement (:mod:`metcli.synth.placement`) draws a lesion's value as
    #: lesion_hu + hu_shift + patient offset + N(0, lesion_hu_sd): here the log of its T2w
    #: factor (the type's look is applied when the lesion is rendered).
    lesion_hu = 0.0

    # --- what lesion placement asks of its parameters (``cls`` is a lesion type;
    # TabulatedLesions answers it)
    def known(self, cls: str) -> str:
        return known_type(cls)

    def null(self) -> "MriParams":
        """The same parameters with every lesion type given the average of all types: one
        look (geometric mean T2w, mean ADC, no pattern), count, diameter and demography."""
        n = len(LESION_TYPES)

        def mean(values) -> float:
            return float(sum(values) / n)

        looks = [self.looks[t] for t in LESION_TYPES]
        look = Look(math.exp(mean(math.log(k.t2) for k in looks)), mean(k.adc for k in looks))
        demo = [self.demography[t] for t in LESION_TYPES]
        age = mean(d.age_mean for d in demo)
        pooled_sd = math.sqrt(mean(d.age_sd**2 + (d.age_mean - age) ** 2 for d in demo))
        people = Demography(age, pooled_sd, mean(d.male for d in demo))
        count = mean(self.lesion_counts[t] for t in LESION_TYPES)
        diameter = mean(self.diameters[t] for t in LESION_TYPES)
        return replace(
            self,
            lesion_counts=dict.fromkeys(LESION_TYPES, count),
            diameters=dict.fromkeys(LESION_TYPES, diameter),
            looks=dict.fromkeys(LESION_TYPES, look),
            demography=dict.fromkeys(LESION_TYPES, people),
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

    def validate(self) -> "MriParams":
        """Raise :class:`UsageError` naming the parameter, the rule and the bad value."""
        _validate_scalars(self)
        for name in ("lesion_counts", "diameters", "looks", "demography"):
            if set(getattr(self, name)) != set(LESION_TYPES):
                raise UsageError(
                    f"{name} must give a value for each of {', '.join(LESION_TYPES)}",
                    fix="give a mapping with every lesion type (or leave the knob out)",
                )
        for kind in LESION_TYPES:
            _validate_type(self, kind)
        return self


#: Knobs that must be zero or positive (the rest are checked on their own).
_NON_NEGATIVE = (
    "liver_adc_sd",
    "liver_t2_sd",
    "patient_sd",
    "lesion_hu_sd",
    "lesion_adc_sd",
    "liver_texture_sd",
    "lesion_texture_sd",
    "adc_texture_sd",
    "diameter_cv",
    "bias_sd",
    "blur_mm",
    "dwi_blur_mm",
    "motion_mm",
    "rotation_deg",
    "table_offset_mm",
)
_POSITIVE = ("liver_adc", "t2_snr", "dwi_snr", "bias_mm", "scale_min", "diameter_min")
#: The knobs of :class:`MriParams`, as the cohort function takes them as keywords.
MRI_KNOBS = tuple(f.name for f in fields(MriParams))


def _validate_scalars(params: MriParams) -> None:
    def need(name: str, ok: bool, rule: str) -> None:
        if not ok:
            raise UsageError(
                f"{name} must be {rule}, got {getattr(params, name)!r}",
                fix="see the knobs of the MR world in docs/synth.md",
            )

    scalars = [f.name for f in fields(params) if not isinstance(getattr(params, f.name), Mapping)]
    for name in scalars:
        need(name, _finite(getattr(params, name)), "a finite number")
    for name in _NON_NEGATIVE:
        need(name, getattr(params, name) >= 0, "zero or positive")
    for name in _POSITIVE:
        need(name, getattr(params, name) > 0, "positive")
    need("scale_max", params.scale_max >= params.scale_min, "at least scale_min")
    need("scale_max", params.scale_max <= 4000, "at most 4000 (stored values fit int16)")
    need(
        "max_lesions",
        int(params.max_lesions) == params.max_lesions and params.max_lesions >= 1,
        "a whole number >= 1",
    )
    need("diameter_max", params.diameter_max >= params.diameter_min, "at least diameter_min")
    need("irregularity", 0 <= params.irregularity <= 0.4, "between 0 and 0.4")
    need("liver_adc", params.liver_adc <= 3e-3, "at most 3e-3 mm2/s")


def _validate_type(params: MriParams, kind: str) -> None:
    count, diameter = params.lesion_counts[kind], params.diameters[kind]
    fix = "see the lesion types' knobs in docs/synth.md"
    if not (_finite(count) and 1.0 <= count <= params.max_lesions):
        raise UsageError(
            f"lesion_counts of {kind} must be between 1 and max_lesions "
            f"({params.max_lesions}), got {count!r}",
            fix="raise max_lesions (--max-lesions) for larger counts",
        )
    if not (_finite(diameter) and params.diameter_min <= diameter <= params.diameter_max):
        raise UsageError(
            f"diameters of {kind} must be between diameter_min ({params.diameter_min}) and "
            f"diameter_max ({params.diameter_max}) mm, got {diameter!r}",
            fix=fix,
        )
    look = params.looks[kind]
    values = [look.t2, look.adc, look.probability, look.boundary, look.pattern_t2]
    ok = (
        all(_finite(v) for v in values + [look.pattern_adc])
        and look.t2 > 0
        and 0 < look.adc <= 5e-3
        and 0 <= look.probability <= 1
        and look.pattern in PATTERN_REGION
        and (look.pattern == "uniform" or (0 < look.boundary < 1 and look.pattern_t2 > 0))
        and 0 <= look.pattern_adc <= 5e-3
    )
    if not ok:
        raise UsageError(
            f"looks of {kind} must have t2 > 0, adc in (0, 5e-3] mm2/s, a probability in "
            f"[0, 1] and a pattern of {', '.join(PATTERN_REGION)} (with a boundary in (0, 1)), "
            f"got {look}",
            fix=fix,
        )
    demo = params.demography[kind]
    if not (
        all(_finite(v) for v in (demo.age_mean, demo.age_sd, demo.male))
        and 18 <= demo.age_mean <= 90
        and demo.age_sd >= 0
        and 0 <= demo.male <= 1
    ):
        raise UsageError(
            f"demography of {kind} must have an age_mean in 18..90, an age_sd >= 0 and a "
            f"male fraction in [0, 1], got {demo}",
            fix=fix,
        )


def known_type(kind: str) -> str:
    if kind not in LESION_TYPES:
        raise UsageError(
            f"lesion type {kind!r} is not one of {', '.join(LESION_TYPES)}",
            fix="name a lesion type of the MR world (docs/synth.md)",
        )
    return kind


def make_mri_params(null: bool = False, **knobs: Any) -> MriParams:
    """:class:`MriParams` from keyword knobs; a mapping knob may give some lesion types only,
    the others keep their defaults; None keeps a default."""
    unknown = sorted(set(knobs) - set(MRI_KNOBS))
    if unknown:
        raise UsageError(
            f"unknown MR synth parameter(s) {', '.join(unknown)}",
            fix=f"use some of: {', '.join(MRI_KNOBS)}",
        )
    defaults = MriParams()
    resolved: dict[str, Any] = {}
    for name, value in knobs.items():
        if value is None:
            continue
        base = getattr(defaults, name)
        if isinstance(base, Mapping):
            if not isinstance(value, Mapping):
                raise UsageError(
                    f"{name} must be a mapping of lesion type to value, got {value!r}",
                    fix=f"for example {{'{LESION_TYPES[0]}': ...}}",
                )
            for key in value:
                known_type(key)
            value = {**base, **value}
        resolved[name] = value
    params = replace(defaults, **resolved).validate()
    return params.null().validate() if null else params


# ============================================================================ participants
def mr_class_sequence(counts: Mapping[str, int], total: int | None = None) -> list[str]:
    """The class of each participant: ``counts`` (or a ratio, with ``total``) interleaved
    (:func:`metcli.synth.classes.interleave`; ties in the order of :data:`MR_CLASSES`)."""
    return interleave(counts, MR_CLASSES, total)


def lesion_types(classes: list[str]) -> list[str]:
    """Each participant's lesion type: the j-th benign participant gets
    ``BENIGN_TYPES[j % 3]``; the others their class."""
    out, benign = [], 0
    for cls in classes:
        if cls == "benign":
            out.append(BENIGN_TYPES[benign % len(BENIGN_TYPES)])
            benign += 1
        else:
            out.append(cls)
    return out
