"""Which labels of a manual mask become metcli's liver and lesion.

A label map (``GTV-1=lesion,Liver=liver`` or ``5=liver,2=lesion``; see
:func:`parse_label_map`) names them. Without one, ROI/segment names are read
case-insensitively (:func:`label_from_name`): names containing gtv,
tumor/tumour, lesion or metasta are lesions, other names containing liver are
liver.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from metcli.core.errors import MaskError, UsageError
from metcli.imaging.labels import LESION, LIVER

log = logging.getLogger(__name__)

#: metcli labels a label map may name.
TARGETS = {"liver": LIVER, "lesion": LESION, str(LIVER): LIVER, str(LESION): LESION}

_LESION_NAME = re.compile(r"gtv|tumou?r|lesion|metasta", re.IGNORECASE)
_LIVER_NAME = re.compile(r"liver", re.IGNORECASE)

_LABEL_MAP_FIX = (
    "write it as SOURCE=TARGET pairs separated by commas, TARGET liver or lesion, "
    "for example --label-map 'GTV-1=lesion,Liver=liver' or --label-map '5=liver'"
)


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
                    raise UsageError(
                        f"--label-map entry {part.strip()!r} has no '='", fix=_LABEL_MAP_FIX
                    )
                pairs.append((source, target))
    if not pairs:
        return None
    out: dict[str, int] = {}
    for source, target in pairs:
        source = str(source).strip()
        name = str(target).strip().lower()
        if not source:
            raise UsageError(
                f"--label-map entry '={target}' names no source label", fix=_LABEL_MAP_FIX
            )
        if name not in TARGETS:
            raise UsageError(
                f"--label-map target {str(target).strip()!r} (for {source!r}) is not "
                "liver or lesion",
                fix=_LABEL_MAP_FIX,
            )
        label = TARGETS[name]
        if out.get(source, label) != label:
            raise UsageError(
                f"--label-map maps {source!r} to both liver and lesion",
                fix="map each source label once",
            )
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
class MaskEntry:
    """An ROI of an RTSTRUCT or a segment of a DICOM-SEG."""

    number: int
    name: str


def _matches(entries: Sequence[MaskEntry], key: str) -> list[MaskEntry]:
    """Entries named ``key`` (case-insensitive), else numbered ``key``."""
    wanted = key.strip().casefold()
    found = [e for e in entries if e.name.strip().casefold() == wanted]
    if not found and re.fullmatch(r"\d+", key.strip()):
        found = [e for e in entries if e.number == int(key)]
    return found


def _names(entries: Sequence[MaskEntry]) -> str:
    return ", ".join(repr(e.name) for e in entries) or "(none)"


def assign_labels(
    entries: Sequence[MaskEntry],
    label_map: Mapping[str, int] | None,
    roi_names: Sequence[str] | None,
    *,
    path: Path,
    kind: str,
) -> dict[MaskEntry, int]:
    """Which ROIs/segments become liver or lesion."""
    chosen = list(entries)
    if roi_names:
        chosen = []
        for requested in roi_names:
            found = _matches(entries, requested)
            if not found:
                raise MaskError(
                    f"no {kind} named {requested!r} (the file has {_names(entries)})",
                    path=path,
                    fix="give one of these names to --roi-name",
                )
            chosen.extend(e for e in found if e not in chosen)
    assigned: dict[MaskEntry, int] = {}
    for key, label in (label_map or {}).items():
        found = _matches(chosen, key)
        if not found:
            among = "among the --roi-name choices " if roi_names else ""
            raise MaskError(
                f"--label-map names {key!r}, which is no {kind} {among}of this file "
                f"(it has {_names(chosen)})",
                path=path,
                fix="use one of these names (or numbers) in --label-map",
            )
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
        raise MaskError(
            f"cannot tell whether {_names(unnamed)} is liver or lesion from its name",
            path=path,
            fix=f"say it with --label-map, for example --label-map '{unnamed[0].name}=lesion'",
        )
    if not assigned:
        example = entries[0].name if entries else "NAME"
        raise MaskError(
            f"no {kind} name says liver or lesion (the file has {_names(entries)})",
            path=path,
            fix=f"choose them with --label-map, for example --label-map '{example}=lesion'",
        )
    for entry in unnamed:
        log.info(
            "%s: %s %r is neither liver nor lesion by its name; not imported",
            path.name,
            kind,
            entry.name,
        )
    return assigned


def select_entries(
    entries: Sequence[MaskEntry], requested: Sequence[str | int] | None, *, path: Path, kind: str
) -> list[MaskEntry]:
    """The entries named (or numbered) in ``requested``; all of them for None."""
    if requested is None:
        return list(entries)
    selected: list[MaskEntry] = []
    for name in requested:
        found = _matches(entries, str(name))
        if not found:
            raise MaskError(
                f"no {kind} named {name!r} (the file has {_names(entries)})",
                path=path,
                fix=f"choose one of these {kind} names",
            )
        selected.extend(e for e in found if e not in selected)
    return selected
