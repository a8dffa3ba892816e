"""``metcli segment``: liver and lesion masks of every CT with nnU-Net (or its ONNX export)."""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import (
    DynamicHelpOption,
    RegistryChoice,
    common_options,
    finish,
    overwrite_option,
    participant_options,
    progress_bar,
    run_command,
    threads_option,
)


def _names():
    from metcli.segmentation.backends import backend_names

    return backend_names()


def _help():
    from metcli.segmentation.backends import backends_help

    return backends_help()


def _split_folds(values) -> list[str] | None:
    folds = [
        part.strip() for value in values or () for part in str(value).split(",") if part.strip()
    ]
    return folds or None


@click.command("segment")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--model",
    default=None,
    metavar="NAME|PATH",
    help="A model of the weights manifest ('metcli weights list') or a model folder "
    "(nnU-Net v2 trained-model folder; export-onnx folder with --backend onnx). A folder "
    "is written with a path separator (./NAME); a bare NAME is always a manifest name. "
    "Default: metcli-demo-nnunet, which only knows synthetic phantoms.",
)
@click.option(
    "--backend",
    cls=DynamicHelpOption,
    help_from=_help,
    type=RegistryChoice(_names),
    default="nnunet",
    show_default=True,
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the network runs (auto: CUDA when available).",
)
@click.option(
    "--folds",
    multiple=True,
    metavar="K[,K...]",
    help="nnU-Net folds to ensemble (numbers or 'all'; repeatable or comma-separated). "
    "Default: every fold of the model folder.",
)
@click.option(
    "--tta/--no-tta",
    default=True,
    show_default=True,
    help="Test-time augmentation by mirroring (nnU-Net's default; about 8x slower).",
)
@click.option(
    "--step-size",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Sliding-window step as a fraction of the patch size.",
)
@click.option(
    "--label-map",
    default=None,
    metavar="SPEC",
    help="Translate the model's labels into metcli's, e.g. "
    "'liver=liver,liver_tumor=lesion' (model label name or value = background, "
    "liver or lesion). Default: the manifest's map, else the label names.",
)
@click.option(
    "--orientation",
    default=None,
    metavar="CODE|as-stored",
    help="Bring every CT to this orientation (e.g. LPS, RAS) before the network "
    "sees it; labels come back on the CT's own grid. Default: the model's own "
    "(an ONNX export's, a manifest model's input.orientation, else as-stored "
    "as nnU-Net does).",
)
@click.option(
    "--dicom-seg",
    is_flag=True,
    help="Also write ..._dseg.dcm, a DICOM Segmentation (liver and lesion segments) that "
    "refers to the CT's DICOM series, for viewers and PACS. The CT must come from "
    "'metcli import-dicom' (its sidecar keeps the series' UIDs).",
)
@threads_option("the nnU-Net backend (nnU-Net uses at most nnUNet_def_n_proc, 8 by default)")
@participant_options
@overwrite_option
@common_options
@run_command
def command(
    raw_dir,
    out_dir,
    model,
    backend,
    device,
    folds,
    tta,
    step_size,
    label_map,
    orientation,
    dicom_seg,
    threads,
    participant_label,
    level,
    overwrite,
):
    """Segment liver (1) and lesions (2) in every CT of RAW_DIR.

    RAW_DIR holds sub-<id>/[ses-<s>/]anat/..._ct.nii.gz. OUT_DIR gets, per CT,
    ..._dseg.nii.gz (0 background, 1 liver, 2 lesion) on the CT's exact grid and a
    JSON sidecar naming the model and its sha256; at the group level, dseg.tsv.
    The model is loaded once for all participants of the run. Finished CTs are
    skipped unless --overwrite.
    """
    from metcli.io.bids import resolve_levels
    from metcli.segmentation.segment import segment

    labels = list(participant_label) or None
    do_participants, _do_group = resolve_levels(level, labels)
    with progress_bar("segment") as progress:
        report = segment(
            raw_dir,
            out_dir,
            model=model,
            backend=backend,
            device=device,
            folds=_split_folds(folds),
            tta=tta,
            step_size=step_size,
            label_map=label_map,
            orientation=orientation,
            participants=labels,
            level=level,
            threads=threads,
            overwrite=overwrite,
            progress=progress,
            dicom_seg=dicom_seg,
        )
    if do_participants:
        finish(report, what="CTs")
