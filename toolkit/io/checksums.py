"""Checksums of the models in the weights manifest: the install record of a download
(``.metcli-install.json``: the archive's sha256 and the sha256 of every unpacked file) and
the re-hashing of a model's files against the manifest (a shipped model) or its install
record (a downloaded one), which ``metcli weights verify`` and
:func:`metcli.io.weights.resolve_model` do."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

INSTALL_RECORD = ".metcli-install.json"


@dataclass
class VerifyResult:
    """The check of one model (``metcli weights verify`` prints one row of it)."""

    name: str
    status: str  # ok, mismatch, unverified, not installed, listed only
    detail: str

    def row(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def hash_file(path: Path) -> str:
    from metcli.io.files import sha256_file

    return sha256_file(path)


def hash_tree(folder: Path) -> dict[str, str]:
    """The sha256 of every file under ``folder`` (by relative path) but the install record."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != INSTALL_RECORD:
            out[path.relative_to(folder).as_posix()] = hash_file(path)
    return out


def compare_files(expected: dict[str, str], actual: dict[str, str]) -> str | None:
    """What differs between two {relative path: sha256} records (None: nothing)."""
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    extra = sorted(set(actual) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if changed:
        problems.append(f"changed {', '.join(changed[:3])}" + (" ..." if len(changed) > 3 else ""))
    if extra:
        problems.append(f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else ""))
    return "; ".join(problems) or None


def verify_entry(entry) -> VerifyResult:
    """Re-hash one model's files (``entry``: a :class:`~metcli.io.weights.ModelEntry`)
    against the manifest (shipped) or its install record."""
    folder = entry.install_dir()
    if entry.shipped:
        if not folder.is_dir():
            return VerifyResult(
                entry.name, "not built", f"weights/{entry['path']} is not in this installation"
            )
        expected = entry.get("files") or {}
        if not expected:
            return VerifyResult(
                entry.name,
                "unverified",
                "the manifest records no sha256 for its files "
                f"({entry.get('note') or 'not verified'})",
            )
        # Only the listed files count for a shipped model (the package may add others).
        actual = {k: hash_file(folder / k) for k in expected if (folder / k).is_file()}
        problem = compare_files(expected, actual)
        if problem:
            return VerifyResult(entry.name, "mismatch", problem)
        return VerifyResult(
            entry.name,
            "ok" if entry["verified"] else "unverified",
            f"{len(expected)} file(s) match the manifest"
            + ("" if entry["verified"] else " (manifest marks them unverified)"),
        )
    record_path = folder / INSTALL_RECORD
    if not record_path.is_file():
        status = "not installed" if entry.runnable else "listed only"
        return VerifyResult(entry.name, status, "no download in METCLI_HOME")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return VerifyResult(entry.name, "mismatch", f"unreadable install record ({exc})")
    manifest_sha = entry.get("sha256")
    if manifest_sha and record.get("archive_sha256") != manifest_sha:
        installed = str(record.get("archive_sha256"))[:12]
        return VerifyResult(
            entry.name,
            "mismatch",
            f"installed from an archive with sha256 {installed}..., the manifest "
            f"expects {manifest_sha[:12]}...",
        )
    problem = compare_files(record.get("files", {}), hash_tree(folder))
    if problem:
        return VerifyResult(entry.name, "mismatch", problem)
    count = len(record.get("files", {}))
    if not manifest_sha:
        return VerifyResult(
            entry.name,
            "unverified",
            f"{count} file(s) match the install record, but the manifest has no "
            f"sha256 for the download (installed from sha256 "
            f"{str(record.get('archive_sha256'))[:12]}...)",
        )
    return VerifyResult(
        entry.name, "ok", f"{count} file(s) match; archive sha256 matches the manifest"
    )


def record_sha(folder: Path) -> str | None:
    """The archive sha256 an install record names (None: no readable record)."""
    try:
        record = json.loads((folder / INSTALL_RECORD).read_text(encoding="utf-8"))
        return record.get("archive_sha256")
    except (OSError, json.JSONDecodeError):
        return None
