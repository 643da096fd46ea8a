"""Accuracy against budget for every method: fit on validation, report on test."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from eenet_cli.core.eenet import Learner
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.methods import FitCache, fit_method
from eenet_cli.core.oracle import oracle
from eenet_cli.core.policy import apply_to_features
from eenet_cli.core.thresholds import realised_cost, within_budget


def _record(method: str, budget: float, unit: str, test: dict, val: dict, extra: dict | None = None) -> dict:
    rec = {
        "method": method,
        "budget": float(budget),
        "unit": unit,
        "accuracy": test["accuracy"],
        "avg_cost": test["avg_cost"],
        "budget_met": within_budget(test["avg_cost"], budget),
        "exit_fractions": test["exit_fractions"],
        "n": test["n"],
        "val_accuracy": val["accuracy"],
        "val_avg_cost": val["avg_cost"],
        "val_budget_met": within_budget(val["avg_cost"], budget),
        "val_exit_fractions": val["exit_fractions"],
        "val_n": val["n"],
    }
    if extra:
        rec.update(extra)
    return rec


def test_figures(policy: dict, features: ExitFeatures, costs: np.ndarray) -> dict:
    applied = apply_to_features(policy, features)
    return {
        "accuracy": float(applied.correct.mean()),
        "avg_cost": realised_cost(applied.exits, costs),
        "n": int(features.num_samples),
        "exit_fractions": applied.exit_fractions(features.num_exits),
    }


def _oracle_figures(features: ExitFeatures, costs: np.ndarray, budget: float) -> dict:
    r = oracle(features.correct, costs, budget)
    return {
        "accuracy": r.accuracy,
        "avg_cost": r.avg_cost,
        "n": int(features.num_samples),
        "exit_fractions": (np.bincount(r.exits, minlength=features.num_exits) / max(features.num_samples, 1)).tolist(),
    }


def evaluate_features(
    val: ExitFeatures,
    test: ExitFeatures,
    costs: np.ndarray,
    unit: str,
    budgets: Sequence[float],
    methods: Sequence[str],
    *,
    seed: int = 0,
    hyper=None,
    on_step: Callable[[str, float], None] | None = None,
    keep_policies: bool = False,
    learner: Learner | None = None,
    fitter: Callable | None = None,
) -> tuple[list[dict], list[dict]]:
    """One record per (method, budget), methods in the given order within each budget.

    Returns ``(records, policies)``; policies only when ``keep_policies``. ``learner``
    trains EENet (see :func:`eenet_cli.core.methods.fit_method`); the EENet methods need it.
    ``fitter(method, cache, budget)`` replaces the plain fit (``evaluate --confidence``
    passes the certified one); a policy with a ``certificate`` adds its cost bound to the
    record, and the test figures of the same fit before its calibration (``uncertified_*``).
    """
    costs = np.asarray(costs, dtype=np.float64)
    cache = FitCache(val)
    records: list[dict] = []
    policies: list[dict] = []
    for budget in budgets:
        for method in methods:
            if method == "oracle":
                records.append(_record("oracle", budget, unit, _oracle_figures(test, costs, budget), _oracle_figures(val, costs, budget)))
            else:
                if fitter is not None:
                    policy = fitter(method, cache, budget)
                else:
                    policy = fit_method(method, cache, costs, budget, unit, seed=seed, hyper=hyper, learner=learner)
                extra = {}
                if method == "patience":
                    extra["patience"] = policy["threshold_fit"]["patience"]
                cert = policy.get("certificate")
                if cert is not None:
                    extra["certified_confidence"] = cert["confidence"]
                    extra["certified_cost_bound"] = cert["guarantees"][0]["upper_bound"]
                    before = policy.get("threshold_fit", {}).get("uncalibrated_thresholds")
                    if before is not None:  # the same fit before its calibration: the uncertified figures
                        plain = test_figures({**policy, "thresholds": before}, test, costs)
                        extra["uncertified_accuracy"] = plain["accuracy"]
                        extra["uncertified_avg_cost"] = plain["avg_cost"]
                        extra["uncertified_budget_met"] = within_budget(plain["avg_cost"], budget)
                records.append(_record(method, budget, unit, test_figures(policy, test, costs), policy["validation"], extra))
                if keep_policies:
                    policies.append(policy)
            if on_step:
                on_step(method, budget)
    return records, policies
