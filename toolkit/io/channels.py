"""Channels: the named images of one participant that a model reads together.

A channel is a modality and, for contrast series, a phase; for diffusion, a b-value.
This module decides the channel names, how they are parsed and where each channel's
file lies (asking :mod:`metcli.io.bids` for the file names, the only module that builds
them). Names, as ``--channels`` takes them:

===================  ==========================================  ===========================
channel              file (under ``sub-<id>/[ses-<s>/]``)          what it is
===================  ==========================================  ===========================
``portal``           ``anat/..._ce-portal_ct.nii.gz``             a CT phase (any ``ce-``
                                                                  label: native, arterial,
                                                                  portal, delayed)
``ct``               ``anat/..._ct.nii.gz``                       a CT without a phase
``T2w``, ``T1w``     ``anat/..._T2w.nii.gz``                      MR, BIDS' anat suffixes
``T1w-arterial``     ``anat/..._ce-arterial_T1w.nii.gz``          a contrast-enhanced T1 phase
``DWI-b800``         ``dwi/..._dwi.nii.gz`` + ``.bval``/``.bvec``  the volumes of b = 800
                                                                  s/mm2, averaged over their
                                                                  directions (the trace image)
``ADC``              ``dwi/..._ADC.nii.gz``, else computed        apparent diffusion
                     from ``..._dwi.nii.gz``                      coefficient (mm2/s)
===================  ==========================================  ===========================

The 4D diffusion series with its ``.bval``/``.bvec`` is BIDS' own layout (the BIDS
validator accepts it); ``_ct`` and ``_ADC`` are metcli's names, listed in ``.bidsignore``.
Each channel's intensities are handled by its kind (:attr:`Channel.kind`): CT in HU
(windowed), MR normalised per image (:mod:`metcli.imaging.intensity`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from metcli.core.errors import InputError, UsageError
from metcli.io.bids import KNOWN_PHASES, Entities, clean_label

#: MR anatomical suffixes metcli reads (BIDS names).
MR_ANAT = ("T1w", "T2w")
DWI_SUFFIX, ADC_SUFFIX, CT_SUFFIX = "dwi", "ADC", "ct"
_DWI_RE = re.compile(r"^DWI-b(\d+)$", re.IGNORECASE)
_T1_PHASE_RE = re.compile(r"^(T1w)-([A-Za-z0-9]+)$")
#: b-values within this fraction of each other are the same shell (scanners write 795, 800)
B_TOLERANCE = 0.05


@dataclass(frozen=True, order=True)
class Channel:
    """One named image of a participant: modality, contrast phase, b-value."""

    modality: str  # "CT", "T1w", "T2w", "DWI", "ADC"
    phase: str | None = None
    bvalue: int | None = None

    @property
    def name(self) -> str:
        if self.modality == "CT":
            return self.phase or "ct"
        if self.modality == "DWI":
            return f"DWI-b{self.bvalue}"
        if self.phase:
            return f"{self.modality}-{self.phase}"
        return self.modality

    @property
    def kind(self) -> str:
        """``ct`` (Hounsfield units) or ``mr`` (arbitrary units, normalised per image)."""
        return "ct" if self.modality == "CT" else "mr"

    @property
    def datatype(self) -> str:
        return "dwi" if self.modality in ("DWI", "ADC") else "anat"

    @property
    def suffix(self) -> str:
        return {"CT": CT_SUFFIX, "DWI": DWI_SUFFIX, "ADC": ADC_SUFFIX}.get(
            self.modality, self.modality
        )

    def entities(self, sub: str, ses: str | None = None) -> Entities:
        """The file name's entities of this channel for one participant (and session)."""
        return Entities(sub=sub, ses=ses, ce=self.phase, suffix=self.suffix)

    def relpath(self, sub: str, ses: str | None = None) -> Path:
        """Where the channel's file lies under a raw dataset's root."""
        return self.entities(sub, ses).relpath(self.datatype)

    def __str__(self) -> str:
        return self.name


def parse_channel(text: str, *, option: str = "--channels") -> Channel:
    """A channel from its name (see the module's table); a bare label is a CT phase."""
    name = str(text).strip()
    match = _DWI_RE.match(name)
    if match:
        return Channel("DWI", bvalue=int(match.group(1)))
    if name.upper() == "ADC":
        return Channel("ADC")
    if name in MR_ANAT:
        return Channel(name)
    match = _T1_PHASE_RE.match(name)
    if match:
        return Channel("T1w", phase=clean_label(match.group(2), entity="ce", option=option))
    if name == "ct":
        return Channel("CT")
    try:
        return Channel("CT", phase=clean_label(name, entity="ce", option=option))
    except UsageError:
        raise UsageError(
            f"{option}: {name!r} is not a channel name",
            fix="use a CT phase (" + ", ".join(KNOWN_PHASES) + "), ct, T1w, T1w-<phase>, "
            "T2w, DWI-b<value> or ADC (docs/channels.md)",
        ) from None


def parse_channels(value: str | Iterable[str], *, option: str = "--channels") -> list[Channel]:
    """Channels from a comma-separated text or a list of names; each once."""
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    channels = [parse_channel(n, option=option) for n in names]
    if not channels or len({c.name for c in channels}) != len(channels):
        raise UsageError(
            f"{option} {','.join(names)} names a channel twice (or none)",
            fix="name each channel once",
        )
    return channels


def channel_path(root: Path, channel: Channel, sub: str, ses: str | None = None) -> Path:
    """The file a channel is read from (for a computed ADC, the diffusion series)."""
    path = Path(root) / channel.relpath(sub, ses)
    if channel.modality == "ADC" and not path.is_file():
        return Path(root) / Channel("DWI", bvalue=0).relpath(sub, ses)
    return path


def channel_files(root: Path, channel: Channel, sub: str, ses: str | None = None) -> list[Path]:
    """Every file the channel's image is made from (its inputs, for provenance)."""
    path = channel_path(root, channel, sub, ses)
    if path.name.endswith(f"_{DWI_SUFFIX}.nii.gz"):
        stem = path.name[: -len(".nii.gz")]
        return [path, path.with_name(stem + ".bval"), path.with_name(stem + ".bvec")]
    return [path]


def read_bvals(path: Path) -> list[float]:
    """The b-values of a diffusion series (its ``.bval`` file: one line of numbers)."""
    bval = Path(path).with_name(Path(path).name[: -len(".nii.gz")] + ".bval")
    if not bval.is_file():
        raise InputError(
            "the diffusion series has no .bval file beside it",
            path=bval,
            fix="write the b-values (one line, one number per volume) as BIDS asks, or "
            "import the series with metcli import-dicom",
        )
    try:
        return [float(v) for v in bval.read_text(encoding="ascii").split()]
    except (ValueError, UnicodeDecodeError):
        raise InputError(
            "the .bval file holds something other than numbers",
            path=bval,
            fix="write the b-values as one line of numbers",
        ) from None


def volumes_of(bvals: Sequence[float], bvalue: int) -> list[int]:
    """Indices of the volumes of one shell (b within :data:`B_TOLERANCE`, or b < 50 for 0)."""
    if bvalue == 0:
        return [i for i, b in enumerate(bvals) if b < 50]
    return [i for i, b in enumerate(bvals) if abs(b - bvalue) <= B_TOLERANCE * bvalue]
