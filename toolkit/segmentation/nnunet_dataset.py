"""metcli folders as an nnU-Net v2 raw dataset (the first step of ``metcli train-seg``).

A training case is one CT of a raw dataset (``RAW_DIR``) with the ``_dseg.nii.gz`` of
the same participant, session and contrast phase in a segmentation folder
(``SEG_DIR``: import-mask's output, synth's ``derivatives/truth``, or segment's).
:func:`find_training_cases` pairs them; :func:`write_raw_dataset` writes them in
nnU-Net v2's raw format::

    Dataset<ID>_<Name>/dataset.json      channel 0 "CT" (nnU-Net's CT normalisation),
                                         labels background 0, liver 1, lesion 2
    Dataset<ID>_<Name>/imagesTr/<case>_0000.nii.gz   the CT file, copied as it is
    Dataset<ID>_<Name>/labelsTr/<case>.nii.gz        the dseg on the CT's grid (uint8)

The case identifier is the CT's file name without its extension
(``sub-001_ce-portal_ct``). The mask must describe the CT's physical grid: flipped
or permuted axes of it are brought onto the CT's grid
(:func:`metcli.imaging.geometry.to_reference_grid`), anything else is a
:class:`~metcli.core.errors.GeometryError` naming both files. Label values other
than 0, 1 and 2 are refused.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from metcli.core.errors import ImageError, InputError
from metcli.imaging.labels import LABELS
from metcli.io.bids import Acquisition, find_files, select_from_folder, split_extension

log = logging.getLogger(__name__)

#: nnU-Net's channel name of the CT: it selects nnU-Net's CT normalisation.
CHANNEL = "CT"
#: The labels of every model train-seg writes: metcli's dseg convention.
NNUNET_LABELS = {name: value for value, name in sorted(LABELS.items())}
FILE_ENDING = ".nii.gz"
RAW_FIX = "give the rawdata folder (sub-*/anat/*_ct.nii.gz)"
SEG_FIX = (
    "give the folder of _dseg.nii.gz masks (import-mask's output, synth's "
    "derivatives/truth or segment's output)"
)


@dataclass(frozen=True)
class TrainingCase:
    """One CT and its mask."""

    ct: Acquisition
    dseg: Acquisition

    @property
    def participant(self) -> str:
        return self.ct.entities.sub

    @property
    def case_id(self) -> str:
        """nnU-Net's case identifier: the CT's file name without its extension."""
        return split_extension(self.ct.path.name)[0]


def find_training_cases(
    raw_dir: str | Path, seg_dir: str | Path, participants: Sequence[str] | None = None
) -> list[TrainingCase]:
    """The CTs of the selected participants, each with its ``_dseg.nii.gz``.

    A CT without a mask is an :class:`InputError` (every CT of a training participant
    is a training case); masks without a CT are ignored (logged).
    """
    raw_dir, seg_dir = Path(raw_dir), Path(seg_dir)
    chosen = select_from_folder(raw_dir, participants, what="raw dataset folder", fix=RAW_FIX)
    if not seg_dir.is_dir():
        raise InputError("the segmentation folder does not exist", path=seg_dir, fix=SEG_FIX)
    cts = find_files(raw_dir, suffix="ct", participants=chosen)
    if not cts:
        raise InputError("no CT (sub-*/anat/*_ct.nii.gz) found", path=raw_dir, fix=RAW_FIX)
    masks = {a.entities.key: a for a in find_files(seg_dir, suffix="dseg", participants=chosen)}
    cases = []
    for ct in cts:
        mask = masks.pop(ct.entities.key, None)
        if mask is None:
            expected = ct.entities.with_(suffix="dseg").relpath()
            raise InputError(
                f"the CT {ct.relpath} has no mask: {expected} is not in the segmentation folder",
                path=seg_dir,
                fix="add its mask (metcli import-mask), or leave the participant out with "
                "--participant-label",
            )
        cases.append(TrainingCase(ct, mask))
    for mask in masks.values():
        log.info("mask %s has no CT in %s: not used", mask.relpath, raw_dir)
    return cases


def check_labels(array: np.ndarray, path: Path) -> None:
    """Refuse a mask whose voxels are not all 0, 1 or 2 (integers)."""
    if array.dtype.kind == "f" and (
        not np.isfinite(array).all() or np.any(array != np.floor(array))
    ):
        raise ImageError(
            "the mask holds non-integer values; a label image is needed",
            path=path,
            fix="give a discrete _dseg mask (0 background, 1 liver, 2 lesion)",
        )
    values = np.unique(array)
    bad = [v for v in values.tolist() if v not in LABELS]
    if bad:
        found = ", ".join(f"{v:g}" for v in bad[:8])
        raise ImageError(
            f"the mask holds label(s) {found}; train-seg takes 0 background, 1 liver, 2 lesion",
            path=path,
            fix="map its labels with 'metcli import-mask --label-map', or fix the mask",
        )


def write_case(case: TrainingCase, images: Path, labels: Path) -> dict:
    """Write one case into ``imagesTr``/``labelsTr``; its orientation code and phase."""
    import SimpleITK as sitk

    from metcli.imaging.geometry import orientation_code, to_reference_grid
    from metcli.io.files import read_image, write_image

    ct = read_image(case.ct.path, what="CT")
    mask = to_reference_grid(
        read_image(case.dseg.path, what="mask"),
        ct,
        image_path=case.dseg.path,
        reference_path=case.ct.path,
    )
    check_labels(sitk.GetArrayViewFromImage(mask), case.dseg.path)
    label = sitk.Cast(mask, sitk.sitkUInt8)
    label.CopyInformation(ct)
    shutil.copyfile(case.ct.path, images / f"{case.case_id}_0000{FILE_ENDING}")
    write_image(label, labels / f"{case.case_id}{FILE_ENDING}")
    return {"orientation": orientation_code(ct), "phase": case.ct.entities.ce}


def write_raw_dataset(
    cases: Sequence[TrainingCase], folder: str | Path, *, name: str, description: str
) -> dict:
    """Write ``cases`` as the nnU-Net raw dataset ``folder`` (``Dataset<ID>_<Name>``).

    Returns what the model's manifest entry describes: the CTs' orientation codes
    and contrast phases (sets), and the number of cases.
    """
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    images, labels = folder / "imagesTr", folder / "labelsTr"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    orientations, phases = set(), set()
    for case in cases:
        info = write_case(case, images, labels)
        orientations.add(info["orientation"])
        phases.add(info["phase"])
    dataset = {
        "name": name,
        "description": description,
        "channel_names": {"0": CHANNEL},
        "labels": dict(NNUNET_LABELS),
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    log.info("nnU-Net raw dataset: %d cases in %s", len(cases), folder.name)
    return {
        "orientations": sorted(orientations),
        "phases": sorted(phases, key=str),
        "n": len(cases),
    }
