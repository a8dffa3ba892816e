"""``metcli train-cnn``: the study's lesion-slice CNN (MONAI), exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (common_options, overwrite_option, progress_bar, run_command,
                                seed_option)


def _window(ctx, param, value):
    try:
        width, level = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTH,LEVEL (for example 330,10)") from None
    return width, level


@click.command("train-cnn")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("lesions_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--labels", type=click.Path(exists=True, path_type=Path), required=True,
              help="participants.tsv with the label column (or the folder holding it).")
@click.option("--label-column", default="primary", show_default=True,
              help="Column of --labels that holds the class of each participant.")
@click.option("--positive-class", default=None,
              help="Positive class of a binary model. Default: the label that sorts last.")
@click.option("--arch", type=click.Choice(["densenet121", "resnet18"]), default="densenet121",
              show_default=True, help="MONAI network (2D, trained from scratch).")
@click.option("--window", default="330,10", show_default=True, callback=_window,
              help="CT window WIDTH,LEVEL in HU, applied first.")
@click.option("--size", type=click.IntRange(min=8), default=224, show_default=True,
              help="Side of the square input image in pixels.")
@click.option("--fov-mm", type=float, default=None,
              help="Fixed field of view in mm centred on the lesion, instead of the tight "
                   "square crop.")
@click.option("--context-mm", type=float, default=0.0, show_default=True,
              help="Keep this margin of tissue around the lesion (0: mask only).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--val-patients", type=click.IntRange(min=1), default=5, show_default=True,
              help="Validation patients (the best epoch is chosen on them).")
@click.option("--test-patients", type=click.IntRange(min=0), default=None,
              help="Test patients, stratified by class [default: 8].")
@click.option("--split", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A split file (participant_id, set, fold) instead.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@seed_option()
@overwrite_option
@common_options
@run_command
def command(raw_dir, lesions_dir, out_dir, labels, label_column, positive_class, arch, window,
            size, fov_mm, context_mm, epochs, batch_size, lr, val_patients, test_patients, split,
            device, seed, overwrite):
    """Train the study's lesion-slice CNN on CTs and split-lesions' lesion maps.

    Every axial slice of every kept lesion is windowed, blackened outside the
    lesion, cropped to a square and resized (docs/train-cnn.md). Patients are
    split into train, val and test; the epoch with the lowest validation loss
    is kept. OUT_DIR gets model/ (model.onnx, model.json, checkpoint.pt),
    split.tsv, training_log.tsv, val_predictions.tsv and predictions.tsv (test
    set), ready for `metcli evaluate`. Prints the model folder.
    """
    from metcli.cnn_training import train_cnn

    with progress_bar(epochs, "train-cnn") as progress:
        result = train_cnn(raw_dir, lesions_dir, out_dir, labels=labels,
                           label_column=label_column, positive_class=positive_class, arch=arch,
                           window=window, size=size, fov_mm=fov_mm, context_mm=context_mm,
                           epochs=epochs, batch_size=batch_size, lr=lr,
                           val_patients=val_patients, test_patients=test_patients, split=split,
                           device=device, seed=seed, overwrite=overwrite, progress=progress)
    ctx = click.get_current_context()
    quiet = ctx.obj and ctx.obj.get("quiet")
    if result.excluded and not quiet:
        click.echo("left out: " + ", ".join(f"{p} ({why})" for p, why in
                                            sorted(result.excluded.items())), err=True)
    if result.skipped and not quiet:
        click.echo("outputs are current (same inputs and settings); nothing redone "
                   "(--overwrite redoes them)", err=True)
    click.echo(str(result.model_dir))
