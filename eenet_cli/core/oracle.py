"""The oracle: the best accuracy any exit policy could reach at a budget, if it knew
which exits are right for each sample.

Every sample costs at least c_1 (it must reach the first exit). A sample is right only if
it stops at an exit whose prediction is right, and the cheapest way to make it right is
its earliest correct exit e_n, which costs ``c[e_n] - c_1`` more than stopping at once.
Samples right at no exit stop at exit 1. Maximising the number of right samples under a
total extra-cost allowance ``N·(B - c_1)`` is then a knapsack in which every item has the
same value (1), so taking the cheapest items first is optimal: any feasible selection of
m items costs at least the sum of the m smallest extras (exchange argument). The answer is
exact, not an approximation.

>>> import numpy as np
>>> correct = np.array([[1, 1], [0, 1], [0, 1], [0, 0]], dtype=bool)
>>> oracle(correct, np.array([1.0, 3.0]), 1.5).accuracy   # one extra sample affordable
0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OracleResult:
    accuracy: float
    avg_cost: float
    exits: np.ndarray
    correct: np.ndarray


def oracle(correct: np.ndarray, costs: np.ndarray, budget: float) -> OracleResult:
    """Exact ceiling; ``correct`` is ``[N, K]`` bool, ``costs`` cumulative ``[K]``."""
    costs = np.asarray(costs, dtype=np.float64)
    n, k = correct.shape
    any_right = correct.any(axis=1)
    first = np.where(any_right, correct.argmax(axis=1), 0)
    extra = np.where(any_right, costs[first] - costs[0], np.inf)
    order = np.argsort(extra, kind="stable")
    spent = np.cumsum(extra[order], dtype=np.float64)
    allowance = n * (float(budget) - costs[0])
    # a tiny relative tolerance so a budget equal to a realisable cost is not missed to rounding
    m = int(np.searchsorted(spent, allowance * (1 + 1e-12) + 1e-12, side="right"))
    chosen = order[:m]
    exits = np.zeros(n, dtype=np.int64)
    exits[chosen] = first[chosen]
    is_right = np.zeros(n, dtype=bool)
    is_right[chosen] = True
    avg = float(costs[exits].mean(dtype=np.float64)) if n else 0.0
    return OracleResult(accuracy=m / n if n else 0.0, avg_cost=avg, exits=exits, correct=is_right)
