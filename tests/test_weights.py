"""Named models: manifest, METCLI_HOME, fetch over HTTP on 127.0.0.1, verify (metcli.io.weights)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest

import metcli.io.weights as weights
from conftest import invoke
from metcli.core.errors import UsageError
from metcli.io.weights import WeightsError


# ============================================================================ fixtures
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A file server on 127.0.0.1 serving tmp_path/served; yields (base URL, folder, hits)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_QuietHandler,), {"hits": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, handler.hits
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "metcli-home"
    monkeypatch.setenv("METCLI_HOME", str(path))
    return path


def model_zip(files: dict[str, bytes] | None = None) -> bytes:
    files = files or {
        "Dataset042_Toy/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json": b'{"plans": 1}',
        "Dataset042_Toy/nnUNetTrainer__nnUNetPlans__3d_fullres/dataset.json": b'{"labels": {}}',
        "Dataset042_Toy/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth": (
            b"weights"
        )
        * 1000,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def entry(name: str, url: str | None, sha256: str | None, **extra) -> dict:
    item = {
        "name": name,
        "description": "a toy model",
        "format": "nnunetv2",
        "source": "download",
        "path": None,
        "url": url,
        "sha256": sha256,
        "verified": sha256 is not None,
        "licence": "CC0-1.0",
        "nnunet": {
            "dataset_id": 42,
            "dataset_name": "Dataset042_Toy",
            "configuration": "3d_fullres",
            "folds": [0],
            "trainer": "nnUNetTrainer",
        },
        "labels": {"background": 0, "liver": 1},
        "label_map": {"1": 1},
        "input": {"modality": "CT", "units": "HU", "channels": 1},
    }
    if sha256 is None:
        item["note"] = "checksum unknown"
    item.update(extra)
    return item


def write_manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"manifest_version": 1, "models": entries}))
    return path


@pytest.fixture
def toy(server, tmp_path, home):
    """A served good archive and a manifest naming it (with its sha256)."""
    base, folder, hits = server
    data = model_zip()
    (folder / "toy.zip").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    manifest = write_manifest(
        tmp_path / "manifest.json",
        [
            entry("toy", f"{base}/toy.zip", sha),
            entry("toy-unknown-sha", f"{base}/toy.zip", None),
            entry("toy-v1", f"{base}/toy.zip", None, format="nnunetv1"),
        ],
    )
    return {
        "base": base,
        "folder": folder,
        "hits": hits,
        "sha": sha,
        "manifest": manifest,
        "data": data,
    }


def leftovers(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []


# ============================================================================ manifest
def test_shipped_manifest_is_valid_and_honest():
    entries = weights.load_manifest()
    names = [e.name for e in entries]
    assert "metcli-demo-nnunet" in names and len(names) == len(set(names))
    assert any(n.startswith("totalsegmentator") for n in names)
    for item in entries:
        if not item["verified"]:
            assert item.get("note"), item.name  # unverified entries say why
        assert item["sha256"] is None or item["verified"], item.name
        assert set(item.label_map.values()) <= {0, 1, 2}
    demo = weights.get_entry("metcli-demo-nnunet")
    assert demo.shipped and "synthetic" in demo["description"]


def test_metcli_home_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("METCLI_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.metcli_home() == tmp_path / ".cache" / "metcli"
    monkeypatch.setenv("METCLI_HOME", str(tmp_path / "shared"))
    assert weights.models_dir() == tmp_path / "shared" / "models"


def test_unknown_name_lists_the_known_ones(toy):
    with pytest.raises(WeightsError, match=r"unknown model name 'nope' \(known: toy, "):
        weights.resolve_model("nope", manifest=toy["manifest"])
    with pytest.raises(WeightsError, match="known: toy"):
        weights.fetch("nope", manifest=toy["manifest"])


def test_a_path_is_taken_as_the_users_model(tmp_path, toy):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert weights.resolve_model(folder, manifest=toy["manifest"]) == folder
    with pytest.raises(WeightsError, match="not found"):
        weights.resolve_model(tmp_path / "missing" / "model", manifest=toy["manifest"])
    with pytest.raises(WeightsError, match="not installed"):
        weights.resolve_model("toy", manifest=toy["manifest"])


def test_a_name_never_means_a_folder_of_the_current_directory(tmp_path, toy, monkeypatch):
    """`make demo` leaves demo/ in the checkout: a folder named like a model must not be
    taken for it, nor the reverse; ./NAME is the folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()
    (tmp_path / "mine").mkdir()
    assert not weights.names_a_path("toy") and weights.names_a_path("./toy")
    assert weights.names_a_path(Path("toy")) and weights.names_a_path("~/models/toy")
    with pytest.raises(WeightsError, match="both a model name in the manifest and a folder") as err:
        weights.resolve_model("toy", manifest=toy["manifest"])
    assert "./toy" in err.value.fix
    assert weights.resolve_model("./toy", manifest=toy["manifest"]) == Path("./toy")
    with pytest.raises(WeightsError, match="unknown model name 'mine'") as err:
        weights.resolve_model("mine", manifest=toy["manifest"])
    assert "write ./mine" in err.value.fix
    assert weights.resolve_model("./mine", manifest=toy["manifest"]) == Path("./mine")


# ============================================================================ fetch
def test_good_archive_installs_and_verifies(toy, home):
    calls = []
    root = weights.fetch(
        "toy", manifest=toy["manifest"], progress=lambda done, total: calls.append((done, total))
    )
    assert (
        root
        == home / "models" / "toy" / "Dataset042_Toy" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    )
    assert (root / "fold_0" / "checkpoint_final.pth").is_file()
    assert calls[-1] == (len(toy["data"]), len(toy["data"]))
    record = json.loads((home / "models" / "toy" / weights.INSTALL_RECORD).read_text())
    assert record["archive_sha256"] == toy["sha"] and record["verified"]
    assert weights.resolve_model("toy", manifest=toy["manifest"]) == root
    [result] = weights.verify("toy", manifest=toy["manifest"])
    assert result.status == "ok"
    assert [p.name for p in (home / "models").iterdir()] == ["toy"]  # no temporary files
    assert not [p for p in leftovers(home) if ".part" in p or ".download" in p]
    # a second fetch finds it installed and downloads nothing
    hits = len(toy["hits"])
    assert weights.fetch("toy", manifest=toy["manifest"]) == root
    assert len(toy["hits"]) == hits


def test_corrupted_archive_is_refused_and_nothing_is_left(toy, home):
    corrupted = bytearray(toy["data"])
    corrupted[len(corrupted) // 2] ^= 0xFF
    (toy["folder"] / "toy.zip").write_bytes(bytes(corrupted))
    with pytest.raises(WeightsError, match="sha256 .* refused and removed"):
        weights.fetch("toy", manifest=toy["manifest"])
    assert leftovers(home) == []


def test_tampered_install_fails_verification(toy, home):
    root = weights.fetch("toy", manifest=toy["manifest"])
    (root / "plans.json").write_text('{"plans": 2}')
    [result] = weights.verify("toy", manifest=toy["manifest"])
    assert result.status == "mismatch" and "plans.json" in result.detail
    with pytest.raises(WeightsError, match="failed its sha256 check"):
        weights.resolve_model("toy", manifest=toy["manifest"])


def test_unknown_checksum_needs_consent(toy, home):
    with pytest.raises(WeightsError, match="--allow-unverified"):
        weights.fetch("toy-unknown-sha", manifest=toy["manifest"])
    assert toy["hits"] == [] and leftovers(home) == []  # refused before downloading
    with pytest.raises(WeightsError, match="refused"):
        weights.fetch("toy-unknown-sha", manifest=toy["manifest"], sha256="0" * 64)
    assert leftovers(home) == []
    root = weights.fetch("toy-unknown-sha", manifest=toy["manifest"], sha256=toy["sha"])
    assert root.is_dir()
    [result] = weights.verify("toy-unknown-sha", manifest=toy["manifest"])
    assert result.status == "unverified"  # the manifest still has no checksum
    with pytest.raises(UsageError, match="64 hexadecimal"):
        weights.fetch("toy-unknown-sha", manifest=toy["manifest"], sha256="abc")


def test_allow_unverified_installs_and_records_the_checksum(toy, home):
    root = weights.fetch("toy-unknown-sha", manifest=toy["manifest"], allow_unverified=True)
    record = json.loads((home / "models" / "toy-unknown-sha" / weights.INSTALL_RECORD).read_text())
    assert record["archive_sha256"] == toy["sha"] and record["verified"] is False
    assert root.is_dir()


def test_unrunnable_format_is_not_downloaded(toy, home):
    with pytest.raises(WeightsError, match="nnunetv1"):
        weights.fetch("toy-v1", manifest=toy["manifest"], allow_unverified=True)
    assert toy["hits"] == [] and leftovers(home) == []


def test_unreachable_url_is_one_clear_error(toy, home):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WeightsError, match="cannot download .*network") as info:
        weights.fetch("toy", manifest=toy["manifest"], url=f"http://127.0.0.1:{port}/toy.zip")
    assert "\n" not in str(info.value)
    assert leftovers(home) == []
    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.fetch("toy", manifest=toy["manifest"], url=f"{toy['base']}/missing.zip")
    assert leftovers(home) == []


def test_mirror_url_still_checks_the_manifest_checksum(toy, home):
    (toy["folder"] / "mirror.zip").write_bytes(model_zip({"other/plans.json": b"{}"}))
    with pytest.raises(WeightsError, match="refused"):
        weights.fetch("toy", manifest=toy["manifest"], url=f"{toy['base']}/mirror.zip")
    assert leftovers(home) == []


def test_unsafe_or_broken_archives_are_refused(server, tmp_path, home):
    base, folder, _ = server
    cases = {
        "slip.zip": model_zip({"../escape.txt": b"x", "m/plans.json": b"{}"}),
        "notzip.zip": b"this is not a zip archive",
    }
    entries = []
    for name, data in cases.items():
        (folder / name).write_bytes(data)
        entries.append(
            entry(name.split(".")[0], f"{base}/{name}", hashlib.sha256(data).hexdigest())
        )
    manifest = write_manifest(tmp_path / "m.json", entries)
    with pytest.raises(WeightsError, match="unsafe member"):
        weights.fetch("slip", manifest=manifest)
    with pytest.raises(WeightsError, match="not a zip"):
        weights.fetch("notzip", manifest=manifest)
    assert leftovers(home) == [] and not (tmp_path / "escape.txt").exists()


def test_overwrite_replaces_an_install(toy, home):
    weights.fetch("toy", manifest=toy["manifest"])
    marker = home / "models" / "toy" / "stray.txt"
    marker.write_text("x")
    weights.fetch("toy", manifest=toy["manifest"], overwrite=True)
    assert not marker.exists()
    assert [p for p in (home / "models").iterdir()] == [home / "models" / "toy"]


def test_shipped_model_checks_its_files(tmp_path, monkeypatch):
    package = tmp_path / "package"
    (package / "demo" / "m" / "fold_0").mkdir(parents=True)
    (package / "demo" / "m" / "plans.json").write_text("{}")
    sha = hashlib.sha256(b"{}").hexdigest()
    monkeypatch.setattr(weights, "shipped_dir", lambda: package)
    item = entry(
        "demo",
        None,
        None,
        source="shipped",
        path="demo/m",
        verified=True,
        files={"plans.json": sha},
    )
    del item["note"]
    manifest = write_manifest(tmp_path / "m.json", [item])
    assert weights.resolve_model("demo", manifest=manifest) == package / "demo" / "m"
    assert weights.verify(manifest=manifest)[0].status == "ok"
    (package / "demo" / "m" / "plans.json").write_text("{ }")
    assert weights.verify(manifest=manifest)[0].status == "mismatch"
    with pytest.raises(UsageError, match="ships with metcli"):
        weights.fetch("demo", manifest=manifest)


# ============================================================================ command line
@pytest.fixture
def cli_manifest(toy, monkeypatch):
    monkeypatch.setattr(weights, "manifest_path", lambda: toy["manifest"])
    return toy


def test_cli_list_fetch_verify(runner, cli_manifest, monkeypatch, tmp_path):
    home = Path(weights.metcli_home())
    listed = invoke(runner, ["weights", "list"])
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split("\t")[:2] == ["name", "status"]
    assert [line.split("\t")[1] for line in lines[1:]] == [
        "not installed",
        "not installed",
        "listed only",
    ]
    fetched = invoke(runner, ["weights", "fetch", "toy"])
    assert fetched.stdout.strip().endswith("nnUNetTrainer__nnUNetPlans__3d_fullres")
    verified = invoke(runner, ["weights", "verify", "toy"])
    assert "toy\tok\t" in verified.stdout
    assert "installed" in invoke(runner, ["weights", "list"]).stdout
    checkpoint = next(home.rglob("checkpoint_final.pth"))
    checkpoint.write_bytes(b"tampered")
    bad = invoke(runner, ["weights", "verify"], expect=1)
    assert "mismatch" in bad.stdout and len(bad.stderr.strip().splitlines()) == 1


def test_cli_errors_are_one_line(runner, cli_manifest):
    toy = cli_manifest
    home = Path(weights.metcli_home())
    corrupted = bytearray(toy["data"])
    corrupted[100] ^= 0x01
    (toy["folder"] / "toy.zip").write_bytes(bytes(corrupted))
    for args, text in (
        (["weights", "fetch", "toy"], "refused and removed"),
        (["weights", "fetch", "nope"], "known: toy, toy-unknown-sha, toy-v1"),
        (["weights", "fetch", "toy", "--url", "http://127.0.0.1:9/x.zip"], "cannot download"),
    ):
        result = invoke(runner, args, expect=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("metcli: error:") and text in lines[0], lines
        assert leftovers(home) == []
