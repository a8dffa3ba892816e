"""``DicomSource``: what a CT's sidecar keeps of its DICOM series, to write DICOM objects
that refer to it (a DICOM-SEG, :mod:`metcli.imaging.dicom.seg_out`) without the files.

:func:`dicom_source` builds the record when ``import-dicom`` writes a CT; it is stored in
the CT's JSON sidecar under ``DicomSource`` (schema: ``import_dicom.schema.json``)::

    "DicomSource": {
      "StudyInstanceUID": "...", "SeriesInstanceUID": "...", "FrameOfReferenceUID": "...",
      "Modality": "CT", "Rows": 512, "Columns": 512,
      "PixelSpacing": [0.78, 0.78],            # between rows, between columns (mm)
      "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
      "SliceThickness": 1.5,                   # as stated, when the header has it
      "Instances": [                           # one per slice, in the NIfTI's slice order
        {"SOPClassUID": "...", "SOPInstanceUID": "...", "ImagePositionPatient": [x, y, z]},
        ...
      ]
    }

Privacy: these are the UIDs of the study, the series, the frame of reference and the
slices (needed so that viewers and PACS attach a derived object to the CT), the
geometry and the modality. No name, ID, birth date, sex, date, time, accession number,
institution or person is recorded. UIDs are pseudonymous links, not identity: when the
DICOM export was de-identified (PS3.15 profile) they are the replaced UIDs. The
sha256 fields of the sidecar (``SeriesInstanceUIDSha256``, ``FrameOfReferenceUIDSha256``)
are kept as they were.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from metcli.core.errors import InputError
from metcli.imaging.dicom.headers import float_value, read_dataset, text_value

log = logging.getLogger(__name__)

_VALID_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: The sidecar key of the record.
DICOM_SOURCE_KEY = "DicomSource"
#: What a user does when a CT has no record.
IMPORT_FIX = (
    "import the CT with `metcli import-dicom` (a CT imported before metcli recorded the "
    "DICOM source is imported again on a re-run; use --overwrite if it is not)"
)


def dicom_source(info) -> dict[str, Any] | None:
    """The ``DicomSource`` record of a CT series read by
    :func:`metcli.imaging.dicom.volume.read_ct_series` (``info``: its ``VolumeInfo``);
    the instances follow the volume's slices (index k of its third axis). None (with a
    warning) when a UID is missing or not a valid UID: the import goes on without it."""
    headers = {header.path: header for header in info.series.slices}
    ordered = [headers[path] for path in info.files]
    first = ordered[0]
    ds = read_dataset(first.path, stop_before_pixels=True)
    record: dict[str, Any] = {
        "StudyInstanceUID": _uid(ds.get("StudyInstanceUID")),
        "SeriesInstanceUID": _uid(first.series_uid),
        "FrameOfReferenceUID": _uid(ds.get("FrameOfReferenceUID")),
        "Modality": first.modality or "CT",
        "Rows": int(first.rows),
        "Columns": int(first.columns),
        "PixelSpacing": [float(v) for v in first.pixel_spacing],
        "ImageOrientationPatient": [float(v) for v in first.orientation],
    }
    thickness = float_value(ds.get("SliceThickness"))
    if thickness is not None and thickness > 0:
        record["SliceThickness"] = thickness
    record["Instances"] = [
        {
            "SOPClassUID": _uid(header.sop_class_uid),
            "SOPInstanceUID": _uid(header.sop_instance_uid),
            "ImagePositionPatient": [float(v) for v in header.position],
        }
        for header in ordered
    ]
    uids = [record[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")]
    uids += [u for i in record["Instances"] for u in (i["SOPClassUID"], i["SOPInstanceUID"])]
    bad = next((u for u in uids if len(u) > 64 or not _VALID_UID.match(u)), None)
    if bad is not None:
        log.warning(
            "%s: the series has a missing or invalid UID (%r); the CT is imported without "
            "DicomSource, so no DICOM-SEG can refer to it",
            info.series.folder,
            bad[:70],
        )
        return None
    return record


def _uid(value) -> str:
    return text_value(value).rstrip("\0").strip()


def read_dicom_source(ct_path: Path) -> dict[str, Any]:
    """The ``DicomSource`` record in the sidecar of the CT ``ct_path``, checked against
    the schema; :class:`InputError` naming the CT when it has none."""
    from metcli.io.bids import sidecar_path
    from metcli.io.files import read_json
    from metcli.io.schemas import validate

    ct_path = Path(ct_path)
    sidecar = sidecar_path(ct_path)
    if not sidecar.is_file():
        raise InputError(
            "the CT has no JSON sidecar, so its DICOM series is unknown: a DICOM-SEG "
            "needs the series the CT came from",
            path=ct_path,
            fix=IMPORT_FIX,
        )
    doc = read_json(sidecar)
    record = doc.get(DICOM_SOURCE_KEY) if isinstance(doc, dict) else None
    if not isinstance(record, dict):
        raise InputError(
            f"the CT's sidecar has no {DICOM_SOURCE_KEY} (the CT did not come from "
            "`metcli import-dicom`, or an older version imported it): a DICOM-SEG needs "
            "the series the CT came from",
            path=ct_path,
            fix=IMPORT_FIX,
        )
    validate(doc, "import_dicom", where=sidecar)
    return record
