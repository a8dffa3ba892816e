"""MR series: which channel a series is, and which series ``import-dicom`` takes.

The channel (a :mod:`metcli.io.channels` name: ``T2w``, ``T1w``, ``T1w-<phase>``, ``DWI``,
``ADC``) is the one ``--channel`` gives, else it is inferred from the headers, first
rule that speaks wins (:func:`infer_channel`):

1. ``ADC`` in ImageType, or ``ADC``/``apparent diffusion`` in SeriesDescription: ADC map;
2. DiffusionBValue (0018,9087) in the headers, DIFFUSION/TRACEW in ImageType, or
   ``dwi``/``diff``/``diffusion``/``trace`` in SeriesDescription: DWI;
3. SeriesDescription keywords: ``t1``, ``vibe``, ``lava``, ``thrive``, ``flash``, ``fl3d``,
   ``spgr``, ``mprage`` give T1w; ``t2`` (not T2*), ``haste``, ``ssfse`` give T2w; both
   kinds at once is ambiguous;
4. ScanningSequence, SequenceVariant, EchoTime and RepetitionTime: spin echo (SE/RM) with
   TE >= 60 ms and TR >= 800 ms is T2w; spoiled gradient echo (GR with SP) or spin echo
   with TE <= 15 ms (SE: <= 30 ms) and TR <= 800 ms is T1w.

Otherwise the channel is unknown and the import asks for ``--channel``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

from metcli.core.errors import DicomError, UsageError
from metcli.imaging.dicom.headers import ENHANCED_MR_IMAGE_STORAGE, MR_IMAGE_STORAGE
from metcli.imaging.dicom.series import MIN_SLICES, SeriesInfo, select_series

log = logging.getLogger(__name__)

#: The MR channels import-dicom writes (T1w may carry a phase: T1w-arterial).
MR_CHANNELS = ("T2w", "T1w", "DWI", "ADC")
CHANNEL_HELP = "T2w, T1w, T1w-<phase>, DWI or ADC"

_ADC = re.compile(r"(?<![a-z])adc(?![a-z])|apparent diffusion", re.IGNORECASE)
_DWI = re.compile(r"dwi|diffusion|(?<![a-z])diff(?![a-z])|(?<![a-z])trace", re.IGNORECASE)
_T1 = re.compile(r"(?<![a-z0-9])t1(?![0-9])|vibe|lava|thrive|flash|fl3d|spgr|mprage", re.IGNORECASE)
_T2 = re.compile(r"(?<![a-z0-9])t2(?![0-9*]|_?star)|haste|ssfse", re.IGNORECASE)


@dataclass(frozen=True)
class Inference:
    """The channel a series looks like (None: unknown) and why."""

    channel: str | None
    reason: str


def _described(text: str) -> str:
    return repr(text) if text else "(none)"


def _by_description(series: SeriesInfo) -> Inference | None:
    text = series.description
    found = []
    for channel, pattern in (("T1w", _T1), ("T2w", _T2)):
        match = pattern.search(text)
        if match:
            found.append((channel, match.group(0)))
    if len(found) == 1:
        channel, word = found[0]
        return Inference(channel, f"SeriesDescription {text!r} contains {word!r}")
    if found:
        return Inference(
            None,
            f"SeriesDescription {text!r} names both T1 ({found[0][1]!r}) and T2 ({found[1][1]!r})",
        )
    return None


def _by_parameters(series: SeriesInfo) -> Inference | None:
    mr = series.slices[0].mr
    if mr is None or mr.echo_time is None or mr.repetition_time is None:
        return None
    sequence = set(mr.scanning_sequence)
    te, tr = mr.echo_time, mr.repetition_time
    said = (
        f"ScanningSequence {'/'.join(mr.scanning_sequence) or '(none)'}, SequenceVariant "
        f"{'/'.join(mr.sequence_variant) or '(none)'}, EchoTime {te:g} ms, RepetitionTime "
        f"{tr:g} ms"
    )
    spin_echo = bool(sequence & {"SE", "RM"}) and "GR" not in sequence
    if spin_echo and te >= 60 and tr >= 800:
        return Inference("T2w", f"{said} (spin echo, long TE and TR)")
    spoiled = "GR" in sequence and "SP" in set(mr.sequence_variant)
    if tr <= 800 and ((spoiled and te <= 15) or (spin_echo and te <= 30)):
        return Inference("T1w", f"{said} (short TE and TR)")
    return None


def infer_channel(series: SeriesInfo) -> Inference:
    """The channel an MR series looks like, by the rules of the module docstring."""
    image_type = set(series.image_type)
    text = series.description
    if "ADC" in image_type:
        return Inference("ADC", "ImageType holds ADC")
    if _ADC.search(text):
        return Inference("ADC", f"SeriesDescription {text!r} names an ADC map")
    b_values = sorted({s.mr.b_value for s in series.slices if s.mr and s.mr.b_value is not None})
    if b_values:
        shown = ", ".join(f"{b:g}" for b in b_values)
        return Inference("DWI", f"DiffusionBValue (0018,9087) in the headers (b = {shown})")
    diffusion_types = sorted(image_type & {"DIFFUSION", "TRACEW"})
    if diffusion_types:
        return Inference("DWI", f"ImageType holds {'/'.join(diffusion_types)}")
    match = _DWI.search(text)
    if match:
        return Inference("DWI", f"SeriesDescription {text!r} contains {match.group(0)!r}")
    found = _by_description(series) or _by_parameters(series)
    if found is not None:
        return found
    return Inference(
        None,
        f"its SeriesDescription {_described(text)} holds no keyword metcli knows (t1, vibe, "
        "t2, haste, dwi, diffusion, adc...), it has no DiffusionBValue (0018,9087), and its "
        "ScanningSequence, EchoTime and RepetitionTime do not say",
    )


def mr_not_a_candidate(series: SeriesInfo) -> str | None:
    """Why an MR series is not taken automatically (None: an MR image series)."""
    if series.modality != "MR":
        return f"modality {series.modality}"
    if series.sop_class_uid not in ("", MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE):
        return "not an MR image (secondary capture, report or other object)"
    if series.is_localizer:
        return "localizer"
    if series.orientation == "mixed orientations":
        return "slices of mixed orientations"
    if series.n_files < MIN_SLICES and max(s.frames for s in series.slices) < MIN_SLICES:
        return "single slice"
    return None


def parse_channel_option(text: str | None, phase: str | None):
    """The :class:`~metcli.io.channels.Channel` of ``--channel`` (and ``--phase``), or None."""
    from metcli.io.channels import Channel, parse_channel

    if text is None:
        return None
    name = str(text).strip()
    match = re.match(r"^(dwi)(?:-b(\d+))?$", name, re.IGNORECASE)
    if match:
        channel = Channel("DWI", bvalue=int(match.group(2)) if match.group(2) else None)
    else:
        for anat in ("T1w", "T2w"):
            if name.lower() == anat.lower() or name.lower().startswith(anat.lower() + "-"):
                name = anat + name[len(anat) :]
        channel = parse_channel(name, option="--channel")
    if channel.modality == "CT":
        raise UsageError(
            f"--channel {text!r} is not an MR channel",
            fix=f"give one of {CHANNEL_HELP}; for a CT series leave --channel out (its phase "
            "goes in --phase)",
        )
    return with_phase(channel, phase)


def with_phase(channel, phase: str | None):
    """The channel with the contrast phase of ``--phase`` (T1w only)."""
    from metcli.io.channels import Channel

    if phase is None:
        return channel
    if channel.modality != "T1w":
        raise UsageError(
            f"--phase {phase} does not apply to a {channel.modality} series",
            fix="give --phase for CT and contrast-enhanced T1w series only",
        )
    if channel.phase is not None and channel.phase != phase:
        raise UsageError(
            f"--channel {channel.name} and --phase {phase} name two phases",
            fix="give the phase once",
        )
    return Channel("T1w", phase=phase)


def _listing(series: Sequence[SeriesInfo], limit: int = 12) -> str:
    items = []
    for item in series[:limit]:
        inference = infer_channel(item)
        items.append(f"{item.describe()}: {inference.channel or 'channel unknown'}")
    if len(series) > limit:
        items.append(f"and {len(series) - limit} more")
    return "; ".join(items)


def match_description(series: Sequence[SeriesInfo], text: str) -> list[SeriesInfo]:
    """The series whose SeriesDescription contains ``text`` or matches it as a regular
    expression (case-insensitive)."""
    try:
        pattern = re.compile(text, re.IGNORECASE)
    except re.error:
        pattern = None
    low = text.lower()
    return [
        s
        for s in series
        if low in s.description.lower() or (pattern is not None and pattern.search(s.description))
    ]


def _one_of(matches: list[SeriesInfo], wanted: str, where) -> SeriesInfo:
    """The one series among several of a channel: the only axial one, else ambiguous."""
    if len(matches) == 1:
        return matches[0]
    axial = [s for s in matches if s.orientation == "axial"]
    if len(axial) == 1:
        log.info("chosen: the axial %s series %s", wanted, axial[0].describe())
        for other in matches:
            if other is not axial[0]:
                log.warning("not imported (not axial): %s", other.describe())
        return axial[0]
    raise UsageError(
        f"{len(matches)} MR series are {wanted}, so which to import is not clear: "
        f"{_listing(matches)}",
        path=where,
        fix="name one with --series-description TEXT or --series-uid UID",
    )


def select_mr_series(series: Sequence[SeriesInfo], channel, *, where) -> SeriesInfo:
    """The MR series of ``channel`` (a Channel, or None: the one MR series there is)."""
    mr = [s for s in series if s.modality == "MR"]
    usable = [s for s in mr if mr_not_a_candidate(s) is None]
    if channel is not None:
        matches = [s for s in usable if infer_channel(s).channel == channel.modality]
        if not matches:
            raise DicomError(
                f"no MR series recognised as {channel.modality} found; the MR series: "
                f"{_listing(mr) if mr else 'none'}",
                path=where,
                fix=f"name the series with --series-uid UID (or --series-description TEXT) "
                f"together with --channel {channel.name}",
            )
        return _one_of(matches, channel.modality, where)
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise DicomError(
            "no importable MR image series found; found: "
            + "; ".join(f"{s.describe()}: {mr_not_a_candidate(s)}" for s in series[:20]),
            path=where,
            fix="give the folder of an MR series, or name a series with --series-uid",
        )
    raise UsageError(
        f"{len(usable)} MR series found and no --channel given, so which to import is not "
        f"clear: {_listing(usable)}",
        path=where,
        fix=f"give --channel ({CHANNEL_HELP}), or name the series with --series-description "
        "TEXT or --series-uid UID",
    )


def choose_series(
    series: Sequence[SeriesInfo],
    *,
    series_uid: str | None,
    description: str | None,
    channel,
    where,
) -> SeriesInfo:
    """The series to import: ``--series-uid``; else among the series ``--series-description``
    matches (all without it): the MR series of ``--channel`` when given, else the largest
    axial CT series when there is one (CT works as before MR was added), else the MR series."""
    if series_uid is not None:
        if description is not None:
            raise UsageError(
                "--series-uid and --series-description both name a series",
                fix="give one of them",
            )
        return select_series(series, series_uid, where=where)
    pool = list(series)
    if description is not None:
        pool = match_description(series, description)
        if not pool:
            raise UsageError(
                f"--series-description {description!r} matches no series; found: "
                + "; ".join(s.describe() for s in series[:20]),
                path=where,
                fix="give a part of one of the descriptions listed (case-insensitive; a "
                "regular expression also works), or name the series with --series-uid",
            )
    if channel is not None:
        return select_mr_series(pool, channel, where=where)
    if any(s.not_a_candidate is None for s in pool) or not any(s.modality == "MR" for s in pool):
        return select_series(pool, None, where=where)
    return select_mr_series(pool, None, where=where)


def channel_label(channel) -> str:
    """``DWI`` for the whole diffusion series, else the channel's name."""
    return "DWI" if channel.modality == "DWI" else channel.name


def decide_channel(series: SeriesInfo, wanted, phase: str | None, *, where):
    """The channel an MR series is written as, and the sidecar's record of why.

    ``wanted`` is ``--channel`` (with ``--phase``) or None: then the inferred channel,
    with ``--phase`` for a T1w series; a series whose channel cannot be told is a
    :class:`DicomError` asking for ``--channel``.
    """
    from metcli.io.channels import Channel

    inference = infer_channel(series)
    if wanted is not None:
        if inference.channel not in (None, wanted.modality):
            log.warning(
                "--channel %s given for a series that looks like %s (%s)",
                channel_label(wanted),
                inference.channel,
                inference.reason,
            )
        return wanted, {
            "Channel": channel_label(wanted),
            "ChannelSource": "--channel",
            "ChannelInferred": inference.channel or "unknown",
            "ChannelReason": inference.reason,
        }
    if inference.channel is None:
        raise DicomError(
            f"cannot tell which channel the MR series {series.describe()} is: {inference.reason}",
            path=where,
            fix=f"name it with --channel ({CHANNEL_HELP})",
        )
    channel = with_phase(Channel(inference.channel), phase)
    log.info("%s: %s (%s)", series.describe(), channel_label(channel), inference.reason)
    return channel, {
        "Channel": channel_label(channel),
        "ChannelSource": "inferred",
        "ChannelInferred": inference.channel,
        "ChannelReason": inference.reason,
    }
