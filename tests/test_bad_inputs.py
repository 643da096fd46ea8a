"""Every command, fed bad input through the real CLI (a subprocess), must exit 2 with one
clear line on stderr naming the file or option, the field and what was expected; no
traceback; and nothing written (SPEC §4).

The corpus is built once per module (``tests/bad_inputs/make.py``) and every case runs
up front; each parametrized test then checks one case's outcome. To stay fast, the
whole corpus runs through ``tests/bad_inputs/zygote.py`` (import once, fork a
``python -m eenet_cli`` per case); a fifth of it also runs as a plain subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from bad_inputs.make import CASES, OLD_OUTPUT, Case, build

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EENET_DEBUG", None)
    env["COLUMNS"] = "160"
    return env


def run_eenet(args, cwd: Path, timeout: float = 120) -> Outcome:
    p = subprocess.run(
        [sys.executable, "-m", "eenet_cli", *args],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    return Outcome(p.returncode, p.stdout, p.stderr)


def run_many(cases: list[Case], cwd: Path) -> dict[str, Outcome]:
    """Every case through the zygote: one import, a forked ``python -m eenet_cli`` per case."""
    import json

    work = cwd / "_runs"
    work.mkdir()
    jobs = work / "jobs.json"
    jobs.write_text(json.dumps({c.id: list(c.args) for c in cases}))
    subprocess.run(
        [sys.executable, str(Path(__file__).parent / "bad_inputs" / "zygote.py"), str(cwd), str(jobs), str(work)],
        env=_env(), check=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    out = {}
    for c in cases:
        rc = work / f"{c.id}.rc"
        out[c.id] = Outcome(
            int(rc.read_text()) if rc.exists() else -1,
            (work / f"{c.id}.out").read_text(errors="replace") if (work / f"{c.id}.out").exists() else "",
            (work / f"{c.id}.err").read_text(errors="replace") if (work / f"{c.id}.err").exists() else "",
        )
    return out


def _runnable(cases: list[Case]) -> list[Case]:
    return [c for c in cases if not (c.root_skip and IS_ROOT)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    build(root)
    return root, run_many(_runnable(CASES), root)


# a sample of the corpus also runs as a plain `python -m eenet_cli` subprocess, to show the
# zygote changes nothing: one case in five, spread over every command
REAL = CASES[::5]


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs_real")
    build(root, REAL)
    todo = _runnable(REAL)
    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = dict(zip([c.id for c in todo], pool.map(lambda c: run_eenet(c.args, root), todo)))
    return root, outcomes


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def check_refused(case: Case, root: Path, out: Outcome) -> None:
    shown = f"\nargs: {case.args}\nstderr:\n{out.stderr}\nstdout:\n{out.stdout[:500]}"
    assert out.returncode == 2, shown
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, shown
    lines = _error_lines(out.stderr)
    if case.usage:
        assert 1 <= len(lines) <= 4 and lines[-1].startswith("Error:"), shown
        message = out.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("eenet: error: "), shown
        message = lines[0]
    for want in case.expect:
        assert want in message, f"expected {want!r} in the message{shown}"
    assert out.stdout == "", shown  # nothing on stdout for a refused input

    # nothing written: the case's output folder holds no new file, not even a temporary one
    folder = root / "out" / case.id
    if folder.is_dir():
        left = sorted(p.name for p in folder.rglob("*"))
        expected_left = [Path(case.output).name] if case.existing else []
        assert left == expected_left, f"stray files {left}{shown}"
    if case.output:
        target = root / case.output
        if case.existing:
            assert target.read_bytes() == OLD_OUTPUT
        else:
            assert not target.exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, corpus):
    if case.root_skip and IS_ROOT:
        pytest.skip("running as root: chmod 000 does not block reads")
    root, outcomes = corpus
    check_refused(case, root, outcomes[case.id])


@pytest.mark.parametrize("case", REAL, ids=[c.id for c in REAL])
def test_bad_input_real_subprocess(case: Case, real_corpus):
    if case.root_skip and IS_ROOT:
        pytest.skip("running as root: chmod 000 does not block reads")
    root, outcomes = real_corpus
    check_refused(case, root, outcomes[case.id])


def test_corpus_is_big_enough():
    from bad_inputs.make import counts

    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)
    per = counts()
    assert all(per.get(cmd, 0) >= 5 for cmd in ("evaluate", "fit", "apply"))


def test_debug_shows_the_traceback(corpus):
    root, _ = corpus
    out = run_eenet(["--debug", "evaluate", "in/nan_scores.parquet", "--methods", "maxprob"], root)
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "InputError" in out.stderr


def test_a_valid_eenet_policy_applies(corpus):
    """The hand-built EENet scorer the broken policies start from is itself valid."""
    root, _ = corpus
    out = run_eenet(["apply", "in/policy_eenet_good.json", "in/good.parquet", "--json", "-q"], root)
    assert out.returncode == 0, out.stderr
