"""The check of an ONNX export: ONNX Runtime's logits against torch's, on two inputs.

:func:`verify_export` refuses an export whose logits differ from torch's by more
than a tolerance relative to the logits' range, or whose argmax labels differ
beyond ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metcli.core.errors import OutputError
from metcli.segmentation.checkpoints import short_error

#: Largest allowed |ONNX Runtime - torch| on the logits of the verification inputs,
#: as a fraction of the range of torch's logits.
DEFAULT_TOLERANCE = 1e-4
#: The names of the exported network's input and output.
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def verify_export(
    network,
    onnx_path: Path,
    in_channels: int,
    patch: list[int],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    batch: int = 2,
) -> dict:
    """Compare ONNX Runtime with torch on two inputs; refuse what changes the result.

    The inputs are a standard-normal sample and a phantom (a smooth ellipsoid with
    two spheres in normalised intensities, as nnU-Net's CT normalisation gives).
    Two things are checked on both: the largest |ONNX Runtime - torch| on the
    logits, relative to the range of torch's logits (an absolute bound on a 3D
    U-Net's logits would be below the float32 accumulation noise that differs
    between SIMD paths, AVX2 vs AVX-512), must not exceed ``tolerance``; and the
    argmax labels must be identical wherever torch's top two logits differ by more
    than twice that largest difference (closer voxels are ties within the noise and
    are counted, not judged).
    """
    import onnxruntime as ort

    _check_model(onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    inputs = {
        "random": rng.standard_normal((batch, in_channels, *patch)).astype(np.float32),
        "phantom": _phantom_input(in_channels, patch, rng),
    }
    checks = {
        name: _check_input(network, session, sample, onnx_path) for name, sample in inputs.items()
    }
    for name, check in checks.items():
        _refuse_differences(name, check, tolerance, onnx_path)
    worst = max(checks.values(), key=lambda c: c["relative_difference"])
    return {
        "passed": True,
        "max_abs_logit_difference": worst["max_abs_logit_difference"],
        "relative_logit_difference": worst["relative_difference"],
        "tolerance": float(tolerance),
        "tolerance_kind": "relative to the logits' range",
        "labels_identical_beyond_ties": True,
        "tied_voxels": int(sum(c["tied_voxels"] for c in checks.values())),
        "inputs": sorted(checks),
        "input_shape": [batch, in_channels, *patch],
        "seed": int(seed),
        "reference": "torch (CPU, float32) on a standard-normal input and a phantom",
        "onnxruntime_version": ort.__version__,
        "execution_provider": "CPUExecutionProvider",
    }


def _check_model(onnx_path: Path) -> None:
    """ONNX's own check of the exported file."""
    import onnx

    try:
        onnx.checker.check_model(str(onnx_path))
    except Exception as exc:  # noqa: BLE001
        raise OutputError(
            f"the exported ONNX model is not valid ({short_error(exc)})",
            path=onnx_path.parent,
            fix="report the network class and opset",
        ) from None


def _check_input(network, session, sample: np.ndarray, onnx_path: Path) -> dict:
    """torch's and ONNX Runtime's logits of one input, compared (:func:`_compare_logits`)."""
    import torch

    with torch.no_grad():
        expected = network(torch.from_numpy(sample)).numpy()
    actual = session.run(None, {INPUT_NAME: sample})[0]
    if actual.shape != expected.shape:
        raise OutputError(
            f"ONNX Runtime's output shape {actual.shape} differs from torch's {expected.shape}",
            path=onnx_path.parent,
            fix="report this",
        )
    return _compare_logits(expected, actual)


def _refuse_differences(name: str, check: dict, tolerance: float, onnx_path: Path) -> None:
    """Refuse the export when the logits of input ``name`` differ beyond ``tolerance``, or
    its labels beyond ties."""
    if not check["relative_difference"] <= tolerance:
        raise OutputError(
            f"ONNX Runtime's logits differ from torch's by up to "
            f"{check['max_abs_logit_difference']:.3g} on the {name} input, "
            f"{check['relative_difference']:.3g} of the logits' range "
            f"(tolerance {tolerance:g}); the export was refused",
            path=onnx_path.parent,
            fix="try another --opset, or report this",
        )
    if check["label_disagreements"]:
        raise OutputError(
            f"ONNX Runtime's labels differ from torch's in "
            f"{check['label_disagreements']} voxels of the {name} input that "
            "are not ties; the export was refused",
            path=onnx_path.parent,
            fix="try another --opset, or report this",
        )


def _compare_logits(expected: np.ndarray, actual: np.ndarray) -> dict:
    """Largest difference (absolute and relative to the range) and label agreement."""
    expected64, actual64 = expected.astype(np.float64), actual.astype(np.float64)
    difference = float(np.max(np.abs(actual64 - expected64)))
    spread = float(np.max(expected64) - np.min(expected64))
    relative = difference / spread if spread > 0 else (0.0 if difference == 0 else np.inf)
    if expected.shape[1] > 1:
        top_two = np.sort(expected64, axis=1)[:, -2:]
        tied = (top_two[:, 1] - top_two[:, 0]) <= 2 * difference
    else:
        tied = np.zeros(expected.shape[:1] + expected.shape[2:], dtype=bool)
    differ = np.argmax(expected64, axis=1) != np.argmax(actual64, axis=1)
    return {
        "max_abs_logit_difference": difference,
        "relative_difference": float(relative),
        "tied_voxels": int(tied.sum()),
        "label_disagreements": int((differ & ~tied).sum()),
    }


def _phantom_input(in_channels: int, patch: list[int], rng: np.random.Generator) -> np.ndarray:
    """One patch of a smooth phantom in z-scored intensities: background, an ellipsoid
    and two darker spheres inside it, with a little noise."""
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in patch], indexing="ij")
    image = np.where(sum((g / 0.7) ** 2 for g in grid) <= 1.0, 1.0, -1.5)
    for centre, size in (((0.25, 0.2, -0.1), 0.25), ((-0.3, -0.15, 0.2), 0.15)):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= size**2
        image = np.where(inside, -0.5, image)
    image = image + 0.1 * rng.standard_normal(image.shape)
    return np.repeat(image[None, None], in_channels, axis=1).astype(np.float32)
