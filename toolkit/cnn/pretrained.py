"""Transfer learning for train-cnn (``--pretrained NAME_OR_FILE``): a network initialised
from a local weights file, checked by sha256.

The weights come from a file, never from the network at run time:

* a **manifest name** (``weights/manifest.json``, for example
  ``inception-resnet-v2-tf-in1k``, timm's ImageNet weights): the file that
  ``metcli weights fetch NAME`` installed under ``METCLI_HOME``, re-hashed against the
  publisher's sha256 (or the one recorded at download) before use
  (:func:`metcli.io.weights.pretrained_file`);
* a **path** (it contains ``/`` or starts with ``~``: ``./my_weights.safetensors``): the
  user's own file, used as it is; its sha256 is recorded in the model card.

Either file is a state dict of the architecture: safetensors, or a PyTorch file read with
``torch.load(..., weights_only=True)`` (a dict of tensors, or one under ``state_dict`` or
``model``). :func:`load_pretrained` hashes the bytes it reads (a file changed since the
options were checked is refused), then

1. adapts the first convolution when the file's input channels differ from the
   network's (``--channels``): timm's ``adapt_input_conv`` rule, which sums the RGB
   kernels for one channel, and otherwise repeats them over the channels and scales
   them by ``3 / channels`` (two channels: the R and G kernels times 1.5);
2. drops the classifier (``classif`` in Inception-ResNet-V2), which keeps the new
   network's random initialisation for the model's classes;
3. loads the rest; a key missing from the file, an unexpected key or a shape that does
   not fit is an error naming the file.

The first convolution and the classifier are those timm's model names in its
``pretrained_cfg`` (``first_conv``, ``classifier``), so ``--pretrained`` takes timm
architectures (``inception_resnet_v2``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from metcli.core.errors import UsageError, WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedFile:
    """A weights file to start from: its path, sha256 and where it came from."""

    path: Path
    sha256: str
    name: str  #: the manifest name, or the file's name
    source: str  #: ``manifest`` or ``file``

    def record(self) -> dict:
        """The card's record (no directory: provenance keeps no absolute path)."""
        return {
            "source": self.source,
            "name": self.name,
            "file": self.path.name,
            "sha256": self.sha256,
        }


def resolve_pretrained(name_or_file: str | Path, *, manifest=None) -> PretrainedFile:
    """The :class:`PretrainedFile` of ``--pretrained`` (a manifest name or a path; see
    :func:`metcli.io.weights.names_a_path`), its sha256 checked or computed."""
    from metcli.io.files import sha256_file
    from metcli.io.weights import names_a_path, pretrained_file

    if not names_a_path(name_or_file):
        path, sha = pretrained_file(str(name_or_file), manifest=manifest)
        return PretrainedFile(Path(path), sha, str(name_or_file), "manifest")
    path = Path(str(name_or_file)).expanduser()
    if not path.is_file():
        raise WeightsError(
            "the --pretrained weights file was not found",
            path=path,
            fix="give an existing state-dict file (safetensors or torch.save), or a name "
            "from 'metcli weights list'",
        )
    return PretrainedFile(path, sha256_file(path), path.name, "file")


def read_state_dict(pretrained: PretrainedFile) -> dict:
    """The file's state dict (safetensors, or ``torch.load(weights_only=True)``), after
    checking that its bytes still have the recorded sha256."""
    import hashlib
    import io

    import torch

    data = Path(pretrained.path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != pretrained.sha256:
        raise WeightsError(
            f"the weights file changed since it was checked (sha256 {actual[:12]}..., "
            f"expected {pretrained.sha256[:12]}...)",
            path=pretrained.path,
            fix="run train-cnn again without changing the file while it runs",
        )
    try:
        if _is_safetensors(data):
            from safetensors.torch import load as load_safetensors

            state = load_safetensors(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user error
        raise WeightsError(
            f"cannot read the weights file ({type(exc).__name__}: {' '.join(str(exc).split())})",
            path=pretrained.path,
            fix="give a state dict saved with safetensors or torch.save",
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(
            "the weights file does not hold a state dict (names -> tensors)",
            path=pretrained.path,
            fix="save the network's state_dict() (safetensors or torch.save)",
        )
    return dict(state)


def _is_safetensors(data: bytes) -> bool:
    """Whether ``data`` starts like a safetensors file (a little-endian header length,
    then a JSON object)."""
    if len(data) < 10:
        return False
    length = int.from_bytes(data[:8], "little")
    return 0 < length <= len(data) - 8 and data[8:9] == b"{"


def load_pretrained(model, pretrained: PretrainedFile) -> dict:
    """Load ``pretrained`` into ``model`` (see the module docstring); what was done."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("first_conv") or not cfg.get("classifier"):
        raise UsageError(
            "--pretrained needs a timm architecture (its first convolution and classifier "
            f"are named in timm's pretrained_cfg); {type(model).__name__} has none",
            fix="use --arch inception_resnet_v2, or leave --pretrained out",
        )
    state = read_state_dict(pretrained)
    conv_key = f"{cfg['first_conv']}.weight"
    head = cfg["classifier"]
    own = model.state_dict()
    adapted = False
    if conv_key in state and conv_key in own and state[conv_key].shape != own[conv_key].shape:
        from timm.models import adapt_input_conv

        try:
            state[conv_key] = adapt_input_conv(int(own[conv_key].shape[1]), state[conv_key])
        except (NotImplementedError, AssertionError):
            raise WeightsError(
                f"the file's first convolution takes {state[conv_key].shape[1]} channels; "
                "only RGB (3-channel) weights can be adapted to other channels",
                path=pretrained.path,
                fix="give RGB weights, or weights with as many channels as --channels",
            ) from None
        adapted = True
    dropped = sorted(k for k in state if k == head or k.startswith(f"{head}."))
    for key in dropped:
        del state[key]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), "")
        raise WeightsError(
            f"the weights do not fit the network: {first or exc}",
            path=pretrained.path,
            fix="give weights of the same architecture (--arch)",
        ) from None
    missing = [k for k in result.missing_keys if not (k == head or k.startswith(f"{head}."))]
    if missing or result.unexpected_keys:
        what = ", ".join((missing or result.unexpected_keys)[:3])
        raise WeightsError(
            f"the weights do not fit the network: {len(missing)} missing and "
            f"{len(result.unexpected_keys)} unexpected key(s) (for example {what})",
            path=pretrained.path,
            fix="give weights of the same architecture (--arch)",
        )
    log.info(
        "initialised from %s (sha256 %s...): %d tensors%s; classifier %s re-initialised",
        pretrained.name,
        pretrained.sha256[:12],
        len(state),
        f", {conv_key} adapted to {own[conv_key].shape[1]} channel(s)" if adapted else "",
        head,
    )
    return {"tensors": len(state), "first_conv_adapted": adapted, "classifier_dropped": dropped}


def initialise(model, pretrained: PretrainedFile | None) -> None:
    """:func:`load_pretrained` when ``pretrained`` is given (the training loop's hook)."""
    if pretrained is not None:
        load_pretrained(model, pretrained)
