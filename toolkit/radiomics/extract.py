"""``metcli extract``: per-lesion radiomics for a dataset, one table per CT, a cohort table.

For every CT (participant, session, phase) with a lesion map from
split-lesions, :func:`extract` writes one row per kept lesion into
``..._desc-radiomics_features.tsv``; at the group level ``features.tsv``
holds every participant's rows. :mod:`metcli.radiomics.extract_plan` pairs each
lesion map with its CT; each CT is read once and its lesions are cut out and
extracted in ``jobs`` worker processes, at most ``2 x jobs`` crops in flight
(:mod:`metcli.radiomics.acquisition`). How one lesion is extracted is defined in
:mod:`metcli.radiomics.features` (:func:`~metcli.radiomics.features.extract_features`
is the same computation for one image and mask).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metcli.core.batch import DONE, SKIPPED, BatchReport, group_level, run_each
from metcli.core.errors import InputError, UsageError
from metcli.io.bids import Acquisition, derivative_path, resolve_levels, sidecar_path
from metcli.radiomics.acquisition import extract_acquisition, extract_channels_acquisition
from metcli.radiomics.channels import ChannelSpec, channel_columns, plan_channel_jobs
from metcli.radiomics.columns import (
    ID_COLUMNS,
    RING_STATUS_COLUMNS,
    STATUS_COLUMNS,
    STATUS_OK,
    RegionResult,
    table_columns,
)
from metcli.radiomics.extract_plan import Job, plan_jobs, select
from metcli.radiomics.features import IBSI_TAGS, as_params, extract_features
from metcli.radiomics.params import ExtractionParams
from metcli.radiomics.regions import LIVER_LABEL
from metcli.radiomics.workers import LesionPool

__all__ = [
    "extract",
    "extract_features",
    "table_columns",
    "IBSI_TAGS",
    "RegionResult",
    "read_features_table",
]

log = logging.getLogger(__name__)

COMMAND = "extract"
DESC = "radiomics"
SUFFIX = "features"
GROUP_TABLE = "features.tsv"
SCHEMA = "features"


# ----------------------------------------------------------------------------- one CT's rows
def _rows(job: Job, results: list[tuple[int, RegionResult]], peritumoral: bool) -> list[dict]:
    ent = job.entities
    rows = []
    for lesion_id, result in results:
        row: dict[str, Any] = {
            "participant_id": ent.participant_id,
            "session": ent.ses,
            "phase": ent.ce,
            "lesion_id": lesion_id,
            "status": result.status,
            "message": result.message,
        }
        if peritumoral:
            row["peritumoral_status"] = result.ring_status
            row["peritumoral_message"] = result.ring_message
        row.update(result.features)
        row.update(result.diagnostics)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- folders
@dataclass
class ExtractionReport(BatchReport):
    """A :class:`BatchReport` with the lesion counts of the run."""

    lesions: int = 0
    lesions_failed: int = 0
    rings_failed: int = 0
    group_table: Path | None = None


def output_path(out_dir: Path, ct: Acquisition) -> Path:
    """The features table of one CT."""
    return derivative_path(out_dir, ct.entities, desc=DESC, suffix=SUFFIX, extension=".tsv")


def check_options(
    *,
    jobs: int,
    peritumoral_mm: float | None,
    seg_dir: Path | None,
    params: ExtractionParams,
    spec: ChannelSpec | None = None,
) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs < 1:
        raise UsageError(f"--jobs must be a whole number of 1 or more, got {jobs!r}")
    if peritumoral_mm is not None:
        if (
            not isinstance(peritumoral_mm, (int, float))
            or not math.isfinite(peritumoral_mm)
            or peritumoral_mm <= 0
        ):
            raise UsageError(
                f"--peritumoral-mm must be a distance in mm above 0, got {peritumoral_mm!r}"
            )
        if seg_dir is None:
            raise UsageError(
                "--peritumoral-mm needs --seg SEG_DIR: the ring is restricted to "
                "the liver of the segmentation",
                fix="add --seg with the folder `metcli segment` wrote",
            )
        if not params.texture_classes:
            raise UsageError(
                "--peritumoral-mm needs a grey-level feature class (the ring's "
                "shape is not a feature); the parameters enable only shape",
                fix="enable firstorder or a texture class",
            )
        if spec is not None:
            raise UsageError(
                "--peritumoral-mm does not go with --channels yet",
                fix="extract the ring per phase (without --channels)",
            )
    elif spec is not None and spec.liver:
        if seg_dir is None:
            raise UsageError(
                "--liver-features needs --seg SEG_DIR: the liver is the segmentation's label 1",
                fix="add --seg with the folder `metcli segment` wrote",
            )
    elif seg_dir is not None and spec is None:
        raise UsageError(
            "--seg is only used for the peritumoral ring",
            fix="add --peritumoral-mm R, or leave --seg out",
        )


def extraction_settings(params: ExtractionParams, peritumoral_mm: float | None) -> dict:
    """Everything that changes the features (recorded, hashed, compared by the skip rule)."""
    return {
        "pyradiomics": params.as_dict(),
        "pyradiomics_sha256": params.sha256,
        "pyradiomics_version": params.pyradiomics_version,
        "shape2D": "largest axial slice" if "shape2D" in params.feature_classes else None,
        "peritumoral_mm": None if peritumoral_mm is None else float(peritumoral_mm),
        "peritumoral_liver_label": LIVER_LABEL if peritumoral_mm is not None else None,
    }


def extract(
    raw_dir,
    lesions_dir,
    out_dir,
    *,
    params=None,
    seg_dir=None,
    peritumoral_mm=None,
    participants=None,
    phases=None,
    level=None,
    jobs: int = 1,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    channels=None,
    reference: str | None = None,
    register: str = "none",
    liver: bool = False,
) -> ExtractionReport:
    """Per-lesion radiomics for every lesion map of ``lesions_dir``.

    Writes, per participant (session and phase), into ``out_dir``:
    ``..._desc-radiomics_features.tsv`` (one row per kept lesion: participant_id,
    session, phase, lesion_id, status, message, the features, diagnostics) and
    its JSON sidecar (provenance, the resolved pyradiomics parameters and
    ``extraction_settings_sha256``); at the group level ``features.tsv`` (every
    participant's rows) with its sidecar, read from the participant tables.

    Args:
        raw_dir: the raw dataset (CTs).
        lesions_dir: split-lesions' output (lesion maps and tables).
        out_dir: the folder to write (not inside an input).
        params: preset name, parameter file, mapping or :class:`ExtractionParams`
            (None: the ``study`` preset).
        seg_dir, peritumoral_mm: the segmentation (``_dseg``) and the ring
            width in mm; both or neither.
        participants: labels (with or without ``sub-``); None = all.
        phases: contrast phases to extract (``ce-`` labels); None = all.
        level: ``participant``, ``group`` or ``both`` (see
            :func:`metcli.io.bids.resolve_levels`).
        jobs: processes that extract lesions in parallel.
        overwrite: redo outputs that are already done.
        progress: called with (item, status) after each CT.
        channels: phases extracted together, one row per lesion with every channel's
            features (:mod:`metcli.radiomics.channels`); None: one table per phase.
        reference: the channel the lesion maps (and ``seg_dir``) belong to (default
            ``portal`` when listed, else the first channel).
        register: ``none`` (the scanner's positions), ``rigid`` or ``affine``: how the
            other channels are aligned to the reference before resampling.
        liver: add the liver's features per channel (needs ``seg_dir``).

    Returns:
        An :class:`ExtractionReport` (one entry per CT; lesion counts).
    """
    params = as_params(params)
    raw_dir, lesions_dir, out_dir = Path(raw_dir), Path(lesions_dir), Path(out_dir)
    seg_dir = None if seg_dir is None else Path(seg_dir)
    spec = ChannelSpec.from_options(channels, reference, register, liver)
    check_options(
        jobs=jobs, peritumoral_mm=peritumoral_mm, seg_dir=seg_dir, params=params, spec=spec
    )
    _check_folders(raw_dir, seg_dir)
    labels = [participants] if isinstance(participants, str) else participants
    phases = [phases] if isinstance(phases, str) else (list(phases) if phases else None)
    do_participants, do_group = resolve_levels(level, labels)
    chosen = select(lesions_dir, labels)
    roots = {"raw": raw_dir, "lesions": lesions_dir, **({"seg": seg_dir} if seg_dir else {})}
    run = _start(out_dir, roots, params, peritumoral_mm, overwrite, spec)
    report = ExtractionReport()
    if spec is None:
        jobs_list = plan_jobs(raw_dir, lesions_dir, seg_dir, chosen, phases, report)
    else:
        jobs_list = plan_channel_jobs(raw_dir, lesions_dir, seg_dir, chosen, spec, report)
    if do_participants:
        _participant_level(jobs_list, run, jobs, progress, report)
    if do_group:
        with group_level(report):
            _group_level(report, jobs_list, run, after_participants=do_participants)
    return report


def _participant_level(
    jobs_list: Sequence[Job], run: "_Run", jobs: int, progress, report: ExtractionReport
) -> None:
    """Every job's table (or skipped when current), lesions extracted in ``jobs`` processes."""
    with LesionPool(jobs) as pool:

        def work(job: Job) -> str:
            return _extract_one(job, run, pool, report)

        run_each(
            jobs_list,
            key=lambda j: j.entities.describe(),
            work=work,
            progress=progress,
            report=report,
        )


@dataclass(frozen=True)
class _Run:
    """What every CT of one extract run shares: where and how its tables are written."""

    out_dir: Path
    step: Any  # metcli.io.provenance.Step of the run
    params: ExtractionParams
    columns: list[str]
    peritumoral_mm: float | None
    overwrite: bool
    spec: ChannelSpec | None = None


def _check_folders(raw_dir: Path, seg_dir: Path | None) -> None:
    """The raw folder (and the segmentation folder, when given) must exist."""
    if not raw_dir.is_dir():
        raise InputError(
            "the raw folder does not exist", path=raw_dir, fix="give the raw dataset the CTs are in"
        )
    if seg_dir is not None and not seg_dir.is_dir():
        raise InputError(
            "the segmentation folder does not exist",
            path=seg_dir,
            fix="give the folder `metcli segment` wrote",
        )


def _start(
    out_dir: Path,
    roots: dict[str, Path],
    params: ExtractionParams,
    peritumoral_mm: float | None,
    overwrite: bool,
    spec: ChannelSpec | None = None,
) -> _Run:
    """Check OUT_DIR against the inputs, write its dataset_description.json; the run."""
    from metcli.io.files import check_output_not_inside_input
    from metcli.io.provenance import Step, write_dataset_description

    check_output_not_inside_input(out_dir, list(roots.values()))
    settings = extraction_settings(params, peritumoral_mm)
    if spec is not None:
        settings.update(spec.settings())
    step = Step(COMMAND, out_dir, roots, settings)
    write_dataset_description(
        out_dir,
        name="metcli extract",
        sources=roots,
        description="per-lesion radiomics features (pyradiomics)",
    )
    if spec is None:
        columns = table_columns(params, peritumoral=peritumoral_mm is not None)
    else:
        columns = channel_columns(params, spec)
    return _Run(out_dir, step, params, columns, peritumoral_mm, overwrite, spec)


def _group_level(
    report: ExtractionReport, jobs: Sequence[Job], run: _Run, *, after_participants: bool
) -> None:
    """Write ``features.tsv`` unless a participant failed (an error when only the group
    level was asked for, a warning after the participant level)."""
    if report.failed and not after_participants:
        name, message = sorted(report.failed.items())[0]
        raise InputError(
            f"the group level cannot be written: {name}: {message}",
            fix="fix that input, or leave the participant out with --participant-label",
        )
    if report.failed:
        log.warning(
            "group level not written: %d item(s) failed; fix them, or leave those "
            "participants out with --participant-label and --level group",
            len(report.failed),
        )
    else:
        report.group_table = write_group_table(
            jobs, run.out_dir, run.step, run.columns, overwrite=run.overwrite
        )
        report.outputs.extend([report.group_table, sidecar_path(report.group_table)])


def _extract_one(job: Job, run: _Run, pool: LesionPool, report: ExtractionReport) -> str:
    """Extract one CT's lesions into its table (or skip it when done); DONE or SKIPPED."""
    from metcli.io.files import OutputSet, read_json, write_tsv_to

    step, peritumoral_mm = run.step, run.peritumoral_mm
    table = output_path(run.out_dir, job.ct)
    sidecar = sidecar_path(table)
    inputs = step.inputs(job.inputs())
    if not run.overwrite and step.is_done(sidecar, inputs):
        try:
            done = read_json(sidecar)
            report.lesions += int(done.get("Lesions", 0))
            report.lesions_failed += int(done.get("LesionsFailed", 0))
            report.rings_failed += int(done.get("PeritumoralFailed", 0) or 0)
        except (InputError, TypeError, ValueError):
            pass
        report.outputs.extend([table, sidecar])
        return SKIPPED
    records = None
    if run.spec is not None:
        results, records = extract_channels_acquisition(job, run.params, run.spec, pool)
    else:
        results = extract_acquisition(
            job.ct.path,
            job.lesion_map,
            job.lesion_table,
            run.params,
            seg_path=job.seg,
            peritumoral_mm=peritumoral_mm,
            pool=pool,
        )
    rows = _rows(job, results, peritumoral_mm is not None)
    failed = sum(1 for _id, r in results if not r.ok)
    rings_failed = sum(1 for _id, r in results if r.ring_status not in (None, STATUS_OK))
    extra = {
        "Description": "Radiomics features of every kept lesion (pyradiomics), one row per "
        "lesion; status failed:<reason> rows have n/a values",
        "extraction_settings_sha256": step.settings_sha256,
        "ExtractionParamsSource": run.params.source,
        "Lesions": len(results),
        "LesionsFailed": failed,
    }
    if peritumoral_mm is not None:
        extra["PeritumoralFailed"] = rings_failed
    if records is not None:
        extra["Channels"] = records
    with OutputSet() as outs:
        tmp = outs.path(table)
        write_tsv_to(rows, run.columns, tmp, schema=SCHEMA, where=table)
        step.write_sidecar(outs, sidecar, inputs, {table: tmp}, extra=extra)
    if failed:
        log.warning(
            "%s: %d of %d lesion(s) failed (status failed:<reason> in %s)",
            job.entities.describe(),
            failed,
            len(results),
            table.name,
        )
    log.info("%s: %d lesion(s) extracted", job.entities.describe(), len(results))
    report.lesions += len(results)
    report.lesions_failed += failed
    report.rings_failed += rings_failed
    report.outputs.extend([table, sidecar])
    return DONE


# ----------------------------------------------------------------------------- group level
def _typed_cell(column: str, text: str):
    if text == "n/a":
        return None
    if column == "lesion_id" or column.endswith("_VoxelNum") or column.endswith("_VolumeNum"):
        return int(text)
    if column in ID_COLUMNS or column in STATUS_COLUMNS or column in RING_STATUS_COLUMNS:
        return text
    return float(text)


def read_features_table(path: Path) -> tuple[list[str], list[dict]]:
    """(columns, typed rows) of a features table metcli wrote."""
    from metcli.io.files import read_tsv

    rows = read_tsv(path, required=(*ID_COLUMNS, "status"))
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    typed = []
    for number, row in enumerate(rows, start=2):
        try:
            typed.append({c: _typed_cell(c, row[c]) for c in header})
        except ValueError as exc:
            raise InputError(
                f"line {number}: {exc}",
                path=path,
                fix="write the table again with extract --overwrite",
            ) from None
    return header, typed


def write_group_table(
    jobs: Sequence[Job], out_dir: Path, step, columns: list[str], *, overwrite: bool = False
) -> Path:
    """``features.tsv``: every participant's rows, from their (current) tables."""
    from metcli.io.files import OutputSet, write_tsv_to

    rows: list[dict] = []
    used: list[Path] = []
    for job in jobs:
        table = output_path(out_dir, job.ct)
        sidecar = sidecar_path(table)
        fix = (
            f"run `metcli extract ... --level participant --participant-label "
            f"{job.entities.sub}` with the same options first"
        )
        if not table.is_file() or not sidecar.is_file():
            raise InputError(
                f"the features of {job.entities.describe()} are missing; run the "
                "participant level first",
                path=table,
                fix=fix,
            )
        if not step.is_done(sidecar, step.inputs(job.inputs())):
            raise InputError(
                f"the features of {job.entities.describe()} were not made from the "
                "current inputs with these settings (see its sidecar)",
                path=table,
                fix=fix,
            )
        header, typed = read_features_table(table)
        if header != columns:
            raise InputError(
                "the table's columns are not those of these settings",
                path=table,
                fix="run the participant level again with --overwrite",
            )
        rows.extend(typed)
        used.extend([table, sidecar])
    path = out_dir / GROUP_TABLE
    sidecar = sidecar_path(path)
    inputs = step.inputs(used)
    if not overwrite and step.is_done(sidecar, inputs):
        return path
    with OutputSet() as outs:
        tmp = outs.path(path)
        write_tsv_to(rows, columns, tmp, schema=SCHEMA, where=path)
        step.write_sidecar(
            outs,
            sidecar,
            inputs,
            {path: tmp},
            extra={
                "Description": "Radiomics features of every kept lesion of every participant, "
                "session and phase",
                "extraction_settings_sha256": step.settings_sha256,
                "Lesions": len(rows),
                "LesionsFailed": sum(1 for r in rows if r["status"] != STATUS_OK),
            },
        )
    log.info("group level: %d lesion row(s) in %s", len(rows), path.name)
    return path
