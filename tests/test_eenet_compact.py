"""EENet's compact scorer (the default): inputs that do not grow with the number of classes,
exact on compact prediction files, row-exact arithmetic, and the full-vector scorer kept as
``--eenet-inputs full``.

Real files through the real CLI where the behaviour is a user's (file sizes, refusals,
--check against results written before the inputs were recorded); the library for the
arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, invoke, write_synthetic

from eenet_cli.core.eenet import COMPACT_FEATURES, FEATURES, EENetHyper, eenet_forward
from eenet_cli.core.measures import exit_features
from eenet_cli.core.methods import FitCache, fit_method
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.policy import apply_to_features
from eenet_cli.learn.eenet_torch import train_eenet
from eenet_cli.synthetic import make_predictions


def _fit(runner, preds: Path, out: Path, *extra) -> dict:
    r = invoke(runner, "fit", preds, "--budget", "50%", "--method", "eenet", "-o", out, "-q", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def test_the_compact_policy_stays_small_at_a_thousand_classes(runner, tmp_path):
    """C = 1,000: the compact policy file is a few kB (the acceptance bound is 1 MB) and its
    weights have the same shapes as at C = 10; the full-vector scorer's grow with C."""
    big = write_synthetic(tmp_path / "c1000.parquet", n=500, k=4, c=1000, seed=4, miscalibration=0.5)
    small = write_synthetic(tmp_path / "c10.parquet", n=500, k=4, c=10, seed=4, miscalibration=0.5)
    p_big = _fit(runner, big, tmp_path / "big.json")
    p_small = _fit(runner, small, tmp_path / "small.json")
    assert p_big["scorer"]["features"] == COMPACT_FEATURES
    assert (tmp_path / "big.json").stat().st_size < 1_000_000
    shapes = [[np.shape(e["shared_weight"]) for e in p["scorer"]["exits"]] for p in (p_big, p_small)]
    assert shapes[0] == shapes[1]
    assert [s[1] for s in shapes[0]] == [4 + 2 * j for j in range(4)]
    full = _fit(runner, small, tmp_path / "full.json", "--eenet-inputs", "full")
    assert full["scorer"]["features"] == FEATURES
    assert [np.shape(e["shared_weight"])[1] for e in full["scorer"]["exits"]] == [10 + 3 + j for j in range(4)]


def test_the_utilities_of_a_row_do_not_depend_on_the_other_rows():
    """The compact arithmetic is row-exact: any subset of rows, single rows included, gives
    the same bits as the whole batch (what makes online decisions equal offline ones)."""
    d = make_predictions(900, 4, 50, seed=2, miscalibration=0.5)
    f = exit_features(d.logits, "logits", d.labels)
    res = train_eenet(f, [1.0, 2.0, 3.0, 4.0], 2.5, seed=0)
    util, assign = eenet_forward(res.scorer, f)
    assert np.isfinite(util).all() and np.isfinite(assign).all()
    for rows in (np.arange(0, 900, 7), np.array([5]), np.array([899, 0])):
        sub = exit_features(d.logits[rows], "logits", d.labels[rows])
        u, a = eenet_forward(res.scorer, sub)
        assert np.array_equal(u, util[rows]) and np.array_equal(a, assign[rows])
    # exits 0..j only (the online path): the first j+1 columns, bit for bit
    seen = exit_features(d.logits[:, :2], "logits", d.labels)
    u2, _ = eenet_forward(res.scorer, seen, upto=2)
    assert np.array_equal(u2, util[:, :2])


@pytest.mark.parametrize("inputs", ["compact", "full"])
def test_online_decisions_equal_offline_for_both_layouts(inputs):
    d = make_predictions(700, 4, 30, seed=9, miscalibration=0.7)
    f = exit_features(d.logits, "logits", d.labels)
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    pol = fit_method("eenet", FitCache(f), costs, 2.3, "ms", hyper=EENetHyper(inputs=inputs), learner=train_eenet)
    assert pol["scorer"]["features"] == (COMPACT_FEATURES if inputs == "compact" else FEATURES)
    off = apply_to_features(pol, f)
    op = OnlinePolicy(pol)
    single = np.array([op.run(d.logits[i]) for i in range(700)])
    state = op.begin(700)
    exits = np.full(700, -1)
    active = np.arange(700)
    for j in range(4):
        stop, _, _ = op.step(state, j, d.logits[active, j], active)
        exits[active[stop]] = j
        active = active[~stop]
    if inputs == "compact":  # row-exact arithmetic: every decision equal, threshold samples included
        np.testing.assert_array_equal(single[:, 0], off.exits)
        np.testing.assert_array_equal(single[:, 1], off.preds)
        np.testing.assert_array_equal(exits, off.exits)
        return
    # the full layout's products run by BLAS, which may round a row differently by an ulp
    # depending on where it falls in the batch (the caveat in core/online.py): decisions must
    # be equal except for a sample whose offline score sits on a threshold (quota thresholds
    # are set at validation scores, so there is one such sample per exit), and only there
    thr = pol["thresholds"]
    for got in (single[:, 0], exits):
        for i in np.flatnonzero(got != off.exits):
            j = int(min(got[i], off.exits[i]))  # the first exit where the two decisions part
            assert thr[j] is not None and abs(off.scores[i, j] - thr[j]) <= 1e-12 * max(1.0, abs(thr[j])), (i, j)
        assert (got != off.exits).sum() <= 3


def _one_line_error(r) -> str:
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def test_bad_compact_scorers_are_refused_in_one_line(runner, tmp_path):
    policy = _fit(runner, SAMPLE / "digits.parquet", tmp_path / "p.json")
    bad = json.loads(json.dumps(policy))
    bad["scorer"]["features"] = ["max_prob", "entropy"]
    (tmp_path / "features.json").write_text(json.dumps(bad))
    r = invoke(runner, "apply", tmp_path / "features.json", SAMPLE / "digits.parquet", "-o", tmp_path / "a.parquet")
    assert r.exit_code == 2 and "scorer.features" in _one_line_error(r)
    bad = json.loads(json.dumps(policy))
    bad["scorer"]["exits"][1]["shared_weight"] = [row[:-1] for row in bad["scorer"]["exits"][1]["shared_weight"]]
    (tmp_path / "width.json").write_text(json.dumps(bad))
    r = invoke(runner, "apply", tmp_path / "width.json", SAMPLE / "digits.parquet", "-o", tmp_path / "a.parquet")
    line = _one_line_error(r)
    assert r.exit_code == 2 and "shared_weight must be [H, 6] (compact inputs)" in line
    assert not (tmp_path / "a.parquet").exists()
    r = invoke(runner, "fit", SAMPLE / "digits.parquet", "--budget", "50%", "--eenet-inputs", "wide", "-o", tmp_path / "x.json")
    assert r.exit_code == 2 and "--eenet-inputs" in _one_line_error(r)


def test_check_against_results_written_before_the_inputs_were_recorded(runner, tmp_path):
    """Results without ``eenet_inputs`` were made by the full-vector scorer (the default then):
    --check refits with it, so a stored CI reference keeps passing."""
    ref = tmp_path / "ref.json"
    r = invoke(runner, "evaluate", SAMPLE / "digits.parquet", "--methods", "eenet,maxprob", "--budgets", "40%,70%",
               "--eenet-inputs", "full", "-o", ref, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(ref.read_text())
    assert doc["eenet_inputs"] == "full"
    del doc["eenet_inputs"]
    ref.write_text(json.dumps(doc))
    r = invoke(runner, "evaluate", SAMPLE / "digits.parquet", "--check", ref, "-q")
    assert r.exit_code == 0, r.output
    # the default now is the compact scorer, and the results say so
    r = invoke(runner, "evaluate", SAMPLE / "digits.parquet", "--methods", "eenet", "--budgets", "40%", "--json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["eenet_inputs"] == "compact"


def test_training_uses_a_seeded_sample_of_many_rows_and_thresholds_use_every_row():
    """Above ``max_train_rows`` the network learns from a seeded sample (bounded training
    time on millions of rows); the exit distribution and the thresholds still use every
    row, so the realised validation cost stays within the budget on all of them."""
    d = make_predictions(1200, 4, 20, seed=5, miscalibration=0.5)
    f = exit_features(d.logits, "logits", d.labels)
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    hyper = EENetHyper(max_train_rows=400)
    res = train_eenet(f, costs, 2.2, seed=3, hyper=hyper)
    assert res.hyperparameters["train_rows"] == 400 and res.extras["train_rows"].size == 400
    assert res.extras["numpy_utilities"].shape == (1200, 4)
    again = train_eenet(f, costs, 2.2, seed=3, hyper=hyper)
    assert again.scorer == res.scorer  # the sample is seeded
    pol = fit_method("eenet", FitCache(f), costs, 2.2, "ms", hyper=hyper, learner=train_eenet)
    off = apply_to_features(pol, f)
    assert pol["validation"]["n"] == 1200 and costs[off.exits].mean() <= 2.2 + 1e-12
    with pytest.raises(Exception, match="max_train_rows"):
        train_eenet(f, costs, 2.2, hyper=EENetHyper(max_train_rows=1))
