"""Synthetic cohorts: portal-venous CT phantoms with known liver and lesion masks.

``metcli synth`` writes a small BIDS-like cohort that users run as a demo and to
test an installation, and that metcli's own tests and demo pipeline use. Each
participant gets a CT phantom in Hounsfield units, its true segmentation
(0 background, 1 liver, 2 lesion) and a table of the lesions the generator
placed; participants.tsv gives the class ("primary": colorectal or pancreatic).

The phantom itself (anatomy, lesions, class differences, randomness) is built by
:mod:`metcli.synth.phantom`; this module writes cohorts of it (see ``docs/synth.md``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from metcli.core.batch import BatchReport, group_level, run_each
from metcli.core.errors import InputError, OutputError, ParticipantsFailed, UsageError
from metcli.imaging.dicom.writer import ct_to_dicom_series
from metcli.io.files import read_json
from metcli.synth.phantom import (
    CLASSES,
    KNOBS,
    PHASE,
    SIZES,
    STUDY_PATIENTS,
    Grid,
    Phantom,
    SynthParams,
    grid_for,
    make_phantom,
    participant_seed,
    phantom_arrays,
)
from metcli.synth.placement import Lesion, lesion_plan
from metcli.synth.subjects import (
    Subject,
    SubjectWriter,
    ct_entities,
    lesion_table_path,
    participant_row,
)
from metcli.synth.truth import write_cohort_table

log = logging.getLogger(__name__)
#: Name of the raw dataset; a rawdata folder with another name is never written into.
DATASET_NAME = "metcli synthetic cohort"
DICOM_INTERCEPT = -1024


# ============================================================================ cohorts
def class_counts(subjects: int) -> tuple[int, int]:
    """(colorectal, pancreatic) for ``subjects`` participants in the study's 47:31 ratio."""
    if isinstance(subjects, bool) or not isinstance(subjects, (int, np.integer)) or subjects < 1:
        raise UsageError(f"subjects must be a whole number >= 1, got {subjects!r}")
    pancreatic = _round_half_up(subjects * _study_fraction())
    return subjects - pancreatic, pancreatic


def _study_fraction() -> float:
    return STUDY_PATIENTS["pancreatic"] / sum(STUDY_PATIENTS.values())


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5 + 1e-9))


def cohort_classes(n_colorectal: int, n_pancreatic: int) -> list[str]:
    """The class of each participant, interleaved so every prefix keeps the ratio.

    Participant k is pancreatic when round((k+1) p) > round(k p), p the pancreatic
    fraction. With the study's ratio (as from :func:`class_counts`) p is exactly 31/78,
    so a larger cohort starts with the classes of a smaller one.
    """
    total = n_colorectal + n_pancreatic
    fraction = n_pancreatic / total
    if (n_colorectal, n_pancreatic) == class_counts(total):
        fraction = _study_fraction()
    classes = []
    for k in range(total):
        step = _round_half_up((k + 1) * fraction) - _round_half_up(k * fraction)
        classes.append("pancreatic" if step else "colorectal")
    return classes  # the steps add up to round(total * fraction) = n_pancreatic


def participant_labels(total: int) -> list[str]:
    """``001``, ``002``, ... (at least three digits)."""
    width = max(3, len(str(total)))
    return [f"{i + 1:0{width}d}" for i in range(total)]


def synth_cohort(
    out_dir: str | Path,
    *,
    n_colorectal: int = 7,
    n_pancreatic: int = 5,
    seed: int = 0,
    size: str | Grid = "small",
    dicom: bool = False,
    truth_lesions: bool = True,
    null: bool = False,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    report: BatchReport | None = None,
    **knobs: float,
) -> Path:
    """Write a synthetic cohort to ``out_dir`` and return ``out_dir``.

    Writes ``rawdata/`` (CTs, participants.tsv), ``derivatives/truth/`` (true dseg,
    lesion tables), ``derivatives/truth-lesions/`` (split-lesions' output on the truth,
    unless ``truth_lesions=False``) and, with ``dicom=True``,
    ``sourcedata/dicom/sub-<id>/`` (each CT as a DICOM series).

    Args:
        n_colorectal, n_pancreatic: participants per class (see :func:`class_counts`).
        seed: the random seed (participant i uses :func:`participant_seed`).
        size: ``small``, ``paper`` or a :class:`Grid`.
        null: remove every class difference (:meth:`SynthParams.null`).
        overwrite: redo participants that are already done.
        progress: called with (participant, status) after each participant.
        report: a :class:`BatchReport` to fill (the command line prints it).
        knobs: any :class:`SynthParams` field but ``grid`` (``lesions_pancreatic=6.0``...);
            None keeps the default.

    Raises:
        UsageError: a bad count, seed, size or knob; nothing is written.
        OutputError: the folder cannot be written, or holds a raw dataset of someone else.
        ParticipantsFailed: some participants failed; the others are written.
    """
    params = _resolve_params(size, null, knobs)
    _check_counts(n_colorectal, n_pancreatic, seed)
    out_dir = Path(out_dir)
    raw_dir, truth_dir = _prepare(out_dir)
    settings = _settings(params, size, n_colorectal, n_pancreatic, seed=seed, null=null)
    dicom_dir = out_dir / "sourcedata" / "dicom"
    steps = _start_datasets(raw_dir, truth_dir, dicom_dir, settings)
    writer = SubjectWriter(
        params, int(seed), steps, raw_dir, truth_dir, dicom_dir, dicom=dicom, overwrite=overwrite
    )
    subjects = _subjects(int(n_colorectal), int(n_pancreatic))
    _warn_about_strays(raw_dir, [s.label for s in subjects])
    report = run_each(
        subjects,
        key=lambda s: s.participant_id,
        work=writer.write,
        progress=progress,
        report=report,
    )
    with group_level(report):
        _write_cohort_tables(writer, subjects, report, seed)
    if report.failed:
        raise ParticipantsFailed(report.failed, total=len(subjects))
    if truth_lesions:
        with group_level(report):
            _split_truth(truth_dir, out_dir / "derivatives" / "truth-lesions", overwrite)
    log.info("synthetic cohort in %s: %d participant(s)", out_dir, len(subjects))
    return out_dir


def _settings(
    params: SynthParams, size, n_colorectal: int, n_pancreatic: int, *, seed: int, null: bool
) -> dict[str, Any]:
    """The cohort's settings, as every output's provenance records them."""
    return {
        "seed": int(seed),
        "size": size if isinstance(size, str) else "custom",
        "grid": params.grid.as_dict(),
        "n_colorectal": int(n_colorectal),
        "n_pancreatic": int(n_pancreatic),
        "null": bool(null),
        "phase": PHASE,
        "knobs": params.knobs(),
    }


def _subjects(n_colorectal: int, n_pancreatic: int) -> list[Subject]:
    """The cohort's participants: index, label and class."""
    labels = participant_labels(n_colorectal + n_pancreatic)
    return [
        Subject(i, label, cls)
        for i, (label, cls) in enumerate(zip(labels, cohort_classes(n_colorectal, n_pancreatic)))
    ]


def _write_cohort_tables(
    writer: SubjectWriter, subjects: Sequence[Subject], report: BatchReport, seed: int
) -> None:
    """participants.tsv and the truth's ``lesions.tsv`` of the participants written."""
    from metcli.io.participants import write_participants

    written = [
        s
        for s in subjects
        if (writer.raw_dir / ct_entities(s).relpath()).is_file()
        and s.participant_id not in report.failed
    ]
    if written:
        write_participants(
            writer.raw_dir,
            [writer.rows.get(s.participant_id) or participant_row(s, seed) for s in written],
        )
        write_cohort_table(
            writer.steps["truth"],
            writer.truth_dir,
            [lesion_table_path(writer.truth_dir, s) for s in written],
        )


def _split_truth(truth_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """split-lesions on the true masks (``derivatives/truth-lesions``)."""
    from metcli.lesions.split_lesions import split_lesions

    lesion_report = split_lesions(truth_dir, out_dir, overwrite=overwrite)
    if lesion_report.failed:
        raise ParticipantsFailed(lesion_report.failed, total=len(lesion_report.status))


def _check_counts(n_colorectal, n_pancreatic, seed) -> None:
    """Raise UsageError for a bad count or seed."""
    for name, value in (("n_colorectal", n_colorectal), ("n_pancreatic", n_pancreatic)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise UsageError(f"{name} must be a whole number >= 0, got {value!r}")
    if n_colorectal + n_pancreatic < 1:
        raise UsageError(
            "the cohort is empty (n_colorectal + n_pancreatic = 0)",
            fix="ask for at least one participant",
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a whole number >= 0, got {seed!r}")


#: The raw dataset's README of the 2023 scenario (each world passes its own).
CT_README = (
    f"{DATASET_NAME}\n\nSynthetic abdominal CT phantoms with liver metastases, "
    "written by `metcli synth` (docs/synth.md): no real person's data. The "
    "settings and seed of each file are in its JSON sidecar."
)
#: The DICOM record of the CT worlds' series.
CT_DICOM = {"transfer_syntax": "ExplicitVRLittleEndian", "rescale_intercept": DICOM_INTERCEPT}


def _start_datasets(
    raw_dir: Path,
    truth_dir: Path,
    dicom_dir: Path,
    settings: dict[str, Any],
    *,
    readme: str = CT_README,
    dicom: dict[str, Any] = CT_DICOM,
    images: str = "ct",
) -> dict[str, Any]:
    """Write the datasets' descriptions and label table; the provenance step of each output
    (``images``: the name of the raw images' step, ``ct`` or ``raw``; ``dicom``: what the
    DICOM series' sidecars record)."""
    from metcli.imaging.labels import write_label_table
    from metcli.io.provenance import Step, write_dataset_description

    write_dataset_description(
        raw_dir,
        name=DATASET_NAME,
        dataset_type="raw",
        authors=["metcli synth (synthetic data, no real person)"],
        readme=readme,
    )
    write_dataset_description(
        truth_dir,
        name="metcli synth: true liver and lesion masks",
        sources={"raw": raw_dir},
        description="the masks and lesions metcli synth placed",
    )
    write_label_table(truth_dir)
    return {
        images: Step("synth", raw_dir, {}, settings),
        "truth": Step("synth", truth_dir, {"raw": raw_dir}, settings),
        "dicom": Step("synth", dicom_dir, {"raw": raw_dir}, {**settings, "dicom": dict(dicom)}),
    }


def _resolve_params(size, null: bool, knobs: Mapping[str, Any]) -> SynthParams:
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise UsageError(
            f"unknown synth parameter(s) {', '.join(unknown)}",
            fix=f"use some of: {', '.join(KNOBS)}",
        )
    params = SynthParams(grid=grid_for(size), **{k: v for k, v in knobs.items() if v is not None})
    params.validate()
    return params.null().validate() if null else params


def _prepare(out_dir: Path) -> tuple[Path, Path]:
    """Create the output folders; refuse a file, or a raw dataset metcli synth did not write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(
            "the output folder is a file",
            path=out_dir,
            fix="choose a folder name that does not exist yet",
        )
    raw_dir = out_dir / "rawdata"
    description = raw_dir / "dataset_description.json"
    if raw_dir.is_dir() and any(raw_dir.iterdir()):
        name = None
        try:
            name = read_json(description).get("Name")
        except (InputError, AttributeError):
            pass
        if name != DATASET_NAME:
            raise OutputError(
                "holds a raw dataset that metcli synth did not write; it would be overwritten",
                path=raw_dir,
                fix="choose an empty or new output folder",
            )
    truth_dir = out_dir / "derivatives" / "truth"
    for folder in (raw_dir, truth_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create the folder ({exc.strerror or exc})",
                path=folder,
                fix="choose an output folder you can write to",
            ) from None
    return raw_dir, truth_dir


def _warn_about_strays(raw_dir: Path, labels: Sequence[str]) -> None:
    strays = sorted(
        p.name for p in raw_dir.glob("sub-*") if p.is_dir() and p.name[4:] not in labels
    )
    if strays:
        log.warning(
            "%s holds participant(s) of an earlier, larger cohort (%s); they are not in "
            "participants.tsv: delete them or use another folder",
            raw_dir,
            ", ".join(strays[:10]) + (" ..." if len(strays) > 10 else ""),
        )


__all__ = [
    "CLASSES",
    "Grid",
    "KNOBS",
    "Lesion",
    "Phantom",
    "SIZES",
    "STUDY_PATIENTS",
    "SynthParams",
    "class_counts",
    "cohort_classes",
    "ct_to_dicom_series",
    "grid_for",
    "lesion_plan",
    "make_phantom",
    "participant_labels",
    "participant_seed",
    "phantom_arrays",
    "synth_cohort",
]
