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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from metcli.core.batch import DONE, SKIPPED, BatchReport, run_each
from metcli.core.errors import InputError, OutputError, ParticipantsFailed, UsageError
from metcli.imaging.dicom.writer import ct_to_dicom_series, remove_stale_slices  # noqa: F401
from metcli.io.bids import Entities, sidecar_path
from metcli.io.files import (
    NA,
    OutputSet,
    read_json,
    read_tsv,
    sha256_file,
    write_image_to,
    write_tsv_to,
)
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

log = logging.getLogger(__name__)
#: Name of the raw dataset; a rawdata folder with another name is never written into.
DATASET_NAME = "metcli synthetic cohort"
DICOM_SIDECAR = "provenance.json"
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


def demographics(rng: np.random.Generator) -> tuple[int, str]:
    """(age, sex) of a synthetic participant: the same distribution in both classes."""
    age = int(np.clip(round(rng.normal(63.0, 10.0)), 30, 90))
    sex = "M" if rng.uniform() < 0.58 else "F"
    return age, sex


#: Columns of the truth table (schemas/synth_lesions.schema.json).
TRUTH_COLUMNS = (
    "participant_id",
    "lesion_id",
    "primary",
    "centre_x_mm",
    "centre_y_mm",
    "centre_z_mm",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "radius_mm",
    "semi_axis_a_mm",
    "semi_axis_b_mm",
    "semi_axis_c_mm",
    "voxels",
    "volume_mm3",
    "equivalent_diameter_mm",
    "lesion_hu",
    "texture_sd_hu",
    "patient_offset_hu",
)
_INT_COLUMNS = ("lesion_id", "voxels")
_TEXT_COLUMNS = ("participant_id", "primary")


def read_truth_lesions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a truth table (per participant or the cohort's ``lesions.tsv``), typed."""
    rows = read_tsv(path, required=TRUTH_COLUMNS)
    out = []
    for number, row in enumerate(rows, start=2):
        typed: dict[str, Any] = {}
        for key, value in row.items():
            try:
                if key in _TEXT_COLUMNS:
                    typed[key] = value
                elif value == NA:
                    typed[key] = None
                elif key in _INT_COLUMNS:
                    typed[key] = int(value)
                else:
                    typed[key] = float(value)
            except ValueError:
                raise InputError(
                    f"line {number}: {key} {value!r} is not a number",
                    path=path,
                    fix="write the table again with metcli synth",
                ) from None
        out.append(typed)
    return out


@dataclass
class _Subject:
    index: int
    label: str
    primary: str

    @property
    def participant_id(self) -> str:
        return f"sub-{self.label}"


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
    from metcli.io.participants import write_participants

    params = _resolve_params(size, null, knobs)
    _check_counts(n_colorectal, n_pancreatic, seed)
    out_dir = Path(out_dir)
    raw_dir, truth_dir = _prepare(out_dir)
    settings = {
        "seed": int(seed),
        "size": size if isinstance(size, str) else "custom",
        "grid": params.grid.as_dict(),
        "n_colorectal": int(n_colorectal),
        "n_pancreatic": int(n_pancreatic),
        "null": bool(null),
        "phase": PHASE,
        "knobs": params.knobs(),
    }
    dicom_dir = out_dir / "sourcedata" / "dicom"
    steps = _start_datasets(raw_dir, truth_dir, dicom_dir, settings)
    labels = participant_labels(n_colorectal + n_pancreatic)
    subjects = [
        _Subject(i, label, cls)
        for i, (label, cls) in enumerate(
            zip(labels, cohort_classes(int(n_colorectal), int(n_pancreatic)))
        )
    ]
    _warn_about_strays(raw_dir, labels)
    rows: dict[str, dict] = {}

    def work(subject: _Subject) -> str:
        return _write_subject(
            subject,
            params,
            int(seed),
            steps,
            raw_dir,
            truth_dir,
            dicom_dir,
            dicom=dicom,
            overwrite=overwrite,
            rows=rows,
        )

    report = run_each(
        subjects, key=lambda s: s.participant_id, work=work, progress=progress, report=report
    )
    written = [
        s
        for s in subjects
        if (raw_dir / _ct_entities(s).relpath()).is_file() and s.participant_id not in report.failed
    ]
    if written:
        write_participants(
            raw_dir, [rows.get(s.participant_id) or _participant_row(s, seed) for s in written]
        )
        _write_cohort_table(steps["truth"], truth_dir, written)
    if report.failed:
        raise ParticipantsFailed(report.failed, total=len(subjects))
    if truth_lesions:
        from metcli.lesions.split_lesions import split_lesions

        lesion_report = split_lesions(
            truth_dir, out_dir / "derivatives" / "truth-lesions", overwrite=overwrite
        )
        if lesion_report.failed:
            raise ParticipantsFailed(lesion_report.failed, total=len(lesion_report.status))
    log.info("synthetic cohort in %s: %d participant(s)", out_dir, len(subjects))
    return out_dir


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


def _start_datasets(
    raw_dir: Path, truth_dir: Path, dicom_dir: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    """Write the datasets' descriptions and label table; the provenance step of each output."""
    from metcli.imaging.labels import write_label_table
    from metcli.io.provenance import Step, write_dataset_description

    write_dataset_description(raw_dir, name=DATASET_NAME, dataset_type="raw")
    write_dataset_description(
        truth_dir,
        name="metcli synth: true liver and lesion masks",
        sources={"raw": raw_dir},
        description="the masks and lesions metcli synth placed",
    )
    write_label_table(truth_dir)
    return {
        "ct": Step("synth", raw_dir, {}, settings),
        "truth": Step("synth", truth_dir, {"raw": raw_dir}, settings),
        "dicom": Step(
            "synth",
            dicom_dir,
            {"raw": raw_dir},
            {
                **settings,
                "dicom": {
                    "transfer_syntax": "ExplicitVRLittleEndian",
                    "rescale_intercept": DICOM_INTERCEPT,
                },
            },
        ),
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


def _ct_entities(subject: _Subject) -> Entities:
    return Entities(sub=subject.label, ce=PHASE, suffix="ct", extension=".nii.gz")


def _participant_row(subject: _Subject, seed: int) -> dict[str, Any]:
    _phantom_seed, demo_seed = participant_seed(seed, subject.index).spawn(2)
    age, sex = demographics(np.random.default_rng(demo_seed))
    return {
        "participant_id": subject.participant_id,
        "primary": subject.primary,
        "age": age,
        "sex": sex,
    }


def _write_subject(
    subject: _Subject,
    params: SynthParams,
    seed: int,
    steps,
    raw_dir: Path,
    truth_dir: Path,
    dicom_dir: Path,
    *,
    dicom: bool,
    overwrite: bool,
    rows: dict,
) -> str:
    from metcli.io.files import read_image

    ent = _ct_entities(subject)
    ct_path = raw_dir / ent.relpath()
    dseg_path = truth_dir / ent.with_(suffix="dseg").relpath()
    table_path = truth_dir / ent.with_(suffix="lesions", extension=".tsv").relpath()
    series_dir = dicom_dir / subject.participant_id
    dicom_sidecar = series_dir / DICOM_SIDECAR
    row = _participant_row(subject, seed)
    rows[subject.participant_id] = row

    ct_done = not overwrite and steps["ct"].is_done(sidecar_path(ct_path), [])
    truth_done = dicom_done = False
    if ct_done:
        ct_record = steps["truth"].inputs([ct_path])
        truth_done = steps["truth"].is_done(sidecar_path(dseg_path), ct_record) and steps[
            "truth"
        ].is_done(sidecar_path(table_path), ct_record)
        dicom_done = not dicom or steps["dicom"].is_done(
            dicom_sidecar, steps["dicom"].inputs([ct_path])
        )
    if ct_done and truth_done and dicom_done:
        return SKIPPED
    if ct_done and truth_done:  # only the DICOM series is missing or stale
        ct_image = read_image(ct_path, what="CT")
        with OutputSet() as outs:
            names = _write_dicom(
                outs,
                ct_image,
                series_dir,
                subject,
                row,
                seed,
                steps["dicom"],
                ct_path,
                sha256_file(ct_path),
            )
        remove_stale_slices(series_dir, names)
        return DONE

    phantom_seed, _demo_seed = participant_seed(seed, subject.index).spawn(2)
    phantom = phantom_arrays(np.random.default_rng(phantom_seed), params, subject.primary)
    ct_image, dseg_image = phantom.images()
    table_rows = [lesion.row(subject.participant_id, subject.primary) for lesion in phantom.lesions]
    extra = {"Synthetic": True, "ContrastPhase": PHASE}
    with OutputSet() as outs:
        tmp_ct = outs.path(ct_path)
        write_image_to(ct_image, tmp_ct)
        steps["ct"].write_sidecar(outs, sidecar_path(ct_path), [], {ct_path: tmp_ct}, extra=extra)
        ct_sha = sha256_file(tmp_ct)
        ct_record = [{"uri": steps["truth"].uri(ct_path), "sha256": ct_sha}]
        tmp_dseg = outs.path(dseg_path)
        write_image_to(dseg_image, tmp_dseg)
        steps["truth"].write_sidecar(
            outs,
            sidecar_path(dseg_path),
            ct_record,
            {dseg_path: tmp_dseg},
            extra={"Synthetic": True},
        )
        tmp_table = outs.path(table_path)
        write_tsv_to(table_rows, TRUTH_COLUMNS, tmp_table, schema="synth_lesions", where=table_path)
        steps["truth"].write_sidecar(
            outs,
            sidecar_path(table_path),
            ct_record,
            {table_path: tmp_table},
            extra={"Synthetic": True},
        )
        names = None
        if dicom:
            names = _write_dicom(
                outs, ct_image, series_dir, subject, row, seed, steps["dicom"], ct_path, ct_sha
            )
    if names is not None:
        remove_stale_slices(series_dir, names)
    elif dicom_sidecar.is_file():
        log.warning(
            "%s: the DICOM series in %s was made from an earlier CT; run with --dicom to "
            "refresh it or delete it",
            subject.participant_id,
            series_dir,
        )
    return DONE


def _write_cohort_table(step, truth_dir: Path, subjects: Sequence[_Subject]) -> None:
    """``derivatives/truth/lesions.tsv``: the per-participant tables, one after the other."""
    tables = [
        truth_dir / _ct_entities(s).with_(suffix="lesions", extension=".tsv").relpath()
        for s in subjects
    ]
    tables = [t for t in tables if t.is_file()]
    path = truth_dir / "lesions.tsv"
    inputs = step.inputs(tables)
    if step.is_done(sidecar_path(path), inputs):
        return
    rows = [row for table in tables for row in read_truth_lesions(table)]
    with OutputSet() as outs:
        tmp = outs.path(path)
        write_tsv_to(rows, TRUTH_COLUMNS, tmp, schema="synth_lesions", where=path)
        step.write_sidecar(outs, sidecar_path(path), inputs, {path: tmp}, extra={"Synthetic": True})


# ============================================================================ DICOM
def _write_dicom(
    outs: OutputSet,
    ct_image,
    series_dir: Path,
    subject: _Subject,
    row: Mapping,
    seed: int,
    step,
    ct_path: Path,
    ct_sha: str,
) -> list[str]:
    uid_sources = ["metcli synth", str(seed), subject.participant_id, step.settings_sha256]
    temps = ct_to_dicom_series(
        ct_image,
        series_dir,
        outputs=outs,
        uid_sources=uid_sources,
        patient_id=subject.participant_id,
        sex=row.get("sex"),
        age=row.get("age"),
        series_description=_SERIES_DESCRIPTION,
    )
    record = [{"uri": step.uri(ct_path), "sha256": ct_sha}]
    step.write_sidecar(
        outs,
        series_dir / DICOM_SIDECAR,
        record,
        temps,
        extra={"Synthetic": True, "SeriesDescription": _SERIES_DESCRIPTION},
    )
    return [p.name for p in temps]


_SERIES_DESCRIPTION = "metcli synth portal-venous CT phantom"

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
    "read_truth_lesions",
    "synth_cohort",
]
