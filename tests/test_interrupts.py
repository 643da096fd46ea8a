"""Interrupted writes (docs/spec.md §2): a command killed part-way never leaves a half-written file
under the final name, and never damages the file that was there before.

Each test SIGKILLs a real subprocess (no chance to clean up), then looks at the folder.
A hidden temporary file (``.*.tmp``) may be left beside the output by a SIGKILL; nothing else.

The kill is timed by what the command shows, never by the clock: a progress line on a
pseudo-terminal (the commands draw their progress bars only on a terminal), a line the
writer prints, or the temporary output file appearing. So a slow machine does not kill a
command before it has started its work, and a fast one does not see it finish first.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and pseudo-terminals are POSIX")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EENET_DEBUG", None)
    return env


def _on_a_terminal(args: list[str], cwd: Path) -> tuple[subprocess.Popen, int]:
    """Start ``python -m eenet_cli ARGS`` with stderr on a pseudo-terminal, so that it draws
    its progress bar; returns the process and the terminal's master end (to read)."""
    import pty

    master, slave = pty.openpty()
    env = {**_env(), "COLUMNS": "160", "TERM": "xterm"}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "eenet_cli", *args], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    finally:
        os.close(slave)
    return proc, master


def _wait_for_progress(proc: subprocess.Popen, master: int, steps: int, timeout: float = 180.0) -> int:
    """Read the terminal until the progress bar shows at least ``steps`` done ("12/6005");
    returns the count seen. Fails if the command ends or nothing shows in ``timeout`` s."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal (it ended)
                chunk = b""
            if not chunk:
                break
            seen = (seen + chunk)[-8192:]
            done = [int(a) for a, _ in re.findall(rb"(\d+)/(\d+)", seen)]
            if done and max(done) >= steps:
                return max(done)
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no progress of {steps} steps (rc {proc.poll()}); the terminal showed {seen[-600:]!r}")


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a command that must still be running."""
    assert proc.poll() is None, f"the command ended (rc {proc.returncode}) before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _reap(proc: subprocess.Popen) -> None:
    """Kill the process if it still runs, and close the pipes it was given."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _is_temp(name: str) -> bool:
    """A writer's temporary file: hidden, ending in .tmp (``.eenet-XXXX.tmp`` today)."""
    return name.startswith(".") and name.endswith(".tmp")


def _only_hidden_temps_besides(folder: Path, keep: set[str]) -> None:
    others = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    stray = [n for n in others if not _is_temp(n)]
    assert stray == [], f"unexpected files after the kill: {stray}"


def _big_predictions(path: Path, n: int = 40_000, k: int = 4, c: int = 100) -> None:
    """Random logits, written fast (no compression): big enough for evaluate to take seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eenet_cli.artifacts.predictions import predictions_metadata

    rng = np.random.default_rng(0)
    labels = rng.integers(0, c, n)
    cols = {}
    for j in range(k):
        z = rng.standard_normal((n, c), dtype=np.float32)
        z[np.arange(n), labels] += 1.0 + j
        cols[f"exit_{j}"] = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), c)
    cols["label"] = pa.array(labels.astype(np.int64))
    cols["split"] = pa.array(np.where(np.arange(n) % 2 == 0, "val", "test").tolist())
    costs = {"format": "costs", "version": 1, "unit": "ms", "costs": [1.0 + j for j in range(k)]}
    table = pa.table(cols).replace_schema_metadata(predictions_metadata(k, c, costs=costs))
    pq.write_table(table, path, compression="none")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    _big_predictions(path)
    return path


def test_killed_evaluate_keeps_the_old_results(tmp_path):
    out = tmp_path / "results.json"
    # an older, valid results file under the final name
    from eenet_cli import api
    from eenet_cli.artifacts.predictions import read_predictions
    from eenet_cli.artifacts.results import read_results, write_results

    small = tmp_path / "small.parquet"
    from conftest import SAMPLE, write_synthetic

    write_synthetic(small, n=300)
    write_results(out, api.evaluate(read_predictions(small), budgets=["2ms"], methods=["maxprob"]))
    old = out.read_bytes()

    # 1,201 budgets x 5 methods = 6,005 steps: killed after a few, thousands before the end
    proc, master = _on_a_terminal(
        ["evaluate", str(SAMPLE / "digits.parquet"), "--methods", "maxprob,entropy,vote,patience,oracle",
         "--budgets", "0.4ms:1.6ms:0.001ms", "-o", str(out)], tmp_path)
    try:
        _wait_for_progress(proc, master, steps=3)  # reading is done; it is evaluating
        _kill(proc)
    finally:
        _reap(proc)
        os.close(master)
    assert out.read_bytes() == old
    assert read_results(out)["results"][0]["method"] == "maxprob"
    _only_hidden_temps_besides(tmp_path, {"small.parquet", "results.json"})


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from eenet_cli.artifacts.predictions import PredictionsWriter

    path = sys.argv[1]
    rng = np.random.default_rng(0)
    with PredictionsWriter(path, num_exits=3, num_classes=10) as w:
        for g in range(1000):
            w.write(rng.standard_normal((256, 3, 10)).astype(np.float32), labels=rng.integers(0, 10, 256), split="val")
            print("group", g, flush=True)
            time.sleep(0.02)
    print("done", flush=True)
    """
)


def _kill_writer_midway(target: Path, groups: int = 5) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(target)],
        cwd=target.parent, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        seen = 0
        for line in proc.stdout:
            if line.startswith("group"):
                seen += 1
            if seen >= groups:
                break
        assert seen >= groups, proc.stderr.read()
        # part-way: rows are on disk, but only in the temporary file
        temps = [p for p in target.parent.iterdir() if _is_temp(p.name)]
        assert temps and temps[0].stat().st_size > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _reap(proc)


def test_killed_predictions_writer_leaves_no_file(tmp_path):
    target = tmp_path / "preds.parquet"
    _kill_writer_midway(target)
    assert not target.exists()
    _only_hidden_temps_besides(tmp_path, set())


def test_killed_predictions_writer_keeps_the_old_file_and_folder_readers_ignore_the_temp(tmp_path):
    """A killed writer in a folder of part files: the old parts read as before."""
    from conftest import write_synthetic

    from eenet_cli.artifacts.predictions import read_predictions

    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(2):
        write_synthetic(folder / f"part-{i}.parquet", n=200, k=3, c=10, seed=i, costs=(1.0, 2.0, 3.0), sample_id=np.arange(200) + 200 * i)
    old = (folder / "part-1.parquet").read_bytes()
    before = read_predictions(folder)
    _kill_writer_midway(folder / "part-1.parquet")
    assert (folder / "part-1.parquet").read_bytes() == old
    _only_hidden_temps_besides(folder, {"part-0.parquet", "part-1.parquet"})
    after = read_predictions(folder)
    assert after.num_samples == before.num_samples == 400


def test_killed_fit_keeps_the_old_policy(tmp_path, big):
    """fit writes its policy once, at the end: killed while EENet trains (its progress bar
    counts training steps), the old file under the final name is untouched."""
    out = tmp_path / "policy.json"
    out.write_text('{"old": true}\n')
    # 20,000 validation rows x 100 classes: a training step takes a good fraction of a
    # second, and at least 50 steps run (EENetHyper.min_steps) before training may stop
    proc, master = _on_a_terminal(["fit", str(big), "--budget", "2.5ms", "--method", "eenet", "-o", str(out)], tmp_path)
    try:
        _wait_for_progress(proc, master, steps=10)
        _kill(proc)
    finally:
        _reap(proc)
        os.close(master)
    assert json.loads(out.read_text()) == {"old": True}
    _only_hidden_temps_besides(tmp_path, {"policy.json"})


def test_killed_dump_keeps_the_old_predictions(tmp_path):
    """`eenet dump` of the built-in ResNet-56 (random weights) over random images, killed
    while it streams batches: the old file under the final name is untouched."""
    from conftest import write_synthetic

    from eenet_cli.artifacts.predictions import read_predictions

    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"
    np.savez(data, x=rng.standard_normal((1024, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 1024))
    out = tmp_path / "preds.parquet"
    write_synthetic(out, n=100, k=3, c=10, costs=(1.0, 2.0, 3.0))
    old = out.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eenet_cli", "dump", "resnet56", "--data", str(data), "--split", "val", "--batch-size", "16",
         "-o", str(out), "-q"],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        opened = False
        while proc.poll() is None and time.monotonic() < deadline:
            if any(_is_temp(p.name) for p in tmp_path.iterdir()):
                opened = True  # the temporary output is open: the first of 64 batches is running
                break
            time.sleep(0.01)
        assert opened, f"no temporary output appeared (rc {proc.poll()})"
        _kill(proc)
    finally:
        _reap(proc)
    assert out.read_bytes() == old
    assert read_predictions(out).num_samples == 100
    _only_hidden_temps_besides(tmp_path, {"images.npz", "preds.parquet"})


# --------------------------------------------------------------------------- determinism
# docs/spec.md §4: the same inputs and --seed give the same bytes, run after run.

FIT_METHODS = ("maxprob", "entropy", "vote", "patience")
RESULT_FORMATS = ("json", "csv")


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """Every command run twice as a subprocess, into two folders: {name: (bytes_a, bytes_b)}."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import write_synthetic

    root = tmp_path_factory.mktemp("determinism")
    preds = write_synthetic(root / "preds.parquet", n=1500, k=4, c=10, seed=3, miscalibration=0.5)
    jobs = []
    for run in ("a", "b"):
        (root / run).mkdir()
        for m in FIT_METHODS:
            jobs.append((f"policy_{m}.json", run, ["fit", str(preds), "--budget", "2.5ms", "--method", m, "--seed", "7"]))
        for fmt in RESULT_FORMATS:
            jobs.append((f"results.{fmt}", run, ["evaluate", str(preds), "--methods", "maxprob,entropy,vote,patience,oracle",
                                                 "--budgets", "1.5ms:3.5ms:0.5ms", "--seed", "7"]))

    def go(job):
        name, run, args = job
        out = root / run / name
        env = {**_env(), "PYTHONHASHSEED": "1" if run == "a" else "2"}  # set and dict order must not matter
        p = subprocess.run([sys.executable, "-m", "eenet_cli", *args, "-o", str(out), "-q"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        return name, run, out.read_bytes()

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(go, jobs))
    got: dict[str, dict[str, bytes]] = {}
    for name, run, data in done:
        got.setdefault(name, {})[run] = data
    return {name: (v["a"], v["b"]) for name, v in got.items()}


@pytest.mark.parametrize("method", FIT_METHODS)
def test_fit_is_byte_identical(twice, method):
    a, b = twice[f"policy_{method}.json"]
    assert a == b
    assert json.loads(a)["method"] == method


@pytest.mark.parametrize("fmt", RESULT_FORMATS)
def test_evaluate_output_is_byte_identical(twice, fmt):
    a, b = twice[f"results.{fmt}"]
    assert a == b and len(a) > 100
