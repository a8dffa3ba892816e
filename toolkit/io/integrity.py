"""Refusing image files that are cut short or damaged.

SimpleITK reads a ``.nii.gz`` whose gzip stream ends early (an interrupted copy or
download, a full disk) or holds damaged bytes without complaint: the voxels it
could not read are zeros. A cut segmentation then has fewer lesions, a cut CT a
mean of 0 HU. :func:`check_complete`, which :func:`metcli.io.files.read_image`
calls before SimpleITK reads a file, refuses such files:

- a gzip stream (``.nii.gz``, ``gzip`` encoded NRRD data) is decompressed to its end
  in one streaming pass, in chunks that are not kept: zlib checks the CRC-32 and the
  length stored at the end, so a truncated stream (no end) and damaged bytes (a
  zlib error or a failed check) are both found;
- a NIfTI file (``.nii`` and ``.nii.gz``) must hold at least ``vox_offset`` plus the
  bytes its header's shape and data type need (decompressed, for ``.nii.gz``);
- a MetaImage (``.mha``) with compressed data in the file gets the same zlib check.

SimpleITK itself refuses a NRRD or MetaImage file with fewer data bytes than its
header describes. Damaged bytes in uncompressed data cannot be found: those formats
store no checksum. Data in a separate file (``.nhdr``, ``.mhd``) is not checked.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from pathlib import Path

from metcli.core.errors import ImageError

__all__ = ["check_complete"]

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip stream: zlib checks its CRC-32 and length
_ZLIB_WBITS = 32 + zlib.MAX_WBITS  # a zlib (or gzip) stream, found by its header
_READ = 1 << 18  # compressed bytes read at a time
_INFLATE = 1 << 20  # most decompressed bytes held at a time (masks compress 400:1)
_NIFTI_HEAD = 540  # a NIfTI-2 header; a NIfTI-1 header is 348 bytes
_TEXT_HEAD = 1 << 16  # most bytes a NRRD or MetaImage text header is looked for in

FIX = (
    "copy or export the file again: it was cut short or damaged (an interrupted copy "
    "or download, a full disk)"
)


def check_complete(path: str | Path, what: str = "image") -> None:
    """Refuse an image file that is truncated or corrupted (see the module's notes).

    Raises :class:`ImageError` naming the file, what is wrong and the fix. Files of
    other formats, and files too damaged to be recognised, pass: SimpleITK's own
    reading then decides.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            _check_nifti(path, what)
        elif name.endswith(".nrrd"):
            _check_nrrd(path, what)
        elif name.endswith(".mha"):
            _check_metaimage(path, what)
        elif name.endswith(".gz"):
            _check_gzip_file(path, what)
    except OSError as exc:
        raise ImageError(
            f"cannot read the {what} ({exc.strerror or exc})",
            path=path,
            fix="check that the file exists and that you may read it",
        ) from None


# ----------------------------------------------------------------------------- streams
def _inflate(handle, path: Path, what: str, *, keep: int = 0, wbits: int = _GZIP_WBITS):
    """Decompress the stream from ``handle``'s position to its end, keeping nothing.

    Returns ``(decompressed byte count, its first keep bytes, whether the stream
    ended)``; a stream that did not end is truncated. Damaged data raises. Gzip
    members that follow each other are read as one stream, as zlib's ``gzread``
    (which SimpleITK uses) reads them; bytes after the last member are ignored.
    """
    total, head = 0, b""
    inflater = zlib.decompressobj(wbits)
    data = handle.read(_READ)
    try:
        while data:
            out = inflater.decompress(data, _INFLATE)
            total += len(out)
            if len(head) < keep:
                head += out[: keep - len(head)]
            if not inflater.eof:
                data = inflater.unconsumed_tail or handle.read(_READ)
                continue
            if wbits != _GZIP_WBITS:
                break
            data = inflater.unused_data or handle.read(_READ)
            if len(data) < len(_GZIP_MAGIC):
                data += handle.read(_READ)
            if not data.startswith(_GZIP_MAGIC):
                break
            inflater = zlib.decompressobj(wbits)
    except zlib.error as exc:
        raise ImageError(
            f"cannot read the {what}: the file is corrupted ({_zlib_reason(exc, wbits)})",
            path=path,
            fix=FIX,
        ) from None
    return total, head, inflater.eof


def _zlib_reason(exc: zlib.error, wbits: int) -> str:
    text = str(exc)
    kind = "gzip" if wbits == _GZIP_WBITS else "zlib"
    if "incorrect data check" in text:
        return f"its {kind} CRC check failed" if kind == "gzip" else "its zlib checksum failed"
    if "incorrect length check" in text:
        return "its gzip length check failed"
    return f"zlib error: {text.split(':', 1)[-1].strip()}"


def _truncated(path: Path, what: str, total: int, kind: str, expected: int | None = None):
    described = (
        f" of the {expected:,} its NIfTI header describes; SimpleITK would read the rest as zeros"
        if expected
        else ""
    )
    return ImageError(
        f"cannot read the {what}: the file is truncated (its {kind} stream ends early, "
        f"after {total:,} decompressed bytes{described})",
        path=path,
        fix=FIX,
    )


def _check_gzip_file(path: Path, what: str) -> None:
    with open(path, "rb") as handle:
        if handle.read(len(_GZIP_MAGIC)) != _GZIP_MAGIC:
            return
        handle.seek(0)
        total, _head, ended = _inflate(handle, path, what)
    if not ended:
        raise _truncated(path, what, total, "gzip")


# ----------------------------------------------------------------------------- NIfTI
def _check_nifti(path: Path, what: str) -> None:
    with open(path, "rb") as handle:
        compressed = handle.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
        handle.seek(0)
        if compressed:
            total, head, ended = _inflate(handle, path, what, keep=_NIFTI_HEAD)
        else:
            head, ended = handle.read(_NIFTI_HEAD), True
            total = os.fstat(handle.fileno()).st_size
    expected = _nifti_bytes(head)
    if not ended:
        raise _truncated(path, what, total, "gzip", expected)
    if expected is not None and total < expected:
        raise ImageError(
            f"cannot read the {what}: the file is truncated (it holds "
            f"{total:,}{' decompressed' if compressed else ''} bytes, fewer than the "
            f"{expected:,} its NIfTI header describes; SimpleITK would read the rest as "
            "zeros)",
            path=path,
            fix=FIX,
        )


def _nifti_bytes(head: bytes) -> int | None:
    """Bytes a single-file NIfTI-1 or NIfTI-2 needs by its header (None: not one)."""
    import nibabel as nib

    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        size = header_class.sizeof_hdr
        if len(head) < size:
            continue
        for order in "<>":
            if int.from_bytes(head[:4], "little" if order == "<" else "big") != size:
                continue
            try:
                header = header_class(binaryblock=head[:size], endianness=order, check=False)
                if bytes(header["magic"].item()).rstrip(b"\0") not in (b"n+1", b"n+2"):
                    return None
                voxels = math.prod(int(n) for n in header.get_data_shape())
                itemsize = header.get_data_dtype().itemsize
                return int(header.get_data_offset()) + voxels * itemsize
            except Exception:  # noqa: BLE001 - a header nibabel cannot read: SimpleITK decides
                return None
    return None


# ----------------------------------------------------------------------------- NRRD, MetaImage
def _text_header(
    handle, first: bytes, end: re.Pattern, separator: str
) -> tuple[dict[str, str], int] | None:
    """The fields of a text header (keys lower case, no spaces) and where its data starts."""
    block = handle.read(_TEXT_HEAD)
    if not block.startswith(first):
        return None
    found = end.search(block)
    if found is None:
        return None
    fields = {}
    for line in block[: found.start()].decode("latin-1").splitlines():
        if line.startswith("#") or (separator == ":" and ":=" in line):
            continue
        key, sep, value = line.partition(separator)
        if sep:
            fields[key.strip().lower().replace(" ", "")] = value.strip()
    return fields, found.end()


def _check_nrrd(path: Path, what: str) -> None:
    """Gzip-encoded data in the file: the stream must end and pass its checks."""
    with open(path, "rb") as handle:
        header = _text_header(handle, b"NRRD", re.compile(rb"\r?\n\r?\n"), ":")
        if header is None:
            return
        fields, start = header
        if fields.get("encoding", "").lower() not in ("gzip", "gz") or any(
            key in fields for key in ("datafile", "lineskip", "byteskip")
        ):
            return
        handle.seek(start)
        total, _head, ended = _inflate(handle, path, what)
    if not ended:
        raise _truncated(path, what, total, "gzip")


def _check_metaimage(path: Path, what: str) -> None:
    """Compressed data in the file (``ElementDataFile = LOCAL``): a complete zlib stream."""
    with open(path, "rb") as handle:
        header = _text_header(
            handle, b"", re.compile(rb"ElementDataFile\s*=\s*LOCAL[ \t]*\r?\n"), "="
        )
        if header is None:
            return
        fields, start = header
        if fields.get("compresseddata", "").lower() != "true":
            return
        handle.seek(start)
        total, _head, ended = _inflate(handle, path, what, wbits=_ZLIB_WBITS)
    if not ended:
        raise _truncated(path, what, total, "zlib")
