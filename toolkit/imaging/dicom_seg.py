"""DICOM-SEG masks: segments placed onto the grid of a CT.

Segments are read with highdicom (:func:`read_dicom_seg`), which builds a volume
and its affine from the frames' plane positions; that volume is placed onto the
CT grid by an exact voxel correspondence
(:func:`metcli.imaging.geometry.place_on_grid`: a signed permutation of axes
plus an integer shift, positions within :data:`metcli.imaging.geometry.TOLERANCE_MM`).
The segmentation may cover fewer slices than the CT (empty frames are usually
omitted); other spacing or orientation is a
:class:`~metcli.core.errors.GeometryError`. A voxel of a FRACTIONAL segment belongs
to it when its fraction (probability or occupancy, 0 to 1) is at least the threshold
(:data:`FRACTIONAL_THRESHOLD` unless given).

Transfer syntaxes: what pydicom decodes is read, Explicit VR Big Endian included
(highdicom refuses it, so it is re-encoded as Explicit VR Little Endian in memory
first); deflated and implicit VR files are read as they are. Frames that cannot be
decoded (1-bit frames in RLE Lossless, a compression without an installed decoder)
are a :class:`~metcli.core.errors.MaskError` naming the transfer syntax and a fix that
works for it, before anything else is looked at.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.errors import MaskError, UsageError
from metcli.imaging.dicom.syntax import (
    convert_commands,
    install_commands,
    pydicom_decoder,
    short_reason,
    transfer_syntax_name,
)
from metcli.imaging.geometry import load_reference, place_on_grid, reference_name
from metcli.imaging.mask_labels import MaskEntry, select_entries

#: Default threshold on the fraction of a FRACTIONAL DICOM-SEG (a voxel belongs when >=).
FRACTIONAL_THRESHOLD = 0.5

_RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _cannot_read(path: Path, exc: BaseException) -> MaskError:
    return MaskError(
        f"cannot read the DICOM-SEG ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
        path=path,
        fix="check that the file is a complete DICOM Segmentation",
    )


def undecodable(path: Path, uid: str, bits: int, reason: str, missing=()) -> MaskError:
    """The MaskError for frames pydicom cannot decode: the transfer syntax and a fix that works."""
    from pydicom.uid import UID

    syntax = transfer_syntax_name(uid)
    compressed = not UID(uid).is_transfer_syntax or UID(uid).is_compressed
    if compressed and bits == 1 and uid == _RLE_LOSSLESS:
        return MaskError(
            f"cannot decode the DICOM-SEG's frames: they are 1-bit frames encoded as {syntax}, "
            f"which pydicom cannot decode ({reason}); GDCM (gdcmconv) and DCMTK (dcmdrle) "
            "cannot convert them either (their RLE decoders need 8, 16 or 32 bits allocated)",
            path=path,
            fix="export the segmentation again from the program that made it, uncompressed "
            "(Explicit VR Little Endian) or as a NIfTI or NRRD label image",
        )
    fix = (
        "convert it to Explicit VR Little Endian: "
        + convert_commands(path, compressed=compressed)
        + "; if that fails too, the file is damaged: export the segmentation again"
    )
    commands = install_commands(missing)
    if commands:
        fix = "install a decoder (" + "; or ".join(commands) + "), or " + fix
    return MaskError(
        f"cannot decode the DICOM-SEG's frames ({bits}-bit, encoded as {syntax}): {reason}",
        path=path,
        fix=fix,
    )


def _check_decodable(ds, path: Path) -> None:
    """Decode the first frame of a compressed DICOM-SEG; a failure names the transfer syntax."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(ds.file_meta.TransferSyntaxUID))
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if not uid.is_transfer_syntax:
        raise undecodable(path, uid, bits, "not a transfer syntax pydicom knows")
    if not uid.is_compressed or "PixelData" not in ds:
        return  # native (uncompressed) pixel data: pydicom reads every byte order itself
    available, missing = pydicom_decoder(uid)
    if not available:
        raise undecodable(path, uid, bits, "pydicom has no decoder for it installed", missing)
    try:
        get_decoder(uid).as_array(ds, index=0)
    except Exception as exc:  # noqa: BLE001 - decoder plug-ins raise many kinds
        raise undecodable(path, uid, bits, short_reason(exc)) from None


def _little_endian_copy(ds, path: Path):
    """An Explicit VR Big Endian dataset re-encoded as Explicit VR Little Endian, in memory.

    highdicom reads little endian files only; pydicom decodes big endian pixel data itself,
    and the decoded frames are stored again (packed bits for 1-bit frames).
    """
    import pydicom
    from pydicom.pixels import pack_bits
    from pydicom.uid import ExplicitVRLittleEndian

    try:
        bits = int(ds.BitsAllocated)
        frames = ds.pixel_array
        data = pack_bits(frames.ravel()) if bits == 1 else frames.astype(f"<u{bits // 8}").tobytes()
        ds.PixelData = data
        ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, force_encoding=True)
        buffer.seek(0)
        return pydicom.dcmread(buffer)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        raise undecodable(
            path,
            str(ds.file_meta.TransferSyntaxUID),
            int(ds.get("BitsAllocated", 0) or 0),
            short_reason(exc),
        ) from None


def read_seg(path: Path):
    """The DICOM-SEG as a highdicom Segmentation.

    An unreadable file, or frames that cannot be decoded, is a MaskError (the latter
    naming the transfer syntax and a conversion that works for it).
    """
    import highdicom as hd
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        raise _cannot_read(path, exc) from None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        _check_decodable(ds, path)
        if not meta.TransferSyntaxUID.is_little_endian:
            ds = _little_endian_copy(ds, path)
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many kinds
        raise _cannot_read(path, exc) from None


def segmentation_type(seg) -> dict[str, str]:
    """``{"SegmentationType": ..., "FractionalType": ...}`` of a DICOM-SEG, for the sidecar."""
    out = {"SegmentationType": str(seg.get("SegmentationType", "") or "unknown").upper()}
    if out["SegmentationType"] == "FRACTIONAL" and seg.get("SegmentationFractionalType"):
        out["FractionalType"] = str(seg.SegmentationFractionalType).upper()
    return out


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
    fractional_threshold: float = FRACTIONAL_THRESHOLD,
) -> dict[str, np.ndarray]:
    """Segments of a DICOM-SEG on the grid of ``reference_image``.

    Args:
        path: the DICOM-SEG file.
        reference_image: the CT (a SimpleITK image, or a path to one).
        segments: segment labels (case-insensitive) or numbers to read; None for all.
        reference_path: the CT's file name, for error messages.
        fractional_threshold: a voxel of a FRACTIONAL segment belongs to it when its
            fraction is at least this (in (0, 1]).

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
        threshold=fractional_threshold,
    )
    out: dict[str, np.ndarray] = {}
    for entry, mask in zip(selected, arrays, strict=True):
        out[entry.name if entry.name not in out else f"{entry.name} #{entry.number}"] = mask
    return out


def segment_masks(
    seg,
    entries: Sequence[MaskEntry],
    reference,
    *,
    path: Path,
    ref_name: str,
    threshold: float = FRACTIONAL_THRESHOLD,
) -> list[np.ndarray]:
    """One boolean [z, y, x] array of the reference per entry."""
    if not entries:
        raise MaskError(
            "the DICOM-SEG has no segments", path=path, fix="export the segmentation again"
        )
    if not 0 < threshold <= 1:
        raise UsageError(
            f"fractional threshold {threshold} must lie in (0, 1]",
            fix="give a threshold above 0 and at most 1, e.g. 0.5",
        )
    try:
        volume = seg.get_volume(
            segment_numbers=[e.number for e in entries],
            combine_segments=False,
            rescale_fractional=True,
        )
    except RuntimeError as exc:
        if "decod" not in str(exc).lower():
            raise _not_a_volume(path, exc) from None
        meta = getattr(seg, "file_meta", None)
        uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        raise undecodable(
            path, uid, int(seg.get("BitsAllocated", 0) or 0), short_reason(exc)
        ) from None
    except (ValueError, KeyError, AttributeError, IndexError) as exc:
        raise _not_a_volume(path, exc) from None
    data = np.asarray(volume.array)
    if data.ndim == 3:
        data = data[..., None]
    fractional = str(seg.get("SegmentationType", "")).upper() == "FRACTIONAL"
    masks = []
    for channel in range(len(entries)):
        values = data[..., channel]
        binary = values >= threshold if fractional else values != 0
        masks.append(
            place_on_grid(binary, volume.affine, reference, mask_path=path, reference_path=ref_name)
        )
    return masks


def _not_a_volume(path: Path, exc: BaseException) -> MaskError:
    return MaskError(
        f"its frames do not form a regular 3D volume ({' '.join(str(exc).split())[:160]})",
        path=path,
        fix="export the segmentation as a volume on the CT series' slices",
    )
