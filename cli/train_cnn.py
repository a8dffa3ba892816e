"""``metcli train-cnn``: the study's lesion-slice CNN (MONAI), exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (
    DynamicHelpOption,
    RegistryChoice,
    common_options,
    overwrite_option,
    progress_bar,
    run_command,
    seed_option,
    threads_option,
    training_label_options,
)


def _names():
    from metcli.cnn.networks import architecture_names

    return architecture_names()


def _help():
    from metcli.cnn.networks import architectures_help

    return "Network, trained from scratch unless --pretrained. " + architectures_help()


def _window(ctx, param, value):
    try:
        width, level = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTH,LEVEL (for example 330,10)") from None
    return width, level


def _recipe_options(fn):
    """Transfer learning and the training recipe (docs/train-cnn.md, "Transfer learning")."""
    options = [
        click.option(
            "--pretrained",
            default=None,
            metavar="NAME_OR_FILE",
            help="Start from these weights (timm architectures): a name of 'metcli weights "
            "list' (installed by 'metcli weights fetch', checked by sha256) or a state-dict "
            "file (./file.safetensors; its sha256 goes in the card). Default: from scratch.",
        ),
        click.option(
            "--resize",
            type=click.Choice(["bilinear", "bicubic"]),
            default=None,
            help="How 2D slices are resized to --size [default: the architecture's: "
            "bicubic for inception_resnet_v2, else bilinear].",
        ),
        click.option(
            "--optimizer",
            type=click.Choice(["adam", "sgd"]),
            default="adam",
            show_default=True,
            help="Adam, or SGD with --momentum.",
        ),
        click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD only."),
        click.option("--weight-decay", type=float, default=0.0, show_default=True),
        click.option(
            "--warmup-epochs",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Linear warm-up: epoch e <= N runs at lr * e / (N + 1).",
        ),
        click.option(
            "--lr-step",
            type=click.IntRange(min=1),
            default=None,
            help="Multiply the learning rate by --lr-gamma every this many epochs.",
        ),
        click.option("--lr-gamma", type=float, default=0.1, show_default=True),
        click.option(
            "--augment",
            type=click.Choice(["affine", "flip-rotate", "none"]),
            default="affine",
            show_default=True,
            help="affine: the study's RandAffine; flip-rotate: random flips and a rotation "
            "up to --rotate degrees (the MRI study's; 2D); none.",
        ),
        click.option(
            "--flip",
            default=None,
            metavar="horizontal,vertical|none",
            help="flip-rotate: which random flips (p 0.5 each) [default: both].",
        ),
        click.option(
            "--rotate",
            type=float,
            default=None,
            metavar="DEG",
            help="flip-rotate: the largest rotation in degrees [default: 40].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("train-cnn")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("lesions_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@training_label_options
@click.option(
    "--arch",
    cls=DynamicHelpOption,
    help_from=_help,
    type=RegistryChoice(_names),
    default="densenet121",
    show_default=True,
)
@click.option(
    "--dims",
    type=click.Choice(["2", "3"]),
    default="2",
    show_default=True,
    help="2: every axial slice of a lesion (the study); 3: one cube per lesion.",
)
@click.option(
    "--channels",
    "--phases",
    "phases",
    default=None,
    metavar="CHANNEL,...",
    help="Channels stacked as inputs, in this order, the reference (the lesion map's) "
    "first: CT phases (portal,arterial), T1w, T2w, DWI-b<value>, ADC (docs/channels.md). "
    "Default: the CT of the lesion map's phase.",
)
@click.option(
    "--register",
    type=click.Choice(["none", "rigid", "affine"]),
    default="none",
    show_default=True,
    help="Align each channel to the first before resampling it onto the lesion map's grid "
    "(recorded in the card; predict does the same).",
)
@click.option(
    "--intensity",
    multiple=True,
    metavar="CHANNEL=RULE",
    help="A channel's intensity rule: hu (CT) or zscore[:LOWER,UPPER] (MR, percentiles; "
    "default zscore:0.5,99.5 for MR channels). Repeatable.",
)
@click.option(
    "--n4",
    multiple=True,
    metavar="CHANNEL",
    help="Correct this MR channel for its bias field (SimpleITK N4) first. Repeatable.",
)
@click.option(
    "--hierarchy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A hierarchy file (groups of labels, as train-radiomics'): step 1 learns the "
    "group, step 2 the label within each group; one model folder, chained probabilities.",
)
@click.option(
    "--decision",
    type=click.Choice(["argmax", "best-f1"]),
    default="argmax",
    show_default=True,
    help="Three classes or more: the most probable class, or per-class cut-offs chosen by "
    "best F1 on the validation lesions (recorded in the card either way).",
)
@click.option(
    "--seg",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="--arch almss: segmentations (metcli segment's OUT_DIR, liver 1, lesion 2) "
    "whose liver is the network's global input.",
)
@click.option(
    "--covariates",
    default="",
    metavar="COLUMN,...",
    help="--arch almss: participants.tsv columns (for example age,sex) fed through an "
    "MLP; predict takes them from --participants.",
)
@click.option(
    "--liver-branch/--no-liver-branch",
    default=True,
    show_default=True,
    help="--arch almss: the liver (global) branch; off is the study's ablation.",
)
@click.option(
    "--shared-backbone/--separate-backbones",
    default=False,
    show_default=True,
    help="--arch almss: one ResNet for every phase, or one per phase.",
)
@click.option(
    "--window",
    default="330,10",
    show_default=True,
    callback=_window,
    help="CT window WIDTH,LEVEL in HU, applied first.",
)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    help="Side of the input image (or cube) in pixels [default: 224 in 2D, 64 in 3D].",
)
@click.option(
    "--fov-mm",
    type=float,
    default=None,
    help="Fixed field of view in mm centred on the lesion, instead of the tight square crop.",
)
@click.option(
    "--context-mm",
    type=float,
    default=0.0,
    show_default=True,
    help="Keep this margin of tissue around the lesion (0: mask only).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--lr", type=float, default=1e-4, show_default=True, help="Learning rate (Adam or SGD)."
)
@_recipe_options
@click.option(
    "--val-patients",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Validation patients (the best epoch is chosen on them; 0 only with --cv-folds).",
)
@click.option(
    "--test-patients",
    type=click.IntRange(min=0),
    default=None,
    help="Test patients, stratified by class [default: 8].",
)
@click.option(
    "--split",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A split file (participant_id, set, fold) instead.",
)
@click.option(
    "--monitor",
    type=click.Choice(["loss", "auc"]),
    default="loss",
    show_default=True,
    help="Validation metric that picks the best epoch and drives --patience.",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many epochs without a better validation --monitor.",
)
@click.option(
    "--cv-folds",
    type=click.IntRange(min=2),
    default=None,
    help="Choose a fixed number of epochs (up to --epochs) by K-fold cross-validation "
    "on the training patients, then train on all of them for that many.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--amp", is_flag=True, help="Automatic mixed precision (CUDA only; an error on the CPU)."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from OUT_DIR/resume (same inputs and options).",
)
@threads_option("training (on the CPU the weights depend on it; see docs/train-cnn.md)")
@seed_option()
@overwrite_option
@common_options
@run_command
def command(raw_dir, lesions_dir, out_dir, dims, overwrite, **options):
    """Train the study's lesion-slice CNN on CTs and split-lesions' lesion maps.

    Every axial slice of every kept lesion (or, with --dims 3, a cube around
    it) is windowed, blackened outside the lesion, cropped and resized
    (docs/train-cnn.md). Patients are split into train, val and test; the
    epoch with the best validation loss (or AUC) is kept, or a number of
    epochs chosen by --cv-folds. OUT_DIR gets model/ (model.onnx, model.json,
    checkpoint.pt), split.tsv, training_log.tsv, val_predictions.tsv and
    predictions.tsv (test set), ready for `metcli evaluate`. An interrupted
    run continues with --resume. Prints the model folder.
    """
    from metcli.cnn.train_cnn import train_cnn
    from metcli.core.errors import UsageError

    ctx = click.get_current_context()
    explicit = ctx.get_parameter_source("dims") != click.core.ParameterSource.DEFAULT
    if options["arch"] == "almss" and explicit and dims != "3":
        raise UsageError("--arch almss is a 3D network", fix="leave --dims out, or give --dims 3")
    with progress_bar("train-cnn") as progress:
        result = train_cnn(
            raw_dir,
            lesions_dir,
            out_dir,
            dims=int(dims),
            overwrite=overwrite,
            progress=progress,
            **options,
        )
    quiet = ctx.obj and ctx.obj.get("quiet")
    if result.excluded and not quiet:
        click.echo(
            "left out: " + ", ".join(f"{p} ({why})" for p, why in sorted(result.excluded.items())),
            err=True,
        )
    if result.skipped and not quiet:
        click.echo(
            "outputs are current (same inputs and settings); nothing redone "
            "(--overwrite redoes them)",
            err=True,
        )
    click.echo(str(result.model_dir))
