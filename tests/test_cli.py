"""The command line as a user meets it: help, version, exit codes, one-line errors."""

import os
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from conftest import REPO, invoke
from metcli._version import __version__
from metcli.cli import _common
from metcli.cli.main import COMMANDS


def test_help_lists_every_command_with_a_description(runner):
    result = invoke(runner, ["--help"])
    for name in COMMANDS:
        line = next(
            (row for row in result.stdout.splitlines() if row.strip().startswith(name + " ")), None
        )
        assert line is not None, f"{name} missing from --help"
        assert len(line.split(None, 1)) == 2, f"{name} has no description"


def test_every_command_has_help(runner):
    for name in COMMANDS:
        result = invoke(runner, [name, "--help"])
        assert "Usage: " in result.stdout and "--debug" in result.stdout


def test_version(runner):
    assert invoke(runner, ["--version"]).stdout.strip() == f"metcli {__version__}"


def test_unknown_command_is_a_usage_error(runner):
    result = invoke(runner, ["segmentt"], expect=2)
    assert "No such command" in result.stderr


def test_help_and_import_stay_light_and_side_effect_free():
    code = textwrap.dedent("""
        import io, logging, os, sys, contextlib
        env = dict(os.environ)
        import metcli
        assert dict(os.environ) == env, "importing metcli changed the environment"
        handlers = logging.getLogger("metcli").handlers
        assert all(isinstance(h, logging.NullHandler) for h in handlers), handlers
        assert not logging.getLogger().handlers, "importing metcli configured the root logger"
        from metcli.cli.main import cli
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                cli.main(["--help"], prog_name="metcli")
            except SystemExit:
                pass
        heavy = [m for m in ("torch", "nnunetv2", "monai", "onnxruntime", "sklearn", "radiomics")
                 if m in sys.modules]
        assert not heavy, heavy
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "metcli")
    assert os.path.exists(exe), "the metcli console script is not installed in this environment"
    result = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"metcli {__version__}"


# --- the error handling shared by every command, on a throwaway command -------------------
def _command(behaviour):
    @click.command()
    @_common.common_options
    @click.option("--value", default=1)
    @_common.run_command
    def demo(value):
        from metcli.core import errors
        from metcli.core.batch import BatchReport

        if behaviour == "usage":
            raise errors.UsageError("--value 7 is too large", fix="use 1 to 5")
        if behaviour == "input":
            raise errors.ImageError(
                "cannot read the image", path="sub-1_ct.nii.gz", fix="export it again"
            )
        if behaviour == "partial":
            report = BatchReport()
            report.record("sub-1", "done")
            report.record("sub-2", "failed", "sub-2_ct.nii.gz: cannot read the image.")
            _common.finish(report)
        if behaviour == "all-failed":
            report = BatchReport()
            report.record("sub-1", "failed", "sub-1_ct.nii.gz: cannot read the image.")
            report.record("sub-2", "failed", "sub-2_ct.nii.gz: cannot read the image.")
            _common.finish(report)
        if behaviour == "group-failed":
            from metcli.core.batch import group_level

            report = BatchReport()
            report.record("sub-1", "done")
            report.record("sub-2", "skipped")
            with group_level(report):
                raise errors.OutputError("no space left on its device", path="out")
        if behaviour == "group-only-failed":
            from metcli.core.batch import group_level

            with group_level(BatchReport()):
                raise errors.InputError("no participant tables", path="out")
        if behaviour == "warning":
            import warnings

            import numpy as np

            warnings.simplefilter("always")  # each invocation of the test warns again
            warnings.warn("a developer's note", DeprecationWarning, stacklevel=1)
            np.array([0.0]) / np.array([0.0])
        if behaviour == "interrupt":
            raise KeyboardInterrupt
        if behaviour == "bug":
            raise ZeroDivisionError("division by zero")
        click.echo(f"value={value}")

    return demo


@pytest.mark.parametrize(
    "behaviour,code,text",
    [
        ("usage", 2, "--value 7 is too large. Fix: use 1 to 5."),
        ("input", 1, "sub-1_ct.nii.gz: cannot read the image. Fix: export it again."),
        ("partial", 3, "1 of 2 participant(s) failed: sub-2"),
        ("all-failed", 1, "all 2 participant(s) failed: sub-1, sub-2"),
        (
            "group-failed",
            3,
            "out: no space left on its device; 2 participant(s) finished before this and "
            "their outputs are kept. Fix: run the same command again",
        ),
        ("group-only-failed", 1, "out: no participant tables."),
        ("interrupt", 130, "interrupted"),
        ("bug", 1, "unexpected ZeroDivisionError"),
    ],
)
def test_errors_are_one_line_with_exit_codes(behaviour, code, text):
    result = CliRunner().invoke(_command(behaviour), [], catch_exceptions=False)
    assert result.exit_code == code
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("metcli: error:")]
    assert len(error_lines) == 1 and text in error_lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_python_warnings_reach_the_log_at_v_never_stderr_raw():
    """numpy's RuntimeWarnings (a tiny cohort) and libraries' notes stay off stderr; -v
    shows each as one log line."""
    quiet = CliRunner().invoke(_command("warning"), [], catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    verbose = CliRunner().invoke(_command("warning"), ["-v"], catch_exceptions=False)
    assert verbose.exit_code == 0
    text = " ".join(verbose.stderr.split())
    assert "RuntimeWarning: invalid value encountered in divide" in text
    assert "DeprecationWarning: a developer's note" in text
    assert "np.array([0.0])" not in text  # no source lines
    # stderr is not a terminal here (a log file, a cluster job): one line per message
    assert len(verbose.stderr.splitlines()) == 2, verbose.stderr


def test_log_lines_are_never_wrapped_when_stderr_is_not_a_terminal():
    @click.command()
    @_common.common_options
    @_common.run_command
    def demo():
        import logging

        logging.getLogger("metcli.demo").warning("a long warning " + "word " * 60)

    result = CliRunner().invoke(demo, [], catch_exceptions=False)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("WARNING  a long")


def test_debug_shows_the_traceback():
    result = CliRunner().invoke(_command("bug"), ["--debug"], catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_config_file_sets_option_defaults(tmp_path):
    config = tmp_path / "metcli.yaml"
    config.write_text("value: 4\n")
    result = CliRunner().invoke(_command("ok"), ["--config", str(config)])
    assert result.stdout.strip() == "value=4"
    result = CliRunner().invoke(_command("ok"), ["--config", str(config), "--value", "5"])
    assert result.stdout.strip() == "value=5"
    config.write_text("valu: 4\n")
    result = CliRunner().invoke(_command("ok"), ["--config", str(config)])
    assert result.exit_code == 2 and "unknown option 'valu'" in result.stderr


def test_the_library_announces_the_total_to_the_progress_bar():
    """Commands never count items themselves: run_each tells the bar how many follow."""
    from metcli.core.batch import DONE, announce_total, run_each

    class Recorder:
        def __init__(self):
            self.totals, self.items = [], []

        def start(self, total):
            self.totals.append(total)

        def __call__(self, name, status):
            self.items.append((name, status))

    recorder = Recorder()
    run_each(iter(["a", "b", "c"]), key=str, work=lambda item: DONE, progress=recorder)
    assert recorder.totals == [3] and recorder.items == [("a", DONE), ("b", DONE), ("c", DONE)]
    announce_total(lambda name, status: None, 5)  # a plain callback needs no start()


def test_progress_bar_grows_with_each_announced_total(monkeypatch):
    from rich.progress import Progress

    bar = _common._Bar(Progress(disable=True), "demo")
    bar("x", "done")  # before start: nothing to advance, no error
    bar.start(2)
    bar.start(3)
    bar("y", "done")
    task = bar.progress.tasks[0]
    assert (task.total, task.completed) == (5, 1)


@pytest.mark.parametrize(
    "command", ["synth", "train-radiomics", "train-cnn", "evaluate", "evaluate-seg"]
)
@pytest.mark.parametrize("seed", ["-1", str(2**32), "x"])
def test_one_seed_rule_for_every_command(runner, tmp_path, command, seed):
    """An out-of-range seed is a usage error (exit 2) naming --seed, before any work."""
    args = {
        "synth": [tmp_path / "out"],
        "train-radiomics": [tmp_path, tmp_path / "out", "--labels", tmp_path],
        "train-cnn": [tmp_path, tmp_path, tmp_path / "out", "--labels", tmp_path],
        "evaluate": [tmp_path, tmp_path / "out", "--labels", tmp_path],
        "evaluate-seg": [tmp_path, tmp_path, tmp_path / "out"],
    }[command]
    result = invoke(runner, [command, *args, "--seed", seed], expect=2)
    assert "--seed" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_yaml_error_in_config_is_one_line_with_its_position(runner, tmp_path):
    config = tmp_path / "metcli.yaml"
    config.write_text("subjects: [4\nseed: 3\n")
    result = invoke(runner, ["synth", tmp_path / "out", "--config", config], expect=2)
    error = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(error) == 1 and "line 2, column 5" in error[0] and str(config) in error[0]
    assert not (tmp_path / "out").exists()
