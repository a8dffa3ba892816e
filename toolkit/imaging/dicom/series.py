"""DICOM CT series: find them, check them, sort them, read them in HU.

:mod:`metcli.imaging.dicom.import_dicom` (the ``import-dicom`` command) writes them as NIfTI.

Two functions are meant for reuse:

- :func:`find_series` walks a folder tree, reads the headers only
  (``stop_before_pixels``) and groups the files by SeriesInstanceUID. Files that
  are not DICOM, and DICOMDIR index files, are skipped quietly.
- :func:`read_ct_series` checks one series and converts it to a SimpleITK image
  in Hounsfield units, with :class:`VolumeInfo` describing how (file order,
  slice positions, SOPInstanceUIDs per slice: what a mask importer needs).

Rules of the conversion (each checked on the headers before any pixel is decoded):

- Slices are sorted by their position along the slice normal (the cross
  product of the row and column direction cosines of ImageOrientationPatient,
  dotted with ImagePositionPatient), never by file name, InstanceNumber or
  SliceThickness. The slice spacing written is the measured step between
  positions; SliceThickness is only recorded as stated.
- A series must be CT, have at least two slices, one orientation, one matrix
  size and pixel spacing, no two slices at the same position, evenly spaced
  slices (within ``max(0.01 mm, 1 % of the step)``; a missing slice is reported
  with the two slices around the gap) and slices stacked along their normal (no
  gantry tilt, which would need resampling). Anything else is a
  :class:`~metcli.core.errors.DicomError`: nothing is resampled or guessed.
- Geometry: origin = ImagePositionPatient of the first sorted slice;
  direction = (row cosine, column cosine, normal); spacing = (PixelSpacing[1],
  PixelSpacing[0], step), PixelSpacing being (between rows, between columns).
  The image's voxel positions are checked against every slice's
  ImagePositionPatient before it is returned.
- Values: RescaleSlope/RescaleIntercept are applied slice by slice (they may
  differ between slices). The image is int16 when every value is an integer
  that fits, float32 otherwise. Padding (PixelPaddingValue, e.g. -3024 HU
  outside the reconstruction circle) is kept as it is: the conversion stays
  faithful (identical to other DICOM readers), the padding lies outside the
  body, and the value is recorded in the sidecar as ``PixelPaddingValueHU``.
- Pixel data are decoded by pydicom (with pylibjpeg-openjpeg for JPEG 2000);
  transfer syntaxes pydicom has no plug-in for (JPEG lossless process 14 is
  common) are decoded by SimpleITK's GDCM. A syntax neither can decode is a
  DicomError naming it and the packages to install.

Privacy: :func:`acquisition_metadata` keeps non-identifying acquisition metadata
only; what the import records is described in :mod:`metcli.imaging.dicom.import_dicom`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from metcli.core.errors import DicomError, InputError, UsageError
log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: ImageType values that mark scouts/localisers (topograms, scanograms).
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})

#: Largest difference between direction cosines of slices of one stack.
ORIENTATION_TOLERANCE = 1e-4
#: Slice positions may deviate from a regular grid by max(this, fraction * step) mm.
POSITION_TOLERANCE_MM = 0.01
POSITION_TOLERANCE_FRACTION = 0.01
#: Largest in-plane offset between slices (gantry tilt), as a fraction of a pixel.
INPLANE_TOLERANCE_FRACTION = 0.05


INT16_MIN, INT16_MAX = -32768, 32767


# ----------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class SliceHeader:
    """What metcli needs from one DICOM file's header."""

    path: Path
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    image_type: tuple[str, ...]
    description: str
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6)
    position: tuple[float, ...] | None  # ImagePositionPatient (3)
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, ...] | None  # (between rows, between columns)
    frames: int
    samples_per_pixel: int
    transfer_syntax: str
    slope: float | None
    intercept: float | None


def _floats(value, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = list(value) if not isinstance(value, (str, bytes)) else [value]
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(out) != count or not all(np.isfinite(out)):
        return None
    return out


def _float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _values(value) -> list[str]:
    """The values of a possibly multi-valued element as stripped texts."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, bytes)) else list(value) \
        if hasattr(value, "__iter__") else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _looks_like_dicom_without_preamble(path: Path) -> bool:
    """Old files without the 128-byte preamble usually start with group 0x0008."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head[:2] in (b"\x08\x00", b"\x02\x00")


def read_dataset(path: Path, *, stop_before_pixels: bool):
    """A pydicom dataset, or None for a file that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        if not _looks_like_dicom_without_preamble(path):
            return None
    except OSError as exc:
        log.warning("%s: cannot read the file (%s); skipped", path, exc.strerror or exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged header: skip, but say so
        log.warning("%s: cannot read the DICOM header (%s); skipped", path, exc)
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception:  # noqa: BLE001 - not DICOM after all
        return None
    return ds if "SOPClassUID" in ds and "Modality" in ds else None


def read_header(path: str | Path) -> SliceHeader | None:
    """The header of one file, or None when it is not a DICOM image file (or a DICOMDIR)."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return None
    ds = read_dataset(path, stop_before_pixels=True)
    if ds is None:
        return None
    meta = getattr(ds, "file_meta", None)
    media_class = _text(meta.get("MediaStorageSOPClassUID")) if meta is not None else ""
    if media_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return None
    transfer_syntax = _text(meta.get("TransferSyntaxUID")) if meta is not None else ""
    image_type = tuple(v.upper() for v in _values(ds.get("ImageType")))
    return SliceHeader(
        path=path,
        series_uid=_text(ds.get("SeriesInstanceUID")),
        sop_instance_uid=_text(ds.get("SOPInstanceUID")),
        sop_class_uid=_text(ds.get("SOPClassUID")) or media_class,
        modality=_text(ds.get("Modality")).upper(),
        image_type=image_type,
        description=_text(ds.get("SeriesDescription")),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        frames=_int(ds.get("NumberOfFrames")) or 1,
        samples_per_pixel=_int(ds.get("SamplesPerPixel")) or 1,
        transfer_syntax=transfer_syntax,
        slope=_float(ds.get("RescaleSlope")),
        intercept=_float(ds.get("RescaleIntercept")),
    )


# ----------------------------------------------------------------------------- series
def _orientation_name(orientation: Sequence[float] | None) -> str:
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
        return _orientation_name(orientations[0])

    @property
    def not_a_candidate(self) -> str | None:
        """Why this series is not taken automatically (None: an axial CT image series)."""
        if self.modality != "CT":
            return f"modality {self.modality}"
        if (self.sop_class_uid == ENHANCED_CT_IMAGE_STORAGE
                or max(s.frames for s in self.slices) > 1):
            return "enhanced multi-frame CT"
        if self.sop_class_uid and self.sop_class_uid != CT_IMAGE_STORAGE:
            return "not a CT image (secondary capture, report or other object)"
        if self.is_localizer:
            return "localizer"
        if self.orientation == "mixed orientations":
            return "slices of mixed orientations"
        if self.orientation != "axial":
            return f"{self.orientation} (not axial)"
        if self.n_files < 2:
            return "single slice"
        return None

    def describe(self) -> str:
        """One line: UID (modality, description, number of files, kind)."""
        name = self.uid or "(no SeriesInstanceUID)"
        kind = "localizer" if self.is_localizer else self.orientation
        where = ""
        if not self.uid and self.root is not None:
            where = f", folder {relative_text(self.folder, self.root)}"
        return (f"{name} ({self.modality}, {self.description or 'no description'!r}, "
                f"{self.n_files} file{'s' if self.n_files != 1 else ''}, {kind}{where})")


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
        raise InputError("DICOM folder not found", path=root, fix="give the folder that holds "
                         "the DICOM files of the CT series")
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
        raise DicomError("no DICOM image files found in this folder or below it", path=root,
                         fix="give the folder that holds the DICOM files of the CT series")
    series = group_series(headers, root=root)
    log.info("%s: %d series found: %s", root, len(series),
             "; ".join(s.describe() for s in series))
    return series


def _listing(series: Sequence[SeriesInfo], limit: int = 20) -> str:
    shown = "; ".join(s.describe() for s in series[:limit])
    if len(series) > limit:
        shown += f"; and {len(series) - limit} more"
    return shown


def select_series(series: Sequence[SeriesInfo], series_uid: str | None = None, *,
                  where: str | Path | None = None) -> SeriesInfo:
    """The series to import: the one named by ``series_uid``, else the largest axial CT series.

    An unknown UID, or two axial CT series of the same largest size, is a
    :class:`UsageError` listing the series found; no axial CT series at all is a
    :class:`DicomError`.
    """
    if not series:
        raise DicomError("no DICOM series found", path=where,
                         fix="give the folder that holds the DICOM files of the CT series")
    if series_uid is not None:
        wanted = series_uid.strip()
        for item in series:
            if item.uid and item.uid == wanted:
                log.info("series %s chosen by --series-uid", item.describe())
                return item
        raise UsageError(f"--series-uid {series_uid!r} is not a series of this folder; found: "
                         f"{_listing(series)}", path=where,
                         fix="copy one of the UIDs listed, or leave --series-uid out to take the "
                             "largest axial CT series")
    candidates = [s for s in series if s.not_a_candidate is None]
    if not candidates:
        raise DicomError(
            "no axial CT image series found; found: "
            + "; ".join(f"{s.describe()}: {s.not_a_candidate}" for s in series[:20]),
            path=where,
            fix="give the folder of an axial CT series, or name a series with --series-uid")
    candidates.sort(key=lambda s: -s.n_files)
    chosen = candidates[0]
    if len(candidates) > 1 and candidates[1].n_files == chosen.n_files:
        tied = [c for c in candidates if c.n_files == chosen.n_files]
        raise UsageError(f"{len(tied)} axial CT series have the same number of slices "
                         f"({chosen.n_files}), so the largest is not clear: {_listing(tied)}",
                         path=where, fix="name the series to import with --series-uid")
    others = [s for s in series if s is not chosen]
    log.info("chosen: the largest axial CT series, %s", chosen.describe())
    for other in others:
        reason = other.not_a_candidate
        if reason is None:
            log.warning("another axial CT series is in the folder and was not imported: %s "
                        "(name it with --series-uid to import it instead)", other.describe())
        else:
            log.info("not imported: %s: %s", other.describe(), reason)
    return chosen


# ----------------------------------------------------------------------------- geometry
@dataclass
class StackGeometry:
    """Where the slices of a series lie, in the order of the output volume."""

    slices: list[SliceHeader]  # sorted along the normal
    positions: np.ndarray  # mm along the normal, ascending
    step: float  # mm between slices
    spacing: tuple[float, float, float]  # x (between columns), y (between rows), z
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major, columns = row cosine, column cosine, normal
    rows: int
    columns: int


def _name(header: SliceHeader, root: Path | None) -> str:
    return relative_text(header.path, root) if root is not None else header.path.name


def stack_geometry(series: SeriesInfo) -> StackGeometry:
    """Check a series' headers and sort its slices along the slice normal.

    Raises :class:`DicomError` for anything that would make the volume unfaithful
    (see the module docstring).
    """
    where = series.folder
    root = series.root
    slices = series.slices
    if series.modality != "CT":
        raise DicomError(f"the series is {series.modality}, not CT; metcli imports CT only",
                         path=where, fix="give a CT series (or name one with --series-uid)")
    if series.sop_class_uid == ENHANCED_CT_IMAGE_STORAGE or any(s.frames > 1 for s in slices):
        raise DicomError("the series is an enhanced multi-frame CT object; metcli reads one "
                         "slice per file", path=where,
                         fix="export the series as classic single-frame CT images")
    if len(slices) < 2:
        raise DicomError(f"the series has a single slice ({_name(slices[0], root)}): a 2D image, "
                         "not a volume", path=where,
                         fix="give the folder of a CT volume (a stack of axial slices)")
    for item in slices:
        missing = [tag for tag, value in (("ImageOrientationPatient", item.orientation),
                                          ("ImagePositionPatient", item.position),
                                          ("PixelSpacing", item.pixel_spacing),
                                          ("Rows", item.rows), ("Columns", item.columns),
                                          ("RescaleSlope", item.slope),
                                          ("RescaleIntercept", item.intercept))
                   if value is None]
        if missing:
            raise DicomError(f"{_name(item, root)} lacks {', '.join(missing)} (or holds an "
                             "invalid value)", path=where,
                             fix="export the series again with complete CT image headers")
        if item.samples_per_pixel != 1:
            raise DicomError(f"{_name(item, root)} has {item.samples_per_pixel} samples per "
                             "pixel (a colour image), not a CT slice", path=where,
                             fix="give the original CT series, not a rendered one")
    first = slices[0]
    reference = np.asarray(first.orientation)
    for item in slices[1:]:
        if np.max(np.abs(np.asarray(item.orientation) - reference)) > ORIENTATION_TOLERANCE:
            raise DicomError(
                f"the series mixes slice orientations: {_name(first, root)} has "
                f"ImageOrientationPatient {fmt(first.orientation)} "
                f"({_orientation_name(first.orientation)}) and {_name(item, root)} "
                f"{fmt(item.orientation)} "
                f"({_orientation_name(item.orientation)})", path=where,
                fix="give a series of parallel slices (a localizer or a second reconstruction "
                    "may share this SeriesInstanceUID: move those files out)")
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise DicomError(f"slices differ in size: {_name(first, root)} is "
                             f"{first.columns}x{first.rows} and {_name(item, root)} "
                             f"{item.columns}x{item.rows} pixels", path=where,
                             fix="give the files of one reconstruction only")
        spacing_change = np.abs(np.subtract(item.pixel_spacing, first.pixel_spacing))
        if np.max(spacing_change) > 1e-4 * max(first.pixel_spacing):
            raise DicomError(f"slices differ in PixelSpacing: {_name(first, root)} has "
                             f"{fmt(first.pixel_spacing)} mm and {_name(item, root)} "
                             f"{fmt(item.pixel_spacing)} mm", path=where,
                             fix="give the files of one reconstruction only")
    row_cosine = np.asarray(first.orientation[:3], dtype=float)
    col_cosine = np.asarray(first.orientation[3:], dtype=float)
    norms = np.linalg.norm(row_cosine), np.linalg.norm(col_cosine)
    if min(norms) < 1e-6 or abs(float(row_cosine @ col_cosine)) > 1e-3 * norms[0] * norms[1]:
        raise DicomError(f"{_name(first, root)}: ImageOrientationPatient {fmt(first.orientation)} "
                         "is not two perpendicular directions", path=where,
                         fix="repair the header or export the series again")
    row_cosine, col_cosine = row_cosine / norms[0], col_cosine / norms[1]
    col_cosine = col_cosine - (col_cosine @ row_cosine) * row_cosine
    col_cosine /= np.linalg.norm(col_cosine)
    normal = np.cross(row_cosine, col_cosine)

    ordered = sorted(slices, key=lambda s: (float(np.dot(normal, s.position)), str(s.path)))
    positions = np.array([float(np.dot(normal, s.position)) for s in ordered])
    gaps = np.diff(positions)
    for index, gap in enumerate(gaps):
        if gap < POSITION_TOLERANCE_MM:
            a, b = ordered[index], ordered[index + 1]
            raise DicomError(f"{_name(a, root)} and {_name(b, root)} lie at the same position "
                             f"({positions[index]:.3f} mm along the slice normal)", path=where,
                             fix="the folder holds a slice twice (a copy, or two acquisitions "
                                 "sharing one SeriesInstanceUID): remove the duplicates")
    typical = float(np.median(gaps))
    tolerance = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * typical)
    uneven = np.flatnonzero(np.abs(gaps - typical) > tolerance)
    if uneven.size:
        index = int(uneven[0])
        gap = float(gaps[index])
        a, b = ordered[index], ordered[index + 1]
        ratio = gap / typical
        hint = ""
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            missing = int(round(ratio)) - 1
            hint = f" ({missing} slice{'s' if missing > 1 else ''} missing?)"
        more = f", and {uneven.size - 1} other uneven gap(s)" if uneven.size > 1 else ""
        raise DicomError(
            f"slices {index + 1} and {index + 2} ({_name(a, root)} and {_name(b, root)}) are "
            f"{gap:.4g} mm apart where the others are {typical:.4g} mm{hint}{more}; the slices "
            "must be evenly spaced", path=where,
            fix="give the complete series (copy the missing files); a series with varying "
                "slice spacing has to be resampled by another tool first")
    step = float((positions[-1] - positions[0]) / (len(positions) - 1))
    drift = np.abs(positions - (positions[0] + step * np.arange(len(positions))))
    if float(np.max(drift)) > tolerance:
        raise DicomError(f"the slice positions drift from a regular grid by up to "
                         f"{float(np.max(drift)):.4g} mm (step {step:.4g} mm)", path=where,
                         fix="resample the series to even spacing with another tool first")
    origin = np.asarray(ordered[0].position, dtype=float)
    inplane_tolerance = INPLANE_TOLERANCE_FRACTION * min(first.pixel_spacing)
    for item in ordered[1:]:
        offset = np.asarray(item.position) - origin
        inplane = offset - float(offset @ normal) * normal
        if float(np.linalg.norm(inplane)) > max(inplane_tolerance, POSITION_TOLERANCE_MM):
            raise DicomError(
                f"the slices are not stacked along their normal: {_name(item, root)} is shifted "
                f"{float(np.linalg.norm(inplane)):.3g} mm sideways from {_name(ordered[0], root)} "
                "(gantry tilt or a sheared stack)", path=where,
                fix="correct the gantry tilt with a converter that resamples (dcm2niix does), "
                    "or choose another series")
    direction = np.column_stack([row_cosine, col_cosine, normal])
    row_spacing, col_spacing = first.pixel_spacing
    return StackGeometry(
        slices=ordered, positions=positions, step=step,
        spacing=(float(col_spacing), float(row_spacing), step),
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction.ravel()),
        rows=int(first.rows), columns=int(first.columns))


def fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


# ----------------------------------------------------------------------------- pixels
@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK prints warnings straight to stderr; keep them out of the one-line error contract."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _transfer_syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown transfer syntax"
    return f"{name} ({uid})" if name != uid else uid


def _pydicom_decoder(uid: str):
    """(available?, what is missing) for pydicom's decoders of a transfer syntax."""
    from pydicom.pixels import get_decoder

    if not uid:
        return True, []
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return False, []
    return bool(decoder.is_available), list(getattr(decoder, "missing_dependencies", []) or [])


def _decode_with_gdcm(path: Path, rows: int, columns: int) -> np.ndarray:
    """HU values of one slice through SimpleITK's GDCM (which applies the rescale itself)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    with _quiet_itk():
        image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    if array.size != rows * columns:
        raise RuntimeError(f"GDCM returned {array.size} pixels, expected {rows}x{columns}")
    return array.reshape(rows, columns)


def _decode_slice(header: SliceHeader, rows: int, columns: int, root: Path | None,
                  where: Path) -> tuple[np.ndarray, str]:
    """HU values of one slice (float64 or integer array) and the decoder used."""
    available, missing = _pydicom_decoder(header.transfer_syntax)
    problem = None
    if available:
        try:
            ds = read_dataset(header.path, stop_before_pixels=False)
            if ds is None or "PixelData" not in ds:
                raise DicomError(f"{_name(header, root)} holds no pixel data", path=where,
                                 fix="export the series again with its images")
            stored = ds.pixel_array
            if stored.shape != (rows, columns):
                raise DicomError(f"{_name(header, root)}: pixel data of shape {stored.shape} "
                                 f"where Rows x Columns is {rows}x{columns}", path=where,
                                 fix="export the series again")
            slope, intercept = header.slope, header.intercept
            if float(slope).is_integer() and float(intercept).is_integer():
                values = stored.astype(np.int64) * int(slope) + int(intercept)
            else:
                values = stored.astype(np.float64) * slope + intercept
            return values, "pydicom"
        except DicomError:
            raise
        except Exception as exc:  # noqa: BLE001 - try GDCM before giving up
            problem = f"pydicom: {exc}"
    try:
        return _decode_with_gdcm(header.path, rows, columns), "gdcm"
    except Exception as exc:  # noqa: BLE001
        gdcm_problem = _short_reason(exc)
    syntax = _transfer_syntax_name(header.transfer_syntax)
    if problem is None:
        raise DicomError(
            f"{_name(header, root)}: cannot decode pixel data compressed as {syntax}: pydicom has "
            f"no decoder plug-in for it installed and SimpleITK/GDCM failed ({gdcm_problem})",
            path=where, fix=_install_hint(missing))
    raise DicomError(f"{_name(header, root)}: cannot decode the pixel data ({syntax}): "
                     f"{' '.join(problem.split())[:200]}", path=where,
                     fix="the file may be damaged or truncated: export or copy the series again")


#: pydicom names some plug-ins by their import name; pip knows them by another.
_PIP_NAMES = {"gdcm": "python-gdcm"}


def _install_hint(missing: Sequence[str]) -> str:
    """'pip install ...' alternatives from pydicom's list of missing decoder dependencies."""
    commands = []
    for item in missing:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        _plugin, _sep, requirement = item.partition(" - requires ")
        packages = []
        for spec in (requirement or _plugin).split(" and "):
            name = re.split(r"[<>=!~ ]", spec.strip(), maxsplit=1)[0]
            packages.append(spec.strip().replace(name, _PIP_NAMES.get(name, name), 1))
        commands.append("pip install " + " ".join(f"'{p}'" if any(c in p for c in "<>=") else p
                                                 for p in packages))
    if not commands:
        return ("install a DICOM decoder for this transfer syntax (python-gdcm, or pylibjpeg "
                "with its plug-ins), or export the series uncompressed")
    return "install a decoder: " + "; or ".join(commands) + "; or export the series uncompressed"


def _short_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if "():" in text:  # ITK messages: "<file>:<line> (): the reason"
        text = text.rsplit("():", 1)[1].strip()
    return text[-160:] or type(exc).__name__


@dataclass
class VolumeInfo:
    """How a series became a volume: what a caller (or a mask importer) needs to know."""

    series: SeriesInfo
    files: list[Path]  # in slice order (index k of the volume's third axis)
    sop_instance_uids: list[str]  # in slice order
    positions_mm: list[float]  # along the slice normal, ascending
    slice_step_mm: float
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    transfer_syntax: str
    decoders: list[str]
    dtype: str
    padding_hu: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _fits_int16(values: np.ndarray) -> bool:
    if not np.issubdtype(values.dtype, np.integer) and not bool(np.all(values == np.rint(values))):
        return False
    return INT16_MIN <= float(values.min()) and float(values.max()) <= INT16_MAX


class _VolumeBuilder:
    """Collects slices as int16 while every value is an integer that fits, else float32."""

    def __init__(self, shape: tuple[int, int, int]):
        self.volume = np.empty(shape, dtype=np.int16)

    def put(self, index: int, values: np.ndarray) -> None:
        if self.volume.dtype == np.int16 and not _fits_int16(values):
            self.volume = self.volume.astype(np.float32)
        if self.volume.dtype == np.int16:
            self.volume[index] = np.rint(values) if values.dtype.kind == "f" else values
        else:
            self.volume[index] = values


def _build_image(volume: np.ndarray, geometry: StackGeometry, where: Path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    # Verify: every slice's first voxel lies where its ImagePositionPatient says.
    limit = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * geometry.step) + \
        max(INPLANE_TOLERANCE_FRACTION * min(geometry.spacing[:2]), POSITION_TOLERANCE_MM)
    for index, header in enumerate(geometry.slices):
        point = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, index)))
        error = float(np.linalg.norm(point - np.asarray(header.position)))
        if error > limit:
            raise DicomError(f"internal check failed: slice {index + 1} would lie {error:.3g} mm "
                             "from its ImagePositionPatient", path=where,
                             fix="report this as a metcli bug with the series' headers")
    return image


def _series_from(source, series_uid: str | None) -> SeriesInfo:
    if isinstance(source, SeriesInfo):
        if series_uid is not None and source.uid != series_uid.strip():
            raise UsageError(f"series_uid {series_uid!r} does not name the series given "
                             f"({source.describe()})")
        return source
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        return select_series(find_series(source), series_uid, where=source)
    if isinstance(source, (str, os.PathLike)):
        paths = [Path(source)]
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise DicomError("no DICOM files given", fix="give the files or the folder of a CT series")
    headers = []
    for path in paths:
        if not path.is_file():
            raise InputError("file not found", path=path, fix="check the path")
        header = read_header(path)
        if header is None:
            raise DicomError("not a DICOM image file", path=path,
                             fix="give DICOM image files only (or their folder)")
        headers.append(header)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return select_series(group_series(headers, root=root), series_uid, where=root)


def read_ct_series(files_or_dir, series_uid: str | None = None):
    """Read one CT series as a SimpleITK image in HU, sorted and checked.

    Args:
        files_or_dir: a folder (searched with :func:`find_series`), a list of
            DICOM files, or a :class:`SeriesInfo`.
        series_uid: the SeriesInstanceUID to read; default the largest axial CT series.

    Returns:
        ``(image, info)``: the image (int16 or float32, LPS world coordinates as
        DICOM) and a :class:`VolumeInfo`.
    """
    series = _series_from(files_or_dir, series_uid)
    geometry = stack_geometry(series)
    where = series.folder
    builder = _VolumeBuilder((len(geometry.slices), geometry.rows, geometry.columns))
    decoders = set()
    for index, header in enumerate(geometry.slices):
        values, decoder = _decode_slice(header, geometry.rows, geometry.columns, series.root, where)
        builder.put(index, values)
        decoders.add(decoder)
    volume = builder.volume
    image = _build_image(volume, geometry, where)
    first = geometry.slices[0]
    padding = _padding_hu(first)
    info = VolumeInfo(
        series=series,
        files=[s.path for s in geometry.slices],
        sop_instance_uids=[s.sop_instance_uid for s in geometry.slices],
        positions_mm=[float(p) for p in geometry.positions],
        slice_step_mm=geometry.step,
        spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction,
        transfer_syntax=first.transfer_syntax,
        decoders=sorted(decoders),
        dtype=str(volume.dtype),
        padding_hu=padding,
        metadata=acquisition_metadata(first.path, step=geometry.step, padding_hu=padding,
                                      series_uid=series.uid),
    )
    log.info("%s: %d slices, %s voxels of %s mm, %s, decoded by %s", where, volume.shape[0],
             "x".join(map(str, image.GetSize())), fmt(geometry.spacing), info.dtype,
             ", ".join(info.decoders))
    return image, info


def _padding_hu(header: SliceHeader) -> float | None:
    ds = read_dataset(header.path, stop_before_pixels=True)
    value = _float(ds.get("PixelPaddingValue")) if ds is not None else None
    if value is None or header.slope is None or header.intercept is None:
        return None
    hu = value * header.slope + header.intercept
    return int(hu) if float(hu).is_integer() else float(hu)


# ----------------------------------------------------------------------------- metadata
_UID_LIKE = re.compile(r"\d+\.\d+\.\d+")
_DATE_LIKE = re.compile(r"(19|20)\d{2}[-_.]?[01]\d[-_.]?[0-3]\d"
                        r"|[0-3]\d[-_.][01]\d[-_.](19|20)\d{2}")


def identifying_words(ds) -> list[str]:
    """Texts of a header that identify the patient or the study (to keep them out of outputs)."""
    words = []
    for tag in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID",
                "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate"):
        text = _text(ds.get(tag)) if ds is not None else ""
        for word in re.split(r"[\^\\\s,]+", text):
            if len(word) >= 3:
                words.append(word.lower())
    return words


def identifying(text: str, identifiers: Sequence[str]) -> bool:
    low = text.lower()
    return (any(word in low for word in identifiers) or bool(_UID_LIKE.search(text))
            or bool(_DATE_LIKE.search(text)))


def acquisition_metadata(path: Path, *, step: float, padding_hu: float | None = None,
                         series_uid: str = "") -> dict[str, Any]:
    """Non-identifying acquisition metadata for the sidecar (BIDS-like keys).

    Free-text values that contain the patient's name or ID, a date or a UID are
    left out. The SeriesInstanceUID is kept only as its sha256.
    """
    ds = read_dataset(Path(path), stop_before_pixels=True)
    identifiers = identifying_words(ds)
    meta: dict[str, Any] = {"Modality": "CT"}
    for key, tag in (("Manufacturer", "Manufacturer"),
                     ("ManufacturersModelName", "ManufacturerModelName"),
                     ("SeriesDescription", "SeriesDescription"),
                     ("ContrastBolusAgent", "ContrastBolusAgent"),
                     ("BodyPartExamined", "BodyPartExamined")):
        text = _text(ds.get(tag))
        if text and not identifying(text, identifiers):
            meta[key] = text
    kernel = _values(ds.get("ConvolutionKernel"))
    if kernel and not any(identifying(v, identifiers) for v in kernel):
        meta["ConvolutionKernel"] = kernel[0] if len(kernel) == 1 else kernel
    for key in ("KVP", "SliceThickness"):
        value = _float(ds.get(key))
        if value is not None:
            meta[key] = value
    meta["SpacingBetweenSlices"] = round(float(step), 6)
    image_type = _values(ds.get("ImageType"))
    if image_type and not any(identifying(v, identifiers) for v in image_type):
        meta["ImageType"] = image_type
    if padding_hu is not None:
        meta["PixelPaddingValueHU"] = padding_hu
    if series_uid:
        meta["SeriesInstanceUIDSha256"] = hashlib.sha256(series_uid.encode()).hexdigest()
    return meta
