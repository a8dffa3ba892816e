"""``metcli split-lesions``: one id per lesion, the size rule in mm, lesion tables."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (
    common_options,
    finish,
    overwrite_option,
    participant_options,
    progress_bar,
    run_command,
)


@click.command("split-lesions")
@click.argument("seg_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--min-diameter-mm",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Drop lesions whose diameter (see --diameter-rule) is smaller than this.",
)
@click.option(
    "--diameter-rule",
    type=click.Choice(["axial", "3d", "equivalent"]),
    default="axial",
    show_default=True,
    help="Diameter the size rule uses: longest axial, largest 3D (both between voxel "
    "centres) or of the sphere of equal volume.",
)
@click.option(
    "--connectivity",
    type=click.Choice(["6", "18", "26"]),
    default="26",
    show_default=True,
    help="Neighbours that connect lesion voxels: faces (6), +edges (18), +corners (26).",
)
@click.option(
    "--lesion-label",
    type=click.IntRange(1, 65535),
    default=2,
    show_default=True,
    help="Label of lesions in the segmentation.",
)
@click.option(
    "--liver-label",
    type=click.IntRange(1, 65535),
    default=1,
    show_default=True,
    help="Label of the liver in the segmentation (for the tumour burden).",
)
@click.option(
    "--dicom-seg",
    is_flag=True,
    help="Also write ..._desc-lesions_dseg.dcm, a DICOM Segmentation with one segment per "
    "kept lesion (labelled with its name in the lesion table) that refers to the CT's DICOM "
    "series. The CT is found in the raw dataset SEG_DIR was made from and must come from "
    "'metcli import-dicom'.",
)
@participant_options
@overwrite_option
@common_options
@run_command
def command(
    seg_dir,
    out_dir,
    min_diameter_mm,
    diameter_rule,
    connectivity,
    lesion_label,
    liver_label,
    dicom_seg,
    participant_label,
    level,
    overwrite,
):
    """Split lesion masks into single lesions, measure them and drop small ones.

    SEG_DIR holds sub-<id>/[ses-<s>/]anat/..._dseg.nii.gz (0 background, 1 liver,
    2 lesion). OUT_DIR gets, per segmentation, ..._desc-lesions_dseg.nii.gz (kept
    lesions under ids 1..N), its lesion table ..._desc-lesions_dseg.tsv (every
    component: volume, diameters between voxel centres in mm, centroid, bounding
    box, kept, reason) and a JSON sidecar; at the group level lesions.tsv and
    tumour_burden.tsv.
    """
    from metcli.io.bids import resolve_levels
    from metcli.lesions.split_lesions import split_lesions

    labels = list(participant_label) or None
    do_participants, do_group = resolve_levels(level, labels)
    with progress_bar("split-lesions") as progress:
        report = split_lesions(
            seg_dir,
            out_dir,
            participants=labels,
            level=level,
            min_diameter_mm=min_diameter_mm,
            diameter_rule=diameter_rule,
            connectivity=int(connectivity),
            lesion_label=lesion_label,
            liver_label=liver_label,
            overwrite=overwrite,
            progress=progress,
            dicom_seg=dicom_seg,
        )
    ctx = click.get_current_context()
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    group_files = [
        p for p in report.outputs if Path(p).parent == Path(out_dir) and Path(p).suffix == ".tsv"
    ]
    if do_group and group_files and not quiet:
        click.echo("group level: " + ", ".join(str(p) for p in group_files), err=True)
    if do_participants:
        finish(report, what="segmentations")
