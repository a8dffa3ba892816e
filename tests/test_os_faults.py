"""Operating-system faults while writing: one line naming the output folder, what
happened and the fix; no C-library lines, no traceback, nothing partial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-c", "from metcli.cli.main import main; main()"]


def _partial_files(root: Path) -> list[Path]:
    """Images and temporary files under participants' folders."""
    return [p for p in root.rglob("*") if p.is_file() and "sub-" in str(p.relative_to(root))]


def _check_one_line_per_participant(stderr: str, needle: str) -> None:
    text = " ".join(stderr.split())
    assert needle in text, stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    assert "NWAD" not in stderr and "** ERROR" not in stderr, stderr


@pytest.fixture
def full_disk(tmp_path):
    """A 256 kB tmpfs: room for the small tables, not for a CT."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_the_folder(full_disk):
    out = full_disk / "cohort"
    result = subprocess.run(
        [*CLI, "synth", str(out), "--subjects", "2"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    _check_one_line_per_participant(result.stderr, "anat: no space left on its device")
    assert "Fix: free space there" in " ".join(result.stderr.split())
    assert not [p for p in _partial_files(out) if p.suffix in (".gz", ".nii") or ".tmp" in p.name]


def test_a_file_size_limit_is_one_line_naming_the_folder(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "cohort"
    result = subprocess.run(
        [*CLI, "synth", str(out), "--subjects", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    assert result.returncode != 0
    _check_one_line_per_participant(result.stderr, "a file would exceed the file-size limit")
    assert "ulimit -f unlimited" in " ".join(result.stderr.split())
    assert not [p for p in _partial_files(out) if p.suffix in (".gz", ".nii") or ".tmp" in p.name]


def test_a_read_only_file_system_is_one_line_naming_the_folder(tmp_path):
    """Root ignores file permissions, so a read-only mount stands in for a read-only
    folder (the matrix in tests/robustness covers permissions as another user)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        result = subprocess.run(
            [*CLI, "synth", str(mount), "--subjects", "2"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(mount) in result.stderr and "read-only" in result.stderr.lower(), result.stderr


def test_every_participant_failing_exits_1(full_disk):
    """Nothing was done: exit 1, and the line says all failed."""
    out = full_disk / "cohort"
    result = subprocess.run(
        [*CLI, "synth", str(out), "--subjects", "2"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    assert "all 2 participant(s) failed" in " ".join(result.stderr.split())


def test_a_group_level_fault_after_participants_finished_exits_3(tmp_path):
    """The participants' files are complete and kept (exit 3); removing the cause and
    running again writes the group table and skips them."""
    out = tmp_path / "cohort"
    blocker = out / "derivatives" / "truth" / "lesions.tsv"
    blocker.mkdir(parents=True)
    command = [*CLI, "synth", str(out), "--subjects", "2", "--no-truth-lesions"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    line = " ".join(result.stderr.split())
    assert f"{blocker}: a folder stands where this output file goes" in line
    assert "2 participant(s) finished before this and their outputs are kept" in line
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    cts = sorted((out / "rawdata").rglob("*_ct.nii.gz"))
    assert len(cts) == 2
    assert not [p for p in out.rglob("*") if ".part" in p.name]
    before = [p.stat().st_mtime_ns for p in cts]
    blocker.rmdir()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert blocker.is_file() and [p.stat().st_mtime_ns for p in cts] == before


def test_split_lesions_group_level_fault_exits_3(tmp_path):
    out = tmp_path / "cohort"
    made = subprocess.run(
        [*CLI, "synth", str(out), "--subjects", "2", "--no-truth-lesions"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    lesions = tmp_path / "lesions"
    (lesions / "lesions.tsv").mkdir(parents=True)
    result = subprocess.run(
        [*CLI, "split-lesions", str(out / "derivatives" / "truth"), str(lesions)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    assert "2 participant(s) finished before this" in " ".join(result.stderr.split())
    assert len(list(lesions.rglob("*_desc-lesions_dseg.nii.gz"))) == 2
