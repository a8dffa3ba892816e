"""The grids of a four-phase synthetic CT and the motion between its phases.

Each phase of an ``almss`` participant (:mod:`metcli.synth.almss`) is scanned on its own
grid: its own slice thickness, field of view and scan range (:data:`ALMSS_SIZES`; the scan
range of a phase other than the portal one starts up to ``table_offset_mm`` away), and a
breath-hold apart, so the patient has moved: a small rigid motion
(:class:`RigidMotion`) maps the portal (reference) phase's physical points to the
phase's. Every grid has the identity direction; the anatomy, not the grid, moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from metcli.core.errors import UsageError
from metcli.synth.almss import PHASES, REFERENCE_PHASE
from metcli.synth.phantom import Grid

#: Grid presets per phase. ``small``: a half-size abdomen (fast, for tests and demos);
#: ``paper``: 512 x 512 slices at 0.78 mm, slices of 5 / 2.5 / 1.5 / 3 mm.
ALMSS_SIZES: dict[str, dict[str, Grid]] = {
    "small": {
        "native": Grid(shape=(88, 88, 26), spacing=(2.2, 2.2, 5.0), anatomy_scale=0.5),
        "arterial": Grid(shape=(96, 96, 50), spacing=(2.0, 2.0, 2.5), anatomy_scale=0.5),
        "portal": Grid(shape=(96, 96, 60), spacing=(2.0, 2.0, 2.0), anatomy_scale=0.5),
        "delayed": Grid(shape=(92, 92, 32), spacing=(2.1, 2.1, 4.0), anatomy_scale=0.5),
    },
    "paper": {
        "native": Grid(shape=(512, 512, 44), spacing=(0.78125, 0.78125, 5.0)),
        "arterial": Grid(shape=(512, 512, 84), spacing=(0.78125, 0.78125, 2.5)),
        "portal": Grid(shape=(512, 512, 140), spacing=(0.78125, 0.78125, 1.5)),
        "delayed": Grid(shape=(512, 512, 72), spacing=(0.78125, 0.78125, 3.0)),
    },
}
#: ITK's Euler3DTransform (ComputeZYX off): R = Rz @ Rx @ Ry.
ROTATION_ORDER = "R = Rz Rx Ry (ITK Euler3DTransform; angles about x, y, z)"


def phase_sizes(size: str | Mapping[str, Grid]) -> dict[str, Grid]:
    """The grid of each phase for a size preset or a mapping of phase -> :class:`Grid`."""
    if isinstance(size, str):
        if size not in ALMSS_SIZES:
            raise UsageError(f"size {size!r} is not one of {', '.join(ALMSS_SIZES)}")
        grids = ALMSS_SIZES[size]
    else:
        grids = dict(size)
    if set(grids) != set(PHASES) or not all(isinstance(g, Grid) for g in grids.values()):
        raise UsageError(f"a size must give a Grid for each phase: {', '.join(PHASES)}")
    scales = {g.anatomy_scale for g in grids.values()}
    if len(scales) != 1:
        raise UsageError("the phases' grids must share one anatomy_scale")
    for grid in grids.values():
        grid.validate()
    return {phase: grids[phase] for phase in PHASES}


@dataclass(frozen=True)
class PhaseGrid:
    """A voxel grid with the identity direction and any origin (mm, of the first voxel)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    anatomy_scale: float = 1.0

    @classmethod
    def of(cls, grid: Grid, z_offset: float = 0.0) -> "PhaseGrid":
        """``grid`` centred on (0, 0, ``z_offset``)."""
        origin = tuple(float(o) for o in grid.origin)
        return cls(
            tuple(int(n) for n in grid.shape),
            tuple(float(s) for s in grid.spacing),
            (origin[0], origin[1], origin[2] + float(z_offset)),
            float(grid.anatomy_scale),
        )

    @property
    def array_shape(self) -> tuple[int, int, int]:
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def axis_mm(self, axis: int) -> np.ndarray:
        """Voxel-centre positions (mm) along x (0), y (1) or z (2)."""
        return (self.origin[axis] + np.arange(self.shape[axis]) * self.spacing[axis]).astype(
            np.float32
        )

    def points(self, index_zyx: np.ndarray) -> np.ndarray:
        """Physical points (N x 3, x y z mm) of voxel indices (N x 3, [z, y, x])."""
        idx = np.asarray(index_zyx, float)[:, ::-1]
        return np.asarray(self.origin) + idx * np.asarray(self.spacing)

    def index(self, points: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (N x 3, [z, y, x]) of physical points (N x 3)."""
        idx = (np.asarray(points, float) - np.asarray(self.origin)) / np.asarray(self.spacing)
        return idx[:, ::-1]

    def image(self, array: np.ndarray):
        """``array`` ([z, y, x]) as a SimpleITK image on this grid."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        return image


@dataclass(frozen=True)
class RigidMotion:
    """x_phase = R (x_reference - centre) + centre + translation, R = Rz Rx Ry (mm, LPS)."""

    angles: tuple[float, float, float] = (0.0, 0.0, 0.0)  # radians about x, y, z
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def matrix(self) -> np.ndarray:
        (cx, cy, cz), (sx, sy, sz) = np.cos(self.angles), np.sin(self.angles)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        return rz @ rx @ ry

    @property
    def offset(self) -> np.ndarray:
        c = np.asarray(self.centre)
        return c + np.asarray(self.translation) - self.matrix @ c

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Reference points (N x 3 mm) -> the phase's points."""
        return np.asarray(points, float) @ self.matrix.T + self.offset

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """The phase's points (N x 3 mm) -> reference points."""
        return (np.asarray(points, float) - self.offset) @ self.matrix

    def as_record(self) -> dict[str, Any]:
        """The transform as the CT sidecars record it (``TransformFromReference``)."""
        return {
            "kind": "rigid",
            "reference": REFERENCE_PHASE,
            "maps": f"reference ({REFERENCE_PHASE}) physical points (mm) -> this phase's "
            "physical points (mm)",
            "transform": {
                "class": "Euler3DTransform",
                "parameters": [*map(float, self.angles), *map(float, self.translation)],
                "fixed_parameters": [*map(float, self.centre), 0.0],
            },
            "matrix": self.matrix.tolist(),
            "offset_mm": self.offset.tolist(),
            "rotation_deg": [math.degrees(a) for a in self.angles],
            "rotation_order": ROTATION_ORDER,
            "translation_mm": [float(t) for t in self.translation],
            "centre_mm": [float(c) for c in self.centre],
        }


def draw_geometry(
    rng: np.random.Generator, sizes: Mapping[str, Grid], params
) -> dict[str, tuple[PhaseGrid, RigidMotion]]:
    """Each phase's grid (its scan range shifted by up to ``params.table_offset_mm``) and
    motion from the reference phase (SDs ``params.motion_mm`` craniocaudally, a third of it
    in-plane, ``params.rotation_deg`` about each axis; cut at 2.5 SD). The reference phase
    is centred on the origin and does not move; every phase draws, so that the others do
    not depend on which phase is the reference."""
    out = {}
    for phase in PHASES:
        offset = round(float(rng.uniform(-1.0, 1.0)) * params.table_offset_mm, 2)
        shift_sd = np.array([params.motion_mm / 3.0, params.motion_mm / 3.0, params.motion_mm])
        shift = np.clip(rng.standard_normal(3), -2.5, 2.5) * shift_sd
        angles = np.radians(np.clip(rng.standard_normal(3), -2.5, 2.5) * params.rotation_deg)
        if phase == REFERENCE_PHASE:
            out[phase] = (PhaseGrid.of(sizes[phase]), RigidMotion())
            continue
        motion = RigidMotion(
            angles=tuple(float(a) for a in angles),
            translation=tuple(float(t) for t in shift),
        )
        out[phase] = (PhaseGrid.of(sizes[phase], offset), motion)
    return out


def sizes_record(sizes: Mapping[str, Grid]) -> dict[str, Any]:
    return {phase: grid.as_dict() for phase, grid in sizes.items()}
