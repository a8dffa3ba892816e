"""A DICOM diffusion (DWI) series as volumes, with BIDS' b-values and b-vectors.

Volumes: the images of a DWI series are grouped by DiffusionBValue (0018,9087) and
DiffusionGradientOrientation (0018,9089) (top level, or in MRDiffusionSequence). A b = 0
image, an image without a direction or with DiffusionDirectionality ISOTROPIC (a trace
image) has the direction (0, 0, 0). Each volume must hold one image at every slice
position of the series. Volumes are ordered by b-value, then by direction (its x, y, z
in the patient frame). When a shell holds directional volumes and also an isotropic one
(Philips adds the trace image to the series), the isotropic one is left out, as
dcm2niix does, and the sidecar says so. Only the standard tags are read: b-values kept
in the vendors' private tags alone (Siemens CSA header, GE (0043,1039), Philips
(2001,1003)) are refused, naming dcm2niix, which reads them.

b-vectors (the ``.bvec`` file): BIDS follows FSL, whose b-vectors are given along the
image's voxel axes. For a gradient direction g in the patient frame (LPS, as DICOM
gives it) and the NIfTI's voxel axes (in LPS: the row cosine r, the column cosine c and
the slice normal n, the order metcli writes the voxels in), the b-vector is
(g . r, g . c, g . n), with the first component negated when the NIfTI's voxel-to-world
matrix has a positive determinant (FSL's radiological convention). metcli writes voxels
in DICOM's order, whose matrix always has a positive determinant (n = r x c), so the
b-vector is (-g . r, g . c, g . n). dcm2niix does the same projection; it flips the
rows, so its second axis is -c and its determinant is negative: (g . r, -g . c, g . n).
Both give the same direction in space for their own image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metcli.core.errors import DicomError
from metcli.imaging.dicom.headers import SliceHeader
from metcli.imaging.dicom.mr_checks import normal_of, positions_of
from metcli.imaging.dicom.series import SeriesInfo
from metcli.imaging.dicom.stack import fmt

ZERO = (0.0, 0.0, 0.0)


@dataclass
class DiffusionVolume:
    """The images of one b-value and gradient direction."""

    b_value: float  # s/mm2
    direction: tuple[float, float, float]  # unit vector in the patient frame (LPS), or ZERO
    slices: list[SliceHeader]

    def describe(self) -> str:
        return f"b = {self.b_value:g} s/mm2, direction {fmt(self.direction)}"


def _missing_b_error(series: SeriesInfo, item: SliceHeader) -> DicomError:
    private = item.mr.private_diffusion if item.mr else ()
    where = (
        f"; the b-values may be in the vendor's private tags ({', '.join(private)}), which "
        "metcli does not read"
        if private
        else ""
    )
    return DicomError(
        f"the diffusion series {series.describe()} has images without DiffusionBValue "
        f"(0018,9087) ({item.path.name}){where}; metcli reads the standard diffusion tags "
        "only",
        path=series.folder,
        fix="convert the series with dcm2niix (it reads the vendors' private tags) and put its "
        "files in the raw dataset as dwi/sub-<label>_dwi.nii.gz, .bval and .bvec, or export "
        "the series with the standard DICOM diffusion tags",
    )


def _direction(series: SeriesInfo, item: SliceHeader) -> tuple[float, float, float]:
    mr = item.mr
    if mr.b_value <= 0 or mr.directionality in ("ISOTROPIC", "NONE"):
        return ZERO
    if mr.directionality == "BMATRIX" and mr.gradient is None:
        raise DicomError(
            f"{item.path.name}: the diffusion direction is given as a b-matrix only "
            "(DiffusionDirectionality BMATRIX); metcli needs DiffusionGradientOrientation "
            "(0018,9089)",
            path=series.folder,
            fix="convert the series with dcm2niix",
        )
    if mr.gradient is None or float(np.linalg.norm(mr.gradient)) < 1e-6:
        if mr.directionality == "DIRECTIONAL":
            raise DicomError(
                f"{item.path.name}: a DIRECTIONAL diffusion image (b = {mr.b_value:g}) without "
                "DiffusionGradientOrientation (0018,9089)",
                path=series.folder,
                fix="convert the series with dcm2niix (it reads the vendors' private tags)",
            )
        return ZERO  # a trace (isotropic) image
    vector = np.asarray(mr.gradient, dtype=float)
    vector = vector / np.linalg.norm(vector)
    return tuple(float(v) for v in np.round(vector, 6) + 0.0)


def diffusion_volumes(series: SeriesInfo) -> tuple[list[DiffusionVolume], list[str]]:
    """The volumes of a DWI series, ordered, and the volumes left out (described)."""
    groups: dict[tuple[float, tuple[float, ...]], list[SliceHeader]] = {}
    exact: dict[tuple[float, tuple[float, ...]], tuple[float, float, float]] = {}
    for item in series.slices:
        if item.mr is None or item.mr.b_value is None:
            raise _missing_b_error(series, item)
        direction = _direction(series, item)
        key = (round(float(item.mr.b_value), 3), tuple(round(v, 4) + 0.0 for v in direction))
        groups.setdefault(key, []).append(item)
        exact.setdefault(key, direction)
    volumes = [DiffusionVolume(k[0], exact[k], groups[k]) for k in sorted(groups)]
    volumes, dropped = _drop_derived_trace(volumes)
    _check_volumes(series, volumes)
    return volumes, dropped


def _drop_derived_trace(volumes: list[DiffusionVolume]):
    """Leave out a shell's isotropic volume when the shell also has directional ones."""
    kept, dropped = [], []
    for volume in volumes:
        directional = any(v.b_value == volume.b_value and v.direction != ZERO for v in volumes)
        if volume.b_value > 0 and volume.direction == ZERO and directional:
            dropped.append(
                f"b = {volume.b_value:g}: the isotropic (trace) volume, derived from the "
                "shell's directional volumes"
            )
            continue
        kept.append(volume)
    return kept, dropped


def _check_volumes(series: SeriesInfo, volumes: Sequence[DiffusionVolume]) -> None:
    """One image per slice position in every volume, and the same positions in all."""
    normal = normal_of(series.slices[0])
    everywhere: set[float] = set()
    for volume in volumes:
        groups = positions_of(volume.slices)
        if max(len(g) for g in groups) > 1:
            raise DicomError(
                f"the diffusion volume {volume.describe()} has two images at one slice "
                f"position ({groups[0][0].path.name} ...): repeated acquisitions (averages) "
                "or two series under one SeriesInstanceUID",
                path=series.folder,
                fix="export the averaged series, or move the repeated images out",
            )
        everywhere |= {round(float(normal @ np.asarray(g[0].position)), 2) for g in groups}
    for volume in volumes:
        have = {round(float(normal @ np.asarray(s.position)), 2) for s in volume.slices}
        missing = sorted(everywhere - have)
        if missing:
            shown = ", ".join(f"{m:g}" for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DicomError(
                f"the diffusion volume {volume.describe()} has {len(have)} slices where the "
                f"series has {len(everywhere)} positions: missing at {shown} mm along the "
                "slice normal",
                path=series.folder,
                fix="give the complete series (copy the missing files)",
            )


def bvecs_for_image(directions: Sequence[tuple[float, ...]], direction_matrix) -> list[tuple]:
    """b-vectors along the voxel axes of an image with this 3x3 direction (LPS, columns =
    voxel axes), FSL's first-axis flip applied for a positive determinant (module docstring)."""
    axes = np.asarray(direction_matrix, dtype=float).reshape(3, 3)
    ras = np.diag([-1.0, -1.0, 1.0]) @ axes
    flip = np.array([-1.0 if np.linalg.det(ras) > 0 else 1.0, 1.0, 1.0])
    out = []
    for direction in directions:
        vector = np.asarray(direction, dtype=float)
        if float(np.linalg.norm(vector)) < 1e-9:
            out.append(ZERO)
            continue
        along = (axes.T @ vector) * flip
        along = along / np.linalg.norm(along)
        out.append(tuple(float(v) for v in np.round(along, 6) + 0.0))
    return out


def _number(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def bval_text(b_values: Sequence[float]) -> str:
    """The ``.bval`` file: one line, one b-value per volume."""
    return " ".join(_number(b) for b in b_values) + "\n"


def bvec_text(bvecs: Sequence[tuple[float, ...]]) -> str:
    """The ``.bvec`` file: three lines (x, y, z), one column per volume."""
    return "".join(" ".join(_number(v[axis]) for v in bvecs) + "\n" for axis in range(3))
