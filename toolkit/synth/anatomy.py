"""The anatomy of the synthetic CT phantom (:mod:`metcli.synth.phantom`): tissue codes and
their Hounsfield units, the body's axial cross-section (fat, muscle, cavity, spine, aorta),
the liver, and the smooth random fields that texture them.

Sizes are in mm for an adult abdomen, scaled by the grid's ``anatomy_scale``; ``grid``
arguments are a :class:`~metcli.synth.phantom.Grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Tissue codes of the tissue map and their Hounsfield units.
(AIR, FAT, MUSCLE, CAVITY, VISCERAL_FAT, CORTICAL_BONE, MARROW, CANAL, AORTA, LIVER, LESION) = (
    range(11)
)
TISSUE_NAMES = (
    "air",
    "fat",
    "muscle",
    "cavity",
    "visceral_fat",
    "cortical_bone",
    "marrow",
    "canal",
    "aorta",
    "liver",
    "lesion",
)
TISSUE_HU = {
    AIR: -1000.0,
    FAT: -100.0,
    MUSCLE: 50.0,
    CAVITY: 35.0,
    VISCERAL_FAT: -90.0,
    CORTICAL_BONE: 750.0,
    MARROW: 400.0,
    CANAL: 15.0,
    AORTA: 160.0,
}

# Adult anatomy in mm (x: patient right -> left, y: anterior -> posterior), scaled by
# Grid.anatomy_scale.
BODY_SEMI_AXES = (165.0, 120.0)
FAT_MM, MUSCLE_MM = 18.0, 10.0
VERTEBRA_Y, VERTEBRA_R, CORTEX_MM = 40.0, 18.0, 3.0
CANAL_R, ARCH_MM = 8.0, 5.0
AORTA_XY, AORTA_R = (16.0, 8.0), 11.0
LIVER_CENTRE = (-70.0, -15.0, 0.0)
LIVER_SEMI_AXES = (72.0, 68.0, 75.0)
LIVER_BUMP, LIVER_BUMP_MM = 0.06, 12.0
VISCERAL_FAT_FRACTION_Z = 0.6745  # a quarter of the cavity: the 75th centile of N(0, 1)
VISCERAL_FAT_MM = 5.0
LIVER_TEXTURE_MM, LESION_TEXTURE_MM = 3.0, 1.5


# ============================================================================ random fields
def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox) -> np.ndarray:
    """Gaussian-filtered white noise of unit SD (float32); wide kernels on a coarser grid."""
    from scipy import ndimage

    shape = tuple(int(n) for n in shape)
    sigma = np.broadcast_to(np.asarray(sigma_vox, dtype=float), (len(shape),))
    factor = np.maximum(1, np.floor(sigma / 2.0)).astype(int)
    coarse = tuple(-(-n // f) + 1 for n, f in zip(shape, factor))
    noise = rng.standard_normal(coarse, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma / factor, mode="nearest", truncate=3.0)
    if np.any(factor > 1):
        noise = ndimage.zoom(noise, factor, order=1, mode="nearest")
    noise = noise[tuple(slice(0, n) for n in shape)]
    sd = float(noise.std())
    return ((noise - noise.mean()) / sd if sd > 0 else noise).astype(np.float32)


# ============================================================================ anatomy
@dataclass(frozen=True)
class Body:
    """The drawn sizes (mm) of one body's axial cross-section (see :func:`draw_body`)."""

    bx: float  #: semi-axis of the body along x
    by: float  #: semi-axis along y
    fat: float  #: subcutaneous fat layer
    muscle: float  #: abdominal-wall muscle layer
    vy: float  #: y of the vertebral body's centre
    vr: float  #: vertebral body radius
    cortex: float
    canal_r: float
    canal_dy: float  #: the canal's centre lies this far behind the vertebral body's edge
    arch_r: float  #: outer radius of the vertebral arch
    aorta_xy: tuple[float, float]
    aorta_r: float


def draw_body(rng: np.random.Generator, scale: float) -> Body:
    """One body's cross-section sizes for an anatomy scaled by ``scale``."""
    s = scale
    bx = BODY_SEMI_AXES[0] * s * rng.uniform(0.93, 1.05)
    by = BODY_SEMI_AXES[1] * s * rng.uniform(0.93, 1.05)
    fat = FAT_MM * s * rng.uniform(0.6, 1.4)
    muscle = MUSCLE_MM * s * rng.uniform(0.8, 1.2)
    vy = VERTEBRA_Y * s + rng.normal(0.0, 2.0 * s)
    return Body(
        bx=bx,
        by=by,
        fat=fat,
        muscle=muscle,
        vy=vy,
        vr=VERTEBRA_R * s,
        cortex=CORTEX_MM * s,
        canal_r=CANAL_R * s,
        canal_dy=0.8 * CANAL_R * s,
        arch_r=(CANAL_R + ARCH_MM) * s,
        aorta_xy=(AORTA_XY[0] * s, AORTA_XY[1] * s),
        aorta_r=AORTA_R * s,
    )


def body_tissue(body: Body, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Tissue codes at the points (X, Y) (mm; arrays that broadcast to the output's shape)."""

    def ellipse(ax, ay):
        return (X / ax) ** 2 + (Y / ay) ** 2 <= 1.0

    out = np.full(np.broadcast_shapes(np.shape(X), np.shape(Y)), AIR, np.uint8)
    bx, by, fat, muscle = body.bx, body.by, body.fat, body.muscle
    out[ellipse(bx, by)] = FAT
    out[ellipse(bx - fat, by - fat)] = MUSCLE
    out[ellipse(bx - fat - muscle, by - fat - muscle)] = CAVITY
    vy, vr = body.vy, body.vr
    d_vertebra = np.hypot(X, Y - vy)
    out[d_vertebra <= vr] = MARROW
    out[(d_vertebra <= vr) & (d_vertebra > vr - body.cortex)] = CORTICAL_BONE
    cy = vy + vr + body.canal_dy
    d_canal = np.hypot(X, Y - cy)
    out[(d_canal > body.canal_r) & (d_canal <= body.arch_r) & (d_vertebra > vr)] = CORTICAL_BONE
    out[d_canal <= body.canal_r] = CANAL
    out[np.hypot(X - body.aorta_xy[0], Y - body.aorta_xy[1]) <= body.aorta_r] = AORTA
    return out


def body_slice(rng: np.random.Generator, grid, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The axial tissue map (the same on every slice): body layers, spine, aorta."""
    return body_tissue(draw_body(rng, grid.anatomy_scale), x[None, :], y[:, None])


def _box_slices(grid, centre, half) -> tuple[slice, slice, slice]:
    """[z, y, x] slices of the voxels within ``half`` mm of ``centre`` (x, y, z), clipped."""
    out = []
    for axis in (2, 1, 0):
        lo = math.floor((centre[axis] - half[axis] - grid.origin[axis]) / grid.spacing[axis])
        hi = math.ceil((centre[axis] + half[axis] - grid.origin[axis]) / grid.spacing[axis]) + 1
        out.append(slice(max(lo, 0), min(hi, grid.shape[axis])))
    return tuple(out)


def liver_mask(rng, grid, tissue: np.ndarray, x, y, z):
    """(bounding box slices, liver mask in the box): a bumpy ellipsoid inside the cavity."""
    from scipy import ndimage

    s = grid.anatomy_scale
    centre = [c * s + rng.normal(0.0, 4.0 * s) for c in LIVER_CENTRE]
    semi = [a * s * rng.uniform(0.92, 1.08) for a in LIVER_SEMI_AXES]
    box = _box_slices(grid, centre, [1.25 * a for a in semi])
    zz = (z[box[0]] - centre[2]) / semi[2]
    yy = (y[box[1]] - centre[1]) / semi[1]
    xx = (x[box[2]] - centre[0]) / semi[0]
    rho = np.sqrt(zz[:, None, None] ** 2 + yy[None, :, None] ** 2 + xx[None, None, :] ** 2)
    bumps = smooth_noise(rng, rho.shape, LIVER_BUMP_MM * s / np.asarray(grid.spacing_zyx))
    liver = (rho + LIVER_BUMP * bumps) < 1.0
    liver &= np.isin(tissue[box], (CAVITY, VISCERAL_FAT))
    labels, count = ndimage.label(liver)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        liver = labels == int(np.argmax(sizes))
    return box, liver
