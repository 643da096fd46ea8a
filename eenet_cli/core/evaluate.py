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
from eenet_cli.errors import InputError


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


def _oracle_figures(correct: np.ndarray, costs: np.ndarray, budget: float) -> dict:
    r = oracle(correct, costs, budget)
    n, k = correct.shape
    return {
        "accuracy": r.accuracy,
        "avg_cost": r.avg_cost,
        "n": int(n),
        "exit_fractions": (np.bincount(r.exits, minlength=k) / max(n, 1)).tolist(),
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
    outputs: str = "own",
) -> tuple[list[dict], list[dict]]:
    """One record per (method, budget), methods in the given order within each budget.

    Returns ``(records, policies)``; policies only when ``keep_policies``. ``learner``
    trains EENet (see :func:`eenet_cli.core.methods.fit_method`); the EENet methods need it.
    ``fitter(method, cache, budget)`` replaces the plain fit (``evaluate --confidence``
    passes the certified one); a policy with a ``certificate`` adds its cost bound to the
    record, and the test figures of the same fit before its calibration (``uncertified_*``).

    ``outputs`` (``own``, ``combined`` or ``auto``, :mod:`eenet_cli.core.outputs`) lets the
    learned methods predict with combined exit outputs, fitted once on the validation rows;
    the baselines keep the model's own outputs, and the oracle then knows a sample right
    where either output is right, so that it stays a ceiling for every method. Each record
    says which outputs it used (``outputs``).
    """
    from eenet_cli.core.methods import METHODS
    from eenet_cli.core.outputs import attach_outputs, check_mode, combine, describe, fit_outputs

    check_mode(outputs)
    if outputs != "own" and fitter is not None:
        # a certified fit pools with weights from its own fit rows (docs/certify.md), which the
        # oracle's "either output" ceiling cannot know; fit --confidence --outputs does it
        raise InputError("evaluate --confidence compares policies on the model's own outputs; "
                         "certify a pooled policy with fit --confidence --outputs", field="--outputs")
    costs = np.asarray(costs, dtype=np.float64)
    cache = FitCache(val)
    block = fit_outputs(val, outputs, seed=seed) if outputs != "own" and any(
        METHODS[m].family == "learned" for m in methods if m in METHODS) else None
    if block is not None:
        val_c, test_c = combine(val, block), combine(test, block)
        cache_c = FitCache(val_c)
        oracle_val = val.correct | val_c.correct
        oracle_test = test.correct | test_c.correct
    else:
        oracle_val, oracle_test = val.correct, test.correct
    used = describe(block)
    records: list[dict] = []
    policies: list[dict] = []
    for budget in budgets:
        for method in methods:
            if method == "oracle":
                extra = {} if outputs == "own" else {"outputs": "own" if block is None else "own or " + used}
                records.append(_record("oracle", budget, unit, _oracle_figures(oracle_test, costs, budget),
                                       _oracle_figures(oracle_val, costs, budget), extra))
            else:
                combined = block is not None and METHODS[method].family == "learned"
                fit_cache, fit_test = (cache_c, test_c) if combined else (cache, test)
                if fitter is not None:
                    policy = fitter(method, fit_cache, budget)
                else:
                    policy = fit_method(method, fit_cache, costs, budget, unit, seed=seed, hyper=hyper, learner=learner)
                extra = {} if outputs == "own" else {"outputs": used if combined else "own"}
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
                records.append(_record(method, budget, unit, test_figures(policy, fit_test, costs), policy["validation"], extra))
                if combined:
                    attach_outputs(policy, block)
                if keep_policies:
                    policies.append(policy)
            if on_step:
                on_step(method, budget)
    return records, policies
