"""``eenet profile`` and ``eenet dump`` end to end (CliRunner, plus real subprocesses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, invoke

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from eenet_cli.artifacts.predictions import read_predictions  # noqa: E402

T = "fixtures_models.tiny_models"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))


def expected_scores(batches=None, **model_args) -> tuple[np.ndarray, np.ndarray]:
    from fixtures_models.tiny_models import tiny_batches, tiny_staged

    m = tiny_staged(**model_args).eval()
    xs, ys = zip(*(batches or tiny_batches()))
    with torch.no_grad():
        s = torch.stack(m(torch.cat(xs)), 1).numpy()
    return s, torch.cat(ys).numpy()


# --------------------------------------------------------------------------- profile


def test_profile_writes_strictly_increasing_costs(runner, tmp_path):
    out = tmp_path / "costs.json"
    r = invoke(runner, "profile", f"{T}:tiny_staged", "--input-shape", "6", "--repeats", "25", "--warmup", "3",
               "--threads", "1", "--model-arg", "hidden=64", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["format"] == "costs" and doc["version"] == 1 and doc["unit"] == "ms"
    c = doc["costs"]
    assert len(c) == 3 and all(v > 0 for v in c) and all(b > a for a, b in zip(c, c[1:]))
    assert doc["stats"]["median"] == c and doc["stats"]["repeats"] == 25
    for key in ("p10", "p90", "mean"):
        assert len(doc["stats"][key]) == 3
    # stage k of the fixture is k+1 Linear(64, 64) layers (the first maps 6 -> 64), each head 64 -> 3
    per_stage = [2 * 6 * 64, 2 * 2 * 64 * 64, 3 * 2 * 64 * 64]
    assert doc["flops"] == list(np.cumsum([s + 2 * 64 * 3 for s in per_stage]))
    assert doc["params"][-1] == sum(p.numel() for p in __import__("fixtures_models.tiny_models", fromlist=["x"]).tiny_staged(hidden=64).parameters())
    assert doc["batch_size"] == 1 and doc["threads"] == 1 and doc["device"] == "cpu" and doc["torch"] == torch.__version__
    assert doc["created_by"].startswith("eenet ")
    from eenet_cli.artifacts.costs import parse_costs_json

    parse_costs_json(doc, "costs.json")  # the reader accepts it
    from importlib.resources import files

    import jsonschema  # a dev dependency: a plain import, so a broken install fails here

    jsonschema.validate(doc, json.loads(files("eenet_cli.artifacts.schemas").joinpath("costs.json").read_text()))


def test_profile_flops_unit_to_stdout(runner):
    r = invoke(runner, "profile", "mlp", "--repeats", "3", "--warmup", "0", "--unit", "MFLOPs", "-o", "-")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["unit"] == "MFLOPs" and "latency_ms" in doc
    assert doc["costs"] == [pytest.approx(f / 1e6, rel=1e-5) for f in doc["flops"]]


def test_profile_needs_input_shape_and_a_fitting_one(runner, tmp_path):
    r = invoke(runner, "profile", f"{T}:tiny_staged", "-o", tmp_path / "c.json")
    assert r.exit_code == 2 and "--input-shape" in r.stderr
    r = invoke(runner, "profile", f"{T}:tiny_staged", "--input-shape", "3,32,32", "--repeats", "2", "-o", tmp_path / "c.json")
    assert r.exit_code == 2 and "cannot run on input of shape [1, 3, 32, 32]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.json").exists()


def test_costs_document_refuses_non_increasing_medians():
    from eenet_cli.errors import WorkFailed
    from eenet_cli.runtime.profile import ProfileResult, costs_document

    res = ProfileResult([np.array([1.0, 1.1]), np.array([0.9, 1.0])], [10, 20], [1, 2], 1, 1, "cpu", 2, 0, (6,))
    with pytest.raises(WorkFailed, match="not strictly increasing"):
        costs_document(res)


# --------------------------------------------------------------------------- dump


def test_dump_logits_equal_the_model_and_labels(runner, tmp_path):
    out = tmp_path / "p.parquet"
    costs = tmp_path / "c.json"
    costs.write_text(json.dumps({"format": "costs", "version": 1, "unit": "ms", "costs": [1, 2, 3]}))
    r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--split", "val", "-o", out, "--costs", costs, "-q")
    assert r.exit_code == 0, r.output
    p = read_predictions(out)
    want, labels = expected_scores()
    assert p.scores.shape == (40, 3, 3)
    assert np.abs(p.scores - want).max() <= 1e-5
    assert np.array_equal(p.labels, labels) and list(p.sample_id) == list(range(40)) and set(p.split) == {"val"}
    assert p.meta["costs"]["costs"] == [1, 2, 3] and p.meta["model"] == f"{T}:tiny_staged" and p.meta["scores"] == "logits"


def test_dump_append_adds_rows_and_continues_ids(runner, tmp_path):
    out = tmp_path / "p.parquet"
    assert invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--split", "val", "-o", out, "-q").exit_code == 0
    before = out.stat().st_ino
    r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_loader", "--split", "test", "-o", out, "--append", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["total_rows"] == 80
    assert out.stat().st_ino != before  # a new file renamed over the old one, not an in-place edit
    p = read_predictions(out)
    assert list(p.split) == ["val"] * 40 + ["test"] * 40
    assert list(p.sample_id) == list(range(80))
    want, _ = expected_scores()
    assert np.abs(p.scores[:40] - want).max() <= 1e-5 and np.abs(p.scores[40:] - want).max() <= 1e-5
    # appending to a file that is not there is an error, and writes nothing
    r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "-o", tmp_path / "none.parquet", "--append")
    assert r.exit_code == 2 and "no such file to append to" in r.stderr
    assert not (tmp_path / "none.parquet").exists()
    # another model's exits cannot be appended
    r = invoke(runner, "dump", f"{T}:tiny_staged", "-a", "num_exits=2", "--data", f"{T}:tiny_batches", "--split", "x", "-o", out, "--append")
    assert r.exit_code == 2 and "3 exits x 3 classes" in r.stderr
    assert read_predictions(out).num_samples == 80


def test_dump_fp16_and_probs(runner, tmp_path):
    out = tmp_path / "h.parquet"
    r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "-o", out, "--fp16", "-q")
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    assert str(pq.read_schema(out).field("exit_0").type.value_type) == "halffloat"
    p = read_predictions(out)
    want, _ = expected_scores()
    assert np.abs(p.scores - want).max() <= 1e-2 and p.split is None
    out2 = tmp_path / "probs.parquet"
    r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "-o", out2, "--scores", "probs", "-q")
    assert r.exit_code == 0, r.output
    p = read_predictions(out2)
    assert p.meta["scores"] == "probs" and np.allclose(p.scores.sum(-1), 1, atol=1e-5)


def test_dump_all_exits_model_and_npz_data(runner, tmp_path):
    from fixtures_models.tiny_models import arrays, tiny_all_exits

    x, y = arrays(23)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "a.parquet"
    r = invoke(runner, "dump", f"{T}:tiny_all_exits", "--data", tmp_path / "d.npz", "--batch-size", "5", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        want = torch.stack(tiny_all_exits()(torch.from_numpy(x)), 1).numpy()
    p = read_predictions(out)
    assert np.abs(p.scores - want).max() <= 1e-5 and np.array_equal(p.labels, y)


BAD_DUMPS = [
    ([f"{T}:nope", "--data", f"{T}:tiny_batches"], "has no attribute 'nope'"),
    (["fixtures_models.missing_mod:f", "--data", f"{T}:tiny_batches"], "no module named"),
    ([f"{T}:not_callable", "--data", f"{T}:tiny_batches"], "is not callable"),
    ([f"{T}:returns_int", "--data", f"{T}:tiny_batches"], "expected a torch.nn.Module"),
    ([f"{T}:single_output", "--data", f"{T}:tiny_batches"], "list of K logits"),
    ([f"{T}:tiny_staged", "--data", f"{T}:wrong_shape"], "cannot run on input of shape [1, 9]"),
    ([f"{T}:tiny_staged", "--data", f"{T}:not_pairs"], "expected an (x, y) pair"),
    ([f"{T}:tiny_staged", "--data", f"{T}:bad_labels"], "label 7 is outside [0, 3)"),
    ([f"{T}:tiny_staged", "--data", f"{T}:no_such_data"], "has no attribute 'no_such_data'"),
    ([f"{T}:tiny_staged", "--data", "nowhere.npz"], "no such file"),
    ([f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--weights", "WEIGHTS_OTHER"], "shape mismatch"),
    ([f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--weights", "WEIGHTS_PICKLE"], "pickled Python objects"),
    ([f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--costs", "1,2ms"], "has 2 costs but the model has 3 exits"),
    ([f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--model-arg", "oops"], "key=value"),
    ([f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--device", "tpu"], "unknown device"),
]


@pytest.fixture
def bad_weights(tmp_path):
    from fixtures_models.tiny_models import tiny_staged

    torch.save(tiny_staged(hidden=5).state_dict(), tmp_path / "other.pt")
    torch.save(tiny_staged(), tmp_path / "pickle.pt")
    return {"WEIGHTS_OTHER": str(tmp_path / "other.pt"), "WEIGHTS_PICKLE": str(tmp_path / "pickle.pt")}


@pytest.mark.parametrize("args, message", BAD_DUMPS, ids=[m for _, m in BAD_DUMPS])
def test_bad_model_and_data_specs_exit_2_one_line_nothing_written(runner, tmp_path, bad_weights, args, message):
    out = tmp_path / "out.parquet"
    args = [bad_weights.get(a, a) for a in args]
    r = invoke(runner, "dump", *args, "-o", out)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eenet: error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.parquet")]


def test_real_subprocess_bad_spec(tmp_path):
    """One bad spec through a real ``python -m eenet_cli`` (good runs: the shard and memory tests)."""
    out = tmp_path / "p.parquet"
    r = subprocess.run([sys.executable, "-m", "eenet_cli", "dump", f"{T}:nope", "--data", f"{T}:tiny_batches", "-o", str(out)],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "has no attribute 'nope'" in r.stderr and not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_narrower_shard_dump_removes_the_parts_it_does_not_write(runner, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    for world, ranks in ((3, (0, 1, 2)), (2, (1, 0))):
        for rank in ranks:
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--split", "val", "-o", out, "-q")
            assert r.exit_code == 0, r.output
        if world == 3:
            assert len(list(out.glob("part-*.parquet"))) == 3
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    # the 3-rank dump's part-00002 would have added its rows a second time
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["part-00000.parquet", "part-00001.parquet"]
    p = read_predictions(out)
    assert p.num_samples == 40 and sorted(p.sample_id.tolist()) == list(range(40))


def test_two_rank_shard_dump_reads_back_as_one(runner, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    # first round: each rank's shard needs no coordination, so run the two ranks in-process
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--split", "val", "-o", out, "-q")
        assert r.exit_code == 0, r.output
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["part-00000.parquet", "part-00001.parquet"]
    p = read_predictions(out)
    assert p.num_samples == 40
    order = np.argsort(p.sample_id)
    want, labels = expected_scores()
    assert list(p.sample_id[order]) == list(range(40))
    assert np.abs(p.scores[order] - want).max() <= 1e-5 and np.array_equal(p.labels[order], labels)
    assert read_predictions(out / "part-00000.parquet").num_samples == 7 + 7 + 7  # batches 0, 2, 4 of 7

    # second round: --append, two real processes that agree on where ids continue (gloo barrier)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "eenet_cli", "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_loader", "--split", "test",
             "-o", str(out), "--append", "-q"],
            env=dict(ENV, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    p = read_predictions(out)
    assert p.num_samples == 80 and sorted(p.sample_id.tolist()) == list(range(80))
    assert (p.split == "test").sum() == 40
    assert np.abs(p.scores[p.split == "test"][np.argsort(p.sample_id[p.split == "test"])] - want).max() <= 1e-5


def _peak_rss_mb(args: list[str], cwd: Path) -> float:
    """Peak resident memory (MB) of one child process, measured by a fresh parent that
    starts nothing else (``RUSAGE_CHILDREN`` is the largest of its children)."""
    code = (
        "import resource, subprocess, sys\n"
        f"r = subprocess.run({args!r})\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)
    rc, kb = r.stdout.split()
    assert rc == "0", r.stderr
    return int(kb) / 1024


def test_dump_memory_is_flat_for_50k_samples(tmp_path):
    """50,000 samples through a tiny model need about the memory of 40 samples.

    Measured against two baselines on the same machine, not a fixed number of MB: a process
    that only imports torch, and the same dump of 40 samples. (Measured on CPU torch 2.x:
    import torch ~220 MB, a 40-sample dump ~325 MB, the 50,000-sample dump ~350 MB.)
    """
    from concurrent.futures import ThreadPoolExecutor

    def dump(data: str, name: str) -> list[str]:
        return [sys.executable, "-m", "eenet_cli", "dump", f"{T}:tiny_staged", "--data", f"{T}:{data}",
                "--split", "val", "-o", str(tmp_path / name), "-q"]

    jobs = {"torch": [sys.executable, "-c", "import torch"], "small": dump("tiny_batches", "small.parquet"),
            "big": dump("many", "big.parquet")}
    with ThreadPoolExecutor(max_workers=3) as pool:
        peak = dict(zip(jobs, pool.map(lambda a: _peak_rss_mb(a, tmp_path), jobs.values())))
    assert read_predictions(tmp_path / "big.parquet").num_samples == 50_000
    assert read_predictions(tmp_path / "small.parquet").num_samples == 40
    # streaming: 1,250 times the samples cost at most 100 MB more than the 40-sample dump ...
    assert peak["big"] - peak["small"] < 100, peak
    # ... and the whole command stays within 300 MB of what torch alone takes
    assert peak["big"] - peak["torch"] < 300, peak


def test_append_target_is_checked_before_the_model_is_loaded(runner, tmp_path):
    """A wrong --append target fails at once: the (here unloadable) model is never touched."""
    bad = tmp_path / "notes.parquet"
    bad.write_text("not parquet")
    r = invoke(runner, "dump", "no_such_module_xyz:build", "--data", f"{T}:tiny_batches", "--split", "val", "-o", bad, "--append", "-q")
    assert r.exit_code == 2
    assert "not a readable Parquet file" in r.output and "no_such_module_xyz" not in r.output
    assert bad.read_text() == "not parquet"
