"""Exit policies by name: fitting each on validation features, as a policy dict.

Baselines (docs/spec.md §3):

- ``maxprob`` (MSDNet), ``entropy`` (BranchyNet), ``vote`` (the paper's PABEE column):
  a confidence measure with thresholds that make exits follow MSDNet's geometric
  distribution p_k ∝ q^(k-1), q found by bisection so the *realised* validation cost is as
  close to the budget as possible without exceeding it (:func:`fit_geometric`).
- ``patience``: PABEE's own rule, stop once the prediction has held for ``t`` consecutive
  exits; ``t`` is the most accurate value on validation whose cost fits the budget.

EENet and its variants (``eenet``, ``eenet-maxprob``, ``eenet-geometric``,
``eenet-search``) train the utility network of :mod:`eenet_cli.core.eenet_train` (torch,
imported only when one of them is asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.policy import SCORER_DESCRIPTIONS, SIMPLE_SCORERS
from eenet_cli.core.thresholds import (
    Ranking,
    apply_thresholds,
    first_exit_only,
    first_exit_thresholds,
    fit_geometric,
    realised_cost,
    within_budget,
)

BASELINES = ["maxprob", "entropy", "vote", "patience"]
EENET_METHODS = ["eenet", "eenet-maxprob", "eenet-geometric", "eenet-search"]
POLICY_METHODS = BASELINES + EENET_METHODS + ["lookahead"]
DEFAULT_EVALUATE_METHODS = BASELINES + ["eenet", "lookahead", "oracle"]
ALL_METHODS = POLICY_METHODS + ["oracle"]


def check_method(name: str, allowed: list[str] = ALL_METHODS, field: str = "--method") -> str:
    from eenet_cli.errors import InputError

    if name not in allowed:
        raise InputError(f"unknown method {name!r}; expected one of {', '.join(allowed)}", field=field)
    return name


def validation_figures(features: ExitFeatures, scores: np.ndarray, thresholds: list, costs: np.ndarray) -> dict:
    exits = apply_thresholds(scores, thresholds)
    rows = np.arange(features.num_samples)
    return {
        "accuracy": float(features.correct[rows, exits].mean()),
        "avg_cost": realised_cost(exits, costs),
        "n": int(features.num_samples),
        "exit_fractions": (np.bincount(exits, minlength=features.num_exits) / features.num_samples).tolist(),
    }


@dataclass
class FitCache:
    """What does not depend on the budget, computed once per validation set."""

    features: ExitFeatures
    rankings: dict[str, Ranking] = field(default_factory=dict)
    trained: dict = field(default_factory=dict)  # (budget, seed) -> trained EENet
    lookahead: dict = field(default_factory=dict)  # estimators reused across budgets

    def ranking(self, scorer: str) -> Ranking:
        if scorer not in self.rankings:
            self.rankings[scorer] = Ranking(SIMPLE_SCORERS[scorer](self.features))
        return self.rankings[scorer]


def _policy(method: str, scorer: dict, thresholds: list, distribution, costs, budget: float, unit: str, validation: dict, **extra) -> dict:
    f = validation
    out = {
        "format": "policy",
        "version": 1,
        "method": method,
        "num_exits": len(thresholds),
        "num_classes": None,
        "budget": {"value": float(budget), "unit": unit},
        "costs": {"unit": unit, "costs": [float(c) for c in costs]},
        "thresholds": [None if t is None else float(t) for t in thresholds],
        "exit_distribution": [float(p) for p in distribution],
        "scorer": scorer,
        "validation": f,
    }
    out.update(extra)
    return out


def _fit_geometric_baseline(name: str, cache: FitCache, costs, budget, unit) -> dict:
    ranking = cache.ranking(name)
    fit = fit_geometric(ranking, costs, budget)
    scorer = {"type": name, "description": SCORER_DESCRIPTIONS[name]}
    val = validation_figures(cache.features, ranking.scores, fit.thresholds, costs)
    return _policy(name, scorer, fit.thresholds, fit.distribution, costs, budget, unit, val,
                   threshold_fit={"rule": "geometric", **fit.info})


def _fit_patience(cache: FitCache, costs, budget, unit) -> dict:
    ranking = cache.ranking("patience")
    k = cache.features.num_exits
    best = None
    for t in range(1, k + 1):
        # t = 1 stops every sample at exit 1 (every run length is >= 1): the shared thresholds say so
        thr = first_exit_thresholds(k) if t == 1 else [float(t)] * (k - 1) + [None]
        val = validation_figures(cache.features, ranking.scores, thr, costs)
        if within_budget(val["avg_cost"], budget) and (best is None or val["accuracy"] > best[1]["accuracy"]):
            best = (thr, val, t)
    assert best is not None  # t = 1 stops everything at exit 1, which any feasible budget allows
    thr, val, t = best
    scorer = {"type": "patience", "description": SCORER_DESCRIPTIONS["patience"]}
    return _policy("patience", scorer, thr, val["exit_fractions"], costs, budget, unit, val,
                   threshold_fit={"rule": "patience", "patience": t})


def fit_method(
    method: str,
    cache: FitCache,
    costs: np.ndarray,
    budget: float,
    unit: str,
    *,
    seed: int = 0,
    hyper=None,
    progress: Callable | None = None,
) -> dict:
    """Fit one policy on the cached validation features; returns the policy dict."""
    costs = np.asarray(costs, dtype=np.float64)
    if method in ("maxprob", "entropy", "vote"):
        policy = _fit_geometric_baseline(method, cache, costs, budget, unit)
    elif method == "patience":
        policy = _fit_patience(cache, costs, budget, unit)
    elif method in EENET_METHODS:
        from eenet_cli.core import eenet_train

        key = (float(budget), seed, repr(hyper))
        trained = cache.trained.get(key)
        if trained is None:
            trained = eenet_train.train_eenet(cache.features, costs, budget, seed=seed, hyper=hyper, progress=progress)
            cache.trained[key] = trained
        if method == "eenet-maxprob":
            parts = eenet_train.fit_eenet_maxprob(cache.features, costs, budget, trained=trained, ranking=cache.ranking("maxprob"))
        else:
            rule = {"eenet": "quota", "eenet-geometric": "geometric", "eenet-search": "search"}[method]
            parts = eenet_train.fit_eenet_policy(cache.features, costs, budget, seed=seed, hyper=hyper, trained=trained, thresholds=rule)
        policy = _policy(method, parts["scorer"], parts["thresholds"], parts["exit_distribution"], costs, budget, unit,
                         parts["validation"], training=parts.get("training", {}), threshold_fit=parts.get("threshold_fit", {}))
    elif method == "lookahead":
        from eenet_cli.core.lookahead import fit_lookahead

        parts = fit_lookahead(cache.features, costs, budget, seed=seed, cache=cache.lookahead)
        policy = _policy(method, parts["scorer"], parts["thresholds"], parts["exit_distribution"], costs, budget, unit,
                         parts["validation"], training=parts.get("training", {}), threshold_fit=parts.get("threshold_fit", {}))
    else:
        from eenet_cli.errors import InputError

        raise InputError(f"unknown method {method!r}; expected one of {', '.join(POLICY_METHODS)}", field="--method")
    if first_exit_only(costs, budget, cache.features.num_samples) and policy["thresholds"] != first_exit_thresholds(len(costs)):
        # every fitter above uses the shared first-exit thresholds at such a budget; guard the contract
        raise AssertionError(f"{method}: the budget leaves no room past the first exit, but the thresholds are {policy['thresholds']}")
    policy["num_classes"] = cache.features.num_classes
    return policy
