"""The ``eenet`` entry point: signals, ``--debug`` anywhere on the line, and the
subcommands registered on :data:`eenet_cli.app.app`.

Heavy modules (torch, pandas, matplotlib) are imported inside the commands that need
them, so ``eenet --help`` starts fast.
"""

from __future__ import annotations

import os
import sys

from eenet_cli import commands  # noqa: F401  (registers every subcommand on `app`)
from eenet_cli.app import app, state

__all__ = ["app", "main"]


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
        state["debug"] = True
    if os.environ.get("EENET_DEBUG"):
        state["debug"] = True
    try:
        app(args=args, prog_name="eenet")
    except KeyboardInterrupt:
        sys.stderr.write("eenet: interrupted\n")
        sys.exit(130)
    except Terminated as t:
        sys.stderr.write(f"eenet: stopped by {signal.Signals(t.signum).name}\n")
        sys.exit(128 + t.signum)
