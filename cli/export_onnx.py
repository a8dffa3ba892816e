"""``metcli export-onnx MODEL_DIR OUT_DIR``: nnU-Net v2 model to ONNX.

The library function is :func:`metcli.segmentation.export_onnx.export_onnx`.
"""

from __future__ import annotations

from pathlib import Path

import click

from metcli.cli._common import common_options, overwrite_option, run_command


@click.command("export-onnx")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--fold",
    default="0",
    show_default=True,
    metavar="K|all",
    help="The fold to export (fold_K/checkpoint_final.pth).",
)
@click.option(
    "--opset",
    type=click.IntRange(13, 21),
    default=17,
    show_default=True,
    help="ONNX opset of the exported network.",
)
@click.option(
    "--orientation",
    default="LPS",
    show_default=True,
    metavar="CODE|as-stored",
    help="Orientation the model's training CTs had (SimpleITK DICOMOrient code: LPS is "
    "the identity direction, RAS nibabel's canonical one): CTs are brought to it "
    "before inference. 'as-stored' feeds arrays as stored, exactly as nnU-Net does.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-4,
    show_default=True,
    help="Largest |ONNX Runtime - torch| accepted on the logits of a random input and a "
    "phantom, as a fraction of the logits' range (argmax labels must also agree "
    "beyond ties).",
)
@overwrite_option
@common_options
@run_command
def command(model_dir, out_dir, fold, opset, orientation, tolerance, overwrite):
    """Export an nnU-Net v2 trained model to ONNX for metcli's ONNX backend.

    MODEL_DIR is an nnU-Net v2 trained-model folder (dataset.json, plans.json,
    fold_K/checkpoint_final.pth). OUT_DIR gets model.onnx (dynamic batch, fixed
    patch, one output: the logits) and preprocessing.json (target spacing, axes, CT
    normalisation, resampling orders, patch size, labels, the sha256 of the source
    files and of the ONNX file, and the check of ONNX Runtime against torch). The
    checkpoint is a pickle: it is loaded weights-only (numpy scalars allowed); one
    that holds other Python objects is refused with how to strip it.
    """
    from metcli.segmentation.export_onnx import export_onnx, parse_fold

    code = None if orientation.strip().lower() in ("as-stored", "none") else orientation
    result = export_onnx(
        model_dir,
        out_dir,
        fold=parse_fold(fold),
        opset=opset,
        orientation=code,
        tolerance=tolerance,
        overwrite=overwrite,
    )
    verification = result.spec["verification"]
    state = "already exported (skipped)" if result.skipped else "exported"
    click.echo(
        f"{result.onnx_path}\t{state}\tmax_abs_logit_difference="
        f"{verification['max_abs_logit_difference']:.3g}\t"
        f"relative_logit_difference={verification.get('relative_logit_difference', 0):.3g}\t"
        f"sha256={result.spec['onnx']['sha256']}"
    )
