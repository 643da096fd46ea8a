"""Run many ``eenet`` command lines fast: import once, fork a child per command line.

Usage: ``python zygote.py CWD JOBS.json OUTDIR``. ``JOBS.json`` is ``{"id": [args...]}``.
Each child is a fresh process that runs ``python -m eenet_cli ARGS`` exactly as the
interpreter would (``runpy`` on ``eenet_cli.__main__`` with ``sys.argv`` set), with stdin
from /dev/null and stdout/stderr written to ``OUTDIR/<id>.out`` / ``.err``; its exit status
goes to ``OUTDIR/<id>.rc`` and its wall time to ``OUTDIR/<id>.seconds``. Only the start-up imports are shared (the parent reads no
file and starts no thread before forking), which cuts each command from ~1-2 s to
~0.1 s. The test suite also runs a sample of the same cases through a real
``python -m eenet_cli`` subprocess.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
import traceback


def _child(cwd: str, args: list[str], out: str, err: str) -> None:
    code = 1
    try:
        os.chdir(cwd)
        fd_in = os.open(os.devnull, os.O_RDONLY)
        fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fd_err = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd_in, 0)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        sys.argv = [sys.executable, *args]
        try:
            runpy.run_module("eenet_cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                sys.stderr.write(f"{e.code}\n")
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    cwd, jobs_path, outdir = sys.argv[1:4]
    parallel = int(os.environ.get("EENET_ZYGOTE_JOBS", "3"))
    timeout = float(os.environ.get("EENET_ZYGOTE_TIMEOUT", "120"))
    with open(jobs_path) as fh:
        jobs = list(json.load(fh).items())
    # what `python -m eenet_cli` and the commands import anyway, so children start warm
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import rich.console  # noqa: F401
    import rich.table  # noqa: F401

    import eenet_cli.__main__  # noqa: F401
    import eenet_cli.api  # noqa: F401
    import eenet_cli.artifacts.costs  # noqa: F401
    import eenet_cli.cli  # noqa: F401
    import eenet_cli.core.methods  # noqa: F401

    for name in ("typer._adapters", "pydantic", "pydoc", "pkgutil", "asyncio", "csv", "email", "calendar", "concurrent.futures"):
        try:  # what typer imports when it runs a command (depends on its version)
            __import__(name)
        except ImportError:
            pass

    commands = {args[0] for _, args in jobs if args}
    if commands & {"dump", "profile"}:  # torch takes seconds to import: once, here
        import torch  # noqa: F401

        import eenet_cli.commands.profile  # noqa: F401
        import eenet_cli.runtime.load  # noqa: F401
    if "plot" in commands:
        import eenet_cli.commands.plot  # noqa: F401
        import eenet_cli.plotting  # noqa: F401  (matplotlib)

    sys.modules.pop("eenet_cli.__main__", None)  # runpy warns when it is already imported
    running: dict[int, tuple[str, float]] = {}
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < parallel:
            case_id, args = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(cwd, args, os.path.join(outdir, f"{case_id}.out"), os.path.join(outdir, f"{case_id}.err"))
            running[pid] = (case_id, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for p, (case_id, start) in list(running.items()):
                if now - start > timeout:
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.005)
            continue
        case_id, start = running.pop(pid)
        rc = os.waitstatus_to_exitcode(status)
        with open(os.path.join(outdir, f"{case_id}.rc"), "w") as fh:
            fh.write(str(rc))
        with open(os.path.join(outdir, f"{case_id}.seconds"), "w") as fh:
            fh.write(f"{time.monotonic() - start:.3f}")


if __name__ == "__main__":
    main()
