"""Load nnU-Net v2 checkpoints without unpickling them fully.

Checkpoints are pickles. :func:`load_checkpoint`, which the nnU-Net backend and
the ONNX export both use, loads them with ``torch.load(weights_only=True)`` only,
allowing numpy scalars and dtypes besides (nnU-Net's own checkpoints store numpy
floats in their training log, which the plain weights-only loader refuses). A
checkpoint that needs more is refused with the name of what the restricted loader
refused and how to strip it; metcli never unpickles a checkpoint fully.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metcli.core.errors import InputError


def load_checkpoint(path: str | Path) -> tuple[dict, str]:
    """An nnU-Net checkpoint as a dict, and how it was loaded.

    ``torch.load(weights_only=True)``, then the same with numpy's scalar constructor
    and dtype classes allowed (nothing that runs code). A checkpoint that needs
    more is an :class:`InputError` naming what was refused and how to strip it;
    one without ``network_weights`` is not an nnU-Net v2 checkpoint.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise InputError(
            "not a PyTorch checkpoint (torch.save writes a zip archive; this file is not one)",
            path=path,
            fix="give the checkpoint_final.pth nnU-Net v2 wrote (copy it again if "
            "it was truncated)",
        )
    checkpoint, how = None, "weights_only"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise InputError(
                f"cannot read the checkpoint ({short_error(exc)})",
                path=path,
                fix="check that the file is a complete PyTorch checkpoint",
            ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise InputError(
            f"cannot read the checkpoint ({short_error(exc)})",
            path=path,
            fix="check that the file is a complete PyTorch checkpoint",
        ) from None
    if checkpoint is None:
        how = "weights_only+numpy_scalars"
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError(
                f"the checkpoint holds Python objects that a weights-only load "
                f"refuses ({_refused_global(exc)}); metcli does not unpickle "
                "checkpoints fully",
                path=path,
                fix="strip it, in an environment you trust, to network_weights, "
                "trainer_name, init_args and inference_allowed_mirroring_axes "
                "(docs/onnx.md shows how)",
            ) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise InputError(
            "the checkpoint has no 'network_weights'; it is not an nnU-Net v2 checkpoint",
            path=path,
            fix="give the checkpoint_final.pth nnU-Net v2 wrote",
        )
    return checkpoint, how


def _numpy_safe_globals() -> list:
    """numpy's scalar constructor and dtype classes (what nnU-Net's training log pickles)."""
    core = getattr(np, "_core", None) or np.core
    allowed: list = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _refused_global(exc: Exception) -> str:
    import re

    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"GLOBAL {match.group(1)}" if match else "an object it does not allow"


def short_error(exc: Exception, limit: int = 200) -> str:
    """An exception's text on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
