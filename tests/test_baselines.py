"""Baseline thresholds: budget guarantee, tie handling, geometric distribution, patience."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eenet_cli.core.measures import exit_features
from eenet_cli.core.methods import BASELINES, FitCache, fit_method
from eenet_cli.core.oracle import oracle
from eenet_cli.core.policy import apply_to_features
from eenet_cli.core.thresholds import (
    ACCEPT_ALL,
    Ranking,
    apply_thresholds,
    fit_distribution,
    fit_geometric,
    geometric,
    quota_thresholds,
    realised_cost,
)
from eenet_cli.synthetic import make_predictions

RTOL = 1e-9  # a realised average cost may exceed its budget by this share (floating-point sums), no more


def fits_budget(cost: float, budget: float) -> bool:
    return cost <= budget * (1 + RTOL)


def features(n=800, k=4, c=10, seed=0, **kw):
    d = make_predictions(n, k, c, seed=seed, **kw)
    return exit_features(d.logits, "logits", d.labels)


def test_quota_thresholds_follow_quotas_exactly():
    s = np.array([[0.9, 0.1, 0], [0.8, 0.7, 0], [0.3, 0.6, 0], [0.2, 0.5, 0], [0.1, 0.4, 0]], dtype=float)
    thr = quota_thresholds(s, [2, 2, 1])
    assert thr == [0.8, 0.5, None]
    assert apply_thresholds(s, thr).tolist() == [0, 0, 1, 1, 2]


def test_ties_never_push_more_samples_through_an_exit():
    s = np.array([[0.9, 0], [0.5, 0], [0.5, 0], [0.5, 0], [0.1, 0]], dtype=float)
    thr = quota_thresholds(s, [2, 3])  # boundary inside the tied 0.5 group
    exits = apply_thresholds(s, thr)
    assert (exits == 0).sum() == 1  # only the sample strictly above the tie
    thr = quota_thresholds(np.full((4, 2), 0.5), [2, 2])  # everyone tied: nobody exits early
    assert thr[0] is None


def test_full_quota_accepts_everything_even_unseen_lower_scores():
    s = np.array([[0.5, 0], [0.6, 0]])
    thr = quota_thresholds(s, [2, 0])
    assert thr[0] == ACCEPT_ALL
    assert apply_thresholds(np.array([[0.01, 0.0]]), thr).tolist() == [0]


def test_geometric_distribution():
    p = geometric(0.5, 4)
    np.testing.assert_allclose(p, np.array([1, 0.5, 0.25, 0.125]) / 1.875)
    assert geometric(np.inf, 3).tolist() == [0, 0, 1]
    assert geometric(0.0, 3).tolist() == [1, 0, 0]


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_respects_the_budget_over_the_whole_range(method):
    f = features(seed=1)
    costs = np.array([1.0, 1.7, 3.1, 4.0])
    cache = FitCache(f)
    for budget in np.linspace(costs[0], costs[-1], 13):
        pol = fit_method(method, cache, costs, budget, "ms")
        applied = apply_to_features(pol, f)
        realised = costs[applied.exits].mean()
        assert fits_budget(realised, budget), (method, budget, realised)
        assert pol["validation"]["avg_cost"] == pytest.approx(realised, abs=1e-12)
        assert pol["validation"]["accuracy"] == pytest.approx(applied.correct.mean())
        assert pol["thresholds"][-1] is None


def test_geometric_spends_close_to_the_budget():
    f = features(n=2000, seed=2)
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    r = Ranking(f.max_prob)
    for budget in (1.3, 2.0, 2.9, 3.7):
        fit = fit_geometric(r, costs, budget)
        assert budget - 0.01 <= fit.avg_cost <= budget


def test_budget_at_first_exit_puts_everyone_there():
    f = features()
    pol = fit_method("entropy", FitCache(f), np.array([1.0, 2.0, 3.0, 4.0]), 1.0, "ms")
    assert pol["validation"]["exit_fractions"][0] == 1.0


def test_vote_is_not_degenerate_at_the_first_exit():
    # every sample has vote 1 at exit 1; without a tie-break no quota could be met there
    f = features(n=1000, seed=3)
    pol = fit_method("vote", FitCache(f), np.array([1.0, 2.0, 3.0, 4.0]), 2.0, "ms")
    assert 0.1 < pol["validation"]["exit_fractions"][0] < 0.9


def test_patience_picks_most_accurate_feasible_t():
    f = features(n=1000, seed=4)
    costs = np.array([1.0, 1.1, 1.2, 1.3])  # cheap later exits: every t fits at the top budget
    pol = fit_method("patience", FitCache(f), costs, 1.3, "ms")
    accs = []
    for t in range(1, 5):
        thr = [float(t)] * 3 + [None]
        ex = apply_to_features({**pol, "thresholds": thr}, f)
        accs.append(ex.correct.mean())
    assert pol["validation"]["accuracy"] == pytest.approx(max(accs))


def _quota_cost(p, n, costs, shift):
    """Average cost of the quotas of ``(1 - shift) p + shift e_1`` on n samples whose scores
    have no ties (so every exit takes exactly its quota): round n p_k for the first K-1
    exits, the remainder to the last."""
    k = len(p)
    planned = [(1 - shift) * p[j] + (shift if j == 0 else 0.0) for j in range(k)]
    quotas = [math.floor(n * x + 0.5) for x in planned[:-1]]
    quotas.append(n - sum(quotas))
    return sum(q * c for q, c in zip(quotas, costs)) / n


@pytest.mark.parametrize("p, budget", [
    ([0.0, 0.0, 0.0, 1.0], 1.5),
    ([0.1, 0.2, 0.3, 0.4], 2.0),
    ([0.25, 0.25, 0.25, 0.25], 2.37),
])
def test_distribution_fit_takes_the_smallest_shift_to_the_first_exit_that_fits(p, budget):
    n = 800
    scores = np.random.default_rng(5).random((n, 4))  # float64: no ties
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    assert _quota_cost(p, n, costs, 0.0) > budget  # the plan as given overruns
    fit = fit_distribution(Ranking(scores), costs, budget, np.array(p))
    shift = fit.info["shift_to_first_exit"]
    assert 0 < shift < 1
    assert fit.avg_cost == pytest.approx(_quota_cost(p, n, costs, shift), abs=1e-12)
    assert fit.avg_cost <= budget * (1 + RTOL)
    # minimal: a slightly smaller shift would overrun (the fit's own bisection is far finer
    # than 1e-9, and the quotas only change at steps of about 1/n)
    assert _quota_cost(p, n, costs, shift - 1e-9) > budget
    # and the realised exits are the planned quotas
    exits = apply_thresholds(scores, fit.thresholds)
    assert (np.bincount(exits, minlength=4) / n).tolist() == pytest.approx(fit.distribution.tolist(), abs=1e-12)


def test_distribution_fit_keeps_a_plan_that_fits():
    scores = np.random.default_rng(6).random((400, 3))
    fit = fit_distribution(Ranking(scores), np.array([1.0, 2.0, 3.0]), 2.5, np.array([0.3, 0.3, 0.4]))
    assert fit.info["shift_to_first_exit"] == 0.0
    assert np.bincount(apply_thresholds(scores, fit.thresholds), minlength=3).tolist() == [120, 120, 160]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(2, 5),
    c=st.sampled_from([2, 3, 10, 50]),
    steps=st.lists(st.floats(0.05, 5.0), min_size=5, max_size=5),
    frac=st.floats(0.0, 1.2),
    method=st.sampled_from(BASELINES),
)
def test_property_realised_cost_within_budget_and_oracle_is_ceiling(seed, k, c, steps, frac, method):
    d = make_predictions(150, k, c, seed=seed, miscalibration=(seed % 3) / 2)
    f = exit_features(d.logits, "logits", d.labels)
    costs = np.cumsum(np.array(steps[:k]))
    budget = costs[0] + frac * (costs[-1] - costs[0])
    pol = fit_method(method, FitCache(f), costs, budget, "ms")
    applied = apply_to_features(pol, f)
    assert fits_budget(costs[applied.exits].mean(), budget)
    assert oracle(f.correct, costs, budget).accuracy >= applied.correct.mean() - 1e-12


def _rule_at(j):
    """A rule that sends every sample to exit ``j`` (thresholds of -inf there)."""

    def rule(ranking, costs, budget, correct):
        k = ranking.shape[1]
        return [None] * j + ([ACCEPT_ALL] if j < k - 1 else []) + [None] * (k - 1 - j) if j < k - 1 else [None] * k

    return rule


def test_cross_validated_choice_scores_rules_on_held_out_rows():
    from eenet_cli.core.thresholds import cross_validated_choice

    rng = np.random.default_rng(0)
    n, k = 400, 3
    correct = np.zeros((n, k), dtype=bool)
    correct[:, 1] = rng.random(n) < 0.8  # exit 2 is right 80% of the time
    correct[:, 0] = rng.random(n) < 0.3
    correct[:, 2] = rng.random(n) < 0.5
    scores = rng.random((n, k))
    rules = {"first": _rule_at(0), "second": _rule_at(1), "last": _rule_at(2)}
    chosen, figures = cross_validated_choice(rules, scores, correct, np.array([1.0, 2.0, 3.0]), 3.0, folds=5, seed=1)
    assert chosen == "second"
    # every row is held out exactly once, so the pooled figure is the plain accuracy here
    assert figures["first"] == pytest.approx(correct[:, 0].mean())
    assert figures["second"] == pytest.approx(correct[:, 1].mean())
    assert figures["last"] == pytest.approx(correct[:, 2].mean())


def test_cross_validated_choice_prefers_the_earlier_rule_on_ties_and_needs_rows():
    from eenet_cli.core.thresholds import cross_validated_choice

    n, k = 50, 2
    correct = np.ones((n, k), dtype=bool)
    scores = np.random.default_rng(2).random((n, k))
    rules = {"a": _rule_at(0), "b": _rule_at(1)}
    assert cross_validated_choice(rules, scores, correct, np.array([1.0, 2.0]), 2.0)[0] == "a"
    rules = {"b": _rule_at(1), "a": _rule_at(0)}
    assert cross_validated_choice(rules, scores, correct, np.array([1.0, 2.0]), 2.0)[0] == "b"
    # fewer than 2 x folds rows: nothing is held out, the first rule stands
    assert cross_validated_choice(rules, scores[:9], correct[:9], np.array([1.0, 2.0]), 2.0, folds=5) == ("b", {})


def test_overfitting_search_loses_the_cross_validation_to_quotas():
    """With scores unrelated to correctness, a search that tunes thresholds on the training
    folds can only fit noise; the held-out folds see that."""
    from eenet_cli.core.thresholds import cross_validated_choice, search_thresholds

    rng = np.random.default_rng(5)
    n, k = 300, 4
    correct = rng.random((n, k)) < 0.6  # every exit equally good: no policy can do better
    scores = rng.random((n, k))
    costs = np.array([1.0, 2.0, 3.0, 4.0])

    def quota(ranking, c, b, corr):
        return fit_geometric(ranking, c, b).thresholds

    def searched(ranking, c, b, corr):
        return search_thresholds(ranking, c, b, corr, quota(ranking, c, b, corr), grid=64, rounds=4)

    budget = 2.5
    full = Ranking(scores)
    in_sample_gain = (
        correct[np.arange(n), apply_thresholds(scores, searched(full, costs, budget, correct))].mean()
        - correct[np.arange(n), apply_thresholds(scores, quota(full, costs, budget, correct))].mean()
    )
    chosen, figures = cross_validated_choice({"quota": quota, "search": searched}, scores, correct, costs, budget, seed=0)
    assert in_sample_gain > 0.02  # on the rows it tuned on, the search looks better ...
    assert figures["search"] - figures["quota"] < in_sample_gain / 2  # ... much less on rows it did not see


def test_eenet_search_keeps_the_best_baselines_rule_among_its_candidates():
    """With utilities that carry no information (noise), eenet-search's cross-validated
    choice falls on a baseline's own rule; the policy then stops on that measure with the
    baseline's thresholds, and on validation it equals that baseline."""
    from eenet_cli.core.eenet import _search_policy
    from eenet_cli.core.policy import SIMPLE_SCORERS

    d = make_predictions(3000, 4, 10, seed=8, miscalibration=0.5)
    val = d.split == "val"
    fv = exit_features(d.logits[val], "logits", d.labels[val])
    costs = np.asarray(d.costs, dtype=np.float64)
    budget = 2.0
    noise = np.random.default_rng(0).normal(size=(fv.num_samples, fv.num_exits))
    p = np.full(fv.num_exits, 1.0 / fv.num_exits)
    thr, info, measure = _search_policy(Ranking(noise), noise, fv.correct, costs, budget, p, 0, fv)
    assert info["chosen_rule"].startswith("baseline-") and measure == info["chosen_rule"].split("-", 1)[1]
    figures = info["cross_validated_accuracy"]
    assert figures[info["chosen_rule"]] == max(figures.values())
    scores = SIMPLE_SCORERS[measure](fv)
    if measure != "patience":
        assert thr == fit_geometric(Ranking(scores), costs, budget).thresholds
    exits = apply_thresholds(scores, thr)
    assert realised_cost(exits, costs) <= budget * (1 + 1e-9)
