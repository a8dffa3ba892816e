"""File naming, participant selection and levels (metcli.io.bids)."""

from pathlib import Path

import pytest

from metcli.core.errors import InputError, UsageError
from metcli.io import bids


@pytest.mark.parametrize(
    "name",
    [
        "sub-001_ct.nii.gz",
        "sub-001_ce-portal_ct.nii.gz",
        "sub-A1_ses-2_ce-arterial_ct.nii.gz",
        "sub-001_ses-1_ce-portal_desc-lesions_dseg.nii.gz",
        "sub-001_ce-portal_desc-lesions_dseg.tsv",
        "sub-001_ce-portal_desc-radiomics_features.tsv",
        "sub-7_dseg.json",
    ],
)
def test_name_round_trip(name):
    ent = bids.parse_name(name)
    assert bids.build_name(ent) == name
    assert bids.parse_name(Path("x") / "y" / name) == ent


def test_entities_fields_and_relpath():
    ent = bids.parse_name("sub-001_ses-1_ce-portal_desc-lesions_dseg.nii.gz")
    assert (ent.sub, ent.ses, ent.ce, ent.desc, ent.suffix, ent.extension) == (
        "001",
        "1",
        "portal",
        "lesions",
        "dseg",
        ".nii.gz",
    )
    assert ent.relpath() == Path(
        "sub-001/ses-1/anat/sub-001_ses-1_ce-portal_desc-lesions_dseg.nii.gz"
    )
    raw = bids.Entities(sub="001", ce="portal")
    assert raw.name == "sub-001_ce-portal_ct.nii.gz"
    assert bids.derivative_path(
        Path("/o"), raw, desc="lesions", suffix="dseg", extension=".tsv"
    ) == Path("/o/sub-001/anat/sub-001_ce-portal_desc-lesions_dseg.tsv")


@pytest.mark.parametrize(
    "name",
    [
        "sub-001.nii.gz",  # no suffix
        "ses-1_sub-001_ct.nii.gz",  # wrong order
        "sub-001_ce-portal_ses-1_ct.nii.gz",  # wrong order
        "sub-001_foo-1_ct.nii.gz",  # unknown entity
        "sub-00_1_ct.nii.gz",  # malformed
        "sub-001_ct.mha",  # unknown extension
        "sub-0-1_ct.nii.gz",  # bad label
    ],
)
def test_bad_names_refused(name):
    with pytest.raises(InputError):
        bids.parse_name(name)


def test_sidecar_path():
    assert bids.sidecar_path(Path("a/sub-1_dseg.nii.gz")) == Path("a/sub-1_dseg.json")
    assert bids.sidecar_path(Path("a/sub-1_desc-lesions_dseg.tsv")) == Path(
        "a/sub-1_desc-lesions_dseg.json"
    )


@pytest.mark.parametrize("label,clean", [("001", "001"), ("sub-001", "001"), ("A7b", "A7b")])
def test_clean_label(label, clean):
    assert bids.clean_label(label) == clean


@pytest.mark.parametrize("label", ["../x", "a/b", "..", "sub-", "", "a b", "a_b", "a-b", "x\\y"])
def test_clean_label_refuses_paths_and_bad_characters(label):
    with pytest.raises(UsageError) as info:
        bids.clean_label(label)
    assert "--participant-label" in str(info.value)


def test_select_participants():
    available = ["002", "001", "010"]
    assert bids.select_participants(available, None) == ["001", "002", "010"]
    assert bids.select_participants(available, ["sub-010", "001", "010"]) == ["010", "001"]
    with pytest.raises(UsageError) as info:
        bids.select_participants(available, ["003"])
    message = str(info.value)
    assert "003" in message and "001, 002, 010" in message


def test_resolve_levels():
    assert bids.resolve_levels(None, []) == (True, True)
    assert bids.resolve_levels(None, ["001"]) == (True, False)
    assert bids.resolve_levels("group", ["001"]) == (False, True)
    assert bids.resolve_levels("participant", []) == (True, False)
    assert bids.resolve_levels("both", ["001"]) == (True, True)
    with pytest.raises(UsageError):
        bids.resolve_levels("cohort", [])


def test_find_files(tmp_path):
    names = [
        "sub-001/anat/sub-001_ce-portal_ct.nii.gz",
        "sub-001/anat/sub-001_ce-arterial_ct.nii.gz",
        "sub-002/ses-1/anat/sub-002_ses-1_ce-portal_ct.nii.gz",
        "sub-002/anat/sub-002_ce-portal_desc-lesions_dseg.nii.gz",
        "sub-003/anat/sub-004_ce-portal_ct.nii.gz",  # wrong participant folder: ignored
        "sub-003/anat/notes.txt",
    ]
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    found = bids.find_files(tmp_path, suffix="ct")
    assert [a.relpath.as_posix() for a in found] == [
        "sub-001/anat/sub-001_ce-arterial_ct.nii.gz",
        "sub-001/anat/sub-001_ce-portal_ct.nii.gz",
        "sub-002/ses-1/anat/sub-002_ses-1_ce-portal_ct.nii.gz",
    ]
    assert len(bids.find_files(tmp_path, suffix="ct", phases=["portal"])) == 2
    assert len(bids.find_files(tmp_path, suffix="ct", participants=["002"])) == 1
    lesions = bids.find_files(tmp_path, suffix="dseg", desc="lesions")
    assert [a.entities.sub for a in lesions] == ["002"]
    assert bids.participant_folders(tmp_path) == ["001", "002", "003"]
