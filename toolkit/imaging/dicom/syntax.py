"""DICOM transfer syntaxes: their names, pydicom's decoders for them, and the fixes to give.

Shared by the CT reader (:mod:`metcli.imaging.dicom.pixels`) and the DICOM-SEG reader
(:mod:`metcli.imaging.dicom_seg`), so that a file that cannot be decoded is reported the same
way: the transfer syntax by name and UID, and a fix that works for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

#: pydicom names some plug-ins by their import name; pip knows them by another.
_PIP_NAMES = {"gdcm": "python-gdcm"}


def transfer_syntax_name(uid: str) -> str:
    """``RLE Lossless (1.2.840.10008.1.2.5)``: the name and the UID of a transfer syntax."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown transfer syntax"
    return f"{name} ({uid})" if name != uid else uid


def pydicom_decoder(uid: str) -> tuple[bool, list[str]]:
    """(available?, what is missing) for pydicom's decoders of a transfer syntax."""
    from pydicom.pixels import get_decoder

    if not uid:
        return True, []
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return False, []
    return bool(decoder.is_available), list(getattr(decoder, "missing_dependencies", []) or [])


def install_commands(missing: Sequence[str]) -> list[str]:
    """``pip install ...`` alternatives from pydicom's list of missing decoder dependencies."""
    commands = []
    for item in missing:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        _plugin, _sep, requirement = item.partition(" - requires ")
        packages = []
        for spec in (requirement or _plugin).split(" and "):
            name = re.split(r"[<>=!~ ]", spec.strip(), maxsplit=1)[0]
            packages.append(spec.strip().replace(name, _PIP_NAMES.get(name, name), 1))
        commands.append(
            "pip install "
            + " ".join(f"'{p}'" if any(c in p for c in "<>=") else p for p in packages)
        )
    return commands


def install_hint(missing: Sequence[str]) -> str:
    """The fix for a CT slice whose compressed pixel data no installed decoder reads."""
    commands = install_commands(missing)
    if not commands:
        return (
            "install a DICOM decoder for this transfer syntax (python-gdcm, or pylibjpeg "
            "with its plug-ins), or export the series uncompressed"
        )
    return "install a decoder: " + "; or ".join(commands) + "; or export the series uncompressed"


def _converted_name(path: Path) -> str:
    name = Path(path).name
    stem = name[: -len(".dcm")] if name.lower().endswith(".dcm") else name
    return f"{stem}_le.dcm"


def convert_commands(path: str | Path, *, compressed: bool) -> str:
    """Commands that rewrite a DICOM file as Explicit VR Little Endian (uncompressed).

    DCMTK's ``dcmconv +te`` converts between uncompressed transfer syntaxes only; GDCM's
    ``gdcmconv --raw`` also decompresses (RLE, JPEG, JPEG-LS, JPEG 2000).
    """
    name, out = Path(path).name, _converted_name(Path(path))
    gdcm = f"gdcmconv --raw {name} {out} (GDCM)"
    if compressed:
        return gdcm
    return f"dcmconv +te {name} {out} (DCMTK) or {gdcm}"


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """One line from a decoder's exception: pydicom's list of plug-in failures, shortened."""
    text = " ".join(str(exc).split())
    if "plugins:" in text:  # "Unable to decode as exceptions were raised by all ... plugins: ..."
        text = text.split("plugins:", 1)[1].strip()
    return text[:limit] or type(exc).__name__
