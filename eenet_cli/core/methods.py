"""Exit policies by name: fitting each on validation features, as a policy dict.

Baselines (docs/spec.md §3):

- ``maxprob`` (MSDNet), ``entropy`` (BranchyNet), ``vote`` (the paper's PABEE column):
  a confidence measure with thresholds that make exits follow MSDNet's geometric
  distribution p_k ∝ q^(k-1), q found by bisection so the *realised* validation cost is as
  close to the budget as possible without exceeding it (:func:`fit_geometric`).
- ``patience``: PABEE's own rule, stop once the prediction has held for ``t`` consecutive
  exits; ``t`` is the most accurate value on validation whose cost fits the budget.

EENet and its variants (``eenet``, ``eenet-maxprob``, ``eenet-geometric``,
``eenet-search``) fit thresholds on EENet's utility network (:mod:`eenet_cli.core.eenet`),
trained by the ``learner`` the caller passes in (:mod:`eenet_cli.api` passes the torch
trainer, :func:`eenet_cli.learn.eenet_torch.train_eenet`; this package never imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from eenet_cli.core.eenet import (
    Learner,
    fit_eenet_maxprob,
    fit_eenet_policy,
    require_learner,
)
from eenet_cli.core.figures import validation_figures
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.policy import SCORER_DESCRIPTIONS, SIMPLE_SCORERS
from eenet_cli.core.thresholds import (
    Ranking,
    first_exit_only,
    first_exit_thresholds,
    fit_geometric,
    within_budget,
)


def check_method(name: str, allowed: list[str] | None = None, field: str = "--method") -> str:
    from eenet_cli.errors import InputError

    allowed = ALL_METHODS if allowed is None else allowed
    if name not in allowed:
        raise InputError(f"unknown method {name!r}; expected one of {', '.join(allowed)}", field=field)
    return name


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


def _fit_eenet(rule: str):
    """The fitter of an EENet variant: thresholds by ``rule`` on the learned utilities."""

    def fit(cache: FitCache, costs, budget, unit, *, seed, hyper, progress, learner) -> dict:
        learn = require_learner(learner)
        key = (float(budget), seed, repr(hyper))
        trained = cache.trained.get(key)
        if trained is None:
            trained = learn(cache.features, costs, budget, seed=seed, hyper=hyper, progress=progress)
            cache.trained[key] = trained
        if rule == "maxprob":
            parts = fit_eenet_maxprob(cache.features, costs, budget, trained=trained, ranking=cache.ranking("maxprob"))
        else:
            parts = fit_eenet_policy(cache.features, costs, budget, seed=seed, hyper=hyper, trained=trained, thresholds=rule)
        return _learned_policy(_EENET_NAMES[rule], parts, costs, budget, unit)

    return fit


_EENET_NAMES = {"quota": "eenet", "maxprob": "eenet-maxprob", "geometric": "eenet-geometric", "search": "eenet-search"}


def _fit_lookahead(cache: FitCache, costs, budget, unit, *, seed, hyper, progress, learner) -> dict:
    from eenet_cli.core.lookahead import fit_lookahead

    parts = fit_lookahead(cache.features, costs, budget, seed=seed, cache=cache.lookahead)
    return _learned_policy("lookahead", parts, costs, budget, unit)


def _learned_policy(method: str, parts: dict, costs, budget, unit) -> dict:
    return _policy(method, parts["scorer"], parts["thresholds"], parts["exit_distribution"], costs, budget, unit,
                   parts["validation"], training=parts.get("training", {}), threshold_fit=parts.get("threshold_fit", {}))


def _baseline(name: str):
    def fit(cache: FitCache, costs, budget, unit, **_) -> dict:
        return _fit_patience(cache, costs, budget, unit) if name == "patience" else _fit_geometric_baseline(name, cache, costs, budget, unit)

    return fit


@dataclass(frozen=True)
class Method:
    """One exit-policy method: everything eenet needs to know about it, in one place."""

    name: str
    summary: str  # one line for help texts and docs
    family: str  # "baseline", "learned" or "ceiling"
    scorer: str | None  # the scorer its policies carry; None for the oracle, which has no policy
    style: tuple[str, str, str]  # plot colour, marker, line style
    default: bool = False  # run by `evaluate` when no --methods is given
    needs_learner: bool = False  # fitted with EENet's trainer (torch), passed in by the caller
    fit: Callable | None = None  # (cache, costs, budget, unit, *, seed, hyper, progress, learner) -> policy


#: Every method, in the order help texts, results and plots list them. The one registry
#: that help texts, evaluate's defaults, fitting, apply, the runtime, policy validation
#: (through :data:`eenet_cli.core.policy.SCORERS`) and plot styles read.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("maxprob", "MSDNet's rule: stop when the largest class probability reaches the exit's threshold",
               "baseline", "maxprob", ("#E69F00", "s", "-"), default=True, fit=_baseline("maxprob")),
        Method("entropy", "BranchyNet's rule: stop when the normalised entropy confidence reaches the threshold",
               "baseline", "entropy", ("#009E73", "^", "-"), default=True, fit=_baseline("entropy")),
        Method("vote", "stop when enough of the exits so far agree with the majority (the paper's PABEE column)",
               "baseline", "vote", ("#CC79A7", "D", "-"), default=True, fit=_baseline("vote")),
        Method("patience", "PABEE's rule: stop once the prediction has held for t consecutive exits",
               "baseline", "patience", ("#8C6D31", "v", "-"), default=True, fit=_baseline("patience")),
        Method("eenet", "the learned utility network of the EENet paper with Algorithm 1 quota thresholds",
               "learned", "eenet", ("#0072B2", "o", "-"), default=True, needs_learner=True, fit=_fit_eenet("quota")),
        Method("eenet-maxprob", "the paper's ablation: max-prob scores, EENet's learned exit distribution",
               "learned", "maxprob", ("#56B4E9", "P", "-."), needs_learner=True, fit=_fit_eenet("maxprob")),
        Method("eenet-geometric", "the paper's ablation: EENet's scores, a geometric exit distribution",
               "learned", "eenet", ("#56B4E9", "h", ":"), needs_learner=True, fit=_fit_eenet("geometric")),
        Method("eenet-search", "EENet's scores with thresholds chosen by cross-validated accuracy",
               "learned", "eenet", ("#0072B2", "*", ":"), needs_learner=True, fit=_fit_eenet("search")),
        Method("lookahead", "stop when the estimated gain of running on is worth less than its extra cost",
               "learned", "lookahead", ("#D55E00", "X", "-"), default=True, fit=_fit_lookahead),
        Method("oracle", "the ceiling: the best accuracy at the budget when correctness is known",
               "ceiling", None, ("#000000", ".", "--"), default=True),
    )
}

BASELINES = [n for n, m in METHODS.items() if m.family == "baseline"]
EENET_METHODS = [n for n, m in METHODS.items() if m.needs_learner]
POLICY_METHODS = [n for n, m in METHODS.items() if m.fit is not None]
DEFAULT_EVALUATE_METHODS = [n for n, m in METHODS.items() if m.default]
ALL_METHODS = list(METHODS)


def methods_help(names: list[str] | None = None, width: int = 78) -> str:
    """``name  summary`` lines for help texts, wrapped to ``width`` columns."""
    import textwrap

    lines = []
    for n in names or ALL_METHODS:
        lines += textwrap.wrap(METHODS[n].summary, width, initial_indent=f"  {n:<17}", subsequent_indent=" " * 19)
    return "\n".join(lines)


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
    learner: Learner | None = None,
) -> dict:
    """Fit one policy on the cached validation features; returns the policy dict.

    ``learner`` trains EENet (:data:`eenet_cli.core.eenet.Learner`, e.g.
    :func:`eenet_cli.learn.eenet_torch.train_eenet`); the EENet methods need it, the others
    ignore it.
    """
    costs = np.asarray(costs, dtype=np.float64)
    check_method(method, POLICY_METHODS)
    policy = METHODS[method].fit(cache, costs, budget, unit, seed=seed, hyper=hyper, progress=progress, learner=learner)
    if first_exit_only(costs, budget, cache.features.num_samples) and policy["thresholds"] != first_exit_thresholds(len(costs)):
        # every fitter uses the shared first-exit thresholds at such a budget; guard the contract
        raise AssertionError(f"{method}: the budget leaves no room past the first exit, but the thresholds are {policy['thresholds']}")
    policy["num_classes"] = cache.features.num_classes
    return policy
