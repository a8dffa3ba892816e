"""``metcli import-mask``: a manual mask (NIfTI, NRRD, RTSTRUCT, DICOM-SEG) as a dseg."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import common_options, overwrite_option, path_arg, run_command


@click.command("import-mask")
@path_arg("mask")
@path_arg("raw_dir", file_okay=False)
@click.argument("seg_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--participant-label",
    "participant_label",
    required=True,
    metavar="ID",
    help="The participant the mask belongs to (with or without 'sub-').",
)
@click.option(
    "--session",
    default=None,
    metavar="S",
    help="The session of the CT (when the participant has several).",
)
@click.option(
    "--phase",
    default=None,
    metavar="P",
    help="The contrast phase of the CT (ce- entity: native, arterial, portal, "
    "delayed), when the participant has several.",
)
@click.option(
    "--label-map",
    "label_map",
    multiple=True,
    metavar="SPEC",
    help="Which source labels are liver and lesion: SOURCE=liver|lesion pairs, "
    "comma-separated or repeated. Sources are ROI names or numbers (RTSTRUCT), "
    "segment labels or numbers (DICOM-SEG) or voxel values (label images), e.g. "
    "'GTV-1=lesion,Liver=liver' or '5=liver'. Default: a label image of 0/1/2 "
    "as it is; ROI/segment names containing gtv, tumo(u)r, lesion or metasta as "
    "lesion, containing liver as liver.",
)
@click.option(
    "--roi-name",
    "roi_names",
    multiple=True,
    metavar="NAME",
    help="Import only this ROI or segment (repeatable; RTSTRUCT and DICOM-SEG).",
)
@click.option(
    "--fractional-threshold",
    "fractional_threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    metavar="F",
    help="DICOM-SEG of SegmentationType FRACTIONAL: a voxel belongs to a segment when "
    "its fraction (probability or occupancy, 0 to 1) is at least F, in (0, 1]. "
    "Recorded in the sidecar with the SegmentationType; BINARY segments are taken as "
    "they are.",
)
@click.option(
    "--strict",
    is_flag=True,
    default=False,
    help="Refuse a DICOM mask whose FrameOfReferenceUID differs from the CT's (when "
    "import-dicom wrote the CT) and an RTSTRUCT with contours (partly) outside the "
    "CT. Without it, these are warnings, recorded in the sidecar (DicomChecks).",
)
@overwrite_option
@common_options
@run_command
def command(
    mask: Path,
    raw_dir: Path,
    seg_dir: Path,
    participant_label: str,
    session: str | None,
    phase: str | None,
    label_map: tuple[str, ...],
    roi_names: tuple[str, ...],
    fractional_threshold: float,
    strict: bool,
    overwrite: bool,
) -> None:
    """Bring a manual segmentation MASK onto the grid of the participant's CT in RAW_DIR.

    MASK is a NIfTI or NRRD label image, an RTSTRUCT or a DICOM-SEG file (or a
    folder holding one). It is matched to the CT in physical space, never by
    array index and never resampled: a label image on another grid is refused;
    RTSTRUCT contours are filled on the slices they lie in (a voxel belongs to a
    contour when its centre lies inside it; inner contours are holes); FRACTIONAL
    DICOM-SEG segments are cut at --fractional-threshold (default 0.5). Writes
    SEG_DIR/sub-<id>/[ses-<s>/]anat/<name>_dseg.nii.gz (0 background, 1 liver,
    2 lesion; lesion wins where both overlap) with its provenance sidecar, and
    prints its path.

    When import-dicom wrote the CT, a DICOM mask's FrameOfReferenceUID and
    referenced series are compared with the CT's (a mismatch is a warning, an
    error for the frame of reference with --strict); RTSTRUCT contours outside the
    CT are counted. The sidecar records these checks (DicomChecks).
    """
    from metcli.imaging.import_mask import import_mask

    out = import_mask(
        mask,
        raw_dir,
        seg_dir,
        participant=participant_label,
        session=session,
        phase=phase,
        label_map=list(label_map) or None,
        roi_names=list(roi_names) or None,
        overwrite=overwrite,
        fractional_threshold=fractional_threshold,
        strict=strict,
    )
    click.echo(str(out))
