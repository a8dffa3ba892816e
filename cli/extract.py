"""``metcli extract``: per-lesion radiomics (pyradiomics), one table per CT, a cohort table."""

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


@click.command("extract")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("lesions_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--params",
    "params",
    default="study",
    show_default=True,
    metavar="FILE|PRESET",
    help="pyradiomics parameter file (YAML/JSON, checked against pyradiomics' schema) "
    "or a preset: study, recommended, ibsi (see docs/extract.md).",
)
@click.option(
    "--seg",
    "seg_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Segmentation folder (_dseg: 1 liver, 2 lesion) for the peritumoral ring, the "
    "liver features and the registration mask (with --channels, the reference channel's).",
)
@click.option(
    "--peritumoral-mm",
    type=float,
    default=None,
    metavar="R",
    help="Also extract a ring of R mm around each lesion, restricted to the liver "
    "of --seg (features prefixed peritumoral_).",
)
@click.option(
    "--phase",
    "phase",
    multiple=True,
    metavar="PHASE",
    help="Extract only this contrast phase (ce- entity; repeatable). Default: all.",
)
@click.option(
    "--channels",
    default=None,
    metavar="C1,C2,...",
    help="Phases to extract together (e.g. native,arterial,portal,delayed): each is "
    "brought onto the reference channel's grid and every lesion gets one row with each "
    "channel's features (<channel>_original_...). Default: one table per phase.",
)
@click.option(
    "--reference",
    default=None,
    metavar="CHANNEL",
    help="With --channels: the channel the lesion maps were made on "
    "[default: portal if listed, else the first].",
)
@click.option(
    "--register",
    type=click.Choice(["none", "rigid", "affine"]),
    default="none",
    show_default=True,
    help="With --channels: align each channel to the reference before resampling "
    "(SimpleITK, Mattes mutual information; the transform is recorded in the sidecar). "
    "none trusts the scanner's positions.",
)
@click.option(
    "--liver-features",
    is_flag=True,
    default=False,
    help="With --channels and --seg: add the liver's features per channel "
    "(liver_<channel>_original_...) to every lesion row.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes that extract lesions in parallel.",
)
@participant_options
@overwrite_option
@common_options
@run_command
def command(
    raw_dir,
    lesions_dir,
    out_dir,
    params,
    seg_dir,
    peritumoral_mm,
    phase,
    channels,
    reference,
    register,
    liver_features,
    jobs,
    participant_label,
    level,
    overwrite,
):
    """Extract radiomics features of every kept lesion with pyradiomics.

    RAW_DIR holds the CTs (sub-<id>/[ses-<s>/]anat/..._ct.nii.gz), LESIONS_DIR
    what split-lesions wrote (..._desc-lesions_dseg.nii.gz and its .tsv). OUT_DIR
    gets one ..._desc-radiomics_features.tsv per CT (one row per kept lesion:
    participant_id, session, phase, lesion_id, status, message, features named
    original_<class>_<feature>, diagnostics) with a JSON sidecar recording the
    resolved pyradiomics parameters and their hash; at the group level
    features.tsv. A lesion pyradiomics cannot extract gets status
    failed:<reason> and n/a values; its participant still succeeds.

    With --channels, the lesion map of the reference channel is used for every
    channel: one table per participant (named after the reference phase), one row
    per lesion with each channel's features; see docs/channels.md.
    """
    from metcli.io.bids import resolve_levels
    from metcli.radiomics.channels import ChannelSpec
    from metcli.radiomics.extract import as_params, check_options, extract

    resolved = as_params(params)  # a bad parameter file stops here, before any work
    spec = ChannelSpec.from_options(channels, reference, register, liver_features)
    check_options(
        jobs=jobs, peritumoral_mm=peritumoral_mm, seg_dir=seg_dir, params=resolved, spec=spec
    )
    labels = list(participant_label) or None
    phases = list(phase) or None
    do_participants, _do_group = resolve_levels(level, labels)
    with progress_bar("extract") as progress:
        report = extract(
            raw_dir,
            lesions_dir,
            out_dir,
            params=resolved,
            seg_dir=seg_dir,
            peritumoral_mm=peritumoral_mm,
            participants=labels,
            phases=phases,
            level=level,
            jobs=jobs,
            overwrite=overwrite,
            progress=progress,
            channels=channels,
            reference=reference,
            register=register,
            liver=liver_features,
        )
    ctx = click.get_current_context()
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    if do_participants and not quiet:
        line = f"lesions: {report.lesions} extracted, {report.lesions_failed} failed"
        if peritumoral_mm is not None:
            line += f", {report.rings_failed} ring(s) failed"
        if report.lesions_failed or report.rings_failed:
            line += " (status failed:<reason> rows have n/a values)"
        click.echo(line, err=True)
    if report.group_table is not None and not quiet:
        click.echo(f"group level: {report.group_table}", err=True)
    if do_participants:
        finish(report, what="CTs")
