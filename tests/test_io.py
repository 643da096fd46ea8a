"""Artifacts: predictions round trip, folders of parts, float16, costs precedence, results formats."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eenet_cli import api
from eenet_cli.artifacts.costs import (
    Costs,
    default_budgets,
    load_costs,
    parse_budget,
    parse_budgets,
)
from eenet_cli.artifacts.predictions import read_predictions, write_predictions
from eenet_cli.artifacts.results import read_results, write_results
from eenet_cli.errors import BudgetError, InputError, VersionError
from eenet_cli.synthetic import make_predictions


def test_round_trip_many_row_groups(tmp_path):
    d = make_predictions(5000, 3, 7, seed=1)
    path = tmp_path / "p.parquet"
    write_predictions(path, d.logits, d.labels, split=d.split, row_group_size=777)
    p = read_predictions(path)
    assert pq.ParquetFile(path).num_row_groups > 5
    assert p.scores.dtype == np.float32 and p.scores.shape == (5000, 3, 7)
    np.testing.assert_array_equal(p.scores, d.logits)
    np.testing.assert_array_equal(p.labels, d.labels)
    assert (p.split == d.split).all()
    assert p.meta["format"] == "predictions" and p.meta["num_exits"] == 3


@pytest.mark.parametrize("threads", [1, 2])
def test_first_non_finite_score_is_named_whatever_the_reading_order(tmp_path, monkeypatch, threads):
    """Exit columns are decoded in parallel; the error still names the first bad score in
    row order, and a clean file passes with the same figures either way."""
    import eenet_cli.artifacts.predictions as predictions_module

    monkeypatch.setattr(predictions_module, "READ_THREADS", threads)
    d = make_predictions(3000, 4, 6, seed=2)
    logits = d.logits.copy()
    logits[2100, 3, 4] = np.nan  # a later row group, the last exit
    logits[2500, 0, 1] = np.inf  # a later row, an earlier exit
    path = tmp_path / "bad.parquet"
    write_predictions(path, logits, d.labels, row_group_size=500)
    with pytest.raises(InputError, match=r"row 2100, class 4") as err:
        read_predictions(path)
    assert err.value.field == "exit_3"
    clean = tmp_path / "clean.parquet"
    write_predictions(clean, d.logits, d.labels, row_group_size=500)
    np.testing.assert_array_equal(read_predictions(clean).scores, d.logits)
    assert read_predictions(path, validate=False).scores.shape == (3000, 4, 6)


def test_float16_is_accepted(tmp_path):
    d = make_predictions(100, 2, 4)
    path = tmp_path / "p16.parquet"
    write_predictions(path, d.logits, d.labels, fp16=True)
    assert pa.types.is_float16(pq.read_schema(path).field("exit_0").type.value_type)
    p = read_predictions(path)
    assert p.scores.dtype == np.float32
    np.testing.assert_allclose(p.scores, d.logits, rtol=1e-3, atol=1e-2)


def test_folder_of_parts_reads_as_one(tmp_path):
    d = make_predictions(300, 3, 5)
    folder = tmp_path / "shards"
    folder.mkdir()
    write_predictions(folder / "part-00000.parquet", d.logits[:100], d.labels[:100], sample_id=np.arange(100))
    write_predictions(folder / "part-00001.parquet", d.logits[100:], d.labels[100:], sample_id=np.arange(100, 300))
    p = read_predictions(folder)
    np.testing.assert_array_equal(p.scores, d.logits)
    assert p.sample_id.tolist() == list(range(300))


def test_probs_file_is_not_softmaxed_again(tmp_path):
    d = make_predictions(200, 2, 3)
    probs = np.exp(d.logits) / np.exp(d.logits).sum(-1, keepdims=True)
    path = tmp_path / "probs.parquet"
    write_predictions(path, probs.astype(np.float32), d.labels, scores_kind="probs")
    f = read_predictions(path).features()
    np.testing.assert_allclose(f.max_prob, probs.max(-1), atol=1e-6)


def test_newer_major_version_is_refused(tmp_path):
    d = make_predictions(10, 2, 3)
    path = tmp_path / "p.parquet"
    write_predictions(path, d.logits, d.labels)
    t = pq.read_table(path)
    meta = dict(t.schema.metadata)
    meta[b"eenet.version"] = b"2"
    pq.write_table(t.replace_schema_metadata(meta), path)
    with pytest.raises(VersionError, match="version 2 is newer than this eenet understands \\(version 1\\)"):
        read_predictions(path)


def test_costs_precedence(tmp_path):
    meta = {"costs": {"format": "costs", "version": 1, "unit": "ms", "costs": [1, 2]}}
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"format": "costs", "version": 1, "unit": "us", "costs": [5, 9]}))
    assert load_costs(str(f), meta).values.tolist() == [5, 9]
    assert load_costs("1.5,2.5ms", meta).values.tolist() == [1.5, 2.5]
    c = load_costs(None, meta, "preds.parquet")
    assert c.values.tolist() == [1, 2] and "metadata" in c.source
    assert load_costs(None, {}) is None


@pytest.mark.parametrize(
    "obj, msg",
    [
        ({"format": "costs", "version": 1, "unit": "ms", "costs": [2, 1]}, "strictly increasing"),
        ({"format": "costs", "version": 1, "unit": "ms", "costs": [0, 1]}, "positive"),
        ({"format": "costs", "version": 1, "unit": "parsecs", "costs": [1, 2]}, "unknown unit"),
        ({"format": "costs", "version": 9, "unit": "ms", "costs": [1, 2]}, "newer"),
        ({"format": "policy", "version": 1}, "expected format 'costs'"),
    ],
)
def test_bad_costs(tmp_path, obj, msg):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(obj))
    with pytest.raises(InputError, match=msg):
        load_costs(str(f))


def test_nan_literal_in_json_is_refused(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"format": "costs", "version": 1, "unit": "ms", "costs": [1, NaN]}')
    with pytest.raises(InputError, match="not valid JSON"):
        load_costs(str(f))


def test_budgets():
    c = Costs(np.array([2.0, 4.0, 8.0]), "ms", "t")
    assert parse_budget("6ms", c) == 6.0
    assert parse_budget("0.006s", c) == pytest.approx(6.0)
    assert parse_budget("6", c) == 6.0
    assert parse_budget("100%", c) == 8.0
    assert parse_budget("20ms", c) == 20.0  # above c_K is allowed
    assert parse_budgets("2ms,3ms", c) == [2.0, 3.0]
    assert parse_budgets("2:3:0.5", c) == [2.0, 2.5, 3.0]
    assert default_budgets(c, 3) == [2.0, 5.0, 8.0]
    with pytest.raises(BudgetError, match=r"below the cost of the first exit \(2ms\)"):
        parse_budget("1ms", c)
    with pytest.raises(BudgetError, match="FLOP"):
        parse_budget("2GFLOPs", c)
    with pytest.raises(BudgetError, match="cannot read"):
        parse_budget("fast", c)
    with pytest.raises(BudgetError, match="positive"):
        parse_budget("-3ms", c)


def test_flops_budget_against_flop_costs():
    c = Costs(np.array([1e9, 2e9]), "flops", "t")
    assert parse_budget("1.5GFLOPs", c) == pytest.approx(1.5e9)
    with pytest.raises(BudgetError, match="time"):
        parse_budget("3ms", c)


@pytest.mark.parametrize("ext", ["json", "parquet", "csv"])
def test_results_round_trip(tmp_path, synth, ext):
    doc = api.evaluate(api.load_predictions(str(synth)), budgets=["2ms", "3ms"], methods=["maxprob", "oracle"])
    path = tmp_path / f"r.{ext}"
    write_results(path, doc)
    back = read_results(path)
    assert len(back["results"]) == 4
    for a, b in zip(doc["results"], back["results"]):
        assert a["method"] == b["method"] and a["budget"] == b["budget"]
        assert a["accuracy"] == pytest.approx(b["accuracy"])
        assert a["exit_fractions"] == pytest.approx(b["exit_fractions"])
        assert a["budget_met"] == b["budget_met"]


def test_atomic_write_keeps_existing_file_on_failure(tmp_path):
    from eenet_cli.artifacts.files import atomic_path

    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --------------------------------------------------------------------------- predictions from stdin, --record-time


def _run_cli(args, *, stdin_path=None, env=None, cwd=None):
    """``python -m eenet_cli ARGS`` as a real subprocess (stdin from a file when given)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as fh:
        return subprocess.run([sys.executable, "-m", "eenet_cli", *map(str, args)], stdin=fh, capture_output=True,
                              env=full_env, cwd=cwd, timeout=300)


def test_fit_reads_predictions_from_stdin(tmp_path):
    """`eenet fit - ...` with the digits predictions piped in writes the same policy as
    `eenet fit sample_data/digits.parquet ...`."""
    from conftest import SAMPLE

    digits = SAMPLE / "digits.parquet"
    args = ["--budget", "60%", "--method", "maxprob", "-q"]
    piped = _run_cli(["fit", "-", *args, "-o", tmp_path / "piped.json"], stdin_path=digits)
    assert piped.returncode == 0, piped.stderr.decode()
    named = _run_cli(["fit", digits, *args, "-o", tmp_path / "named.json"])
    assert named.returncode == 0, named.stderr.decode()
    policy = json.loads((tmp_path / "piped.json").read_text())
    assert policy == json.loads((tmp_path / "named.json").read_text())
    # 60% of the full model's 1.6028 ms, fitted on the 450 validation rows
    assert policy["method"] == "maxprob"
    assert policy["budget"] == {"value": pytest.approx(0.6 * 1.6028, rel=1e-12), "unit": "ms"}
    assert policy["validation"]["n"] == 450
    assert policy["validation"]["avg_cost"] <= 0.6 * 1.6028 * (1 + 1e-9)
    # to stdout when there is no -o, with the predictions still on stdin
    out = _run_cli(["fit", "-", *args], stdin_path=digits)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout) == policy


def test_fit_from_stdin_refuses_bytes_that_are_not_parquet(tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_text("sample_id,label\n1,2\n")
    r = _run_cli(["fit", "-", "--budget", "60%", "--method", "maxprob", "-o", tmp_path / "p.json"], stdin_path=junk)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.startswith("eenet: error: <stdin>") and "Parquet" in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_fit_from_stdin_leaves_no_temporary_copy(tmp_path):
    """Predictions read from stdin leave nothing behind in TMPDIR (an earlier reader copied
    them into a tempfile.mkdtemp() folder and never removed it)."""
    from conftest import SAMPLE

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = _run_cli(["fit", "-", "--budget", "60%", "--method", "maxprob", "-o", tmp_path / "p.json", "-q"],
                 stdin_path=SAMPLE / "digits.parquet", env={"TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in tmp.iterdir()) == []


def test_fit_record_time_stores_the_fit_seconds(runner, tmp_path):
    import time

    from conftest import SAMPLE, invoke

    from eenet_cli.artifacts.policy import read_policy

    digits = SAMPLE / "digits.parquet"
    args = ["fit", digits, "--budget", "0.7ms", "--method", "lookahead", "-q"]
    start = time.perf_counter()
    r = invoke(runner, *args, "--record-time", "-o", tmp_path / "timed.json")
    elapsed = time.perf_counter() - start
    assert r.exit_code == 0, r.output
    r = invoke(runner, *args, "-o", tmp_path / "plain.json")
    assert r.exit_code == 0, r.output
    timed = read_policy(tmp_path / "timed.json")  # still a valid policy
    plain = json.loads((tmp_path / "plain.json").read_text())
    seconds = timed["training"].pop("seconds")
    assert isinstance(seconds, float) and 0.0 < seconds <= elapsed
    assert round(seconds, 3) == seconds  # milliseconds
    assert "seconds" not in plain["training"]  # without the flag the file is deterministic
    assert timed == plain  # and the flag changes nothing else
