"""Compact predictions (docs/spec.md §2.1.1): `eenet compact`, the streamed reader, and the
same decisions as on the full file for every method whose scorer reads per-exit features.

Real files through the real CLI: the shipped digits predictions, and a synthetic file with
C = 100 whose logits are rounded to a coarse grid, so that many rows share a max-prob (ties
at thresholds) and many rows have classes tied at the top (ties in the prediction).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, invoke

from eenet_cli.artifacts.predictions import compact_predictions, read_predictions, write_predictions
from eenet_cli.synthetic import make_predictions

COMPACT_METHODS = ["maxprob", "entropy", "vote", "patience", "lookahead", "eenet", "eenet-search"]
FEATURES = ["preds", "max_prob", "entropy", "vote", "top2_probs", "pred_probs"]


def _tied_synthetic(path: Path, *, c: int = 100, n: int = 1500, kind: str = "logits", fp16: bool = False) -> Path:
    d = make_predictions(n, 4, c, seed=3, costs=[1.0, 2.0, 3.0, 4.0])
    logits = np.round(d.logits * 2.0) / 2.0  # a coarse grid: ties everywhere
    logits[:40] = 0.0  # rows where every class ties
    logits[40:80, :, :7] = logits[40:80].max(axis=-1, keepdims=True)  # seven classes tied at the top
    logits[80 : n - 300] = logits[n - 300 + np.arange(n - 380) % 250]  # repeated rows: many equal max-probs at every threshold
    scores = logits
    if kind == "probs":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = e / e.sum(axis=-1, keepdims=True)
    meta = {"format": "costs", "version": 1, "unit": "ms", "costs": d.costs}
    write_predictions(path, scores.astype(np.float32), d.labels, split=d.split, costs=meta, scores_kind=kind, fp16=fp16, row_group_size=400)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory, request):
    """(full, compact) file pairs: digits (C=10) and the tied synthetic set (C=100)."""
    d = tmp_path_factory.mktemp("compact")
    out = {}
    digits = ROOT / "sample_data" / "digits.parquet"
    synth = _tied_synthetic(d / "synth.parquet")
    for name, full, k in (("digits", digits, 3), ("synth", synth, 5)):
        comp = d / f"{name}-compact.parquet"
        proc = subprocess.run([sys.executable, "-m", "eenet_cli", "compact", str(full), "--top-k", str(k), "-o", str(comp)],
                              capture_output=True, text=True, cwd=d, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert comp.exists() and "wrote" in proc.stderr
        out[name] = (full, comp)
    return out


@pytest.mark.parametrize("name", ["digits", "synth"])
def test_features_equal_bit_for_bit(pair, name):
    full, comp = pair[name]
    eager = read_predictions(full).features()
    streamed = read_predictions(full, stream=True).features()
    compact = read_predictions(comp).features()
    assert compact.compact and not streamed.compact
    for f in FEATURES:
        a = getattr(eager, f)
        assert np.array_equal(a, getattr(streamed, f)), f
        assert np.array_equal(a, getattr(compact, f)), f
    if name == "synth":  # the ties this file is made of are there
        assert eager.num_samples - len(np.unique(eager.max_prob[:, 0])) > 600
        assert (eager.preds[:40] == 0).all()


def _policy(runner, preds, method, out):
    r = invoke(runner, "fit", preds, "--budget", "60%", "--method", method, "-o", out)
    return r, (json.loads(Path(out).read_text()) if r.exit_code == 0 else None)


def _exits(runner, policy, preds, out):
    import pyarrow.parquet as pq

    r = invoke(runner, "apply", policy, preds, "--split", "all", "-o", out)
    assert r.exit_code == 0, r.output
    return pq.read_table(out).to_pydict()


@pytest.mark.parametrize("name", ["digits", "synth"])
@pytest.mark.parametrize("method", COMPACT_METHODS)
def test_fit_and_apply_same_decisions(runner, pair, tmp_path, name, method):
    full, comp = pair[name]
    r1, p_full = _policy(runner, full, method, tmp_path / "full.json")
    assert r1.exit_code == 0, r1.output
    r2, p_comp = _policy(runner, comp, method, tmp_path / "compact.json")
    assert r2.exit_code == 0, r2.output
    for p in (p_full, p_comp):
        p.pop("provenance")
    assert p_full == p_comp
    e_full = _exits(runner, tmp_path / "full.json", full, tmp_path / "full.parquet")
    e_comp = _exits(runner, tmp_path / "compact.json", comp, tmp_path / "compact.parquet")
    for col in ("exit", "score", "prediction", "correct"):
        assert e_full[col] == e_comp[col], col


@pytest.mark.parametrize("name", ["digits", "synth"])
def test_evaluate_same_results(runner, pair, name):
    full, comp = pair[name]
    docs = []
    for f in (full, comp):
        r = invoke(runner, "evaluate", f, "--methods", "maxprob,entropy,vote,patience,oracle", "--budgets", "40%,70%", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        for key in ("predictions_sha256", "costs_source"):
            doc.pop(key)
        docs.append(doc)
    assert docs[0] == docs[1]
    assert {x["method"] for x in docs[0]["results"]} == {"maxprob", "entropy", "vote", "patience", "oracle"}


def test_certify_same_on_compact(runner, pair, tmp_path):
    full, comp = pair["digits"]
    outs = []
    for f in (full, comp):
        r = invoke(runner, "fit", f, "--budget", "60%", "--method", "maxprob", "--confidence", "0.9", "-o", tmp_path / "p.json")
        assert r.exit_code == 0, r.output
        doc = json.loads((tmp_path / "p.json").read_text())
        doc.pop("provenance")
        outs.append(_without_sha(doc))
    assert outs[0] == outs[1]


def _without_sha(x):
    if isinstance(x, dict):
        return {k: _without_sha(v) for k, v in x.items() if "sha256" not in k}
    if isinstance(x, list):
        return [_without_sha(v) for v in x]
    return x


def test_eenet_full_inputs_refuse_compact_in_one_line(runner, pair, tmp_path):
    _, comp = pair["digits"]
    proc = subprocess.run([sys.executable, "-m", "eenet_cli", "fit", str(comp), "--budget", "60%", "--method", "eenet", "--eenet-inputs", "full",
                           "-o", str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "compact" in lines[0] and "EENet" in lines[0] and "full-score file" in lines[0]
    assert not (tmp_path / "p.json").exists()


def test_probs_and_float16_files(tmp_path):
    for kind, fp16 in (("probs", False), ("logits", True)):
        full = _tied_synthetic(tmp_path / f"{kind}{fp16}.parquet", c=30, n=600, kind=kind, fp16=fp16)
        comp = tmp_path / f"{kind}{fp16}-compact.parquet"
        info = compact_predictions(full, comp, top_k=4)
        assert info["scores"] == kind and info["rows"] == 600
        a, b = read_predictions(full).features(), read_predictions(comp).features()
        for f in FEATURES:
            assert np.array_equal(getattr(a, f), getattr(b, f)), (kind, fp16, f)


def test_part_folder_streams_like_one_file(runner, tmp_path):
    import pyarrow.parquet as pq

    t = pq.read_table(ROOT / "sample_data" / "digits.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (lo, hi) in enumerate(((0, 100), (100, 450), (450, 451), (451, 900))):
        pq.write_table(t.slice(lo, hi - lo), folder / f"part-{i:05d}.parquet", row_group_size=64)
    one = read_predictions(ROOT / "sample_data" / "digits.parquet", stream=True)
    parts = read_predictions(folder, stream=True)
    for f in FEATURES:
        assert np.array_equal(getattr(one.features(), f), getattr(parts.features(), f))
    assert np.array_equal(one.labels, parts.labels) and (one.split == parts.split).all()
    assert np.array_equal(one.scores, parts.scores)  # the full scores, read again on demand
    comp = tmp_path / "parts-compact.parquet"
    r = invoke(runner, "compact", folder, "-o", comp, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == 900


def test_compact_file_is_small_and_schema_covers_it(runner, pair):
    full, comp = pair["synth"]
    assert comp.stat().st_size < full.stat().st_size / 2
    r = invoke(runner, "schema", "predictions")
    schema = json.loads(r.stdout)
    assert schema["properties"]["version"]["maximum"] == 2 and "top_k" in schema["properties"]
    import jsonschema
    import pyarrow.parquet as pq

    for f in (full, comp):
        meta = {k.decode()[6:]: json.loads(v) for k, v in pq.ParquetFile(f).schema_arrow.metadata.items() if k.startswith(b"eenet.") and k != b"eenet.costs"}
        jsonschema.validate(meta, schema)


def test_compact_never_overwrites_its_input(runner, pair, tmp_path):
    full, _ = pair["synth"]
    before = full.read_bytes()
    r = invoke(runner, "compact", full, "-o", full)
    assert r.exit_code == 2
    assert full.read_bytes() == before
