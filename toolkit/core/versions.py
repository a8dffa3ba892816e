"""Versions of the libraries a result was computed with (model cards, reports)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Iterable

#: What a radiomics model card records.
MODEL_LIBRARIES = (
    "numpy",
    "scikit-learn",
    "imbalanced-learn",
    "xgboost",
    "xgboost-cpu",
    "skl2onnx",
    "onnxmltools",
    "onnx",
    "onnxruntime",
)
#: What an image model card records besides.
CNN_LIBRARIES = ("torch", "monai", "timm", "scikit-image")


def versions(
    libraries: Iterable[str] = MODEL_LIBRARIES,
    *,
    missing: str | None = None,
    metcli_first: bool = False,
) -> dict[str, str]:
    """``{"python": ..., <library>: <version>..., "metcli": ...}``.

    A library that is not installed is left out, or recorded as ``missing`` when
    that is given.
    """
    from metcli._version import __version__

    out = {"metcli": __version__} if metcli_first else {}
    out["python"] = platform.python_version()
    for dist in libraries:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if missing is not None:
                out[dist] = missing
    if not metcli_first:
        out["metcli"] = __version__
    return out
