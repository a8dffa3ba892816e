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
        "SD of the per-patient offset shared by all lesions of a patient. [default: 6.0] "
        "(almss: 4.0)",
    ),
    ("--noise-sd", "noise_sd", "HU", "SD of the image noise. [default: 12.0]"),
)


def _knob_options(fn):
    for flag, name, metavar, text in reversed(_KNOB_OPTIONS):
        fn = click.option(flag, name, type=float, default=None, metavar=metavar, help=text)(fn)
    return fn


@click.command(
    name="synth", short_help="A synthetic cohort: CT or MR phantoms, true masks, lesion tables."
)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--modality",
    type=click.Choice(["ct", "mr"]),
    default="ct",
    show_default=True,
    help="ct: the CT scenarios (--scenario); mr: non-contrast liver MRI, T2w and DWI (b = 0, "
    "50, 800) on their own grids, benign lesions (haemangioma, cyst, FNH), HCC and "
    "metastases (the non-contrast MRI study; docs/synth.md).",
)
@click.option(
    "--scenario",
    type=click.Choice(["study2023", "almss"]),
    default="study2023",
    show_default=True,
    help="study2023: portal-venous CT, colorectal vs pancreatic (Tharmaseelan et al. 2023); "
    "almss: four phases on their own grids, HCC, ICC and six metastasis origins, with "
    "OUT_DIR/hierarchy.yaml (Xin et al. 2024).",
)
@click.option(
    "--subjects",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Participants, split 47:31 colorectal:pancreatic as in the 2023 study "
    "[default: 12; or give --colorectal and --pancreatic]; almss: split 3:1:7 HCC:ICC:"
    "metastasis, the metastases 2 colorectal to 1 of each other origin [default: 11]; mr: "
    "split 1:1:1 benign:hcc:metastasis [default: 12].",
)
@click.option(
    "--class-counts",
    default=None,
    metavar="CLASS=N,...",
    help="Participants per class instead of --subjects, e.g. hcc=6,icc=4,colorectal=5 "
    "(almss classes: hcc, icc, colorectal, pancreatic, gastric, lung, breast, "
    "neuroendocrine; mr: benign, hcc, metastasis; classes left out get none).",
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
    "0.78x0.78x1.5 mm; almss: a grid per phase; mr: a grid per sequence (docs/synth.md).",
)
@click.option(
    "--dicom",
    is_flag=True,
    help="Also write each CT as a DICOM series to OUT_DIR/sourcedata/dicom/sub-<id>/ "
    "(almss: one series per phase, in sub-<id>/ce-<phase>/; mr: a T2w and a DWI MR series, "
    "in sub-<id>/T2w/ and sub-<id>/dwi/).",
)
@click.option(
    "--truth-lesions/--no-truth-lesions",
    default=True,
    show_default=True,
    help="Run split-lesions on the true masks (OUT_DIR/derivatives/truth-lesions).",
)
@_knob_options
@click.option(
    "--lesion-counts",
    default=None,
    metavar="CLASS=N,...",
    help="almss: mean lesions per patient of some classes, e.g. pancreatic=8,hcc=1 "
    "(defaults in docs/synth.md); mr: of some lesion types (cyst, haemangioma, fnh, hcc, "
    "metastasis).",
)
@click.option(
    "--diameters",
    default=None,
    metavar="CLASS=MM,...",
    help="almss: mean lesion diameter (mm) of some classes, e.g. hcc=25; mr: of some lesion types.",
)
@click.option(
    "--max-lesions",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="almss and mr: most lesions per patient [default: 15].",
)
@click.option(
    "--null",
    is_flag=True,
    help="No class difference: both classes get the average lesion count and size, "
    "and no texture signal (labels independent of the images); almss: every class gets "
    "the average enhancement, counts, sizes, age and sex of all classes; mr: every lesion "
    "type gets the average T2w signal, ADC, count, size, age and sex.",
)
@overwrite_option
@common_options
@run_command
def command(out_dir: Path, scenario, modality, **options):
    """Write a synthetic cohort of CT (or MR) phantoms to OUT_DIR.

    OUT_DIR/rawdata holds the CTs (int16 HU) and participants.tsv (primary: the class);
    OUT_DIR/derivatives/truth the true masks (0 background, 1 liver, 2 lesion) and the
    table of placed lesions (lesions.tsv); OUT_DIR/derivatives/truth-lesions the
    split-lesions output on them. The default scenario writes portal-venous CTs of
    colorectal and pancreatic metastases; --scenario almss four phases per participant
    (the truth on the portal grid) and OUT_DIR/hierarchy.yaml; --modality mr a T2w image
    and a diffusion series per participant (the truth on the T2w grid). The same seed gives
    the same files; re-running skips finished participants. See docs/synth.md for the
    phantom model.
    """
    if modality == "mr":
        if click.get_current_context().get_parameter_source("scenario").name != "DEFAULT":
            from metcli.core.errors import UsageError

            raise UsageError(
                f"--scenario {scenario} is a CT scenario; --modality mr has its own world",
                fix="leave --scenario out with --modality mr (docs/synth.md, the MR world)",
            )
        _mri(out_dir, options)
    elif scenario == "almss":
        _almss(out_dir, options)
    else:
        _study2023(out_dir, options)


#: The options of each scenario alone.
_ALMSS_ONLY = ("lesion_counts", "diameters", "max_lesions")
_STUDY2023_ONLY = ("colorectal", "pancreatic") + tuple(name for _f, name, _m, _t in _KNOB_OPTIONS)
_SHARED_KNOBS = ("noise_sd", "patient_sd")


def _refuse(scenario: str, given: dict) -> None:
    from metcli.core.errors import UsageError

    named = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if named:
        raise UsageError(
            f"{', '.join(named)} do(es) not apply to {scenario}",
            fix="see metcli synth --help and docs/synth.md for the options of each scenario",
        )


def _run(out_dir: Path, synth, **kwargs) -> None:
    from metcli.core.batch import BatchReport
    from metcli.core.errors import ParticipantsFailed

    report = BatchReport()
    with progress_bar("synth") as advance:
        try:
            synth(out_dir, progress=advance, report=report, **kwargs)
        except ParticipantsFailed:
            if report.failed:  # participants of the cohort failed: print their table
                finish(report)
            raise  # split-lesions failed on the truth
    finish(report)
    click.echo(str(out_dir))


def _almss(out_dir: Path, options: dict) -> None:
    from metcli.synth.almss import parse_class_values
    from metcli.synth.almss_cohort import synth_almss_cohort

    _refuse(
        "--scenario almss", {k: options.pop(k) for k in _STUDY2023_ONLY if k not in _SHARED_KNOBS}
    )
    text = options.pop("class_counts")
    counts = None if text is None else parse_class_values(text, "--class-counts", _whole)
    for name in ("lesion_counts", "diameters"):
        text = options.pop(name)
        if text is not None:
            options[name] = parse_class_values(text, f"--{name.replace('_', '-')}")
    _run(out_dir, synth_almss_cohort, class_counts=counts, **options)


def _mri(out_dir: Path, options: dict) -> None:
    from metcli.synth.almss import parse_class_values
    from metcli.synth.mri import LESION_TYPES, MR_CLASSES
    from metcli.synth.mri_cohort import synth_mri_cohort

    _refuse("--modality mr", {k: options.pop(k) for k in _STUDY2023_ONLY})
    text = options.pop("class_counts")
    counts = None
    if text is not None:
        counts = parse_class_values(text, "--class-counts", _whole, keys=MR_CLASSES)
    for name in ("lesion_counts", "diameters"):
        text = options.pop(name)
        if text is not None:
            what = f"--{name.replace('_', '-')}"
            options[name] = parse_class_values(text, what, keys=LESION_TYPES)
    _run(out_dir, synth_mri_cohort, class_counts=counts, **options)


def _whole(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _study2023(out_dir: Path, options: dict) -> None:
    from metcli.core.errors import UsageError
    from metcli.synth.almss import parse_class_values
    from metcli.synth.synth import class_counts as study_counts
    from metcli.synth.synth import synth_cohort

    _refuse("--scenario study2023", {k: options.pop(k) for k in _ALMSS_ONLY})
    subjects, text = options.pop("subjects"), options.pop("class_counts")
    colorectal, pancreatic = options.pop("colorectal"), options.pop("pancreatic")
    if text is not None:
        if subjects is not None or colorectal is not None or pancreatic is not None:
            raise UsageError(
                "give one of --subjects, --class-counts, or --colorectal and --pancreatic",
                fix="--class-counts colorectal=N,pancreatic=M gives both counts",
            )
        keys = ("colorectal", "pancreatic")
        counts = parse_class_values(text, "--class-counts", _whole, keys=keys)
        colorectal, pancreatic = counts.get("colorectal", 0), counts.get("pancreatic", 0)
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
        colorectal, pancreatic = study_counts(12 if subjects is None else subjects)
    _run(out_dir, synth_cohort, n_colorectal=colorectal, n_pancreatic=pancreatic, **options)
