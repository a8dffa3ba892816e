"""One participant of a synthetic cohort: its CT, true segmentation and lesion table (and,
on request, its CT as a DICOM series), each with a provenance sidecar, and its row of
participants.tsv. :class:`SubjectWriter` is the per-participant work of
:func:`metcli.synth.synth.synth_cohort`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from metcli.core.batch import DONE, SKIPPED
from metcli.imaging.dicom.writer import ct_to_dicom_series, remove_stale_slices
from metcli.io.bids import Entities, sidecar_path
from metcli.io.files import OutputSet, sha256_file, write_image_to, write_tsv_to
from metcli.synth.phantom import PHASE, SynthParams, participant_seed, phantom_arrays
from metcli.synth.truth import TRUTH_COLUMNS

log = logging.getLogger(__name__)

DICOM_SIDECAR = "provenance.json"
SERIES_DESCRIPTION = "metcli synth portal-venous CT phantom"


@dataclass
class Subject:
    index: int
    label: str
    primary: str

    @property
    def participant_id(self) -> str:
        return f"sub-{self.label}"


def demographics(rng: np.random.Generator) -> tuple[int, str]:
    """(age, sex) of a synthetic participant: the same distribution in both classes."""
    age = int(np.clip(round(rng.normal(63.0, 10.0)), 30, 90))
    sex = "M" if rng.uniform() < 0.58 else "F"
    return age, sex


def participant_row(subject: Subject, seed: int) -> dict[str, Any]:
    _phantom_seed, demo_seed = participant_seed(seed, subject.index).spawn(2)
    age, sex = demographics(np.random.default_rng(demo_seed))
    return {
        "participant_id": subject.participant_id,
        "primary": subject.primary,
        "age": age,
        "sex": sex,
    }


def ct_entities(subject: Subject) -> Entities:
    return Entities(sub=subject.label, ce=PHASE, suffix="ct", extension=".nii.gz")


def lesion_table_path(truth_dir: Path, subject: Subject) -> Path:
    """The participant's truth table in ``truth_dir``."""
    return truth_dir / ct_entities(subject).with_(suffix="lesions", extension=".tsv").relpath()


@dataclass
class SubjectFiles:
    """The files of one participant."""

    ct: Path
    dseg: Path
    table: Path
    series_dir: Path
    dicom_sidecar: Path

    @classmethod
    def of(cls, subject: Subject, raw_dir: Path, truth_dir: Path, dicom_dir: Path):
        ent = ct_entities(subject)
        series_dir = dicom_dir / subject.participant_id
        return cls(
            ct=raw_dir / ent.relpath(),
            dseg=truth_dir / ent.with_(suffix="dseg").relpath(),
            table=lesion_table_path(truth_dir, subject),
            series_dir=series_dir,
            dicom_sidecar=series_dir / DICOM_SIDECAR,
        )


@dataclass
class SubjectWriter:
    """Writes the participants of a cohort (:meth:`write`, one at a time): the cohort's
    settings, the provenance step of each output (``ct``, ``truth``, ``dicom``) and the
    participants.tsv rows it collects."""

    params: SynthParams
    seed: int
    steps: dict[str, Any]
    raw_dir: Path
    truth_dir: Path
    dicom_dir: Path
    dicom: bool
    overwrite: bool
    rows: dict[str, dict] = field(default_factory=dict)

    def write(self, subject: Subject) -> str:
        """Write a participant's files (only its DICOM series when the others are
        current; nothing when all are: SKIPPED)."""
        files = SubjectFiles.of(subject, self.raw_dir, self.truth_dir, self.dicom_dir)
        row = participant_row(subject, self.seed)
        self.rows[subject.participant_id] = row
        ct_done, truth_done, dicom_done = self._done(files)
        if ct_done and truth_done and dicom_done:
            return SKIPPED
        if ct_done and truth_done:  # only the DICOM series is missing or stale
            self._refresh_dicom(subject, row, files)
            return DONE
        names = self._write_all(subject, row, files)
        if names is not None:
            remove_stale_slices(files.series_dir, names)
        elif files.dicom_sidecar.is_file():
            log.warning(
                "%s: the DICOM series in %s was made from an earlier CT; run with --dicom to "
                "refresh it or delete it",
                subject.participant_id,
                files.series_dir,
            )
        return DONE

    def _done(self, files: SubjectFiles) -> tuple[bool, bool, bool]:
        """Whether the CT, the truth (mask and table) and the DICOM series are current."""
        steps = self.steps
        ct_done = not self.overwrite and steps["ct"].is_done(sidecar_path(files.ct), [])
        truth_done = dicom_done = False
        if ct_done:
            ct_record = steps["truth"].inputs([files.ct])
            truth_done = steps["truth"].is_done(sidecar_path(files.dseg), ct_record) and steps[
                "truth"
            ].is_done(sidecar_path(files.table), ct_record)
            dicom_done = not self.dicom or steps["dicom"].is_done(
                files.dicom_sidecar, steps["dicom"].inputs([files.ct])
            )
        return ct_done, truth_done, dicom_done

    def _refresh_dicom(self, subject: Subject, row: Mapping, files: SubjectFiles) -> None:
        """The DICOM series of the current CT."""
        from metcli.io.files import read_image

        ct_image = read_image(files.ct, what="CT")
        with OutputSet() as outs:
            names = write_dicom(
                outs,
                ct_image,
                files.series_dir,
                subject,
                row,
                self.seed,
                self.steps["dicom"],
                files.ct,
                sha256_file(files.ct),
            )
        remove_stale_slices(files.series_dir, names)

    def _write_all(self, subject: Subject, row: Mapping, files: SubjectFiles) -> list[str] | None:
        """A new phantom: CT, true mask, lesion table (and DICOM series), together; the
        DICOM file names (None without ``dicom``)."""
        steps = self.steps
        phantom_seed, _demo_seed = participant_seed(self.seed, subject.index).spawn(2)
        phantom = phantom_arrays(np.random.default_rng(phantom_seed), self.params, subject.primary)
        ct_image, dseg_image = phantom.images()
        table_rows = [
            lesion.row(subject.participant_id, subject.primary) for lesion in phantom.lesions
        ]
        extra = {"Synthetic": True, "ContrastPhase": PHASE}
        ct_path, dseg_path, table_path = files.ct, files.dseg, files.table
        with OutputSet() as outs:
            tmp_ct = outs.path(ct_path)
            write_image_to(ct_image, tmp_ct)
            steps["ct"].write_sidecar(
                outs, sidecar_path(ct_path), [], {ct_path: tmp_ct}, extra=extra
            )
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
            write_tsv_to(
                table_rows, TRUTH_COLUMNS, tmp_table, schema="synth_lesions", where=table_path
            )
            steps["truth"].write_sidecar(
                outs,
                sidecar_path(table_path),
                ct_record,
                {table_path: tmp_table},
                extra={"Synthetic": True},
            )
            names = None
            if self.dicom:
                names = write_dicom(
                    outs,
                    ct_image,
                    files.series_dir,
                    subject,
                    row,
                    self.seed,
                    steps["dicom"],
                    ct_path,
                    ct_sha,
                )
        return names


def write_dicom(
    outs: OutputSet,
    ct_image,
    series_dir: Path,
    subject: Subject,
    row: Mapping,
    seed: int,
    step,
    ct_path: Path,
    ct_sha: str,
) -> list[str]:
    """The CT as a DICOM series in ``series_dir`` with its sidecar; the slices' file names."""
    uid_sources = ["metcli synth", str(seed), subject.participant_id, step.settings_sha256]
    temps = ct_to_dicom_series(
        ct_image,
        series_dir,
        outputs=outs,
        uid_sources=uid_sources,
        patient_id=subject.participant_id,
        sex=row.get("sex"),
        age=row.get("age"),
        series_description=SERIES_DESCRIPTION,
    )
    record = [{"uri": step.uri(ct_path), "sha256": ct_sha}]
    step.write_sidecar(
        outs,
        series_dir / DICOM_SIDECAR,
        record,
        temps,
        extra={"Synthetic": True, "SeriesDescription": SERIES_DESCRIPTION},
    )
    return [p.name for p in temps]
