"""What every metcli command shares: options, error handling, logging, progress.

Exit codes: 0 success, 1 error (nothing done: every participant failed, or the
command failed before any finished), 2 usage error, 3 some participants failed or the
group-level step failed after some finished (their outputs kept), 130 interrupted.
Errors are printed as one line on stderr; ``--debug`` prints the traceback as well.
stdout carries results only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

_stderr_console = None


def stderr_console():
    global _stderr_console
    if _stderr_console is None:
        from rich.console import Console

        _stderr_console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _stderr_console


def echo_error(message: str) -> None:
    click.echo(f"metcli: error: {message}", err=True)


# ----------------------------------------------------------------------------- logging
def setup_logging(verbose: int, quiet: bool, debug: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2 or debug:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logger = logging.getLogger("metcli")
    for handler in list(logger.handlers):
        if getattr(handler, "_metcli_cli", False):
            logger.removeHandler(handler)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(
            console=stderr_console(),
            show_time=False,
            show_path=debug,
            markup=False,
            rich_tracebacks=debug,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # a log file or a cluster job's stderr: one line per message, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    handler._metcli_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    warnings.showwarning = _warning_to_log


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (numpy's RuntimeWarnings on a tiny cohort, a library's
    deprecation notes) are for developers: one line in the log at -v, never raw on
    stderr."""
    logging.getLogger("metcli.warnings").info(
        "%s: %s (%s:%d)", category.__name__, message, Path(filename).name, lineno
    )


# ----------------------------------------------------------------------------- config files
def _yaml_problem(exc: Exception) -> str:
    """One line for a YAML parser's error: what and where (line and column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is not None and problem:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _load_config(ctx: click.Context, _param, value):
    """``--config FILE``: a YAML or JSON mapping of option names to default values."""
    if value is None:
        return None
    import yaml

    path = Path(value)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(
            f"{path}: cannot read it as YAML or JSON ({_yaml_problem(exc)})",
            param_hint="--config",
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise click.BadParameter(
            f"{path}: must hold a mapping of option names to values", param_hint="--config"
        )
    known = {p.name for p in ctx.command.params}
    defaults = {}
    for key, val in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known or name == "config":
            raise click.BadParameter(
                f"{path}: unknown option {key!r} for '{ctx.command.name}' "
                f"(known: {', '.join(sorted(k.replace('_', '-') for k in known if k != 'config'))})",  # noqa: E501
                param_hint="--config",
            )
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


# ----------------------------------------------------------------------------- options
def common_options(fn: Callable) -> Callable:
    """-v/-q, --no-progress, --debug and --config, shared by every command."""
    fn = click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="YAML/JSON file of option values (command-line options win).",
    )(fn)
    fn = click.option("--debug", is_flag=True, help="Show tracebacks of errors.")(fn)
    fn = click.option("--no-progress", is_flag=True, help="Hide progress bars.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="Only print errors.")(fn)
    fn = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")(fn)
    return fn


def participant_options(fn: Callable) -> Callable:
    """--participant-label (repeatable) and --level, as in BIDS apps."""
    fn = click.option(
        "--level",
        type=click.Choice(["participant", "group", "both"]),
        default=None,
        help="Analysis level. Default: both, or participant only when "
        "--participant-label is given.",
    )(fn)
    fn = click.option(
        "--participant-label",
        "participant_label",
        multiple=True,
        metavar="LABEL",
        help="Process only this participant (repeatable; with or without 'sub-').",
    )(fn)
    return fn


def training_label_options(fn: Callable) -> Callable:
    """--labels, --label-column and --positive-class of the training commands."""
    fn = click.option(
        "--positive-class",
        default=None,
        help="Positive class of a binary model. Default: the label that sorts last.",
    )(fn)
    fn = click.option(
        "--label-column",
        default="primary",
        show_default=True,
        help="Column of --labels that holds the class of each participant.",
    )(fn)
    fn = click.option(
        "--labels",
        type=click.Path(exists=True, path_type=Path),
        required=True,
        help="participants.tsv with the label column (or the folder holding it).",
    )(fn)
    return fn


def overwrite_option(fn: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True, help="Redo outputs that are already done.")(fn)


def _available_cpus() -> int:
    from metcli.core.threads import available_cpus

    return available_cpus()


def threads_option(what: str):
    """``--threads N``: PyTorch's CPU threads for ``what`` (default: the CPUs this process may
    use)."""

    def wrap(fn):
        return click.option(
            "--threads",
            type=click.IntRange(min=1),
            default=_available_cpus,
            show_default="the CPUs this process may use",
            help=f"PyTorch CPU threads for {what}; 1 on a machine shared with "
            "other jobs (busy cores make torch's threads wait). Does not "
            "count as a setting for skipping finished outputs.",
        )(fn)

    return wrap


#: The largest seed (numpy's and scikit-learn's random states take 32-bit seeds).
MAX_SEED = 2**32 - 1


def seed_option(default: int = 0):
    """``--seed``, the same rule in every command: an integer from 0 to 2^32-1."""

    def wrap(fn):
        return click.option(
            "--seed",
            type=click.IntRange(0, MAX_SEED),
            default=default,
            show_default=True,
            help="Random seed, 0 to 2^32-1 (same inputs and seed give the same outputs).",
        )(fn)

    return wrap


# ----------------------------------------------------------------------------- running
def run_command(fn: Callable) -> Callable:
    """Wrap a click callback: logging set-up, one-line errors and exit codes."""

    @functools.wraps(fn)
    def wrapper(
        *args,
        verbose: int = 0,
        quiet: bool = False,
        debug: bool = False,
        no_progress: bool = False,
        **kwargs,
    ):
        from metcli.core.errors import MetcliError, ParticipantsFailed, PartlyDone, UsageError

        setup_logging(verbose, quiet, debug)
        ctx = click.get_current_context()
        ctx.obj = {
            "progress": not no_progress and not quiet and sys.stderr.isatty(),
            "quiet": quiet,
            "debug": debug,
        }
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            echo_error("interrupted; outputs not finished were not written")
            ctx.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except (ParticipantsFailed, PartlyDone) as exc:
            if debug:
                traceback.print_exc()
            echo_error(exc.one_line())
            nothing_done = isinstance(exc, ParticipantsFailed) and exc.all_failed
            ctx.exit(EXIT_ERROR if nothing_done else EXIT_PARTIAL)
        except UsageError as exc:
            if debug:
                traceback.print_exc()
            echo_error(exc.one_line())
            ctx.exit(EXIT_USAGE)
        except MetcliError as exc:
            if debug:
                traceback.print_exc()
            echo_error(exc.one_line())
            ctx.exit(EXIT_ERROR)
        except Exception as exc:  # noqa: BLE001 - last resort, one line unless --debug
            if debug:
                traceback.print_exc()
            echo_error(
                f"unexpected {type(exc).__name__}: {exc} "
                "(run again with --debug for the traceback and report it)"
            )
            ctx.exit(EXIT_ERROR)

    return wrapper


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None = None
) -> Iterator[Callable[[str, str], None]]:
    """A rich progress bar on stderr; yields the callback the library calls per item.

    The library announces the number of items through the callback's ``start(total)``
    (:func:`metcli.core.batch.announce_total`); ``total`` starts the bar at once.
    """
    ctx = click.get_current_context(silent=True)
    enabled = bool(ctx and ctx.obj and ctx.obj.get("progress"))
    if not enabled:
        yield _NoProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=stderr_console(),
        transient=True,
    ) as progress:
        bar = _Bar(progress, description)
        if total:
            bar.start(total)
        yield bar


class _NoProgress:
    def __call__(self, name: str, status: str) -> None:
        pass

    def start(self, total: int) -> None:
        pass


class _Bar:
    """The callback of :func:`progress_bar`: one rich task, created when its total is known
    (a second ``start`` adds to the total)."""

    def __init__(self, progress, description: str):
        self.progress, self.description, self.task, self.total = progress, description, None, 0

    def start(self, total: int) -> None:
        if total <= 0:
            return
        self.total += total
        if self.task is None:
            self.task = self.progress.add_task(self.description, total=self.total, last="")
        else:
            self.progress.update(self.task, total=self.total)

    def __call__(self, name: str, status: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=1, last=f"{name}: {status}")


def finish(report, *, what: str = "participants") -> None:
    """Print the batch summary on stderr; raise ParticipantsFailed if any failed."""
    from metcli.core.errors import ParticipantsFailed

    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.obj and ctx.obj.get("quiet"))
    counts = report.counts()
    if report.failed:
        from rich.table import Table

        table = Table(title=f"{len(report.failed)} failed", title_justify="left")
        table.add_column("item")
        table.add_column("error")
        for name, message in sorted(report.failed.items()):
            table.add_row(name, message)
        stderr_console().print(table)
    if not quiet:
        click.echo(
            f"{what}: {counts['done']} done, {counts['skipped']} skipped (already done), "
            f"{counts['failed']} failed",
            err=True,
        )
    if report.failed:
        raise ParticipantsFailed(report.failed, total=len(report.status))


def path_arg(name: str, *, exists: bool = True, file_okay: bool = True, dir_okay: bool = True):
    return click.argument(
        name, type=click.Path(exists=exists, file_okay=file_okay, dir_okay=dir_okay, path_type=Path)
    )


def kwargs_subset(d: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: d[n] for n in names if n in d}


# ----------------------------------------------------------------------------- registries
class RegistryChoice(click.Choice):
    """The names of a registry (classifiers, backends, networks), read when the option is
    shown or parsed, so that an entry registered before the command runs is accepted."""

    def __init__(self, names: Callable[[], Sequence[str]]):
        self._names = names
        super().__init__((), case_sensitive=True)

    @property
    def choices(self):
        return tuple(self._names())

    @choices.setter
    def choices(self, _value):
        pass  # click.Choice.__init__ sets it; the registry is the only source


class DynamicHelpOption(click.Option):
    """An option whose help is made by ``help_from()`` when the help is shown (the
    registry's entries and their descriptions)."""

    def __init__(self, *args, help_from: Callable[[], str], **kwargs):
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx):
        self.help = self.help_from()
        return super().get_help_record(ctx)
