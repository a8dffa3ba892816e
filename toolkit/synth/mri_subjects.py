"""One participant of an MR cohort (``metcli synth --modality mr``): the T2w image, the 4D
diffusion series with its ``.bval``/``.bvec`` (names from :mod:`metcli.io.channels`), the
true segmentation and lesion table on the T2w grid, on request a DICOM MR series per
sequence, and the participant's row of participants.tsv. :class:`MriWriter` is the
per-participant work of :func:`metcli.synth.mri_cohort.synth_mri_cohort`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import metcli.imaging.dicom.diffusion as dicom_diffusion
import metcli.imaging.dicom.mr_writer as dicom_mr_writer
from metcli.core.batch import DONE, SKIPPED
from metcli.io.bids import Entities, sidecar_path
from metcli.io.channels import Channel, channel_files
from metcli.io.files import OutputSet, sha256_file, write_image_to, write_tsv_to
from metcli.synth.mri import (
    CLASS_OF,
    REFERENCE,
    SEQUENCES,
    TE_DWI,
    TE_T2W,
    TR_DWI,
    TR_T2W,
    MriParams,
)
from metcli.synth.mri_phantom import MriPhantom, motion_record, mri_phantom, volume_list
from metcli.synth.phantom import Grid, participant_seed
from metcli.synth.subjects import DICOM_SIDECAR, Subject
from metcli.synth.truth import MRI_TRUTH_COLUMNS

log = logging.getLogger(__name__)

#: What each sequence's DICOM series says it is.
ACQUISITIONS = {
    "T2w": dicom_mr_writer.MRAcquisition(
        "metcli synth T2w TSE phantom",
        scanning_sequence="SE",
        sequence_variant=("SK",),
        sequence_name="tse2d1_19",
        echo_time=TE_T2W,
        repetition_time=TR_T2W,
        flip_angle=150.0,
        series_number=1,
    ),
    "dwi": dicom_mr_writer.MRAcquisition(
        "metcli synth DWI b0 50 800 phantom",
        scanning_sequence="EP",
        sequence_variant=("SK", "SP"),
        sequence_name="ep_b800t",
        echo_time=TE_DWI,
        repetition_time=TR_DWI,
        flip_angle=90.0,
        series_number=2,
        image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"),
        diffusion=tuple(volume_list()),
    ),
}


def mri_row(subject: Subject, seed: int, params: MriParams, lesion_type: str) -> dict[str, Any]:
    """The participant's row of participants.tsv: age and sex drawn by lesion type."""
    _phantom_seed, demo_seed = participant_seed(seed, subject.index).spawn(2)
    age, sex = params.demography[lesion_type].draw(np.random.default_rng(demo_seed))
    return {
        "participant_id": subject.participant_id,
        "primary": CLASS_OF[lesion_type],
        "age": age,
        "sex": sex,
    }


def mri_participant(
    seed: int, index: int, lesion_type: str, params: MriParams, size: str | Mapping = "small"
) -> MriPhantom:
    """The phantom of participant ``index`` (0-based) of a cohort of seed ``seed``."""
    phantom_seed, _demo_seed = participant_seed(seed, index).spawn(2)
    return mri_phantom(np.random.default_rng(phantom_seed), params, lesion_type, size)


def acquisition_metadata(sequence: str) -> dict[str, Any]:
    """BIDS' acquisition keys of a sequence's sidecar (times in seconds)."""
    acq = ACQUISITIONS[sequence]
    return {
        "MagneticFieldStrength": acq.field_strength,
        "EchoTime": acq.echo_time / 1000.0,
        "RepetitionTime": acq.repetition_time / 1000.0,
        "FlipAngle": acq.flip_angle,
    }


@dataclass
class MriFiles:
    """The files of one participant."""

    t2w: Path
    dwi: list[Path]  #: the 4D series, its .bval and .bvec
    dseg: Path
    table: Path
    series_dirs: dict[str, Path]

    @classmethod
    def of(cls, subject: Subject, raw_dir: Path, truth_dir: Path, dicom_dir: Path):
        ref = Channel("T2w").entities(subject.label)
        truth = Entities(sub=ref.sub, ses=ref.ses, suffix="dseg", extension=".nii.gz")
        return cls(
            t2w=raw_dir / Channel("T2w").relpath(subject.label),
            dwi=channel_files(raw_dir, Channel("DWI", bvalue=0), subject.label),
            dseg=truth_dir / truth.relpath(),
            table=truth_dir / truth.with_(suffix="lesions", extension=".tsv").relpath(),
            series_dirs={s: dicom_dir / subject.participant_id / s for s in SEQUENCES},
        )

    @property
    def images(self) -> dict[str, Path]:
        return {"T2w": self.t2w, "dwi": self.dwi[0]}


@dataclass
class MriWriter:
    """Writes the participants of an MR cohort (:meth:`write`, one at a time)."""

    params: MriParams
    sizes: Mapping[str, Grid]
    seed: int
    steps: dict[str, Any]
    raw_dir: Path
    truth_dir: Path
    dicom_dir: Path
    dicom: bool
    overwrite: bool
    types: dict[str, str]  #: participant_id -> lesion type
    rows: dict[str, dict] = field(default_factory=dict)

    def write(self, subject: Subject) -> str:
        """Write a participant's files (only its DICOM series when the others are current;
        nothing when all are: SKIPPED)."""
        files = MriFiles.of(subject, self.raw_dir, self.truth_dir, self.dicom_dir)
        kind = self.types[subject.participant_id]
        row = mri_row(subject, self.seed, self.params, kind)
        self.rows[subject.participant_id] = row
        images_done, dicom_done = self._done(files)
        if images_done and dicom_done:
            return SKIPPED
        if images_done:
            self._refresh_dicom(subject, row, files)
            return DONE
        phantom = mri_participant(self.seed, subject.index, kind, self.params, self.sizes)
        images = {s: phantom.sequences[s].images()[0] for s in SEQUENCES}
        names = {}
        with OutputSet() as outs:
            shas = self._write_images(outs, subject, phantom, images, files)
            for sequence in SEQUENCES if self.dicom else ():
                names[sequence] = self._series(outs, subject, row, sequence, images, files, shas)
        for sequence, kept in names.items():
            dicom_mr_writer.remove_stale_images(files.series_dirs[sequence], kept)
        if not self.dicom and any(d.is_dir() for d in files.series_dirs.values()):
            log.warning(
                "%s: the DICOM series in %s were made from earlier images; run with --dicom "
                "to refresh them or delete them",
                subject.participant_id,
                self.dicom_dir / subject.participant_id,
            )
        return DONE

    def _done(self, files: MriFiles) -> tuple[bool, bool]:
        """Whether the images with the truth, and the DICOM series, are current."""
        steps = self.steps
        if self.overwrite or not all(
            steps["raw"].is_done(sidecar_path(p), []) for p in files.images.values()
        ):
            return False, False
        record = steps["truth"].inputs([files.t2w])
        truth_done = all(
            steps["truth"].is_done(sidecar_path(p), record) for p in (files.dseg, files.table)
        )
        dicom_done = not self.dicom or all(
            steps["dicom"].is_done(
                files.series_dirs[s] / DICOM_SIDECAR, steps["dicom"].inputs([files.images[s]])
            )
            for s in SEQUENCES
        )
        return truth_done, dicom_done

    def _write_images(self, outs, subject, phantom: MriPhantom, images, files) -> dict[str, str]:
        """The T2w image, the diffusion series, the true mask and the lesion table; the
        images' sha256."""
        steps, extra = self.steps, {"Synthetic": True}
        tmp_t2w = outs.path(files.t2w)
        write_image_to(images["T2w"], tmp_t2w)
        steps["raw"].write_sidecar(
            outs,
            sidecar_path(files.t2w),
            [],
            {files.t2w: tmp_t2w},
            extra={**extra, **acquisition_metadata("T2w"), "ReferenceImage": REFERENCE},
        )
        dwi, bval, bvec = files.dwi
        produced = {path: outs.path(path) for path in files.dwi}
        write_image_to(images["dwi"], produced[dwi])
        volumes = volume_list()
        direction = np.asarray(images["dwi"].GetDirection()).reshape(4, 4)[:3, :3]
        bvals = dicom_diffusion.bval_text([b for b, _ in volumes])
        produced[bval].write_text(bvals, encoding="ascii")
        vectors = dicom_diffusion.bvecs_for_image([d for _, d in volumes], direction)
        produced[bvec].write_text(dicom_diffusion.bvec_text(vectors), encoding="ascii")
        steps["raw"].write_sidecar(
            outs,
            sidecar_path(dwi),
            [],
            produced,
            extra={
                **extra,
                **acquisition_metadata("dwi"),
                "ReferenceImage": REFERENCE,
                "TransformFromReference": motion_record(phantom.sequences["dwi"].motion),
            },
        )
        shas = {"T2w": sha256_file(tmp_t2w), "dwi": sha256_file(produced[dwi])}
        record = [{"uri": steps["truth"].uri(files.t2w), "sha256": shas["T2w"]}]
        tmp_dseg = outs.path(files.dseg)
        write_image_to(phantom.reference.images()[1], tmp_dseg)
        truth_extra = {**extra, "ReferenceImage": REFERENCE}
        steps["truth"].write_sidecar(
            outs, sidecar_path(files.dseg), record, {files.dseg: tmp_dseg}, extra=truth_extra
        )
        tmp_table = outs.path(files.table)
        rows = phantom.truth_rows(subject.participant_id)
        write_tsv_to(rows, MRI_TRUTH_COLUMNS, tmp_table, schema="synth_lesions", where=files.table)
        steps["truth"].write_sidecar(
            outs, sidecar_path(files.table), record, {files.table: tmp_table}, extra=truth_extra
        )
        return shas

    def _series(self, outs, subject, row, sequence, images, files, shas) -> list[str]:
        return write_sequence_series(
            outs,
            images[sequence],
            files.series_dirs[sequence],
            subject,
            row,
            self.seed,
            self.steps["dicom"],
            sequence,
            files.images[sequence],
            shas[sequence],
        )

    def _refresh_dicom(self, subject: Subject, row: Mapping, files: MriFiles) -> None:
        """The DICOM series of the current images."""
        from metcli.io.files import read_image

        images = {
            "T2w": read_image(files.t2w, what="T2w image"),
            "dwi": read_image(files.dwi[0], what="diffusion series", dims=4),
        }
        shas = {s: sha256_file(p) for s, p in files.images.items()}
        for sequence in SEQUENCES:
            with OutputSet() as outs:
                names = self._series(outs, subject, row, sequence, images, files, shas)
            dicom_mr_writer.remove_stale_images(files.series_dirs[sequence], names)


def write_sequence_series(
    outs: OutputSet,
    image,
    series_dir: Path,
    subject: Subject,
    row: Mapping,
    seed: int,
    step,
    sequence: str,
    image_path: Path,
    image_sha: str,
) -> list[str]:
    """One sequence as a DICOM MR series in ``series_dir`` with its sidecar; the file names.

    The two series of a participant share one study and one frame of reference (the
    patient, not the frame, moved between them)."""
    from pydicom.uid import generate_uid

    shared = ["metcli synth", str(seed), subject.participant_id, step.settings_sha256]
    acquisition = ACQUISITIONS[sequence]
    temps = dicom_mr_writer.mr_to_dicom_series(
        image,
        series_dir,
        outputs=outs,
        acquisition=acquisition,
        uid_sources=[*shared, sequence],
        study_uid=generate_uid(entropy_srcs=[*shared, "study"]),
        frame_uid=generate_uid(entropy_srcs=[*shared, "frame-of-reference"]),
        patient_id=subject.participant_id,
        sex=row.get("sex"),
        age=row.get("age"),
    )
    step.write_sidecar(
        outs,
        series_dir / DICOM_SIDECAR,
        [{"uri": step.uri(image_path), "sha256": image_sha}],
        temps,
        extra={
            "Synthetic": True,
            "SeriesDescription": acquisition.series_description,
            "Sequence": sequence,
        },
    )
    return [p.name for p in temps]
