"""``metcli evaluate-seg``'s pairs: a segmentation, its reference and their lesion maps.

:func:`find_items` pairs the ``_dseg.nii.gz`` files of two folders by
participant, session and contrast phase; :func:`evaluate_pair` reads one pair
(and its lesion maps) on the reference's grid and measures it (see
:mod:`metcli.evaluation.evaluate_seg` for the definitions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli.core.errors import ImageError, InputError
from metcli.evaluation.seg_measures import detection_rows, overlap_rows
from metcli.imaging.labels import BACKGROUND, LESION, LIVER
from metcli.io.bids import (
    Acquisition,
    Entities,
    derivative_path,
    find_files,
    participant_folders,
    select_participants,
)

SEG_SUFFIX = "dseg"
LESIONS_DESC = "lesions"


@dataclass
class LesionInputs:
    """The lesion maps and tables of one acquisition (segmentation and reference)."""

    map: Path
    table: Path
    reference_map: Path
    reference_table: Path

    def paths(self) -> list[Path]:
        return [self.map, self.table, self.reference_map, self.reference_table]


@dataclass
class PairResult:
    overlap: list[dict]
    detection: list[dict] | None
    voxel_volume_mm3: float


def _label_array(image, path: Path, what: str, allowed: Sequence[int] | None) -> np.ndarray:
    """The voxels of a label image as int64, or an :class:`ImageError` naming the file."""
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or np.any(array != np.floor(array)):
            raise ImageError(
                f"the {what} holds non-integer values; a label image is needed",
                path=path,
                fix="give a discrete segmentation, not a probability map",
            )
    elif array.dtype.kind not in "iub":
        raise ImageError(
            f"the {what} has voxels of type {array.dtype}; a label image is needed",
            path=path,
            fix="give a 3D integer label image (a _dseg file), not an intensity image",
        )
    values = np.asarray(array, dtype=np.int64)
    if allowed is not None:
        bad = ~np.isin(values, allowed)
        if bad.any():
            found = ", ".join(str(v) for v in np.unique(values[bad])[:8])
            raise ImageError(
                f"the {what} holds label(s) {found}; metcli segmentations hold "
                f"{', '.join(map(str, allowed))} (0 background, 1 liver, 2 lesion)",
                path=path,
                fix="give a metcli _dseg file (segment or import-mask write them, "
                "import-mask --label-map maps other labels)",
            )
    elif values.size and values.min() < 0:
        raise ImageError(
            f"the {what} holds negative ids",
            path=path,
            fix="give the lesion map split-lesions wrote",
        )
    return values


def evaluate_pair(
    seg_path: Path, reference_path: Path, lesions: LesionInputs | None = None
) -> PairResult:
    """Overlap rows (and, with ``lesions``, detection rows) of one acquisition.

    Every image is brought to the reference segmentation's grid with
    :func:`metcli.imaging.geometry.to_reference_grid` (a lossless reordering of flipped or
    permuted axes); any other difference is a :class:`GeometryError` naming both files.
    """
    from metcli.imaging.geometry import to_reference_grid, voxel_volume_mm3
    from metcli.io.files import read_image
    from metcli.lesions.tables import read_lesion_table

    labels = (BACKGROUND, LIVER, LESION)
    reference = read_image(reference_path, what="reference segmentation")
    seg = to_reference_grid(
        read_image(seg_path, what="segmentation"),
        reference,
        image_path=seg_path,
        reference_path=reference_path,
    )
    seg_array = _label_array(seg, seg_path, "segmentation", labels)
    ref_array = _label_array(reference, reference_path, "reference segmentation", labels)
    voxel_volume = voxel_volume_mm3(reference)
    rows = overlap_rows(seg_array, ref_array, voxel_volume)
    if lesions is None:
        return PairResult(rows, None, voxel_volume)
    maps = []
    for map_path, dseg_path, dseg_array, what in (
        (lesions.map, seg_path, seg_array, "lesion map"),
        (lesions.reference_map, reference_path, ref_array, "reference lesion map"),
    ):
        image = to_reference_grid(
            read_image(map_path, what=what),
            reference,
            image_path=map_path,
            reference_path=reference_path,
        )
        array = _label_array(image, map_path, what, None)
        if np.any((array > 0) & (dseg_array != LESION)):
            raise InputError(
                f"the {what} marks voxels that are not lesion in {dseg_path}: it "
                "was not made from this segmentation",
                path=map_path,
                fix="run split-lesions on the segmentation folder given here",
            )
        maps.append(array)
    tables = [read_lesion_table(lesions.table), read_lesion_table(lesions.reference_table)]
    for array, table, path in (
        (maps[0], tables[0], lesions.table),
        (maps[1], tables[1], lesions.reference_table),
    ):
        kept = {int(r["index"]) for r in table if r["kept"]}
        present = set(np.unique(array[array > 0]).tolist())
        if not present <= kept:
            extra = sorted(present - kept)[:5]
            raise InputError(
                f"the lesion map holds id(s) {', '.join(map(str, extra))} that "
                "the table does not list as kept",
                path=path,
                fix="give the table split-lesions wrote beside this lesion map",
            )
    return PairResult(rows, detection_rows(maps[0], maps[1], tables[0], tables[1]), voxel_volume)


@dataclass
class Item:
    """One acquisition to compare: (sub, ses, ce) with whatever files were found."""

    key: tuple[str, str | None, str | None]
    seg: Acquisition | None
    reference: Acquisition | None
    lesions: LesionInputs | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def entities(self) -> Entities:
        sub, ses, ce = self.key
        return Entities(sub=sub, ses=ses, ce=ce, suffix=SEG_SUFFIX)

    def describe(self) -> str:
        return self.entities.describe()

    def input_paths(self) -> list[Path]:
        """The files its tables are made from: both masks and, with lesions, their maps."""
        paths = [self.seg.path, self.reference.path]
        if self.lesions is not None:
            paths += self.lesions.paths()
        return paths

    def row_keys(self) -> dict[str, Any]:
        """The columns that name the acquisition in each row of its tables."""
        sub, ses, ce = self.key
        return {"participant_id": f"sub-{sub}", "session": ses, "phase": ce}


def _lesion_files(lesions_dir: Path, ent: Entities) -> tuple[Path, Path]:
    image = derivative_path(
        lesions_dir, ent, desc=LESIONS_DESC, suffix=SEG_SUFFIX, extension=".nii.gz"
    )
    table = derivative_path(
        lesions_dir, ent, desc=LESIONS_DESC, suffix=SEG_SUFFIX, extension=".tsv"
    )
    return image, table


def find_items(
    seg_dir: Path,
    reference_dir: Path,
    participants: Sequence[str],
    *,
    lesions_dir: Path | None = None,
    reference_lesions_dir: Path | None = None,
) -> list[Item]:
    """Acquisitions of either folder for ``participants``, paired by (sub, ses, ce)."""
    segs = {
        a.entities.key: a for a in find_files(seg_dir, suffix=SEG_SUFFIX, participants=participants)
    }
    refs = {
        a.entities.key: a
        for a in find_files(reference_dir, suffix=SEG_SUFFIX, participants=participants)
    }
    items = []
    for key in sorted(set(segs) | set(refs), key=lambda k: (k[0], k[1] or "", k[2] or "")):
        item = Item(key, segs.get(key), refs.get(key))
        if item.seg is None:
            item.missing.append(f"no segmentation {item.entities.name} in {seg_dir}")
        if item.reference is None:
            item.missing.append(
                f"no reference segmentation {item.entities.name} in {reference_dir}"
            )
        if lesions_dir is not None and reference_lesions_dir is not None:
            found = []
            for folder, what in (
                (lesions_dir, "lesion map"),
                (reference_lesions_dir, "reference lesion map"),
            ):
                image, table = _lesion_files(folder, item.entities)
                for path, kind in ((image, what), (table, what.replace("map", "table"))):
                    if not path.is_file():
                        item.missing.append(f"no {kind} {path.name} in {folder}")
                found += [image, table]
            item.lesions = LesionInputs(*found)
        items.append(item)
    for label in participants:
        if not any(item.key[0] == label for item in items):
            items.append(
                Item(
                    (label, None, None),
                    None,
                    None,
                    missing=[f"no _dseg.nii.gz for sub-{label} in either folder"],
                )
            )
    return items


def select(seg_dir: Path, reference_dir: Path, participants: Sequence[str] | None) -> list[str]:
    """Participants of either folder (all, or the requested ones)."""
    for folder, what in ((seg_dir, "segmentation"), (reference_dir, "reference")):
        if not Path(folder).is_dir():
            raise InputError(
                f"the {what} folder does not exist",
                path=folder,
                fix="give a folder of sub-*/anat/*_dseg.nii.gz",
            )
    available = sorted(set(participant_folders(seg_dir)) | set(participant_folders(reference_dir)))
    if not available:
        raise InputError(
            "no sub-* participant folders found",
            path=seg_dir,
            fix="give the folders that segment, import-mask or synth wrote",
        )
    return select_participants(
        available, list(participants) if participants else None, where=seg_dir
    )
