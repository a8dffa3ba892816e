"""Lesions of the synthetic phantom: how many, how large, where, and their records.

:func:`lesion_plan` draws the number and diameters of a patient's lesions;
:func:`place_lesions` puts them inside the liver as slightly irregular ellipsoids,
at least :data:`MIN_GAP_VOXELS` voxels apart, so that connected components give
exactly the placed lesions. ``params`` is the phantom's
:class:`~metcli.synth.phantom.SynthParams` and ``grid`` its
:class:`~metcli.synth.phantom.Grid`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Lesions are at least this many voxels apart (Chebyshev distance >= gap + 1).
MIN_GAP_VOXELS = 2
#: SD of the log of a lesion's semi-axes around its radius.
ELONGATION = 0.12
#: Tries to find room for a lesion before it is left out.
PLACEMENT_TRIES = 60


@dataclass
class Lesion:
    """A lesion the generator placed. Positions are physical (LPS, mm) on the phantom grid."""

    lesion_id: int
    centre_mm: tuple[float, float, float]
    radius_mm: float
    semi_axes_mm: tuple[float, float, float]
    voxels: int
    volume_mm3: float
    hu: float
    texture_sd: float
    patient_offset_hu: float
    centroid_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    first_voxel: tuple[int, int, int] = field(repr=False, default=(0, 0, 0))
    #: the generating shape (:func:`shape_rho` evaluates it at any point)
    shape: Any = field(repr=False, default=None, compare=False)

    def order_key(self) -> tuple:
        """split-lesions' id order: decreasing volume, then centroid z, y, x, then raster."""
        cx, cy, cz = (round(c, 4) for c in self.centroid_mm)
        return (-self.voxels, cz, cy, cx, self.first_voxel)

    @property
    def equivalent_diameter_mm(self) -> float:
        """Diameter of the sphere with the lesion's (voxel) volume."""
        return (6.0 * self.volume_mm3 / math.pi) ** (1.0 / 3.0)

    def row(self, participant_id: str, primary: str) -> dict[str, Any]:
        """The lesion's row of the truth table (see schemas/synth_lesions.schema.json)."""
        return {
            "participant_id": participant_id,
            "lesion_id": self.lesion_id,
            "primary": primary,
            "centre_x_mm": round(self.centre_mm[0], 3),
            "centre_y_mm": round(self.centre_mm[1], 3),
            "centre_z_mm": round(self.centre_mm[2], 3),
            "centroid_x_mm": round(self.centroid_mm[0], 3),
            "centroid_y_mm": round(self.centroid_mm[1], 3),
            "centroid_z_mm": round(self.centroid_mm[2], 3),
            "radius_mm": round(self.radius_mm, 3),
            "semi_axis_a_mm": round(self.semi_axes_mm[0], 3),
            "semi_axis_b_mm": round(self.semi_axes_mm[1], 3),
            "semi_axis_c_mm": round(self.semi_axes_mm[2], 3),
            "voxels": self.voxels,
            "volume_mm3": round(self.volume_mm3, 3),
            "equivalent_diameter_mm": round(self.equivalent_diameter_mm, 3),
            "lesion_hu": round(self.hu, 3),
            "texture_sd_hu": round(self.texture_sd, 3),
            "patient_offset_hu": round(self.patient_offset_hu, 3),
        }


def lesion_plan(rng: np.random.Generator, params, cls: str) -> np.ndarray:
    """Diameters (mm, largest first) of the lesions to place in one patient of ``cls``.

    Count: 1 + Poisson(mean - 1), at most ``max_lesions``; diameters: log-normal with
    the class mean and ``diameter_cv``, cut to [diameter_min, diameter_max].
    """
    count = 1 + int(rng.poisson(params.lesion_mean(cls) - 1.0))
    count = min(count, int(params.max_lesions))
    mean = params.diameter_mean(cls)
    s2 = math.log1p(params.diameter_cv**2)
    diameters = rng.lognormal(math.log(mean) - s2 / 2.0, math.sqrt(s2), size=count)
    diameters = np.clip(diameters, params.diameter_min, params.diameter_max)
    return np.sort(diameters)[::-1]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass
class _Shape:
    """One lesion's shape and value, drawn before it is placed."""

    radius: float
    semi: np.ndarray  # semi-axes (mm)
    rotation: np.ndarray
    wobble_dirs: np.ndarray
    wobble_freq: np.ndarray
    wobble_phase: np.ndarray
    wobble_weight: np.ndarray
    hu: float
    bound: float  # no voxel of the lesion lies further from its centre (mm)


@dataclass
class _LiverBox:
    """The liver in its bounding box, and where lesions may still go."""

    liver: np.ndarray
    offset: np.ndarray  # index of the box's first voxel in the grid, [z, y, x]
    axes_mm: list[np.ndarray]  # voxel-centre positions along x, y, z inside the box
    spacing_zyx: np.ndarray
    depth: np.ndarray  # distance (mm) to the nearest voxel outside the liver
    inner: np.ndarray  # the liver eroded by one voxel
    blocked: np.ndarray  # voxels too close to a placed lesion


def place_lesions(
    rng,
    params,
    cls: str,
    grid,
    box,
    liver: np.ndarray,
    patient_offset: float,
    diameters: np.ndarray,
) -> list[tuple[Lesion, tuple[tuple, np.ndarray]]]:
    """Place lesions of ``diameters`` (:func:`lesion_plan`) inside the liver, apart.

    Every lesion lies inside the liver eroded by one voxel (so it is surrounded by
    liver) and at a Chebyshev distance of more than MIN_GAP_VOXELS voxels from every
    other lesion. A lesion that finds no room after PLACEMENT_TRIES tries is dropped.
    Returns (lesion, (slices in the liver box, mask in those slices)), with lesion ids in
    split-lesions' order (:meth:`Lesion.order_key`), so that the ids of the truth table
    are those of ``derivatives/truth-lesions``.
    """
    from scipy import ndimage

    spacing_zyx = np.asarray(grid.spacing_zyx)
    space = _LiverBox(
        liver=liver,
        offset=np.array([sl.start for sl in box]),
        axes_mm=[grid.axis_mm(a)[box[2 - a]] for a in (0, 1, 2)],
        spacing_zyx=spacing_zyx,
        depth=ndimage.distance_transform_edt(np.pad(liver, 1), sampling=spacing_zyx)[
            1:-1, 1:-1, 1:-1
        ],
        inner=ndimage.binary_erosion(liver, structure=np.ones((3, 3, 3), bool)),
        blocked=np.zeros(liver.shape, bool),
    )
    placed = []
    dropped = 0
    for diameter in diameters:
        shape = _draw_shape(rng, params, cls, diameter / 2.0, patient_offset)
        accepted = _find_room(rng, shape, space, grid, params.irregularity)
        if accepted is None:
            dropped += 1
            continue
        centre, local, mask = accepted
        _block_around(space, local, mask)
        lesion = _lesion_record(
            shape,
            centre,
            local,
            mask,
            space,
            grid,
            texture_sd=float(params.texture_sd(cls)),
            patient_offset=patient_offset,
        )
        placed.append((lesion, local, mask))
    if dropped:
        log.info(
            "%d of %d lesion(s) found no room in the liver and were left out",
            dropped,
            len(diameters),
        )
    placed.sort(key=lambda item: item[0].order_key())
    for number, (lesion, _local, _mask) in enumerate(placed, start=1):
        lesion.lesion_id = number
    return [(lesion, (local, mask)) for lesion, local, mask in placed]


def _draw_shape(rng, params, cls: str, radius: float, patient_offset: float) -> _Shape:
    """Semi-axes, orientation, boundary wobble and HU of one lesion of ``radius`` mm."""
    semi = radius * np.exp(rng.normal(0.0, ELONGATION, 3))
    semi *= radius / float(np.prod(semi)) ** (1.0 / 3.0)
    rotation = _random_rotation(rng)
    wobble_dirs = rng.standard_normal((3, 3))
    wobble_dirs /= np.linalg.norm(wobble_dirs, axis=1, keepdims=True)
    wobble_freq = rng.integers(1, 4, size=3)
    wobble_phase = rng.uniform(0.0, 2.0 * math.pi, size=3)
    wobble_weight = rng.dirichlet(np.ones(3))
    hu = (
        params.lesion_hu
        + params.hu_shift(cls)
        + patient_offset
        + float(rng.normal(0.0, params.lesion_hu_sd))
    )
    bound = float(semi.max()) / (1.0 - params.irregularity)
    return _Shape(
        radius=radius,
        semi=semi,
        rotation=rotation,
        wobble_dirs=wobble_dirs,
        wobble_freq=wobble_freq,
        wobble_phase=wobble_phase,
        wobble_weight=wobble_weight,
        hu=hu,
        bound=bound,
    )


def _find_room(rng, shape: _Shape, space: _LiverBox, grid, irregularity: float):
    """(centre in mm, slices in the box, mask) of a free place for the lesion, or None."""
    spacing_zyx, liver = space.spacing_zyx, space.liver
    candidates = np.flatnonzero((space.depth >= shape.bound + spacing_zyx.max()) & ~space.blocked)
    for _ in range(PLACEMENT_TRIES if candidates.size else 0):
        k, j, i = np.unravel_index(candidates[rng.integers(candidates.size)], liver.shape)
        centre = np.array([space.axes_mm[0][i], space.axes_mm[1][j], space.axes_mm[2][k]], float)
        centre += rng.uniform(-0.5, 0.5, 3) * np.asarray(grid.spacing)
        half = np.ceil(shape.bound / spacing_zyx).astype(int) + 1
        local = tuple(
            slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip((k, j, i), half, liver.shape)
        )
        mask = _lesion_mask(shape, centre, local, space.axes_mm, irregularity)
        if mask is None:
            continue
        if (mask & ~space.inner[local]).any() or (mask & space.blocked[local]).any():
            continue
        return centre, local, mask
    return None


def _lesion_mask(
    shape: _Shape, centre: np.ndarray, local: tuple, axes_mm: list[np.ndarray], irregularity: float
) -> np.ndarray | None:
    """The lesion's largest connected part in the slices ``local``, or None if it is empty."""
    from scipy import ndimage

    dx = axes_mm[0][local[2]] - centre[0]
    dy = axes_mm[1][local[1]] - centre[1]
    dz = axes_mm[2][local[0]] - centre[2]
    d = np.stack(
        np.broadcast_arrays(dx[None, None, :], dy[None, :, None], dz[:, None, None]), axis=-1
    ).astype(float)
    mask = shape_rho(shape, d, irregularity) <= 1.0
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return None
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask


def shape_rho(shape: _Shape, d: np.ndarray, irregularity: float) -> np.ndarray:
    """The lesion's boundary function at offsets ``d`` (mm, [..., 3] x, y, z) from its centre:
    below 1 inside, 1 on the (irregular) boundary, growing outwards."""
    rho = np.sqrt((((d @ shape.rotation) / shape.semi) ** 2).sum(axis=-1))
    norm = np.linalg.norm(d, axis=-1)
    unit = d / np.where(norm > 0, norm, 1.0)[..., None]
    wobble = (
        shape.wobble_weight
        * np.cos(math.pi * shape.wobble_freq * (unit @ shape.wobble_dirs.T) + shape.wobble_phase)
    ).sum(axis=-1)
    return rho * (1.0 + irregularity * wobble)


def _block_around(space: _LiverBox, local: tuple, mask: np.ndarray) -> None:
    """Block the voxels within MIN_GAP_VOXELS of a placed lesion."""
    from scipy import ndimage

    liver = space.liver
    gap = np.ones((2 * MIN_GAP_VOXELS + 1,) * 3, bool)
    grown = tuple(
        slice(max(sl.start - MIN_GAP_VOXELS, 0), min(sl.stop + MIN_GAP_VOXELS, n))
        for sl, n in zip(local, liver.shape)
    )
    padded = np.zeros(tuple(sl.stop - sl.start for sl in grown), bool)
    inside = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(local, grown))
    padded[inside] = mask
    space.blocked[grown] |= ndimage.binary_dilation(padded, structure=gap)


def _lesion_record(
    shape: _Shape,
    centre: np.ndarray,
    local: tuple,
    mask: np.ndarray,
    space: _LiverBox,
    grid,
    *,
    texture_sd: float,
    patient_offset: float,
) -> Lesion:
    """The :class:`Lesion` of a placed mask (its id is set once all are placed)."""
    zyx = np.argwhere(mask) + [sl.start for sl in local] + space.offset
    centroid = zyx.mean(axis=0)[::-1] * np.asarray(grid.spacing) + np.asarray(grid.origin)
    voxels = int(mask.sum())
    voxel_mm3 = float(np.prod(grid.spacing))
    return Lesion(
        shape=shape,
        lesion_id=0,
        centre_mm=tuple(float(c) for c in centre),
        radius_mm=shape.radius,
        semi_axes_mm=tuple(float(a) for a in shape.semi),
        voxels=voxels,
        volume_mm3=voxels * voxel_mm3,
        hu=float(shape.hu),
        texture_sd=texture_sd,
        patient_offset_hu=float(patient_offset),
        centroid_mm=tuple(float(c) for c in centroid),
        first_voxel=tuple(int(v) for v in zyx[0]),
    )
