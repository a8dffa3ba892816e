"""``metcli extract``: per-lesion radiomics for a dataset, one table per CT, a cohort table.

For every CT (participant, session, phase) with a lesion map from
split-lesions, :func:`extract` writes one row per kept lesion into
``..._desc-radiomics_features.tsv``; at the group level ``features.tsv``
holds every participant's rows. Each CT is read once; its lesions are cut out
and extracted in ``jobs`` worker processes, at most ``2 x jobs`` crops in
flight. How one lesion is extracted is defined in
:mod:`metcli.radiomics.features` (:func:`~metcli.radiomics.features.extract_features`
is the same computation for one image and mask).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from metcli.core.batch import DONE, FAILED, SKIPPED, BatchReport, run_each
from metcli.core.errors import ImageError, InputError, UsageError
from metcli.io.bids import (
    Acquisition,
    derivative_path,
    find_files,
    participant_folders,
    resolve_levels,
    select_participants,
    sidecar_path,
)
from metcli.lesions.maps import LESION_SUFFIX, find_lesion_maps, kept_lesion_ids
from metcli.radiomics.columns import (
    ID_COLUMNS,
    RING_STATUS_COLUMNS,
    STATUS_COLUMNS,
    STATUS_OK,
    RegionResult,
    table_columns,
)
from metcli.radiomics.features import (
    IBSI_TAGS,
    as_params,
    extract_features,
    prepare_image,
    shape2d_axis,
)
from metcli.radiomics.params import ExtractionParams
from metcli.radiomics.regions import LIVER_LABEL, Region, crop_region, expand_box, margin_voxels
from metcli.radiomics.workers import LesionPool

__all__ = [
    "extract",
    "extract_acquisition",
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


# ----------------------------------------------------------------------------- one acquisition
@dataclass
class _Job:
    """One CT and the files extracted from it."""

    ct: Acquisition
    lesion_map: Path
    lesion_table: Path
    seg: Path | None = None

    @property
    def entities(self):
        return self.ct.entities

    def inputs(self) -> list[Path]:
        return [p for p in (self.ct.path, self.lesion_map, self.lesion_table, self.seg) if p]


def _read_label_image(path: Path, what: str):
    from metcli.io.files import read_image

    image = read_image(path, what=what)
    import SimpleITK as sitk

    if sitk.GetArrayViewFromImage(image).dtype.kind not in "iub":
        raise ImageError(
            f"the {what} has voxels of type {image.GetPixelIDTypeAsString()}; "
            "a label image of whole numbers is needed",
            path=path,
            fix="give the file split-lesions (or segment) wrote",
        )
    return image


def extract_acquisition(
    ct_path: Path,
    lesion_map_path: Path,
    lesion_table_path: Path,
    params: ExtractionParams,
    *,
    seg_path: Path | None = None,
    peritumoral_mm: float | None = None,
    pool: LesionPool | None = None,
) -> list[tuple[int, RegionResult]]:
    """``(lesion id, result)`` for every kept lesion of one CT, in id order.

    The CT is read once; each lesion is cropped from it and extracted (in the
    pool's processes). Raises :class:`InputError`/:class:`GeometryError` for
    inputs that do not belong together; a lesion pyradiomics refuses is a
    failed result, not an error.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    from metcli.imaging.geometry import to_reference_grid
    from metcli.io.files import read_image

    ids = kept_lesion_ids(lesion_table_path)
    ct = read_image(ct_path, what="CT")
    lesion_map = to_reference_grid(
        _read_label_image(lesion_map_path, "lesion map"),
        ct,
        image_path=lesion_map_path,
        reference_path=ct_path,
    )
    seg_array = None
    if peritumoral_mm is not None:
        if seg_path is None:
            raise UsageError("the peritumoral ring needs the segmentation (--seg)")
        seg = to_reference_grid(
            _read_label_image(seg_path, "segmentation"),
            ct,
            image_path=seg_path,
            reference_path=ct_path,
        )
        seg_array = sitk.GetArrayViewFromImage(seg)
    map_array = sitk.GetArrayViewFromImage(lesion_map)
    if map_array.dtype.kind == "i" and map_array.size and map_array.min() < 0:
        raise ImageError(
            "the lesion map holds negative values",
            path=lesion_map_path,
            fix="give the lesion map split-lesions wrote",
        )
    boxes = ndimage.find_objects(np.asarray(map_array))
    in_map = [i + 1 for i, box in enumerate(boxes) if box is not None]
    if sorted(in_map) != ids:
        only_map = sorted(set(in_map) - set(ids))
        only_table = sorted(set(ids) - set(in_map))
        detail = []
        if only_map:
            detail.append(f"ids {only_map[:5]} are in the map but not kept in the table")
        if only_table:
            detail.append(f"ids {only_table[:5]} are kept in the table but not in the map")
        raise InputError(
            f"{lesion_map_path} and {lesion_table_path} do not describe the same "
            f"lesions: {'; '.join(detail)}",
            fix="give the map and table split-lesions wrote together (run it "
            "again with --overwrite)",
        )
    image = prepare_image(ct, params)
    image_array = sitk.GetArrayViewFromImage(image)
    margin = margin_voxels(params, ct.GetSpacing(), peritumoral_mm)
    axis = shape2d_axis(ct, params)

    def regions() -> Iterator[tuple[Region, ExtractionParams]]:
        for lesion_id in ids:
            box = expand_box(boxes[lesion_id - 1], margin, map_array.shape)
            liver = None if seg_array is None else np.asarray(seg_array[box] == LIVER_LABEL)
            yield (
                crop_region(
                    lesion_id,
                    image_array,
                    map_array[box] == lesion_id,
                    box,
                    image,
                    shape2d_axis=axis,
                    liver=liver,
                    peritumoral_mm=peritumoral_mm,
                ),
                params,
            )

    pool = pool if pool is not None else LesionPool(1)
    return list(zip(ids, pool.map(regions())))


def _rows(job: _Job, results: list[tuple[int, RegionResult]], peritumoral: bool) -> list[dict]:
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


def select(lesions_dir: Path, participants: Sequence[str] | None) -> list[str]:
    """Participant labels of ``lesions_dir`` to process (all, or the requested ones)."""
    lesions_dir = Path(lesions_dir)
    if not lesions_dir.is_dir():
        raise InputError(
            "the lesions folder does not exist",
            path=lesions_dir,
            fix="give the folder that `metcli split-lesions` wrote",
        )
    available = participant_folders(lesions_dir)
    if not available:
        raise InputError(
            "no sub-* participant folders found",
            path=lesions_dir,
            fix="give the folder that `metcli split-lesions` wrote",
        )
    return select_participants(
        available, list(participants) if participants else None, where=lesions_dir
    )


def _plan(
    raw_dir: Path,
    lesions_dir: Path,
    seg_dir: Path | None,
    chosen: Sequence[str],
    phases: Sequence[str] | None,
    report: BatchReport,
) -> list[_Job]:
    """Pair every lesion map with its CT (and segmentation) by participant, session, phase."""
    maps = find_lesion_maps(lesions_dir, chosen, phases)
    cts = {
        a.entities.key: a
        for a in find_files(raw_dir, suffix="ct", participants=chosen, phases=phases)
    }
    segs = (
        {}
        if seg_dir is None
        else {
            a.entities.key: a
            for a in find_files(
                seg_dir, suffix=LESION_SUFFIX, desc=None, participants=chosen, phases=phases
            )
        }
    )
    found = {m.entities.sub for m in maps}
    for label in chosen:
        if label not in found:
            error = InputError(
                "no sub-<id>[_ses-<s>][_ce-<phase>]_desc-lesions_dseg.nii.gz found"
                + (f" for phase(s) {', '.join(phases)}" if phases else ""),
                path=Path(lesions_dir) / f"sub-{label}",
                fix="run split-lesions for this participant first, or leave it out",
            )
            log.error("sub-%s: %s", label, error.one_line())
            report.record(f"sub-{label}", FAILED, error.one_line())
    jobs = []
    for lesion_map in maps:
        ent = lesion_map.entities
        name = ent.describe()
        table = lesion_map.path.with_name(lesion_map.path.name[: -len(".nii.gz")] + ".tsv")
        ct = cts.get(ent.key)
        problem = None
        if ct is None:
            expected = ent.with_(desc=None, suffix="ct", extension=".nii.gz")
            problem = InputError(
                f"no CT for the lesion map {lesion_map.path.name}",
                path=Path(raw_dir) / expected.relpath(),
                fix="give the raw folder the lesions were made from",
            )
        elif not table.is_file():
            problem = InputError(
                "the lesion table beside the lesion map is missing",
                path=table,
                fix="run split-lesions again for this participant",
            )
        elif seg_dir is not None and ent.key not in segs:
            expected = ent.with_(desc=None, suffix=LESION_SUFFIX, extension=".nii.gz")
            problem = InputError(
                "no segmentation for the peritumoral ring",
                path=Path(seg_dir) / expected.relpath(),
                fix="give the folder `metcli segment` wrote as --seg",
            )
        if problem is not None:
            log.error("%s: %s", name, problem.one_line())
            report.record(name, FAILED, problem.one_line())
            continue
        seg = segs[ent.key].path if seg_dir is not None else None
        jobs.append(_Job(ct=ct, lesion_map=lesion_map.path, lesion_table=table, seg=seg))
    return jobs


def check_options(
    *, jobs: int, peritumoral_mm: float | None, seg_dir: Path | None, params: ExtractionParams
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
    elif seg_dir is not None:
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

    Returns:
        An :class:`ExtractionReport` (one entry per CT; lesion counts).
    """
    from metcli.io.files import check_output_not_inside_input
    from metcli.io.provenance import Step, write_dataset_description

    params = as_params(params)
    raw_dir, lesions_dir, out_dir = Path(raw_dir), Path(lesions_dir), Path(out_dir)
    seg_dir = None if seg_dir is None else Path(seg_dir)
    check_options(jobs=jobs, peritumoral_mm=peritumoral_mm, seg_dir=seg_dir, params=params)
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
    labels = [participants] if isinstance(participants, str) else participants
    phases = [phases] if isinstance(phases, str) else (list(phases) if phases else None)
    do_participants, do_group = resolve_levels(level, labels)
    chosen = select(lesions_dir, labels)
    roots = {"raw": raw_dir, "lesions": lesions_dir}
    if seg_dir is not None:
        roots["seg"] = seg_dir
    check_output_not_inside_input(out_dir, list(roots.values()))

    settings = extraction_settings(params, peritumoral_mm)
    step = Step(COMMAND, out_dir, roots, settings)
    write_dataset_description(
        out_dir,
        name="metcli extract",
        sources=roots,
        description="per-lesion radiomics features (pyradiomics)",
    )
    report = ExtractionReport()
    jobs_list = _plan(raw_dir, lesions_dir, seg_dir, chosen, phases, report)
    columns = table_columns(params, peritumoral=peritumoral_mm is not None)
    if do_participants:
        with LesionPool(jobs) as pool:

            def work(job: _Job) -> str:
                return _extract_one(
                    job, out_dir, step, params, columns, peritumoral_mm, overwrite, pool, report
                )

            run_each(
                jobs_list,
                key=lambda j: j.entities.describe(),
                work=work,
                progress=progress,
                report=report,
            )
    if do_group:
        _group_level(
            report,
            jobs_list,
            out_dir,
            step,
            columns,
            overwrite=overwrite,
            after_participants=do_participants,
        )
    return report


def _group_level(
    report: ExtractionReport,
    jobs: Sequence[_Job],
    out_dir: Path,
    step,
    columns: list[str],
    *,
    overwrite: bool,
    after_participants: bool,
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
        report.group_table = write_group_table(jobs, out_dir, step, columns, overwrite=overwrite)
        report.outputs.extend([report.group_table, sidecar_path(report.group_table)])


def _extract_one(
    job: _Job,
    out_dir: Path,
    step,
    params: ExtractionParams,
    columns: list[str],
    peritumoral_mm: float | None,
    overwrite: bool,
    pool: LesionPool,
    report: ExtractionReport,
) -> str:
    from metcli.io.files import OutputSet, read_json, write_tsv_to

    table = output_path(out_dir, job.ct)
    sidecar = sidecar_path(table)
    inputs = step.inputs(job.inputs())
    if not overwrite and step.is_done(sidecar, inputs):
        try:
            done = read_json(sidecar)
            report.lesions += int(done.get("Lesions", 0))
            report.lesions_failed += int(done.get("LesionsFailed", 0))
            report.rings_failed += int(done.get("PeritumoralFailed", 0) or 0)
        except (InputError, TypeError, ValueError):
            pass
        report.outputs.extend([table, sidecar])
        return SKIPPED
    results = extract_acquisition(
        job.ct.path,
        job.lesion_map,
        job.lesion_table,
        params,
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
        "ExtractionParamsSource": params.source,
        "Lesions": len(results),
        "LesionsFailed": failed,
    }
    if peritumoral_mm is not None:
        extra["PeritumoralFailed"] = rings_failed
    with OutputSet() as outs:
        tmp = outs.path(table)
        write_tsv_to(rows, columns, tmp, schema=SCHEMA, where=table)
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
    jobs: Sequence[_Job], out_dir: Path, step, columns: list[str], *, overwrite: bool = False
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
