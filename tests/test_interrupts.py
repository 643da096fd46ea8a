"""Interrupted writes (SPEC §2): a command killed part-way never leaves a half-written file
under the final name, and never damages the file that was there before.

Each test SIGKILLs a real subprocess (no chance to clean up), then looks at the folder.
A hidden ``.NAME.*.tmp`` file may be left beside the output by a SIGKILL; nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and /proc are POSIX")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EENET_DEBUG", None)
    return env


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kill_after(proc: subprocess.Popen, *, cpu: float, timeout: float = 60.0, must_run: bool = True) -> bool:
    """SIGKILL ``proc`` once it has used ``cpu`` seconds of CPU; True if it was killed.
    With ``must_run``, fail if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _cpu_seconds(proc.pid) >= cpu:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        assert not must_run, f"the command ended (rc {proc.returncode}) before it could be interrupted; make the input bigger"
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.returncode == -signal.SIGKILL


def _reap(proc: subprocess.Popen) -> None:
    """Kill the process if it still runs, and close the pipes it was given."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _only_hidden_temps_besides(folder: Path, keep: set[str]) -> None:
    others = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    stray = [n for n in others if not (n.startswith(".") and n.endswith(".tmp"))]
    assert stray == [], f"unexpected files after the kill: {stray}"


def _big_predictions(path: Path, n: int = 40_000, k: int = 4, c: int = 100) -> None:
    """Random logits, written fast (no compression): big enough for evaluate to take seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eenet_cli.io import predictions_metadata

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


def test_killed_evaluate_keeps_the_old_results(tmp_path, big):
    preds = big
    out = tmp_path / "results.json"
    # an older, valid results file under the final name
    from eenet_cli import api
    from eenet_cli.io import read_predictions, read_results, write_results

    small = tmp_path / "small.parquet"
    from conftest import write_synthetic

    write_synthetic(small, n=300)
    write_results(out, api.evaluate(read_predictions(small), budgets=["2ms"], methods=["maxprob"]))
    old = out.read_bytes()

    proc = subprocess.Popen(
        [sys.executable, "-m", "eenet_cli", "evaluate", str(preds), "--methods", "maxprob,entropy,vote,patience,oracle",
         "--budgets", "1:4:0.01", "-o", str(out), "-q"],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        assert _kill_after(proc, cpu=2.0)  # start-up is ~1 s of CPU; then it is reading and evaluating
    finally:
        _reap(proc)
    assert out.read_bytes() == old
    assert read_results(out)["results"][0]["method"] == "maxprob"
    _only_hidden_temps_besides(tmp_path, {"small.parquet", "results.json"})


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from eenet_cli.io import PredictionsWriter

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
        temps = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp")]
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

    from eenet_cli.io import read_predictions

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


def test_killed_fit_leaves_the_old_policy_or_the_whole_new_one(tmp_path, big):
    """fit writes its policy once, at the end. A fast baseline fit may already have written
    it when the kill lands, so the final name holds the old file or the complete new one."""
    preds = big
    out = tmp_path / "policy.json"
    out.write_text('{"old": true}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "eenet_cli", "fit", str(preds), "--budget", "2.5ms", "--method", "patience", "-o", str(out), "-q"],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        _kill_after(proc, cpu=1.5, must_run=False)
    finally:
        _reap(proc)
    if json.loads(out.read_text()) != {"old": True}:
        from eenet_cli.io import read_policy

        assert read_policy(out)["method"] == "patience"
    _only_hidden_temps_besides(tmp_path, {"policy.json"})


@pytest.mark.skipif(importlib.util.find_spec("eenet_cli.commands.model_cmd") is None, reason="eenet dump is not in this tree")
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="dump needs torch")
def test_killed_dump_keeps_the_old_predictions(tmp_path):
    """`eenet dump` of the built-in ResNet-56 (random weights) over random images, killed
    while it streams batches: the old file under the final name is untouched."""
    from conftest import write_synthetic

    from eenet_cli.io import read_predictions

    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"
    np.savez(data, x=rng.standard_normal((512, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 512))
    out = tmp_path / "preds.parquet"
    write_synthetic(out, n=100, k=3, c=10, costs=(1.0, 2.0, 3.0))
    old = out.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eenet_cli", "dump", "resnet56", "--data", str(data), "--split", "val", "--batch-size", "16",
         "-o", str(out), "-q"],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".preds.parquet.") for p in tmp_path.iterdir()):
                break  # the temporary output is open: batches are being written
            time.sleep(0.05)
        start = _cpu_seconds(proc.pid)
        assert _kill_after(proc, cpu=start + 1.0)  # a second more of running the model
    finally:
        _reap(proc)
    assert out.read_bytes() == old
    assert read_predictions(out).num_samples == 100
    _only_hidden_temps_besides(tmp_path, {"images.npz", "preds.parquet"})


# --------------------------------------------------------------------------- determinism
# SPEC §4: the same inputs and --seed give the same bytes, run after run.

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
