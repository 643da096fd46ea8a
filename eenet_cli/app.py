"""The Typer application: the root command, its options, and the one place that turns
eenet's errors into one line on stderr and an exit code (docs/spec.md §4).

A leaf module: it imports nothing from eenet but the version and the error types, so the
commands (which register themselves on :data:`app`) and the entry point
(:mod:`eenet_cli.cli`) can both import it without a circle.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from eenet_cli._version import __version__
from eenet_cli.errors import EenetError

state = {"debug": False}

COMMAND_ORDER = ["profile", "dump", "compact", "fit", "apply", "certify", "evaluate", "plot", "export", "schema"]


class _Group(TyperGroup):
    """Turns the library's errors into one stderr line and their exit code: 2 bad input,
    1 failed check or work; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except MemoryError:
            if state["debug"]:
                raise
            typer.echo("eenet: error: out of memory; use a smaller input or a machine with more memory", err=True)
            ctx.exit(1)
        except EenetError as e:
            if state["debug"]:
                raise
            typer.echo(f"eenet: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:
            ctx.exit(1)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: (COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER), n))


app = typer.Typer(
    cls=_Group,
    name="eenet",
    help=(
        "Learn and check early-exit policies for multi-exit networks under a latency budget.\n\n"
        "\b\nExamples (on the shipped sample data):\n"
        "  eenet evaluate sample_data/digits.parquet -o results.json\n"
        "  eenet fit sample_data/digits.parquet --budget 60% -o policy.json\n"
        "  eenet plot results.json -o tradeoff.png"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eenet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    if debug or os.environ.get("EENET_DEBUG"):
        state["debug"] = True
