"""``metcli predict``: run a metcli model (ONNX + card) on new participants."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (
    common_options,
    finish,
    overwrite_option,
    participant_options,
    run_command,
    threads_option,
)


@click.command("predict")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument(
    "inputs",
    metavar="INPUT...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--participants",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="participants.tsv with the covariates the model uses (age, sex...).",
)
@click.option(
    "--aggregate",
    type=click.Choice(["mean", "max", "vote", "sum", "any"]),
    default="mean",
    show_default=True,
    help="Patient from lesions: mean or maximum of the probabilities, the share of "
    "lesions predicted as each class (vote), or the per-class sums of the "
    "probabilities through a softmax (sum; every agreeing lesion adds "
    "evidence). The card's threshold applies to mean only; vote and sum "
    "predict the larger class. any: one lesion called one of --malignant-classes "
    "makes the patient malignant (its probabilities: that lesion's).",
)
@click.option(
    "--malignant-classes",
    default=None,
    metavar="CLASS,...",
    help="--aggregate any: the classes that make a patient malignant (e.g. hcc,metastasis).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="ONNX Runtime provider: auto (CUDA when available, else the CPU), "
    "cpu, or cuda (an error without a CUDA provider).",
)
@click.option(
    "--session", default=None, help="Session to use when participants have lesions from several."
)
@click.option(
    "--explain",
    is_flag=True,
    default=False,
    help="Image models: also write, per lesion, a PNG of its most probable slice "
    "with the Grad-CAM heat map of the predicted class (needs checkpoint.pt).",
)
@threads_option("the Grad-CAM maps of --explain")
@participant_options
@overwrite_option
@common_options
@run_command
def command(
    model_dir,
    inputs,
    out_dir,
    participants,
    aggregate,
    malignant_classes,
    device,
    session,
    explain,
    threads,
    participant_label,
    level,
    overwrite,
):
    """Predict the class of each lesion and patient with a metcli model.

    MODEL_DIR is a model folder (model.onnx and its card model.json) from
    train-radiomics or train-cnn. For a radiomics model, INPUT is a features
    table or the folder `metcli extract` wrote, made with the same extraction
    settings as the model's training features (checked). For an image model
    (train-cnn), INPUT is RAW_DIR LESIONS_DIR: the CTs and split-lesions'
    folder, preprocessed as the card says (checked). OUT_DIR gets
    sub-<id>/.../..._predictions.tsv per participant and predictions.tsv for
    all, with the card's threshold; --explain adds ..._lesion-<n>_gradcam.png.
    With --participant-label, only those participants' files (the
    participant level); --level group then reads them into predictions.tsv.
    """
    from metcli.prediction.predict import predict

    if aggregate == "any" or malignant_classes:  # one rule text: any:CLASS,... (checked)
        aggregate = f"{aggregate}:{malignant_classes or ''}"
    report = predict(
        model_dir,
        list(inputs),
        out_dir,
        participants=participants,
        aggregate=aggregate,
        device=device,
        session=session,
        explain=explain,
        participant_label=list(participant_label) or None,
        level=level,
        threads=threads,
        overwrite=overwrite,
    )
    group = Path(out_dir) / "predictions.tsv"
    if group in report.outputs:
        click.echo(str(group))
    finish(report)
