"""What the commands show and where: the one rule for stdout and stderr, consoles,
progress bars and tables (docs/spec.md §4, "Streams"). The only module that decides
which stream gets what.

The rule, the same for every command:

* A command has one *artifact* (costs, predictions, policy, per-sample exits, results, an
  image). It goes to ``-o FILE``; with ``-o -``, or with no ``-o`` when stdout is not a
  terminal, it goes to stdout, written only once it is complete. With no ``-o`` on a
  terminal, a command with a human view (profile, apply, evaluate) shows it instead of
  the artifact; fit prints its JSON; a binary artifact (Parquet, an image) is refused
  before any work.
* ``--json`` asks for a JSON document on stdout. Two documents never share stdout: where
  it would, the command refuses before any work.
* Human views (tables) go to stdout only when stdout is a terminal and carries nothing
  else; otherwise to stderr.
* A one-line summary of what was done goes to stderr on every run, terminal or not.
  Progress bars are drawn only when stderr is a terminal.
* ``-q`` silences everything on stderr but errors and warnings; the artifact is still
  written.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

PIPE_WIDTH = 160  # a table written to a pipe or a log file gets this width (a terminal its own)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


@dataclass(frozen=True)
class Streams:
    """Where one run's artifact, JSON document and human view go (decided before any work)."""

    artifact: str | None  # a path, "-" for stdout, or None (not written)
    json: bool  # a JSON document (not the artifact) goes to stdout
    quiet: bool

    @property
    def stdout_taken(self) -> bool:
        return self.artifact == "-" or self.json

    def view_console(self):
        """The console for a human view (a table), or None when -q silences it."""
        if self.stdout_taken or not stdout_is_terminal():
            return None if self.quiet else stderr_console()
        return stdout_console()

    def summary(self, message: str) -> None:
        summary(message, self.quiet)

    def write_text_artifact(self, text: str) -> None:
        """A text (JSON) artifact to its file and/or stdout, once complete."""
        from eenet_cli.artifacts.files import write_text

        if self.artifact == "-" or (self.json and self.artifact is None):
            write_stdout_bytes(text.encode("utf-8"))
        elif self.artifact is not None:
            write_text(self.artifact, text)
            if self.json:
                write_stdout_bytes(text.encode("utf-8"))


def plan_streams(
    output: str | None,
    *,
    what: str,
    binary: bool = False,
    json_out: bool = False,
    json_is_artifact: bool = False,
    terminal_view: bool = True,
    quiet: bool = False,
    inputs: list[tuple[str, str | None]] = (),
) -> Streams:
    """Resolve the stream rule for one run; refuses a conflict with one line (exit 2).

    ``what`` names the artifact in messages ("policy", "predictions"). ``json_is_artifact``:
    ``--json`` asks for the artifact itself as JSON on stdout (evaluate, profile); otherwise
    ``--json`` is a separate summary document (apply, dump). ``terminal_view``: with no
    ``-o`` on a terminal the command shows a human view instead of writing the artifact;
    without one, a text artifact still goes to stdout and a binary one is refused.
    ``inputs`` are (label, path) pairs the output must not overwrite.
    """
    from eenet_cli.artifacts.files import check_output_path, refuse_output_onto_inputs
    from eenet_cli.errors import InputError

    if output is not None and output != "-":
        check_output_path(output)
        refuse_output_onto_inputs(output, list(inputs))
        return Streams(output, json_out, quiet)
    if json_out:
        if output == "-" and not json_is_artifact:
            raise InputError(f"-o - and --json would both write to stdout; write the {what} to a file with -o FILE", field="--output")
        return Streams(None, True, quiet)
    terminal = stdout_is_terminal()
    if output == "-" or not terminal or not terminal_view:
        if binary and terminal:
            raise InputError(f"will not write the {what} (binary) to a terminal; give -o FILE or redirect stdout", field="--output")
        return Streams("-", False, quiet)
    return Streams(None, False, quiet)


def write_stdout_bytes(data: bytes) -> None:
    """The artifact on stdout in one piece (only once it is complete)."""
    from eenet_cli.errors import WorkFailed

    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise WorkFailed(f"cannot write ({e.strerror or e})", source="<stdout>") from None


def stderr_console(quiet: bool = False):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False, width=None if sys.stderr.isatty() else PIPE_WIDTH)


def stdout_console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


def summary(message: str, quiet: bool = False) -> None:
    """A line on stderr saying what was done (or used); shown terminal or not, unless -q."""
    if not quiet:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()


def warn(message: str) -> None:
    """A warning on stderr; shown even with -q."""
    sys.stderr.write(f"eenet: warning: {message.rstrip()}\n")


def fit_table_columns(console, columns: list[tuple[str, str, int, list[str]]]):
    """A rich Table of ``columns`` (header, justify, priority, cells) that fits the console:
    at a narrow width the columns of the highest priority number go first; columns of
    priority 0 are never dropped."""
    from rich.table import Table

    width = console.width if console is not None else PIPE_WIDTH
    keep = list(columns)

    def needed(cols) -> int:
        # one space of padding each side plus a border per column, plus the outer border
        return sum(max([len(h)] + [len(c) for c in cells]) + 3 for h, _, _, cells in cols) + 1

    while needed(keep) > width:
        droppable = [c for c in keep if c[2] > 0]
        if not droppable:
            break
        keep.remove(max(droppable, key=lambda c: (c[2], keep.index(c))))
    table = Table(title_style="bold")
    for header, just, _, _ in keep:
        table.add_column(header, justify=just, no_wrap=True, overflow="fold")
    return table, [columns.index(c) for c in keep]


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, quiet: bool = False, fields: dict[str, str] | None = None) -> Iterator:
    """A rich progress bar on stderr, drawn only when stderr is a terminal and not -q.

    ``fields`` maps extra fields (identifiers) to their labels; each is shown as
    ``label value`` after the bar, "-" until its first update. Yields
    ``update(advance=1, **fields)``.
    """
    if quiet or not sys.stderr.isatty():
        yield lambda advance=1, **kw: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    fields = dict(fields or {})
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    cols += [TextColumn(f"{label} {{task.fields[{name}]}}") for name, label in fields.items()]
    with Progress(*cols, console=stderr_console(), transient=True) as prog:
        # the fields exist from the first render on: rich may draw before the first update
        task = prog.add_task(description, total=total, **{name: "-" for name in fields})

        def update(advance: int = 1, **kw) -> None:
            prog.update(task, advance=advance, **kw)

        yield update
