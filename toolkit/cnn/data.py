"""train-cnn's data: which lesions, their network inputs, and which patients go where.

* :func:`find_jobs` pairs every labelled participant's lesion map with its CT
  (or, with ``phases``, with one CT per contrast phase) and notes who is left
  out and why.
* :func:`load_samples` computes every kept lesion's network inputs once per
  run, with :func:`metcli.lesions.inputs.model_inputs` (the function predict
  uses), so training and prediction preprocess alike.
* :func:`plan_split` splits patients (never lesions) into train, val and test;
  :func:`assign_folds` splits the training patients into cross-validation
  folds, by patient and stratified by class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.errors import InputError, UsageError

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """The network inputs of one lesion with its patient and label.

    ``images`` is float32 ``[n, channels, *spatial]``: one row per axial slice
    (2D) or a single cube (3D).
    """

    participant_id: str
    lesion_id: int
    label: int
    images: np.ndarray
    covariates: np.ndarray | None = None  #: float32 [K], the patient's encoded covariates


@dataclass
class Job:
    """One participant's CTs (channel name -> path), lesion map, lesion table and kept ids."""

    participant_id: str
    cts: dict = field(default_factory=dict)
    lesion_map: Path | None = None
    lesion_table: Path | None = None
    lesion_ids: list[int] = field(default_factory=list)
    liver_mask: Path | None = None  #: the dseg of the lesion map (``--seg``), for ``almss``

    @property
    def ct(self) -> Path:
        """The first CT (the only one without phases)."""
        return next(iter(self.cts.values()))


def parse_phases(phases) -> list[str] | None:
    """``portal,arterial`` (or a list) -> ``["portal", "arterial"]``; None or empty -> None.

    Any channel name of :mod:`metcli.io.channels` is taken (CT phases, ``T2w``,
    ``DWI-b800``, ``ADC``...); the first is the reference, whose lesion maps are used.
    """
    from metcli.io.channels import parse_channels

    if phases is None:
        return None
    items = phases.split(",") if isinstance(phases, str) else list(phases)
    items = [str(p).strip() for p in items if str(p).strip()]
    if not items:
        return None
    if len(set(items)) != len(items):
        raise UsageError(
            f"--phases lists a phase twice: {','.join(items)}",
            fix="name each phase once, in the channel order you want",
        )
    return [c.name for c in parse_channels(items, option="--phases")]


def find_jobs(
    raw_dir: Path,
    lesions_dir: Path,
    labels: dict[str, str],
    excluded: dict[str, str],
    phases: Sequence[str] | None = None,
) -> list[Job]:
    """Pair every labelled participant's lesion map with its CT(s); note who is left out.

    The pairing is :func:`metcli.lesions.maps.pair_images`, the same as predict's.
    A participant whose lesion map, CT(s) or lesion table is missing, or who has
    several lesion maps, or no kept lesion, is left out with a warning and the
    reason is recorded in ``excluded``.
    """
    from metcli.core.errors import InputError
    from metcli.io.bids import find_files
    from metcli.lesions.maps import (
        channel_files_by_key,
        choose_lesion_map,
        find_lesion_maps,
        kept_lesion_ids,
        pair_images,
    )

    chosen = [p[4:] for p in labels]
    maps = find_lesion_maps(Path(lesions_dir), chosen)
    cts = {
        a.entities.key: a.path for a in find_files(Path(raw_dir), suffix="ct", participants=chosen)
    }
    if phases:
        cts.update(channel_files_by_key(Path(raw_dir), chosen, phases))
    by_patient: dict[str, list] = {}
    for m in maps:
        by_patient.setdefault(m.entities.participant_id, []).append(m)
    jobs = []

    def leave_out(pid: str, why: str) -> None:
        excluded[pid] = why
        log.warning("%s left out: %s", pid, why)

    for pid in sorted(labels):
        if not by_patient.get(pid):
            leave_out(pid, "no lesion map")
            continue
        try:
            pairing = pair_images(
                choose_lesion_map(pid, by_patient[pid], phases=phases),
                cts,
                raw_dir=Path(raw_dir),
                phases=phases,
            )
        except InputError as exc:
            leave_out(pid, exc.what)
            continue
        ids = kept_lesion_ids(pairing.lesion_table)
        if not ids:
            leave_out(pid, "no kept lesion")
            continue
        jobs.append(Job(pid, pairing.cts, pairing.lesion_map, pairing.lesion_table, ids))
    return jobs


def load_samples(
    jobs: Sequence[Job], labels: dict[str, str], classes: list[str], input_spec: dict
) -> list[Sample]:
    """The network inputs of every kept lesion (computed once per run).

    ``input_spec`` is the part of the model card that
    :func:`metcli.lesions.inputs.model_inputs` reads: ``dims``, ``phases``,
    ``input`` and ``preprocessing``.
    """
    from metcli.imaging.channel_images import read_channel_file
    from metcli.io.files import read_image
    from metcli.lesions.inputs import model_inputs

    samples = []
    for job in jobs:
        images = {phase: read_channel_file(path, phase) for phase, path in job.cts.items()}
        per_lesion = model_inputs(
            input_spec,
            images,
            read_image(job.lesion_map, what="lesion map"),
            job.lesion_ids,
            ct_paths=job.cts,
            lesion_map_path=job.lesion_map,
            liver_mask=None
            if job.liver_mask is None
            else read_image(job.liver_mask, what="segmentation"),
            liver_mask_path=job.liver_mask,
        )
        label = classes.index(labels[job.participant_id])
        samples.extend(Sample(job.participant_id, s.lesion_id, label, s.images) for s in per_lesion)
    return samples


def stack_covariates(samples: Sequence[Sample]) -> np.ndarray | None:
    """The covariates of every network input (:func:`stack`'s rows), or None without any."""
    if not samples or samples[0].covariates is None:
        return None
    return np.concatenate(
        [np.repeat(s.covariates[None], len(s.images), axis=0) for s in samples]
    ).astype(np.float32)


def find_liver_masks(seg_dir: Path, jobs: Sequence[Job], excluded: dict[str, str]) -> list[Job]:
    """Each job's segmentation (``dseg`` of the lesion map's participant, session and
    phase in ``seg_dir``); a participant without one is left out, the reason recorded."""
    from metcli.io.bids import find_files, parse_name

    found = {a.entities.key: a.path for a in find_files(Path(seg_dir), suffix="dseg", desc=None)}
    kept = []
    for job in jobs:
        key = parse_name(job.lesion_map.name).key
        if key not in found:
            excluded[job.participant_id] = f"no segmentation (dseg) in {seg_dir}"
            log.warning("%s left out: no segmentation (dseg) in %s", job.participant_id, seg_dir)
            continue
        job.liver_mask = found[key]
        kept.append(job)
    return kept


def stack(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs [n, channels, *spatial], their labels, the index of each one's lesion)."""
    images = np.concatenate([s.images for s in samples]).astype(np.float32)
    labels = np.concatenate([np.full(len(s.images), s.label) for s in samples])
    owner = np.concatenate([np.full(len(s.images), i) for i, s in enumerate(samples)])
    return images, labels.astype(np.int64), owner


# ----------------------------------------------------------------------------- splits
def _take(patients: list[str], labels: dict[str, str], n: int, rng) -> list[str]:
    """n patients, taken in turn from each class's shuffled list (stratified)."""
    pools = {
        c: list(rng.permutation(sorted(p for p in patients if labels[p] == c)))
        for c in sorted(set(labels[p] for p in patients))
    }
    chosen: list[str] = []
    while len(chosen) < n and any(pools.values()):
        for c in pools:
            if pools[c] and len(chosen) < n:
                chosen.append(str(pools[c].pop()))
    return sorted(chosen)


def plan_split(
    labels: dict[str, str],
    *,
    split: Path | None,
    val_patients: int,
    test_patients: int | None,
    seed: int,
    need_val: bool = True,
) -> dict[str, str]:
    """participant -> train, val or test (by patient; split file or stratified at random).

    A split file without validation patients (train-radiomics' ``split.tsv`` has
    train and test only) gets ``val_patients`` of its training patients, taken
    stratified by class with ``seed``, so a CNN and the radiomics models share
    one test set. ``need_val=False`` (``--cv-folds``) allows a split without
    validation patients.
    """
    if split is not None:
        from metcli.io.splits import read_split

        sets = read_split(Path(split)).sets
        missing = sorted(p for p in labels if p not in sets)
        if missing:
            log.warning(
                "%d participant(s) not in the split file, left out: %s",
                len(missing),
                ", ".join(missing),
            )
        plan = {p: sets[p] for p in labels if p in sets}
        if need_val and val_patients > 0 and "val" not in plan.values():
            train = sorted(p for p, s in plan.items() if s == "train")
            if val_patients >= len(train):
                raise UsageError(
                    f"--val-patients {val_patients} would leave no training "
                    f"patient of the split file's {len(train)}",
                    fix="lower --val-patients, or use --cv-folds",
                )
            for p in _take(train, labels, val_patients, np.random.default_rng(seed)):
                plan[p] = "val"
            log.info(
                "the split file has no validation patients: %d of its training "
                "patients validate (stratified, seed %d)",
                val_patients,
                seed,
            )
    else:
        rng = np.random.default_rng(seed)
        everyone = sorted(labels)
        wanted_test = 8 if test_patients is None else test_patients
        if wanted_test + val_patients >= len(everyone):
            raise UsageError(
                f"--test-patients {wanted_test} and --val-patients {val_patients} "
                f"leave no training patient of {len(everyone)}",
                fix="lower them or add patients",
            )
        test = _take(everyone, labels, wanted_test, rng)
        rest = [p for p in everyone if p not in test]
        val = _take(rest, labels, val_patients, rng)
        plan = {p: "test" if p in test else "val" if p in val else "train" for p in everyone}
    for which in ("train", "val") if need_val else ("train",):
        if not any(s == which for s in plan.values()):
            raise InputError(
                f"the split has no {which} patient",
                path=split,
                fix=f"put at least one patient in the {which} set",
            )
    for c in sorted(set(labels.values())):
        if not any(labels[p] == c and s == "train" for p, s in plan.items()):
            raise InputError(
                f"the training set has no patient of class {c}",
                path=split,
                fix="put patients of every class in the training set",
            )
    return plan


def assign_folds(
    labels: dict[str, str],
    k: int,
    *,
    seed: int,
    given: dict[str, int] | None = None,
    split: Path | None = None,
) -> dict[str, int]:
    """Training patient -> cross-validation fold 0..k-1, by patient and stratified by class.

    Each class's patients are shuffled and dealt to the folds in turn, so every
    fold holds about as many patients of each class. ``given`` (the split
    file's ``fold`` column) is used instead when it names a fold for every
    training patient; it must then hold ``k`` folds.
    """
    patients = sorted(labels)
    if k < 2:
        raise UsageError(f"--cv-folds must be at least 2, got {k}")
    if k > len(patients):
        raise UsageError(
            f"--cv-folds {k} needs at least {k} training patients, there are {len(patients)}",
            fix="lower --cv-folds or add patients",
        )
    if given and all(p in given for p in patients):
        folds = {p: int(given[p]) for p in patients}
        found = sorted(set(folds.values()))
        if len(found) != k:
            raise UsageError(
                f"--cv-folds {k}, but the split file gives the training patients "
                f"{len(found)} folds ({', '.join(map(str, found))})",
                fix=f"give --cv-folds {len(found)} or change the fold column of "
                f"{Path(split).name if split else 'the split file'}",
            )
        renumber = {f: i for i, f in enumerate(found)}
        return {p: renumber[f] for p, f in folds.items()}
    rng = np.random.default_rng([seed, 1])
    folds: dict[str, int] = {}
    turn = 0
    for c in sorted(set(labels.values())):
        for p in rng.permutation(sorted(p for p in patients if labels[p] == c)):
            folds[str(p)] = turn % k
            turn += 1
    return dict(sorted(folds.items()))
