"""The ``eenet`` command line: thin typer commands over the library.

The only place that knows exit codes: an :class:`~eenet_cli.errors.EenetError` becomes
one line on stderr and its exit code (2 bad input, 1 failed check/work); anything else is
a bug and keeps its traceback. Heavy modules (torch, pandas, matplotlib) are imported
inside the commands that need them, so ``eenet --help`` starts fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from eenet_cli._version import __version__
from eenet_cli.errors import EenetError

_state = {"debug": False}


class _Group(TyperGroup):
    """Turns the library's errors into one stderr line and their exit code (docs/spec.md §4)."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except MemoryError:
            if _state["debug"]:
                raise
            typer.echo("eenet: error: out of memory; use a smaller input or a machine with more memory", err=True)
            ctx.exit(1)
        except EenetError as e:
            if _state["debug"]:
                raise
            typer.echo(f"eenet: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:
            ctx.exit(1)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        order = ["profile", "dump", "fit", "apply", "evaluate", "plot", "schema"]
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


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
        _state["debug"] = True


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind like Ctrl-C, so temporary files are removed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import signal

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _on_signal)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:  # accepted anywhere on the line, not only before the command
        args = [a for a in args if a != "--debug"]
        _state["debug"] = True
    if os.environ.get("EENET_DEBUG"):
        _state["debug"] = True
    try:
        app(args=args, prog_name="eenet")
    except KeyboardInterrupt:
        sys.stderr.write("eenet: interrupted\n")
        sys.exit(130)
    except Terminated as t:
        import signal

        sys.stderr.write(f"eenet: stopped by {signal.Signals(t.signum).name}\n")
        sys.exit(128 + t.signum)


from eenet_cli import commands  # noqa: E402,F401  (registers the subcommands on `app`)
