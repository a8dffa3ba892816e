"""Grad-CAM heat maps of image models, for ``metcli predict --explain``.

The heat maps come from the PyTorch weights train-cnn keeps beside the ONNX
file (``checkpoint.pt``, a state_dict), loaded with ``weights_only=True`` after
its sha256 was checked against the model card. They are computed by MONAI's
:class:`monai.visualize.GradCAM` (Selvaraju et al. 2017) for one class (the
class predicted for the lesion) at the target layer of the architecture's
entry in :mod:`metcli.cnn.networks`:

=============  =====================  ==================================================
architecture   target layer           what it is
=============  =====================  ==================================================
densenet121    ``class_layers.relu``  the ReLU after the last dense block and ``norm5``:
                                      the last feature map, 1/32 of the input side
resnet18       ``layer4``             the last residual stage, 1/16 of the input side
=============  =====================  ==================================================

The map (ReLU of the gradient-weighted sum of the layer's channels) is
upsampled (bi- or trilinearly) to the input's size by MONAI, then divided by its maximum,
so it runs from 0 (nothing pushes towards the class) to 1; a map with no
positive value stays 0. MONAI's default post-processing (which maps the
maximum to 0) is not used. The map has ``size // target_stride`` cells per side
before upsampling (the entry's downsampling): at a ``--size`` below twice that
stride (64 for densenet121, 32 for resnet18) it is a single cell, hence constant.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from metcli.cnn.networks import Architecture, architecture_names, get_architecture
from metcli.core.errors import InputError, UsageError

log = logging.getLogger(__name__)

#: Opacity of the heat map where it is 1 (it fades to nothing where it is 0).
ALPHA = 0.5
COLORMAP = "jet"


def load_network(model_dir: Path, card: dict, *, device: str = "cpu"):
    """The PyTorch network of ``model_dir/checkpoint.pt``, its sha256 checked against the card.

    Loaded with ``torch.load(..., weights_only=True)``
    (:func:`metcli.cnn.train_cnn.load_checkpoint`); returned in eval mode on ``device``.
    """
    from metcli.cnn.train_cnn import load_checkpoint
    from metcli.io.files import sha256_file

    model_dir = Path(model_dir)
    path = model_dir / "checkpoint.pt"
    arch = card.get("architecture")
    if arch not in architecture_names():
        raise InputError(
            f"architecture {arch!r} has no Grad-CAM target layer in this metcli "
            f"(known: {', '.join(architecture_names())})",
            path=model_dir / "model.json",
            fix="predict without --explain",
        )
    if not path.is_file():
        raise InputError(
            "the PyTorch checkpoint is missing; the heat maps need it",
            path=path,
            fix="copy checkpoint.pt that train-cnn wrote beside "
            "model.onnx, or predict without --explain",
        )
    expected = (card.get("checkpoint") or {}).get("sha256")
    if sha256_file(path) != expected:
        raise InputError(
            "checkpoint.pt does not match the sha256 in its card",
            path=path,
            fix="copy the model directory again (model.onnx, model.json and "
            "checkpoint.pt belong together)",
        )
    from metcli.cnn.hierarchy_net import card_hierarchy

    network = card.get("network")
    channels = int(card["input"]["shape"][1]) if network else None
    return (
        load_checkpoint(
            model_dir,
            arch,
            len(card["classes"]),
            in_channels=channels,
            options=network,
            hierarchy=card_hierarchy(card),
        )
        .to(device)
        .eval()
    )


class GradCam:
    """Grad-CAM of one network (the hooks are registered once, at construction).

    Args:
        net: the network (eval mode), for example from :func:`load_network`.
        arch: its architecture name (its entry in :mod:`metcli.cnn.networks` names the
            target layer).
        threads: PyTorch's CPU threads while a map is computed (set and restored
            around each call, :func:`metcli.core.threads.limit_cpu_threads`); None =
            torch's number when the object is made. On a machine where other
            processes keep cores busy, 1 is much faster than torch's default.
    """

    def __init__(self, net, arch: str, *, threads: int | None = None, prefix: str = ""):
        import torch
        from monai.visualize import GradCAM

        from metcli.core.threads import check_threads

        self.architecture = _architecture(arch)
        self.threads = check_threads(threads) or torch.get_num_threads()
        self.net = net
        self.arch = arch
        # a two-step model (metcli.cnn.hierarchy_net): step 1's layer, "steps.step1."
        self.target_layer = prefix + self.architecture.target_layer
        self._cam = GradCAM(
            nn_module=net, target_layers=self.target_layer, postprocessing=_identity
        )
        self._warned = False

    def __call__(self, images: np.ndarray, class_index: int) -> np.ndarray:
        """Heat maps ``[n, *spatial]`` (float32 in [0, 1]) of class ``class_index``.

        ``images``: network inputs ``[n, channels, *spatial]`` (2D or 3D).
        """
        import torch

        from metcli.core.threads import limit_cpu_threads

        images = np.asarray(images, dtype=np.float32)
        if images.ndim not in (4, 5):
            raise ValueError(
                f"images must be [n, channels, *spatial] (2D or 3D), got shape {images.shape}"
            )
        spatial = images.shape[2:]
        if min(spatial) // self.architecture.target_stride <= 1 and not self._warned:
            log.warning(
                "inputs of %s give a Grad-CAM map of one cell at %s: the heat "
                "map is constant (train with --size 64 or more for a spatial map)",
                "x".join(map(str, spatial)),
                self.target_layer,
            )
            self._warned = True
        device = next(self.net.parameters()).device
        x = torch.from_numpy(images).to(device)
        with limit_cpu_threads(self.threads), torch.enable_grad():
            raw = self._cam(x, class_idx=int(class_index))
        maps = raw.detach().cpu().numpy()[:, 0].astype(np.float64)
        peak = maps.reshape(len(maps), -1).max(axis=1).reshape((-1,) + (1,) * len(spatial))
        scaled = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _identity(x):
    return x


def _architecture(arch: str) -> Architecture:
    """The registry entry of ``arch``; an unknown one is an :class:`InputError`."""
    try:
        return get_architecture(arch)
    except UsageError:
        raise InputError(
            f"architecture {arch!r} has no Grad-CAM target layer "
            f"(known: {', '.join(architecture_names())})",
            fix="predict without --explain, or train the model with one of those architectures",
        ) from None


def overlay(image: np.ndarray, heat: np.ndarray, *, alpha: float = ALPHA) -> np.ndarray:
    """An RGB uint8 picture: the grey image in [0, 1] under the coloured heat map.

    The map's colour (``jet``) is blended in with an opacity of ``alpha * heat``,
    so pixels the class does not depend on show the image as it is.
    """
    from matplotlib import colormaps

    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    if image.shape != heat.shape:
        raise ValueError(f"image {image.shape} and heat map {heat.shape} differ in shape")
    grey = np.repeat(image[..., None], 3, axis=-1)
    colour = colormaps[COLORMAP](heat)[..., :3]
    weight = alpha * heat[..., None]
    rgb = (1.0 - weight) * grey + weight * colour
    return np.round(rgb * 255.0).astype(np.uint8)


def write_png(rgb: np.ndarray, target: Path) -> None:
    """Write an RGB uint8 array as a PNG to ``target`` (a temporary path of an OutputSet)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(target, format="PNG")
