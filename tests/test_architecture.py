"""The library's architecture contract: rooms that depend one way, no cycles, no use of
another room's private names, modules and functions of a readable size, and ruff.

The layer and cycle rules are import-linter contracts (``.importlinter``); the tests
below run them on the real package and on copies with a deliberate violation, to
show that the contract would catch one.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

TOOLKIT = REPO / "toolkit"
CONFIG = REPO / ".importlinter"
ROOMS = (
    "core",
    "io",
    "imaging",
    "segmentation",
    "lesions",
    "radiomics",
    "cnn",
    "prediction",
    "evaluation",
    "synth",
)
#: Largest module and function, in lines (docstrings included).
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 80
#: module (relative to toolkit/) -> why it may be longer, until it is split.
MODULE_EXCEPTIONS: dict[str, str] = {}
#: "module:function" -> why it may be longer.
FUNCTION_EXCEPTIONS: dict[str, str] = {}


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the repository's contract on the package ``root/metcli``."""
    tool = Path(sys.executable).parent / "lint-imports"
    if not tool.exists():
        pytest.skip("import-linter is not installed (pip install 'metcli[test]')")
    env = {
        "PYTHONPATH": str(root),
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    return subprocess.run(
        [str(tool), "--config", str(CONFIG), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _package_copy(tmp_path: Path) -> Path:
    """``tmp_path/metcli``: the library with ``cli/`` inside, as it is installed."""
    package = tmp_path / "metcli"
    shutil.copytree(TOOLKIT, package, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    shutil.copytree(REPO / "cli", package / "cli", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.fixture(scope="module")
def package_root(tmp_path_factory) -> Path:
    return _package_copy(tmp_path_factory.mktemp("package"))


def test_the_contract_holds(package_root):
    result = _lint_imports(package_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, expected",
    [
        # an upward import: the bottom room reaching for the command line
        (
            "core/errors.py",
            "import metcli.cli.main  # deliberate violation\n",
            "metcli.core.errors -> metcli.cli.main",
        ),
        # a sideways import between sibling rooms that must stay independent
        (
            "cnn/fit.py",
            "from metcli.radiomics import models  # deliberate violation\n",
            "metcli.cnn.fit -> metcli.radiomics.models",
        ),
        # a cycle inside a room: batch imports errors, and now errors imports batch
        (
            "core/errors.py",
            "from metcli.core import batch  # deliberate violation\n",
            "No cycles are allowed in metcli.core",
        ),
    ],
)
def test_the_contract_fails_on_a_violation(tmp_path, module, line, expected):
    root = _package_copy(tmp_path)
    path = root / "metcli" / module
    text = path.read_text()
    body = text.index("\nfrom ") + 1 if "\nfrom " in text else 0
    path.write_text(text[:body] + line + text[body:])
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert expected in " ".join(result.stdout.split()), result.stdout


def _room(path: Path) -> str:
    return path.relative_to(TOOLKIT).parts[0]


def private_imports(source: str, room: str) -> list[str]:
    """``metcli.<room>.<module>._name`` imported from outside ``room``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metcli."):
            target = node.module.split(".")[1]
            for alias in node.names:
                if (
                    alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and target != room
                ):
                    found.append(f"{node.module}.{alias.name}")
    return found


def test_no_room_imports_another_rooms_private_names():
    offenders = {}
    for path in TOOLKIT.rglob("*.py"):
        room = _room(path) if path.parent != TOOLKIT else ""
        hits = private_imports(path.read_text(), room)
        if hits:
            offenders[str(path.relative_to(REPO))] = hits
    for path in (REPO / "cli").glob("*.py"):
        hits = private_imports(path.read_text(), "cli")
        if hits:
            offenders[str(path.relative_to(REPO))] = hits
    assert not offenders


def test_the_private_import_check_finds_one():
    source = "from metcli.core.errors import _format\nfrom metcli.io.files import read_tsv\n"
    assert private_imports(source, "radiomics") == ["metcli.core.errors._format"]
    assert private_imports(source, "core") == []


def test_every_room_declares_its_public_api():
    import importlib

    for room in ROOMS:
        module = importlib.import_module(f"metcli.{room}")
        assert module.__doc__, room
        assert isinstance(getattr(module, "__all__", None), list) and module.__all__, room
        for name in module.__all__:
            assert getattr(module, name) is not None, f"metcli.{room}.{name}"
    assert sorted(
        p.name for p in TOOLKIT.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    ) == sorted(ROOMS)
    assert sorted(p.name for p in TOOLKIT.glob("*.py")) == ["__init__.py", "_version.py"]


def test_importing_metcli_stays_light():
    code = (
        "import sys, metcli, metcli.cli.main\n"
        "heavy = [m for m in ('torch', 'nnunetv2', 'monai', 'onnxruntime', 'radiomics',"
        " 'matplotlib', 'sklearn', 'SimpleITK') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""


def test_modules_and_functions_are_of_a_readable_size():
    long_modules, long_functions = {}, {}
    for path in sorted(TOOLKIT.rglob("*.py")) + sorted((REPO / "cli").glob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(REPO))
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and name not in MODULE_EXCEPTIONS:
            long_modules[name] = lines
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                key = f"{name}:{node.name}"
                if length > MAX_FUNCTION_LINES and key not in FUNCTION_EXCEPTIONS:
                    long_functions[key] = length
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_ruff_lint_and_format():
    tool = Path(sys.executable).parent / "ruff"
    if not tool.exists():
        pytest.skip("ruff is not installed (pip install 'metcli[test]')")
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [str(tool), *args, "."], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_points_outside_the_repository():
    hits = []
    for path in REPO.rglob("*"):
        if any(
            part in (".git", ".venv", "demo", "__pycache__", "node_modules")
            for part in path.relative_to(REPO).parts
        ):
            continue
        if path.is_file() and path.suffix in (".py", ".md", ".cfg", ".toml", ".sh", ".yaml"):
            text = path.read_text(errors="ignore")
            if "DESIGN.md" in text and path.name != "test_architecture.py":
                hits.append(str(path.relative_to(REPO)))
    assert not hits


def test_dotted_names_in_docs_and_docstrings_exist():
    """Every ``metcli.<room>.<module>[.<name>]`` the docs and docstrings cite can be imported:
    a moved module or function cannot leave a stale reference behind."""
    import importlib
    import re

    files = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
    files += sorted(TOOLKIT.rglob("*.py")) + sorted((REPO / "cli").glob("*.py"))
    stale = set()
    for path in files:
        for match in re.finditer(r"\bmetcli\.((?:[a-z_]+)(?:\.[A-Za-z_]\w*)*)", path.read_text()):
            parts = ["metcli", *match.group(1).split(".")]
            if parts[1] not in ROOMS:
                continue  # metcli.cli, metcli._version, file names such as metcli.sif
            for k in range(len(parts), 1, -1):
                try:
                    target = importlib.import_module(".".join(parts[:k]))
                except ImportError:
                    continue
                for attribute in parts[k:]:
                    target = getattr(target, attribute, None)
                if target is None:
                    stale.add(f"{path.relative_to(REPO)}: {'.'.join(parts)}")
                break
    assert not stale, sorted(stale)


def _names_used_across_rooms() -> dict[str, dict[str, str]]:
    """room -> {name: module}: what cli, tests, benchmarks and the other rooms import from
    a room's modules (``from metcli.<room>.<module> import name``), modules' own names and
    private names left out."""
    used: dict[str, dict[str, str]] = {room: {} for room in ROOMS}
    files = [p for p in TOOLKIT.rglob("*.py") if p.name != "__init__.py"]
    files += [*(REPO / "cli").glob("*.py"), *(REPO / "tests").glob("*.py")]
    files += [*(REPO / "benchmarks").glob("*.py")]
    for path in files:
        own = path.relative_to(TOOLKIT).parts[0] if TOOLKIT in path.parents else None
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module or "").startswith("metcli."):
                continue
            parts = node.module.split(".")
            if len(parts) < 3 or parts[1] not in used or parts[1] == own:
                continue
            room_dir = TOOLKIT / parts[1]
            for alias in node.names:
                if (
                    alias.name.startswith("_")
                    or (room_dir / f"{alias.name}.py").exists()
                    or (room_dir / alias.name).is_dir()
                ):
                    continue
                used[parts[1]][alias.name] = ".".join(parts[2:])
    return used


def test_each_rooms_api_lists_what_other_code_uses():
    """A name that the command line, the tests, the benchmarks or another room import from
    a room is in that room's ``__all__`` (``_API`` in its ``__init__.py``): a moved or new
    public name cannot be forgotten there."""
    import importlib

    missing = {}
    for room, names in _names_used_across_rooms().items():
        api = importlib.import_module(f"metcli.{room}")._API
        lacking = {
            n: m for n, m in names.items() if api.get(n) != m.split(".")[-1] and api.get(n) != m
        }
        if lacking:
            missing[room] = lacking
    assert not missing, f"add to _API of the room's __init__.py (name: module): {missing}"
