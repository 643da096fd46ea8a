import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from eenet_cli.core.oracle import oracle


def brute_force(correct: np.ndarray, costs: np.ndarray, budget: float) -> float:
    n, k = correct.shape
    best = 0.0
    for exits in itertools.product(range(k), repeat=n):
        e = np.array(exits)
        if costs[e].mean() <= budget + 1e-12:
            best = max(best, correct[np.arange(n), e].mean())
    return best


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 5),
    k=st.integers(1, 3),
)
def test_oracle_equals_brute_force(data, n, k):
    correct = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=k, max_size=k), min_size=n, max_size=n)), dtype=bool)
    steps = data.draw(st.lists(st.integers(1, 5), min_size=k, max_size=k))
    costs = np.cumsum(np.array(steps, dtype=float))
    budget = data.draw(st.floats(costs[0], costs[-1] + 1, allow_nan=False))
    r = oracle(correct, costs, budget)
    assert abs(r.accuracy - brute_force(correct, costs, budget)) < 1e-12
    assert r.avg_cost <= budget + 1e-9
    assert r.correct.sum() == round(r.accuracy * n)


def test_oracle_is_monotone_in_budget(rng):
    correct = rng.random((500, 4)) < np.array([0.3, 0.5, 0.7, 0.8])
    costs = np.array([1.0, 2.0, 3.5, 5.0])
    accs = [oracle(correct, costs, b).accuracy for b in np.linspace(1, 5, 30)]
    assert all(a <= b for a, b in zip(accs, accs[1:]))
    assert accs[-1] == correct.any(axis=1).mean()
