"""The anatomy of a synthetic patient in physical space, to be sampled on any grid.

The 2023 phantom (:mod:`metcli.synth.phantom`) is drawn on its one grid. A four-phase
participant (:mod:`metcli.synth.multiphase`) is scanned four times, on four grids and
moved between scans, so its anatomy is a function of the position in the reference
(portal) frame: the body's cross-section is analytic (:func:`~metcli.synth.anatomy.body_tissue`),
the liver an ellipsoid with a bumpy surface, and the random parts (the visceral fat, the
liver's bumps, the textures of liver and lesions) are smooth random fields
(:class:`Field`) sampled by linear interpolation. The same model as the 2023 phantom,
with the same sizes (see ``docs/synth.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metcli.synth.anatomy import (
    CAVITY,
    LESION_TEXTURE_MM,
    LIVER_BUMP,
    LIVER_BUMP_MM,
    LIVER_CENTRE,
    LIVER_SEMI_AXES,
    LIVER_TEXTURE_MM,
    VISCERAL_FAT,
    VISCERAL_FAT_FRACTION_Z,
    VISCERAL_FAT_MM,
    Body,
    body_tissue,
    draw_body,
    smooth_noise,
)

#: The fields reach this far (mm) beyond the reference grid and the liver, for the moved
#: and shifted grids of the other phases.
MARGIN_MM = 25.0


@dataclass
class Field:
    """A smooth random field of unit SD on a regular grid (identity direction)."""

    values: np.ndarray  # float32, [z, y, x]
    origin: np.ndarray  # x, y, z (mm) of values[0, 0, 0]
    spacing: np.ndarray  # x, y, z (mm)

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Values at physical points (N x 3, mm), linearly interpolated (nearest outside)."""
        from scipy import ndimage

        idx = (np.asarray(points, float) - self.origin) / self.spacing
        coords = np.stack([idx[:, 2], idx[:, 1], idx[:, 0]])
        return ndimage.map_coordinates(self.values, coords, order=1, mode="nearest").astype(
            np.float32
        )


def make_field(rng: np.random.Generator, lo, hi, spacing: float, sigma_mm: float) -> Field:
    """Smoothed white noise (Gaussian, SD ``sigma_mm``) covering the box [lo, hi] (mm)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    shape_xyz = np.ceil((hi - lo) / spacing).astype(int) + 1
    values = smooth_noise(rng, tuple(shape_xyz[::-1]), sigma_mm / spacing)
    return Field(values, lo, np.full(3, float(spacing)))


@dataclass
class World:
    """One patient's anatomy in the reference frame (mm)."""

    body: Body
    liver_centre: np.ndarray
    liver_semi: np.ndarray
    fat: Field  #: visceral fat where above VISCERAL_FAT_FRACTION_Z
    bumps: Field  #: the liver surface's bumps
    liver_texture: Field
    lesion_texture: Field

    def tissue(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tissue codes, inside the liver's surface) at physical points (N x 3, mm).

        The liver is not marked in the codes: it is the cavity (or visceral fat) inside
        its surface; its largest connected part on a grid is the liver of that grid.
        """
        tissue = body_tissue(self.body, points[:, 0], points[:, 1])
        cavity = tissue == CAVITY
        if cavity.any():
            fat = self.fat.sample(points[cavity]) > VISCERAL_FAT_FRACTION_Z
            codes = tissue[cavity]
            codes[fat] = VISCERAL_FAT
            tissue[cavity] = codes
        soft = (tissue == CAVITY) | (tissue == VISCERAL_FAT)
        rel = (points - self.liver_centre) / self.liver_semi
        near = soft & (np.abs(rel) < 1.0 + 4 * LIVER_BUMP).all(axis=1)
        liver = np.zeros(len(points), bool)
        if near.any():
            rho = np.sqrt((rel[near] ** 2).sum(axis=1))
            liver[near] = (rho + LIVER_BUMP * self.bumps.sample(points[near])) < 1.0
        return tissue, liver


def draw_world(
    r_anatomy: np.random.Generator, r_texture: np.random.Generator, reference, scale: float
) -> World:
    """A patient's anatomy for the reference grid ``reference`` (a
    :class:`~metcli.synth.phases.PhaseGrid`) and ``scale``: the body, the liver, and
    random fields reaching :data:`MARGIN_MM` beyond the grid (the visceral fat) or the
    liver (the bumps and textures)."""
    body = draw_body(r_anatomy, scale)
    spacing = np.asarray(reference.spacing, float)
    lo = np.asarray(reference.origin, float) - MARGIN_MM
    hi = lo + (np.asarray(reference.shape) - 1) * spacing + 2 * MARGIN_MM
    fine = float(spacing.min())
    fat = make_field(
        r_anatomy, lo, hi, max(fine, VISCERAL_FAT_MM * scale / 2), VISCERAL_FAT_MM * scale
    )
    centre = np.array([c * scale + r_anatomy.normal(0.0, 4.0 * scale) for c in LIVER_CENTRE])
    semi = np.array([a * scale * r_anatomy.uniform(0.92, 1.08) for a in LIVER_SEMI_AXES])
    box_lo = centre - 1.25 * semi - MARGIN_MM
    box_hi = centre + 1.25 * semi + MARGIN_MM
    bumps = make_field(
        r_anatomy, box_lo, box_hi, max(fine, LIVER_BUMP_MM * scale / 2), LIVER_BUMP_MM * scale
    )
    liver_texture = make_field(
        r_texture, box_lo, box_hi, max(fine, LIVER_TEXTURE_MM / 2), LIVER_TEXTURE_MM
    )
    lesion_texture = make_field(
        r_texture, box_lo, box_hi, max(fine, LESION_TEXTURE_MM / 2), LESION_TEXTURE_MM
    )
    return World(body, centre, semi, fat, bumps, liver_texture, lesion_texture)
