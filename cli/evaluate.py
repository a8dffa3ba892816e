"""``metcli evaluate``: metrics with confidence intervals, model comparisons and plots."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import common_options, overwrite_option, run_command, seed_option


@click.command("evaluate", short_help="Metrics with 95% CIs, model comparisons and plots.")
@click.argument(
    "predictions", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--labels",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="participants.tsv with the true labels (or the folder that holds it).",
)
@click.option(
    "--label-column",
    default="primary",
    show_default=True,
    help="Column of participants.tsv that holds the label.",
)
@click.option(
    "--level",
    type=click.Choice(["patient", "lesion", "both"]),
    default="both",
    show_default=True,
    help="Unit of the figures; patient level comes first.",
)
@click.option(
    "--positive-class",
    default=None,
    metavar="CLASS",
    help="Positive class of binary models (default: the predictions' sidecar, else "
    "the second class).",
)
@click.option(
    "--bootstrap",
    "n_bootstrap",
    type=click.IntRange(min=100),
    default=2000,
    show_default=True,
    help="Patient-bootstrap resamples.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Test the models against each other (paired DeLong and McNemar at patient "
    "level, patient bootstrap at lesion level) and write a comparison table.",
)
@click.option(
    "--set",
    "eval_set",
    type=click.Choice(["train", "val", "test"]),
    default="test",
    show_default=True,
    help="Which set of the predictions to evaluate.",
)
@click.option("--no-plots", is_flag=True, help="Write the metrics only, no figures.")
@click.option(
    "--raw",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Raw dataset (CTs) of the evaluated patients: with --lesions, the report "
    "shows their lesion masks on the CT.",
)
@click.option(
    "--lesions",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="split-lesions' output (lesion maps) the predictions were made from.",
)
@click.option(
    "--overlay-lesions",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Most lesions shown on CT per patient (with --raw and --lesions).",
)
@click.option(
    "--readers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Reader study TSV (participant_id, reader, call, optional assisted yes/no): "
    "readers' sensitivity and specificity, their points on the patient ROC figure and "
    "McNemar's test against each model (readers.tsv).",
)
@click.option(
    "--table1-columns",
    default=None,
    metavar="COL[,COL...]",
    help="Columns of participants.tsv in Table 1 (table1.tsv) by true class "
    "[default: age, sex and site where present; 'none': no Table 1].",
)
@click.option(
    "--collapse",
    multiple=True,
    metavar="NAME=CLASS[,CLASS...]",
    help="Sum the probabilities of these classes into one class NAME before scoring, "
    "e.g. malignant=HCC,metastasis; the other classes form one more class (its own "
    "name when one is left, else 'other'); repeatable. Two classes: binary with NAME "
    "positive.",
)
@click.option(
    "--cutoffs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON {class: cut-off} for multi-class models (default: the predictions' "
    "sidecar's): figures at these cut-offs and at argmax (cutoff_metrics.tsv).",
)
@seed_option()
@overwrite_option
@common_options
@run_command
def command(
    predictions,
    out_dir,
    labels,
    label_column,
    level,
    positive_class,
    n_bootstrap,
    compare,
    eval_set,
    no_plots,
    raw,
    lesions,
    overlay_lesions,
    cutoffs,
    readers,
    table1_columns,
    collapse,
    seed,
    overwrite,
):
    """Evaluate PREDICTIONS (predictions.tsv files, or folders holding them) against the
    labels in participants.tsv; write metrics.tsv, metrics.json and plots to OUT_DIR.

    The patient is the unit of inference. Patient level: AUC with DeLong's and a
    bootstrap 95% CI, sensitivity and specificity with Clopper-Pearson CIs, the others
    with patient-bootstrap CIs. Lesion level: every CI resamples patients (cluster
    bootstrap) and the AUC also has Obuchowski's clustered variance; lesions are never
    treated as independent. When a model has only lesion rows, a patient's
    probabilities are the mean of its lesions' (reported as derived). With --raw and
    --lesions, report.html also shows every evaluated patient's lesion masks on the CT
    (an axial slice through each lesion's centroid, abdominal window W330/L10).
    Table 1 (table1.tsv) describes the evaluated patients by class; --readers adds
    readers' operating points and McNemar's tests; --collapse scores a three-class model
    as binary (docs/evaluate.md).
    """
    from metcli.evaluation.evaluate import evaluate
    from metcli.io.files import format_value

    result = evaluate(
        predictions,
        out_dir,
        labels=labels,
        label_column=label_column,
        level=level,
        positive_class=positive_class,
        n_bootstrap=n_bootstrap,
        seed=seed,
        compare=compare,
        eval_set=eval_set,
        overwrite=overwrite,
        draw_plots=not no_plots,
        raw=raw,
        lesions=lesions,
        overlay_lesions=overlay_lesions,
        cutoffs=cutoffs,
        readers=readers,
        table1_columns=None
        if table1_columns is None
        else [c.strip() for c in table1_columns.split(",") if c.strip() not in ("", "none")],
        collapse=list(collapse),
    )
    if result.skipped:
        click.echo(f"evaluate: {out_dir} is up to date (use --overwrite to redo)", err=True)
        return
    click.echo("model\tlevel\tauc\taccuracy")
    for row in result.summary:
        click.echo(
            "\t".join(format_value(row.get(k)) for k in ("model", "level", "auc", "accuracy"))
        )
