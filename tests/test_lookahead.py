"""Lookahead policy: budget guarantee, determinism, causality, exact reproduction, cache,
the loose-budget fallback, the scorer validator, and a win over max-prob where it should win."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from eenet_cli.core import lookahead as la
from eenet_cli.core.lookahead import fit_lookahead, lookahead_scores, validate_lookahead_scorer
from eenet_cli.core.measures import exit_features
from eenet_cli.core.thresholds import Ranking, apply_thresholds, fit_geometric, within_budget
from eenet_cli.synthetic import make_predictions

COSTS = np.array([1.0, 2.0, 3.0, 4.0])


def split(n=2400, k=4, c=10, seed=3, miscalibration=1.0):
    d = make_predictions(n, k, c, seed=seed, miscalibration=miscalibration)
    val = d.split == "val"
    fv = exit_features(d.logits[val], "logits", d.labels[val])
    ft = exit_features(d.logits[~val], "logits", d.labels[~val])
    return d, fv, ft


@pytest.fixture(scope="module")
def data():
    return split()


@pytest.fixture(scope="module")
def cache():
    return {}


@pytest.fixture(scope="module")
def fits(data, cache):
    _, fv, _ = data
    budgets = [1.0, 1.1, 1.4, 1.8, 2.3, 3.0, 3.6, 4.0, 5.0]
    return {b: fit_lookahead(fv, COSTS, b, seed=0, cache=cache) for b in budgets}


def test_budget_respected_on_validation_across_the_range(data, fits):
    _, fv, _ = data
    for b, pol in fits.items():
        v = pol["validation"]
        assert within_budget(v["avg_cost"], b), (b, v)
        assert v["n"] == fv.num_samples
        assert pol["thresholds"][-1] is None and len(pol["thresholds"]) == 4
        assert abs(sum(v["exit_fractions"]) - 1) < 1e-12
        assert pol["exit_distribution"] == v["exit_fractions"]
    # at c_1 everyone stops at the first exit
    assert fits[1.0]["validation"]["exit_fractions"][0] == 1.0
    # more budget never hurts validation accuracy by much (different rules may be chosen)
    accs = [fits[b]["validation"]["accuracy"] for b in sorted(fits)]
    assert accs[-1] > accs[0] + 0.3


def test_numpy_scores_reproduce_the_validation_figures_exactly(data, fits):
    _, fv, _ = data
    for b, pol in fits.items():
        pol = json.loads(json.dumps(pol))  # what a policy file holds
        scores = lookahead_scores(pol["scorer"], fv)
        assert scores.shape == (fv.num_samples, 4) and scores.dtype == np.float64
        exits = apply_thresholds(scores, pol["thresholds"])
        rows = np.arange(fv.num_samples)
        assert float(fv.correct[rows, exits].mean()) == pol["validation"]["accuracy"]
        assert float(COSTS[exits].mean(dtype=np.float64)) == pol["validation"]["avg_cost"]
        assert (np.bincount(exits, minlength=4) / fv.num_samples).tolist() == pol["validation"]["exit_fractions"]


def test_deterministic_and_cache_does_not_change_the_result(data, fits):
    _, fv, _ = data
    fresh = fit_lookahead(fv, COSTS, 1.8, seed=0)  # no cache: estimators refitted
    assert json.dumps(fresh) == json.dumps(fits[1.8])
    again = fit_lookahead(fv, COSTS, 1.8, seed=0)
    assert json.dumps(again) == json.dumps(fresh)


def test_cache_reuses_the_estimators(data, cache, fits, monkeypatch):
    _, fv, _ = data
    assert len(cache) == 1  # one set of estimators served every budget

    def boom(*a, **k):
        raise AssertionError("estimators refitted despite the cache")

    monkeypatch.setattr(la, "fit_estimators", boom)
    pol = fit_lookahead(fv, COSTS, 2.7, seed=0, cache=cache)
    assert within_budget(pol["validation"]["avg_cost"], 2.7)
    # other data or another seed do not hit the cache
    with pytest.raises(AssertionError, match="refitted"):
        fit_lookahead(fv.subset(np.arange(500)), COSTS, 2.7, seed=0, cache=cache)
    with pytest.raises(AssertionError, match="refitted"):
        fit_lookahead(fv, COSTS, 2.7, seed=1, cache=cache)


def test_scores_are_causal(data, fits):
    d, fv, ft = data
    scorer = fits[1.8]["scorer"]
    base = lookahead_scores(scorer, ft)
    val = d.split == "val"
    logits = d.logits[~val]
    rng = np.random.default_rng(0)
    for k in range(3):
        pert = logits.copy()
        pert[:, k + 1 :] = rng.standard_normal(pert[:, k + 1 :].shape).astype(np.float32) * 5
        s = lookahead_scores(scorer, exit_features(pert, "logits", d.labels[~val]))
        np.testing.assert_array_equal(s[:, : k + 1], base[:, : k + 1])
        assert not np.array_equal(s[:, k + 1 : 3], base[:, k + 1 : 3]) or k == 2
        # the first k+1 exits alone give the same first k+1 columns (the online case)
        prefix = lookahead_scores(scorer, exit_features(logits[:, : k + 1], "logits"))
        np.testing.assert_array_equal(prefix, base[:, : k + 1])


def test_quota_rule_is_causal_too(data, fits):
    d, fv, ft = data
    scorer = dict(fits[1.8]["scorer"], rule="quota")
    base = lookahead_scores(scorer, ft)
    prefix = lookahead_scores(scorer, exit_features(d.logits[d.split != "val"][:, :2], "logits"))
    np.testing.assert_array_equal(prefix, base[:, :2])


def test_loose_budget_fallback_never_worse_than_quota_on_the_same_scores():
    # calibrated data: at loose budgets the estimates say "stop" early (λ = 0), and a quota
    # rule that spends the whole budget can be more accurate
    _, fv, _ = split(n=2400, seed=5, miscalibration=0.0)
    cache: dict = {}
    seen_zero = False
    for b in [2.5, 3.0, 3.5, 3.8, 4.0]:
        pol = fit_lookahead(fv, COSTS, b, seed=0, cache=cache)
        cands = {c["rule"]: c for c in pol["threshold_fit"]["candidates"]}
        chosen = cands[pol["threshold_fit"]["rule"]]
        look = cands["lookahead"]
        if look["lambda"] == 0.0:
            seen_zero = True
            for name in ("quota-geometric", "quota-lookahead-distribution"):
                assert chosen["cv_accuracy"] >= cands[name]["cv_accuracy"]
        # and on the policy's own (refitted) scores, against geometric quotas on P̂[k, k]
        est = next(iter(cache.values()))
        rank = Ranking(np.stack([est["final"][:, k, k] for k in range(4)], axis=1))
        quota = fit_geometric(rank, COSTS, b)
        rows = np.arange(fv.num_samples)
        quota_acc = float(fv.correct[rows, apply_thresholds(rank.scores, quota.thresholds)].mean())
        assert pol["validation"]["accuracy"] >= quota_acc - 0.01
    assert seen_zero


def test_beats_maxprob_at_a_tight_budget_on_miscalibrated_data():
    _, fv, ft = split(n=4000, seed=7, miscalibration=1.0)
    rows = np.arange(ft.num_samples)
    cache: dict = {}
    for b in (1.5, 2.0):
        pol = fit_lookahead(fv, COSTS, b, seed=0, cache=cache)
        ex = apply_thresholds(lookahead_scores(pol["scorer"], ft), pol["thresholds"])
        acc = ft.correct[rows, ex].mean()
        geo = fit_geometric(Ranking(fv.max_prob), COSTS, b)
        acc_mp = ft.correct[rows, apply_thresholds(ft.max_prob, geo.thresholds)].mean()
        assert acc > acc_mp + 0.02, (b, acc, acc_mp)
        assert COSTS[ex].mean() <= b + 0.1  # test cost close to the budget


def test_validator_accepts_fits_and_rejects_malformed_scorers(fits):
    scorer = json.loads(json.dumps(fits[1.8]["scorer"]))
    assert validate_lookahead_scorer(scorer, 4, 10) is None
    assert validate_lookahead_scorer(scorer, 3, 10) is not None
    assert validate_lookahead_scorer(scorer, 4, 11) is not None

    def broken(mutate):
        s = copy.deepcopy(scorer)
        mutate(s)
        return validate_lookahead_scorer(s, 4, 10)

    cases = {
        "type": lambda s: s.update(type="eenet"),
        "rule": lambda s: s.update(rule="greedy"),
        "lambda": lambda s: s.update(**{"lambda": float("nan")}),
        "lambda_str": lambda s: s.update(**{"lambda": "1"}),
        "costs": lambda s: s.update(costs=[1.0, 2.0, 2.0, 3.0]),
        "exits": lambda s: s["exits"].pop(),
        "targets": lambda s: s["exits"][1]["targets"].pop(),
        "exit index": lambda s: s["exits"][1]["targets"][0].update(exit=2),
        "weight len": lambda s: s["exits"][2]["targets"][0]["weight"].append(0.0),
        "weight nan": lambda s: s["exits"][2]["targets"][0]["weight"].__setitem__(0, float("inf")),
        "weight nested": lambda s: s["exits"][0]["targets"][0].update(weight=[[0.0]] * 3),
        "class_bias": lambda s: s["exits"][0]["targets"][1].update(class_bias=[0.0] * 9),
        "class_slope": lambda s: s["exits"][3]["targets"][0].update(class_slope=None),
        "bias": lambda s: s["exits"][0]["targets"][0].update(bias=None),
        "inputs": lambda s: s["exits"][1].update(inputs=["margin_0"]),
        "not dict": lambda s: s["exits"].__setitem__(0, []),
        "class_scale rows": lambda s: s["class_scale"].pop(),
        "class_scale zero": lambda s: s["class_scale"][1].__setitem__(3, 0.0),
        "class_scale nan": lambda s: s["class_scale"][0].__setitem__(0, float("nan")),
        "margin_clip": lambda s: s.update(margin_clip=10.0),
    }
    for name, mutate in cases.items():
        assert isinstance(broken(mutate), str), name
    assert validate_lookahead_scorer([], 4, 10) is not None


def test_bad_inputs():
    _, fv, _ = split(n=400)
    with pytest.raises(ValueError, match="below the cost of the first exit"):
        fit_lookahead(fv, COSTS, 0.5)
    with pytest.raises(ValueError, match="costs"):
        fit_lookahead(fv, COSTS[:3], 2.0)
    with pytest.raises(ValueError, match="increasing"):
        fit_lookahead(fv, np.array([1.0, 3.0, 2.0, 4.0]), 2.0)
    d = make_predictions(100, 4, 10, seed=0)
    with pytest.raises(ValueError, match="labels"):
        fit_lookahead(exit_features(d.logits, "logits"), COSTS, 2.0)


@pytest.mark.parametrize("k", [1, 2])
def test_few_exits_and_few_rows(k):
    d = make_predictions(60, k, 3, seed=0, miscalibration=0.5)
    fv = exit_features(d.logits, "logits", d.labels)
    costs = COSTS[:k]
    for b in (costs[0], (costs[0] + costs[-1]) / 2, costs[-1]):
        pol = fit_lookahead(fv, costs, b, seed=0)
        assert within_budget(pol["validation"]["avg_cost"], b)
        assert pol["thresholds"][-1] is None and len(pol["thresholds"]) == k
        assert validate_lookahead_scorer(json.loads(json.dumps(pol["scorer"])), k, 3) is None
        ex = apply_thresholds(lookahead_scores(pol["scorer"], fv), pol["thresholds"])
        assert float(costs[ex].mean()) == pol["validation"]["avg_cost"]


def test_probability_inputs_work():
    d = make_predictions(600, 3, 5, seed=2, miscalibration=1.0)
    z = d.logits - d.logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    p[:, :, 0] = 0.0  # exact zeros must not break the log features
    p /= p.sum(axis=-1, keepdims=True)
    fv = exit_features(p.astype(np.float32), "probs", d.labels)
    pol = fit_lookahead(fv, COSTS[:3], 1.7, seed=0)
    assert np.all(np.isfinite(lookahead_scores(pol["scorer"], fv)))
    assert validate_lookahead_scorer(pol["scorer"], 3, 5) is None
