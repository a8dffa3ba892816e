"""The registry of CNN architectures: every entry builds, runs and has its Grad-CAM layer;
an architecture registered by a user is listed by ``metcli train-cnn --help`` and trains."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from conftest import invoke

pytest.importorskip("torch")
pytest.importorskip("monai")
from metcli.cnn.networks import architecture_names  # noqa: E402
from metcli.core.errors import UsageError  # noqa: E402

#: The architectures metcli registers itself (the parametrisations below run over them).
BUILT_IN = architecture_names()


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test of this module with one PyTorch thread (conftest.torch_one_thread)."""


def _feature_side(net, layer: str, x) -> tuple[int, ...]:
    """The spatial shape of ``layer``'s output for the input ``x``."""
    import torch

    seen = {}

    def hook(_module, _inputs, output):
        seen["shape"] = tuple(output.shape[2:])

    handle = dict(net.named_modules())[layer].register_forward_hook(hook)
    with torch.no_grad():
        net(x)
    handle.remove()
    return seen["shape"]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", BUILT_IN)
def test_architecture_builds_and_gives_batch_by_classes(name, dims):
    import torch

    from metcli.cnn.networks import build_network, get_architecture

    arch = get_architecture(name)
    assert arch.name == name and arch.description.strip() and arch.min_size >= 1
    if dims not in arch.dims:  # inception_resnet_v2 is 2D only, almss 3D only
        with pytest.raises(UsageError, match="[23]D network"):
            build_network(name, 3, dims=dims, in_channels=2)
        return
    net = build_network(name, 3, dims=dims, in_channels=2).eval()
    assert arch.target_layer in dict(net.named_modules())
    x = torch.rand((2, 2) + (arch.min_size,) * dims)
    with torch.no_grad():
        assert tuple(net(x).shape) == (2, 3)


@pytest.mark.parametrize("name", [n for n in BUILT_IN if n != "almss"])
def test_grad_cam_target_layer_and_stride(name):
    """The target layer's map is input side / target_stride; Grad-CAM maps have the input's
    shape and run from 0 to 1. (almss, 3D with several inputs, has its own Grad-CAM,
    checked against MONAI's in test_almss_cnn.py.)"""
    import torch

    from metcli.cnn.gradcam import GradCam
    from metcli.cnn.networks import build_network, get_architecture

    arch = get_architecture(name)
    side = 2 * arch.target_stride
    net = build_network(name, 2, dims=2, in_channels=1).eval()
    x = torch.rand((1, 1, side, side))
    assert _feature_side(net, arch.target_layer, x) == (2, 2)
    maps = GradCam(net, name, threads=1)(x.numpy(), 1)
    assert maps.shape == (1, side, side) and maps.min() >= 0 and maps.max() <= 1


def test_unknown_and_duplicate_architectures_are_usage_errors():
    from metcli.cnn.networks import build_network, get_architecture, register, unregister

    with pytest.raises(UsageError, match="--arch must be one of densenet121, resnet18"):
        build_network("vgg", 2)
    with pytest.raises(UsageError, match="already registered"):
        register(get_architecture("resnet18"))
    with pytest.raises(UsageError, match="vgg"):
        unregister("vgg")
    assert architecture_names() == BUILT_IN


# ----------------------------------------------------------------------------- a user's network
def _tiny_net(dims: int, in_channels: int, classes: int):
    import torch

    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    norm = torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm3d
    pool = torch.nn.AdaptiveAvgPool2d if dims == 2 else torch.nn.AdaptiveAvgPool3d
    return torch.nn.Sequential(
        OrderedDict(
            conv=conv(in_channels, 4, 3, stride=2, padding=1),
            norm=norm(4),
            relu=torch.nn.ReLU(),
            pool=pool(1),
            flatten=torch.nn.Flatten(),
            fc=torch.nn.Linear(4, classes),
        )
    )


@pytest.fixture
def tiny_architecture():
    """An architecture 'tinynet', registered for one test and removed afterwards."""
    from metcli.cnn.networks import Architecture, register, unregister

    register(
        Architecture(
            name="tinynet",
            build=_tiny_net,
            min_size=8,
            target_layer="relu",
            target_stride=2,
            description="one convolution (a test network)",
        )
    )
    yield "tinynet"
    unregister("tinynet")
    assert architecture_names() == BUILT_IN


def test_a_registered_architecture_is_offered_and_trains(tiny_architecture, runner):
    from metcli.cnn.fit import FitSettings, fit
    from metcli.cnn.options import check_options
    from metcli.cnn.train_cnn import Sample

    help_text = " ".join(invoke(runner, ["train-cnn", "--help"]).stdout.split())
    assert "tinynet" in help_text and "one convolution (a test network)" in help_text
    options = dict(epochs=1, batch_size=4, lr=1e-3, val_patients=1, test_patients=1, device="cpu")
    check_options(arch="tinynet", size=8, **options)
    with pytest.raises(UsageError, match="--size 4 is too small for tinynet"):
        check_options(arch="tinynet", size=4, **options)
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            f"sub-{i:03d}", 1, i % 2, (rng.random((2, 1, 8, 8)) + 0.5 * (i % 2)).astype(np.float32)
        )
        for i in range(6)
    ]
    result = fit(
        samples[:4],
        samples[4:],
        FitSettings(arch="tinynet", n_classes=2, epochs=2, batch_size=4, lr=1e-2),
    )
    assert [r["epoch"] for r in result.rows] == [1, 2] and "conv.weight" in result.kept_state
