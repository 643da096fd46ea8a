"""Certified patience: run length + max-prob / 2, so the certified threshold shift moves the
cost continuously instead of in K steps (core.policy.TIE_BREAKS, docs/certify.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import invoke
from eenet_cli import api
from eenet_cli.artifacts.policy import read_policy
from eenet_cli.certified import fit_certified
from eenet_cli.core.measures import exit_features
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.policy import apply_to_features, compute_scores
from eenet_cli.errors import InputError
from eenet_cli.synthetic import make_predictions


@pytest.fixture(scope="module")
def population():
    syn = make_predictions(60_000, 4, 10, seed=5, miscalibration=0.7, val_fraction=1.0)
    feats = api.predictions_from_arrays(syn.logits, syn.labels, costs=syn.costs, unit="ms").features()
    return syn, feats, np.asarray(syn.costs, dtype=np.float64)


def test_integer_thresholds_decide_as_plain_patience(population):
    """At PABEE's own thresholds (whole run lengths) the tie-break changes no decision."""
    _, feats, _ = population
    for t in (2.0, 3.0):
        thr = [t, t, t, None]
        plain = {"num_exits": 4, "thresholds": thr, "scorer": {"type": "patience"}}
        tied = {"num_exits": 4, "thresholds": thr, "scorer": {"type": "patience", "tie_break": "max_prob"}}
        assert np.array_equal(apply_to_features(plain, feats).exits, apply_to_features(tied, feats).exits)
    s = compute_scores({"type": "patience", "tie_break": "max_prob"}, feats)
    assert np.array_equal(s, compute_scores({"type": "patience"}, feats) + 0.5 * feats.max_prob)


def test_certified_patience_is_tight_not_half_the_range(population):
    """5,000 validation rows, δ = 0.1, budget halfway up the costs: the certified policy's
    expected cost (its mean over the 60,000-row population) sits within 3% of the cost
    range below B on median over draws; without the tie-break it sat at c_1 (50% slack)."""
    _, pop, costs = population
    budget = float(costs[0] + 0.5 * (costs[-1] - costs[0]))
    rng = np.random.default_rng(3)
    slack = []
    for draw in range(7):
        rows = rng.choice(pop.num_samples, size=5000, replace=False)
        pol = fit_certified("patience", pop.subset(rows), costs, "ms", budget=budget, confidence=0.9, seed=draw)
        assert pol["scorer"]["tie_break"] == "max_prob" and pol["version"] == 2
        cost = float(costs[apply_to_features(pol, pop).exits].mean())
        slack.append((budget - cost) / (costs[-1] - costs[0]))
    assert 0.0 < np.median(slack) <= 0.03, slack


def test_a_certified_patience_policy_reads_back_and_decides_the_same_online(tmp_path, population):
    syn, pop, costs = population
    pol = fit_certified("patience", pop.subset(np.arange(4000)), costs, "ms", budget=2.2, confidence=0.9)
    assert any(t is not None and float(t) != round(float(t)) for t in pol["thresholds"][:-1])  # between run lengths
    assert pol["version"] == 2
    pol.update(method="patience", num_exits=4, num_classes=10,
               costs={"format": "costs", "version": 1, "unit": "ms", "costs": costs.tolist()})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pol))
    back = read_policy(str(path))
    logits = syn.logits[50_000:50_600]
    offline = apply_to_features(back, exit_features(logits, "logits"))
    op = OnlinePolicy(back)
    single = np.array([op.run(logits[i]) for i in range(len(logits))])
    assert np.array_equal(single[:, 0], offline.exits) and np.array_equal(single[:, 1], offline.preds)
    state, active, exits = op.begin(len(logits)), np.arange(len(logits)), np.full(len(logits), -1)
    for j in range(4):
        stop, _, _ = op.step(state, j, logits[active, j], active)
        exits[active[stop]] = j
        active = active[~stop]
    assert np.array_equal(exits, offline.exits)


@pytest.mark.parametrize(("scorer", "message"), [
    ({"type": "maxprob", "tie_break": "max_prob"}, "takes no tie_break"),
    ({"type": "patience", "tie_break": "entropy"}, "unknown tie_break"),
])
def test_a_tie_break_is_refused_where_it_does_not_belong(tmp_path, runner, synth, scorer, message):
    doc = {"format": "policy", "version": 1, "method": "patience", "num_exits": 2, "num_classes": 3,
           "costs": {"format": "costs", "version": 1, "unit": "ms", "costs": [1.0, 2.0]},
           "thresholds": [1.5, None], "scorer": scorer}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message):
        read_policy(str(path))
    r = invoke(runner, "apply", path, synth)  # one line, exit 2 (bad input)
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
