"""Features tables from other tools (issue 14, item 8): participant_id, lesion_id and the
features are enough; session, phase (or channel) and status have defaults; pyradiomics'
Image and Mask columns are not features; CSV is read by its extension; a label column
is refused."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from test_train_radiomics import NAMES, make_cohort, write_features, write_labels

from metcli.core.errors import InputError
from metcli.io.files import read_tsv
from metcli.radiomics.data import read_features

FAST = dict(
    classifiers="logistic-regression",
    samplers="none",
    cv_folds=3,
    cv_repeats=1,
    inner_folds=2,
    importance_trees=10,
    importance_repeats=2,
)


def write_pyradiomics_csv(path, rows, *, extra=None):
    """What a user gets from pyradiomics' batch mode with participant_id and lesion_id
    added: Image and Mask paths, diagnostics, features; comma-separated."""
    header = ["participant_id", "lesion_id", "Image", "Mask", "diagnostics_Versions_PyRadiomics"]
    header += NAMES + list(extra or {})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for pid, lesion, values in rows:
            writer.writerow(
                [pid, lesion, f"/data/{pid}/ct.nii.gz", f"/data/{pid}/lesion {lesion}.nrrd", "3.1"]
                + [repr(float(v)) for v in values]
                + [v for v in (extra or {}).values()]
            )
    return path


def test_a_minimal_table_reads_like_extracts(tmp_path):
    _labels, rows = make_cohort(0, n_patients=6)
    full = read_features(write_features(tmp_path / "full", rows))
    minimal = read_features(write_pyradiomics_csv(tmp_path / "pyradiomics.csv", rows))
    assert minimal.feature_names == full.feature_names == NAMES
    assert np.array_equal(minimal.values, full.values)
    assert [k[0] for k in minimal.keys] == [k[0] for k in full.keys]
    assert [k[3] for k in minimal.keys] == [k[3] for k in full.keys]
    assert {k[1] for k in minimal.keys} == {None} and {k[2] for k in minimal.keys} == {None}


def test_channel_is_read_as_the_phase_and_status_defaults_to_ok(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text(
        "participant_id\tlesion_id\tchannel\tstatus\tf1\n"
        "sub-001\t1\tT2w\t\t1.5\n"
        "sub-001\t2\tT2w\tfailed:empty\tn/a\n"
        "sub-002\t1\tT2w\tok\t2.5\n"
    )
    table = read_features(path)
    assert table.keys == [("sub-001", None, "T2w", 1), ("sub-002", None, "T2w", 1)]
    assert table.failed == 1 and table.feature_names == ["f1"]


def test_a_label_column_in_the_features_is_refused(tmp_path):
    _labels, rows = make_cohort(0, n_patients=4)
    path = write_pyradiomics_csv(tmp_path / "t.csv", rows, extra={"primary": "colorectal"})
    with pytest.raises(InputError, match=r"label column \(primary\).*participants.tsv"):
        read_features(path)


@pytest.mark.parametrize(
    "content,message",
    [
        ("lesion_id,f1\n1,2.0\n", "missing column\\(s\\) participant_id"),
        ("participant_id,lesion_id,f1\nsub-001,1,2.0,3.0\n", "different number of cells"),
        ("participant_id,lesion_id,note\nsub-001,1,big\n", "'big' is not a number.*removed"),
    ],
)
def test_bad_csv_tables_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as caught:
        read_features(path)
    assert str(path) in caught.value.one_line()


def test_train_radiomics_on_a_pyradiomics_table_equals_training_on_extracts(tmp_path):
    """Same lesions, same features: the same out-of-fold predictions, whichever table."""
    from metcli.radiomics.train_radiomics import train_radiomics

    labels, rows = make_cohort(1, n_patients=12, signal=2.0)
    participants = write_labels(tmp_path / "participants.tsv", labels)
    train_radiomics(
        write_features(tmp_path / "full", rows), tmp_path / "a", labels=participants, **FAST
    )
    train_radiomics(
        write_pyradiomics_csv(tmp_path / "pyradiomics.csv", rows),
        tmp_path / "b",
        labels=participants,
        **FAST,
    )
    a = read_tsv(tmp_path / "a" / "oof_predictions.tsv")
    b = read_tsv(tmp_path / "b" / "oof_predictions.tsv")
    probs = [c for c in a[0] if c.startswith("prob_")]
    assert probs and len(a) == len(b) > 12
    for ra, rb in zip(a, b):
        assert (ra["participant_id"], ra["lesion_id"]) == (rb["participant_id"], rb["lesion_id"])
        assert [ra[c] for c in probs] == [rb[c] for c in probs]
    selected = [r["feature"] for r in read_tsv(tmp_path / "a" / "selected_features.tsv")]
    assert selected == [r["feature"] for r in read_tsv(tmp_path / "b" / "selected_features.tsv")]
    assert (tmp_path / "b" / "logistic-regression_none" / "model.onnx").is_file()
