"""The multi-branch multi-phase network of the 2024 ALMSS study (``train-cnn --arch almss``).

Xin et al. 2024 (eClinicalMedicine) describe, for each contrast phase, a 3D ResNet on
the liver (the global branch) and one on the tumour (the local branch); age and sex
pass through a multilayer perceptron whose features are added to each phase's image
features; a long short-term memory network (LSTM) reads the phases in their clinical
order (native, arterial, portal, delayed); a fully connected layer and a softmax give
the class probabilities. :class:`AlmssNet` builds that network from MONAI's 3D ResNet
and torch's LSTM:

* input ``image`` ``[batch, phases * regions, size, size, size]``: the tumour cube of
  each phase (channels ``0..P-1``, :mod:`metcli.lesions.volumes`), then, with the liver
  branch, the liver cube of each phase (channels ``P..2P-1``);
* input ``covariates`` ``[batch, K]`` (with ``covariates`` > 0): the encoded clinical
  columns (:mod:`metcli.cnn.clinical`);
* per phase, in clinical order (``order``, :func:`clinical_order`: native, arterial,
  portal, delayed, whatever the channel order):
  ``f = relu(W [tumour features, liver features])`` (``hidden`` wide), plus
  ``mlp(covariates)``; the LSTM's last hidden state goes to the classifier.

``shared=True`` uses one tumour backbone (and one liver backbone) for every phase,
``False`` one per phase. ``liver=False`` and ``covariates=0`` are the study's
ablations. The ResNets are MONAI's ``ResNet`` (basic blocks, one per stage, stage
widths ``width * (1, 2, 4, 8)``, stride-2 first convolution): a CPU-sized version of
the study's 3D ResNet; ``width`` and ``hidden`` are recorded in the card.
"""

from __future__ import annotations

from typing import Any

#: Default widths: the first ResNet stage's channels, the phase feature and LSTM size.
WIDTH, HIDDEN = 8, 32
#: The order in which the LSTM reads the phases (the channels keep the reference first).
CLINICAL_ORDER = ("native", "arterial", "portal", "delayed")


def clinical_order(channels) -> list[int]:
    """The channel indices in clinical order: CT phases as :data:`CLINICAL_ORDER`, other
    channels (MR, unknown phases) after them in their own order."""
    rank = {name: i for i, name in enumerate(CLINICAL_ORDER)}
    return sorted(range(len(channels)), key=lambda i: (rank.get(channels[i], len(rank)), i))


def _backbone(width: int):
    from monai.networks.nets.resnet import ResNet

    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[width, 2 * width, 4 * width, 8 * width],
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_stride=2,
        feed_forward=False,
    )


def _network_class():
    import torch
    from torch import nn

    class AlmssNet(nn.Module):
        """See the module docstring; ``forward(image, covariates=None) -> logits``."""

        def __init__(
            self,
            classes: int,
            *,
            phases: int,
            liver: bool = True,
            covariates: int = 0,
            shared: bool = False,
            width: int = WIDTH,
            hidden: int = HIDDEN,
            order=None,
        ):
            super().__init__()
            self.phases, self.liver, self.n_covariates = int(phases), bool(liver), int(covariates)
            self.order = list(range(self.phases)) if order is None else [int(i) for i in order]
            if sorted(self.order) != list(range(self.phases)):
                raise ValueError(f"order {self.order} is not a permutation of the phases")
            copies = 1 if shared else self.phases
            self.tumour = nn.ModuleList(_backbone(width) for _ in range(copies))
            self.liver_nets = nn.ModuleList(
                _backbone(width) for _ in range(copies if self.liver else 0)
            )
            features = 8 * width * (2 if self.liver else 1)
            self.project = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
            self.clinical = (
                nn.Sequential(
                    nn.Linear(self.n_covariates, hidden),
                    nn.ReLU(),
                    nn.Linear(hidden, hidden),
                )
                if self.n_covariates
                else None
            )
            self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
            self.classifier = nn.Linear(hidden, classes)

        def phase_features(self, image, covariates=None):
            """``[batch, phases, hidden]``: each phase's image (+ clinical) features."""
            added = None if self.clinical is None else self.clinical(covariates)
            steps = []
            for p in self.order:
                net = self.tumour[p % len(self.tumour)]
                parts = [net(image[:, p : p + 1])]
                if self.liver:
                    liver_net = self.liver_nets[p % len(self.liver_nets)]
                    parts.append(liver_net(image[:, self.phases + p : self.phases + p + 1]))
                feature = self.project(torch.cat(parts, dim=1))
                steps.append(feature if added is None else feature + added)
            return torch.stack(steps, dim=1)

        def forward(self, image, covariates=None):
            sequence, _ = self.lstm(self.phase_features(image, covariates))
            return self.classifier(sequence[:, -1])

    return AlmssNet


def build_almss(
    dims: int,
    in_channels: int,
    classes: int,
    *,
    phases: int | None = None,
    liver: bool = True,
    covariates: int = 0,
    shared: bool = False,
    width: int = WIDTH,
    hidden: int = HIDDEN,
    order=None,
) -> Any:
    """An untrained :class:`AlmssNet` (3D only) for ``in_channels`` = phases x regions."""
    from metcli.core.errors import UsageError

    if dims != 3:
        raise UsageError("--arch almss is a 3D network", fix="give --dims 3 (or leave it out)")
    regions = 2 if liver else 1
    phases = in_channels // regions if phases is None else int(phases)
    if phases * regions != in_channels:
        raise UsageError(
            f"--arch almss with {phases} phase(s) and {regions} region(s) takes "
            f"{phases * regions} channels, not {in_channels}",
            fix="give one CT per phase (--phases) and the liver masks (--seg)",
        )
    return _network_class()(
        classes,
        phases=phases,
        liver=liver,
        covariates=covariates,
        shared=shared,
        width=width,
        hidden=hidden,
        order=order,
    )
