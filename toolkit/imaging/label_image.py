"""Label images (NIfTI, NRRD) as metcli's dseg, on the grid of a CT.

:func:`label_image_to_dseg` reads the image with :func:`metcli.io.files.read_image`,
brings it onto the CT's grid with :func:`metcli.imaging.geometry.to_reference_grid`
(the same grid, or flipped/permuted axes of it; nothing is resampled) and maps its
voxel values to liver and lesion: a label map names them, else an image of 0, 1 and 2
is taken as it is. Where both apply, lesion wins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from metcli.core.errors import MaskError, UsageError
from metcli.imaging.geometry import to_reference_grid
from metcli.imaging.labels import BACKGROUND, LABELS, LESION, LIVER
from metcli.io.files import read_image


def _label_image_mapping(
    values: np.ndarray, label_map: Mapping[str, int] | None, path: Path
) -> dict[int, int]:
    shown = ", ".join(str(int(v)) for v in values[:20]) + (" ..." if len(values) > 20 else "")
    if label_map is None:
        if set(int(v) for v in values) <= {BACKGROUND, LIVER, LESION}:
            return {int(v): int(v) for v in values if v != BACKGROUND}
        raise MaskError(
            f"the label image holds values other than 0, 1 and 2 ({shown})",
            path=path,
            fix="say which values are liver and lesion, for example --label-map '5=liver,2=lesion'",
        )
    mapping: dict[int, int] = {}
    present = set(int(v) for v in values)
    for key, label in label_map.items():
        if not re.fullmatch(r"-?\d+", key.strip()):
            raise UsageError(
                f"--label-map source {key!r} is not a number; a label image's "
                "sources are its voxel values",
                fix="write it as --label-map '5=liver'",
            )
        value = int(key)
        if value not in present:
            raise MaskError(
                f"--label-map names value {value}, which the label image does not hold "
                f"(it holds {shown})",
                path=path,
                fix="use one of these values in --label-map",
            )
        mapping[value] = label
    return mapping


def label_image_to_dseg(
    path: Path, reference, reference_path: str, label_map: Mapping[str, int] | None
) -> tuple[np.ndarray, dict]:
    """The dseg array ([z, y, x], uint8) of a label image on the reference's grid, and the
    applied mapping ``{value: 'liver' | 'lesion'}``."""
    import SimpleITK as sitk

    image = read_image(path, what="mask")
    on_grid = to_reference_grid(image, reference, image_path=path, reference_path=reference_path)
    array = sitk.GetArrayFromImage(on_grid)
    values = np.unique(array)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise MaskError(
            "the mask holds non-integer values; a label image is needed",
            path=path,
            fix="give a label image (integer voxel values)",
        )
    values = values.astype(np.int64)
    mapping = _label_image_mapping(values, label_map, path)
    dseg = np.zeros(array.shape, dtype=np.uint8)
    for label in (LIVER, LESION):  # lesion last: lesion wins
        sources = [v for v, target in mapping.items() if target == label]
        if sources:
            dseg[np.isin(array, sources)] = label
    return dseg, {str(v): LABELS[t] for v, t in sorted(mapping.items())}
