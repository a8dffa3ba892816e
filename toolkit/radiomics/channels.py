"""Radiomics of several channels (CT phases) of one participant, on one reference grid.

Real phases are separate acquisitions: other extent, slice thickness and position, a
breath-hold apart. The lesion map (and the segmentation) belong to the reference
channel; every other channel is brought onto the reference grid in physical space
(:func:`metcli.imaging.channels_grid.resample_to_reference`), after a rigid or affine
registration when asked (:func:`metcli.imaging.registration.register`, its transform
recorded in the table's sidecar), and each lesion is extracted from every channel
through the same mask. A channel that does not cover a lesion fails the participant
with one line naming both files.

One row per lesion: ``<channel>_original_<class>_<feature>`` for every channel (shape
features, which depend on the mask only, once, under the reference channel), and with
``liver=True`` the liver's features (the segmentation's liver label, a participant-level
region) as ``liver_<channel>_original_...`` on every row of the participant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metcli.core.batch import FAILED, BatchReport
from metcli.core.errors import InputError, UsageError
from metcli.radiomics.columns import (
    ID_COLUMNS,
    STATUS_COLUMNS,
    STATUS_OK,
    RegionResult,
    diagnostic_names,
    feature_names,
)
from metcli.radiomics.params import SHAPE_CLASSES, ExtractionParams

log = logging.getLogger(__name__)

REGISTRATIONS = ("none", "rigid", "affine")
LIVER_PREFIX = "liver_"


@dataclass(frozen=True)
class ChannelSpec:
    """Which channels a multi-channel extraction reads and how it aligns them."""

    channels: tuple[str, ...]
    reference: str
    register: str = "none"
    liver: bool = False

    @classmethod
    def from_options(
        cls, channels, reference=None, register: str = "none", liver: bool = False
    ) -> "ChannelSpec | None":
        """The spec of ``--channels``/``--reference``/``--register``/``--liver-features``;
        None without channels (one table per phase, as before)."""
        if channels is None:
            if reference is not None or register != "none" or liver:
                raise UsageError(
                    "--reference, --register and --liver-features go with --channels",
                    fix="name the channels, for example --channels native,arterial,portal,delayed",
                )
            return None
        from metcli.io.channels import parse_channel, parse_channels

        names = [c.name for c in parse_channels(channels)]
        if reference is None:
            reference = "portal" if "portal" in names else names[0]
        reference = parse_channel(reference, option="--reference").name
        if reference not in names:
            raise UsageError(
                f"--reference {reference} is not one of --channels {','.join(names)}",
                fix="name the channel the lesion maps were made on, and list it in --channels",
            )
        if register not in REGISTRATIONS:
            raise UsageError(
                f"--register {register!r} is not one of {', '.join(REGISTRATIONS)}",
                fix="choose none (the scanner's positions), rigid or affine",
            )
        return cls(tuple(names), reference, register, bool(liver))

    def settings(self) -> dict[str, Any]:
        """What the spec changes in the features (hashed with the extraction settings)."""
        return {
            "channels": list(self.channels),
            "reference_channel": self.reference,
            "registration": self.register,
            "interpolation": "linear",
            "liver_features": self.liver,
            "mr_normalisation": {
                c: MR_NORMALISATION for c in self.channels if channel_kind(c) == "mr"
            },
        }


#: pyradiomics' normalisation of MR channels (no absolute unit): z-score over the image,
#: times 100 (pyradiomics' documentation for MR), unless the parameters normalise already.
MR_NORMALISATION = {"normalize": True, "normalizeScale": 100}


def column_prefix(channel: str) -> str:
    """The prefix of a channel's feature columns: its name with ``-`` as ``_``
    (``DWI-b800`` -> ``DWI_b800_``), so that columns are valid names everywhere, ONNX
    input names included."""
    return channel.replace("-", "_") + "_"


def channel_params(params: ExtractionParams, *, shape: bool, kind: str = "ct") -> ExtractionParams:
    """The parameters for one channel: without the shape classes unless ``shape``; an MR
    channel normalised (:data:`MR_NORMALISATION`) unless the parameters already are."""
    if not shape:
        classes = {k: v for k, v in params.feature_classes.items() if k not in SHAPE_CLASSES}
        params = replace(params, feature_classes=classes)
    if kind == "mr" and not params.settings.get("normalize"):
        params = replace(params, settings={**params.settings, **MR_NORMALISATION})
    return params


def channel_kind(name: str) -> str:
    """``ct`` or ``mr`` for a channel name."""
    from metcli.io.channels import parse_channel

    return parse_channel(name).kind


def channel_columns(params: ExtractionParams, spec: ChannelSpec) -> list[str]:
    """Columns of a multi-channel features table."""
    columns = [*ID_COLUMNS, *STATUS_COLUMNS]
    for channel in spec.channels:
        one = channel_params(params, shape=channel == spec.reference)
        columns.extend(feature_names(one, prefix=column_prefix(channel)))
    if spec.liver:
        for channel in spec.channels:
            one = channel_params(params, shape=False)
            columns.extend(feature_names(one, prefix=LIVER_PREFIX + column_prefix(channel)))
    columns.extend(diagnostic_names(params))
    return columns


# ----------------------------------------------------------------------------- planning
def plan_channel_jobs(
    raw_dir: Path,
    lesions_dir: Path,
    seg_dir: Path | None,
    chosen: Sequence[str],
    spec: ChannelSpec,
    report: BatchReport,
) -> list:
    """One job per participant (and session): the reference channel's lesion map (and
    segmentation), and every channel's file; a participant missing one fails alone."""
    from metcli.io.bids import Acquisition
    from metcli.io.channels import channel_files, channel_path, parse_channel
    from metcli.lesions.maps import LESION_SUFFIX, find_lesion_maps, lesion_table_path
    from metcli.radiomics.extract_plan import Job

    reference = parse_channel(spec.reference)
    maps = find_lesion_maps(lesions_dir, chosen, [reference.phase])
    _fail_without_maps(chosen, maps, lesions_dir, reference, report)
    jobs = []
    for lesion_map in maps:
        ent = lesion_map.entities
        name = ent.describe()
        paths = {
            c: channel_path(raw_dir, parse_channel(c), ent.sub, ent.ses) for c in spec.channels
        }
        files = {c: channel_files(raw_dir, parse_channel(c), ent.sub, ent.ses) for c in paths}
        missing = [c for c, fs in files.items() if not all(f.is_file() for f in fs)]
        seg = None
        if seg_dir is not None:
            seg = Path(seg_dir) / ent.with_(desc=None, suffix=LESION_SUFFIX).relpath()
        table = lesion_table_path(lesion_map.path)
        problem = None
        if missing:
            first = next(f for f in files[missing[0]] if not f.is_file())
            problem = InputError(
                f"no image of channel(s) {', '.join(missing)} for {name}",
                path=first,
                fix="add it, or leave the channel out of --channels",
            )
        elif not table.is_file():
            problem = InputError(
                "the lesion table beside the lesion map is missing",
                path=table,
                fix="run split-lesions again for this participant",
            )
        elif seg is not None and not seg.is_file():
            problem = InputError(
                "no segmentation of the reference channel",
                path=seg,
                fix="give the folder `metcli segment` (or import-mask) wrote as --seg",
            )
        if problem is not None:
            log.error("%s: %s", name, problem.one_line())
            report.record(name, FAILED, problem.one_line())
            continue
        ref_entities = reference.entities(ent.sub, ent.ses)
        ct = Acquisition(ref_entities, paths[spec.reference], Path(raw_dir))
        jobs.append(
            Job(
                ct=ct,
                lesion_map=lesion_map.path,
                lesion_table=table,
                seg=seg,
                channels=paths,
                inputs_extra=[f for fs in files.values() for f in fs],
            )
        )
    return jobs


def _fail_without_maps(chosen, maps, lesions_dir: Path, reference, report: BatchReport) -> None:
    """Record a chosen participant without a lesion map of the reference channel as failed."""
    found = {m.entities.sub for m in maps}
    for label in chosen:
        if label not in found:
            problem = InputError(
                f"no lesion map of the reference channel {reference.name} "
                "(sub-<id>[_ses-<s>][_ce-<phase>]_desc-lesions_dseg.nii.gz)",
                path=Path(lesions_dir) / f"sub-{label}",
                fix="run split-lesions on this participant's segmentation of that channel, "
                "or leave it out",
            )
            log.error("sub-%s: %s", label, problem.one_line())
            report.record(f"sub-{label}", FAILED, problem.one_line())


# ----------------------------------------------------------------------------- extraction
def align_channel(
    ct,
    reference,
    *,
    spec: ChannelSpec,
    path: Path,
    reference_path: Path,
    mask,
    values=None,
):
    """``values`` (the channel as extracted: ``ct`` normalised on its own grid, or ``ct``)
    on the reference grid, the channel's coverage, and what was done (for the sidecar).
    The registration sees ``ct`` as it is; voxels the channel does not cover get the
    lowest value of ``values`` (background), never NaN."""
    import SimpleITK as sitk

    from metcli.imaging.channels_grid import coverage, resample_to_reference
    from metcli.imaging.registration import register

    transform = None
    record: dict[str, Any] = {"registration": spec.register}
    if spec.register != "none":
        found = register(
            ct,
            reference,
            kind=spec.register,
            mask=mask,
            moving_path=path,
            fixed_path=reference_path,
        )
        transform = found
        record["transform"] = found.as_record()
    source = ct if values is None else values
    lowest = float(np.min(sitk.GetArrayViewFromImage(source)))
    aligned = resample_to_reference(source, reference, transform=transform, default_value=lowest)
    covered = coverage(ct, reference, transform)
    same = (
        ct.GetSize() == reference.GetSize()
        and np.allclose(ct.GetSpacing(), reference.GetSpacing())
        and np.allclose(ct.GetOrigin(), reference.GetOrigin(), atol=1e-3)
        and np.allclose(ct.GetDirection(), reference.GetDirection())
    )
    record["resampled"] = transform is not None or not same
    return aligned, covered, record


def merge_results(
    per_channel: dict[str, list[tuple[int, RegionResult]]], reference: str
) -> list[tuple[int, RegionResult]]:
    """One result per lesion from every channel's: features prefixed by the channel; the
    lesion failed when any channel failed (the message names the channel)."""
    merged = []
    ref = per_channel[reference]
    for index, (lesion_id, ref_result) in enumerate(ref):
        features: dict[str, float | None] = {}
        status, message = STATUS_OK, None
        for channel, results in per_channel.items():
            other_id, result = results[index]
            assert other_id == lesion_id
            features.update({column_prefix(channel) + k: v for k, v in result.features.items()})
            if not result.ok and status == STATUS_OK:
                status = result.status
                message = f"channel {channel}: {result.message}"
        if status != STATUS_OK:
            features = {k: None for k in features}
        merged.append((lesion_id, RegionResult(status, features, ref_result.diagnostics, message)))
    return merged


def liver_features(
    images: dict[str, Any], liver: np.ndarray, params: ExtractionParams, pool, seg_path: Path
) -> dict[str, float | None]:
    """The liver's features in every channel (``liver_<channel>_...``)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from metcli.radiomics.regions import crop_region

    if not liver.any():
        raise InputError(
            "the segmentation has no liver voxels (label 1) for the liver features",
            path=seg_path,
            fix="give the segmentation of this participant, or leave out --liver-features",
        )
    box = ndimage.find_objects(liver.astype(np.uint8))[0]
    one = channel_params(params, shape=False)
    out: dict[str, float | None] = {}
    for channel, image in images.items():
        region = crop_region(
            0, sitk.GetArrayViewFromImage(image), liver[box], box, image, shape2d_axis=None
        )
        (result,) = list(pool.map([(region, one)]))
        if not result.ok:
            raise InputError(
                f"the liver's features of channel {channel} failed ({result.message})",
                path=seg_path,
                fix="check the segmentation's liver, or leave out --liver-features",
            )
        prefix = LIVER_PREFIX + column_prefix(channel)
        out.update({prefix + k: v for k, v in result.features.items()})
    return out
