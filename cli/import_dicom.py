"""``metcli import-dicom``: one CT or MR series from a DICOM folder into the raw dataset."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import common_options, overwrite_option, path_arg, run_command


@click.command("import-dicom")
@path_arg("dicom_dir", exists=True, file_okay=False)
@click.argument("raw_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--participant-label",
    "participant_label",
    required=True,
    metavar="LABEL",
    help="Label of the new participant (letters and digits; with or without 'sub-').",
)
@click.option(
    "--session",
    metavar="LABEL",
    default=None,
    help="Session label (adds ses-LABEL to the path and name).",
)
@click.option(
    "--phase",
    metavar="PHASE",
    default=None,
    help="Contrast phase (ce- entity) of a CT or T1w series: native, arterial, portal, "
    "delayed, or another label. Default: none in the file name.",
)
@click.option(
    "--series-uid",
    metavar="UID",
    default=None,
    help="SeriesInstanceUID of the series to import. Default: the largest axial CT "
    "series, else the MR series of --channel (the series are listed with -v).",
)
@click.option(
    "--series-description",
    metavar="TEXT",
    default=None,
    help="Choose the series by its SeriesDescription: a case-insensitive substring or "
    "regular expression (e.g. 'haste', 't1.*vibe.*art').",
)
@click.option(
    "--channel",
    metavar="NAME",
    default=None,
    help="MR channel of the series (T2w, T1w, T1w-<phase>, DWI, ADC): the series of that "
    "channel is imported under its BIDS name. Default: inferred from the series "
    "(description, sequence, b-values); an MR series whose channel is unclear is refused.",
)
@click.option(
    "--primary",
    metavar="LABEL",
    default=None,
    help="The participant's label for participants.tsv (column 'primary', e.g. colorectal).",
)
@overwrite_option
@common_options
@run_command
def command(
    dicom_dir: Path,
    raw_dir: Path,
    participant_label: str,
    session: str | None,
    phase: str | None,
    series_uid: str | None,
    series_description: str | None,
    channel: str | None,
    primary: str | None,
    overwrite: bool,
) -> None:
    """Convert one CT or MR series in DICOM_DIR to NIfTI in the raw dataset RAW_DIR.

    Finds the series in DICOM_DIR and below (files that are not DICOM are skipped),
    sorts the slices by position, checks that they form one evenly spaced stack,
    and writes a CT (HU) as RAW_DIR/sub-LABEL/[ses-S/]anat/sub-LABEL[_ses-S][_ce-PHASE]_ct.nii.gz,
    an MR series under its channel's BIDS name (anat/..._T2w.nii.gz, anat/..._T1w.nii.gz,
    dwi/..._dwi.nii.gz with .bval and .bvec, dwi/..._ADC.nii.gz), with a JSON sidecar
    (non-identifying acquisition metadata and provenance). The participant is added to
    RAW_DIR/participants.tsv. Prints the image's path.
    """
    from metcli.imaging.dicom.import_dicom import import_dicom

    out = import_dicom(
        dicom_dir,
        raw_dir,
        participant=participant_label,
        session=session,
        phase=phase,
        series_uid=series_uid,
        primary=primary,
        overwrite=overwrite,
        channel=channel,
        series_description=series_description,
    )
    click.echo(str(out))
