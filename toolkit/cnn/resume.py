"""train-cnn's resume state: written after every epoch, read back to continue a run.

The state :func:`metcli.cnn.fit.fit` writes holds the model, optimiser and
mixed-precision scaler, the epoch, the kept weights and score,
the log rows and the random states of batch order, augmentation and PyTorch
(:func:`random_states`). It is written atomically (:func:`save_state`) and read
back with ``torch.load(..., weights_only=True)`` (:func:`load_state`): it holds
tensors and plain Python values only; a state of another layout or of another
run is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from metcli.core.errors import InputError, UsageError

#: Version of the resume state's layout; another one is refused.
STATE_FORMAT = 1


def _augment_generators(augment) -> list:
    """The NumPy RandomStates RandAffine draws from (whether to apply; the affine)."""
    return [augment.R, augment.rand_affine_grid.R]


def random_states(rng, augment, device: str) -> dict:
    """The random states of a run: PyTorch's (and CUDA's), batch order's, augmentation's."""
    import torch

    states = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state, "augment": []}
    for generator in _augment_generators(augment):
        name, keys, pos, has_gauss, cached = generator.get_state()
        states["augment"].append(
            {
                "name": str(name),
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            }
        )
    if device == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict, rng, augment, device: str) -> None:
    """Put back the random states :func:`random_states` recorded."""
    import torch

    torch.set_rng_state(states["torch"])
    rng.bit_generator.state = states["numpy"]
    for generator, st in zip(_augment_generators(augment), states["augment"]):
        generator.set_state(
            (
                st["name"],
                st["keys"].numpy().astype(np.uint32),
                st["pos"],
                st["has_gauss"],
                st["cached_gaussian"],
            )
        )
    if device == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(path: Path, state: dict) -> None:
    """Write the resume state atomically (a killed write leaves the previous one)."""
    import torch

    from metcli.io.files import atomic_path

    buffer = io.BytesIO()  # not the temporary path, whose random name torch would record
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_state(path: Path, fingerprint: str) -> dict:
    """Read a resume state (``weights_only=True``); refuse one of another run."""
    import torch

    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise InputError(
            f"cannot read the resume state ({str(exc).splitlines()[0][:120]})",
            path=path,
            fix="run again without --resume to start over",
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(
            "the resume state is not one this metcli writes",
            path=path,
            fix="run again without --resume to start over",
        )
    if state.get("fingerprint") != fingerprint:
        raise UsageError(
            "the resume state was written by a run with other inputs or settings",
            path=path,
            fix="resume with the same inputs and options, or run without --resume to start over",
        )
    return state
