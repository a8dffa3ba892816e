"""DICOM-SEG masks: segments placed onto the grid of a CT.

Segments are read with highdicom (:func:`read_dicom_seg`), which builds a volume
and its affine from the frames' plane positions; that volume is placed onto the
CT grid by an exact voxel correspondence
(:func:`metcli.imaging.geometry.place_on_grid`: a signed permutation of axes
plus an integer shift, positions within :data:`metcli.imaging.geometry.TOLERANCE_MM`).
The segmentation may cover fewer slices than the CT (empty frames are usually
omitted); other spacing or orientation is a
:class:`~metcli.core.errors.GeometryError`. Fractional segments are binarised
at 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.errors import MaskError
from metcli.imaging.geometry import load_reference, place_on_grid, reference_name
from metcli.imaging.mask_labels import MaskEntry, select_entries


def read_seg(path: Path):
    """The DICOM-SEG as a highdicom Segmentation; an unreadable file is a MaskError."""
    import highdicom as hd

    try:
        return hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many kinds
        raise MaskError(
            f"cannot read the DICOM-SEG ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
            path=path,
            fix="check that the file is a complete DICOM Segmentation",
        ) from None


def dicom_seg_segments(seg) -> list[tuple[int, str]]:
    """(segment number, segment label) of every segment of a DICOM-SEG (path or highdicom)."""
    seg = read_seg(Path(seg)) if isinstance(seg, (str, Path)) else seg
    return [
        (int(n), str(seg.get_segment_description(n).segment_label or f"segment {n}"))
        for n in seg.segment_numbers
    ]


def read_dicom_seg(
    path: str | Path,
    reference_image,
    segments: Sequence[str | int] | None = None,
    *,
    reference_path: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Segments of a DICOM-SEG on the grid of ``reference_image``.

    Args:
        path: the DICOM-SEG file.
        reference_image: the CT (a SimpleITK image, or a path to one).
        segments: segment labels (case-insensitive) or numbers to read; None for all.
        reference_path: the CT's file name, for error messages.

    Returns:
        ``{segment label: boolean array indexed [z, y, x] of the reference}``
        (a label used by two segments gets `` #<number>`` appended).
    """
    path = Path(path)
    reference = load_reference(reference_image)
    seg = read_seg(path)
    entries = [MaskEntry(n, name) for n, name in dicom_seg_segments(seg)]
    selected = select_entries(entries, segments, path=path, kind="segment")
    arrays = segment_masks(
        seg,
        selected,
        reference,
        path=path,
        ref_name=reference_name(reference_image, reference_path),
    )
    out: dict[str, np.ndarray] = {}
    for entry, mask in zip(selected, arrays, strict=True):
        out[entry.name if entry.name not in out else f"{entry.name} #{entry.number}"] = mask
    return out


def segment_masks(
    seg, entries: Sequence[MaskEntry], reference, *, path: Path, ref_name: str
) -> list[np.ndarray]:
    """One boolean [z, y, x] array of the reference per entry."""
    if not entries:
        raise MaskError(
            "the DICOM-SEG has no segments", path=path, fix="export the segmentation again"
        )
    try:
        volume = seg.get_volume(
            segment_numbers=[e.number for e in entries],
            combine_segments=False,
            rescale_fractional=True,
        )
    except (RuntimeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise MaskError(
            f"its frames do not form a regular 3D volume ({' '.join(str(exc).split())[:160]})",
            path=path,
            fix="export the segmentation as a volume on the CT series' slices",
        ) from None
    data = np.asarray(volume.array)
    if data.ndim == 3:
        data = data[..., None]
    fractional = str(seg.get("SegmentationType", "")).upper() == "FRACTIONAL"
    masks = []
    for channel in range(len(entries)):
        values = data[..., channel]
        binary = values >= 0.5 if fractional else values != 0
        masks.append(
            place_on_grid(binary, volume.affine, reference, mask_path=path, reference_path=ref_name)
        )
    return masks
