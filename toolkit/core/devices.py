"""The one device rule of every command (``--device auto|cpu|cuda``).

- ``cpu`` runs on the CPU.
- ``auto`` runs on a CUDA GPU when the library that runs the model (PyTorch or
  ONNX Runtime) can use one, else on the CPU (logged).
- ``cuda`` without a usable GPU is a :class:`~metcli.core.errors.UsageError`:
  asking for the GPU and silently getting the CPU would hide a broken
  installation.

:func:`torch_device` applies it for PyTorch, :func:`onnx_providers` and
:func:`start_session` for ONNX Runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from metcli.core.errors import UsageError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


def check_device(device: str) -> str:
    """``device`` if it is one of :data:`DEVICES`, else a :class:`UsageError`."""
    if device not in DEVICES:
        raise UsageError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    return device


def torch_device(device: str, *, amp: bool = False) -> str:
    """``cuda`` or ``cpu`` for PyTorch by the rule above.

    ``amp`` (mixed precision) is for CUDA only: on the CPU it is a :class:`UsageError`.
    """
    import torch

    check_device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for but PyTorch sees no CUDA GPU",
            fix="use --device cpu or auto, or install a CUDA build of torch",
        )
    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if amp and resolved != "cuda":
        raise UsageError(
            "--amp (automatic mixed precision) needs a CUDA GPU, and this run uses the CPU",
            fix="leave out --amp on the CPU",
        )
    return resolved


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for ``device`` by the rule above."""
    import onnxruntime as ort

    check_device(device)
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        raise UsageError(
            "--device cuda was asked for but this ONNX Runtime has no CUDA provider",
            fix="install onnxruntime-gpu (pip install 'metcli[gpu]'), or use --device auto or cpu",
        )
    log.info("running on the CPU (no CUDA provider in this ONNX Runtime)")
    return [CPU_PROVIDER]


def start_session(
    model: bytes | str | Path,
    device: str,
    *,
    options: Any = None,
    providers: Sequence[str] | None = None,
):
    """An ONNX Runtime session by the rule above, and the provider it runs on.

    With ``auto``, a CUDA provider that fails to start falls back to the CPU
    (logged); with ``cuda`` that is a :class:`UsageError`. ``providers`` overrides
    the rule (tests, benchmarks).
    """
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model
    chosen = list(providers) if providers is not None else onnx_providers(device)
    reason = None
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types
        if chosen[0] != CUDA_PROVIDER:
            raise
        reason = f"it failed to start ({' '.join(str(exc).split())[:160]})"
        session = None
    if session is not None:
        provider = session.get_providers()[0]
        if chosen[0] != CUDA_PROVIDER or provider == CUDA_PROVIDER:
            if provider == CUDA_PROVIDER:
                log.info("ONNX Runtime runs on the GPU (%s)", CUDA_PROVIDER)
            return session, provider
        reason = "ONNX Runtime could not start it (no GPU or CUDA libraries)"
    if device == "cuda":
        raise UsageError(
            f"--device cuda was asked for but {reason}",
            fix="use --device auto or cpu, or run on a machine with a GPU",
        )
    log.info("CUDA is not available to ONNX Runtime: %s; running on the CPU", reason)
    session = ort.InferenceSession(source, sess_options=options, providers=[CPU_PROVIDER])
    return session, CPU_PROVIDER


def deterministic_options():
    """ONNX Runtime session options with one thread (same results run after run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def onnx_session(model: bytes | str | Path, *, providers: Sequence[str] = (CPU_PROVIDER,)):
    """An ONNX Runtime session on ``providers`` with one thread (deterministic)."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(
        source, sess_options=deterministic_options(), providers=list(providers)
    )
