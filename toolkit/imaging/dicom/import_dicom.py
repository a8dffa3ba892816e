"""``import-dicom``: one CT series into a raw dataset, as NIfTI in Hounsfield units.

:func:`import_dicom` writes
``rawdata/sub-<id>/[ses-<s>/]anat/sub-<id>[_ses-<s>][_ce-<phase>]_ct.nii.gz`` with
its JSON sidecar and adds the participant to ``participants.tsv``. Finding the
series is :mod:`metcli.imaging.dicom.series`'s work, checking and reading it
:mod:`metcli.imaging.dicom.stack`'s and :mod:`metcli.imaging.dicom.volume`'s; their
rules are documented there.

Privacy: the sidecar holds non-identifying acquisition metadata only (never
names, IDs, dates, institutions or UIDs; the SeriesInstanceUID and the
FrameOfReferenceUID only as their sha256, ``SeriesInstanceUIDSha256`` and
``FrameOfReferenceUIDSha256``, so that import-mask can check that a mask belongs
to the series, :mod:`metcli.imaging.dicom_checks`). The input record
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
from metcli.imaging.dicom.series import SeriesInfo, find_series, relative_text, select_series
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
) -> Path:
    """Import one CT series into a raw dataset; return the path of the NIfTI written.

    Args:
        dicom_dir: folder searched for DICOM files (any depth).
        raw_dir: the raw dataset root (created if needed).
        participant: the new participant's label (``001`` or ``sub-001``).
        session: optional session label (``ses-`` entity).
        phase: optional contrast phase (``ce-`` entity: native, arterial, portal, delayed...).
        series_uid: the SeriesInstanceUID to import; default the largest axial CT series.
        primary: the label written in participants.tsv's ``primary`` column.
        overwrite: redo the import even when it is done, or replace an image
            imported from another series.

    An output whose sidecar records the same series (sha256) and settings is
    skipped. An existing output made from *another* series is not replaced
    without ``overwrite`` (:class:`UsageError`): a raw image is not a derivative
    that can be remade. Nothing is written when the series is refused.
    """
    from metcli.io.bids import Entities, sidecar_path
    from metcli.io.files import OutputSet, write_image_to
    from metcli.io.provenance import Step
    from metcli.io.schemas import validate

    label, ses, ce = _check_labels(participant, session, phase)
    primary = _check_primary(primary)
    dicom_dir, raw_dir = Path(dicom_dir), Path(raw_dir)
    _check_folders(dicom_dir, raw_dir)

    entities = Entities(sub=label, ses=ses, ce=ce)
    out = raw_dir / entities.relpath()
    sidecar = sidecar_path(out)
    series = select_series(find_series(dicom_dir), series_uid, where=dicom_dir)
    stack_geometry(series)  # the header checks, before hashing and decoding
    step = Step(COMMAND, raw_dir, {"dicom": dicom_dir}, SETTINGS)
    inputs = [_series_record(step, series, dicom_dir)]

    if not overwrite and (out.exists() or sidecar.exists()):
        if step.is_done(sidecar, inputs):
            log.info("%s: already imported from the same series; skipped", entities.describe())
            _register(raw_dir, label, primary)
            return out
        if not _same_series_recorded(sidecar, inputs):
            raise UsageError(
                f"{entities.describe()} already has a CT image imported from another "
                "series (or of unknown origin)",
                path=out,
                fix="choose another --participant-label, --session or --phase, or "
                "pass --overwrite to replace it",
            )

    image, info = read_ct_series(series)
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
