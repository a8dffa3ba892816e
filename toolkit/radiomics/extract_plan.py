"""Which CTs ``metcli extract`` works on: each lesion map paired with its CT.

:func:`select` chooses the participants of the lesions folder; :func:`plan_jobs`
pairs every lesion map of split-lesions with its CT of the raw dataset (and,
for the peritumoral ring, its segmentation) by participant, session and phase,
and records a participant or map without a partner as failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from metcli.core.batch import FAILED, BatchReport
from metcli.core.errors import InputError
from metcli.io.bids import Acquisition, find_files, select_from_folder
from metcli.lesions.maps import LESION_SUFFIX, find_lesion_maps

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One CT and the files extracted from it."""

    ct: Acquisition
    lesion_map: Path
    lesion_table: Path
    seg: Path | None = None
    #: every channel's CT by channel name (the reference's is ``ct``), for a multi-channel
    #: extraction (:mod:`metcli.radiomics.channels`); None: this CT alone
    channels: dict[str, Path] | None = None
    #: further files the job reads (a diffusion series' .bval and .bvec)
    inputs_extra: list[Path] | None = None

    @property
    def entities(self):
        return self.ct.entities

    def inputs(self) -> list[Path]:
        files = [self.ct.path, self.lesion_map, self.lesion_table, self.seg]
        files += [p for p in (self.inputs_extra or []) if p not in files]
        return [p for p in files if p]


def select(lesions_dir: Path, participants: Sequence[str] | None) -> list[str]:
    """Participant labels of ``lesions_dir`` to process (all, or the requested ones)."""
    return select_from_folder(
        lesions_dir,
        participants,
        what="lesions folder",
        fix="give the folder that `metcli split-lesions` wrote",
    )


def plan_jobs(
    raw_dir: Path,
    lesions_dir: Path,
    seg_dir: Path | None,
    chosen: Sequence[str],
    phases: Sequence[str] | None,
    report: BatchReport,
) -> list[Job]:
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
        jobs.append(Job(ct=ct, lesion_map=lesion_map.path, lesion_table=table, seg=seg))
    return jobs
