"""split-lesions' lesion maps: their names, finding them, and the one rule that pairs a
lesion map with its CT(s), which training (train-cnn) and prediction (predict) share.

A lesion map is ``sub-<id>/[ses-<s>/]anat/sub-<id>[_ses-<s>][_ce-<phase>]_desc-lesions_dseg.nii.gz``
with its lesion table (the same name, ``.tsv``) beside it. Its CT is the raw
``..._ct.nii.gz`` of the same participant, session and phase; a model with
``phases`` needs one CT per phase of the same participant and session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from metcli.core.errors import InputError

#: split-lesions' lesion map: ``desc-lesions`` and suffix ``dseg``.
LESION_DESC = "lesions"
LESION_SUFFIX = "dseg"


def lesion_table_path(lesion_map: Path) -> Path:
    """The lesion table split-lesions writes beside a lesion map."""
    lesion_map = Path(lesion_map)
    return lesion_map.with_name(lesion_map.name[: -len(".nii.gz")] + ".tsv")


def find_lesion_maps(
    lesions_dir: Path,
    participants: Sequence[str] | None = None,
    phases: Sequence[str] | None = None,
) -> list:
    """split-lesions' lesion maps (:class:`~metcli.io.bids.Acquisition`) of the chosen
    participants (labels without ``sub-``) and phases."""
    from metcli.io.bids import find_files

    return find_files(
        Path(lesions_dir),
        suffix=LESION_SUFFIX,
        desc=LESION_DESC,
        participants=participants,
        phases=phases,
    )


def kept_lesion_ids(table_path: Path) -> list[int]:
    """Ids of the lesions split-lesions kept (``kept`` true), from its lesion table."""
    from metcli.io.files import read_tsv

    rows = read_tsv(table_path, required=("index", "kept"))
    ids = []
    for number, row in enumerate(rows, start=2):
        kept = row["kept"].strip().lower()
        if kept not in ("true", "false"):
            raise InputError(
                f"line {number}: kept is {row['kept']!r}, not true/false",
                path=table_path,
                fix="give the lesion table split-lesions wrote",
            )
        try:
            index = int(row["index"])
        except ValueError:
            raise InputError(
                f"line {number}: index {row['index']!r} is not a whole number",
                path=table_path,
                fix="give the lesion table split-lesions wrote",
            ) from None
        if kept == "true":
            ids.append(index)
    return sorted(ids)


@dataclass
class ImagePairing:
    """A participant's lesion map, its lesion table and its CT(s) by phase."""

    participant_id: str
    key: tuple
    lesion_map: Path
    lesion_table: Path
    cts: dict[str, Path] = field(default_factory=dict)


def choose_lesion_map(
    pid: str,
    found: Sequence,
    *,
    phases: Sequence[str] | None = None,
    session: str | None = None,
    where: Path | None = None,
):
    """The one lesion map of a participant among ``found`` (in ``session`` if given; with
    several phases, the one of the first of ``phases``); none or several is an
    :class:`InputError`."""
    found = [m for m in found if session is None or m.entities.ses == session]
    if len(found) > 1 and phases:
        found = [m for m in found if m.entities.ce == phases[0]] or found
    if not found:
        raise InputError(
            f"no lesion map{f' of session {session}' if session else ''} for {pid}",
            path=where,
            fix="run split-lesions for this participant",
        )
    if len(found) > 1:
        names = ", ".join(m.path.name for m in found)
        raise InputError(
            f"{pid} has several lesion maps ({names}); the model takes one CT",
            path=where,
            fix="give --session, or a LESIONS_DIR with one lesion map per participant",
        )
    return found[0]


def pair_images(
    lesion_map, cts_by_key: dict[tuple, Path], *, raw_dir: Path, phases: Sequence[str] | None = None
) -> ImagePairing:
    """The CT(s) and lesion table of a lesion map (an :class:`~metcli.io.bids.Acquisition`).

    ``cts_by_key``: the raw CTs by (participant label, session, phase). Without
    ``phases`` the CT is the lesion map's own; with ``phases``, one CT per phase.
    A missing CT or lesion table is an :class:`InputError`.
    """
    pid = lesion_map.entities.participant_id
    sub, ses, own = lesion_map.entities.key
    wanted = list(phases) if phases else [own]
    missing = [p for p in wanted if (sub, ses, p) not in cts_by_key]
    if missing:
        what = (
            f"no CT of phase(s) {', '.join(missing)} for {pid}"
            if phases
            else f"no CT in RAW_DIR for the lesion map {lesion_map.path.name}"
        )
        raise InputError(what, path=raw_dir, fix="give the raw folder the lesions were made from")
    table = lesion_table_path(lesion_map.path)
    if not table.is_file():
        raise InputError(
            "the lesion table beside the lesion map is missing",
            path=table,
            fix="run split-lesions again for this participant",
        )
    return ImagePairing(
        pid,
        lesion_map.entities.key,
        lesion_map.path,
        table,
        {p: cts_by_key[(sub, ses, p)] for p in wanted},
    )


def channel_files_by_key(
    raw_dir: Path, participants: Sequence[str], channels: Sequence[str]
) -> dict[tuple, Path]:
    """The files of MR (or any) channels by (participant label, session, channel name), as
    :func:`pair_images` looks CTs up; a channel without its file is left out."""
    from metcli.io.channels import channel_files, channel_path, parse_channel

    found: dict[tuple, Path] = {}
    for label in participants:
        folder = Path(raw_dir) / f"sub-{label}"
        sessions = [None] + sorted(p.name[4:] for p in folder.glob("ses-*") if p.is_dir())
        for ses in sessions:
            for name in channels:
                channel = parse_channel(name)
                if all(f.is_file() for f in channel_files(raw_dir, channel, label, ses)):
                    found[(label, ses, name)] = channel_path(raw_dir, channel, label, ses)
    return found
