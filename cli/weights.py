"""``metcli weights list|fetch|verify``: the named models (library: metcli.io.weights)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import click

from metcli.cli._common import common_options, overwrite_option, run_command, stderr_console


def _print_table(rows: list[dict], columns: list[str], title: str) -> None:
    """Rows on stdout: a table for a terminal, tab-separated text for a pipe."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*[_cell(row.get(c)) for c in columns])
        Console(highlight=False).print(table)
        return
    click.echo("\t".join(columns))
    for row in rows:
        click.echo("\t".join(_cell(row.get(c)) for c in columns))


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(str(value).split())


@contextlib.contextmanager
def _download_bar(name: str) -> Iterator:
    ctx = click.get_current_context(silent=True)
    if not (ctx and ctx.obj and ctx.obj.get("progress")):
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn(f"fetch {name}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    ) as progress:
        task = progress.add_task(name, total=None)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@click.group("weights")
@common_options
@click.pass_context
def command(ctx, verbose, quiet, no_progress, debug):
    """Named segmentation models: list them, download them, check them.

    Models come from weights/manifest.json: shipped with metcli (the demo model) or
    downloaded on request into METCLI_HOME/models/ (default ~/.cache/metcli; point
    METCLI_HOME at a shared read-only folder on a cluster). Nothing downloads
    unless you run 'metcli weights fetch'. The options above also work after the
    subcommand.
    """
    # Options given to the group become the defaults of the subcommand's own.
    shared = {"verbose": verbose, "quiet": quiet, "no_progress": no_progress, "debug": debug}
    ctx.default_map = {name: dict(shared) for name in ctx.command.commands}


@command.command("list")
@common_options
@run_command
def list_command():
    """List the models of the manifest with their status (stdout)."""
    from metcli.io.weights import list_models, metcli_home

    rows = list_models()
    _print_table(
        rows,
        ["name", "status", "format", "source", "verified", "licence", "description"],
        title=f"models (METCLI_HOME={metcli_home()})",
    )


@command.command("fetch")
@click.argument("name")
@click.option(
    "--url",
    default=None,
    metavar="URL",
    help="Download from this URL (a mirror) instead of the manifest's.",
)
@click.option(
    "--sha256",
    "sha256",
    default=None,
    metavar="HEX",
    help="Expected sha256 of the download, for a model whose checksum the manifest does not know.",
)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Install even though no checksum is known (the computed one is recorded).",
)
@overwrite_option
@common_options
@run_command
def fetch_command(name, url, sha256, allow_unverified, overwrite):
    """Download model NAME, check its sha256 and install it under METCLI_HOME.

    A download whose sha256 differs from the expected one is refused and removed;
    nothing is left behind by a failed download. Prints the installed model folder.
    """
    from metcli.io.weights import fetch

    with _download_bar(name) as progress:
        path = fetch(
            name,
            url=url,
            sha256=sha256,
            allow_unverified=allow_unverified,
            progress=progress,
            overwrite=overwrite,
        )
    click.echo(str(path))


@command.command("verify")
@click.argument("name", required=False)
@common_options
@run_command
def verify_command(name):
    """Re-hash the shipped and installed models (or NAME) against the manifest.

    Exit code 1 when a model's files do not match.
    """
    from metcli.core.errors import WeightsError
    from metcli.io.weights import verify

    results = verify(name)
    _print_table([r.row() for r in results], ["name", "status", "detail"], title="models")
    bad = [r.name for r in results if r.status == "mismatch"]
    if bad:
        raise WeightsError(
            f"{len(bad)} model(s) do not match their checksums: {', '.join(bad)}",
            fix="fetch them again with 'metcli weights fetch NAME --overwrite'",
        )
