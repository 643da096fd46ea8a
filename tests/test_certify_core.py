"""Certified exit policies (eenet_cli.core.certify): validity by simulation, tightness,
monotonicity, infeasible requests, and certify_policy reproducing a calibration.

The simulated world: a population of 200,000 rows from a generator with a latent difficulty
per sample, exits that get better with depth, and noisy confidences correlated with being
right. Calibration sets are drawn i.i.d. from it, so the "true" expected cost / harm /
disagreement of a shifted policy is its mean over the whole population.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eenet_cli.core import certify as C

COSTS = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
THR = [0.85, 0.85, 0.85, 0.85, None]
BUDGET = 3.0
MAX_DROP = 0.01
MAX_DIS = 0.05


def make_population(n: int, seed: int, k: int = 5, classes: int = 10):
    """Scores, per-exit correctness and predictions with a realistic structure."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    ability = np.linspace(0.2, 1.5, k)  # deeper exits are right more often (~57% .. 88%)
    z = ability[None, :] - difficulty[:, None] + 0.5 * rng.normal(size=n)[:, None] + 0.6 * rng.normal(size=(n, k))
    correct = z > 0
    scores = 1.0 / (1.0 + np.exp(-(1.5 * z + 0.8 * rng.normal(size=(n, k)))))
    labels = rng.integers(0, classes, n)
    wrong = (labels[:, None] + rng.integers(1, classes, (n, k))) % classes
    preds = np.where(correct, labels[:, None], wrong)
    return scores, correct, preds


def true_curves(scores, correct, preds, thresholds, grid, chunk=25_000):
    """Population mean cost, harm rate and disagreement rate of every shifted policy."""
    n, k = scores.shape
    cost, harm, dis = (np.zeros(grid.size) for _ in range(3))
    harm_k = ~correct & correct[:, -1:]
    dis_k = preds != preds[:, -1:]
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        ex = C.exits_for_shifts(scores[r0:r1], thresholds, grid)
        for j in range(k):
            at = ex == j
            cost += COSTS[j] * at.sum(0)
            harm += (at & harm_k[r0:r1, j, None]).sum(0)
            dis += (at & dis_k[r0:r1, j, None]).sum(0)
    return cost / n, harm / n, dis / n


def max_violations(draws: int, rate: float, alpha: float = 1e-3) -> int:
    """Smallest c with P(Bin(draws, rate) > c) <= alpha: the binomial slack allowed."""
    cdf = 0.0
    for c in range(draws + 1):
        cdf += math.comb(draws, c) * rate**c * (1 - rate) ** (draws - c)
        if 1 - cdf <= alpha:
            return c
    return draws


@pytest.fixture(scope="module")
def world():
    scores, correct, preds = make_population(200_000, 0)
    fit_scores, _, _ = make_population(10_000, 1)  # fit rows: independent of every calibration draw
    grid = C.shift_grid(fit_scores, THR, 256, COSTS)
    cost, harm, dis = true_curves(scores, correct, preds, THR, grid)
    return {"scores": scores, "correct": correct, "preds": preds, "grid": grid, "cost": cost, "harm": harm, "dis": dis}


def draw(world, rng, n):
    idx = rng.integers(0, world["scores"].shape[0], n)
    return world["scores"][idx], world["correct"][idx], world["preds"][idx]


# --------------------------------------------------------------------- validity


@pytest.mark.parametrize("delta", [0.1, 0.05])
def test_budget_is_valid_over_many_calibration_sets(world, delta):
    rng = np.random.default_rng(11)
    draws, bad = 120, 0
    for _ in range(draws):
        s, _, _ = draw(world, rng, 2_000)
        cal = C.calibrate(s, THR, COSTS, world["grid"], budget=BUDGET, delta=delta, seed=int(rng.integers(1 << 30)))
        assert cal.feasible and cal.cost_bound <= BUDGET
        bad += world["cost"][cal.index] > BUDGET
    assert bad <= max_violations(draws, delta), f"{bad}/{draws} draws overran the budget"


@pytest.mark.parametrize("delta", [0.1, 0.05])
def test_drop_and_disagreement_are_valid_over_many_calibration_sets(world, delta):
    rng = np.random.default_rng(12)
    draws, bad_drop, bad_dis, bad_any = 120, 0, 0, 0
    for _ in range(draws):
        s, ok, pr = draw(world, rng, 2_000)
        cal = C.calibrate(
            s, THR, COSTS, world["grid"], max_drop=MAX_DROP, max_disagreement=MAX_DIS, correct=ok, preds=pr, delta=delta, seed=3
        )
        assert cal.deltas == {"drop": delta / 2, "disagreement": delta / 2}
        assert cal.drop_bound <= MAX_DROP and cal.disagreement_bound <= MAX_DIS
        d, a = world["harm"][cal.index] > MAX_DROP, world["dis"][cal.index] > MAX_DIS
        bad_drop, bad_dis, bad_any = bad_drop + d, bad_dis + a, bad_any + (d or a)
    assert bad_drop <= max_violations(draws, delta / 2)
    assert bad_dis <= max_violations(draws, delta / 2)
    assert bad_any <= max_violations(draws, delta)


def test_budget_with_drop_is_jointly_valid(world):
    rng = np.random.default_rng(13)
    draws, bad, infeasible, delta, max_drop = 120, 0, 0, 0.1, 0.015
    for _ in range(draws):
        s, ok, _ = draw(world, rng, 2_000)
        try:
            cal = C.calibrate(s, THR, COSTS, world["grid"], budget=BUDGET, max_drop=max_drop, correct=ok, delta=delta, seed=4)
        except C.Infeasible as e:  # nothing is deployed: no violation, but say why
            assert e.needed_budget > BUDGET or e.drop_at_budget > max_drop
            infeasible += 1
            continue
        assert cal.deltas == {"cost": delta / 2, "drop": delta / 2}
        bad += world["cost"][cal.index] > BUDGET or world["harm"][cal.index] > max_drop
    assert bad <= max_violations(draws, delta)
    assert infeasible < draws // 4


def test_deployment_batch_variant_bounds_the_realised_batch_mean(world):
    rng = np.random.default_rng(14)
    draws, bad, delta, m = 120, 0, 0.1, 500
    gaps = []
    for _ in range(draws):
        s, _, _ = draw(world, rng, 2_000)
        cal = C.calibrate(s, THR, COSTS, world["grid"], budget=BUDGET, delta=delta, deploy_batch=m, seed=5)
        plain = C.calibrate(s, THR, COSTS, world["grid"], budget=BUDGET, delta=delta, seed=5)
        assert cal.index <= plain.index  # a batch guarantee is stricter than a population one
        batch, _, _ = draw(world, rng, m)
        realised = COSTS[C.exits_for_shifts(batch, THR, world["grid"][cal.index : cal.index + 1])[:, 0]].mean()
        bad += realised > BUDGET
        gaps.append(BUDGET - world["cost"][cal.index])
    assert bad <= max_violations(draws, delta)
    # the Hoeffding deviation of a 500-sample mean at delta/2 is sqrt(log(20)/1000) ~ 0.055 of the range
    assert np.median(gaps) / (COSTS[-1] - COSTS[0]) > 0.05


def test_tightness_at_5000_rows(world):
    rng = np.random.default_rng(15)
    gaps, hoeff_gaps = [], []
    for _ in range(40):
        s, _, _ = draw(world, rng, 5_000)
        cal = C.calibrate(s, THR, COSTS, world["grid"], budget=BUDGET, delta=0.1, seed=6)
        gaps.append((BUDGET - world["cost"][cal.index]) / (COSTS[-1] - COSTS[0]))
        x = (COSTS[C.exits_for_shifts(s, THR, world["grid"][cal.index : cal.index + 1])[:, 0]] - 1.0) / 4.0
        hoeff_gaps.append(C.hoeffding_upper_bound(x, 0.1) - C.cost_upper_bound(x, 0.1, C.sample_order(x.size, 6)))
    assert np.median(gaps) < 0.03
    assert min(gaps) > -0.02  # any overrun is small
    assert np.median(hoeff_gaps) > 0  # betting beats Hoeffding on realistic cost data


# ------------------------------------------------------------------- the knob


def reference_exits(scores, thresholds):
    n, k = scores.shape
    out = np.full(n, k - 1)
    for i in range(n):
        for j in range(k - 1):
            t = thresholds[j]
            if t is not None and scores[i, j] >= t:
                out[i] = j
                break
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 5))
def test_exits_for_shifts_matches_applying_shifted_thresholds(seed, k):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=(60, k)), 1)  # ties with thresholds happen
    thr = [rng.choice([None, C.ACCEPT_ALL, round(float(rng.normal()), 1)], p=[0.2, 0.1, 0.7]) for _ in range(k)]
    grid = C.shift_grid(s, thr, 16)
    grid = np.unique(np.concatenate([grid, np.round(rng.normal(size=5), 1)]))
    ex = C.exits_for_shifts(s, thr, grid)
    assert ex.shape == (60, grid.size)
    for g, lam in enumerate(grid):
        np.testing.assert_array_equal(ex[:, g], reference_exits(s, C.shifted_thresholds(thr, lam)))
    assert np.all(np.diff(ex.astype(int), axis=1) >= 0)  # exits never move earlier as the shift grows
    assert np.all(ex[:, 0] == 0) and np.all(ex[:, -1] == k - 1)


def test_shift_grid_ends_and_size():
    s, _, _ = make_population(3_000, 7)
    g = C.shift_grid(s, THR, 256, COSTS)
    assert g[0] == -np.inf and g[-1] == np.inf and 0.0 in g
    assert np.all(np.diff(g[1:-1]) > 0) and g.size <= 256
    np.testing.assert_array_equal(g, C.shift_grid(s, THR, 256, COSTS))
    assert C.shifted_thresholds(THR, -np.inf) == [C.ACCEPT_ALL, None, None, None, None]
    assert C.shifted_thresholds(THR, np.inf) == [None] * 5
    assert C.shifted_thresholds([0.5, C.ACCEPT_ALL, None], 0.25) == [0.75, C.ACCEPT_ALL, None]
    np.testing.assert_array_equal(C.shift_grid(s, [None] * 5, 256), [-np.inf, 0.0, np.inf])


def test_grid_is_roughly_even_in_fit_cost():
    s, _, _ = make_population(20_000, 8)
    g = C.shift_grid(s, THR, 64, COSTS)
    cost = COSTS[C.exits_for_shifts(s, THR, g)].mean(0)
    steps = np.diff(cost[1:-1])
    assert steps.max() < 4 * (COSTS[-1] - COSTS[0]) / 60


# ------------------------------------------------------------------- bounds


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), p=st.floats(0.001, 0.999))
def test_binomial_cdf_matches_brute_force(n, p):
    ks = np.arange(-1, n + 2)
    got = C.binomial_cdf(ks, n, p)
    want = [sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n) + 1)) if k >= 0 else 0.0 for k in ks]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert C.binomial_cdf(3, 10, 0.0) == 1.0 and C.binomial_cdf(9, 10, 1.0) == 0.0


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 3_000), frac=st.floats(0, 1), delta=st.floats(0.001, 0.5))
def test_clopper_pearson_inverts_the_test(n, frac, delta):
    k = min(n, int(frac * n))
    u = C.binomial_upper_bound(k, n, delta)
    if k == n:
        assert u == 1.0
        return
    step = 2.0**-40
    assert k / n <= u <= 1.0
    assert C.binomial_cdf(k, n, u) <= delta  # the test rejects at the bound ...
    assert C.binomial_cdf(k, n, u - step) > delta  # ... and not one grid step below it
    assert C.binomial_upper_bound(max(k - 1, 0), n, delta) <= u  # monotone in k
    assert C.binomial_upper_bound(k, n, delta / 2) >= u  # and in delta
    if k == 0:
        assert abs(u - (1 - delta ** (1 / n))) < 1e-9  # the closed form


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 400),
    kind=st.sampled_from(["bern", "levels", "beta"]),
    d1=st.floats(0.001, 0.2),
    d2=st.floats(0.001, 0.2),
)
def test_cost_bound_properties(seed, n, kind, d1, d2):
    rng = np.random.default_rng(seed)
    p = rng.random()
    x = {
        "bern": lambda: (rng.random(n) < p).astype(float),
        "levels": lambda: rng.integers(0, 5, n) / 4 * (rng.random(n) < p),
        "beta": lambda: rng.beta(0.5, 2.0, n),
    }[kind]()
    order = C.sample_order(n, seed)
    lo_d, hi_d = sorted((d1, d2))
    u = C.cost_upper_bound(x, lo_d, order)
    assert x.mean() - 1e-12 <= u <= 1.0
    assert C.cost_upper_bound(x, hi_d, order) <= u  # a looser level never gives a larger bound
    if u < 1.0:
        assert C.cost_pvalues(x, u, lo_d, order) <= lo_d * (1 + 1e-12)  # the bound inverts the test
        if u > 2.0**-30:
            assert C.cost_pvalues(x, u - 2.0**-30, lo_d, order) > lo_d
    b = np.sort(rng.random(5))
    ps = [C.cost_pvalues(x, bi, lo_d, order) for bi in b]
    assert all(ps[i] >= ps[i + 1] for i in range(4))  # monotone in the level tested
    # a batch of columns gives the same bounds as one column at a time
    xx = np.stack([x, x[::-1], np.full(n, 0.5)], axis=1)
    np.testing.assert_array_equal(
        C.cost_upper_bound(xx, lo_d, order), [C.cost_upper_bound(xx[:, j], lo_d, order) for j in range(3)]
    )


def test_betting_beats_hoeffding_on_low_variance_costs():
    rng = np.random.default_rng(0)
    x = np.where(rng.random(4_000) < 0.3, 0.25, 0.0)
    order = C.sample_order(x.size, 0)
    bet, hoeff = C.cost_upper_bound(x, 0.05, order), C.hoeffding_upper_bound(x, 0.05)
    assert x.mean() < bet < hoeff
    assert bet - x.mean() < 0.5 * (hoeff - x.mean())


# ------------------------------------------------------------ calibration rules


@pytest.fixture(scope="module")
def small():
    s, ok, pr = make_population(400, 21)
    grid = C.shift_grid(make_population(2_000, 22)[0], THR, 64, COSTS)
    return s, ok, pr, grid


def idx(**kw):
    try:
        return C.calibrate(**kw).index
    except C.Infeasible:
        return -1


@settings(max_examples=40, deadline=None)
@given(
    b1=st.floats(0.5, 5.5),
    b2=st.floats(0.5, 5.5),
    d1=st.floats(0.001, 0.2),
    d2=st.floats(0.001, 0.2),
    e1=st.floats(0.0, 0.3),
    e2=st.floats(0.0, 0.3),
)
def test_calibration_is_monotone(small, b1, b2, d1, d2, e1, e2):
    s, ok, pr, grid = small
    base = {"scores_cal": s, "thresholds": THR, "costs": COSTS, "grid": grid, "correct": ok, "preds": pr, "seed": 1}
    (b1, b2), (d1, d2), (e1, e2) = sorted((b1, b2)), sorted((d1, d2)), sorted((e1, e2))
    # budget: more budget or a looser delta certifies a dearer (or the same) policy
    assert idx(**base, budget=b1, delta=d1) <= idx(**base, budget=b2, delta=d1)
    assert idx(**base, budget=b1, delta=d1) <= idx(**base, budget=b1, delta=d2)
    # losses: a looser level or delta certifies a cheaper (or the same) policy
    assert idx(**base, max_drop=e1, delta=d1) >= idx(**base, max_drop=e2, delta=d1)
    assert idx(**base, max_drop=e1, delta=d1) >= idx(**base, max_drop=e1, delta=d2)
    assert idx(**base, max_disagreement=e1, delta=d1) >= idx(**base, max_disagreement=e2, delta=d1)


def test_ends_of_the_grid_are_deterministic(small):
    s, ok, pr, grid = small
    first = C.calibrate(s, THR, COSTS, grid, budget=1.0)  # only "everyone at exit 1" fits
    assert first.index == 0 and first.shift == -np.inf and first.cost_bound == 1.0
    assert first.thresholds == [C.ACCEPT_ALL, None, None, None, None]
    last = C.calibrate(s, THR, COSTS, grid, budget=5.0, max_drop=0.0, max_disagreement=0.0, correct=ok, preds=pr)
    assert last.shift == np.inf and last.cost_bound == 5.0 and last.drop_bound == 0.0 and last.disagreement_bound == 0.0
    assert last.tested["drop"] == 2  # +inf certified for sure, the next shift fails at a level of 0


def test_infeasible_combination_reports_the_best_achievable(world):
    s, ok, _ = draw(world, np.random.default_rng(30), 5_000)
    grid = world["grid"]
    with pytest.raises(C.Infeasible) as err:
        C.calibrate(s, THR, COSTS, grid, budget=2.5, max_drop=0.002, correct=ok, delta=0.1)
    e = err.value
    assert isinstance(e, ValueError) and "cannot meet both" in str(e)
    assert e.needed_budget > 2.5 and e.drop_at_budget > 0.002
    assert e.calibration.feasible is False and e.calibration.shift is None
    # the needed budget is the largest cost bound on the budget walk's way to the cheapest
    # drop-certified shift, each bound as certify_policy gives it for that policy alone
    first_ok = e.calibration.certified["drop"][0]
    per_policy = [
        C.certify_policy(s, C.shifted_thresholds(THR, lam), COSTS, delta={"cost": 0.05})["cost_bound"]
        for lam in grid[: first_ok + 1]
    ]
    assert e.needed_budget == max(per_policy)
    # the reported values are exactly what it takes
    at_needed = C.calibrate(s, THR, COSTS, grid, budget=e.needed_budget, max_drop=0.002, correct=ok, delta=0.1)
    assert at_needed.cost_bound <= e.needed_budget
    at_drop = C.calibrate(s, THR, COSTS, grid, budget=2.5, max_drop=e.drop_at_budget, correct=ok, delta=0.1)
    only_budget = C.calibrate(s, THR, COSTS, grid, budget=2.5, delta=0.05)  # the budget's share of delta
    assert at_drop.index == only_budget.index and at_drop.drop_bound <= e.drop_at_budget
    below = np.nextafter(e.needed_budget, 0)
    with pytest.raises(C.Infeasible):
        C.calibrate(s, THR, COSTS, grid, budget=below, max_drop=0.002, correct=ok, delta=0.1)
    # returned instead of raised, on request
    rec = C.calibrate(s, THR, COSTS, grid, budget=2.5, max_drop=0.002, correct=ok, on_infeasible="return")
    assert not rec.feasible and rec.reason == str(e) and rec.needed_budget == e.needed_budget
    # a budget below the first exit's cost
    with pytest.raises(C.Infeasible) as err:
        C.calibrate(s, THR, COSTS, grid, budget=0.9)
    assert err.value.needed_budget == 1.0 and err.value.drop_at_budget is None


def test_certify_policy_reproduces_the_calibration(world):
    rng = np.random.default_rng(31)
    s, ok, pr = draw(world, rng, 3_000)
    configs = [
        {"budget": BUDGET},
        {"max_drop": MAX_DROP, "max_disagreement": MAX_DIS},
        {"budget": 3.5, "max_drop": MAX_DROP, "max_disagreement": MAX_DIS, "deploy_batch": 1_000, "delta": 0.05, "seed": 9},
    ]
    for kw in configs:
        cal = C.calibrate(s, THR, COSTS, world["grid"], correct=ok, preds=pr, **kw)
        rep = C.certify_policy(s, cal.thresholds, COSTS, ok, pr, delta=cal.deltas, seed=cal.seed, deploy_batch=cal.deploy_batch)
        assert rep["cost_bound"] == cal.cost_bound
        assert rep["drop_bound"] == cal.drop_bound
        assert rep["disagreement_bound"] == cal.disagreement_bound
        assert rep["empirical"] == cal.empirical
    plain = C.certify_policy(s, THR, COSTS, ok, pr, delta=0.09)
    assert plain["deltas"] == {"cost": 0.03, "drop": 0.03, "disagreement": 0.03}
    assert plain["empirical"]["cost"] <= plain["cost_bound"] <= COSTS[-1]
    assert plain["empirical"]["harm"] <= plain["drop_bound"]


def test_bad_requests_are_rejected(small):
    s, _, _, grid = small
    with pytest.raises(ValueError, match="nothing to certify"):
        C.calibrate(s, THR, COSTS, grid)
    with pytest.raises(ValueError, match="needs `correct`"):
        C.calibrate(s, THR, COSTS, grid, max_drop=0.01)
    with pytest.raises(ValueError, match="delta"):
        C.calibrate(s, THR, COSTS, grid, budget=3.0, delta=1.5)
    with pytest.raises(ValueError, match="finite"):
        C.calibrate(np.where(s > 0.5, np.nan, s), THR, COSTS, grid, budget=3.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        C.calibrate(s, THR, COSTS, grid[::-1], budget=3.0)


def test_a_focused_grid_is_finer_near_the_budget_and_keeps_its_ends():
    rng = np.random.default_rng(3)
    scores = rng.random((4000, 4))
    thr = [0.5, 0.6, 0.7, None]
    costs = [1.0, 2.0, 3.0, 4.0]
    plain = C.shift_grid(scores, thr, size=160, costs=costs)
    focused = C.shift_grid(scores, thr, size=160, costs=costs, focus=2.5)
    for g in (plain, focused):
        assert g[0] == -np.inf and g[-1] == np.inf and 0.0 in g and np.all(np.diff(g) > 0)

    def fit_costs(grid):
        ex = C.exits_for_shifts(scores, thr, grid)
        return np.asarray(costs)[ex].mean(axis=0)

    near = lambda c: int(np.sum((c > 2.5 - 0.08 * 3) & (c <= 2.5 + 0.02 * 3)))  # noqa: E731
    assert near(fit_costs(focused)) >= 2 * near(fit_costs(plain))
    assert fit_costs(focused)[1:-1].min() < 1.5 and fit_costs(focused)[1:-1].max() > 3.5  # still spans the range
