"""Turning per-exit scores into thresholds that meet a budget on validation data.

A policy scores every sample at every exit (``scores``, ``[N, K]``, higher means "stop
here") and stops a sample at the first exit ``k`` whose score is ``>= t_k``. A threshold
of ``None`` means the exit never stops a sample on its own; the last exit stops every
sample that reaches it, whatever its threshold.

Thresholds come from *quotas*: at exit ``k`` the ``m_k`` highest-scoring samples that are
still running stop there, and ``t_k`` is the lowest score among them. When the quota
boundary falls inside a group of tied scores the whole tied group keeps running, so no
exit ever takes more samples than planned, and applying the thresholds to the same data
reproduces the assignment exactly. When a quota takes every sample still running, the
threshold is :data:`ACCEPT_ALL` (``-1e300``, below any score), so that unseen samples stop
there too instead of drifting to costlier exits.

When the budget leaves no room past the first exit (:func:`first_exit_only`: sending even
one validation sample on to exit 2 would overrun it, e.g. a budget of exactly c_1), every
method stops every sample at exit 1 with the same thresholds,
:func:`first_exit_thresholds` (``[ACCEPT_ALL, None, ..., None]``), whatever its scores:
no score can then send a new sample on and overrun the budget on other data.

>>> import numpy as np
>>> s = np.array([[0.9, 0.0], [0.2, 0.0], [0.7, 0.0], [0.1, 0.0]])
>>> quota_thresholds(s, [2, 2])
[0.7, None]
>>> apply_thresholds(s, [0.7, None]).tolist()
[0, 1, 0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ACCEPT_ALL = -1.0e300  # threshold meaning "stop every sample that reaches this exit"


def apply_thresholds(scores: np.ndarray, thresholds: Sequence[float | None]) -> np.ndarray:
    """0-based exit taken by each sample: the first k with ``score >= t_k``; else the last."""
    n, k = scores.shape
    exits = np.full(n, k - 1, dtype=np.int64)
    running = np.ones(n, dtype=bool)
    for j in range(k - 1):
        t = thresholds[j]
        if t is None:
            continue
        stop = running & (scores[:, j] >= t)
        exits[stop] = j
        running &= ~stop
    return exits


class Ranking:
    """Scores with each exit's descending order computed once, for repeated quota fits."""

    def __init__(self, scores: np.ndarray):
        self.scores = np.ascontiguousarray(scores, dtype=np.float64)
        # stable sort on the negated score: ties keep index order (deterministic)
        self.order = np.argsort(-self.scores, axis=0, kind="stable")

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape  # type: ignore[return-value]

    def thresholds(self, quotas: Sequence[int]) -> list[float | None]:
        """Sequential quota assignment (see module docstring); ties never overfill."""
        return self.assign(quotas)[0]

    def assign(self, quotas: Sequence[int]) -> tuple[list[float | None], np.ndarray]:
        """Thresholds and the exit each sample takes under them (identical to
        ``apply_thresholds(self.scores, thresholds)``, without a second pass)."""
        n, k = self.scores.shape
        running = np.ones(n, dtype=bool)
        exits = np.full(n, k - 1, dtype=np.int64)
        out: list[float | None] = []
        for j in range(k - 1):
            m = int(quotas[j])
            if m <= 0:
                out.append(None)
                continue
            order = self.order[:, j]
            cand = order[running[order]]  # running samples, best first
            if cand.size == 0:
                out.append(None)
                continue
            vals = self.scores[cand, j]
            if m >= cand.size:
                t = ACCEPT_ALL
                take = cand.size
            else:
                boundary = vals[m - 1]
                if vals[m] < boundary:
                    take = m
                else:  # tie across the boundary: the tied group keeps running
                    take = int(np.searchsorted(-vals, -boundary, side="left"))
                if take == 0:
                    out.append(None)
                    continue
                t = float(vals[take - 1])
            running[cand[:take]] = False
            exits[cand[:take]] = j
            out.append(t)
        out.append(None)
        return out, exits


BUDGET_RTOL = 1e-9  # averages of many equal costs are not exact in floating point


def within_budget(cost: float, budget: float) -> bool:
    """``cost <= budget``, forgiving the last bits of a floating-point average."""
    return cost <= budget * (1 + BUDGET_RTOL)


def realised_cost(exits: np.ndarray, costs: np.ndarray) -> float:
    """Average per-sample cost: sum_k (share of samples at exit k) x c_k, the products summed
    exactly (``math.fsum``), so the result does not depend on the order or the CPU's
    vector width, and is exactly c_k when every sample takes exit k."""
    costs = np.asarray(costs, dtype=np.float64)
    exits = np.asarray(exits)
    n = exits.size
    if n == 0:
        return math.nan
    shares = np.bincount(exits.ravel(), minlength=costs.size) / n
    return math.fsum((shares * costs).tolist())


def first_exit_only(costs: np.ndarray, budget: float, n: int) -> bool:
    """Whether ``budget`` leaves no room past the first exit for ``n`` samples: sending even
    one of them on to exit 2 would overrun it (always so at a budget of c_1)."""
    costs = np.asarray(costs, dtype=np.float64)
    if costs.size < 2 or n < 1:
        return True
    return not within_budget(float(costs[0] + (costs[1] - costs[0]) / n), float(budget))


def first_exit_thresholds(num_exits: int) -> list[float | None]:
    """The thresholds that stop every sample at exit 1, the same for every method:
    :data:`ACCEPT_ALL` there (below any score), null after it."""
    return [ACCEPT_ALL] + [None] * (num_exits - 1) if num_exits > 1 else [None]


def quota_thresholds(scores: np.ndarray, quotas: Sequence[int]) -> list[float | None]:
    """Thresholds from per-exit quotas; see :class:`Ranking`."""
    return Ranking(scores).thresholds(quotas)


def quotas_from_distribution(p: np.ndarray, n: int, rounding: str = "floor") -> np.ndarray:
    """Sample counts per exit from a distribution; the last exit takes the remainder."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    raw = n * p[:-1]
    q = np.floor(raw + 1e-9) if rounding == "floor" else np.floor(raw + 0.5)
    q = q.astype(np.int64)
    # never plan more than n in total
    q = np.minimum(q, n - np.concatenate([[0], np.cumsum(q)[:-1]]))
    q = np.maximum(q, 0)
    return np.append(q, n - q.sum())


def geometric(q: float, k: int) -> np.ndarray:
    """MSDNet's exit distribution: p_k proportional to q^(k-1); ``q=inf`` puts all at the end."""
    if np.isinf(q):
        p = np.zeros(k)
        p[-1] = 1.0
        return p
    if q <= 0:
        p = np.zeros(k)
        p[0] = 1.0
        return p
    logw = np.arange(k) * np.log(q)
    w = np.exp(logw - logw.max())
    return w / w.sum()


@dataclass
class QuotaFit:
    """Thresholds found on validation, with what they realise there."""

    thresholds: list[float | None]
    distribution: np.ndarray  # planned share per exit
    exits: np.ndarray  # realised exit per validation sample
    avg_cost: float
    info: dict


def _fit(ranking: Ranking, costs: np.ndarray, p: np.ndarray, rounding: str) -> QuotaFit:
    n = ranking.shape[0]
    quotas = quotas_from_distribution(p, n, rounding)
    thr, exits = ranking.assign(quotas)
    return QuotaFit(thr, quotas / n, exits, realised_cost(exits, costs), {})


def first_exit_fit(n: int, num_exits: int, costs: np.ndarray, info: dict | None = None) -> QuotaFit:
    """Every one of ``n`` samples stops at exit 1 (:func:`first_exit_thresholds`): the fit
    for a budget that leaves no room past it, and the fallback when nothing else fits."""
    planned = np.zeros(num_exits)
    planned[0] = 1.0
    exits = np.zeros(n, dtype=np.int64)
    return QuotaFit(first_exit_thresholds(num_exits), planned, exits, realised_cost(exits, costs), dict(info or {}))


def fit_geometric(ranking: Ranking, costs: np.ndarray, budget: float, iters: int = 40) -> QuotaFit:
    """Thresholds for the geometric exit distribution whose realised cost is the largest
    that does not exceed ``budget`` (MSDNet's dynamic evaluation, with the bisection done on
    the realised validation cost so rounding and ties cannot overrun the budget)."""
    k = ranking.shape[1]
    costs = np.asarray(costs, dtype=np.float64)
    n = ranking.shape[0]
    top = _fit(ranking, costs, geometric(np.inf, k), "floor")
    if within_budget(top.avg_cost, budget):
        top.info = {"q": None}
        return top
    best = first_exit_fit(n, k, costs, {"q": 0.0})
    if first_exit_only(costs, budget, n):
        return best
    lo, hi = -30.0, 30.0  # bisection on log q
    for _ in range(iters):
        if np.array_equal(quotas_from_distribution(geometric(float(np.exp(lo)), k), n, "floor"),
                          quotas_from_distribution(geometric(float(np.exp(hi)), k), n, "floor")):
            break  # no integer quota lies between: nothing left to find
        mid = 0.5 * (lo + hi)
        cand = _fit(ranking, costs, geometric(float(np.exp(mid)), k), "floor")
        if within_budget(cand.avg_cost, budget):
            lo = mid
            if cand.avg_cost >= best.avg_cost:
                cand.info = {"q": float(np.exp(mid))}
                best = cand
        else:
            hi = mid
    return best


def fit_distribution(
    ranking: Ranking, costs: np.ndarray, budget: float, p: np.ndarray, rounding: str = "round", iters: int = 50
) -> QuotaFit:
    """Algorithm 1's quotas from a planned distribution ``p``; if the realised validation
    cost overshoots the budget, shift mass towards exit 1 (``p' = (1-s) p + s e_1``) with the
    smallest shift ``s`` that fits, found by bisection, and record it in ``info``."""
    costs = np.asarray(costs, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    fit = _fit(ranking, costs, p, rounding)
    if within_budget(fit.avg_cost, budget):
        fit.info = {"shift_to_first_exit": 0.0}
        return fit
    n, k = ranking.shape
    best = first_exit_fit(n, k, costs, {"shift_to_first_exit": 1.0})
    if first_exit_only(costs, budget, n):
        return best
    first = np.zeros_like(p)
    first[0] = 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        cand = _fit(ranking, costs, (1 - mid) * p + mid * first, rounding)
        if within_budget(cand.avg_cost, budget):
            hi = mid
            cand.info = {"shift_to_first_exit": mid}
            best = cand
        else:
            lo = mid
    return best


def search_thresholds(
    ranking: Ranking,
    costs: np.ndarray,
    budget: float,
    correct: np.ndarray,
    start: Sequence[float | None],
    *,
    grid: int = 64,
    rounds: int = 4,
    objective: Callable[[np.ndarray], float] | None = None,
) -> list[float | None]:
    """Coordinate ascent on validation accuracy over per-exit score quantiles, subject to
    realised cost <= budget, started from ``start`` (which must already fit the budget)."""
    n, k = ranking.shape
    costs = np.asarray(costs, dtype=np.float64)
    rows = np.arange(n)

    def score(thr: Sequence[float | None]) -> tuple[float, float]:
        ex = apply_thresholds(ranking.scores, thr)
        return float(correct[rows, ex].mean()), realised_cost(ex, costs)

    best = list(start)
    best_acc, best_cost = score(best)
    qs = np.linspace(0.0, 1.0, grid + 1)
    for _ in range(rounds):
        improved = False
        for j in range(k - 1):
            cands = np.unique(np.quantile(ranking.scores[:, j], qs))
            for t in list(cands) + [None]:
                trial = list(best)
                trial[j] = None if t is None else float(t)
                acc, cost = score(trial)
                if within_budget(cost, budget) and (acc > best_acc + 1e-12 or (acc >= best_acc - 1e-12 and cost < best_cost - 1e-12)):
                    best, best_acc, best_cost, improved = trial, acc, cost, True
        if not improved:
            break
    return best


# A threshold rule: (ranking, costs, budget, correct) -> thresholds fitting the budget there.
ThresholdRule = Callable[[Ranking, np.ndarray, float, np.ndarray], list]


def wins_beyond_noise(diff: np.ndarray, guard_se: float) -> bool:
    """True when a challenger's per-row held-out gain ``diff`` (its hits minus the
    incumbent's, on the same rows) is positive and above ``guard_se`` standard errors of
    the paired difference: the one test every held-out choice between rules uses."""
    diff = np.asarray(diff, dtype=np.float64)
    if diff.size < 2:
        return False
    return bool(diff.sum() > 0 and diff.mean() > guard_se * diff.std(ddof=1) / np.sqrt(diff.size))


def cross_validated_choice(
    rules: dict[str, ThresholdRule],
    scores: np.ndarray,
    correct: np.ndarray,
    costs: np.ndarray,
    budget: float,
    *,
    folds: int = 5,
    seed: int = 0,
    scores_for: dict[str, np.ndarray] | None = None,
    guarded: Sequence[str] = (),
    guard_se: float = 1.0,
) -> tuple[str, dict[str, float]]:
    """The rule whose thresholds generalise best: each rule is fitted on ``folds - 1`` folds
    of the rows and scored on the held-out fold; returns the name with the highest pooled
    held-out accuracy (ties: the first in ``rules``' order) and every rule's figure.

    A search that tunes K-1 thresholds on validation accuracy can fit the noise of a few
    hundred rows; choosing it over the plain quota thresholds only where it wins on rows it
    did not see keeps it from being worse than its own starting point on new data. With
    fewer than ``2 * folds`` rows there is nothing to hold out: the first rule is chosen.
    ``scores_for`` gives some rules scores of their own (e.g. a baseline's measure) in
    place of ``scores``; every rule is judged on the same folds. A ``guarded`` rule (one
    of many variants, such as an exit switched off, where the best of them would win by
    chance) replaces the choice only when its held-out hits beat it by more than
    ``guard_se`` standard errors of the paired per-row difference.
    """
    scores_for = scores_for or {}
    names = list(rules)
    n = scores.shape[0]
    if n < 2 * folds or len(names) == 1:
        return names[0], {}
    costs = np.asarray(costs, dtype=np.float64)
    fold = np.random.default_rng(seed).permutation(n) % folds
    hits = dict.fromkeys(names, 0)
    guarded = [g for g in guarded if g in rules]
    right = {name: np.zeros(n, dtype=np.int8) for name in names} if guarded else None  # per row, for the guard
    for f in range(folds):
        train, held = fold != f, fold == f
        rankings: dict[int, Ranking] = {}
        rows = np.arange(int(held.sum()))
        for name in names:
            own = scores_for.get(name, scores)
            if id(own) not in rankings:
                rankings[id(own)] = Ranking(own[train])
            thr = rules[name](rankings[id(own)], costs, budget, correct[train])
            exits = apply_thresholds(own[held], thr)
            got = correct[held][rows, exits]
            hits[name] += int(got.sum())
            if right is not None:
                right[name][held] = got
    figures = {name: hits[name] / n for name in names}
    plain = [name for name in names if name not in guarded] or names
    best = max(plain, key=lambda name: (hits[name], -names.index(name)))
    for name in sorted(guarded, key=lambda g: (-hits[g], names.index(g))):
        if wins_beyond_noise(right[name].astype(np.float64) - right[best], guard_se):
            best = name
            break
    return best, figures
