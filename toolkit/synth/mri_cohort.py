"""``metcli synth OUT_DIR --modality mr``: a synthetic non-contrast liver MRI cohort of
benign lesions, hepatocellular carcinoma and metastases (the non-contrast MRI study: T2w
and DWI as channels).

Writes the folders of the CT scenarios (:func:`metcli.synth.synth.synth_cohort`) with MR
images under BIDS' names (:mod:`metcli.io.channels`): ``anat/sub-<id>_T2w.nii.gz`` and the
4D ``dwi/sub-<id>_dwi.nii.gz`` with ``.bval``/``.bvec`` (no ADC file: metcli computes it),
each on its own grid; the truth on the T2w grid (``sub-<id>_dseg.nii.gz``, its lesion maps
``sub-<id>_desc-lesions_dseg.nii.gz``); with ``dicom`` a DICOM MR series per sequence.
See ``docs/synth.md``, section "The MR world".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from metcli.core.batch import BatchReport, group_level, run_each
from metcli.core.errors import ParticipantsFailed, UsageError
from metcli.synth.classes import cohort_classes
from metcli.synth.mri import (
    B_VALUES,
    DEFAULT_SUBJECTS,
    MR_CLASS_RATIO,
    MR_CLASSES,
    REFERENCE,
    SCENARIO,
    SEQUENCES,
    MriParams,
    lesion_types,
    make_mri_params,
)
from metcli.synth.mri_phantom import mr_sizes
from metcli.synth.mri_subjects import MriFiles, MriWriter
from metcli.synth.subjects import Subject
from metcli.synth.synth import (
    DATASET_NAME,
    _prepare,
    _split_truth,
    _start_datasets,
    _warn_about_strays,
    participant_labels,
)
from metcli.synth.truth import MRI_TRUTH_COLUMNS, write_cohort_table

log = logging.getLogger(__name__)

README = (
    f"{DATASET_NAME}\n\nSynthetic non-contrast liver MRI phantoms (T2w and diffusion-weighted "
    "images) with benign lesions, hepatocellular carcinoma and metastases, written by "
    "`metcli synth --modality mr` (docs/synth.md): no real person's data. The settings and "
    "seed of each file are in its JSON sidecar."
)


def mri_classes(
    subjects: int | None = None, class_counts: Mapping[str, int] | None = None
) -> list[str]:
    """Each participant's class: the first ``subjects`` of the default ratio (1 : 1 : 1),
    or ``class_counts`` interleaved."""
    return cohort_classes(
        subjects, class_counts, order=MR_CLASSES, ratio=MR_CLASS_RATIO, default=DEFAULT_SUBJECTS
    )


def synth_mri_cohort(
    out_dir: str | Path,
    *,
    subjects: int | None = None,
    class_counts: Mapping[str, int] | None = None,
    seed: int = 0,
    size: str | Mapping = "small",
    dicom: bool = False,
    truth_lesions: bool = True,
    null: bool = False,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    report: BatchReport | None = None,
    **knobs: Any,
) -> Path:
    """Write an MR cohort to ``out_dir`` and return ``out_dir``.

    Args:
        subjects: participants in the ratio benign : hcc : metastasis = 1 : 1 : 1 (12 when
            neither this nor ``class_counts`` is given); or
        class_counts: participants per class ({"benign": 4, "hcc": 4, ...}).
        seed: the random seed; size: ``small``, ``paper`` or {"T2w": Grid, "dwi": Grid}.
        dicom: also write each sequence as a DICOM MR series.
        truth_lesions: run split-lesions on the true masks.
        null: no class difference at all (:meth:`~metcli.synth.mri.MriParams.null`).
        knobs: fields of :class:`~metcli.synth.mri.MriParams`; a per-type mapping may give
            some lesion types only.

    Raises:
        UsageError: a bad count, seed, size or knob; nothing is written.
        OutputError: the folder cannot be written, or holds a raw dataset of someone else.
        ParticipantsFailed: some participants failed; the others are written.
    """
    params = make_mri_params(null=null, **knobs)
    sizes = mr_sizes(size)
    classes = mri_classes(subjects, class_counts)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(
            f"seed must be a whole number >= 0, got {seed!r}", fix="give --seed 0 or more"
        )
    out_dir = Path(out_dir)
    raw_dir, truth_dir = _prepare(out_dir)
    settings = mri_settings(params, size, sizes, classes, seed=int(seed), null=null)
    dicom_dir = out_dir / "sourcedata" / "dicom"
    steps = _start_datasets(
        raw_dir,
        truth_dir,
        dicom_dir,
        settings,
        readme=README,
        dicom={"transfer_syntax": "ExplicitVRLittleEndian", "sop_class": "MR Image Storage"},
        images="raw",
    )
    labels = participant_labels(len(classes))
    cohort = [Subject(i, label, cls) for i, (label, cls) in enumerate(zip(labels, classes))]
    types = {s.participant_id: t for s, t in zip(cohort, lesion_types(classes))}
    writer = MriWriter(
        params, sizes, int(seed), steps, raw_dir, truth_dir, dicom_dir, dicom, overwrite, types
    )
    _warn_about_strays(raw_dir, labels)
    report = run_each(
        cohort, key=lambda s: s.participant_id, work=writer.write, progress=progress, report=report
    )
    with group_level(report):
        _write_cohort_tables(writer, cohort, report)
    if report.failed:
        raise ParticipantsFailed(report.failed, total=len(cohort))
    if truth_lesions:
        with group_level(report):
            _split_truth(truth_dir, out_dir / "derivatives" / "truth-lesions", overwrite)
    log.info("synthetic MR cohort in %s: %d participant(s)", out_dir, len(cohort))
    return out_dir


def mri_settings(
    params: MriParams, size, sizes, classes: Sequence[str], *, seed: int, null: bool
) -> dict[str, Any]:
    """The cohort's settings, as every output's provenance records them."""
    return {
        "scenario": SCENARIO,
        "modality": "MR",
        "seed": int(seed),
        "size": size if isinstance(size, str) else "custom",
        "grids": {name: grid.as_dict() for name, grid in sizes.items()},
        "class_counts": {c: list(classes).count(c) for c in MR_CLASSES},
        "null": bool(null),
        "sequences": list(SEQUENCES),
        "reference": REFERENCE,
        "b_values": list(B_VALUES),
        "knobs": params.knobs(),
    }


def _write_cohort_tables(writer: MriWriter, cohort: Sequence[Subject], report: BatchReport):
    """participants.tsv and the truth's ``lesions.tsv`` of the participants written."""
    from metcli.io.participants import write_participants

    files = {
        s.participant_id: MriFiles.of(s, writer.raw_dir, writer.truth_dir, writer.dicom_dir)
        for s in cohort
    }
    written = [
        s
        for s in cohort
        if files[s.participant_id].t2w.is_file() and s.participant_id not in report.failed
    ]
    if written:
        write_participants(writer.raw_dir, [writer.rows[s.participant_id] for s in written])
        write_cohort_table(
            writer.steps["truth"],
            writer.truth_dir,
            [files[s.participant_id].table for s in written],
            columns=MRI_TRUTH_COLUMNS,
        )
