"""One participant of the MR world (:mod:`metcli.synth.mri`): a T2w image and a diffusion
series, each on its own grid.

The anatomy is drawn once, in the frame of the T2w image (the reference: the truth's
grid), by :func:`~metcli.synth.world.draw_world`; lesions are placed on the T2w grid
(:func:`~metcli.synth.placement.place_lesions`), so the truth masks are exact there. Each
sequence is rendered on its own grid in physical space (:func:`~metcli.synth.multiphase.
render_tissue`): the DWI grid is thicker, coarser in-plane, its scan range shifted and the
patient moved a little between the two (:class:`~metcli.synth.phases.RigidMotion`).

Signal: T2w = scale x bias x blur(T2 map); DWI volume (b, direction) = scale x bias x
blur(S0 exp(-b ADC)), S0 = T2 map ** (TE_DWI / TE_T2W); each image then gets Rician noise
(the magnitude of the signal plus complex Gaussian noise), is rounded and kept in
[0, 32767] (int16). The bias field is one smooth multiplicative field of the patient; the
scale is the scanner's arbitrary unit, drawn per participant and sequence.

Randomness: independent streams for the anatomy, the grids and motion, the lesions, the
textures, the noise, the patient (liver, lesion patterns and ADC) and the scanner (bias
and scale), so a lesion knob leaves the anatomy, the motion and the noise alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from metcli.core.errors import UsageError
from metcli.synth.anatomy import TISSUE_NAMES
from metcli.synth.mri import (
    B_VALUES,
    CLASS_OF,
    DIRECTIONS,
    PATTERN_REGION,
    REFERENCE,
    TE_DWI,
    TE_T2W,
    TISSUE_ADC,
    TISSUE_T2,
    MriParams,
    known_type,
)
from metcli.synth.multiphase import FWHM_PER_SD, _lesion_voxels, _liver_box, render_tissue
from metcli.synth.phantom import Grid, _spawn
from metcli.synth.phases import PhaseGrid, RigidMotion
from metcli.synth.placement import Lesion, lesion_plan, place_lesions, shape_rho
from metcli.synth.world import MARGIN_MM, World, draw_world, make_field

#: Grid presets per sequence. ``small``: a half-size abdomen (tests, demos); ``paper``: an
#: adult abdomen at clinical resolution. DWI: thicker slices, coarser in-plane.
MR_SIZES: dict[str, dict[str, Grid]] = {
    "small": {
        "T2w": Grid(shape=(96, 96, 36), spacing=(2.0, 2.0, 3.0), anatomy_scale=0.5),
        "dwi": Grid(shape=(76, 76, 28), spacing=(2.5, 2.5, 4.0), anatomy_scale=0.5),
    },
    "paper": {
        "T2w": Grid(shape=(384, 384, 60), spacing=(1.0, 1.0, 4.0)),
        "dwi": Grid(shape=(128, 128, 40), spacing=(3.0, 3.0, 6.0)),
    },
}
#: Stored values are kept below this (int16, and uint16 in DICOM).
VALUE_MAX = 32767
#: Points rendered at once.
SLAB_POINTS = 2_000_000


def mr_sizes(size: str | Mapping[str, Grid]) -> dict[str, Grid]:
    """The grid of each sequence for a size preset or a mapping of sequence -> Grid."""
    if isinstance(size, str):
        if size not in MR_SIZES:
            raise UsageError(
                f"size {size!r} is not one of {', '.join(MR_SIZES)}",
                fix="use --size small or --size paper",
            )
        grids = MR_SIZES[size]
    else:
        grids = dict(size)
    if set(grids) != {"T2w", "dwi"} or not all(isinstance(g, Grid) for g in grids.values()):
        raise UsageError(
            "an MR size must give a Grid for each sequence: T2w, dwi",
            fix="give {'T2w': Grid(...), 'dwi': Grid(...)}",
        )
    if grids["T2w"].anatomy_scale != grids["dwi"].anatomy_scale:
        raise UsageError(
            "the sequences' grids must share one anatomy_scale", fix="give both the same scale"
        )
    for grid in grids.values():
        grid.validate()
    return {"T2w": grids["T2w"], "dwi": grids["dwi"]}


def volume_list() -> list[tuple[int, tuple[float, float, float]]]:
    """(b, direction) of each DWI volume, in the written order (b = 0 without direction)."""
    zero = (0.0, 0.0, 0.0)
    return [
        (b, zero) if b == 0 else (b, d)
        for b in B_VALUES
        for d in (DIRECTIONS[:1] if b == 0 else DIRECTIONS)
    ]


@dataclass
class SequenceImage:
    """One sequence of a participant, on ``grid``: stored values (int16; [volume, z, y, x]
    for the DWI), the truth as rendered on this grid, and the designed maps before blur,
    bias and noise (T2w signal relative to a standard liver, ADC in mm2/s)."""

    name: str
    grid: PhaseGrid
    motion: RigidMotion  #: reference (T2w) points -> this sequence's points
    values: np.ndarray
    dseg: np.ndarray
    t2: np.ndarray
    adc: np.ndarray
    scale: float

    def images(self):
        """(image, dseg) as SimpleITK images; the DWI image is 4D (one volume per b and
        direction, :func:`volume_list`)."""
        import SimpleITK as sitk

        if self.values.ndim == 4:
            image = sitk.JoinSeries([self.grid.image(v) for v in self.values])
        else:
            image = self.grid.image(self.values)
        return image, self.grid.image(self.dseg)


@dataclass
class LesionDesign:
    """What a lesion was designed to be (before texture, blur, bias and noise)."""

    pattern: str  #: the pattern it shows (``uniform`` when none)
    t2_factor: float  #: exp(its placed log offset): patient and lesion jitter
    adc_factor: float
    t2_relative: float = 0.0  #: mean over its T2w voxels, relative to the patient's liver
    adc: float = 0.0  #: mean over its T2w voxels (mm2/s)


@dataclass
class MriPhantom:
    """An MR participant: its sequences, lesions (placed on the T2w grid) and their design."""

    lesion_type: str
    sequences: dict[str, SequenceImage]
    lesions: list[Lesion]
    designs: list[LesionDesign]
    liver_t2: float
    liver_adc: float

    @property
    def cls(self) -> str:
        return CLASS_OF[self.lesion_type]

    @property
    def reference(self) -> SequenceImage:
        return self.sequences[REFERENCE]

    def truth_rows(self, participant_id: str) -> list[dict[str, Any]]:
        """The truth table's rows (HU columns n/a; the MR columns added)."""
        rows = []
        for lesion, design in zip(self.lesions, self.designs):
            row = lesion.row(participant_id, self.cls)
            row.update(lesion_hu=None, texture_sd_hu=None, patient_offset_hu=None)
            row.update(
                lesion_type=self.lesion_type,
                pattern=design.pattern,
                t2_relative=round(design.t2_relative, 4),
                adc_mm2s=round(design.adc, 7),
                liver_adc_mm2s=round(self.liver_adc, 7),
            )
            rows.append(row)
        return rows


def draw_mr_geometry(rng: np.random.Generator, sizes: Mapping[str, Grid], params: MriParams):
    """{sequence: (grid, motion)}: the T2w grid centred on the origin, not moved; the DWI
    grid's scan range shifted by up to ``table_offset_mm`` and the patient moved (SD
    ``motion_mm`` craniocaudally, a third in-plane; ``rotation_deg`` about each axis;
    cut at 2.5 SD)."""
    offset = round(float(rng.uniform(-1.0, 1.0)) * params.table_offset_mm, 2)
    sd = np.array([params.motion_mm / 3.0, params.motion_mm / 3.0, params.motion_mm])
    shift = np.round(np.clip(rng.standard_normal(3), -2.5, 2.5) * sd, 3)
    angles = np.radians(np.clip(rng.standard_normal(3), -2.5, 2.5) * params.rotation_deg)
    motion = RigidMotion(
        angles=tuple(float(a) for a in angles), translation=tuple(float(t) for t in shift)
    )
    return {
        "T2w": (PhaseGrid.of(sizes["T2w"]), RigidMotion()),
        "dwi": (PhaseGrid.of(sizes["dwi"], offset), motion),
    }


def motion_record(motion: RigidMotion) -> dict[str, Any]:
    """The DWI sidecar's ``TransformFromReference`` (the reference is the T2w image)."""
    record = motion.as_record()
    record["reference"] = REFERENCE
    record["maps"] = (
        f"reference ({REFERENCE}) physical points (mm) -> this image's physical points (mm)"
    )
    return record


def mri_phantom(
    rng, params: MriParams | None = None, lesion_type: str = "hcc", size="small"
) -> MriPhantom:
    """One MR participant whose lesions are of ``lesion_type`` (a numpy Generator,
    SeedSequence or int as ``rng``; ``size`` a preset of :data:`MR_SIZES` or a mapping)."""
    params = (params or MriParams()).validate()
    known_type(lesion_type)
    sizes = mr_sizes(size)
    rng = np.random.default_rng(rng)
    r_anatomy, r_geometry, r_lesions, r_texture, r_noise, r_patient, r_scanner = _spawn(rng, 7)
    geometry = draw_mr_geometry(r_geometry, sizes, params)
    ref_grid = geometry[REFERENCE][0]
    scale = ref_grid.anatomy_scale
    world = draw_world(r_anatomy, r_texture, ref_grid, scale)
    bias = _bias_field(r_scanner, ref_grid, params, scale)
    scales = {s: _log_uniform(r_scanner, params.scale_min, params.scale_max) for s in geometry}
    rendered = {REFERENCE: render_tissue(world, ref_grid, None)}
    box = _liver_box(rendered[REFERENCE][1])
    offset = float(r_lesions.normal(0.0, params.patient_sd))
    diameters = lesion_plan(r_lesions, params, lesion_type)
    placed = place_lesions(
        r_lesions,
        params,
        lesion_type,
        ref_grid,
        box,
        rendered[REFERENCE][1][box],
        offset,
        diameters,
    )
    lesions = [lesion for lesion, _ in placed]
    ref_masks = [
        (tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, local)), mask)
        for _lesion, (local, mask) in placed
    ]
    liver_t2 = math.exp(float(r_patient.normal(0.0, params.liver_t2_sd)))
    liver_adc = float(
        np.clip(r_patient.normal(params.liver_adc, params.liver_adc_sd), 0.6e-3, 2.0e-3)
    )
    look = params.looks[lesion_type]
    designs = [
        LesionDesign(
            look.pattern if r_patient.uniform() < look.probability else "uniform",
            math.exp(lesion.hu),
            math.exp(float(r_patient.normal(0.0, params.lesion_adc_sd))),
        )
        for lesion in lesions
    ]
    patient = _Patient(world, params, look, liver_t2, liver_adc, lesions, designs)
    sequences = {}
    for name, (grid, motion) in geometry.items():
        tissue = rendered.pop(name) if name in rendered else render_tissue(world, grid, motion)
        masks = ref_masks if name == REFERENCE else None
        t2, adc, dseg = patient.maps(grid, motion, tissue, masks)
        gain = _sample_on_grid(bias, grid, motion)
        values = _acquire(name, t2, adc, gain, grid, params, scales[name], r_noise)
        sequences[name] = SequenceImage(name, grid, motion, values, dseg, t2, adc, scales[name])
    for design, (sl, mask), lesion in zip(designs, ref_masks, lesions):
        points = ref_grid.points(np.argwhere(mask) + [s.start for s in sl])
        t2, adc = patient.lesion_values(lesion, design, points, texture=False)
        design.t2_relative = float(t2.mean()) / liver_t2
        design.adc = float(adc.mean())
    return MriPhantom(lesion_type, sequences, lesions, designs, liver_t2, liver_adc)


@dataclass
class _Patient:
    """The patient's tissues, liver and lesions as T2w signal and ADC at any point."""

    world: World
    params: MriParams
    look: Any
    liver_t2: float
    liver_adc: float
    lesions: list[Lesion]
    designs: list[LesionDesign]

    def lesion_values(self, lesion: Lesion, design: LesionDesign, points, *, texture=True):
        """(T2w signal, ADC) of a lesion at reference points (N x 3 mm)."""
        look, params = self.look, self.params
        t2 = np.full(len(points), look.t2, np.float64)
        adc = np.full(len(points), look.adc, np.float64)
        if design.pattern != "uniform":
            rho = shape_rho(
                lesion.shape, points - np.asarray(lesion.centre_mm), params.irregularity
            )
            region = PATTERN_REGION[design.pattern]
            inside = rho < look.boundary if region == "centre" else rho > look.boundary
            t2[inside], adc[inside] = look.pattern_t2, look.pattern_adc
        t2 *= self.liver_t2 * design.t2_factor
        adc *= design.adc_factor
        if texture:
            field = self.world.lesion_texture.sample(points).astype(np.float64)
            t2 *= np.exp(params.lesion_texture_sd * field)
            adc *= np.exp(params.adc_texture_sd * field)
        return t2, adc

    def maps(self, grid: PhaseGrid, motion: RigidMotion, tissue, ref_masks):
        """(T2w signal, ADC, dseg) on ``grid`` before blur, bias and noise."""
        codes, liver = tissue
        t2_lut = np.zeros(len(TISSUE_NAMES), np.float64)
        adc_lut = np.zeros(len(TISSUE_NAMES), np.float64)
        for code in TISSUE_T2:
            t2_lut[code], adc_lut[code] = TISSUE_T2[code], TISSUE_ADC[code]
        t2, adc = t2_lut[codes], adc_lut[codes]
        dseg = liver.astype(np.uint8)
        points = _to_reference(motion, grid.points(np.argwhere(liver)))
        field = self.world.liver_texture.sample(points).astype(np.float64)
        t2[liver] = self.liver_t2 * np.exp(self.params.liver_texture_sd * field)
        adc[liver] = self.liver_adc * np.exp(self.params.adc_texture_sd * field)
        for k, (lesion, design) in enumerate(zip(self.lesions, self.designs)):
            if ref_masks is not None:
                sl, mask = ref_masks[k]
                points = grid.points(np.argwhere(mask) + [s.start for s in sl])
            else:
                sl, mask, points = _lesion_voxels(lesion, grid, motion, self.params.irregularity)
            if not mask.any():
                continue
            t2[sl][mask], adc[sl][mask] = self.lesion_values(lesion, design, points)
            dseg[sl][mask] = 2
        return t2.astype(np.float32), adc.astype(np.float32), dseg


def _to_reference(motion: RigidMotion, points: np.ndarray) -> np.ndarray:
    """A grid's points taken back to the reference frame (as they are for the reference)."""
    return points if motion == RigidMotion() else motion.inverse(points)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _bias_field(rng: np.random.Generator, grid: PhaseGrid, params: MriParams, scale: float):
    """A smooth random field (unit SD) over the reference grid and a margin."""
    spacing = np.asarray(grid.spacing, float)
    lo = np.asarray(grid.origin, float) - 2 * MARGIN_MM
    hi = lo + (np.asarray(grid.shape) - 1) * spacing + 4 * MARGIN_MM
    sigma = params.bias_mm * scale
    return make_field(rng, lo, hi, max(float(spacing.min()), sigma / 4.0), sigma)


def _sample_on_grid(bias, grid: PhaseGrid, motion: RigidMotion) -> np.ndarray:
    """The bias field at each voxel of ``grid`` (the patient's frame: the coil moves with it)."""
    nz, ny, nx = grid.array_shape
    x, y, z = (grid.axis_mm(a).astype(np.float64) for a in range(3))
    out = np.empty(grid.array_shape, np.float32)
    step = max(1, SLAB_POINTS // (nx * ny))
    for z0 in range(0, nz, step):
        zz, yy, xx = np.meshgrid(z[z0 : z0 + step], y, x, indexing="ij")
        points = _to_reference(motion, np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1))
        out[z0 : z0 + step] = bias.sample(points).reshape(zz.shape)
    return out


def _acquire(name, t2, adc, field, grid: PhaseGrid, params: MriParams, scale: float, r_noise):
    """Stored values of a sequence: blurred signal x bias x scale, Rician noise, int16."""
    from scipy import ndimage

    blur = params.blur_mm if name == REFERENCE else params.dwi_blur_mm
    sz, sy, sx = grid.spacing_zyx
    sigma = (math.hypot(blur, sz / FWHM_PER_SD) / sz, blur / sy, blur / sx)
    gain = (scale * np.exp(params.bias_sd * field)).astype(np.float32)
    if name == REFERENCE:
        signals = [t2]
        noise_sd = scale / params.t2_snr
    else:
        s0 = np.power(t2, TE_DWI / TE_T2W)
        signals = [s0 * np.exp(-b * adc) for b, _direction in volume_list()]
        noise_sd = scale / params.dwi_snr
    out = []
    for signal in signals:
        clean = ndimage.gaussian_filter(
            signal.astype(np.float32), sigma, mode="nearest", truncate=3.0
        )
        clean *= gain
        real = clean + np.float32(noise_sd) * r_noise.standard_normal(clean.shape, dtype=np.float32)
        imag = np.float32(noise_sd) * r_noise.standard_normal(clean.shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imag * imag)
        out.append(np.clip(np.rint(magnitude), 0, VALUE_MAX).astype(np.int16))
    return out[0] if name == REFERENCE else np.stack(out)


__all__ = ["MR_SIZES", "MriPhantom", "SequenceImage", "mr_sizes", "mri_phantom", "volume_list"]
