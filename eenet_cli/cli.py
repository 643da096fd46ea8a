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

from eenet_cli._version import __version__
from eenet_cli.errors import EenetError

app = typer.Typer(
    name="eenet",
    help=(
        "Learn and check early-exit policies for multi-exit networks under a latency budget.\n\n"
        "Example (on the shipped sample data):\n\n"
        "  eenet evaluate sample_data/digits.parquet --budgets 4 -o results.json"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False, "quiet": False}


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
    _state["debug"] = debug or bool(os.environ.get("EENET_DEBUG"))


def _register() -> None:
    from eenet_cli import commands  # noqa: F401  (imports register the commands on `app`)


def main(argv: list[str] | None = None) -> None:
    """Console entry point with the error boundary of SPEC §4."""
    _register()
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        _state["debug"] = True
    try:
        app(args=args, prog_name="eenet", standalone_mode=False)
    except EenetError as e:
        if _state["debug"]:
            raise
        sys.stderr.write(f"eenet: error: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("eenet: interrupted\n")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.stderr.write("eenet: aborted\n")
            sys.exit(1)
        raise
