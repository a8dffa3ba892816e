"""``import-dicom``: one CT or MR series into a raw dataset, as NIfTI.

:func:`import_dicom` writes a CT series in Hounsfield units as
``rawdata/sub-<id>/[ses-<s>/]anat/sub-<id>[_ses-<s>][_ce-<phase>]_ct.nii.gz``, and an MR
series under its channel's name (:mod:`metcli.io.channels`: ``anat/..._T2w.nii.gz``,
``anat/..._[ce-<phase>_]T1w.nii.gz``, ``dwi/..._dwi.nii.gz`` with ``.bval`` and ``.bvec``,
``dwi/..._ADC.nii.gz``), each with its JSON sidecar, and adds the participant to
``participants.tsv``. Finding the series is :mod:`metcli.imaging.dicom.series`'s work
(with :mod:`metcli.imaging.dicom.mr_series` for the MR channels), checking and reading a
CT :mod:`metcli.imaging.dicom.stack`'s and :mod:`metcli.imaging.dicom.volume`'s, an MR
series :mod:`metcli.imaging.dicom.mr_checks`', :mod:`metcli.imaging.dicom.diffusion`'s
and :mod:`metcli.imaging.dicom.mr_volume`'s; their rules are documented there.

Privacy: the sidecar holds non-identifying acquisition metadata only (never
names, IDs, dates, institutions or people; the SeriesInstanceUID and the
FrameOfReferenceUID at the top level only as their sha256, ``SeriesInstanceUIDSha256``
and ``FrameOfReferenceUIDSha256``, so that import-mask can check that a mask belongs
to the series, :mod:`metcli.imaging.dicom_checks`). A CT's sidecar also keeps
``DicomSource`` (:mod:`metcli.imaging.dicom.source`): the study, series, frame of
reference and slice UIDs with the slices' geometry, which a DICOM-SEG written by
``segment`` or ``split-lesions --dicom-seg`` must name to be attached to the CT by
viewers and PACS; UIDs are pseudonymous links, no patient data. The input record
names the series folder relative to DICOM_DIR, unless a part of that path looks
identifying (patient name or ID, accession number, a UID or a date), in which
case the DICOM_DIR root is recorded instead; the sha256 and the file count
identify the series either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from metcli.core.errors import InputError, UsageError
from metcli.imaging.dicom.headers import read_dataset
from metcli.imaging.dicom.metadata import identifying, identifying_words
from metcli.imaging.dicom.series import SeriesInfo, find_series, relative_text
from metcli.imaging.dicom.source import DICOM_SOURCE_KEY, dicom_source
from metcli.imaging.dicom.stack import fmt, stack_geometry
from metcli.imaging.dicom.volume import read_ct_series

log = logging.getLogger(__name__)

COMMAND = "import-dicom"
#: What the conversion does; recorded as the provenance settings (a change redoes imports).
SETTINGS = {
    "sort": "position along the slice normal",
    "values": "HU (RescaleSlope and RescaleIntercept per slice)",
    "padding": "kept",
    "dtype": "int16 when every value is an integer in range, else float32",
    "dicom_source": "UIDs and slice geometry kept in DicomSource (CT)",
}
_LOCK_NAME = ".participants.tsv.lock"


# ----------------------------------------------------------------------------- import
def series_sha256(files: Iterable[Path]) -> str:
    """sha256 over the files' sha256s, sorted: independent of file names and order."""
    from metcli.io.files import sha256_file

    digests = sorted(sha256_file(p) for p in files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _series_record(step, series: SeriesInfo, dicom_dir: Path) -> dict[str, Any]:
    """The one provenance input record of a series (folder uri, sha256, file count)."""
    folder = series.folder
    ds = read_dataset(series.slices[0].path, stop_before_pixels=True)
    identifiers = identifying_words(ds)
    rel = relative_text(folder, dicom_dir)
    if rel != "." and any(identifying(part, identifiers) for part in Path(rel).parts):
        log.info(
            "the series folder's path may identify the patient; the sidecar names the "
            "DICOM folder root instead"
        )
        folder = dicom_dir
    return {"uri": step.uri(folder), "sha256": series_sha256(series.files), "files": series.n_files}


def _check_labels(
    participant: str, session: str | None, phase: str | None
) -> tuple[str, str | None, str | None]:
    """The participant, session and phase labels (``sub-``, ``ses-``, ``ce-`` entities)."""
    from metcli.io.bids import KNOWN_PHASES, clean_label

    label = clean_label(participant)
    ses = clean_label(session, entity="ses", option="--session") if session is not None else None
    ce = clean_label(phase, entity="ce", option="--phase") if phase is not None else None
    if ce is not None and ce not in KNOWN_PHASES:
        log.warning("--phase %s is not one of the usual phases (%s)", ce, ", ".join(KNOWN_PHASES))
    return label, ses, ce


def _check_folders(dicom_dir: Path, raw_dir: Path) -> None:
    """Refuse a missing DICOM folder, a raw dataset inside it or a malformed
    participants.tsv, before anything is written."""
    from metcli.io.participants import participants_path, read_participants

    if not dicom_dir.is_dir():
        raise InputError(
            "DICOM folder not found",
            path=dicom_dir,
            fix="give the folder that holds the DICOM files of the CT series",
        )
    src, out = dicom_dir.resolve(), raw_dir.resolve()
    if out == src or src in out.parents:
        raise UsageError(
            f"RAW_DIR {raw_dir} lies inside DICOM_DIR {dicom_dir}",
            fix="write the raw dataset outside the DICOM folder",
        )
    if participants_path(raw_dir).is_file():
        read_participants(raw_dir)  # a malformed table fails now, before anything is written


def _check_primary(primary: str | None) -> str | None:
    if primary is None:
        return None
    from metcli.io.schemas import load_schema

    pattern = load_schema("participants")["properties"]["primary"]["pattern"]
    text = str(primary).strip()
    if not re.match(pattern, text):
        raise UsageError(
            f"--primary {primary!r} is not a valid label (letters, digits, '_', '.' and '-' only)",
            fix="use a label such as 'colorectal' or 'pancreatic'",
        )
    return text


def _same_series_recorded(sidecar: Path, inputs: list[dict]) -> bool:
    """Whether an existing sidecar records the same series content (sha256)."""
    from metcli.io.files import read_json

    try:
        recorded = read_json(sidecar)["Provenance"]["inputs"]
        return sorted(r["sha256"] for r in recorded) == sorted(r["sha256"] for r in inputs)
    except (InputError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _participants_lock(raw_dir: Path) -> Iterator[None]:
    """Serialise updates of participants.tsv between concurrent imports (POSIX lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    raw_dir.mkdir(parents=True, exist_ok=True)
    with open(raw_dir / _LOCK_NAME, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _register(raw_dir: Path, participant: str, primary: str | None) -> None:
    from metcli.io.participants import upsert_participant
    from metcli.io.provenance import write_dataset_description

    if not (raw_dir / "dataset_description.json").is_file():
        write_dataset_description(raw_dir, name="metcli raw data", dataset_type="raw")
    with _participants_lock(raw_dir):
        upsert_participant(raw_dir, {"participant_id": f"sub-{participant}", "primary": primary})


def _already_done(step, out: Path, inputs: list[dict], *, overwrite: bool, what: str) -> bool:
    """Whether ``out`` is already imported from the same series (skip); an output from
    another series is refused without ``overwrite``."""
    from metcli.io.bids import sidecar_path

    sidecar = sidecar_path(out)
    if overwrite or not (out.exists() or sidecar.exists()):
        return False
    if step.is_done(sidecar, inputs):
        return True
    if not _same_series_recorded(sidecar, inputs):
        raise UsageError(
            f"{what} imported from another series (or of unknown origin)",
            path=out,
            fix="choose another --participant-label, --session or --phase, or "
            "pass --overwrite to replace it",
        )
    return False


def import_dicom(
    dicom_dir: str | Path,
    raw_dir: str | Path,
    *,
    participant: str,
    session: str | None = None,
    phase: str | None = None,
    series_uid: str | None = None,
    primary: str | None = None,
    overwrite: bool = False,
    channel: str | None = None,
    series_description: str | None = None,
) -> Path:
    """Import one CT or MR series into a raw dataset; return the path of the NIfTI written.

    Args:
        dicom_dir: folder searched for DICOM files (any depth).
        raw_dir: the raw dataset root (created if needed).
        participant: the new participant's label (``001`` or ``sub-001``).
        session: optional session label (``ses-`` entity).
        phase: optional contrast phase (``ce-`` entity: native, arterial, portal, delayed...)
            of a CT or T1w series.
        series_uid: the SeriesInstanceUID to import.
        primary: the label written in participants.tsv's ``primary`` column.
        overwrite: redo the import even when it is done, or replace an image
            imported from another series.
        channel: the MR channel (``T2w``, ``T1w``, ``T1w-<phase>``, ``DWI``, ``ADC``): the
            series of that channel is imported and written under that name; default:
            inferred from the series (:mod:`metcli.imaging.dicom.mr_series`).
        series_description: choose the series by its SeriesDescription (a case-insensitive
            substring or regular expression).

    Without ``series_uid``, ``series_description`` or ``channel``, the largest axial CT
    series is imported, else the one MR series there is. An output whose sidecar
    records the same series (sha256) and settings is skipped. An existing output made
    from *another* series is not replaced without ``overwrite`` (:class:`UsageError`): a
    raw image is not a derivative that can be remade. Nothing is written when the
    series is refused.
    """
    from metcli.imaging.dicom.mr_series import choose_series, parse_channel_option

    label, ses, ce = _check_labels(participant, session, phase)
    primary = _check_primary(primary)
    wanted = parse_channel_option(channel, ce)
    dicom_dir, raw_dir = Path(dicom_dir), Path(raw_dir)
    _check_folders(dicom_dir, raw_dir)
    series = choose_series(
        find_series(dicom_dir),
        series_uid=series_uid,
        description=series_description,
        channel=wanted,
        where=dicom_dir,
    )
    where = {"dicom_dir": dicom_dir, "raw_dir": raw_dir, "label": label, "ses": ses}
    if wanted is not None or series.modality == "MR":
        return _import_mr(series, wanted, ce, primary=primary, overwrite=overwrite, **where)
    return _import_ct(series, ce, primary=primary, overwrite=overwrite, **where)


def _import_ct(
    series: SeriesInfo, ce, *, dicom_dir, raw_dir, label, ses, primary, overwrite
) -> Path:
    """Write one CT series (HU) as ``anat/..._ct.nii.gz`` with its sidecar."""
    from metcli.io.bids import Entities, sidecar_path
    from metcli.io.files import OutputSet, write_image_to
    from metcli.io.provenance import Step
    from metcli.io.schemas import validate

    entities = Entities(sub=label, ses=ses, ce=ce)
    out = raw_dir / entities.relpath()
    sidecar = sidecar_path(out)
    stack_geometry(series)  # the header checks, before hashing and decoding
    step = Step(COMMAND, raw_dir, {"dicom": dicom_dir}, SETTINGS)
    inputs = [_series_record(step, series, dicom_dir)]
    what = f"{entities.describe()} already has a CT image"
    if _already_done(step, out, inputs, overwrite=overwrite, what=what):
        log.info("%s: already imported from the same series; skipped", entities.describe())
        _register(raw_dir, label, primary)
        return out

    image, info = read_ct_series(series)
    source = dicom_source(info)
    if source is not None:
        info.metadata[DICOM_SOURCE_KEY] = source
    validate(info.metadata, "import_dicom", where=sidecar)
    with OutputSet() as outputs:
        tmp_image = outputs.path(out)
        write_image_to(image, tmp_image)
        step.write_sidecar(outputs, sidecar, inputs, {out: tmp_image}, extra=info.metadata)
    _register(raw_dir, label, primary)
    log.info(
        "%s: imported %d slices (%s voxels, %s mm) into %s",
        entities.describe(),
        len(info.files),
        "x".join(map(str, image.GetSize())),
        fmt(info.spacing),
        out.relative_to(raw_dir).as_posix(),
    )
    return out


def _mr_paths(raw_dir: Path, channel, label: str, ses: str | None) -> list[Path]:
    """The image (and for DWI its .bval and .bvec), named by metcli.io.channels."""
    from metcli.io.channels import Channel, channel_files

    if channel.modality == "DWI":
        return channel_files(raw_dir, Channel("DWI", bvalue=0), label, ses)
    return [raw_dir / channel.relpath(label, ses)]


def _import_mr(
    series: SeriesInfo, wanted, ce, *, dicom_dir, raw_dir, label, ses, primary, overwrite
) -> Path:
    """Write one MR series as its channel's file(s) (BIDS names) with the sidecar."""
    from metcli.imaging.dicom.diffusion import bval_text, bvec_text
    from metcli.imaging.dicom.metadata import mr_acquisition_metadata
    from metcli.imaging.dicom.mr_checks import check_mr_series
    from metcli.imaging.dicom.mr_series import channel_label, decide_channel
    from metcli.imaging.dicom.mr_volume import MR_SETTINGS, plan_mr_series, read_mr_series
    from metcli.io.bids import sidecar_path
    from metcli.io.files import OutputSet, write_image_to
    from metcli.io.provenance import Step
    from metcli.io.schemas import validate

    check_mr_series(series, channel_label(wanted) if wanted is not None else "")  # kind first
    channel, record = decide_channel(series, wanted, ce, where=dicom_dir)
    plan = plan_mr_series(series, channel)  # every header check, before hashing and decoding
    paths = _mr_paths(raw_dir, channel, label, ses)
    out, sidecar = paths[0], sidecar_path(paths[0])
    step = Step(COMMAND, raw_dir, {"dicom": dicom_dir}, MR_SETTINGS)
    inputs = [_series_record(step, series, dicom_dir)]
    who = f"sub-{label}" + (f" ses-{ses}" if ses else "")
    what = f"{who} already has a {plan.channel_name} image"
    if _already_done(step, out, inputs, overwrite=overwrite, what=what):
        log.info("%s %s: already imported from the same series; skipped", who, plan.channel_name)
        _register(raw_dir, label, primary)
        return out

    image, info = read_mr_series(plan, adc=channel.modality == "ADC")
    metadata = mr_acquisition_metadata(
        plan.geometries[0].slices[0].path,
        step=info.slice_step_mm,
        series_uid=series.uid,
        channel=record,
    )
    metadata.update(_mr_extra(plan, info))
    validate(metadata, "import_dicom", where=sidecar)
    with OutputSet() as outputs:
        produced = {path: outputs.path(path) for path in paths}
        write_image_to(image, produced[out])
        if plan.diffusion:
            produced[paths[1]].write_text(bval_text(info.b_values), encoding="ascii")
            produced[paths[2]].write_text(bvec_text(info.bvecs), encoding="ascii")
        step.write_sidecar(outputs, sidecar, inputs, produced, extra=metadata)
    _register(raw_dir, label, primary)
    log.info(
        "%s: imported %s (%d images, %s voxels, %s mm) into %s",
        who,
        plan.channel_name,
        len(info.files),
        "x".join(map(str, image.GetSize())),
        fmt(info.spacing),
        out.relative_to(raw_dir).as_posix(),
    )
    return out


def _mr_extra(plan, info) -> dict[str, Any]:
    """The sidecar keys of a diffusion series or an ADC map."""
    extra: dict[str, Any] = {}
    if plan.diffusion:
        extra["DiffusionBValues"] = sorted({float(b) for b in info.b_values})
        extra["DiffusionVolumes"] = len(info.b_values)
        if plan.dropped:
            extra["DiffusionVolumesLeftOut"] = list(plan.dropped)
    if info.adc_scale is not None:
        extra["Units"] = "mm2/s"
        extra["ADCScaleFactor"], extra["ADCScaleRule"] = info.adc_scale
    return extra
