"""``metcli evaluate-seg``: agreement of segmentations with reference masks."""

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
    seed_option,
)


def _dice_edges(_ctx, _param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of numbers (for example 0.5,0.7,0.9)"
        ) from None


@click.command(
    "evaluate-seg",
    short_help="Dice, detection by lesion size and classification agreement of "
    "segmentations against reference masks.",
)
@click.argument("seg_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("reference_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--lesions",
    "lesions_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="split-lesions' output for SEG_DIR (lesion-wise detection).",
)
@click.option(
    "--reference-lesions",
    "reference_lesions_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="split-lesions' output for REFERENCE_DIR.",
)
@click.option(
    "--predictions",
    type=click.Path(exists=True, path_type=Path),
    help="Lesion-level predictions.tsv made from the --lesions maps.",
)
@click.option(
    "--reference-predictions",
    type=click.Path(exists=True, path_type=Path),
    help="Lesion-level predictions.tsv made from the --reference-lesions maps.",
)
@click.option(
    "--model",
    default=None,
    metavar="NAME",
    help="Model of the predictions to compare (when a table holds several).",
)
@click.option(
    "--dice-bands",
    "dice_edges",
    default=None,
    callback=_dice_edges,
    metavar="E1,E2,...",
    help="Inner edges of the Dice bands of the agreement table. [default: 0.5,0.7,0.9]",
)
@click.option(
    "--bootstrap",
    "n_bootstrap",
    type=click.IntRange(min=100),
    default=2000,
    show_default=True,
    help="Patient-bootstrap resamples of the intervals.",
)
@seed_option()
@participant_options
@overwrite_option
@common_options
@run_command
def command(seg_dir, reference_dir, out_dir, participant_label, level, **options):
    """Compare the segmentations in SEG_DIR with the reference ones in REFERENCE_DIR.

    Both folders hold sub-<id>/[ses-<s>/]anat/..._dseg.nii.gz (0 background, 1 liver,
    2 lesion), paired by participant, session and phase; the two masks of a pair must
    lie on the same physical grid. Per acquisition OUT_DIR gets
    ..._desc-overlap_metrics.tsv (Dice, Jaccard, precision, recall, volumes of liver,
    lesion and both) and, with --lesions and --reference-lesions,
    ..._desc-detection_metrics.tsv (every reference lesion found or missed, every false
    positive). The group level writes overlap.tsv (its sidecar holds the mean per patient
    with a patient-bootstrap 95% CI), detection.tsv, detection_summary.tsv (by size band:
    under 10 mm, 10-20 mm, over 20 mm) and, with --predictions and
    --reference-predictions, classification_agreement.tsv (by Dice band). A region absent
    from both masks has no Dice (n/a), not 1.
    """
    from metcli.evaluation.evaluate_seg import evaluate_seg
    from metcli.io.bids import resolve_levels

    labels = list(participant_label) or None
    do_participants, do_group = resolve_levels(level, labels)
    with progress_bar("evaluate-seg") as progress:
        result = evaluate_seg(
            seg_dir,
            reference_dir,
            out_dir,
            participants=labels,
            level=level,
            progress=progress,
            **options,
        )
    if do_group and result.overlap_summary:
        _print_summary(result)
    if do_participants:
        finish(result.report, what="acquisitions")


def _print_summary(result) -> None:
    """The group-level figures on stdout: one line per measure and group."""
    from metcli.io.files import format_value

    click.echo("measure\tgroup\tn\testimate\tci_lower\tci_upper")
    lines = [
        (r["metric"], r["label"], r["n_participants"], r["mean"], r["ci_lower"], r["ci_upper"])
        for r in result.overlap_summary
        if r["metric"] in ("dice", "dice_global")
    ]
    lines += [
        (
            "detection_rate",
            r["size_band"],
            r["n_reference_lesions"],
            r["detection_rate"],
            r["ci_lower"],
            r["ci_upper"],
        )
        for r in result.detection_summary
    ]
    lines += [
        (
            "false_positives_per_scan",
            r["size_band"],
            r["n_scans"],
            r["false_positives_per_scan"],
            None,
            None,
        )
        for r in result.detection_summary
        if r["size_band"] == "all"
    ]
    lines += [
        (
            "class_agreement",
            r["dice_band"],
            r["n_lesions"],
            r["agreement_rate"],
            r["ci_lower"],
            r["ci_upper"],
        )
        for r in result.agreement
    ]
    for line in lines:
        click.echo("\t".join(format_value(v) for v in line))
