"""One four-phase participant of the ``almss`` scenario (:mod:`metcli.synth.almss`).

The patient's anatomy is drawn once, in the frame of the portal (reference) phase
(:class:`~metcli.synth.world.World`); lesions are placed on the portal grid as in the
2023 phantom (:func:`~metcli.synth.placement.place_lesions`), so the truth masks are
exact there. Each phase is then rendered on its own grid (:mod:`metcli.synth.phases`):
every voxel centre is taken back through the phase's motion to the reference frame and
the anatomy is evaluated there (the lesions' shapes too), so the phases show the same
anatomy, moved and sampled anew, not a resampled copy. Attenuation follows the phase: the
liver's enhancement (scaled per patient), the aorta, muscle and bowel, and each lesion's
class pattern for its core and rim (:class:`~metcli.synth.almss.Enhancement`). Each phase
is blurred (a Gaussian point-spread function in-plane, the slice profile along z) and
gets its own noise.

Randomness: independent streams for the anatomy, the phases' grids and motions, the
lesions, the textures, the noise and the patient's enhancement, so a lesion knob leaves
the anatomy, the motion and the noise as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from metcli.synth.almss import (
    AORTA_HU,
    CAVITY_HU,
    MUSCLE_HU,
    PHASES,
    REFERENCE_PHASE,
    AlmssParams,
)
from metcli.synth.anatomy import AORTA, CAVITY, MUSCLE, TISSUE_HU, TISSUE_NAMES
from metcli.synth.phantom import HU_MAX, HU_MIN, Grid, _spawn
from metcli.synth.phases import PhaseGrid, RigidMotion, draw_geometry, phase_sizes
from metcli.synth.placement import Lesion, lesion_plan, place_lesions, shape_rho
from metcli.synth.world import World, draw_world

#: Points rendered at once (bounds the memory of the large grids).
SLAB_POINTS = 2_000_000
#: The slice profile's FWHM is the slice thickness: its SD is thickness / FWHM_PER_SD.
FWHM_PER_SD = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass
class PhaseImage:
    """One phase of a participant, arrays [z, y, x] on ``grid``."""

    phase: str
    grid: PhaseGrid
    motion: RigidMotion  #: reference points -> this phase's points
    hu: np.ndarray  #: int16 HU
    dseg: np.ndarray  #: uint8 0 background, 1 liver, 2 lesion, as rendered on this grid
    liver_hu: float  #: the patient's liver mean in this phase (before texture and noise)

    def images(self):
        """(CT, dseg) as SimpleITK images on the phase's grid."""
        return self.grid.image(self.hu), self.grid.image(self.dseg)


@dataclass
class MultiPhantom:
    """A four-phase participant: the phases, the lesions placed on the reference grid and
    each lesion's designed mean HU per phase (before texture, blur and noise)."""

    cls: str
    phases: dict[str, PhaseImage]
    lesions: list[Lesion]
    designed_hu: list[dict[str, float]]
    patient_offset_hu: float

    @property
    def reference(self) -> PhaseImage:
        return self.phases[REFERENCE_PHASE]

    def truth_rows(self, participant_id: str) -> list[dict[str, Any]]:
        """The truth table's rows (``lesion_hu`` is the reference phase's designed mean)."""
        rows = []
        for lesion, designed in zip(self.lesions, self.designed_hu):
            row = lesion.row(participant_id, self.cls)
            row["lesion_hu"] = round(designed[REFERENCE_PHASE], 3)
            for phase in PHASES:
                row[f"lesion_hu_{phase}"] = round(designed[phase], 3)
            rows.append(row)
        return rows


def almss_phantom(
    rng, params: AlmssParams | None = None, cls: str = "hcc", size: str | Mapping = "small"
) -> MultiPhantom:
    """One four-phase participant of class ``cls`` (a numpy Generator, SeedSequence or int
    as ``rng``; ``size`` a preset of :data:`~metcli.synth.phases.ALMSS_SIZES` or a
    mapping of phase -> :class:`~metcli.synth.phantom.Grid`)."""
    params = (params or AlmssParams()).validate()
    params.lesion_mean(cls)  # refuses an unknown class
    sizes = phase_sizes(size)
    rng = np.random.default_rng(rng)
    r_anatomy, r_geometry, r_lesions, r_texture, r_noise, r_patient = _spawn(rng, 6)
    geometry = draw_geometry(r_geometry, sizes, params)
    ref_grid, _identity = geometry[REFERENCE_PHASE]
    world = draw_world(r_anatomy, r_texture, ref_grid, ref_grid.anatomy_scale)
    rendered = {REFERENCE_PHASE: render_tissue(world, ref_grid, None)}
    box = _liver_box(rendered[REFERENCE_PHASE][1])
    patient_offset = float(r_lesions.normal(0.0, params.patient_sd))
    diameters = lesion_plan(r_lesions, params, cls)
    liver_box = rendered[REFERENCE_PHASE][1][box]
    placed = place_lesions(
        r_lesions, params, cls, ref_grid, box, liver_box, patient_offset, diameters
    )
    factor = float(np.clip(r_patient.normal(1.0, params.liver_enhancement_sd), 0.7, 1.3))
    liver_offset = float(r_patient.normal(0.0, params.liver_hu_sd))
    ref_masks = [
        (tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, local)), mask)
        for _lesion, (local, mask) in placed
    ]
    lesions = [lesion for lesion, _ in placed]
    enhancement = params.enhancement[cls]
    phases = {}
    for phase in PHASES:
        grid, motion = geometry[phase]
        if phase not in rendered:
            rendered[phase] = render_tissue(world, grid, motion)
        phases[phase] = _render_phase(
            world,
            params,
            cls,
            phase,
            grid,
            motion,
            rendered.pop(phase),
            params.liver_phase_hu(phase, factor, liver_offset),
            lesions,
            ref_masks if phase == REFERENCE_PHASE else None,
            r_noise,
        )
    designed = []
    for lesion, (sl, mask) in zip(lesions, ref_masks):
        points = ref_grid.points(np.argwhere(mask) + [s.start for s in sl])
        in_rim = _in_rim(lesion, points, params, enhancement.rim_fraction)
        designed.append(
            {
                p: phases[p].liver_hu + float(enhancement.contrast(p, in_rim).mean()) + lesion.hu
                for p in PHASES
            }
        )
    return MultiPhantom(cls, phases, lesions, designed, patient_offset)


def _liver_box(liver: np.ndarray) -> tuple[slice, slice, slice]:
    """The liver's bounding box on the reference grid, one voxel larger on each side."""
    from scipy import ndimage

    found = ndimage.find_objects(liver.astype(np.uint8))
    if not found or found[0] is None:
        from metcli.core.errors import UsageError

        raise UsageError("the liver does not lie on the reference grid", fix="use a larger grid")
    return tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(found[0], liver.shape)
    )


def render_tissue(
    world: World, grid: PhaseGrid, motion: RigidMotion | None
) -> tuple[np.ndarray, np.ndarray]:
    """(tissue codes, liver) on ``grid``: the anatomy at each voxel centre taken back to the
    reference frame through ``motion`` (None: the reference grid itself). The liver is the
    largest connected part of what lies inside its surface."""
    from scipy import ndimage

    nz, ny, nx = grid.array_shape
    x = grid.origin[0] + np.arange(nx) * grid.spacing[0]
    y = grid.origin[1] + np.arange(ny) * grid.spacing[1]
    z = grid.origin[2] + np.arange(nz) * grid.spacing[2]
    tissue = np.empty(grid.array_shape, np.uint8)
    liver = np.empty(grid.array_shape, bool)
    step = max(1, SLAB_POINTS // (nx * ny))
    for z0 in range(0, nz, step):
        zz, yy, xx = np.meshgrid(z[z0 : z0 + step], y, x, indexing="ij")
        points = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
        if motion is not None:
            points = motion.inverse(points)
        codes, inside = world.tissue(points)
        tissue[z0 : z0 + step] = codes.reshape(zz.shape)
        liver[z0 : z0 + step] = inside.reshape(zz.shape)
    labels, count = ndimage.label(liver)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        liver = labels == int(np.argmax(sizes))
    return tissue, liver


def _in_rim(lesion: Lesion, points: np.ndarray, params: AlmssParams, rim_fraction: float):
    rho = shape_rho(lesion.shape, points - np.asarray(lesion.centre_mm), params.irregularity)
    return rho > 1.0 - rim_fraction


def _lesion_voxels(lesion: Lesion, grid: PhaseGrid, motion: RigidMotion, irregularity: float):
    """(slices, mask, reference points of the mask's voxels) of a lesion on a moved grid."""
    centre = motion.apply(np.asarray([lesion.centre_mm]))[0]
    half = lesion.shape.bound + max(grid.spacing)
    lo = np.floor(grid.index(np.asarray([centre - half]))[0]).astype(int)
    hi = np.ceil(grid.index(np.asarray([centre + half]))[0]).astype(int) + 1
    sl = tuple(slice(max(a, 0), max(min(b, n), 0)) for a, b, n in zip(lo, hi, grid.array_shape))
    if any(s.stop <= s.start for s in sl):
        return sl, np.zeros([0, 0, 0], bool), np.zeros((0, 3))
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1)
    points = motion.inverse(grid.points(idx.reshape(-1, 3)))
    rho = shape_rho(lesion.shape, points - np.asarray(lesion.centre_mm), irregularity)
    mask = (rho <= 1.0).reshape(idx.shape[:3])
    return sl, mask, points[mask.ravel()]


def phase_lut(phase: str) -> np.ndarray:
    """HU of each tissue code in ``phase`` (the liver and lesions are set apart)."""
    lut = np.zeros(len(TISSUE_NAMES), np.float32)
    for code, value in TISSUE_HU.items():
        lut[code] = value
    lut[AORTA], lut[MUSCLE], lut[CAVITY] = AORTA_HU[phase], MUSCLE_HU[phase], CAVITY_HU[phase]
    return lut


def _render_phase(
    world: World,
    params: AlmssParams,
    cls: str,
    phase: str,
    grid: PhaseGrid,
    motion: RigidMotion,
    rendered: tuple[np.ndarray, np.ndarray],
    liver_hu: float,
    lesions: list[Lesion],
    ref_masks: list | None,
    r_noise: np.random.Generator,
) -> PhaseImage:
    """HU and dseg of one phase: tissues, liver, lesions, blur, noise."""
    from scipy import ndimage

    tissue, liver = rendered
    hu = phase_lut(phase)[tissue]
    dseg = liver.astype(np.uint8)
    liver_points = motion.inverse(grid.points(np.argwhere(liver)))
    hu[liver] = liver_hu + params.liver_texture_sd * world.liver_texture.sample(liver_points)
    enhancement = params.enhancement[cls]
    for k, lesion in enumerate(lesions):
        if ref_masks is not None:
            sl, mask = ref_masks[k]
            points = grid.points(np.argwhere(mask) + [s.start for s in sl])
        else:
            sl, mask, points = _lesion_voxels(lesion, grid, motion, params.irregularity)
        if not mask.any():
            continue
        in_rim = _in_rim(lesion, points, params, enhancement.rim_fraction)
        values = liver_hu + enhancement.contrast(phase, in_rim) + lesion.hu
        values += lesion.texture_sd * world.lesion_texture.sample(points)
        hu[sl][mask] = values
        dseg[sl][mask] = 2
    if params.blur_mm > 0:
        sz, sy, sx = grid.spacing_zyx
        profile = math.hypot(params.blur_mm, sz / FWHM_PER_SD)
        sigma = (profile / sz, params.blur_mm / sy, params.blur_mm / sx)
        hu = ndimage.gaussian_filter(hu, sigma, mode="nearest", truncate=3.0)
    noise = r_noise.standard_normal(hu.shape, dtype=np.float32)
    if params.noise_sd > 0:
        hu += np.float32(params.noise_sd) * noise
    hu = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return PhaseImage(phase, grid, motion, hu, dseg, float(liver_hu))


__all__ = ["Grid", "MultiPhantom", "PhaseImage", "almss_phantom", "phase_lut", "render_tissue"]
