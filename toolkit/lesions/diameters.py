"""Lesion measurements: diameters, volume, centroid and bounding box of each component.

Definitions are those of :mod:`metcli.lesions.split_lesions` (part of its output
contract). Diameters are distances between voxel centres in millimetres; the
farthest pair of a point set lies on its convex hull, so the distances are
computed exactly on the hull vertices (scipy's Qhull) of the voxel centres, after
keeping only the first and last voxel of every image row (the others cannot be
hull vertices). Positions are physical: spacing, direction and origin of the
image are honoured.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

#: Point sets up to this size are measured by comparing every pair directly.
_BRUTE_FORCE_POINTS = 48
#: Centroids closer than this (mm) count as equal when ordering lesions.
_ORDER_DECIMALS = 4


def index_to_physical(image) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, origin) with physical = matrix @ [i, j, k] + origin."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=float))
    return matrix, np.asarray(image.GetOrigin(), dtype=float)


def slice_axis(image) -> int:
    """The index axis (0 = i, 1 = j, 2 = k) closest to the patient's z axis.

    Column ``a`` of the direction matrix is the physical direction of index
    axis ``a``; the axial slices are perpendicular to the one with the largest
    z component.
    """
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return int(np.argmax(np.abs(direction[2, :])))


def max_pairwise_distance(points) -> float:
    """The largest distance between two of ``points`` (n x d), exactly.

    The farthest pair of a finite set are vertices of its convex hull: the hull
    is computed in the dimension the points span (a line, a plane or space),
    and only its vertices are compared pairwise.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or len(pts) < 2:
        return 0.0
    if len(pts) <= _BRUTE_FORCE_POINTS:
        return _farthest_pair_brute_force(pts)
    from scipy.spatial import ConvexHull, QhullError

    centred = pts - pts.mean(axis=0)
    _u, singular, vt = np.linalg.svd(centred, full_matrices=False)
    if singular[0] <= 0:
        return 0.0
    rank = int(np.sum(singular > singular[0] * 1e-9))
    if rank == 1:
        along = centred @ vt[0]
        return float(np.linalg.norm(pts[np.argmax(along)] - pts[np.argmin(along)]))
    coords = centred @ vt[:rank].T
    try:
        hull = ConvexHull(coords)
    except (QhullError, ValueError):
        log.debug("Qhull failed on %d points; comparing every pair", len(pts))
        return _farthest_pair_brute_force(pts)
    return _farthest_pair_brute_force(pts[hull.vertices])


def _farthest_pair_brute_force(pts: np.ndarray) -> float:
    from scipy.spatial.distance import cdist

    best = 0.0
    rows = max(1, 4_000_000 // max(len(pts), 1))
    for start in range(0, len(pts), rows):
        best = max(best, float(cdist(pts[start : start + rows], pts).max()))
    return best


def _line_extremes(mask: np.ndarray, axis: int) -> np.ndarray:
    """Array indices (n x 3) of the first and last set voxel of every line along ``axis``.

    No other voxel can be a vertex of the convex hull of the voxel centres (it
    lies between two voxels of its line), in 3D and within any slice that
    contains the line.
    """
    has = mask.any(axis=axis)
    first = np.argmax(mask, axis=axis)
    last = mask.shape[axis] - 1 - np.argmax(np.flip(mask, axis=axis), axis=axis)
    others = [a for a in range(3) if a != axis]
    where = np.nonzero(has)
    blocks = []
    for along in (first[where], last[where]):
        idx = np.empty((len(along), 3), dtype=np.int64)
        idx[:, others[0]] = where[0]
        idx[:, others[1]] = where[1]
        idx[:, axis] = along
        blocks.append(idx)
    return np.unique(np.concatenate(blocks), axis=0)


def measure_components(
    labelled: np.ndarray, matrix: np.ndarray, origin: np.ndarray, axis: int, voxel_volume: float
) -> list[tuple[int, dict]]:
    """(component label, statistics) of every component, in lesion-id order.

    Lesion-id order: decreasing voxel count, then the physical centroid (z, y, x,
    compared at 1e-4 mm), then the first voxel in raster order.
    """
    from scipy import ndimage

    array_slice_axis = 2 - axis  # numpy arrays are [k, j, i]
    measured = []
    # every component is measured in its bounding box: no full-size array is made
    for label, box in enumerate(ndimage.find_objects(labelled), start=1):
        if box is None:
            continue
        crop = labelled[box] == label
        start = np.array([s.start for s in box], dtype=np.int64)  # [k, j, i]
        stop = np.array([s.stop for s in box], dtype=np.int64) - 1
        voxels = int(np.count_nonzero(crop))

        where = np.nonzero(crop)
        mean_index_kji = np.array([w.mean() for w in where]) + start
        centroid = matrix @ mean_index_kji[::-1] + origin
        first = tuple(int(w[0]) + int(s) for w, s in zip(where, start))  # raster order

        in_plane = [a for a in range(3) if a != array_slice_axis]
        line_axis = max(in_plane, key=lambda a: crop.shape[a])
        candidates = _line_extremes(crop, line_axis)
        physical = (candidates + start)[:, ::-1] @ matrix.T + origin
        max_3d = max_pairwise_distance(physical)

        slice_of = candidates[:, array_slice_axis]
        order = np.argsort(slice_of, kind="stable")
        _values, bounds = np.unique(slice_of[order], return_index=True)
        axial = 0.0
        for group in np.split(order, bounds[1:]):
            axial = max(axial, max_pairwise_distance(physical[group]))

        volume = voxels * voxel_volume
        stats = {
            "voxels": voxels,
            "volume_mm3": volume,
            "longest_axial_diameter_mm": axial,
            "max_3d_diameter_mm": max_3d,
            "equivalent_diameter_mm": (6.0 * volume / math.pi) ** (1.0 / 3.0),
            "centroid_x_mm": float(centroid[0]),
            "centroid_y_mm": float(centroid[1]),
            "centroid_z_mm": float(centroid[2]),
            "bbox_i0": int(start[2]),
            "bbox_j0": int(start[1]),
            "bbox_k0": int(start[0]),
            "bbox_i1": int(stop[2]),
            "bbox_j1": int(stop[1]),
            "bbox_k1": int(stop[0]),
        }
        key = (-voxels, *(round(float(c), _ORDER_DECIMALS) for c in centroid[::-1]), first)
        measured.append((key, label, stats))
    measured.sort(key=lambda item: item[0])
    return [(label, stats) for _key, label, stats in measured]
