"""Every command where users stand: under a pseudo-terminal (80 columns) and piped.

Each command's ``--help`` examples run in order in a scratch folder that holds a link to
``sample_data/`` (later examples use the files earlier ones wrote), first in a terminal,
then with stdout and stderr piped. Each must exit 0 without a traceback, and every file
it names with ``-o`` or ``>`` must be a valid artifact of its kind.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import ROOT

EENET = [sys.executable, "-m", "eenet_cli"]
COMMANDS = ["profile", "dump", "compact", "fit", "apply", "certify", "evaluate", "plot", "schema", "export"]
TIMEOUT = 300


def run_in_terminal(command: str, cwd: Path, columns: int = 80, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Run a shell command with stdin, stdout and stderr on a new pseudo-terminal of
    ``columns`` columns; returns (exit code, everything the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(["bash", "-c", command], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal closed
                data = b""
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None and not select.select([master], [], [], 0)[0]:
            break
        if time.monotonic() > deadline:
            proc.kill()
            break
    os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def run_piped(command: str, cwd: Path, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    p = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def help_examples(command: str) -> list[str]:
    """The example lines of ``eenet COMMAND --help`` (the block after 'Examples:')."""
    p = subprocess.run([*EENET, command, "--help"], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("Example") and line.strip().endswith(":")]
    assert starts, f"eenet {command} --help has no Examples block"
    out = []
    for line in lines[starts[0] + 1 :]:
        if not line.strip():
            if out:
                break
            continue
        if not line.strip().startswith("eenet "):
            break
        out.append(line.strip())
    assert out, f"eenet {command} --help has an empty Examples block"
    return out


def as_shell(example: str) -> str:
    """An example line as a shell command running this checkout's eenet."""
    assert example.startswith("eenet ")
    return re.sub(r"(^|\|\s*)eenet ", lambda m: m.group(1) + shlex.join(EENET) + " ", example)


def written_files(example: str) -> list[str]:
    words = shlex.split(example.replace(">", " > "))
    out = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-o", "--output", ">") and words[i + 1] != "-"]
    return out


def check_artifact(path: Path) -> None:
    """The file exists, is not empty, and parses as its kind."""
    assert path.is_file() and path.stat().st_size > 0, f"{path.name} missing or empty"
    suffix = path.suffix.lower()
    data = path.read_bytes()
    if suffix == ".json":
        doc = json.loads(data)
        assert isinstance(doc, dict) and doc
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(path).num_rows > 0
    elif suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    elif suffix == ".svg":
        assert b"<svg" in data[:2000]
    elif suffix == ".pdf":
        assert data[:5] == b"%PDF-"
    elif suffix == ".csv":
        assert data.count(b"\n") >= 2
    elif suffix == ".eenet":
        import zipfile

        with zipfile.ZipFile(path) as zf:
            assert json.loads(zf.read("manifest.json"))["format"] == "eenet-bundle"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("examples")
    (d / "sample_data").symlink_to(ROOT / "sample_data")
    return d


def _run_examples(command: str, folder: Path, mode: str) -> None:
    for example in help_examples(command):
        shell = as_shell(example)
        if mode == "terminal":
            rc, shown = run_in_terminal(shell, folder)
            assert rc == 0, f"[terminal] {example}\n{shown[-3000:]}"
            assert "Traceback" not in shown, f"[terminal] {example}\n{shown[-3000:]}"
        else:
            rc, out, err = run_piped(shell, folder)
            assert rc == 0, f"[piped] {example}\n{err[-3000:]}"
            assert "Traceback" not in err + out, f"[piped] {example}\n{err[-3000:]}"
            if " -q" not in example and command != "schema":
                assert err.strip(), f"[piped] {example}: no summary line on stderr"
        for name in written_files(example):
            check_artifact(folder / name)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["terminal", "piped"])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_run(command, mode, tmp_path):
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    _run_examples(command, tmp_path, mode)


def test_root_help_examples_run_in_a_terminal(tmp_path):
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    p = subprocess.run([*EENET, "--help"], capture_output=True, text=True)
    examples = [line.strip() for line in p.stdout.splitlines() if line.strip().startswith("eenet ")]
    assert examples
    for example in examples:
        rc, shown = run_in_terminal(as_shell(example), tmp_path)
        assert rc == 0 and "Traceback" not in shown, f"{example}\n{shown[-2000:]}"
        for name in written_files(example):
            check_artifact(tmp_path / name)


def readme_pipeline() -> list[str]:
    """The runnable pipeline of the README (the block under 'Try the pipeline')."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"Try the pipeline.*?```bash\n(.*?)```", text, re.S)
    assert m, "README has no 'Try the pipeline' block"
    return [line.strip() for line in m.group(1).splitlines() if line.strip().startswith("eenet ")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["terminal", "piped"])
def test_readme_pipeline_runs(mode, tmp_path):
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    steps = readme_pipeline()
    assert len(steps) >= 5
    for example in steps:
        shell = as_shell(example)
        if mode == "terminal":
            rc, shown = run_in_terminal(shell, tmp_path)
            assert rc == 0 and "Traceback" not in shown, f"{example}\n{shown[-3000:]}"
        else:
            rc, out, err = run_piped(shell, tmp_path)
            assert rc == 0 and "Traceback" not in err, f"{example}\n{err[-3000:]}"
        for name in written_files(example):
            check_artifact(tmp_path / name)


@pytest.mark.slow
def test_readme_deployment_path_runs(tmp_path):
    """The README's fit -> export -> load-and-run block, piped, from a folder beside the data."""
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"Deploy what you fitted.*?```bash\n(.*?)```", text, re.S)
    assert m, "README has no 'Deploy what you fitted' block"
    steps = [line.strip() for line in m.group(1).splitlines() if line.strip()]
    assert [s.split()[0] for s in steps] == ["eenet", "eenet", "python"]
    for step in steps:
        shell = as_shell(step) if step.startswith("eenet ") else shlex.quote(sys.executable) + step[len("python"):]
        rc, out, err = run_piped(shell, tmp_path)
        assert rc == 0 and "Traceback" not in err, f"{step}\n{err[-3000:]}"
    counts = json.loads(out.split(":", 1)[1])
    assert sum(counts) == 64 and len(counts) == 4


# --------------------------------------------------------------------------- the headline bug


@pytest.mark.parametrize("method", ["eenet", "eenet-search", "lookahead", "maxprob", "patience"])
def test_fit_in_a_terminal_writes_the_policy(method, tmp_path):
    """`eenet fit` crashed whenever stderr was a terminal (a progress-bar field rendered
    before it existed); `> policy.json` was left empty."""
    preds = ROOT / "sample_data" / "digits.parquet"
    rc, shown = run_in_terminal(f"{shlex.join(EENET)} fit {preds} --budget 60% -m {method} > policy.json", tmp_path)
    assert rc == 0 and "Traceback" not in shown, shown[-2000:]
    doc = json.loads((tmp_path / "policy.json").read_text())
    assert doc["method"] == method
    assert f"{method} @ " in shown  # the summary line reached the terminal (stderr)
    rc, shown = run_in_terminal(f"{shlex.join(EENET)} fit {preds} --budget 60% -m {method} -o p2.json", tmp_path)
    assert rc == 0 and json.loads((tmp_path / "p2.json").read_text())["method"] == method


def test_fit_piped_to_a_consumer_with_stderr_on_a_terminal(tmp_path):
    preds = ROOT / "sample_data" / "digits.parquet"
    cmd = f"{shlex.join(EENET)} fit {preds} --budget 60% -m maxprob | {shlex.quote(sys.executable)} -c 'import json,sys; print(json.load(sys.stdin)[\"method\"])'"
    rc, shown = run_in_terminal(cmd, tmp_path)
    assert rc == 0 and "Traceback" not in shown
    assert "maxprob\r\n" in shown or "maxprob\n" in shown


def test_evaluate_table_at_80_columns_keeps_the_met_column(tmp_path):
    preds = ROOT / "sample_data" / "digits.parquet"
    rc, shown = run_in_terminal(f"{shlex.join(EENET)} evaluate {preds} -m maxprob,eenet-geometric,lookahead --budgets 0.5ms,1ms", tmp_path)
    assert rc == 0, shown
    lines = [line for line in shown.splitlines() if "│" in line or "┃" in line]
    assert lines and all(len(re.sub(r"\x1b\[[0-9;]*m", "", line)) <= 80 for line in lines)
    header = next(line for line in lines if "method" in line)
    assert "met" in header and "test acc" in header
    assert "eenet-geometric" in shown and "lookahead" in shown and "…" not in shown


OUTSIDE = ".." + "/shared"  # a folder beside the checkout, which a clone does not have


def test_the_repository_is_complete_without_anything_beside_it():
    """The contract is docs/spec.md; nothing points at files a clone does not have."""
    import subprocess as sp

    tracked = sp.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert "docs/spec.md" in tracked
    offenders = []
    for name in tracked:
        if not name.endswith((".py", ".md", ".toml", ".txt")) or name.startswith(".ci/") or name == "tests/test_terminal.py":
            continue
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        if OUTSIDE in text or "SPEC §" in text or "SPEC.md" in text:
            offenders.append(name)
    assert offenders == [], offenders
