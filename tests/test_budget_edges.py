"""A budget of c_1 (the first exit's cumulative cost) leaves room for nothing but exit 1.

Every fit method must then stop every sample at exit 1, on validation and on any other
data, with the same thresholds (:func:`eenet_cli.core.thresholds.first_exit_thresholds`),
so the test cost is exactly c_1. A budget a hair above c_1 behaves the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE

from eenet_cli import api
from eenet_cli.core.methods import POLICY_METHODS
from eenet_cli.core.thresholds import (
    ACCEPT_ALL,
    first_exit_only,
    first_exit_thresholds,
    realised_cost,
)
from eenet_cli.synthetic import make_predictions


@pytest.fixture(scope="module")
def datasets():
    digits = api.load_predictions(str(SAMPLE / "digits.parquet"))
    # 300 validation rows, 11,700 test rows: lookahead's own rule (thresholds 0, the price per
    # unit of cost found on validation) stopped every validation sample at c_1 but sent 15
    # test samples on, over the budget
    d = make_predictions(num_samples=12_000, num_exits=4, num_classes=6, seed=3, costs=[1.0, 1.7, 2.9, 4.2])
    split = np.full(12_000, "test", dtype=object)
    split[:300] = "val"
    synth = api.predictions_from_arrays(d.logits, d.labels, split=split, costs=d.costs, unit="ms")
    return {"digits": digits, "synthetic": synth}


def _check_first_exit_everywhere(policy: dict, preds, budget: float, c1: float) -> None:
    k = policy["num_exits"]
    for split in ("test", "val"):
        rows = preds.rows(preds.split == split)
        applied = api.apply_policy(policy, rows)
        assert (applied.exits == 0).all(), f"{split}: {(applied.exits != 0).sum()} of {applied.exits.size} went on"
        assert applied.summary["avg_cost"] == c1  # exactly, not c_1 plus rounding
        assert applied.summary["avg_cost"] <= budget
        assert applied.summary["budget_met"] is True
        assert applied.summary["exit_fractions"] == [1.0] + [0.0] * (k - 1)
    assert policy["thresholds"] == first_exit_thresholds(k) == [ACCEPT_ALL] + [None] * (k - 1)
    assert policy["validation"]["exit_fractions"] == [1.0] + [0.0] * (k - 1)
    assert policy["validation"]["avg_cost"] == c1


@pytest.mark.parametrize("data", ["digits", "synthetic"])
@pytest.mark.parametrize("method", POLICY_METHODS)
def test_budget_c1_stops_every_sample_at_the_first_exit(datasets, data, method):
    preds = datasets[data]
    c1 = float(api.resolve_costs(preds, None).values[0])
    for budget in (c1, c1 * (1 + 1e-12)):
        policy = api.fit_policy(preds, budget, method=method)
        _check_first_exit_everywhere(policy, preds, budget, c1)


def test_a_budget_with_room_past_the_first_exit_is_fitted_normally(datasets):
    preds = datasets["synthetic"]
    costs = api.resolve_costs(preds, None).values
    n_val = int((preds.split == "val").sum())
    tight = costs[0] + 0.5 * (costs[1] - costs[0]) / n_val  # half a sample's worth: still no room
    roomy = costs[0] + 30.0 * (costs[1] - costs[0]) / n_val  # thirty samples' worth
    assert first_exit_only(costs, tight, n_val) and not first_exit_only(costs, roomy, n_val)
    for method in ("maxprob", "patience", "lookahead"):
        policy = api.fit_policy(preds, tight, method=method)
        assert policy["thresholds"] == first_exit_thresholds(4)
        policy = api.fit_policy(preds, roomy, method=method)
        assert policy["validation"]["avg_cost"] <= roomy * (1 + 1e-9)
        assert policy["validation"]["exit_fractions"][0] < 1.0 or method == "patience"


def test_evaluate_at_c1_reports_exactly_c1_for_every_method(datasets):
    preds = datasets["synthetic"]
    c1 = float(api.resolve_costs(preds, None).values[0])
    methods = ["maxprob", "entropy", "vote", "patience", "lookahead", "oracle"]
    res = api.evaluate(preds, budgets=[c1], methods=methods)
    for rec in res["results"]:
        assert rec["avg_cost"] == c1 and rec["budget_met"] is True, rec["method"]
        assert rec["exit_fractions"] == [1.0, 0.0, 0.0, 0.0], rec["method"]


def test_realised_cost_is_exact_for_one_exit_and_order_free():
    costs = np.array([0.351173, 0.699833, 1.0281, 1.6028])
    for n in (1, 3, 450, 10_788):
        for k in range(4):
            assert realised_cost(np.full(n, k), costs) == costs[k]
    rng = np.random.default_rng(0)
    exits = rng.integers(0, 4, size=10_788)
    assert realised_cost(exits, costs) == realised_cost(exits[::-1].copy(), costs)
    assert realised_cost(exits, costs) == pytest.approx(costs[exits].mean(), rel=1e-14)
