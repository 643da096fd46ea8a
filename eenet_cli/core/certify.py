"""Certified exit policies: finite-sample guarantees for a threshold policy on new data.

A fitted policy meets its cost budget on the rows it was fitted on, and on new rows it is
a coin flip whether it does. This module turns a fitted policy into a *certified* one,
using calibration rows that the fit never saw and that are exchangeable with the data it
will be deployed on (see ``docs/certify.md``):

* **Knob.** One scalar ``shift`` moves every finite threshold below the last exit:
  ``t_k(shift) = t_k + shift`` (``None`` and :data:`ACCEPT_ALL` stay). A larger shift
  makes every exit harder to take, so each sample's exit, and its cost, can only grow.
  The grid of shifts (:func:`shift_grid`) comes from the *fit* rows only; its ends are
  ``-inf`` (everyone stops at exit 1) and ``+inf`` (everyone runs to the last exit).
* **Bounds.** The mean cost, scaled to [0, 1] by ``(c - c_1) / (c_K - c_1)``, gets an
  upper bound from a testing-by-betting supermartingale (:func:`cost_upper_bound`); the
  binary losses (*harm*: the policy is wrong where the last exit is right, whose rate
  bounds the accuracy drop; *disagreement* with the last exit's prediction) get the exact
  one-sided binomial (Clopper-Pearson) bound (:func:`binomial_upper_bound`).
* **Choice.** Fixed-sequence testing (:func:`calibrate`) walks the grid from the end where
  each requirement holds for sure (cheapest end for a budget, dearest end for a loss) and
  stops at the first shift it cannot certify, so no multiplicity correction is needed.

:func:`certify_policy` gives the same bounds for one given policy, through the same code,
so that on the calibration rows it reproduces a :class:`Calibration`'s bounds exactly.

Numerics: the cost test is run at budgets on a dyadic grid of step ``2**-30`` of the cost
range and the loss test at levels on a grid of step ``2**-40``; bounds are the smallest
grid points the test rejects, so a bound is never above the level it was certified at.

Scores must be finite and above :data:`ACCEPT_ALL` (so that an accept-all threshold stops
every sample, on these rows and on new ones).

>>> round(binomial_upper_bound(0, 100, 0.05), 4)  # no errors in 100 rows: rate <= 2.95%
0.0295
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ACCEPT_ALL = -1.0e300  # a threshold at or below this stops every sample (as in core.thresholds)

COST_STEPS = 1 << 30  # cost levels and bounds are multiples of 2**-30 of (c_K - c_1)
LOSS_STEPS = 1 << 40  # loss levels and bounds are multiples of 2**-40
_CHUNK = 1 << 22  # elements per [rows, shifts] block of exits (bounds temporary memory)
_BLOCK = 1 << 16  # elements per block of the betting arithmetic (kept cache-sized)
METRICS = ("cost", "drop", "disagreement")
FOCUS_BELOW = 0.08  # shift_grid(focus=B): the fine part of the grid spans B - 8% ... B + 2% of the cost range
FOCUS_ABOVE = 0.02

Thresholds = Sequence[float | None]


class Infeasible(ValueError):
    """The requested guarantees cannot all be certified on these calibration rows.

    ``needed_budget``: the smallest budget at which the cheapest loss-certified policy (or,
    with a budget alone, the cheapest policy of the family) would be certified.
    ``drop_at_budget`` / ``disagreement_at_budget``: the smallest levels the losses could
    be certified at for the policy the budget certifies (``None`` when not asked for, or
    when the budget certifies nothing). ``calibration``: the full (infeasible) record.
    """

    def __init__(self, reason: str, calibration: Calibration):
        super().__init__(reason)
        self.reason = reason
        self.calibration = calibration
        self.needed_budget = calibration.needed_budget
        self.drop_at_budget = calibration.drop_at_budget
        self.disagreement_at_budget = calibration.disagreement_at_budget


@dataclass
class Calibration:
    """The certified policy (or why there is none).

    ``cost_bound`` is in the costs' unit: an upper confidence bound on the expected cost of
    the chosen policy (with ``deploy_batch = m``: on the mean cost of the next m deployed
    samples). ``drop_bound`` bounds the harm rate (hence the accuracy drop against the last
    exit), ``disagreement_bound`` the rate of predictions differing from the last exit's.
    Each is computed at its share of ``delta`` (``deltas``); ``None`` when that requirement
    was not asked for. The guarantee proper is that, with probability at least
    ``1 - delta`` over the calibration rows, every *requested* level (``budget``,
    ``max_drop``, ``max_disagreement``) holds for the chosen policy; the bounds are
    never above those levels. ``certified`` gives, per requirement, the grid indices
    ``(first, last)`` it certified (``None``: none); ``tested`` the number of hypotheses
    each fixed-sequence walk looked at (the p-value path length).
    """

    feasible: bool
    shift: float | None
    thresholds: list[float | None] | None
    index: int | None
    n: int
    delta: float
    deltas: dict[str, float]
    seed: int
    budget: float | None
    max_drop: float | None
    max_disagreement: float | None
    deploy_batch: int | None
    cost_bound: float | None
    drop_bound: float | None
    disagreement_bound: float | None
    empirical: dict[str, float]
    tested: dict[str, int]
    certified: dict[str, tuple[int, int] | None]
    grid_size: int
    reason: str | None = None
    needed_budget: float | None = None
    drop_at_budget: float | None = None
    disagreement_at_budget: float | None = None


# --------------------------------------------------------------------------- the knob


def _is_accept_all(t: float | None) -> bool:
    return t is not None and float(t) <= ACCEPT_ALL


def _shiftable(t: float | None) -> bool:
    return t is not None and math.isfinite(float(t)) and float(t) > ACCEPT_ALL


def _check_thresholds(thresholds: Thresholds, k: int) -> list[float | None]:
    thr = [None if t is None else float(t) for t in thresholds]
    if len(thr) != k:
        raise ValueError(f"expected {k} thresholds (one per exit), got {len(thr)}")
    if any(t is not None and math.isnan(t) for t in thr):
        raise ValueError("thresholds must not be NaN (use None for an exit that never stops)")
    return thr


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must be [rows, exits] with at least 2 exits, got shape {s.shape}")
    if s.size and not (np.isfinite(s).all() and s.min() > ACCEPT_ALL):
        raise ValueError("scores must be finite (and above ACCEPT_ALL)")
    return s


def _check_costs(costs: Sequence[float], k: int) -> np.ndarray:
    c = np.asarray(costs, dtype=np.float64)
    if c.shape != (k,):
        raise ValueError(f"expected {k} costs, got shape {c.shape}")
    if not (np.isfinite(c).all() and np.all(np.diff(c) >= 0) and c[-1] > c[0]):
        raise ValueError("costs must be finite, non-decreasing, with c_K > c_1")
    return c


def shifted_thresholds(thresholds: Thresholds, shift: float) -> list[float | None]:
    """The policy at ``shift``: finite thresholds below the last exit move by ``shift``;
    ``None`` and :data:`ACCEPT_ALL` stay. ``-inf`` stops everyone at exit 1
    (``[ACCEPT_ALL, None, ...]``), ``+inf`` sends everyone to the last exit (all ``None``)."""
    thr = [None if t is None else float(t) for t in thresholds]
    k = len(thr)
    shift = float(shift)
    if shift == -math.inf:
        return [ACCEPT_ALL] + [None] * (k - 1)
    if shift == math.inf:
        return [None] * k
    return [t + shift if (j < k - 1 and _shiftable(t)) else t for j, t in enumerate(thr)]


def _exit_range(thresholds: Thresholds) -> tuple[int, int]:
    """Exits every sample is certain to lie between, whatever its (valid) scores: from the
    first exit that can stop anyone to the first exit that stops everyone."""
    k = len(thresholds)
    lo = next((j for j, t in enumerate(thresholds[:-1]) if t is not None and float(t) < math.inf), k - 1)
    hi = next((j for j, t in enumerate(thresholds[:-1]) if _is_accept_all(t)), k - 1)
    return lo, hi


def _exit_dtype(k: int) -> type:
    return np.int8 if k <= 127 else (np.int16 if k <= 32767 else np.int32)


def shift_grid(
    scores_fit: np.ndarray, thresholds: Thresholds, size: int = 256, costs: Sequence[float] | None = None,
    focus: float | None = None,
) -> np.ndarray:
    """Sorted shifts to calibrate over, from the *fit* rows only (never the calibration rows).

    A sample's exit moves past exit ``k`` when the shift passes ``P_k``, the largest of its
    margins ``s_j - t_j`` over exits ``j <= k``. The grid takes (cost-weighted, when
    ``costs`` are given) quantiles of these breakpoints, so that neighbouring shifts differ
    by about the same cost on the fit rows, plus ``0`` (the fitted policy itself) and the
    ends ``-inf`` and ``+inf``. At most ``size`` values (fewer when breakpoints tie).

    ``focus`` (a cost level, with ``costs``; e.g. the budget) spends about two thirds of the
    grid on the policies whose fit-row cost lies within :data:`FOCUS_BELOW` of the cost
    range below it (and :data:`FOCUS_ABOVE` above), where a budget's walk ends, and the rest
    evenly over the whole range: a finer choice where it matters, in fewer tests. It uses
    the fit rows only, like the rest of the grid."""
    s = _check_scores(scores_fit)
    n, k = s.shape
    thr = _check_thresholds(thresholds, k)
    if size < 3:
        raise ValueError("size must be at least 3 (two ends and the fitted policy)")
    weights = np.ones(k - 1) if costs is None else np.diff(_check_costs(costs, k))
    pmax = np.full(n, -np.inf)
    vals, wts = [], []
    for j in range(k - 1):
        t = thr[j]
        if _is_accept_all(t):
            break  # every sample stops here at any finite shift: no later breakpoints
        if _shiftable(t):
            pmax = np.maximum(pmax, s[:, j] - t)
        fin = np.isfinite(pmax)
        if weights[j] > 0 and fin.any():
            vals.append(pmax[fin])
            wts.append(np.full(int(fin.sum()), weights[j]))
    inner = np.array([0.0])
    if vals:
        v = np.concatenate(vals)
        w = np.concatenate(wts)
        srt = np.argsort(v, kind="stable")
        v, cw = v[srt], np.cumsum(w[srt])
        levels = np.linspace(0.0, 1.0, size - 3) * cw[-1] if size > 3 else np.array([])
        if focus is not None and costs is not None and size > 12:
            c = _check_costs(costs, k)
            # the cost-weighted breakpoints sum to (cost - c_1) * n on the fit rows
            at = (float(focus) - c[0]) * n
            span = (c[-1] - c[0]) * n
            lo, hi = max(0.0, at - FOCUS_BELOW * span), min(cw[-1], at + FOCUS_ABOVE * span)
            coarse = (size - 3) // 3
            fine = np.linspace(lo, hi, size - 3 - coarse) if hi > lo else np.array([])
            levels = np.concatenate([np.linspace(0.0, 1.0, coarse) * cw[-1], fine])
        idx = np.minimum(np.searchsorted(cw, levels, side="left"), v.size - 1)
        inner = np.concatenate([v[idx], inner])
    return np.concatenate([[-np.inf], np.unique(inner), [np.inf]])


def exits_for_shifts(scores: np.ndarray, thresholds: Thresholds, grid: np.ndarray) -> np.ndarray:
    """``[n, G]`` 0-based exit of every sample under every shift of ``grid`` (a small int
    dtype). Column ``g`` equals applying ``shifted_thresholds(thresholds, grid[g])``:
    a sample stops at the first ``k < K-1`` with ``s_k >= t_k + shift``, else at ``K-1``.
    Vectorised over samples and shifts, in blocks of bounded memory."""
    s = _check_scores(scores)
    n, k = s.shape
    thr = _check_thresholds(thresholds, k)
    g = np.asarray(grid, dtype=np.float64).ravel()
    if np.isnan(g).any() or np.any(g[1:] < g[:-1]):
        raise ValueError("grid must be sorted and free of NaN")
    out = np.empty((n, g.size), dtype=_exit_dtype(k))
    a = int(np.searchsorted(g, -np.inf, side="right"))  # columns [0, a) are -inf
    b = int(np.searchsorted(g, np.inf, side="left"))  # columns [b, G) are +inf
    out[:, :a] = 0
    out[:, b:] = k - 1
    fin = g[a:b]
    if fin.size == 0 or n == 0:
        return out
    shifted = {j: thr[j] + fin for j in range(k - 1) if _shiftable(thr[j])}
    rows = max(1, _CHUNK // fin.size)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        block = np.full((r1 - r0, fin.size), k - 1, dtype=out.dtype)
        for j in range(k - 2, -1, -1):  # last to first, so the earliest stopping exit wins
            if _is_accept_all(thr[j]):
                block[...] = j
            elif j in shifted:
                np.putmask(block, s[r0:r1, j, None] >= shifted[j][None, :], j)
        out[r0:r1, a:b] = block
    return out


# --------------------------------------------------------------------- cost: betting


def sample_order(n: int, seed: int) -> np.ndarray:
    """The order the betting test reads the rows in: a permutation fixed by ``seed`` alone."""
    return np.random.default_rng(seed).permutation(n)


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    return delta


def _bets(xo: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Predictable bets ``lambda_t`` for ordered values ``xo`` (``[G, n]``: one row per
    column, time along the last axis, values in [0, 1]) and each row's sample mean.
    ``lambda_t = min(0.75, sqrt(2 log(1/delta) / (n var_{t-1})))`` with running mean and
    variance started from the priors 1/2 and 1/4. The bets do not depend on the level
    ``b`` tested, so the test is monotone in ``b``."""
    n = xo.shape[-1]
    t = np.arange(1, n + 1, dtype=np.float64)
    csum = np.cumsum(xo, axis=-1)
    mu = (0.5 + csum) / (t + 1.0)
    var = (0.25 + np.cumsum((xo - mu) ** 2, axis=-1)) / (t + 1.0)
    var_prev = np.concatenate([np.full(xo.shape[:-1] + (1,), 0.25), var[..., :-1]], axis=-1)
    lam = np.minimum(0.75, np.sqrt(2.0 * math.log(1.0 / delta) / (n * var_prev)))
    return lam, csum[..., -1] / n


def _max_log_wealth(xo: np.ndarray, lam: np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """``max_t log K_t`` (with ``K_0 = 1``) of ``K_t = prod_{i<=t} (1 + lambda_i (b - x_i))``;
    ``b`` a float or one level per row."""
    b = np.asarray(b, dtype=np.float64)[..., None] if np.ndim(b) else b
    lw = np.cumsum(np.log1p(lam * (b - xo)), axis=-1)
    return np.maximum(lw.max(axis=-1), 0.0)


def _cost_rejects(xo: np.ndarray, lam: np.ndarray, mean: np.ndarray, b, delta: float) -> np.ndarray:
    """Reject ``H0: E[x] > b``: the wealth reaches ``1/delta`` (Ville) and ``b`` is not below
    the sample mean (a sanity clause that only removes rejections, so stays valid)."""
    return (b >= mean) & (_max_log_wealth(xo, lam, b) >= math.log(1.0 / delta))


def _rows_in_time(x: np.ndarray, order: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """``x`` (``[n]`` or ``[n, G]``) as ``[G, n]`` in reading order, contiguous."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.ndim == 1
    if x.ndim not in (1, 2):
        raise ValueError("x must be [n] or [n, G]")
    x2 = x[:, None] if flat else x
    if order is not None:
        order = np.asarray(order)
        if order.shape != (x2.shape[0],):
            raise ValueError("order must be a permutation of the rows")
        x2 = x2[order]
    return np.ascontiguousarray(x2.T), flat


def _row_blocks(g: int, n: int):
    w = max(1, _BLOCK // max(n, 1))
    for r0 in range(0, g, w):
        yield slice(r0, min(g, r0 + w))


def cost_pvalues(x: np.ndarray, b: float, delta: float, order: np.ndarray | None = None) -> np.ndarray | float:
    """p-values of ``H0: E[x] > b`` for values in [0, 1], one per column of ``x`` (``[n]``
    or ``[n, G]``), read in ``order``: ``min(1, 1 / max_t K_t)`` (1 when ``b`` is below the
    sample mean). The bets are tuned to level ``delta``; the test at ``delta`` rejects
    exactly when the p-value is ``<= delta``."""
    delta = _check_delta(delta)
    xo, flat = _rows_in_time(x, order)
    g, n = xo.shape
    p = np.ones(g)
    if n:
        for sl in _row_blocks(g, n):
            lam, mean = _bets(xo[sl], delta)
            mlw = _max_log_wealth(xo[sl], lam, b)
            p[sl] = np.where(b >= mean, np.exp(-mlw), 1.0)
    return float(p[0]) if flat else p


def _upper_bounds_ordered(xo: np.ndarray, delta: float) -> np.ndarray:
    """:func:`cost_upper_bound` for rows already in ``[G, n]`` reading order."""
    g, n = xo.shape
    out = np.ones(g)
    if n == 0:
        return out
    for sl in _row_blocks(g, n):
        xs = xo[sl]
        lam, mean = _bets(xs, delta)
        ok = _cost_rejects(xs, lam, mean, 1.0, delta)
        lo = np.zeros(xs.shape[0], dtype=np.int64)  # never rejects at 0 (all factors <= 1)
        hi = np.full(xs.shape[0], COST_STEPS, dtype=np.int64)
        while np.any(hi - lo > 1):
            mid = (lo + hi) // 2
            rej = _cost_rejects(xs, lam, mean, mid / COST_STEPS, delta)
            hi = np.where(rej, mid, hi)
            lo = np.where(rej, lo, mid)
        out[sl] = np.where(ok, hi / COST_STEPS, 1.0)
    return out


def cost_upper_bound(x: np.ndarray, delta: float, order: np.ndarray | None = None) -> float | np.ndarray:
    """Upper confidence bound on ``E[x]`` (values in [0, 1]) at level ``1 - delta``: the
    smallest multiple of ``2**-30`` at which the betting test rejects ``H0: E[x] > b``
    (found by bisection; the test is monotone in ``b``), or 1.0 if none. ``x``: ``[n]``
    (returns a float) or ``[n, G]`` (one bound per column)."""
    delta = _check_delta(delta)
    xo, flat = _rows_in_time(x, order)
    out = _upper_bounds_ordered(xo, delta)
    return float(out[0]) if flat else out


def hoeffding_upper_bound(x: np.ndarray, delta: float) -> float:
    """``min(1, mean + sqrt(log(1/delta) / (2n)))`` for values in [0, 1] (for comparison)."""
    x = np.asarray(x, dtype=np.float64)
    return min(1.0, float(x.mean()) + math.sqrt(math.log(1.0 / _check_delta(delta)) / (2 * x.size)))


# ------------------------------------------------------------------ binary losses


@lru_cache(maxsize=16)
def _log_factorials(n: int) -> np.ndarray:
    return np.array([math.lgamma(i + 1.0) for i in range(n + 1)])


def _binom_logcdf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """``log P(Bin(n, p) <= k)`` for integer ``k`` in [0, n), 0 < p < 1: the pmf in log
    space and a running log-sum-exp (so a smaller ``k`` never gets a larger value)."""
    k = np.asarray(k, dtype=np.int64)
    top = int(k.max()) if k.size else 0
    lf = _log_factorials(n)
    i = np.arange(top + 1)
    logpmf = lf[n] - lf[i] - lf[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    return np.minimum(np.logaddexp.accumulate(logpmf)[k], 0.0)


def binomial_cdf(k, n: int, p: float) -> np.ndarray | float:
    """``P(Bin(n, p) <= k)``, vectorised over ``k``: the p-value of ``H0: rate >= p`` after
    ``k`` losses in ``n`` rows (exact binomial test)."""
    k_arr = np.asarray(k, dtype=np.int64)
    flat = k_arr.ndim == 0
    k_arr = np.atleast_1d(k_arr)
    out = np.where(k_arr >= n, 1.0, 0.0)
    mid = (k_arr >= 0) & (k_arr < n)
    if mid.any():
        if p <= 0.0:
            out[mid] = 1.0
        elif p < 1.0:
            out[mid] = np.exp(_binom_logcdf(k_arr[mid], n, p))
    return float(out[0]) if flat else out


def _binom_rejects(k: np.ndarray, n: int, eps: float, delta: float) -> np.ndarray:
    """Reject ``H0: rate > eps`` at level ``delta``, ``eps`` a multiple of ``2**-40``."""
    k = np.asarray(k, dtype=np.int64)
    if eps >= 1.0:
        return np.ones(k.shape, dtype=bool)
    if eps <= 0.0:
        return np.zeros(k.shape, dtype=bool)
    out = np.zeros(k.shape, dtype=bool)
    low = k < n
    if low.any():
        out[low] = _binom_logcdf(k[low], n, eps) <= math.log(delta)
    return out


def binomial_upper_bound(k, n: int, delta: float) -> float | np.ndarray:
    """One-sided Clopper-Pearson upper bound on a rate after ``k`` losses in ``n`` rows: the
    smallest multiple of ``2**-40`` at which the exact test rejects ``H0: rate > eps`` at
    level ``delta`` (bisection), 1.0 when ``k >= n``. Vectorised over ``k``."""
    delta = _check_delta(delta)
    k_arr = np.asarray(k, dtype=np.int64)
    flat = k_arr.ndim == 0
    k_arr = np.atleast_1d(k_arr)
    if np.any(k_arr < 0):
        raise ValueError("k must be >= 0")
    out = np.ones(k_arr.shape)
    for kk in np.unique(k_arr[k_arr < n]):
        lo, hi = 0, LOSS_STEPS  # rejects at 1 (k < n), never at 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _binom_rejects(np.array([kk]), n, mid / LOSS_STEPS, delta)[0]:
                hi = mid
            else:
                lo = mid
        out[k_arr == kk] = hi / LOSS_STEPS
    return float(out[0]) if flat else out


# ------------------------------------------------------------- shared per-policy bounds


def _cost_of(u: float, c: np.ndarray) -> float:
    """Cost in the costs' unit of a normalised value ``u`` (exactly c_K at 1)."""
    return float(c[-1]) if u >= 1.0 else float(c[0] + u * (c[-1] - c[0]))


def _deploy_dev(delta_cost: float, m: int | None) -> float:
    """Hoeffding deviation of an m-sample mean at level ``delta_cost / 2`` (normalised)."""
    return 0.0 if m is None else math.sqrt(math.log(2.0 / delta_cost) / (2.0 * m))


def _cost_report(u: float, dev: float, c: np.ndarray, hi_exit: int) -> float:
    """The cost bound reported for a normalised population bound ``u``: ``u + dev`` in the
    costs' unit, never above the cost of the dearest exit the policy can reach."""
    return min(float(c[hi_exit]), _cost_of(min(1.0, u + dev), c))


def _cost_level(budget: float, dev: float, c: np.ndarray) -> float | None:
    """The largest multiple ``u`` of ``2**-30`` in [0, 1] with ``cost(u + dev) <= budget``
    (the level the betting test is run at), or ``None`` if there is none."""

    def f(m: int) -> bool:
        return _cost_of(min(1.0, m / COST_STEPS + dev), c) <= budget

    if not f(0):
        return None
    if f(COST_STEPS):
        return 1.0
    lo, hi = 0, COST_STEPS
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) else (lo, mid)
    return lo / COST_STEPS


def _loss_level(eps: float) -> float:
    """The largest multiple of ``2**-40`` not above ``eps`` (the level the loss test uses)."""
    return math.floor(eps * LOSS_STEPS) / LOSS_STEPS if eps < 1.0 else 1.0


def _losses(metric: str, exits: np.ndarray, correct: np.ndarray | None, preds: np.ndarray | None) -> np.ndarray:
    """Per-row binary loss (``[n]`` or ``[n, G]``) of a metric at the given exits."""
    two = exits.ndim == 2
    idx = exits.astype(np.intp) if two else exits.astype(np.intp)[:, None]
    if metric == "drop":
        got = np.take_along_axis(correct, idx, axis=1)
        loss = ~got & correct[:, -1:]
    else:
        got = np.take_along_axis(preds, idx, axis=1)
        loss = got != preds[:, -1:]
    return loss if two else loss[:, 0]


def _policy_bounds(
    exits: np.ndarray,
    thresholds: Sequence[float | None],
    costs: np.ndarray,
    correct: np.ndarray | None,
    preds: np.ndarray | None,
    deltas: Mapping[str, float],
    order: np.ndarray,
    deploy_batch: int | None,
) -> dict[str, float]:
    """Upper bounds, one per metric in ``deltas``, for one policy's exits ``[n]``: the one
    code path behind both :func:`calibrate`'s reported bounds and :func:`certify_policy`."""
    k = costs.size
    n = exits.size
    lo, hi = _exit_range(thresholds)
    out: dict[str, float] = {}
    for metric, d in deltas.items():
        if metric == "cost":
            dev = _deploy_dev(d, deploy_batch)
            d_pop = d / 2 if deploy_batch is not None else d
            if lo == hi:  # every sample takes the same exit, on any data
                out[metric] = float(costs[hi])
                continue
            x = (costs[exits] - costs[0]) / (costs[-1] - costs[0])
            u = cost_upper_bound(x, d_pop, order) if n else 1.0
            out[metric] = _cost_report(u, dev, costs, hi)
        else:
            if lo == k - 1:  # everyone at the last exit: the loss is 0 on any data
                out[metric] = 0.0
                continue
            cnt = int(_losses(metric, exits, correct, preds).sum())
            out[metric] = float(binomial_upper_bound(cnt, n, d)) if n else 1.0
    return out


def _empirical(exits: np.ndarray, costs: np.ndarray, correct, preds) -> dict[str, float]:
    n = exits.size
    if n == 0:
        return {}
    shares = np.bincount(exits.astype(np.intp), minlength=costs.size) / n
    emp = {"cost": math.fsum((shares * costs).tolist())}
    if correct is not None:
        acc = float(correct[np.arange(n), exits.astype(np.intp)].mean())
        last = float(correct[:, -1].mean())
        emp.update(accuracy=acc, last_accuracy=last, drop=last - acc, harm=float(_losses("drop", exits, correct, None).mean()))
    if preds is not None:
        emp["disagreement"] = float(_losses("disagreement", exits, None, preds).mean())
    return emp


def _check_labels(correct, preds, n: int, k: int):
    if correct is not None:
        correct = np.asarray(correct, dtype=bool)
        if correct.shape != (n, k):
            raise ValueError(f"correct must be [{n}, {k}], got {correct.shape}")
    if preds is not None:
        preds = np.asarray(preds)
        if preds.shape != (n, k):
            raise ValueError(f"preds must be [{n}, {k}], got {preds.shape}")
    return correct, preds


def certify_policy(
    scores: np.ndarray,
    thresholds: Thresholds,
    costs: Sequence[float],
    correct: np.ndarray | None = None,
    preds: np.ndarray | None = None,
    *,
    delta: float | Mapping[str, float] = 0.1,
    seed: int = 0,
    deploy_batch: int | None = None,
) -> dict:
    """Upper confidence bounds for one given policy on the given rows (``eenet certify``).

    ``delta``: a float is split evenly over the metrics the data allows (cost always; drop
    with ``correct``; disagreement with ``preds``), so all bounds hold together with
    probability ``>= 1 - delta``; a mapping (e.g. :attr:`Calibration.deltas`) names the
    metrics and their levels. The bounds are valid for a policy fixed before these rows
    were seen; with a calibration's thresholds, ``delta=cal.deltas``, ``seed=cal.seed`` and
    ``deploy_batch=cal.deploy_batch`` on its calibration rows, they equal its bounds."""
    s = _check_scores(scores)
    n, k = s.shape
    thr = _check_thresholds(thresholds, k)
    c = _check_costs(costs, k)
    correct, preds = _check_labels(correct, preds, n, k)
    if isinstance(delta, Mapping):
        deltas = {m: _check_delta(d) for m, d in delta.items()}
        if set(deltas) - set(METRICS):
            raise ValueError(f"unknown metrics {sorted(set(deltas) - set(METRICS))}")
    else:
        metrics = ["cost"] + (["drop"] if correct is not None else []) + (["disagreement"] if preds is not None else [])
        deltas = {m: _check_delta(delta) / len(metrics) for m in metrics}
    if "drop" in deltas and correct is None:
        raise ValueError("the drop bound needs `correct`")
    if "disagreement" in deltas and preds is None:
        raise ValueError("the disagreement bound needs `preds`")
    exits = exits_for_shifts(s, thr, np.array([0.0]))[:, 0]
    bounds = _policy_bounds(exits, thr, c, correct, preds, deltas, sample_order(n, seed), deploy_batch)
    return {
        "n": n,
        "deltas": deltas,
        "seed": seed,
        "deploy_batch": deploy_batch,
        "cost_bound": bounds.get("cost"),
        "drop_bound": bounds.get("drop"),
        "disagreement_bound": bounds.get("disagreement"),
        "empirical": _empirical(exits, c, correct, preds),
    }


# ------------------------------------------------------------------ calibration (FST)


def _split_delta(delta: float, budget: bool, losses: list[str], cost_share: float) -> dict[str, float]:
    if not budget:
        return {m: delta / len(losses) for m in losses}
    if not losses:
        return {"cost": delta}
    if not 0.0 < cost_share < 1.0:
        raise ValueError("cost_share must lie in (0, 1)")
    return {"cost": delta * cost_share, **{m: delta * (1 - cost_share) / len(losses) for m in losses}}


def _prefix_end(rejected: np.ndarray) -> int:
    """Last index of the leading run of rejections (-1 if the first is not rejected)."""
    fail = np.flatnonzero(~rejected)
    return int(fail[0]) - 1 if fail.size else rejected.size - 1


def _suffix_start(rejected: np.ndarray) -> int:
    """First index of the trailing run of rejections (``len`` if the last is not rejected)."""
    fail = np.flatnonzero(~rejected)
    return int(fail[-1]) + 1 if fail.size else 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def calibrate(
    scores_cal: np.ndarray,
    thresholds: Thresholds,
    costs: Sequence[float],
    grid: np.ndarray,
    *,
    budget: float | None = None,
    max_drop: float | None = None,
    max_disagreement: float | None = None,
    correct: np.ndarray | None = None,
    preds: np.ndarray | None = None,
    delta: float = 0.1,
    seed: int = 0,
    deploy_batch: int | None = None,
    cost_share: float = 0.5,
    on_infeasible: str = "raise",
) -> Calibration:
    """Choose a shift from ``grid`` whose policy is certified, on exchangeable new data and
    with probability ``>= 1 - delta`` over the calibration rows, to meet every requirement:

    * ``budget``: expected cost ``<= budget`` (with ``deploy_batch = m``: the realised mean
      cost of the next ``m`` deployed samples; the population bound then gets ``delta/2``
      of the budget's share and a Hoeffding deviation of an m-sample mean the rest);
    * ``max_drop``: harm rate (policy wrong, last exit right) ``<= max_drop``; it bounds the
      accuracy drop against the last exit. Needs ``correct`` (``[n, K]`` bool);
    * ``max_disagreement``: rate of predictions differing from the last exit's. Needs
      ``preds`` (``[n, K]`` predicted classes).

    Fixed-sequence testing: the budget walk starts at the cheapest shift and certifies
    shifts until the first it cannot; the loss walks start at the dearest and go down. With
    a budget, the dearest budget-certified shift is chosen (it must also be loss-certified);
    with losses alone, the cheapest loss-certified shift. ``delta`` is split: ``cost_share``
    to the budget when there are losses too, the rest evenly over the losses (Bonferroni).

    If the requirements cannot all be certified, raises :class:`Infeasible` (or, with
    ``on_infeasible="return"``, returns the record with ``feasible=False``) carrying the
    best achievable values (``needed_budget``, ``drop_at_budget``, ...)."""
    s = _check_scores(scores_cal)
    n, k = s.shape
    thr = _check_thresholds(thresholds, k)
    g = np.asarray(grid, dtype=np.float64).ravel()
    if g.size == 0:
        raise ValueError("grid is empty")
    if np.isnan(g).any() or np.any(g[1:] <= g[:-1]):
        raise ValueError("grid must be strictly increasing and free of NaN")
    cal = calibrate_columns(
        exits_for_shifts(s, thr, g), [shifted_thresholds(thr, lam) for lam in g], costs,
        budget=budget, max_drop=max_drop, max_disagreement=max_disagreement, correct=correct, preds=preds,
        delta=delta, seed=seed, deploy_batch=deploy_batch, cost_share=cost_share, on_infeasible="return",
    )
    if cal.index is not None:
        cal.shift = float(g[cal.index])
    elif cal.reason and cal.reason.startswith("no policy in the family"):
        cal.reason = cal.reason.replace("no policy in the family", "no shift in the grid", 1)
    if not cal.feasible and on_infeasible == "raise":
        raise Infeasible(cal.reason or "infeasible", cal)
    return cal


def calibrate_columns(
    exits: np.ndarray,
    cols_thr: Sequence[Thresholds],
    costs: Sequence[float],
    *,
    budget: float | None = None,
    max_drop: float | None = None,
    max_disagreement: float | None = None,
    correct: np.ndarray | None = None,
    preds: np.ndarray | None = None,
    delta: float = 0.1,
    seed: int = 0,
    deploy_batch: int | None = None,
    cost_share: float = 0.5,
    on_infeasible: str = "raise",
) -> Calibration:
    """:func:`calibrate` on any family of policies fixed before the calibration rows were
    seen: ``exits`` (``[n, G]``) is where each calibration row stops under each policy,
    the columns ordered from the cheapest policy to the dearest, and ``cols_thr[g]`` the
    thresholds of policy ``g`` (they say which exits it can reach on any data). The walks,
    the choice and the guarantee are :func:`calibrate`'s; ``shift`` is left ``None`` and
    ``index`` names the chosen column."""
    k = len(cols_thr[0]) if len(cols_thr) else 0
    exits = np.asarray(exits)
    if exits.ndim != 2 or exits.shape[1] != len(cols_thr) or exits.shape[1] == 0:
        raise ValueError(f"exits must be [n, G] with one column per policy, got {exits.shape} for {len(cols_thr)} policies")
    n = exits.shape[0]
    c = _check_costs(costs, k)
    correct, preds = _check_labels(correct, preds, n, k)
    delta = _check_delta(delta)
    if on_infeasible not in ("raise", "return"):
        raise ValueError("on_infeasible must be 'raise' or 'return'")
    cols_thr = [_check_thresholds(t, k) for t in cols_thr]
    losses = [m for m, lvl in (("drop", max_drop), ("disagreement", max_disagreement)) if lvl is not None]
    if budget is None and not losses:
        raise ValueError("nothing to certify: give a budget, max_drop and/or max_disagreement")
    if max_drop is not None and correct is None:
        raise ValueError("max_drop needs `correct` (per-exit correctness)")
    if max_disagreement is not None and preds is None:
        raise ValueError("max_disagreement needs `preds` (per-exit predictions)")
    if deploy_batch is not None and (budget is None or int(deploy_batch) < 1):
        raise ValueError("deploy_batch needs a budget and must be >= 1")
    deploy_batch = None if deploy_batch is None else int(deploy_batch)
    if n == 0:
        raise ValueError("no calibration rows")
    deltas = _split_delta(delta, budget is not None, losses, cost_share)
    levels = {"drop": max_drop, "disagreement": max_disagreement}
    order = sample_order(n, seed)
    ranges = np.array([_exit_range(t) for t in cols_thr])  # [G, 2]: (lo, hi) exit per column
    G = len(cols_thr)
    tested: dict[str, int] = {}
    certified: dict[str, tuple[int, int] | None] = {}

    # ---- budget: cheapest first
    jb = None
    if budget is not None:
        budget = float(budget)
        jb = _prefix_end(_budget_rejects(exits, ranges, c, budget, deltas["cost"], order, deploy_batch))
        tested["cost"] = min(G, jb + 2)
        certified["cost"] = (0, jb) if jb >= 0 else None

    # ---- losses: dearest first
    jl = 0
    counts: dict[str, np.ndarray] = {}
    for m in losses:
        cnt = _losses(m, exits, correct, preds).sum(axis=0)
        counts[m] = cnt
        det0 = ranges[:, 0] == k - 1
        rej = det0 | _binom_rejects(cnt, n, _loss_level(float(levels[m])), deltas[m])
        start = _suffix_start(rej)
        tested[m] = min(G, G - start + 1)
        certified[m] = (start, G - 1) if start < G else None
        jl = max(jl, start)

    seen: dict[int, dict[str, float]] = {}

    def bounds_at(j: int) -> dict[str, float]:
        if j not in seen:
            seen[j] = _policy_bounds(exits[:, j], cols_thr[j], c, correct, preds, deltas, order, deploy_batch)
        return seen[j]

    def within(bd: dict[str, float]) -> bool:
        ok = budget is None or bd["cost"] <= budget
        return ok and all(bd[m] <= levels[m] for m in losses)

    # ---- choose
    chosen, reason = None, None
    if budget is not None:
        lo_j = jl if losses else 0
        if jb is not None and jb >= lo_j:
            for j in range(jb, lo_j - 1, -1):  # jb itself, unless a last-bit mismatch
                if within(bounds_at(j)):
                    chosen = j
                    break
    else:
        for j in range(jl, G):
            if within(bounds_at(j)):
                chosen = j
                break

    needed = drop_at = dis_at = None
    if chosen is None:
        req = " and ".join(f"{m} <= {_fmt(levels[m])}" for m in losses)
        if losses and jl >= G:
            reason = f"no policy in the family certifies {req} (a family should end with everyone at the last exit)"
        elif budget is not None and jb is not None and (jb < 0 or (losses and jl > jb)):
            needed = _needed_budget(exits, cols_thr, ranges, c, deltas["cost"], order, deploy_batch, jl if losses else 0)
            if losses and jb >= 0:  # both walks certify something, but their sets do not meet
                at = {}
                live = ranges[jb:, 0] != k - 1
                for m in losses:
                    worst = int(counts[m][jb:][live].max()) if live.any() else None
                    at[m] = 0.0 if worst is None else float(binomial_upper_bound(worst, n, deltas[m]))
                drop_at, dis_at = at.get("drop"), at.get("disagreement")
                got = ", ".join(f"{m} is {_fmt(at[m])}" for m in losses)
                reason = (
                    f"cannot meet both: the cheapest policy with {req} is certified only at cost <= {_fmt(needed)}; "
                    f"at a budget of {_fmt(budget)} the certified {got}"
                )
            else:
                what = f"the cheapest policy with {req}" if losses else "the cheapest policy"
                reason = f"cannot certify a budget of {_fmt(budget)}: {what} is certified only at cost <= {_fmt(needed)}"
        else:  # pragma: no cover - the last bits of a bound disagreed with the walk
            reason = "no certified shift passed the final check (floating-point mismatch)"

    if chosen is not None:
        bd = bounds_at(chosen)
        emp = _empirical(exits[:, chosen], c, correct, preds)
    else:
        bd, emp = {}, {}
    cal = Calibration(
        feasible=chosen is not None,
        shift=None,
        thresholds=None if chosen is None else cols_thr[chosen],
        index=chosen,
        n=n,
        delta=delta,
        deltas=deltas,
        seed=seed,
        budget=budget,
        max_drop=max_drop,
        max_disagreement=max_disagreement,
        deploy_batch=deploy_batch,
        cost_bound=bd.get("cost"),
        drop_bound=bd.get("drop"),
        disagreement_bound=bd.get("disagreement"),
        empirical=emp,
        tested=tested,
        certified=certified,
        grid_size=G,
        reason=reason,
        needed_budget=needed,
        drop_at_budget=drop_at,
        disagreement_at_budget=dis_at,
    )
    if chosen is None and on_infeasible == "raise":
        raise Infeasible(reason, cal)
    return cal


def _budget_rejects(exits, ranges, c, budget, dc, order, deploy_batch) -> np.ndarray:
    """Per column, whether the budget test rejects ``H0: cost > budget``; exactly when the
    column's reported cost bound (:func:`_policy_bounds`) is within the budget. Columns
    after the walk's first non-rejection are not tested and read ``False``."""
    n = exits.shape[0]
    dev = _deploy_dev(dc, deploy_batch)
    d_pop = dc / 2 if deploy_batch is not None else dc
    b_q = _cost_level(budget, dev, c)
    rej = c[ranges[:, 1]] <= budget  # the dearest exit the policy can reach is within budget
    fixed_fail = np.flatnonzero(~rej & (ranges[:, 0] == ranges[:, 1]))
    stop = int(fixed_fail[0]) if fixed_fail.size else rej.size  # the walk ends there at the latest
    todo = np.flatnonzero(~rej[:stop])
    rej[stop:] = False
    if todo.size == 0:
        return rej
    if b_q is None:
        rej[todo[0] :] = False
        return rej
    cnorm = (c - c[0]) / (c[-1] - c[0])
    ex_t = np.ascontiguousarray(exits[order][:, todo].T)  # [columns, n] in reading order
    for sl in _row_blocks(todo.size, n):
        xo = cnorm[ex_t[sl]]
        lam, mean = _bets(xo, d_pop)
        r = _cost_rejects(xo, lam, mean, b_q, d_pop)
        rej[todo[sl]] = r
        if not r.all():
            rej[todo[sl][int(np.argmin(r))] :] = False
            break
    return rej


def _needed_budget(exits, cols_thr, ranges, c, dc, order, deploy_batch, j_target) -> float:
    """The smallest budget at which the budget walk reaches column ``j_target``: the largest
    cost bound of columns ``0..j_target`` (the walk certifies a column exactly when its
    bound is within the budget). Tries the target's own bound first, then the bounds of the
    columns where the walk fails, and computes every bound only if that does not settle it."""
    dev = _deploy_dev(dc, deploy_batch)
    d_pop = dc / 2 if deploy_batch is not None else dc
    cnorm = (c - c[0]) / (c[-1] - c[0])
    head = slice(0, j_target + 1)
    j = j_target
    for _ in range(6):  # raise the candidate to the bound of the first column the walk fails
        cand = _policy_bounds(exits[:, j], cols_thr[j], c, None, None, {"cost": dc}, order, deploy_batch)["cost"]
        rej = _budget_rejects(exits[:, head], ranges[head], c, cand, dc, order, deploy_batch)
        if rej.all():
            return cand
        j = int(np.argmin(rej))
    cols = np.arange(j_target + 1)
    bounds = np.array([float(c[ranges[j, 1]]) for j in cols])  # deterministic caps
    live = ranges[cols, 0] != ranges[cols, 1]
    if live.any():
        idx = cols[live]
        u = cost_upper_bound(cnorm[exits[:, idx]], d_pop, order)
        bounds[live] = [_cost_report(float(ui), dev, c, int(ranges[j, 1])) for ui, j in zip(u, idx, strict=True)]
    return float(bounds.max())
