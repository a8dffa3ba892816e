"""``metcli train-radiomics``: leakage-safe radiomics classifiers, exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (
    DynamicHelpOption,
    common_options,
    overwrite_option,
    progress_bar,
    run_command,
    seed_option,
    training_label_options,
)


def classifiers_help() -> str:
    """The help of --classifiers: the registered classifiers (read when the help is shown)."""
    from metcli.radiomics.classifiers import help_text

    return help_text()


@click.command("train-radiomics")
@click.argument("features", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@training_label_options
@click.option(
    "--classifiers",
    cls=DynamicHelpOption,
    help_from=classifiers_help,
    default="all",
    show_default=True,
)
@click.option(
    "--sampler",
    "samplers",
    default="smote,undersample",
    show_default=True,
    help="smote, undersample and/or none (class weights), comma-separated; one "
    "model per classifier and sampler.",
)
@click.option(
    "--patient-weights",
    is_flag=True,
    help="With --sampler none: weight each lesion by 1/(lesions of its patient), so "
    "that every patient counts equally.",
)
@click.option(
    "--pcc-threshold",
    type=float,
    default=0.6,
    show_default=True,
    help="Drop features until no pair has |Pearson r| above this.",
)
@click.option(
    "--max-features",
    type=int,
    default=10,
    show_default=True,
    help="Keep at most this many features with a positive permutation importance.",
)
@click.option(
    "--protocol",
    type=click.Choice(["nested-cv", "holdout"]),
    default="nested-cv",
    show_default=True,
    help="nested-cv: repeated nested grouped CV on all patients; holdout: also a "
    "patient-level test set (--test-patients or --split).",
)
@click.option(
    "--test-patients",
    type=int,
    default=None,
    help="Holdout: patients in the test set, stratified by class [default: 8].",
)
@click.option(
    "--split",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Holdout: a split file (participant_id, set, fold).",
)
@click.option(
    "--hierarchy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML/JSON file of label groups (groups: {metastasis: [colorectal, "
    "pancreatic], hcc: [hcc]}): train hierarchical models, step 1 on the groups "
    "and step 2 on the labels of each group; P(label) = P(group) x "
    "P(label | group).",
)
@click.option("--cv-folds", type=int, default=5, show_default=True, help="Outer CV folds.")
@click.option(
    "--cv-repeats",
    type=int,
    default=2,
    show_default=True,
    help="Repeats of the outer CV (other shuffles of the patients).",
)
@click.option(
    "--inner-folds",
    type=int,
    default=3,
    show_default=True,
    help="Folds of the inner (hyper-parameter) CV.",
)
@click.option(
    "--group-by",
    type=click.Choice(["participant", "site"]),
    default="participant",
    show_default=True,
    help="What a CV fold holds out: whole patients, or whole sites (the site column of --labels).",
)
@click.option(
    "--search",
    type=click.Choice(["grid", "random"]),
    default="grid",
    show_default=True,
    help="Hyper-parameter search.",
)
@click.option(
    "--search-iterations",
    type=int,
    default=10,
    show_default=True,
    help="Candidates of --search random.",
)
@click.option(
    "--threshold",
    type=click.Choice(["youden", "f1"]),
    default="youden",
    show_default=True,
    help="How the decision threshold is chosen (on out-of-fold predictions).",
)
@click.option(
    "--threshold-level",
    type=click.Choice(["patient", "lesion"]),
    default="patient",
    show_default=True,
    help="Predictions the threshold is chosen on.",
)
@click.option(
    "--decision",
    type=click.Choice(["argmax", "best-f1"]),
    default="argmax",
    show_default=True,
    help="Three classes or more: the predicted class is the most probable one (argmax) or "
    "follows per-class cut-offs chosen by best F1 on out-of-fold predictions (best-f1); "
    "the cut-offs are recorded in model.json either way.",
)
@click.option(
    "--covariates",
    default="",
    help="Clinical columns of --labels to add as inputs (for example age,sex).",
)
@click.option("--phase", default=None, help="Contrast phase to use when the features hold several.")
@click.option("--session", default=None, help="Session to use when participants have several.")
@click.option(
    "--importance-trees",
    type=int,
    default=100,
    show_default=True,
    help="Trees of the random forest that ranks the features.",
)
@click.option(
    "--importance-repeats",
    type=int,
    default=5,
    show_default=True,
    help="Shuffles per feature of the permutation importance.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes that share the outer CV folds (and the final models' "
    "searches); results do not change.",
)
@seed_option()
@overwrite_option
@common_options
@run_command
def command(features, out_dir, labels, split, hierarchy, jobs, overwrite, **options):
    """Train the study's radiomics classifiers without leaking patients between folds.

    FEATURES is the folder `metcli extract` wrote (its features.tsv) or a
    features table. Every lesion inherits its patient's label from --labels.
    Correlation filter, importance selection, sampler, scaler and
    hyper-parameter search are fitted inside grouped training folds only; the
    model and its threshold are chosen on out-of-fold predictions. OUT_DIR
    gets one folder per classifier and sampler (model.onnx, model.json),
    results.tsv, selected_features.tsv, split.tsv, oof_predictions.tsv and,
    with a test set, predictions.tsv. Prints the chosen model's folder.
    With --hierarchy each model folder chains step1/ and step2-<group>/.
    """
    from metcli.radiomics.train_radiomics import train_radiomics

    with progress_bar("train-radiomics") as progress:
        result = train_radiomics(
            features,
            out_dir,
            labels=labels,
            split=split,
            hierarchy=hierarchy,
            overwrite=overwrite,
            jobs=jobs,
            progress=progress,
            **options,
        )
    ctx = click.get_current_context()
    if result.excluded and not (ctx.obj and ctx.obj.get("quiet")):
        click.echo(
            "left out (no label or covariate): "
            + ", ".join(f"{p} ({why})" for p, why in sorted(result.excluded.items())),
            err=True,
        )
    if result.skipped and not (ctx.obj and ctx.obj.get("quiet")):
        click.echo(
            "outputs are current (same inputs and settings); nothing redone "
            "(--overwrite redoes them)",
            err=True,
        )
    if result.selected:
        click.echo(str(Path(out_dir) / result.selected))
