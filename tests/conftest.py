"""Shared fixtures: tiny images, the reference data folder, an isolated CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_data_dir() -> Path:
    return Path(os.environ.get("METCLI_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared reference data (``METCLI_TEST_DATA``); tests skip where it is absent."""
    path = test_data_dir()
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path} (set METCLI_TEST_DATA)")
    return path


def make_image(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """A SimpleITK image from a numpy array indexed [z, y, x]."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    return image


@pytest.fixture(autouse=True)
def _in_an_empty_directory(tmp_path_factory, monkeypatch):
    """Every test runs in an empty current directory, so that nothing a user (or
    ``make demo``) left in the checkout, such as a ``demo/`` folder, can change what
    a test sees. Tests name repository files through ``REPO``."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="module")
def torch_one_thread():
    """One PyTorch thread for a module's tests: on a shared CPU, OpenMP threads waiting
    on each other are far slower. The previous number is put back afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """click's CliRunner with HOME and METCLI_HOME inside the test's folder."""
    from click.testing import CliRunner

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("METCLI_HOME", str(home / ".metcli"))
    return CliRunner()


def invoke(runner, args, expect: int | None = 0):
    """Run ``metcli ARGS`` in-process and check its exit code."""
    from metcli.cli.main import cli

    result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, (
            f"exit {result.exit_code} != {expect}\nstdout:\n{result.stdout}\nstderr:\n"
            f"{result.stderr}"
        )
    return result
