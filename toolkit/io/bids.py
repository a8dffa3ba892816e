"""File names and folders: the one module that builds and parses them.

metcli follows a BIDS-like convention for clinical CT (BIDS has no CT datatype)::

    rawdata/dataset_description.json
    rawdata/participants.tsv
    rawdata/sub-<id>/[ses-<s>/]anat/sub-<id>[_ses-<s>][_ce-<phase>]_ct.nii.gz

Derivatives mirror the same tree under each command's output folder, with a
``desc-`` entity and a suffix of their own, for example
``sub-001_ce-portal_desc-lesions_dseg.nii.gz``. No other module joins or splits
file names; they ask this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from metcli.core.errors import InputError, UsageError

#: Entities in the order they appear in a file name (``lesion-<id>``: one lesion of a
#: lesion map, in per-lesion derivatives such as predict's Grad-CAM images).
ENTITY_ORDER = ("sub", "ses", "ce", "lesion", "desc")
#: Contrast phases metcli knows; others are accepted if they are valid labels.
KNOWN_PHASES = ("native", "arterial", "portal", "delayed")
#: Extensions metcli reads and writes, longest first so ``.nii.gz`` wins over ``.gz``.
EXTENSIONS = (".nii.gz", ".nii", ".tsv", ".json", ".png", ".html", ".onnx", ".dcm")
#: A DICOM object a command writes beside its NIfTI output (``..._dseg.dcm``: a DICOM-SEG
#: of ``..._dseg.nii.gz``, sharing its sidecar ``..._dseg.json``).
DICOM_EXTENSION = ".dcm"

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9]+$")

RAW_DATATYPE = "anat"
CT_SUFFIX = "ct"


def clean_label(label: str, *, entity: str = "sub", option: str = "--participant-label") -> str:
    """Return a BIDS label without its ``<entity>-`` prefix, or raise :class:`UsageError`.

    Labels are alphanumeric (BIDS): no path separators, no ``..``, no ``_`` or ``-``.
    """
    if not isinstance(label, str):
        raise UsageError(f"{option} must be text, got {type(label).__name__}")
    text = label.strip()
    prefix = f"{entity}-"
    if text.startswith(prefix):
        text = text[len(prefix) :]
    if not _LABEL_RE.match(text):
        raise UsageError(
            f"{option} {label!r} is not a valid label: labels are letters and digits only "
            "(no '/', '..', '_', '-' or spaces)",
            fix=f"use a label such as '001' or '{entity}-001'",
        )
    return text


@dataclass(frozen=True, order=True)
class Entities:
    """The parts of a metcli file name.

    ``sub`` is required; ``ses``, ``ce`` (contrast phase), ``lesion`` and ``desc`` are optional;
    ``suffix`` (``ct``, ``dseg``, ``features``...) and ``extension`` end the name.
    """

    sub: str
    ses: str | None = None
    ce: str | None = None
    desc: str | None = None
    suffix: str = CT_SUFFIX
    extension: str = ".nii.gz"
    lesion: str | None = None

    def __post_init__(self):
        for name in ENTITY_ORDER:
            value = getattr(self, name)
            if value is None and name != "sub":
                continue
            if value is None or not _LABEL_RE.match(value):
                raise UsageError(
                    f"entity {name}-{value!r} is not a valid label (letters and digits only)"
                )
        if not _SUFFIX_RE.match(self.suffix):
            raise UsageError(f"suffix {self.suffix!r} is not valid (letters and digits only)")
        if self.extension not in EXTENSIONS:
            raise UsageError(f"extension {self.extension!r} is not one of {', '.join(EXTENSIONS)}")

    @property
    def participant_id(self) -> str:
        return f"sub-{self.sub}"

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        """What identifies one acquisition: participant, session, phase."""
        return (self.sub, self.ses, self.ce)

    def with_(self, **changes) -> "Entities":
        """A copy with some entities, the suffix or the extension changed."""
        return replace(self, **changes)

    @property
    def name(self) -> str:
        return build_name(self)

    def relpath(self, datatype: str = RAW_DATATYPE) -> Path:
        """Path relative to a dataset root: ``sub-X/[ses-Y/]<datatype>/<name>``."""
        parts = [f"sub-{self.sub}"]
        if self.ses:
            parts.append(f"ses-{self.ses}")
        parts.append(datatype)
        parts.append(self.name)
        return Path(*parts)

    def describe(self) -> str:
        """A short human label: ``sub-001 ses-1 portal``."""
        out = [f"sub-{self.sub}"]
        if self.ses:
            out.append(f"ses-{self.ses}")
        if self.ce:
            out.append(self.ce)
        return " ".join(out)


def build_name(ent: Entities) -> str:
    """``sub-001_ses-1_ce-portal_desc-lesions_dseg.nii.gz`` from its entities."""
    parts = []
    for key in ENTITY_ORDER:
        value = getattr(ent, key)
        if value is not None:
            parts.append(f"{key}-{value}")
    parts.append(ent.suffix)
    return "_".join(parts) + ent.extension


def split_extension(name: str) -> tuple[str, str]:
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    raise InputError(
        f"file name {name!r} has none of the extensions metcli reads ({', '.join(EXTENSIONS)})"
    )


def parse_name(name: str | Path) -> Entities:
    """Parse a file name (a path's last part) into :class:`Entities`.

    Raises :class:`InputError` for a name that does not follow the convention.
    """
    base = Path(name).name
    stem, ext = split_extension(base)
    parts = stem.split("_")
    if len(parts) < 2:
        raise InputError(
            f"{base!r} does not follow the naming convention sub-<id>[_ses-<s>][_ce-<phase>]"
            "[_desc-<d>]_<suffix><ext>",
            path=name,
            fix="rename it that way, with labels of letters and digits only",
        )
    values: dict[str, str] = {}
    order = list(ENTITY_ORDER)
    position = 0
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or key not in ENTITY_ORDER:
            raise InputError(
                f"{base!r} has an unknown entity {part!r}",
                path=name,
                fix=f"use only the entities {', '.join(ENTITY_ORDER)} (in that order), "
                "each as <entity>-<label>",
            )
        index = order.index(key)
        if index < position or key in values:
            raise InputError(
                f"{base!r} has its entities out of order or repeated",
                path=name,
                fix=f"name each entity once, in the order {', '.join(ENTITY_ORDER)}",
            )
        position = index
        values[key] = value
    if "sub" not in values:
        raise InputError(
            f"{base!r} does not start with sub-<id>",
            path=name,
            fix="rename it sub-<id>_..., the participant's label first",
        )
    try:
        return Entities(suffix=parts[-1], extension=ext, **values)
    except UsageError as exc:
        raise InputError(f"{base!r}: {exc.what}", path=name, fix=exc.fix) from None


def derivative_path(
    out_dir: Path,
    source: Entities,
    *,
    desc: str | None = None,
    suffix: str,
    extension: str,
    datatype: str = RAW_DATATYPE,
) -> Path:
    """Where a per-acquisition derivative of ``source`` lives inside ``out_dir``."""
    ent = source.with_(desc=desc, suffix=suffix, extension=extension)
    return Path(out_dir) / ent.relpath(datatype)


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar beside a data file (``x_dseg.nii.gz`` -> ``x_dseg.json``)."""
    path = Path(path)
    stem, _ext = split_extension(path.name)
    return path.with_name(stem + ".json")


@dataclass
class Acquisition:
    """One image in a dataset, found on disk."""

    entities: Entities
    path: Path
    root: Path

    @property
    def relpath(self) -> Path:
        return self.path.relative_to(self.root)


def find_files(
    root: Path,
    *,
    suffix: str,
    desc: str | None = None,
    extension: str = ".nii.gz",
    participants: Iterable[str] | None = None,
    phases: Iterable[str] | None = None,
    datatype: str = RAW_DATATYPE,
) -> list[Acquisition]:
    """Files of one kind in a BIDS-like tree, sorted by participant, session, phase.

    ``desc=None`` only matches files without a ``desc-`` entity.
    """
    root = Path(root)
    wanted = None if participants is None else set(participants)
    wanted_phases = None if phases is None else set(phases)
    found = []
    for sub_dir in sorted(root.glob("sub-*")):
        if not sub_dir.is_dir():
            continue
        label = sub_dir.name[4:]
        if wanted is not None and label not in wanted:
            continue
        folders = [sub_dir / datatype] + sorted(p / datatype for p in sub_dir.glob("ses-*"))
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob(f"sub-*_{suffix}{extension}")):
                try:
                    ent = parse_name(path.name)
                except InputError:
                    continue
                if ent.sub != label or ent.suffix != suffix or ent.desc != desc:
                    continue
                if ent.extension != extension:
                    continue
                if wanted_phases is not None and ent.ce not in wanted_phases:
                    continue
                found.append(Acquisition(ent, path, root))
    found.sort(key=lambda a: (a.entities.sub, a.entities.ses or "", a.entities.ce or ""))
    return found


def participant_folders(root: Path) -> list[str]:
    """Labels of the ``sub-*`` folders under ``root``."""
    return sorted(p.name[4:] for p in Path(root).glob("sub-*") if p.is_dir())


def select_participants(
    available: Sequence[str], requested: Sequence[str] | None, *, where: str | Path | None = None
) -> list[str]:
    """The labels to process: all ``available`` ones, or the ``requested`` subset.

    Requested labels may carry the ``sub-`` prefix. An unknown or malformed label is a
    :class:`UsageError` that lists the valid ones.
    """
    available = sorted(available)
    if not requested:
        return available
    chosen = []
    for label in requested:
        clean = clean_label(label)
        if clean not in available:
            shown = ", ".join(available[:30]) + (" ..." if len(available) > 30 else "")
            raise UsageError(
                f"--participant-label {label!r} is not a participant of this dataset"
                + (f" ({where})" if where else ""),
                fix=f"choose among: {shown or '(none found)'}",
            )
        if clean not in chosen:
            chosen.append(clean)
    return chosen


def select_from_folder(
    folder: str | Path, requested: Sequence[str] | None, *, what: str, fix: str
) -> list[str]:
    """The participant labels of ``folder`` (its ``sub-*`` folders) to process: all, or the
    ``requested`` ones (:func:`select_participants`). A missing folder, or one without
    participants, is an :class:`InputError` naming it ``what`` with ``fix``."""
    from metcli.core.errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the {what} does not exist", path=folder, fix=fix)
    available = participant_folders(folder)
    if not available:
        raise InputError("no sub-* participant folders found", path=folder, fix=fix)
    return select_participants(available, list(requested) if requested else None, where=folder)


@dataclass
class Selection:
    """Which participants a run processes and at which level(s)."""

    participants: list[str] = field(default_factory=list)
    participant_level: bool = True
    group_level: bool = True


LEVELS = ("participant", "group", "both")


def resolve_levels(level: str | None, labels: Sequence[str] | None) -> tuple[bool, bool]:
    """(participant level?, group level?) as in BIDS apps.

    Without ``--participant-label`` a command does both levels; with it, only the
    participant level, so that cluster array tasks never write the same file.
    """
    if level is None:
        return True, not labels
    if level not in LEVELS:
        raise UsageError(f"--level {level!r} is not one of {', '.join(LEVELS)}")
    if level == "both":
        return True, True
    return level == "participant", level == "group"
