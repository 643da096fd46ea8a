"""Streamed reading with bounded memory, and compact predictions written by `eenet dump`.

- The streamed reader holds one batch of decoded scores at a time: Arrow's pool never grows
  with the file (pre-buffering would keep every column chunk read so far).
- `eenet dump --keep top-k:K` writes exactly the file `eenet dump` followed by
  `eenet compact --top-k K` writes, on the shipped digits model, and --append keeps a
  file compact or full, refusing to mix them in one line.
- `eenet evaluate` on a compact file runs its default methods minus the ones that read
  full class-probability vectors, saying so on stderr.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, invoke, write_synthetic

from eenet_cli.artifacts import predictions as P
from eenet_cli.core import measures

WEIGHTS = ROOT / "sample_data" / "digits_model.safetensors"
FEATURES = ["preds", "max_prob", "entropy", "vote", "top2_probs", "pred_probs"]


def test_streamed_read_holds_one_batch_not_the_file(tmp_path, monkeypatch):
    path = write_synthetic(tmp_path / "big.parquet", n=30000, k=4, c=200, row_group_size=10000)  # 96 MB of scores
    monkeypatch.setattr(P, "STREAM_BATCH_BYTES", 1 << 20)  # batches of 327 rows (1 MiB of scores)
    seen: list[int] = []
    add = measures.FeatureBlocks.add_full

    def spy(self, start, block, kind):
        seen.append(pa.total_allocated_bytes())  # Arrow memory alive while a batch is being used
        return add(self, start, block, kind)

    monkeypatch.setattr(measures.FeatureBlocks, "add_full", spy)
    streamed = P.read_predictions(path, stream=True)
    assert len(seen) >= 90
    scores_bytes = 30000 * 4 * 200 * 4
    # a few batches, pages and read buffers, not the file (pre-buffering held every chunk read so far)
    assert max(seen) < scores_bytes / 4, (max(seen), scores_bytes)
    assert max(seen[len(seen) // 2 :]) <= 1.5 * max(seen[: len(seen) // 4])  # flat: it does not grow with the rows read
    assert pa.total_allocated_bytes() < scores_bytes / 20  # and it is all handed back
    eager = P.read_predictions(path)
    for f in FEATURES:
        assert np.array_equal(getattr(streamed.features(), f), getattr(eager.features(), f)), f
    assert np.array_equal(streamed.labels, eager.labels) and (streamed.split == eager.split).all()


@pytest.fixture(scope="module")
def digits_dumps(tmp_path_factory):
    """`dump`, `dump --keep top-k:5` and `dump` + `compact --top-k 5` of the shipped model."""
    from typer.testing import CliRunner

    d = tmp_path_factory.mktemp("dump")
    runner = CliRunner()
    base = ("dump", "digits-cnn", "--weights", WEIGHTS, "--data", "digits:val", "--split", "val", "--costs",
            ROOT / "sample_data" / "digits_costs.json", "-q")
    full, kept, converted = d / "full.parquet", d / "kept.parquet", d / "converted.parquet"
    assert invoke(runner, *base, "-o", full).exit_code == 0
    r = invoke(runner, *base, "--keep", "top-k:5", "-o", kept, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["top_k"] == 5
    assert invoke(runner, "compact", full, "--top-k", "5", "-o", converted, "-q").exit_code == 0
    return d, full, kept, converted


def test_dump_keep_top_k_equals_dump_then_compact(digits_dumps):
    _, _, kept, converted = digits_dumps
    a, b = pq.read_table(kept), pq.read_table(converted)
    assert a.equals(b)  # every column, value for value
    assert a.schema.metadata == b.schema.metadata
    meta = P.read_predictions(kept).meta
    assert meta["version"] == 2 and meta["top_k"] == 5 and meta["num_classes"] == 10


def test_dump_keep_gives_the_same_decisions(runner, digits_dumps, tmp_path):
    _, full, kept, _ = digits_dumps
    for method in ("maxprob", "entropy", "patience"):
        pols = []
        for src in (full, kept):
            pol = tmp_path / f"{method}-{src.stem}.json"
            r = invoke(runner, "fit", src, "--method", method, "--budget", "60%", "-q", "-o", pol)
            assert r.exit_code == 0, r.output
            out = tmp_path / f"{method}-{src.stem}.csv"
            r = invoke(runner, "apply", pol, src, "--split", "all", "-q", "-o", out)
            assert r.exit_code == 0, r.output
            pols.append(out.read_text())
        assert pols[0] == pols[1], method


def test_dump_keep_append_stays_compact_and_refuses_mixing(runner, digits_dumps, tmp_path):
    d, full, _, _ = digits_dumps
    base = ("dump", "digits-cnn", "--weights", WEIGHTS, "--data", "digits:test", "--split", "test", "-q")
    kept = tmp_path / "kept.parquet"
    kept.write_bytes((d / "kept.parquet").read_bytes())
    r = invoke(runner, *base, "--keep", "top-k:5", "--append", "-o", kept)
    assert r.exit_code == 0, r.output
    both = tmp_path / "both.parquet"
    both.write_bytes(full.read_bytes())
    assert invoke(runner, *base, "--append", "-o", both).exit_code == 0
    converted = tmp_path / "both-compact.parquet"
    assert invoke(runner, "compact", both, "--top-k", "5", "-o", converted, "-q").exit_code == 0
    assert pq.read_table(kept).equals(pq.read_table(converted))
    before = kept.read_bytes()
    for extra, target, message in (
        ((), kept, "add --keep top-k:5"),
        (("--keep", "top-k:3"), kept, "keeps the top 5 classes"),
        (("--keep", "top-k:5"), both, "holds full scores; drop --keep"),
    ):
        r = invoke(runner, *base, *extra, "--append", "-o", target)
        assert r.exit_code == 2, r.output
        assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert kept.read_bytes() == before


def test_folder_mixing_compact_and_full_parts_is_refused(runner, digits_dumps, tmp_path):
    _, full, kept, _ = digits_dumps
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-00000.parquet").write_bytes(full.read_bytes())
    (folder / "part-00001.parquet").write_bytes(kept.read_bytes())
    r = invoke(runner, "evaluate", folder, "--methods", "maxprob", "--val-fraction", "0.5")
    assert r.exit_code == 2
    assert "holds compact predictions (top-k per exit) but part-00000.parquet holds full scores" in r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("keep, message", [("top-k", "full or top-k:K"), ("top-k:1", "at least 2"), ("top-k:11", "more classes than the model has (10)")])
def test_dump_keep_bad_values(runner, tmp_path, keep, message):
    out = tmp_path / "p.parquet"
    r = invoke(runner, "dump", "digits-cnn", "--weights", WEIGHTS, "--data", "digits:val", "--keep", keep, "-o", out)
    assert r.exit_code == 2 and message in r.stderr and "--keep" in r.stderr
    assert not out.exists()


def test_evaluate_defaults_on_compact_run_every_method_and_leave_out_full_vector_eenet(runner, digits_dumps, tmp_path):
    _, _, kept, _ = digits_dumps
    out = tmp_path / "results.json"
    # the default EENet scorer reads per-exit features: every default method runs on a compact file
    r = invoke(runner, "evaluate", kept, "--val-fraction", "0.5", "--budgets", "60%", "-o", out)
    assert r.exit_code == 0, r.output
    assert "left out" not in r.stderr
    methods = {x["method"] for x in json.loads(out.read_text())["results"]}
    assert {"eenet", "maxprob", "oracle"} <= methods
    # with the full-vector scorer, the defaults leave EENet out and say so in one line
    r = invoke(runner, "evaluate", kept, "--val-fraction", "0.5", "--budgets", "60%", "--eenet-inputs", "full", "-o", out)
    assert "holds compact predictions; left out eenet (its scorer reads full class-probability vectors)" in r.stderr
    assert r.exit_code == 0, r.output
    methods = {x["method"] for x in json.loads(out.read_text())["results"]}
    assert "eenet" not in methods and {"maxprob", "oracle"} <= methods
    # named explicitly, a full-vector method is still refused in one line
    r = invoke(runner, "evaluate", kept, "--val-fraction", "0.5", "--methods", "eenet", "--budgets", "60%", "--eenet-inputs", "full")
    assert r.exit_code == 2 and "compact" in r.stderr and r.stderr.count("\n") == 1


def test_scale_benchmark_generators_write_readable_files(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scale
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    full, comp = tmp_path / "full.parquet", tmp_path / "compact.parquet"
    scale.make_full(full, 3000, 3, 50)
    scale.make_compact(comp, 3000, 3, 500, 4)
    f = P.read_predictions(full, stream=True)
    c = P.read_predictions(comp)  # validated: top classes, log-sum-exp and entropy agree with each other
    assert (f.num_samples, f.num_exits, f.num_classes) == (3000, 3, 50)
    assert (c.num_samples, c.num_exits, c.num_classes) == (3000, 3, 500) and c.compact
    assert pq.ParquetFile(full).num_row_groups == 1 and set(f.split) == {"val", "test"}
    feats = c.features()
    assert (np.diff(feats.correct.mean(axis=0)) > 0).all()  # later exits are more accurate
    assert ((feats.max_prob > 0) & (feats.max_prob <= 1)).all() and ((feats.entropy >= 0) & (feats.entropy <= 1)).all()
