"""The networks of ``metcli train-cnn``: a registry with one entry per architecture.

An architecture is an :class:`Architecture`: its name (``--arch``), a builder
``(dims, in_channels, classes) -> torch.nn.Module`` (a network trained from
scratch, 2D or 3D), the smallest input side its downsampling accepts, the layer
Grad-CAM weighs (:mod:`metcli.cnn.gradcam`) with its downsampling from the
input, and a description (the command's help). metcli registers ``densenet121``
and ``resnet18`` (MONAI's), ``almss`` (:mod:`metcli.cnn.almss_net`) and
``inception_resnet_v2`` (timm's, 2D only, for ``--pretrained``);
:func:`register` adds another, :func:`unregister` removes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from metcli.core.registry import Registry


@dataclass(frozen=True)
class Architecture:
    """One network architecture.

    Attributes:
        name: the value of ``--arch``.
        build: ``(dims, in_channels, classes) -> torch.nn.Module``, untrained; it
            imports its libraries itself.
        min_size: the smallest input side (pixels) the network accepts.
        target_layer: the module (a ``named_modules`` name) whose output Grad-CAM
            weighs: the last feature map.
        target_stride: the downsampling from the input to that feature map.
        description: one line for the command's help.
        dims: the input dimensionalities it builds (``--dims``).
        default_size, resize: its 2D defaults of ``--size`` and ``--resize``.
    """

    name: str
    build: Callable[[int, int, int], Any]
    min_size: int
    target_layer: str
    target_stride: int
    description: str
    #: the input dimensionalities it builds (2: slices, 3: cubes)
    dims: tuple[int, ...] = (2, 3)
    #: its default ``--size`` in 2D (None: train-cnn's, 224) and ``--resize`` mode
    default_size: int | None = None
    resize: str = "bilinear"


_REGISTRY: Registry[Architecture] = Registry(
    "network architecture",
    unknown=lambda name, known: f"--arch must be one of {known}, got {name!r}",
)
#: Add an :class:`Architecture` (its name must be new); returns it.
register = _REGISTRY.register
#: Remove an architecture by name; returns it.
unregister = _REGISTRY.unregister
#: The registered architecture of a name; an unknown name lists the known ones.
get_architecture = _REGISTRY.get
#: The registered architectures' names, in the order they were registered.
architecture_names = _REGISTRY.names
#: One sentence per architecture, ``name: description``, for the command's help.
architectures_help = _REGISTRY.help


def build_network(
    arch: str, n_classes: int, *, dims: int = 2, in_channels: int = 1, options: dict | None = None
):
    """The network ``arch`` (untrained), 2D or 3D, with ``in_channels`` inputs.

    ``options``: the architecture's own keyword arguments (the card's ``network``;
    ``almss``: phases, liver, covariates, shared, width, hidden).
    """
    return get_architecture(arch).build(dims, in_channels, n_classes, **(options or {}))


def _densenet121(dims: int, in_channels: int, classes: int):
    from monai.networks import nets

    return nets.DenseNet121(spatial_dims=dims, in_channels=in_channels, out_channels=classes)


def _resnet18(dims: int, in_channels: int, classes: int):
    from monai.networks import nets

    return nets.resnet18(spatial_dims=dims, n_input_channels=in_channels, num_classes=classes)


register(
    Architecture(
        name="densenet121",
        build=_densenet121,
        min_size=32,
        target_layer="class_layers.relu",
        target_stride=32,
        description="MONAI DenseNet-121 (the study's network); --size 32 or more",
    )
)
register(
    Architecture(
        name="resnet18",
        build=_resnet18,
        min_size=16,
        target_layer="layer4",
        target_stride=16,  # MONAI's resnet18 keeps its first convolution at stride 1
        description="MONAI ResNet-18 (first convolution at stride 1); --size 16 or more",
    )
)


def _almss(dims: int, in_channels: int, classes: int, **options):
    from metcli.cnn.almss_net import build_almss

    return build_almss(dims, in_channels, classes, **options)


register(
    Architecture(
        name="almss",
        build=_almss,
        min_size=16,
        target_layer="tumour.0.layer4",
        target_stride=32,  # stride-2 first convolution, max pooling, three stride-2 stages
        description="the 2024 ALMSS network: per phase a 3D ResNet on the tumour and one "
        "on the liver (--seg), covariates through an MLP, an LSTM over the phases; 3D only",
        dims=(3,),
    )
)


def _inception_resnet_v2(dims: int, in_channels: int, classes: int):
    """timm's Inception-ResNet-V2 (2D only), untrained; ``--pretrained`` loads weights into it
    (:mod:`metcli.cnn.pretrained`)."""
    import timm

    if dims != 2:
        from metcli.core.errors import UsageError

        raise UsageError(
            f"inception_resnet_v2 is a 2D network; --dims {dims} is not possible",
            fix="use --dims 2, or another --arch for 3D",
        )
    return timm.create_model(
        "inception_resnet_v2", pretrained=False, num_classes=classes, in_chans=in_channels
    )


register(
    Architecture(
        name="inception_resnet_v2",
        build=_inception_resnet_v2,
        min_size=75,
        target_layer="conv2d_7b",
        # valid convolutions: conv2d_7b's map has floor((side - 43) / 32) cells per side
        # (75 px: 1, 108: 2, 299: 8); 54 is the input side per cell at two cells
        target_stride=54,
        description="timm Inception-ResNet-V2 (the non-contrast MRI study's network; 2D "
        "only; 299 px, bicubic by default; --pretrained for transfer learning); --size 75 "
        "or more",
        dims=(2,),
        default_size=299,
        resize="bicubic",
    )
)
