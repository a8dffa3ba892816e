"""The synthetic CT phantom of ``metcli synth``: grids, parameters, anatomy, lesions.

The phantom model (see ``docs/synth.md``): air outside an elliptical body, a
subcutaneous fat layer, an abdominal-wall muscle layer, an abdominal cavity of
soft tissue mottled with visceral fat, a vertebra with its arch and the aorta
posteriorly, and a smooth liver in the right upper abdomen with a textured
parenchyma. Hypo-attenuating, slightly irregular ellipsoidal lesions lie inside
the liver, at least :data:`~metcli.synth.placement.MIN_GAP_VOXELS` voxels apart,
so that connected components give exactly the placed lesions
(:mod:`metcli.synth.placement`). The image is blurred by a small
point-spread function and Gaussian noise is added.

Classes differ, by default in the direction of the 2023 study, in the number of
lesions (pancreatic more), their size (pancreatic smaller) and their interior
(colorectal brighter and more heterogeneous); a per-patient random effect is
shared by all lesions of a patient. :meth:`SynthParams.null` removes every class
difference: class labels are then independent of the images.

Randomness: participant ``i`` of seed ``s`` draws from
``SeedSequence(s, spawn_key=(i,))``, split into independent streams for the
anatomy, the lesions, the textures and the noise, so the same seed gives the same
files, a larger cohort starts with the same participants, and changing a lesion
knob leaves the anatomy and the noise as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from metcli.core.errors import UsageError
from metcli.synth.anatomy import (
    BODY_SEMI_AXES,
    CAVITY,
    LESION,
    LESION_TEXTURE_MM,
    LIVER,
    LIVER_TEXTURE_MM,
    TISSUE_HU,
    TISSUE_NAMES,
    VISCERAL_FAT,
    VISCERAL_FAT_FRACTION_Z,
    VISCERAL_FAT_MM,
    body_slice,
    liver_mask,
    smooth_noise,
)
from metcli.synth.placement import Lesion, lesion_plan, place_lesions

#: The two classes, in the order of ``primary`` values.
CLASSES = ("colorectal", "pancreatic")
#: Patients per class in the 2023 study (Tharmaseelan et al.): the default ratio.
STUDY_PATIENTS = {"colorectal": 47, "pancreatic": 31}
#: Contrast phase of the phantoms.
PHASE = "portal"
#: Lesions are at least this many voxels apart (Chebyshev distance >= gap + 1).
#: The HU range of the written images.
HU_MIN, HU_MAX = -1024, 3071


# ============================================================================ grids
@dataclass(frozen=True)
class Grid:
    """The voxel grid of the phantoms: identity direction, centred on the origin.

    Args:
        shape: voxels along x (patient right to left), y (anterior to posterior) and z
            (inferior to superior).
        spacing: mm per voxel along x, y, z.
        anatomy_scale: the body and its organs relative to an adult abdomen (1.0: a body
            330 mm wide and 240 mm deep, a liver of about 1.5 l). Lesion sizes are in mm
            and do not scale.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    anatomy_scale: float = 1.0

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """Shape of the numpy arrays, indexed [z, y, x]."""
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def origin(self) -> tuple[float, float, float]:
        """Position (mm) of the first voxel's centre, so the grid is centred on (0, 0, 0)."""
        return tuple(-(n - 1) / 2.0 * s for n, s in zip(self.shape, self.spacing))

    def axis_mm(self, axis: int) -> np.ndarray:
        """Voxel-centre positions (mm) along x (0), y (1) or z (2)."""
        return (self.origin[axis] + np.arange(self.shape[axis]) * self.spacing[axis]).astype(
            np.float32
        )

    def validate(self) -> None:
        if len(self.shape) != 3 or any(int(n) != n or n < 16 for n in self.shape):
            raise UsageError(f"grid shape must be three whole numbers >= 16, got {self.shape}")
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise UsageError(
                f"grid spacing must be three positive numbers (mm), got {self.spacing}"
            )
        if not self.anatomy_scale > 0:
            raise UsageError(f"anatomy_scale must be positive, got {self.anatomy_scale}")
        for axis, semi in enumerate(BODY_SEMI_AXES):
            half = (self.shape[axis] - 1) / 2.0 * self.spacing[axis] - 2 * self.spacing[axis]
            if semi * self.anatomy_scale * 1.05 > half:
                raise UsageError(
                    f"the body ({2 * semi * self.anatomy_scale * 1.05:.0f} mm along "
                    f"{'xy'[axis]}) does not fit the grid ({2 * half:.0f} mm)",
                    fix="give more voxels, a larger spacing or a smaller anatomy_scale",
                )

    def as_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "anatomy_scale": self.anatomy_scale,
        }


#: Size presets. ``small``: fast, for tests and demos (a half-size abdomen at 2x2x2.5 mm);
#: ``paper``: 512x512 slices at 0.78x0.78x1.5 mm, 140 slices around the liver.
SIZES = {
    "small": Grid(shape=(96, 96, 48), spacing=(2.0, 2.0, 2.5), anatomy_scale=0.5),
    "paper": Grid(shape=(512, 512, 140), spacing=(0.78125, 0.78125, 1.5), anatomy_scale=1.0),
}


def grid_for(size: str | Grid) -> Grid:
    """The :class:`Grid` of a size preset (``small``, ``paper``) or a grid itself."""
    if isinstance(size, Grid):
        return size
    if size not in SIZES:
        raise UsageError(f"size {size!r} is not one of {', '.join(SIZES)}")
    return SIZES[size]


# ============================================================================ parameters
@dataclass(frozen=True)
class SynthParams:
    """Everything that shapes a phantom except the random numbers (see docs/synth.md).

    Class differences (equal values, or ``texture_signal=0``, remove one; :meth:`null`
    removes all):
        lesions_colorectal, lesions_pancreatic: mean number of lesions per patient
            (1 + Poisson(mean - 1), so every patient has at least one).
        diameter_colorectal, diameter_pancreatic: mean lesion diameter (mm; log-normal
            with coefficient of variation ``diameter_cv``, cut to
            [diameter_min, diameter_max]).
        texture_signal: HU; colorectal lesions are texture_signal/2 brighter and their
            interior texture SD texture_signal/4 larger than average, pancreatic ones
            as much darker and smoother.

    Shared by both classes:
        patient_sd: SD (HU) of a per-patient offset added to all lesions of a patient.
        lesion_hu, lesion_hu_sd: mean lesion HU, and the SD of one lesion's mean around
            its patient's.
        lesion_texture_sd: SD (HU) of the lesions' smooth interior texture.
        diameter_cv, diameter_min, diameter_max, max_lesions, irregularity: lesion size
            spread and limits (mm), most lesions per patient, boundary irregularity
            (0: smooth ellipsoids).
        liver_hu, liver_hu_sd, liver_texture_sd: liver parenchyma mean, its SD between
            patients and the SD of its smooth texture (HU).
        noise_sd: SD of the image noise (HU); blur_mm: SD of the point-spread function.
    """

    grid: Grid = SIZES["small"]
    lesions_colorectal: float = 2.5
    lesions_pancreatic: float = 5.0
    diameter_colorectal: float = 16.0
    diameter_pancreatic: float = 10.0
    texture_signal: float = 6.0
    patient_sd: float = 6.0
    lesion_hu: float = 45.0
    lesion_hu_sd: float = 4.0
    lesion_texture_sd: float = 6.0
    diameter_cv: float = 0.35
    diameter_min: float = 6.0
    diameter_max: float = 25.0
    max_lesions: int = 15
    irregularity: float = 0.12
    liver_hu: float = 90.0
    liver_hu_sd: float = 5.0
    liver_texture_sd: float = 6.0
    noise_sd: float = 12.0
    blur_mm: float = 0.8

    def validate(self) -> "SynthParams":
        """Raise :class:`UsageError` naming the parameter, the rule and the bad value."""
        self.grid.validate()

        def need(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise UsageError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name in KNOBS:
            value = getattr(self, name)
            need(
                name,
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value),
                "a finite number",
            )
        for name in ("lesions_colorectal", "lesions_pancreatic"):
            need(
                name,
                1.0 <= getattr(self, name) <= self.max_lesions,
                f"between 1 and max_lesions ({self.max_lesions}) (the mean includes the one "
                "lesion every patient has)",
            )
        need(
            "max_lesions",
            int(self.max_lesions) == self.max_lesions and self.max_lesions >= 1,
            "a whole number >= 1",
        )
        need("diameter_min", self.diameter_min > 0, "positive (mm)")
        need("diameter_max", self.diameter_max >= self.diameter_min, "at least diameter_min (mm)")
        for name in ("diameter_colorectal", "diameter_pancreatic"):
            need(
                name,
                self.diameter_min <= getattr(self, name) <= self.diameter_max,
                f"between diameter_min ({self.diameter_min}) and diameter_max "
                f"({self.diameter_max}) mm",
            )
        for name in (
            "patient_sd",
            "lesion_hu_sd",
            "lesion_texture_sd",
            "diameter_cv",
            "liver_hu_sd",
            "liver_texture_sd",
            "noise_sd",
            "blur_mm",
        ):
            need(name, getattr(self, name) >= 0, "zero or positive")
        need("irregularity", 0 <= self.irregularity <= 0.4, "between 0 and 0.4")
        need(
            "texture_signal",
            abs(self.texture_signal) <= 4 * self.lesion_texture_sd,
            f"at most 4 x lesion_texture_sd ({4 * self.lesion_texture_sd:g} HU) in size, so "
            "that both classes keep a texture SD >= 0",
        )
        return self

    # --- class-dependent values
    def lesion_mean(self, cls: str) -> float:
        return self.lesions_colorectal if _sign(cls) > 0 else self.lesions_pancreatic

    def diameter_mean(self, cls: str) -> float:
        return self.diameter_colorectal if _sign(cls) > 0 else self.diameter_pancreatic

    def hu_shift(self, cls: str) -> float:
        return _sign(cls) * self.texture_signal / 2.0

    def texture_sd(self, cls: str) -> float:
        return self.lesion_texture_sd + _sign(cls) * self.texture_signal / 4.0

    def null(self) -> "SynthParams":
        """The same parameters without any class difference (the averages of both classes)."""
        count = (self.lesions_colorectal + self.lesions_pancreatic) / 2.0
        diameter = (self.diameter_colorectal + self.diameter_pancreatic) / 2.0
        return replace(
            self,
            lesions_colorectal=count,
            lesions_pancreatic=count,
            diameter_colorectal=diameter,
            diameter_pancreatic=diameter,
            texture_signal=0.0,
        )

    def knobs(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in KNOBS}


#: The parameters besides the grid, as :func:`synth_cohort` takes them as keywords.
KNOBS = tuple(f.name for f in fields(SynthParams) if f.name != "grid")


def _sign(cls: str) -> int:
    if cls == "colorectal":
        return 1
    if cls == "pancreatic":
        return -1
    raise UsageError(f"class {cls!r} is not one of {', '.join(CLASSES)}")


# ============================================================================ random helpers
def _spawn(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """``n`` independent child generators of ``rng`` (numpy >= 1.24)."""
    if hasattr(rng, "spawn"):
        return rng.spawn(n)
    seed_seq = getattr(rng.bit_generator, "seed_seq", None) or rng.bit_generator._seed_seq
    return [np.random.default_rng(s) for s in seed_seq.spawn(n)]


def participant_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of participant ``index`` (0-based): the same in every cohort size."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),))


# ============================================================================ the phantom
@dataclass
class Phantom:
    """A phantom as arrays indexed [z, y, x] on ``grid`` (identity direction)."""

    hu: np.ndarray  #: int16 Hounsfield units
    dseg: np.ndarray  #: uint8: 0 background, 1 liver, 2 lesion
    tissue: np.ndarray  #: uint8 tissue codes (AIR ... LESION), before blur and noise
    lesions: list[Lesion]
    grid: Grid
    liver_hu: float  #: this patient's liver mean before texture, blur and noise
    patient_offset_hu: float

    def images(self):
        """(CT, dseg) as SimpleITK images with the grid's spacing and origin."""
        import SimpleITK as sitk

        out = []
        for array in (self.hu, self.dseg):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(tuple(float(s) for s in self.grid.spacing))
            image.SetOrigin(tuple(float(o) for o in self.grid.origin))
            out.append(image)
        return tuple(out)


def make_phantom(rng, params: SynthParams | None = None, cls: str = "colorectal"):
    """One phantom of class ``cls``: ``(ct_image, dseg_image, lesions)``.

    ``rng`` is a numpy Generator, a SeedSequence or an int; ``params`` defaults to
    :class:`SynthParams` (the ``small`` grid). The images are SimpleITK images (int16
    HU, uint8 labels); ``lesions`` lists the placed :class:`Lesion` records.
    """
    phantom = phantom_arrays(rng, params, cls)
    ct, dseg = phantom.images()
    return ct, dseg, phantom.lesions


def phantom_arrays(rng, params: SynthParams | None = None, cls: str = "colorectal") -> Phantom:
    """One phantom as arrays (:class:`Phantom`), with its tissue map for tests."""
    from scipy import ndimage

    params = (params or SynthParams()).validate()
    _sign(cls)
    rng = np.random.default_rng(rng)
    r_anatomy, r_lesions, r_texture, r_noise = _spawn(rng, 4)
    grid = params.grid
    scale = grid.anatomy_scale
    spacing_zyx = np.asarray(grid.spacing_zyx)
    x, y, z = grid.axis_mm(0), grid.axis_mm(1), grid.axis_mm(2)

    tissue = np.broadcast_to(body_slice(r_anatomy, grid, x, y), grid.array_shape).copy()
    fat_field = smooth_noise(r_anatomy, grid.array_shape, VISCERAL_FAT_MM * scale / spacing_zyx)
    tissue[(tissue == CAVITY) & (fat_field > VISCERAL_FAT_FRACTION_Z)] = VISCERAL_FAT
    del fat_field
    box, liver = liver_mask(r_anatomy, grid, tissue, x, y, z)
    # Draws happen whatever the knobs, so that one knob leaves the other draws as they were.
    liver_hu = params.liver_hu + float(r_anatomy.normal(0.0, params.liver_hu_sd))
    patient_offset = float(r_lesions.normal(0.0, params.patient_sd))
    diameters = lesion_plan(r_lesions, params, cls)
    placed = place_lesions(r_lesions, params, cls, grid, box, liver, patient_offset, diameters)

    # Hounsfield units: tissue values, textured liver and lesions, blur, noise.
    lut = np.zeros(len(TISSUE_NAMES), np.float32)
    for code, value in TISSUE_HU.items():
        lut[code] = value
    hu = lut[tissue]
    box_shape = liver.shape
    liver_field = smooth_noise(r_texture, box_shape, LIVER_TEXTURE_MM / spacing_zyx)
    lesion_field = smooth_noise(r_texture, box_shape, LESION_TEXTURE_MM / spacing_zyx)
    hu_box, tissue_box = hu[box], tissue[box]
    hu_box[liver] = liver_hu + params.liver_texture_sd * liver_field[liver]
    tissue_box[liver] = LIVER
    dseg = np.zeros(grid.array_shape, np.uint8)
    dseg_box = dseg[box]
    dseg_box[liver] = 1
    for lesion, (local, mask) in placed:
        region = hu_box[local]
        region[mask] = lesion.hu + lesion.texture_sd * lesion_field[local][mask]
        tissue_box[local][mask] = LESION
        dseg_box[local][mask] = 2
    if params.blur_mm > 0:
        hu = ndimage.gaussian_filter(hu, params.blur_mm / spacing_zyx, mode="nearest", truncate=3.0)
    if params.noise_sd > 0:
        hu += np.float32(params.noise_sd) * r_noise.standard_normal(hu.shape, dtype=np.float32)
    hu = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    lesions = [lesion for lesion, _ in placed]
    return Phantom(
        hu=hu,
        dseg=dseg,
        tissue=tissue,
        lesions=lesions,
        grid=grid,
        liver_hu=float(liver_hu),
        patient_offset_hu=patient_offset,
    )
