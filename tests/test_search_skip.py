"""eenet-search may switch a middle exit off (a quota rule with that exit's threshold null),
only where held-out folds favour it by more than the noise."""

from __future__ import annotations

import numpy as np

from eenet_cli.core.measures import exit_features
from eenet_cli.core.methods import FitCache, fit_method
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.policy import apply_to_features
from eenet_cli.core.thresholds import cross_validated_choice, fit_distribution
from eenet_cli.learn.eenet_torch import train_eenet
from test_online import _uneven


def test_eenet_search_switches_off_a_weak_middle_exit_and_gains_on_new_rows():
    d, logits, val = _uneven(4000)
    fv = exit_features(logits[val], "logits", d.labels[val])
    ft = exit_features(logits[~val], "logits", d.labels[~val])
    assert ft.correct.mean(axis=0)[2] < ft.correct.mean(axis=0)[1] - 0.3  # exit 3 is far weaker than exit 2
    costs = np.asarray(d.costs, dtype=np.float64)
    cache = FitCache(fv)
    budget = 2.2
    search = fit_method("eenet-search", cache, costs, budget, "ms", learner=train_eenet)
    plain = fit_method("eenet", cache, costs, budget, "ms", learner=train_eenet)
    assert search["threshold_fit"]["chosen_rule"] == "quota-skip-exit-3"
    assert search["thresholds"][2] is None
    assert search["validation"]["avg_cost"] <= budget * (1 + 1e-12)
    got = apply_to_features(search, ft)
    assert not np.any(got.exits == 2)
    assert got.correct.mean() > apply_to_features(plain, ft).correct.mean() + 0.01
    online = OnlinePolicy(search)
    assert [online.run(row)[0] for row in logits[~val][:150]] == got.exits[:150].tolist()


def test_a_guarded_rule_needs_more_than_a_chance_win():
    costs = np.array([1.0, 2.0, 3.0])

    def quota(ranking, costs, budget, correct):
        return fit_distribution(ranking, costs, budget, np.array([0.4, 0.4, 0.2])).thresholds

    def moved(ranking, costs, budget, correct):  # a fifth of the samples from exit 2 to exit 3
        return fit_distribution(ranking, costs, budget, np.array([0.4, 0.2, 0.4])).thresholds

    # every exit right 70% of the time, whatever the scores: the two rules are equally good,
    # and on this draw the moved one wins the held-out count by 0.6 points by chance
    rng = np.random.default_rng(2)
    scores, correct = rng.random((2000, 3)), rng.random((2000, 3)) < 0.7
    rules = {"quota": quota, "moved": moved}
    unguarded, figures = cross_validated_choice(rules, scores, correct, costs, 2.0)
    assert unguarded == "moved" and figures["moved"] > figures["quota"]
    guarded, _ = cross_validated_choice(rules, scores, correct, costs, 2.0, guarded=["moved"])
    assert guarded == "quota"

    # exit 2 never right, exit 3 always: moving samples past exit 2 is a real win
    correct = np.stack([rng.random(2000) < 0.6, np.zeros(2000, bool), np.ones(2000, bool)], axis=1)
    chosen, figures = cross_validated_choice(rules, scores, correct, costs, 2.0, guarded=["moved"])
    assert chosen == "moved" and figures["moved"] > figures["quota"] + 0.1
