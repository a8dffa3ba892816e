"""One CT of ``metcli extract``: every kept lesion of its lesion map, extracted.

:func:`extract_acquisition` reads the CT once, checks that the lesion map (and
the segmentation, for the peritumoral ring) lie on its grid and that the map
and its table describe the same lesions, then cuts each lesion out
(:func:`metcli.radiomics.regions.crop_region`) and extracts it in the pool's
processes. :mod:`metcli.radiomics.extract` runs it for every CT of a dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from metcli.core.errors import ImageError, InputError, UsageError
from metcli.lesions.maps import kept_lesion_ids
from metcli.radiomics.columns import RegionResult
from metcli.radiomics.features import prepare_image, shape2d_axis
from metcli.radiomics.params import ExtractionParams
from metcli.radiomics.regions import LIVER_LABEL, Region, crop_region, expand_box, margin_voxels
from metcli.radiomics.workers import LesionPool


def _read_label_image(path: Path, what: str):
    from metcli.io.files import read_image

    image = read_image(path, what=what)
    import SimpleITK as sitk

    if sitk.GetArrayViewFromImage(image).dtype.kind not in "iub":
        raise ImageError(
            f"the {what} has voxels of type {image.GetPixelIDTypeAsString()}; "
            "a label image of whole numbers is needed",
            path=path,
            fix="give the file split-lesions (or segment) wrote",
        )
    return image


def extract_acquisition(
    ct_path: Path,
    lesion_map_path: Path,
    lesion_table_path: Path,
    params: ExtractionParams,
    *,
    seg_path: Path | None = None,
    peritumoral_mm: float | None = None,
    pool: LesionPool | None = None,
) -> list[tuple[int, RegionResult]]:
    """``(lesion id, result)`` for every kept lesion of one CT, in id order.

    The CT is read once; each lesion is cropped from it and extracted (in the
    pool's processes). Raises :class:`InputError`/:class:`GeometryError` for
    inputs that do not belong together; a lesion pyradiomics refuses is a
    failed result, not an error.
    """
    import SimpleITK as sitk

    from metcli.io.files import read_image

    ids = kept_lesion_ids(lesion_table_path)
    ct = read_image(ct_path, what="CT")
    # the arrays are views: the images must stay alive while they are used
    lesion_map, seg = _label_images(
        ct, ct_path, lesion_map_path, seg_path=seg_path, peritumoral_mm=peritumoral_mm
    )
    map_array = sitk.GetArrayViewFromImage(lesion_map)
    seg_array = None if seg is None else sitk.GetArrayViewFromImage(seg)
    boxes = _lesion_boxes(map_array, ids, lesion_map_path, lesion_table_path)
    image = prepare_image(ct, params)
    regions = _regions(
        ids,
        boxes,
        map_array,
        seg_array,
        image,
        sitk.GetArrayViewFromImage(image),
        params,
        margin=margin_voxels(params, ct.GetSpacing(), peritumoral_mm),
        axis=shape2d_axis(ct, params),
        peritumoral_mm=peritumoral_mm,
    )
    pool = pool if pool is not None else LesionPool(1)
    return list(zip(ids, pool.map(regions)))


def _label_images(
    ct, ct_path: Path, lesion_map_path: Path, *, seg_path: Path | None, peritumoral_mm
):
    """The lesion map and (for the ring; else None) the segmentation, on the CT's grid."""
    import SimpleITK as sitk

    from metcli.imaging.geometry import to_reference_grid

    lesion_map = to_reference_grid(
        _read_label_image(lesion_map_path, "lesion map"),
        ct,
        image_path=lesion_map_path,
        reference_path=ct_path,
    )
    seg = None
    if peritumoral_mm is not None:
        if seg_path is None:
            raise UsageError(
                "the peritumoral ring needs the segmentation (--seg)",
                fix="give --seg SEG_DIR (segment's output), or leave out --peritumoral-mm",
            )
        seg = to_reference_grid(
            _read_label_image(seg_path, "segmentation"),
            ct,
            image_path=seg_path,
            reference_path=ct_path,
        )
    map_array = sitk.GetArrayViewFromImage(lesion_map)
    if map_array.dtype.kind == "i" and map_array.size and map_array.min() < 0:
        raise ImageError(
            "the lesion map holds negative values",
            path=lesion_map_path,
            fix="give the lesion map split-lesions wrote",
        )
    return lesion_map, seg


def _lesion_boxes(
    map_array: np.ndarray, ids: list[int], lesion_map_path: Path, lesion_table_path: Path
) -> list:
    """Each label's bounding box (``ndimage.find_objects``), once the map's labels are
    checked to be the table's kept ids."""
    from scipy import ndimage

    boxes = ndimage.find_objects(np.asarray(map_array))
    in_map = [i + 1 for i, box in enumerate(boxes) if box is not None]
    if sorted(in_map) != ids:
        only_map = sorted(set(in_map) - set(ids))
        only_table = sorted(set(ids) - set(in_map))
        detail = []
        if only_map:
            detail.append(f"ids {only_map[:5]} are in the map but not kept in the table")
        if only_table:
            detail.append(f"ids {only_table[:5]} are kept in the table but not in the map")
        raise InputError(
            f"{lesion_map_path} and {lesion_table_path} do not describe the same "
            f"lesions: {'; '.join(detail)}",
            fix="give the map and table split-lesions wrote together (run it "
            "again with --overwrite)",
        )
    return boxes


def _regions(
    ids: list[int],
    boxes: list,
    map_array: np.ndarray,
    seg_array: np.ndarray | None,
    image,
    image_array: np.ndarray,
    params: ExtractionParams,
    *,
    margin: np.ndarray,
    axis: int | None,
    peritumoral_mm: float | None,
) -> Iterator[tuple[Region, ExtractionParams]]:
    """Each lesion's crop (with its margin and, for the ring, the liver), lazily, in id order."""
    for lesion_id in ids:
        box = expand_box(boxes[lesion_id - 1], margin, map_array.shape)
        liver = None if seg_array is None else np.asarray(seg_array[box] == LIVER_LABEL)
        yield (
            crop_region(
                lesion_id,
                image_array,
                map_array[box] == lesion_id,
                box,
                image,
                shape2d_axis=axis,
                liver=liver,
                peritumoral_mm=peritumoral_mm,
            ),
            params,
        )


def extract_channels_acquisition(
    job, params: ExtractionParams, spec, pool: LesionPool | None = None
) -> tuple[list[tuple[int, RegionResult]], dict]:
    """``(lesion id, result)`` for every kept lesion of one participant's channels, and
    the record of how each channel was aligned (:mod:`metcli.radiomics.channels`).

    Raises :class:`~metcli.core.errors.GeometryError` when a channel does not cover a
    lesion (naming both files).
    """
    import SimpleITK as sitk

    from metcli.imaging.channel_images import read_channel
    from metcli.imaging.channels_grid import check_covers
    from metcli.io.channels import parse_channel
    from metcli.radiomics.channels import (
        align_channel,
        channel_kind,
        channel_params,
        liver_features,
        merge_results,
    )

    pool = pool if pool is not None else LesionPool(1)
    ent = job.entities

    def read(channel: str):
        return read_channel(job.ct.root, parse_channel(channel), ent.sub, ent.ses)

    reference_path = job.channels[spec.reference]
    reference = read(spec.reference)
    lesion_map, liver = _reference_labels(job, reference, reference_path)
    map_array = sitk.GetArrayViewFromImage(lesion_map)
    ids = kept_lesion_ids(job.lesion_table)
    boxes = _lesion_boxes(map_array, ids, job.lesion_map, job.lesion_table)
    images, records, per_channel = {}, {}, {}
    for channel in spec.channels:
        path = job.channels[channel]
        one = channel_params(params, shape=channel == spec.reference, kind=channel_kind(channel))
        if channel == spec.reference:
            prepared = prepare_image(reference, one)
            records[channel] = {"registration": "reference"}
        else:
            raw = read(channel)
            prepared, covered, records[channel] = align_channel(
                raw,
                reference,
                spec=spec,
                path=path,
                reference_path=reference_path,
                mask=None,  # the whole image: a liver-only metric misaligned synth's phases
                values=prepare_image(raw, one),  # normalised on its own grid (MR)
            )
            check_covers(covered, map_array, ids, channel_path=path, reference_path=job.lesion_map)
        images[channel] = prepared
        regions = _regions(
            ids,
            boxes,
            map_array,
            None,
            prepared,
            sitk.GetArrayViewFromImage(prepared),
            one,
            margin=margin_voxels(one, reference.GetSpacing(), None),
            axis=shape2d_axis(reference, one),
            peritumoral_mm=None,
        )
        per_channel[channel] = list(zip(ids, pool.map(regions)))
    merged = merge_results(per_channel, spec.reference)
    if spec.liver:
        values = liver_features(images, liver, params, pool, job.seg)
        for _id, result in merged:
            if result.ok:
                result.features.update(values)
            else:
                result.features.update({k: None for k in values})
    return merged, records


def _reference_labels(job, reference, reference_path: Path):
    """The lesion map on the reference channel's grid, and the liver of the segmentation
    (None without one) as a boolean array on it."""
    import SimpleITK as sitk

    from metcli.imaging.geometry import to_reference_grid

    lesion_map, _ = _label_images(
        reference, reference_path, job.lesion_map, seg_path=None, peritumoral_mm=None
    )
    if job.seg is None:
        return lesion_map, None
    seg = _read_label_image(job.seg, "segmentation")
    seg = to_reference_grid(seg, reference, image_path=job.seg, reference_path=reference_path)
    return lesion_map, sitk.GetArrayFromImage(seg) == LIVER_LABEL
