"""One participant of an ``almss`` cohort: a CT per phase (each on its own grid, its sidecar
recording the true transform from the portal phase), the true segmentation and lesion table
on the portal grid, on request each phase as its own DICOM series, and the participant's
row of participants.tsv. :class:`AlmssWriter` is the per-participant work of
:func:`metcli.synth.almss_cohort.synth_almss_cohort`."""

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
from metcli.synth.almss import PHASES, REFERENCE_PHASE, AlmssParams
from metcli.synth.multiphase import MultiPhantom, almss_phantom
from metcli.synth.phantom import Grid, participant_seed
from metcli.synth.subjects import DICOM_SIDECAR, Subject
from metcli.synth.truth import ALMSS_TRUTH_COLUMNS

log = logging.getLogger(__name__)


def almss_row(subject: Subject, seed: int, params: AlmssParams) -> dict[str, Any]:
    """The participant's row of participants.tsv: age and sex drawn by class."""
    _phantom_seed, demo_seed = participant_seed(seed, subject.index).spawn(2)
    age, sex = params.demography[subject.primary].draw(np.random.default_rng(demo_seed))
    return {
        "participant_id": subject.participant_id,
        "primary": subject.primary,
        "age": age,
        "sex": sex,
    }


def participant_phantom(
    seed: int, index: int, cls: str, params: AlmssParams, size: str | Mapping = "small"
) -> MultiPhantom:
    """The phantom of participant ``index`` (0-based) of a cohort of seed ``seed``: the
    images its files hold."""
    phantom_seed, _demo_seed = participant_seed(seed, index).spawn(2)
    return almss_phantom(np.random.default_rng(phantom_seed), params, cls, size)


def phase_entities(subject: Subject, phase: str) -> Entities:
    return Entities(sub=subject.label, ce=phase, suffix="ct", extension=".nii.gz")


def series_description(phase: str) -> str:
    return f"metcli synth {phase} phase CT phantom"


@dataclass
class AlmssFiles:
    """The files of one participant."""

    cts: dict[str, Path]
    dseg: Path
    table: Path
    series_dirs: dict[str, Path]

    @classmethod
    def of(cls, subject: Subject, raw_dir: Path, truth_dir: Path, dicom_dir: Path):
        ref = phase_entities(subject, REFERENCE_PHASE)
        return cls(
            cts={p: raw_dir / phase_entities(subject, p).relpath() for p in PHASES},
            dseg=truth_dir / ref.with_(suffix="dseg").relpath(),
            table=truth_dir / ref.with_(suffix="lesions", extension=".tsv").relpath(),
            series_dirs={p: dicom_dir / subject.participant_id / f"ce-{p}" for p in PHASES},
        )


@dataclass
class AlmssWriter:
    """Writes the participants of an almss cohort (:meth:`write`, one at a time)."""

    params: AlmssParams
    sizes: Mapping[str, Grid]
    seed: int
    steps: dict[str, Any]
    raw_dir: Path
    truth_dir: Path
    dicom_dir: Path
    dicom: bool
    overwrite: bool
    rows: dict[str, dict] = field(default_factory=dict)

    def write(self, subject: Subject) -> str:
        """Write a participant's files (only its DICOM series when the others are current;
        nothing when all are: SKIPPED)."""
        files = AlmssFiles.of(subject, self.raw_dir, self.truth_dir, self.dicom_dir)
        row = almss_row(subject, self.seed, self.params)
        self.rows[subject.participant_id] = row
        images_done, dicom_done = self._done(files)
        if images_done and dicom_done:
            return SKIPPED
        if images_done:
            self._refresh_dicom(subject, row, files)
            return DONE
        phantom = participant_phantom(
            self.seed, subject.index, subject.primary, self.params, self.sizes
        )
        with OutputSet() as outs:
            shas = self._write_images(outs, subject, phantom, files)
            names = {}
            for phase in PHASES if self.dicom else ():
                ct_image = phantom.phases[phase].images()[0]
                names[phase] = self._series(outs, subject, row, phase, ct_image, files, shas)
        for phase, kept in names.items():
            remove_stale_slices(files.series_dirs[phase], kept)
        if not self.dicom and any(d.is_dir() for d in files.series_dirs.values()):
            log.warning(
                "%s: the DICOM series in %s were made from earlier CTs; run with --dicom to "
                "refresh them or delete them",
                subject.participant_id,
                self.dicom_dir / subject.participant_id,
            )
        return DONE

    def _done(self, files: AlmssFiles) -> tuple[bool, bool]:
        """Whether the CTs with the truth, and the DICOM series, are current."""
        steps = self.steps
        if self.overwrite or not all(
            steps["ct"].is_done(sidecar_path(ct), []) for ct in files.cts.values()
        ):
            return False, False
        record = steps["truth"].inputs([files.cts[REFERENCE_PHASE]])
        truth_done = steps["truth"].is_done(sidecar_path(files.dseg), record) and steps[
            "truth"
        ].is_done(sidecar_path(files.table), record)
        dicom_done = not self.dicom or all(
            steps["dicom"].is_done(
                files.series_dirs[p] / DICOM_SIDECAR, steps["dicom"].inputs([files.cts[p]])
            )
            for p in PHASES
        )
        return truth_done, dicom_done

    def _write_images(
        self, outs: OutputSet, subject: Subject, phantom: MultiPhantom, files: AlmssFiles
    ) -> dict[str, str]:
        """The CTs, the true mask and the lesion table; each CT's sha256."""
        steps = self.steps
        shas = {}
        for phase in PHASES:
            image = phantom.phases[phase]
            path = files.cts[phase]
            tmp = outs.path(path)
            write_image_to(image.images()[0], tmp)
            extra = {
                "Synthetic": True,
                "ContrastPhase": phase,
                "ReferencePhase": REFERENCE_PHASE,
                "TransformFromReference": image.motion.as_record(),
            }
            steps["ct"].write_sidecar(outs, sidecar_path(path), [], {path: tmp}, extra=extra)
            shas[phase] = sha256_file(tmp)
        ref = files.cts[REFERENCE_PHASE]
        ct_record = [{"uri": steps["truth"].uri(ref), "sha256": shas[REFERENCE_PHASE]}]
        tmp_dseg = outs.path(files.dseg)
        write_image_to(phantom.reference.images()[1], tmp_dseg)
        steps["truth"].write_sidecar(
            outs,
            sidecar_path(files.dseg),
            ct_record,
            {files.dseg: tmp_dseg},
            extra={"Synthetic": True, "ContrastPhase": REFERENCE_PHASE},
        )
        tmp_table = outs.path(files.table)
        rows = phantom.truth_rows(subject.participant_id)
        write_tsv_to(
            rows, ALMSS_TRUTH_COLUMNS, tmp_table, schema="synth_lesions", where=files.table
        )
        steps["truth"].write_sidecar(
            outs,
            sidecar_path(files.table),
            ct_record,
            {files.table: tmp_table},
            extra={"Synthetic": True, "ContrastPhase": REFERENCE_PHASE},
        )
        return shas

    def _series(self, outs, subject, row, phase, ct_image, files, shas) -> list[str]:
        return write_phase_series(
            outs,
            ct_image,
            files.series_dirs[phase],
            subject,
            row,
            self.seed,
            self.steps["dicom"],
            phase,
            files.cts[phase],
            shas[phase],
        )

    def _refresh_dicom(self, subject: Subject, row: Mapping, files: AlmssFiles) -> None:
        """The DICOM series of the current CTs."""
        from metcli.io.files import read_image

        shas = {p: sha256_file(files.cts[p]) for p in PHASES}
        for phase in PHASES:
            ct_image = read_image(files.cts[phase], what="CT")
            with OutputSet() as outs:
                names = self._series(outs, subject, row, phase, ct_image, files, shas)
            remove_stale_slices(files.series_dirs[phase], names)


def write_phase_series(
    outs: OutputSet,
    ct_image,
    series_dir: Path,
    subject: Subject,
    row: Mapping,
    seed: int,
    step,
    phase: str,
    ct_path: Path,
    ct_sha: str,
) -> list[str]:
    """One phase as a DICOM series in ``series_dir`` with its sidecar; the slices' names.

    The phases of a participant share one study and one frame of reference (one scanner
    table: the patient, not the frame, moved between the phases); each is its own series
    (SeriesNumber 1..4 in acquisition order, SeriesDescription naming the phase; no
    ContrastBolusAgent in the native phase)."""
    import pydicom
    from pydicom.uid import generate_uid

    shared = ["metcli synth", str(seed), subject.participant_id, step.settings_sha256]
    temps = ct_to_dicom_series(
        ct_image,
        series_dir,
        outputs=outs,
        uid_sources=[*shared, phase],
        patient_id=subject.participant_id,
        sex=row.get("sex"),
        age=row.get("age"),
        series_description=series_description(phase),
    )
    study = generate_uid(entropy_srcs=[*shared, "study"])
    frame = generate_uid(entropy_srcs=[*shared, "frame-of-reference"])
    new_pydicom = int(pydicom.__version__.split(".")[0]) >= 3
    for tmp in temps.values():
        ds = pydicom.dcmread(str(tmp))
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        ds.SeriesNumber = PHASES.index(phase) + 1
        if phase == "native":
            del ds.ContrastBolusAgent
        else:
            ds.ContrastBolusAgent = f"synthetic {phase} phase"
        if new_pydicom:
            pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        else:  # pragma: no cover - pydicom 2.4
            pydicom.dcmwrite(str(tmp), ds, write_like_original=False)
    step.write_sidecar(
        outs,
        series_dir / DICOM_SIDECAR,
        [{"uri": step.uri(ct_path), "sha256": ct_sha}],
        temps,
        extra={
            "Synthetic": True,
            "SeriesDescription": series_description(phase),
            "ContrastPhase": phase,
        },
    )
    return [p.name for p in temps]
