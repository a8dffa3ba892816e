"""Grad-CAM per phase for the multi-branch network (``--arch almss``), for ``predict --explain``.

MONAI's :class:`monai.visualize.GradCAM` hooks one layer that runs once per input; the
ALMSS network runs its tumour ResNet once per phase (the same module for every phase
with ``shared`` backbones), and takes a second input (the covariates). So the maps are
computed here with PyTorch hooks, by Grad-CAM's definition (Selvaraju et al. 2017), the
same rule as MONAI's: for each call of the tumour branch's last residual stage
(``layer4``), in the order the network makes them (the phases' clinical order), the
activations ``A`` and the gradients of the class's logit ``dY/dA`` are kept; the map is
``relu(sum_k mean(dY/dA_k) A_k)``, upsampled trilinearly to the input's size, divided by
its maximum (0 where nothing pushes towards the class). ``tests/test_almss_cnn.py``
checks it against MONAI's GradCAM on a network MONAI can explain.
"""

from __future__ import annotations

import numpy as np

#: The layer of each tumour backbone whose output is weighed (1/32 of the input side).
TARGET = "layer4"


class PhaseGradCam:
    """Grad-CAM maps of every phase of an ALMSS network (``net``: eval mode).

    ``__call__(images, class_index, covariates=None)`` returns ``[n, phases, *spatial]``
    float32 in [0, 1], the phases in channel order (the card's ``input.channels``).
    """

    def __init__(self, net, *, threads: int | None = None, step: str | None = None):
        import torch

        from metcli.core.threads import check_threads

        self.net = net
        #: the ALMSS network whose tumour branch is hooked: ``net``, or for a two-step
        #: model (:mod:`metcli.cnn.hierarchy_net`) its step ``step`` (``step1``)
        self.hooked = net if step is None else net.steps[step]
        self.arch = "almss"
        where = "" if step is None else f"steps.{step}."
        self.target_layer = f"{where}tumour.*.{TARGET} (one map per phase)"
        self.threads = check_threads(threads) or torch.get_num_threads()
        self._calls: list = []
        for backbone in self.hooked.tumour:
            getattr(backbone, TARGET).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
        self._calls.append(output)

    def __call__(self, images: np.ndarray, class_index: int, covariates=None) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from metcli.core.threads import limit_cpu_threads

        device = next(self.net.parameters()).device
        x = torch.from_numpy(np.asarray(images, dtype=np.float32)).to(device)
        extra = [] if covariates is None else [torch.from_numpy(np.asarray(covariates)).float()]
        self._calls = []
        with limit_cpu_threads(self.threads), torch.enable_grad():
            x.requires_grad_(True)  # so that the hooked activations keep their gradients
            logits = self.net(x, *[e.to(device) for e in extra])
            self.net.zero_grad()
            logits[:, int(class_index)].sum().backward()
            maps = []
            for activation in self._calls:
                weights = activation.grad.mean(dim=(2, 3, 4), keepdim=True)
                cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
                maps.append(F.interpolate(cam, size=x.shape[2:], mode="trilinear"))
        self._calls = []
        # the calls come in the network's order (its clinical order); back to channel order
        order = list(self.hooked.order)
        by_channel = [maps[order.index(c)] for c in range(len(order))]
        stacked = torch.cat(by_channel, dim=1).detach().cpu().numpy().astype(np.float64)
        peak = stacked.reshape(*stacked.shape[:2], -1).max(axis=2)[..., None, None, None]
        scaled = np.divide(stacked, peak, out=np.zeros_like(stacked), where=peak > 0)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)
