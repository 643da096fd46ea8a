"""Shared pieces of the commands: consoles, progress bars, option types."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Annotated, Optional

import typer

OutputOpt = Annotated[Optional[str], typer.Option("-o", "--output", help="Output file; '-' for stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or log lines on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
CostsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--costs",
        help="Costs JSON file, or inline cumulative costs like 1.2,2.5,3.7ms. Default: the predictions' metadata.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (same inputs + seed = same output).")]


def stderr_console(quiet: bool = False):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def stdout_console():
    from rich.console import Console

    # a pipe gets a wide fixed layout rather than rich's 80-column default
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def log(message: str, quiet: bool = False) -> None:
    """One informational line on stderr, only when stderr is a terminal and not --quiet
    (SPEC §4: logs disappear in pipelines)."""
    if not quiet and sys.stderr.isatty():
        sys.stderr.write(message.rstrip("\n") + "\n")


def report(message: str, quiet: bool = False) -> None:
    """A command's human-readable result on stderr (its data went to stdout or a file);
    suppressed only by --quiet."""
    if not quiet:
        sys.stderr.write(message.rstrip("\n") + "\n")


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, quiet: bool = False, fields: str = "") -> Iterator:
    """A rich progress bar on stderr, shown only when stderr is a terminal and not --quiet.

    Yields ``update(advance=1, **fields)``.
    """
    if quiet or not sys.stderr.isatty():
        yield lambda advance=1, **kw: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    if fields:
        cols.append(TextColumn(fields))
    with Progress(*cols, console=stderr_console(), transient=True) as prog:
        task = prog.add_task(description, total=total)

        def update(advance: int = 1, **kw) -> None:
            prog.update(task, advance=advance, **kw)

        yield update
