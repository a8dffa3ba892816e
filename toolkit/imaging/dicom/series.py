"""DICOM series: find them in a folder tree and choose the one to import.

:func:`find_series` walks a folder tree, reads the headers only
(``stop_before_pixels``) and groups the files by SeriesInstanceUID. Files that
are not DICOM, and DICOMDIR index files, are skipped quietly.
:func:`select_series` takes the series named by its UID, else the largest axial
CT series.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from metcli.core.errors import DicomError, InputError, UsageError
from metcli.imaging.dicom.headers import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    SliceHeader,
    read_header,
)

log = logging.getLogger(__name__)

#: ImageType values that mark scouts/localisers (topograms, scanograms).
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})
#: Largest difference between direction cosines of slices of one stack.
ORIENTATION_TOLERANCE = 1e-4
#: The fewest slices a series needs to be imported as a 3D volume.
MIN_SLICES = 2


def orientation_name(orientation: Sequence[float] | None) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the patient axis closest to the slice normal."""
    if orientation is None:
        return "unknown orientation"
    normal = np.cross(orientation[:3], orientation[3:])
    if np.linalg.norm(normal) < 1e-6:
        return "unknown orientation"
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


@dataclass
class SeriesInfo:
    """One series found in a folder tree: its files' headers and what kind of series it is."""

    uid: str
    slices: list[SliceHeader]
    root: Path | None = None

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.slices]

    @property
    def n_files(self) -> int:
        return len(self.slices)

    def _first(self, attribute: str):
        for item in self.slices:
            value = getattr(item, attribute)
            if value not in (None, "", ()):
                return value
        return getattr(self.slices[0], attribute)

    @property
    def modality(self) -> str:
        return self._first("modality") or "?"

    @property
    def description(self) -> str:
        return self._first("description") or ""

    @property
    def sop_class_uid(self) -> str:
        return self._first("sop_class_uid") or ""

    @property
    def image_type(self) -> tuple[str, ...]:
        return tuple(sorted({t for s in self.slices for t in s.image_type}))

    @property
    def is_localizer(self) -> bool:
        return bool(LOCALIZER_TYPES.intersection(self.image_type))

    @property
    def folder(self) -> Path:
        """The deepest folder that holds all of the series' files."""
        parents = [str(p.parent) for p in self.files]
        return Path(os.path.commonpath(parents)) if parents else Path(".")

    @property
    def orientation(self) -> str:
        """``axial``, ``coronal``, ``sagittal``, ``mixed orientations``, ``unknown orientation``."""
        orientations = [s.orientation for s in self.slices]
        if any(o is None for o in orientations):
            return "unknown orientation"
        first = np.asarray(orientations[0])
        if any(np.max(np.abs(np.asarray(o) - first)) > ORIENTATION_TOLERANCE for o in orientations):
            return "mixed orientations"
        return orientation_name(orientations[0])

    @property
    def not_a_candidate(self) -> str | None:
        """Why this series is not taken automatically (None: an axial CT image series)."""
        if self.modality != "CT":
            return f"modality {self.modality}"
        if (
            self.sop_class_uid == ENHANCED_CT_IMAGE_STORAGE
            or max(s.frames for s in self.slices) > 1
        ):
            return "enhanced multi-frame CT"
        if self.sop_class_uid and self.sop_class_uid != CT_IMAGE_STORAGE:
            return "not a CT image (secondary capture, report or other object)"
        if self.is_localizer:
            return "localizer"
        if self.orientation == "mixed orientations":
            return "slices of mixed orientations"
        if self.orientation != "axial":
            return f"{self.orientation} (not axial)"
        if self.n_files < MIN_SLICES:
            return "single slice"
        return None

    def describe(self) -> str:
        """One line: UID (modality, description, number of files, kind)."""
        name = self.uid or "(no SeriesInstanceUID)"
        kind = "localizer" if self.is_localizer else self.orientation
        where = ""
        if not self.uid and self.root is not None:
            where = f", folder {relative_text(self.folder, self.root)}"
        return (
            f"{name} ({self.modality}, {self.description or 'no description'!r}, "
            f"{self.n_files} file{'s' if self.n_files != 1 else ''}, {kind}{where})"
        )


def relative_text(path: Path, root: Path) -> str:
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).name
    return rel if rel != "." else "."


def _walk_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` in a stable order, following folder links once."""
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file():
                yield path


def group_series(headers: Iterable[SliceHeader], *, root: Path | None = None) -> list[SeriesInfo]:
    """Group headers by SeriesInstanceUID (files without one: by folder).

    Sorted with the most files first, then by UID.
    """
    groups: dict[tuple[str, str], list[SliceHeader]] = {}
    for header in headers:
        key = (header.series_uid, "" if header.series_uid else str(header.path.parent))
        groups.setdefault(key, []).append(header)
    series = [SeriesInfo(uid=key[0], slices=items, root=root) for key, items in groups.items()]
    series.sort(key=lambda s: (-s.n_files, s.uid, str(s.folder)))
    return series


def find_series(dicom_dir: str | Path) -> list[SeriesInfo]:
    """Every DICOM series under ``dicom_dir`` (headers only), the largest first.

    Files that are not DICOM and DICOMDIR files are skipped quietly. Raises
    :class:`DicomError` when the folder holds no DICOM file at all.
    """
    root = Path(dicom_dir)
    if not root.is_dir():
        raise InputError(
            "DICOM folder not found",
            path=root,
            fix="give the folder that holds the DICOM files of the CT series",
        )
    headers = []
    skipped = 0
    for path in _walk_files(root):
        header = read_header(path)
        if header is None:
            skipped += 1
            continue
        headers.append(header)
    if skipped:
        log.debug("%s: %d file(s) that are not DICOM images skipped", root, skipped)
    if not headers:
        raise DicomError(
            "no DICOM image files found in this folder or below it",
            path=root,
            fix="give the folder that holds the DICOM files of the CT series",
        )
    series = group_series(headers, root=root)
    log.info("%s: %d series found: %s", root, len(series), "; ".join(s.describe() for s in series))
    return series


def _listing(series: Sequence[SeriesInfo], limit: int = 20) -> str:
    shown = "; ".join(s.describe() for s in series[:limit])
    if len(series) > limit:
        shown += f"; and {len(series) - limit} more"
    return shown


def single_slice_error(
    series: SeriesInfo, others: Sequence[SeriesInfo] = (), *, where: str | Path | None = None
) -> DicomError:
    """The one error for a series of a single slice, naming an importable series beside it."""
    name = relative_text(series.files[0], series.root) if series.root else series.files[0].name
    what = (
        f"series {series.describe()} has only one slice ({name}); a 3D volume needs at "
        f"least {MIN_SLICES} slices"
    )
    fix = (
        "export the full series (every slice of the scan) from the scanner or PACS; a "
        "localiser/scout or a single key image is not a volume"
    )
    usable = sorted(
        (s for s in others if s is not series and s.not_a_candidate is None),
        key=lambda s: -s.n_files,
    )
    if usable:
        what += f"; the folder also holds an axial CT series: {usable[0].describe()}"
        fix = f"import that series instead (--series-uid {usable[0].uid}), or {fix}"
    return DicomError(what, path=where, fix=fix)


def _no_candidate_error(series: Sequence[SeriesInfo], where) -> DicomError:
    """Why no series of the folder can be imported; single-slice CT series said as such."""
    ct = [s for s in series if s.modality == "CT"]
    single = [s for s in ct if s.n_files < MIN_SLICES]
    if single and len(single) == len(ct):
        if len(single) == 1:
            return single_slice_error(single[0], series, where=where)
        return DicomError(
            f"the {len(single)} CT series found have only one slice each "
            f"({_listing(single, limit=5)}); a 3D volume needs at least {MIN_SLICES} slices "
            "of one series",
            path=where,
            fix="export the full series (every slice of the scan, with one SeriesInstanceUID) "
            "from the scanner or PACS; a localiser/scout or a key image is not a volume",
        )
    return DicomError(
        "no axial CT image series found; found: "
        + "; ".join(f"{s.describe()}: {s.not_a_candidate}" for s in series[:20]),
        path=where,
        fix="give the folder of an axial CT series, or name a series with --series-uid",
    )


def select_series(
    series: Sequence[SeriesInfo], series_uid: str | None = None, *, where: str | Path | None = None
) -> SeriesInfo:
    """The series to import: the one named by ``series_uid``, else the largest axial CT series.

    An unknown UID, or two axial CT series of the same largest size, is a
    :class:`UsageError` listing the series found; no axial CT series at all is a
    :class:`DicomError`, and so is a CT series of a single slice (named by UID, or the
    only CT series there is), with the importable series beside it if there is one.
    """
    if not series:
        raise DicomError(
            "no DICOM series found",
            path=where,
            fix="give the folder that holds the DICOM files of the CT series",
        )
    if series_uid is not None:
        wanted = series_uid.strip()
        for item in series:
            if item.uid and item.uid == wanted:
                if item.modality == "CT" and item.n_files < MIN_SLICES:
                    raise single_slice_error(item, series, where=where)
                log.info("series %s chosen by --series-uid", item.describe())
                return item
        raise UsageError(
            f"--series-uid {series_uid!r} is not a series of this folder; found: "
            f"{_listing(series)}",
            path=where,
            fix="copy one of the UIDs listed, or leave --series-uid out to take the "
            "largest axial CT series",
        )
    candidates = [s for s in series if s.not_a_candidate is None]
    if not candidates:
        raise _no_candidate_error(series, where)
    candidates.sort(key=lambda s: -s.n_files)
    chosen = candidates[0]
    if len(candidates) > 1 and candidates[1].n_files == chosen.n_files:
        tied = [c for c in candidates if c.n_files == chosen.n_files]
        raise UsageError(
            f"{len(tied)} axial CT series have the same number of slices "
            f"({chosen.n_files}), so the largest is not clear: {_listing(tied)}",
            path=where,
            fix="name the series to import with --series-uid",
        )
    others = [s for s in series if s is not chosen]
    log.info("chosen: the largest axial CT series, %s", chosen.describe())
    for other in others:
        reason = other.not_a_candidate
        if reason is None:
            log.warning(
                "another axial CT series is in the folder and was not imported: %s "
                "(name it with --series-uid to import it instead)",
                other.describe(),
            )
        else:
            log.info("not imported: %s: %s", other.describe(), reason)
    return chosen
