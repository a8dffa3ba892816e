"""``metcli synth OUT_DIR``: a synthetic cohort to try metcli on (library: metcli.synth.synth)."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (
    common_options,
    finish,
    overwrite_option,
    progress_bar,
    run_command,
    seed_option,
)

# Defaults live in metcli.synth.phantom.SynthParams; the help texts repeat them (a test checks that
# they agree) so that `metcli --help` needs no numpy.
_KNOB_OPTIONS = (
    (
        "--lesions-colorectal",
        "lesions_colorectal",
        "N",
        "Mean lesions per colorectal patient (1 + Poisson(N - 1)). [default: 2.5]",
    ),
    (
        "--lesions-pancreatic",
        "lesions_pancreatic",
        "N",
        "Mean lesions per pancreatic patient. [default: 5.0]",
    ),
    (
        "--diameter-colorectal",
        "diameter_colorectal",
        "MM",
        "Mean lesion diameter of colorectal patients (log-normal). [default: 16.0]",
    ),
    (
        "--diameter-pancreatic",
        "diameter_pancreatic",
        "MM",
        "Mean lesion diameter of pancreatic patients. [default: 10.0]",
    ),
    (
        "--texture-signal",
        "texture_signal",
        "HU",
        "Lesion interior difference: colorectal lesions HU/2 brighter and with a texture SD HU/4 "
        "larger than average, pancreatic ones as much darker and smoother; 0 removes it. "
        "[default: 6.0]",
    ),
    (
        "--patient-sd",
        "patient_sd",
        "HU",
        "SD of the per-patient offset shared by all lesions of a patient. [default: 6.0]",
    ),
    ("--noise-sd", "noise_sd", "HU", "SD of the image noise. [default: 12.0]"),
)


def _knob_options(fn):
    for flag, name, metavar, text in reversed(_KNOB_OPTIONS):
        fn = click.option(flag, name, type=float, default=None, metavar=metavar, help=text)(fn)
    return fn


@click.command(
    name="synth", short_help="A synthetic cohort: CT phantoms, true masks, lesion tables."
)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--subjects",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Participants, split 47:31 colorectal:pancreatic as in the 2023 study "
    "[default: 12; or give --colorectal and --pancreatic].",
)
@click.option(
    "--colorectal",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Colorectal participants (with --pancreatic, instead of --subjects).",
)
@click.option(
    "--pancreatic",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Pancreatic participants (with --colorectal).",
)
@seed_option()
@click.option(
    "--size",
    type=click.Choice(["small", "paper"]),
    default="small",
    show_default=True,
    help="small: 96x96x48 voxels of 2x2x2.5 mm (fast); paper: 512x512x140 voxels of "
    "0.78x0.78x1.5 mm.",
)
@click.option(
    "--dicom",
    is_flag=True,
    help="Also write each CT as a DICOM series to OUT_DIR/sourcedata/dicom/sub-<id>/.",
)
@click.option(
    "--truth-lesions/--no-truth-lesions",
    default=True,
    show_default=True,
    help="Run split-lesions on the true masks (OUT_DIR/derivatives/truth-lesions).",
)
@_knob_options
@click.option(
    "--null",
    is_flag=True,
    help="No class difference: both classes get the average lesion count and size, "
    "and no texture signal (labels independent of the images).",
)
@overwrite_option
@common_options
@run_command
def command(
    out_dir: Path,
    subjects,
    colorectal,
    pancreatic,
    seed,
    size,
    dicom,
    truth_lesions,
    null,
    overwrite,
    **knobs,
):
    """Write a synthetic cohort of portal-venous CT phantoms to OUT_DIR.

    OUT_DIR/rawdata holds the CTs (int16 HU) and participants.tsv (primary: colorectal or
    pancreatic); OUT_DIR/derivatives/truth the true masks (0 background, 1 liver, 2 lesion)
    and the table of placed lesions (lesions.tsv); OUT_DIR/derivatives/truth-lesions the
    split-lesions output on them. The same seed gives the same files; re-running skips
    finished participants. See docs/synth.md for the phantom model.
    """
    from metcli.core.batch import BatchReport
    from metcli.core.errors import ParticipantsFailed, UsageError
    from metcli.synth.synth import class_counts, synth_cohort

    if subjects is not None and (colorectal is not None or pancreatic is not None):
        raise UsageError(
            "give either --subjects or --colorectal and --pancreatic, not both",
            fix="--subjects N for the study's ratio, or the two counts",
        )
    if (colorectal is None) != (pancreatic is None):
        raise UsageError(
            "--colorectal and --pancreatic go together",
            fix="give both (0 is allowed), or --subjects N for the study's ratio",
        )
    if colorectal is None:
        colorectal, pancreatic = class_counts(12 if subjects is None else subjects)
    report = BatchReport()
    with progress_bar("synth") as advance:
        try:
            synth_cohort(
                out_dir,
                n_colorectal=colorectal,
                n_pancreatic=pancreatic,
                seed=seed,
                size=size,
                dicom=dicom,
                truth_lesions=truth_lesions,
                null=null,
                overwrite=overwrite,
                progress=advance,
                report=report,
                **knobs,
            )
        except ParticipantsFailed:
            if report.failed:  # participants of the cohort failed: print their table
                finish(report)
            raise  # split-lesions failed on the truth
    finish(report)
    click.echo(str(out_dir))
