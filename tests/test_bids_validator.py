"""The official BIDS validator (npm ``bids-validator``) on the raw datasets metcli writes
(issue 14, item 7): synth's and import-dicom's pass with no errors.

The validator is found in ``METCLI_BIDS_VALIDATOR``, under ``.tools/`` (``make test``
installs it there where npm is present) or on PATH; the tests skip where it is absent.
It runs with the configuration metcli ships (``schemas/bids_validator_config.json``),
which turns one error into a warning: ``SUBJECT_FOLDERS``, which the validator raises
for a dataset whose subjects hold only CT (BIDS has no CT datatype yet, so the CT files
are in ``.bidsignore`` and the subjects hold nothing the validator counts as data).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "schemas" / "bids_validator_config.json"
CLI = [sys.executable, "-c", "from metcli.cli.main import main; main()"]


def _validator() -> str | None:
    for candidate in (
        os.environ.get("METCLI_BIDS_VALIDATOR"),
        str(REPO / ".tools" / "node_modules" / ".bin" / "bids-validator"),
        shutil.which("bids-validator"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


VALIDATOR = _validator()
pytestmark = pytest.mark.skipif(
    VALIDATOR is None or shutil.which("node") is None,
    reason="the BIDS validator is not installed (make test installs it where npm is present)",
)


def validate(dataset: Path, *, config: Path | None = CONFIG) -> dict[str, list[dict]]:
    """The validator's errors and warnings, by code key."""
    command = [VALIDATOR, str(dataset), "--json"]
    if config is not None:
        command += ["-c", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    return {
        kind: [{"key": i["key"], "reason": i["reason"]} for i in report["issues"][kind]]
        for kind in ("errors", "warnings")
    }


def keys(issues: list[dict]) -> set[str]:
    return {i["key"] for i in issues}


def run(*args) -> None:
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bids") / "cohort"
    run("synth", out, "--subjects", 2, "--dicom", "--no-truth-lesions", "-q")
    return out


def test_synths_raw_dataset_has_no_errors(cohort):
    found = validate(cohort / "rawdata")
    assert found["errors"] == [], found["errors"]
    # what metcli writes for the validator: a README, Authors, participants.json
    assert not keys(found["warnings"]) & {
        "README_FILE_MISSING",
        "NO_AUTHORS",
        "CUSTOM_COLUMN_WITHOUT_DESCRIPTION",
    }, found["warnings"]
    description = json.loads((cohort / "rawdata" / "participants.json").read_text())
    assert set(description["primary"]["Levels"]) == {"colorectal", "pancreatic"}


def test_import_dicoms_raw_dataset_has_no_errors(cohort, tmp_path):
    raw = tmp_path / "rawdata"
    dicom = cohort / "sourcedata" / "dicom" / "sub-001"
    run("import-dicom", dicom, raw, "--participant-label", "001", "--primary", "colorectal", "-q")
    found = validate(raw)
    assert found["errors"] == [], found["errors"]
    assert (raw / "README").is_file() and (raw / "participants.json").is_file()


def test_the_validator_really_checks_the_names(cohort, tmp_path):
    """Without metcli's .bidsignore the CT names are errors, and the configuration only
    changes the one error it names: the tests above are not vacuous."""
    copy = tmp_path / "rawdata"
    shutil.copytree(cohort / "rawdata", copy)
    (copy / ".bidsignore").unlink()
    found = validate(copy)
    assert "NOT_INCLUDED" in keys(found["errors"]), found
    (copy / ".bidsignore").write_text((cohort / "rawdata" / ".bidsignore").read_text())
    without_config = validate(copy, config=None)
    assert keys(without_config["errors"]) == {"SUBJECT_FOLDERS"}, without_config["errors"]
