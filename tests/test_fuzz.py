"""Fuzzing the readers: mutated artifacts either load or raise ``EenetError``, never
anything else (no ``KeyError``, ``TypeError``, ``OverflowError``, pyarrow exception...).

Each test starts from a valid artifact, mutates it (bytes flipped, cut, inserted; JSON
keys deleted, values swapped for other types or extreme numbers, NaN literals spliced
in), writes it to disk and calls the reader in-process. Whatever a reader accepts must
also be usable: accepted predictions get a valid policy applied and a baseline fitted;
accepted policies are applied to valid predictions; accepted results go through the
``evaluate --check`` comparison. Bounded: ~100 examples per test, no deadline.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eenet_cli.errors import EenetError

# EENET_FUZZ_EXAMPLES=2000 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("EENET_FUZZ_EXAMPLES", "100")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
K, C = 3, 5


# --------------------------------------------------------------------------- valid artifacts

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Valid predictions (zstd and uncompressed), policies, costs and results, as bytes/dicts."""
    import pyarrow.parquet as pq
    from bad_inputs.make import eenet_scorer

    from eenet_cli import api
    from eenet_cli.artifacts.predictions import read_predictions, write_predictions
    from eenet_cli.synthetic import make_predictions

    d = tmp_path_factory.mktemp("fuzz")
    s = make_predictions(60, K, C, seed=4, costs=[1.0, 2.0, 3.0])
    costs = {"format": "costs", "version": 1, "unit": "ms", "costs": [1.0, 2.0, 3.0],
             "stats": {"median": [1.0, 2.0, 3.0], "p10": [0.9, 1.9, 2.9], "repeats": 20},
             "flops": [10, 20, 30], "device": "cpu", "batch_size": 1}
    write_predictions(d / "zstd.parquet", s.logits, s.labels, split=s.split, costs=costs, sample_id=np.arange(60), row_group_size=32)
    table = pq.read_table(d / "zstd.parquet")
    pq.write_table(table, d / "plain.parquet", compression="none", row_group_size=32)
    preds = read_predictions(d / "zstd.parquet")
    policies = {m: api.fit_policy(preds, "2ms", method=m) for m in ("maxprob", "entropy", "vote", "patience")}
    policies["eenet"] = {**policies["maxprob"], "method": "eenet", "scorer": eenet_scorer(K, C)}
    results = api.evaluate(preds, budgets=["1.5ms", "2.5ms"], methods=["maxprob", "patience", "oracle"])
    results = json.loads(json.dumps(results))
    return {
        "dir": d,
        "parquet": {"zstd": (d / "zstd.parquet").read_bytes(), "plain": (d / "plain.parquet").read_bytes()},
        "preds": preds,
        "policies": policies,
        "costs": costs,
        "results": results,
    }


def survives(fn, *args, **kw):
    """``fn(...)``'s value, or None when it refused the input with an EenetError."""
    try:
        return fn(*args, **kw)
    except EenetError as e:
        assert str(e).strip(), "an error with no message"
        assert "\n" not in str(e), f"a multi-line error: {e!r}"
        return None


# --------------------------------------------------------------------------- byte mutations

def byte_mutations(size: int, hot_start: int):
    """Edits of a byte string of ``size`` bytes; half of them land in [hot_start, size)."""
    pos = st.one_of(st.integers(0, size - 1), st.integers(min(hot_start, size - 1), size - 1))
    return st.lists(
        st.one_of(
            st.tuples(st.just("flip"), pos, st.integers(1, 255)),
            st.tuples(st.just("cut"), pos, st.just(b"")),
            st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=8)),
            st.tuples(st.just("overwrite"), pos, st.binary(min_size=1, max_size=16)),
        ),
        min_size=1,
        max_size=4,
    )


def mutate_bytes(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for op, at, arg in edits:
        at = min(at, max(len(b) - 1, 0))
        if op == "flip" and b:
            b[at] ^= arg
        elif op == "cut":
            del b[at:]
        elif op == "insert":
            b[at:at] = arg
        elif op == "overwrite":
            b[at : at + len(arg)] = arg
    return bytes(b)


def _footer_start(data: bytes) -> int:
    (length,) = struct.unpack("<I", data[-8:-4])
    return len(data) - 8 - length


def parquet_edits(sources):
    """(source name, edits): shrinks to a short, readable falsifying example."""
    return st.sampled_from(sorted(sources)).flatmap(
        lambda name: st.tuples(st.just(name), byte_mutations(len(sources[name]), _footer_start(sources[name])))
    )


def test_mutated_predictions_load_or_refuse(world):
    from eenet_cli import api
    from eenet_cli.artifacts.predictions import read_predictions

    path = world["dir"] / "mutated.parquet"
    policy = world["policies"]["maxprob"]

    @FUZZ
    @given(edit=parquet_edits(world["parquet"]))
    def check(edit):
        name, edits = edit
        path.write_bytes(mutate_bytes(world["parquet"][name], edits))
        preds = survives(read_predictions, path)
        if preds is None:
            return
        assert preds.scores.shape[1:] == (preds.num_exits, preds.num_classes)
        assert np.isfinite(preds.scores).all()
        applied = survives(api.apply_policy, policy, preds)
        if applied is not None:
            assert applied.exits.shape == (preds.num_samples,)
        survives(api.fit_policy, preds, "2ms", method="maxprob")
        survives(api.evaluate, preds, budgets=["2ms"], methods=["maxprob", "oracle"])

    check()


# --------------------------------------------------------------------------- JSON mutations

HUGE = [10**400, -(10**400), 2**63, -(2**63), 2**64 + 1, 1e308, -1e308, 5e-324]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10),
    st.sampled_from(HUGE),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.sampled_from(["ms", "GFLOPs", "eenet", "maxprob", "policy", "results", "costs", "val", "test", "1"]),
    st.lists(st.one_of(st.integers(-3, 3), st.floats(-2, 2), st.none(), st.text(max_size=1)), max_size=4),
    st.dictionaries(st.sampled_from(["type", "unit", "costs", "value", "exits", "x"]), st.integers(-1, 3), max_size=2),
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _tweaks(x):
    out = [-x, 0, x + 1, str(x), [x]]
    for f in (lambda v: v * 1e300, float, int):
        try:
            out.append(f(x))
        except (OverflowError, ValueError):
            pass
    return [v for v in out if not (isinstance(v, float) and not math.isfinite(v))]


@st.composite
def mutated_doc(draw, doc):
    """``doc`` with 1-3 structural edits at random places (shallow places as likely as deep ones)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        depth = draw(st.integers(0, max(len(p) for p in paths)))
        path = draw(st.sampled_from([p for p in paths if len(p) == depth] or paths))
        if not path:
            if draw(st.integers(0, 9)) == 0:
                doc = draw(VALUES)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        old = parent[key]
        op = draw(st.sampled_from(["delete", "replace", "replace", "tweak", "grow"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(VALUES)
        elif op == "tweak" and isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[key] = draw(st.sampled_from(_tweaks(old)))
        elif op == "grow" and isinstance(old, list):
            old.append(copy.deepcopy(old[-1]) if old and draw(st.booleans()) else draw(VALUES))
        elif op == "grow" and isinstance(old, dict):
            old[draw(st.sampled_from(["extra", "type", "version", "format"]))] = draw(VALUES)
        else:
            parent[key] = draw(VALUES)
    return doc


@st.composite
def json_text(draw, doc):
    """Mutated JSON text: structural edits, then sometimes a NaN literal or broken bytes."""
    text = json.dumps(draw(mutated_doc(doc)))
    how = draw(st.sampled_from(["plain", "plain", "plain", "literal", "bytes"]))
    if how == "literal":
        import re

        numbers = [m.span() for m in re.finditer(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text)]
        if numbers:
            a, b = draw(st.sampled_from(numbers))
            text = text[:a] + draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0"])) + text[b:]
        return text.encode()
    if how == "bytes":
        data = text.encode()
        return mutate_bytes(data, draw(byte_mutations(len(data), 0)))
    return text.encode()


def test_mutated_costs_load_or_refuse(world):
    from eenet_cli.artifacts.costs import load_costs, parse_costs_json

    path = world["dir"] / "costs.json"

    @FUZZ
    @given(data=json_text(world["costs"]))
    def check(data):
        path.write_bytes(data)
        costs = survives(load_costs, str(path))
        if costs is not None:
            v = costs.values
            assert v.dtype == np.float64 and np.isfinite(v).all() and (v > 0).all() and (np.diff(v) > 0).all()
            costs.to_json()
            costs.brief()
        try:
            doc = json.loads(data)
        except ValueError:
            return
        survives(parse_costs_json, doc, "costs")

    check()


def test_inline_costs_and_budgets_parse_or_refuse(world):
    from eenet_cli.artifacts.costs import Costs, load_costs, parse_budget, parse_budgets

    costs = Costs(np.array([1.0, 2.0, 3.0]), "ms", "test")
    token = st.one_of(
        st.sampled_from(["1", "2.5", "-1", "0", "1e999", "nan", "inf", ".5", "3e-400", "1e400"]),
        st.from_regex(r"[-+]?\d{1,3}(\.\d{0,2})?([eE][-+]?\d{1,3})?", fullmatch=True),
    )
    unit = st.sampled_from(["", "ms", "us", "s", "%", "GFLOPs", "flops", "µs", "parsecs", " ms"])
    item = st.builds(lambda a, b: a + b, token, unit)
    spec = st.one_of(
        st.lists(item, max_size=4).map(",".join),
        st.lists(item, min_size=2, max_size=4).map(":".join),
        st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12),  # a newline in an option prints on two lines
    )

    @FUZZ
    @given(text=spec)
    def check(text):
        for fn in (parse_budget, parse_budgets):
            out = survives(fn, text, costs)
            values = out if isinstance(out, list) else ([] if out is None else [out])
            assert all(isinstance(v, float) and math.isfinite(v) and v >= 1.0 * (1 - 1e-9) for v in values)
        if text and text != "-" and not Path(text).exists():  # "-" is stdin
            got = survives(load_costs, text)
            if got is not None:
                assert np.isfinite(got.values).all()

    check()


def test_mutated_policies_load_or_refuse(world):
    from eenet_cli import api
    from eenet_cli.artifacts.policy import read_policy

    path = world["dir"] / "policy.json"
    preds = world["preds"]
    test_rows = preds.rows(preds.split == "test")

    @FUZZ
    @given(data=st.sampled_from(sorted(world["policies"])).flatmap(lambda m: json_text(world["policies"][m])))
    def check(data):
        path.write_bytes(data)
        policy = survives(read_policy, path)
        if policy is None:
            return
        applied = survives(api.apply_policy, policy, test_rows, source=str(path))
        if applied is not None:
            assert applied.exits.shape == (test_rows.num_samples,)
            assert ((applied.exits >= 0) & (applied.exits < K)).all()
            json.dumps(applied.summary, allow_nan=True)

    check()


def test_mutated_results_load_or_refuse(world):
    from eenet_cli.artifacts.results import read_results
    from eenet_cli.commands.evaluate import check_regressions

    path = world["dir"] / "results.json"
    good = world["results"]

    @FUZZ
    @given(data=json_text(good))
    def check(data):
        path.write_bytes(data)
        doc = survives(read_results, path)
        if doc is None:
            return
        assert isinstance(doc["results"], list) and doc["results"]
        # what `evaluate --check` does with an accepted file, both ways round
        survives(check_regressions, good, doc, 0.0)
        survives(check_regressions, doc, good, 0.0)

    check()


def test_mutated_results_csv_load_or_refuse(world):
    from eenet_cli.artifacts.results import read_results, write_results
    from eenet_cli.commands.evaluate import check_regressions

    path = world["dir"] / "results.csv"
    write_results(path, world["results"])
    base = path.read_bytes()

    @settings(max_examples=60, deadline=None)
    @given(edits=byte_mutations(len(base), 0))
    def check(edits):
        path.write_bytes(mutate_bytes(base, edits))
        doc = survives(read_results, path)
        if doc is not None:
            survives(check_regressions, world["results"], doc, 0.0)

    check()
