"""Importing manual segmentations into metcli's dseg, on the grid of the participant's CT.

A manual mask comes as a label image (NIfTI or NRRD), an RTSTRUCT or a DICOM-SEG.
:func:`import_mask` brings it onto the grid of the participant's CT in a raw
dataset and writes ``<seg_dir>/sub-<id>/[ses-<s>/]anat/<name>_dseg.nii.gz`` with
metcli's labels (0 background, 1 liver, 2 lesion; :mod:`metcli.imaging.labels`), its
provenance sidecar, ``dataset_description.json`` and ``dseg.tsv``.

Every format is matched to the CT in physical space, never by array index:

- **Label images** go through :func:`metcli.imaging.geometry.to_reference_grid`: the same
  grid, or flipped/permuted axes of it; anything else is a
  :class:`~metcli.core.errors.GeometryError` naming both files. Nothing is resampled.
- **RTSTRUCT** contours are rasterised by :func:`rasterize_rtstruct`. Each
  contour's points are mapped to the CT's continuous voxel index; the contour
  must lie in one slice plane of the CT (within :data:`SLICE_TOLERANCE` of a
  slice, as a fraction of the slice spacing): it is matched to that slice by
  position, not by ``ContourImageSequence`` (which real files often lack or point
  at another series). A contour between two slices is a GeometryError, never
  snapped onto one. Pixel inclusion rule: a voxel belongs to a contour when its
  centre lies inside the polygon; centres exactly on an edge or vertex count as
  inside (scikit-image's ``polygon2mask``). Contours of the same ROI on the same
  slice combine by the even-odd rule (XOR), so a contour inside another one is a
  hole, as the RTSTRUCT convention has it. Only ``CLOSED_PLANAR`` contours are
  filled; points and open contours are skipped with a warning.
- **DICOM-SEG** segments are read with highdicom (:func:`read_dicom_seg`), which
  builds a volume and its affine from the frames' plane positions; that volume is
  placed onto the CT grid by an exact voxel correspondence (a signed permutation
  of axes plus an integer shift, positions within
  :data:`metcli.imaging.geometry.TOLERANCE_MM`). The segmentation may cover fewer slices
  than the CT (empty frames are usually omitted); other spacing or orientation is
  a GeometryError. Fractional segments are binarised at 0.5.

Which source labels become liver or lesion is chosen with a label map
(``GTV-1=lesion,Liver=liver`` or ``5=liver,2=lesion``; see :func:`parse_label_map`).
Without one, a label image holding only 0, 1 and 2 keeps 1 as liver and 2 as
lesion, and ROI/segment names are read case-insensitively: names containing gtv,
tumor/tumour, lesion or metasta are lesions, other names containing liver are
liver. Where a voxel is both, lesion wins.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from metcli.io.bids import clean_label, derivative_path, find_files, select_participants, sidecar_path
from metcli.imaging.labels import BACKGROUND, LABELS, LESION, LIVER, write_label_table
from metcli.core.errors import GeometryError, InputError, MaskError, UsageError
from metcli.io.files import OutputSet, check_output_not_inside_input, read_image, write_image_to
from metcli.imaging.geometry import TOLERANCE_MM, to_reference_grid
from metcli.io.participants import participants_path, read_participants
from metcli.io.provenance import Step, write_dataset_description

log = logging.getLogger(__name__)

COMMAND = "import-mask"

#: Largest distance (as a fraction of the slice spacing) between an RTSTRUCT
#: contour's plane and the nearest CT slice centre. A contour further away was
#: drawn on another series; assigning it to the nearest slice would resample the
#: mask silently (and contours of a finer series would pile up on one slice).
SLICE_TOLERANCE = 0.1

FORMAT_LABEL_IMAGE = "label-image"
FORMAT_RTSTRUCT = "RTSTRUCT"
FORMAT_DICOM_SEG = "DICOM-SEG"

#: File name endings read as label images (with SimpleITK).
LABEL_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: metcli labels a label map may name.
TARGETS = {"liver": LIVER, "lesion": LESION, str(LIVER): LIVER, str(LESION): LESION}

_LESION_NAME = re.compile(r"gtv|tumou?r|lesion|metasta", re.IGNORECASE)
_LIVER_NAME = re.compile(r"liver", re.IGNORECASE)

_LABEL_MAP_FIX = ("write it as SOURCE=TARGET pairs separated by commas, TARGET liver or lesion, "
                  "for example --label-map 'GTV-1=lesion,Liver=liver' or --label-map '5=liver'")


# ----------------------------------------------------------------------------- label maps
def parse_label_map(spec: str | Mapping[Any, Any] | Iterable[str] | None) -> dict[str, int] | None:
    """``{source: metcli label}`` from ``"GTV-1=lesion,Liver=liver"`` (or a mapping, or a list).

    Sources are ROI names, segment labels or numbers, or label-image values;
    targets are ``liver`` or ``lesion`` (or 1, 2). Raises :class:`UsageError`.
    """
    if spec is None:
        return None
    pairs: list[tuple[str, Any]] = []
    if isinstance(spec, Mapping):
        pairs = [(str(k), v) for k, v in spec.items()]
    else:
        items = [spec] if isinstance(spec, str) else list(spec)
        for item in items:
            for part in str(item).split(","):
                if not part.strip():
                    continue
                source, sep, target = part.rpartition("=")
                if not sep:
                    raise UsageError(f"--label-map entry {part.strip()!r} has no '='",
                                     fix=_LABEL_MAP_FIX)
                pairs.append((source, target))
    if not pairs:
        return None
    out: dict[str, int] = {}
    for source, target in pairs:
        source = str(source).strip()
        name = str(target).strip().lower()
        if not source:
            raise UsageError(f"--label-map entry '={target}' names no source label",
                             fix=_LABEL_MAP_FIX)
        if name not in TARGETS:
            raise UsageError(f"--label-map target {str(target).strip()!r} (for {source!r}) is not "
                             "liver or lesion", fix=_LABEL_MAP_FIX)
        label = TARGETS[name]
        if out.get(source, label) != label:
            raise UsageError(f"--label-map maps {source!r} to both liver and lesion",
                             fix="map each source label once")
        out[source] = label
    return out


def label_from_name(name: str) -> int | None:
    """metcli label suggested by an ROI or segment name, or None (lesion words win)."""
    if _LESION_NAME.search(name):
        return LESION
    if _LIVER_NAME.search(name):
        return LIVER
    return None


@dataclass(frozen=True)
class _Entry:
    """An ROI of an RTSTRUCT or a segment of a DICOM-SEG."""

    number: int
    name: str


def _matches(entries: Sequence[_Entry], key: str) -> list[_Entry]:
    """Entries named ``key`` (case-insensitive), else numbered ``key``."""
    wanted = key.strip().casefold()
    found = [e for e in entries if e.name.strip().casefold() == wanted]
    if not found and re.fullmatch(r"\d+", key.strip()):
        found = [e for e in entries if e.number == int(key)]
    return found


def _names(entries: Sequence[_Entry]) -> str:
    return ", ".join(repr(e.name) for e in entries) or "(none)"


def _assign_labels(entries: Sequence[_Entry], label_map: Mapping[str, int] | None,
                   roi_names: Sequence[str] | None, *, path: Path, kind: str) -> dict[_Entry, int]:
    """Which ROIs/segments become liver or lesion."""
    chosen = list(entries)
    if roi_names:
        chosen = []
        for requested in roi_names:
            found = _matches(entries, requested)
            if not found:
                raise MaskError(f"no {kind} named {requested!r} (the file has {_names(entries)})",
                                path=path, fix="give one of these names to --roi-name")
            chosen.extend(e for e in found if e not in chosen)
    assigned: dict[_Entry, int] = {}
    for key, label in (label_map or {}).items():
        found = _matches(chosen, key)
        if not found:
            among = "among the --roi-name choices " if roi_names else ""
            raise MaskError(f"--label-map names {key!r}, which is no {kind} {among}of this file "
                            f"(it has {_names(chosen)})", path=path,
                            fix="use one of these names (or numbers) in --label-map")
        for entry in found:
            assigned[entry] = label
    if label_map and not roi_names:
        return assigned
    unnamed = []
    for entry in chosen:
        if entry in assigned:
            continue
        label = label_from_name(entry.name)
        if label is None:
            unnamed.append(entry)
        else:
            assigned[entry] = label
    if roi_names and unnamed:
        raise MaskError(f"cannot tell whether {_names(unnamed)} is liver or lesion from its name",
                        path=path, fix=f"say it with --label-map, for example "
                                       f"--label-map '{unnamed[0].name}=lesion'")
    if not assigned:
        example = entries[0].name if entries else "NAME"
        raise MaskError(f"no {kind} name says liver or lesion (the file has {_names(entries)})",
                        path=path, fix=f"choose them with --label-map, for example "
                                       f"--label-map '{example}=lesion'")
    for entry in unnamed:
        log.info("%s: %s %r is neither liver nor lesion by its name; not imported",
                 path.name, kind, entry.name)
    return assigned


# ----------------------------------------------------------------------------- finding the mask
def _is_label_image_name(path: Path) -> bool:
    return path.name.lower().endswith(LABEL_IMAGE_SUFFIXES)


def _dicom_kind(path: Path) -> str | None:
    """``RTSTRUCT``, ``SEG`` or another modality for a DICOM file; None if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["Modality", "SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError):
        return None
    return str(ds.get("Modality", "") or "unknown")


def find_mask_file(mask: str | Path) -> tuple[Path, str]:
    """The mask file and its format (:data:`FORMAT_LABEL_IMAGE`, ``RTSTRUCT``, ``DICOM-SEG``).

    ``mask`` may be the file or a folder holding exactly one mask file (a
    folder of DICOM files with one RTSTRUCT or SEG among them, for example).
    """
    mask = Path(mask)
    if mask.is_dir():
        candidates = []
        for path in sorted(p for p in mask.rglob("*") if p.is_file()):
            if _is_label_image_name(path):
                candidates.append((path, FORMAT_LABEL_IMAGE))
                continue
            kind = _dicom_kind(path)
            if kind == "RTSTRUCT":
                candidates.append((path, FORMAT_RTSTRUCT))
            elif kind == "SEG":
                candidates.append((path, FORMAT_DICOM_SEG))
        if not candidates:
            raise MaskError("the folder holds no RTSTRUCT, DICOM-SEG, NIfTI or NRRD file",
                            path=mask, fix="give the mask file itself")
        if len(candidates) > 1:
            shown = ", ".join(str(p.relative_to(mask)) for p, _ in candidates[:10])
            raise MaskError(f"the folder holds {len(candidates)} mask files ({shown}"
                            f"{' ...' if len(candidates) > 10 else ''})", path=mask,
                            fix="give the mask file itself")
        return candidates[0]
    if not mask.is_file():
        raise InputError("mask not found", path=mask, fix="check the path")
    if _is_label_image_name(mask):
        return mask, FORMAT_LABEL_IMAGE
    kind = _dicom_kind(mask)
    if kind == "RTSTRUCT":
        return mask, FORMAT_RTSTRUCT
    if kind == "SEG":
        return mask, FORMAT_DICOM_SEG
    if kind is not None:
        raise MaskError(f"a DICOM {kind} file is not a mask (an RTSTRUCT or a DICOM-SEG is needed)",
                        path=mask, fix="give the RTSTRUCT or DICOM-SEG file of the segmentation")
    raise MaskError("not a NIfTI, NRRD, RTSTRUCT or DICOM-SEG file", path=mask,
                    fix="give a label image (.nii.gz, .nii, .nrrd) or a DICOM RTSTRUCT or SEG file")


# ----------------------------------------------------------------------------- geometry helpers
def _reference(reference_image):
    if isinstance(reference_image, (str, Path)):
        return read_image(reference_image, what="reference image")
    return reference_image


def _index_to_physical(image) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 matrix, origin) with physical = origin + matrix @ (x, y, z) index."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)
    spacing = np.asarray(image.GetSpacing(), float)
    return direction * spacing[None, :], np.asarray(image.GetOrigin(), float)


def _zyx_affine(image) -> np.ndarray:
    """4x4 affine from numpy (z, y, x) indices of ``image`` to physical (LPS) mm."""
    matrix, origin = _index_to_physical(image)
    affine = np.eye(4)
    affine[:3, :3] = matrix[:, ::-1]
    affine[:3, 3] = origin
    return affine


def fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def place_on_grid(array: np.ndarray, affine: np.ndarray, reference_image, *,
                  mask_path: str | Path | None = None, reference_path: str | Path | None = None,
                  tol_mm: float = TOLERANCE_MM) -> np.ndarray:
    """Put a binary volume (indices -> mm by ``affine``) onto ``reference_image``'s grid.

    Only an exact voxel correspondence is accepted: the same spacing and axes
    (possibly permuted or flipped) and voxel centres within ``tol_mm``; the
    volume may cover part of the reference. Returns a boolean array indexed
    [z, y, x] of the reference. Anything else is a :class:`GeometryError`.
    """
    names = f"{mask_path or 'mask'} and {reference_path or 'reference'}"
    fix = ("give a mask made on this image's grid (metcli never resamples a mask silently); "
           "resample it yourself if you are sure it belongs to this image")
    array = np.asarray(array)
    if array.ndim != 3:
        raise MaskError(f"the segmentation volume is {array.ndim}D; a 3D volume is needed",
                        path=mask_path)
    ref_affine = _zyx_affine(reference_image)
    ref_shape = np.asarray(reference_image.GetSize()[::-1])
    transform = np.linalg.inv(ref_affine) @ np.asarray(affine, float)
    linear, shift = transform[:3, :3], transform[:3, 3]
    perm = np.rint(linear)
    is_signed_permutation = (np.all(np.isin(np.abs(perm), (0.0, 1.0)))
                             and np.all(np.abs(perm).sum(axis=0) == 1)
                             and np.all(np.abs(perm).sum(axis=1) == 1))
    if not is_signed_permutation:
        mask_spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
        raise GeometryError(
            f"{names} do not describe the same physical grid: voxel axes or spacing differ "
            f"(mask spacing {fmt(mask_spacing)} mm vs {fmt(reference_image.GetSpacing()[::-1])} "
            "mm, z-y-x order)", fix=fix)
    offset = np.rint(shift)
    corners = np.array([[a, b, c, 1.0] for a in (0, array.shape[0] - 1)
                        for b in (0, array.shape[1] - 1) for c in (0, array.shape[2] - 1)])
    target = corners[:, :3] @ perm.T + offset
    physical_mask = corners @ np.asarray(affine, float).T
    physical_ref = np.c_[target, np.ones(len(target))] @ ref_affine.T
    deviation = float(np.max(np.linalg.norm(physical_mask[:, :3] - physical_ref[:, :3], axis=1)))
    if deviation > tol_mm:
        raise GeometryError(
            f"{names} do not describe the same physical grid: the mask's voxel centres lie "
            f"up to {deviation:.4g} mm off the image's voxel centres", fix=fix)
    voxels = np.argwhere(array)
    out = np.zeros(tuple(ref_shape), dtype=bool)
    if len(voxels) == 0:
        return out
    dest = (voxels @ perm.T + offset).astype(np.int64)
    inside = np.all((dest >= 0) & (dest < ref_shape), axis=1)
    if not inside.all():
        raise GeometryError(
            f"{names} do not describe the same physical grid: {int((~inside).sum())} of "
            f"{len(dest)} mask voxels lie outside the image", fix=fix)
    out[tuple(dest.T)] = True
    return out


# ----------------------------------------------------------------------------- RTSTRUCT
def _read_dicom(path: Path, what: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError) as exc:
        raise MaskError(f"cannot read the {what} ({' '.join(str(exc).split())[:160]})", path=path,
                        fix="check that the file is a complete DICOM file") from None


def rtstruct_rois(rtstruct) -> list[tuple[int, str]]:
    """(ROI number, ROI name) of every ROI of an RTSTRUCT (a path or a pydicom dataset)."""
    ds = _read_dicom(Path(rtstruct), "RTSTRUCT") if isinstance(rtstruct, (str, Path)) else rtstruct
    return [(int(item.ROINumber), str(item.get("ROIName", "") or f"ROI {item.ROINumber}"))
            for item in ds.get("StructureSetROISequence", [])]


def _select(entries: Sequence[_Entry], requested: Sequence[str | int] | None, *, path: Path,
            kind: str) -> list[_Entry]:
    if requested is None:
        return list(entries)
    selected: list[_Entry] = []
    for name in requested:
        found = _matches(entries, str(name))
        if not found:
            raise MaskError(f"no {kind} named {name!r} (the file has {_names(entries)})",
                            path=path, fix=f"choose one of these {kind} names")
        selected.extend(e for e in found if e not in selected)
    return selected


def _reference_name(reference_image, reference_path) -> str:
    if reference_path is not None:
        return str(reference_path)
    if isinstance(reference_image, (str, Path)):
        return str(reference_image)
    return "the reference image"


def rasterize_rtstruct(rtstruct_path: str | Path, reference_image,
                       roi_names: Sequence[str] | None = None, *,
                       slice_tolerance: float = SLICE_TOLERANCE,
                       reference_path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Rasterise RTSTRUCT ROIs onto the grid of ``reference_image``.

    Args:
        rtstruct_path: the RTSTRUCT file.
        reference_image: the CT (a SimpleITK image, or a path to one); only its
            grid is used.
        roi_names: ROIs to rasterise (names, case-insensitive, or ROI numbers);
            None for all.
        slice_tolerance: largest distance between a contour's plane and a slice
            centre, as a fraction of the slice spacing.
        reference_path: the CT's file name, for error messages.

    Returns:
        ``{ROI name: boolean array indexed [z, y, x] of the reference}``. See the
        module docstring for the inclusion rule and the even-odd rule for holes.
    """
    path = Path(rtstruct_path)
    reference = _reference(reference_image)
    ds = _read_rtstruct(path)
    entries = [_Entry(n, name) for n, name in rtstruct_rois(ds)]
    selected = _select(entries, roi_names, path=path, kind="ROI")
    arrays = _rasterize(ds, selected, reference, path=path,
                        ref_name=_reference_name(reference_image, reference_path),
                        slice_tolerance=slice_tolerance)
    out: dict[str, np.ndarray] = {}
    for entry, mask in zip(selected, arrays, strict=True):
        out[entry.name] = out[entry.name] | mask if entry.name in out else mask
    return out


def _read_rtstruct(path: Path):
    ds = _read_dicom(path, "RTSTRUCT")
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise MaskError(f"not an RTSTRUCT (Modality {ds.get('Modality', 'missing')!s})", path=path,
                        fix="give the RTSTRUCT file")
    return ds


def _rasterize(ds, entries: Sequence[_Entry], reference, *, path: Path, ref_name: str,
               slice_tolerance: float) -> list[np.ndarray]:
    """One boolean [z, y, x] array per entry (see :func:`rasterize_rtstruct`)."""
    from skimage.draw import polygon2mask

    contours_by_number: dict[int, list] = {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.get("ReferencedROINumber", -1))
        contours_by_number.setdefault(number, []).extend(item.get("ContourSequence", []))

    matrix, origin = _index_to_physical(reference)
    to_index = np.linalg.inv(matrix)
    size = np.asarray(reference.GetSize())
    masks = []
    for entry in entries:
        volume = np.zeros(tuple(size), dtype=bool)  # indexed [x, y, z]
        skipped_kind = outside = 0
        for number, item in enumerate(contours_by_number.get(entry.number, []), start=1):
            kind = str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            try:
                data = np.asarray([float(v) for v in item.get("ContourData", [])], dtype=float)
            except (TypeError, ValueError):
                raise MaskError(f"contour {number} of ROI {entry.name!r} has non-numeric "
                                "ContourData", path=path, fix="export the RTSTRUCT again") from None
            if kind != "CLOSED_PLANAR" or data.size % 3 or data.size < 9:
                skipped_kind += 1
                continue
            points = data.reshape(-1, 3)
            index = (points - origin) @ to_index.T  # continuous (x, y, z) voxel index
            spread = index.max(axis=0) - index.min(axis=0)
            axis = min((2, 1, 0), key=lambda a: spread[a])  # the slice axis first on ties
            if spread[axis] > slice_tolerance:
                raise GeometryError(
                    f"{path} and {ref_name} do not describe the same physical grid: contour "
                    f"{number} of ROI {entry.name!r} does not lie in a slice plane of the image "
                    "(it is oblique to the slices)",
                    fix="import it with the CT series it was drawn on")
            position = float(index[:, axis].mean())
            slice_index = int(np.rint(position))
            if abs(position - slice_index) > slice_tolerance:
                plane = origin + matrix @ np.where(np.arange(3) == axis, position, 0.0)
                raise GeometryError(
                    f"{path} and {ref_name} do not describe the same physical grid: contour "
                    f"{number} of ROI {entry.name!r} lies between two slices "
                    f"({abs(position - slice_index):.3g} slice spacings from the nearest; its "
                    f"plane passes through {fmt(plane)} mm), so it was drawn on another series",
                    fix="import it with the CT series it was drawn on (metcli never moves "
                        "contours to another slice)")
            if not 0 <= slice_index < size[axis]:
                outside += 1
                continue
            in_plane = [a for a in range(3) if a != axis]
            filled = polygon2mask((int(size[in_plane[0]]), int(size[in_plane[1]])),
                                  index[:, in_plane])
            where: list[Any] = [slice(None)] * 3
            where[axis] = slice_index
            volume[tuple(where)] ^= filled  # even-odd rule: a contour inside another is a hole
        if skipped_kind:
            log.warning("%s: ROI %r: %d contour(s) that are not closed polygons were skipped",
                        path.name, entry.name, skipped_kind)
        if outside:
            log.warning("%s: ROI %r: %d contour(s) lie outside the image's slices and were "
                        "skipped", path.name, entry.name, outside)
        masks.append(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    return masks


# ----------------------------------------------------------------------------- DICOM-SEG
def _read_seg(path: Path):
    import highdicom as hd

    try:
        return hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many kinds
        raise MaskError(f"cannot read the DICOM-SEG ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]})", path=path,
                        fix="check that the file is a complete DICOM Segmentation") from None


def dicom_seg_segments(seg) -> list[tuple[int, str]]:
    """(segment number, segment label) of every segment of a DICOM-SEG (path or highdicom)."""
    seg = _read_seg(Path(seg)) if isinstance(seg, (str, Path)) else seg
    return [(int(n), str(seg.get_segment_description(n).segment_label or f"segment {n}"))
            for n in seg.segment_numbers]


def read_dicom_seg(path: str | Path, reference_image,
                   segments: Sequence[str | int] | None = None, *,
                   reference_path: str | Path | None = None) -> dict[str, np.ndarray]:
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
    reference = _reference(reference_image)
    seg = _read_seg(path)
    entries = [_Entry(n, name) for n, name in dicom_seg_segments(seg)]
    selected = _select(entries, segments, path=path, kind="segment")
    arrays = _seg_masks(seg, selected, reference, path=path,
                        ref_name=_reference_name(reference_image, reference_path))
    out: dict[str, np.ndarray] = {}
    for entry, mask in zip(selected, arrays, strict=True):
        out[entry.name if entry.name not in out else f"{entry.name} #{entry.number}"] = mask
    return out


def _seg_masks(seg, entries: Sequence[_Entry], reference, *, path: Path,
               ref_name: str) -> list[np.ndarray]:
    if not entries:
        raise MaskError("the DICOM-SEG has no segments", path=path,
                        fix="export the segmentation again")
    try:
        volume = seg.get_volume(segment_numbers=[e.number for e in entries],
                                combine_segments=False, rescale_fractional=True)
    except (RuntimeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise MaskError(f"its frames do not form a regular 3D volume "
                        f"({' '.join(str(exc).split())[:160]})", path=path,
                        fix="export the segmentation as a volume on the CT series' slices"
                        ) from None
    data = np.asarray(volume.array)
    if data.ndim == 3:
        data = data[..., None]
    fractional = str(seg.get("SegmentationType", "")).upper() == "FRACTIONAL"
    masks = []
    for channel in range(len(entries)):
        values = data[..., channel]
        binary = values >= 0.5 if fractional else values != 0
        masks.append(place_on_grid(binary, volume.affine, reference, mask_path=path,
                                   reference_path=ref_name))
    return masks


# ----------------------------------------------------------------------------- label images
def _label_image_mapping(values: np.ndarray, label_map: Mapping[str, int] | None,
                         path: Path) -> dict[int, int]:
    shown = ", ".join(str(int(v)) for v in values[:20]) + (" ..." if len(values) > 20 else "")
    if label_map is None:
        if set(int(v) for v in values) <= {BACKGROUND, LIVER, LESION}:
            return {int(v): int(v) for v in values if v != BACKGROUND}
        raise MaskError(f"the label image holds values other than 0, 1 and 2 ({shown})",
                        path=path, fix="say which values are liver and lesion, for example "
                                       "--label-map '5=liver,2=lesion'")
    mapping: dict[int, int] = {}
    present = set(int(v) for v in values)
    for key, label in label_map.items():
        if not re.fullmatch(r"-?\d+", key.strip()):
            raise UsageError(f"--label-map source {key!r} is not a number; a label image's "
                             "sources are its voxel values",
                             fix="write it as --label-map '5=liver'")
        value = int(key)
        if value not in present:
            raise MaskError(f"--label-map names value {value}, which the label image does not hold "
                            f"(it holds {shown})", path=path,
                            fix="use one of these values in --label-map")
        mapping[value] = label
    return mapping


def _label_image_to_dseg(path: Path, reference, reference_path: str,
                         label_map: Mapping[str, int] | None) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    image = read_image(path, what="mask")
    on_grid = to_reference_grid(image, reference, image_path=path, reference_path=reference_path)
    array = sitk.GetArrayFromImage(on_grid)
    values = np.unique(array)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise MaskError("the mask holds non-integer values; a label image is needed", path=path,
                        fix="give a label image (integer voxel values)")
    values = values.astype(np.int64)
    mapping = _label_image_mapping(values, label_map, path)
    dseg = np.zeros(array.shape, dtype=np.uint8)
    for label in (LIVER, LESION):  # lesion last: lesion wins
        sources = [v for v, target in mapping.items() if target == label]
        if sources:
            dseg[np.isin(array, sources)] = label
    return dseg, {str(v): LABELS[t] for v, t in sorted(mapping.items())}


def _masks_to_dseg(masks: Mapping[str, np.ndarray], labels: Mapping[str, int],
                   shape) -> np.ndarray:
    dseg = np.zeros(shape, dtype=np.uint8)
    for label in (LIVER, LESION):  # lesion last: lesion wins
        for name, mask in masks.items():
            if labels[name] == label:
                dseg[mask] = label
    return dseg


def mask_to_dseg(mask_path: str | Path, mask_format: str, reference_image, *,
                 reference_path: str | Path | None = None,
                 label_map: Mapping[str, int] | None = None,
                 roi_names: Sequence[str] | None = None,
                 slice_tolerance: float = SLICE_TOLERANCE) -> tuple[np.ndarray, dict[str, str]]:
    """A metcli dseg array ([z, y, x], uint8) of a mask on the reference's grid.

    Returns the array and the applied mapping ``{source: 'liver' | 'lesion'}``.
    """
    path = Path(mask_path)
    reference = _reference(reference_image)
    shape = reference.GetSize()[::-1]
    if mask_format == FORMAT_LABEL_IMAGE and roi_names:
        raise UsageError("--roi-name applies to RTSTRUCT and DICOM-SEG masks, not to label "
                         f"images ({path.name})", fix="use --label-map VALUE=liver|lesion")
    ref_name = _reference_name(reference_image, reference_path)
    if mask_format == FORMAT_LABEL_IMAGE:
        return _label_image_to_dseg(path, reference, ref_name, label_map)
    if mask_format == FORMAT_RTSTRUCT:
        ds = _read_rtstruct(path)
        entries = [_Entry(n, name) for n, name in rtstruct_rois(ds)]
        assigned = _assign_labels(entries, label_map, roi_names, path=path, kind="ROI")
        chosen = sorted(assigned, key=lambda e: e.number)
        arrays = _rasterize(ds, chosen, reference, path=path, ref_name=ref_name,
                            slice_tolerance=slice_tolerance)
    elif mask_format == FORMAT_DICOM_SEG:
        seg = _read_seg(path)
        entries = [_Entry(n, name) for n, name in dicom_seg_segments(seg)]
        assigned = _assign_labels(entries, label_map, roi_names, path=path, kind="segment")
        chosen = sorted(assigned, key=lambda e: e.number)
        arrays = _seg_masks(seg, chosen, reference, path=path, ref_name=ref_name)
    else:
        raise UsageError(f"unknown mask format {mask_format!r}")
    masks = {}
    labels = {}
    for entry, array in zip(chosen, arrays, strict=True):
        key = entry.name if entry.name not in masks else f"{entry.name} #{entry.number}"
        masks[key] = array
        labels[key] = assigned[entry]
    for name, mask in masks.items():
        if not mask.any():
            log.warning("%s: %r has no voxels on the image's grid", path.name, name)
    return _masks_to_dseg(masks, labels, shape), {n: LABELS[labels[n]] for n in masks}


# ----------------------------------------------------------------------------- the command
def _find_ct(raw_dir: Path, participant: str, session: str | None, phase: str | None):
    found = find_files(raw_dir, suffix="ct", participants=[participant],
                       phases=[phase] if phase else None)
    if session:
        found = [a for a in found if a.entities.ses == session]
    wanted = " ".join(x for x in (f"sub-{participant}", session and f"ses-{session}",
                                  phase and f"ce-{phase}") if x)
    if not found:
        raise InputError(f"no CT image of {wanted} (looked for sub-{participant}/[ses-*/]anat/"
                         f"sub-{participant}*_ct.nii.gz)", path=raw_dir,
                         fix="import the CT first (metcli import-dicom), or check --session "
                             "and --phase")
    if len(found) > 1:
        shown = ", ".join(a.relpath.as_posix() for a in found)
        raise UsageError(f"{wanted} has {len(found)} CT images in {raw_dir} ({shown})",
                         fix="choose one with --session and/or --phase")
    return found[0]


def import_mask(mask: str | Path, raw_dir: str | Path, seg_dir: str | Path, *, participant: str,
                session: str | None = None, phase: str | None = None,
                label_map: str | Mapping[str, Any] | Iterable[str] | None = None,
                roi_names: Sequence[str] | None = None, overwrite: bool = False,
                slice_tolerance: float = SLICE_TOLERANCE) -> Path:
    """Import a manual segmentation as the participant's dseg on its CT's grid.

    Args:
        mask: a NIfTI/NRRD label image, an RTSTRUCT or a DICOM-SEG file (or a
            folder holding exactly one of them).
        raw_dir: the raw dataset (with ``participants.tsv``) holding the CT.
        seg_dir: the segmentation derivative to write.
        participant: the participant label (with or without ``sub-``).
        session, phase: choose the CT when the participant has several.
        label_map: which source labels are liver and lesion (:func:`parse_label_map`).
        roi_names: only import these ROIs/segments (RTSTRUCT, DICOM-SEG).
        overwrite: redo the output even if its sidecar says it is done.
        slice_tolerance: see :data:`SLICE_TOLERANCE`.

    Returns:
        The path of the ``_dseg.nii.gz`` written (or found done).
    """
    import SimpleITK as sitk

    label = clean_label(participant)
    session = None if session is None else clean_label(session, entity="ses", option="--session")
    phase = None if phase is None else clean_label(phase, entity="ce", option="--phase")
    parsed_map = parse_label_map(label_map)
    roi_names = [str(r) for r in roi_names] if roi_names else None
    if not 0 < slice_tolerance <= 0.5:
        raise UsageError(f"slice tolerance {slice_tolerance} must lie in (0, 0.5] slice spacings")
    mask, raw_dir, seg_dir = Path(mask), Path(raw_dir), Path(seg_dir)
    if not mask.exists():
        raise InputError("mask not found", path=mask, fix="check the path")
    if not raw_dir.is_dir():
        raise InputError("raw dataset folder not found", path=raw_dir, fix="check the path")
    rows = read_participants(raw_dir)
    select_participants([r["participant_id"][4:] for r in rows], [label],
                        where=participants_path(raw_dir))
    check_output_not_inside_input(seg_dir, [raw_dir])
    acquisition = _find_ct(raw_dir, label, session, phase)
    mask_file, mask_format = find_mask_file(mask)
    if mask_format == FORMAT_LABEL_IMAGE and roi_names:
        raise UsageError("--roi-name applies to RTSTRUCT and DICOM-SEG masks, not to label "
                         f"images ({mask_file.name})", fix="use --label-map VALUE=liver|lesion")

    settings = {
        "label_map": None if parsed_map is None else {k: LABELS[v] for k, v in parsed_map.items()},
        "roi_names": roi_names,
        "slice_tolerance": float(slice_tolerance),
    }
    step = Step(COMMAND, seg_dir, {"raw": raw_dir, "mask": mask if mask.is_dir() else mask.parent},
                settings)
    out_image = derivative_path(seg_dir, acquisition.entities, suffix="dseg", extension=".nii.gz")
    sidecar = sidecar_path(out_image)
    inputs = step.inputs([acquisition.path, mask_file])
    if not overwrite and step.is_done(sidecar, inputs):
        log.info("%s: already done with the same inputs and settings; skipped "
                 "(--overwrite redoes it)", out_image.name)
        _write_dataset_files(seg_dir, raw_dir)
        return out_image

    reference = read_image(acquisition.path, what="CT image")
    dseg, applied = mask_to_dseg(mask_file, mask_format, reference, reference_path=acquisition.path,
                                 label_map=parsed_map, roi_names=roi_names,
                                 slice_tolerance=slice_tolerance)
    counts = {LABELS[v]: int(np.count_nonzero(dseg == v)) for v in (LIVER, LESION)}
    if not any(counts.values()):
        raise MaskError(f"the imported mask has no liver or lesion voxels on the CT grid of "
                        f"{acquisition.relpath.as_posix()} (mapping {applied or 'none'})",
                        path=mask_file, fix="check --label-map/--roi-name and that the mask "
                                            "belongs to this CT")
    image = sitk.GetImageFromArray(dseg)
    image.CopyInformation(reference)

    _write_dataset_files(seg_dir, raw_dir)
    with OutputSet() as outputs:
        tmp_image = outputs.path(out_image)
        write_image_to(image, tmp_image)
        step.write_sidecar(outputs, sidecar, inputs, {out_image: tmp_image},
                           extra={"MaskFormat": mask_format, "LabelMapping": applied,
                                  "VoxelCounts": counts})
    log.info("%s: %s mask imported (%s)", out_image.name, mask_format,
             ", ".join(f"{k} {v} voxels" for k, v in counts.items()))
    return out_image


def _write_dataset_files(seg_dir: Path, raw_dir: Path) -> None:
    write_dataset_description(seg_dir, name="metcli manual segmentations", sources={"raw": raw_dir},
                              description="liver and lesion segmentation (0 background, "
                                          "1 liver, 2 lesion)")
    label_table = seg_dir / "dseg.tsv"
    if not label_table.is_file():
        write_label_table(seg_dir)
