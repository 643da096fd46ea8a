"""A fitted policy's figures on the rows it was fitted on: accuracy, cost, exit shares.

The one place the ``validation`` block of a policy (docs/spec.md §2.4) is computed, so every
method reports it the same way.
"""

from __future__ import annotations

import numpy as np

from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.thresholds import apply_thresholds, realised_cost


def exit_figures(exits: np.ndarray, correct: np.ndarray, costs: np.ndarray, num_exits: int) -> dict:
    """Figures of the 0-based exits taken, ``exits`` ``[N]``, given ``correct`` ``[N, K]``."""
    n = int(exits.size)
    return {
        "accuracy": float(correct[np.arange(n), exits].mean()),
        "avg_cost": realised_cost(exits, costs),
        "n": n,
        "exit_fractions": (np.bincount(exits, minlength=num_exits) / max(n, 1)).tolist(),
    }


def validation_figures(features: ExitFeatures, scores: np.ndarray, thresholds: list, costs: np.ndarray) -> dict:
    """Figures of the thresholds applied to ``scores`` (``[N, K]``) of labelled ``features``."""
    return exit_figures(apply_thresholds(scores, thresholds), features.correct, costs, features.num_exits)
