"""``metcli train-seg RAW_DIR SEG_DIR OUT_DIR``: train an nnU-Net v2 segmentation model.

The library function is :func:`metcli.segmentation.train_seg.train_seg`.
"""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (
    common_options,
    overwrite_option,
    progress_bar,
    run_command,
    seed_option,
    threads_option,
)


@click.command("train-seg")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("seg_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--configuration",
    type=click.Choice(["3d_fullres", "2d", "3d_lowres"]),
    default="3d_fullres",
    show_default=True,
    help="nnU-Net configuration to train.",
)
@click.option(
    "--fold",
    "folds",
    multiple=True,
    metavar="K|all",
    help="Fold to train: 0..4 of nnU-Net's 5-fold split, or 'all' (every case trains). "
    "Repeatable. Default: 0.",
)
@click.option(
    "--plan",
    type=click.Choice(["small", "default"]),
    default="small",
    show_default=True,
    help="small: a network a CPU trains in minutes (patch 32x48x48, features 8-64, "
    "45 epochs of 50 iterations); default: nnU-Net's own plans and schedule "
    "(1000 epochs of 250 iterations: a GPU's job).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Epochs (default: the plan's)."
)
@click.option(
    "--iterations-per-epoch",
    type=click.IntRange(min=1),
    default=None,
    help="Training iterations per epoch (default: the plan's).",
)
@click.option(
    "--participant-label",
    "participant_label",
    multiple=True,
    metavar="LABEL",
    help="Train on this participant only (repeatable). Default: every participant.",
)
@click.option(
    "--val-participants",
    multiple=True,
    metavar="LABEL",
    help="Participants for nnU-Net's per-epoch validation (fold 0; repeatable). "
    "Default: nnU-Net's 5-fold split, made over participants.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the network trains (auto: CUDA when available).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=None,
    help="nnU-Net's data-augmentation (and preprocessing) processes; 0 runs them in "
    "this process. Default: 1 on the CPU, up to 8 with a GPU.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where nnU-Net's raw, preprocessed and results folders go. "
    "Default: OUT_DIR/.train-seg-work.",
)
@click.option(
    "--keep-work", is_flag=True, help="Keep the work folder after success (removed otherwise)."
)
@click.option(
    "--name",
    default=None,
    help="The model's name in manifest-entry.json. Default: from OUT_DIR's folder name.",
)
@threads_option("training")
@seed_option()
@overwrite_option
@common_options
@run_command
def command(
    raw_dir,
    seg_dir,
    out_dir,
    configuration,
    folds,
    plan,
    epochs,
    iterations_per_epoch,
    participant_label,
    val_participants,
    device,
    jobs,
    work_dir,
    keep_work,
    name,
    threads,
    seed,
    overwrite,
):
    """Train an nnU-Net v2 model (liver and lesions) on CTs and their masks.

    RAW_DIR holds the CTs (sub-<id>/[ses-<s>/]anat/..._ct.nii.gz); SEG_DIR their masks
    (..._dseg.nii.gz on each CT's grid: 0 background, 1 liver, 2 lesion), from
    import-mask or synth's derivatives/truth. nnU-Net plans, preprocesses and trains
    with its own code. OUT_DIR gets a model folder for 'metcli segment --model
    OUT_DIR' and 'metcli export-onnx': dataset.json, plans.json,
    fold_K/checkpoint_final.pth (loads weights-only), SHA256SUMS,
    manifest-entry.json and the sidecar train_seg.json. A killed run continues
    where it stopped when run again with the same inputs and options.
    """
    from metcli.segmentation.train_seg import train_seg

    with progress_bar("train-seg") as progress:
        started: set[str] = set()

        def on_epoch(fold, figures):
            if fold not in started:
                started.add(fold)
                progress.start(figures["epochs"] - figures["epoch"] + 1)
            progress(f"fold {fold} epoch {figures['epoch']}", "done")

        result = train_seg(
            raw_dir,
            seg_dir,
            out_dir,
            configuration=configuration,
            folds=list(folds) or None,
            plan=plan,
            epochs=epochs,
            iterations_per_epoch=iterations_per_epoch,
            participants=list(participant_label) or None,
            val_participants=list(val_participants) or None,
            device=device,
            seed=seed,
            work_dir=work_dir,
            keep_work=keep_work,
            overwrite=overwrite,
            name=name,
            workers=jobs,
            threads=threads,
            on_epoch=on_epoch,
        )
    state = "already trained (skipped)" if result.skipped else "trained"
    click.echo(f"{result.out_dir}\t{state}\t{result.name}\tsha256={result.model_sha256}")
