"""Policies as plain data, and applying them with numpy alone.

A policy is the JSON object of docs/spec.md §2.4 (a ``dict``). Its ``scorer`` says how the
per-exit stopping scores are computed from the predictions; its ``thresholds`` say where
each exit stops (see :mod:`eenet_cli.core.thresholds`). No torch, no pickle, no code from
the file: a scorer is one of the names in :data:`SCORERS`, and EENet's is a small network
given by its weights as nested lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eenet_cli.core.measures import ExitFeatures, run_length
from eenet_cli.core.thresholds import apply_thresholds


def _vote_with_tiebreak(f: ExitFeatures) -> np.ndarray:
    # The vote measure takes only k+1 distinct values at exit k (and is 1 for everyone at
    # exit 1), so rank ties by max-prob: vote + a_max / (K + 1). The added term is below
    # the smallest gap between vote levels (1/K), so it never reorders different votes.
    return f.vote + f.max_prob / (f.num_exits + 1)


def _patience(f: ExitFeatures) -> np.ndarray:
    return run_length(f.preds).astype(np.float64)


def _eenet(f: ExitFeatures, scorer: dict) -> np.ndarray:
    from eenet_cli.core.eenet_scorer import eenet_utilities

    return eenet_utilities(scorer, f)


SIMPLE_SCORERS: dict[str, Callable[[ExitFeatures], np.ndarray]] = {
    "maxprob": lambda f: f.max_prob,
    "entropy": lambda f: f.entropy,
    "vote": _vote_with_tiebreak,
    "patience": _patience,
}

SCORER_DESCRIPTIONS = {
    "maxprob": "largest class probability at the exit (eq. 5)",
    "entropy": "1 + sum p log p / log C at the exit (eq. 6)",
    "vote": "share of exits so far agreeing with the majority (eq. 7), ties broken by max-prob: vote + a_max/(K+1)",
    "patience": "number of consecutive exits, ending here, that predict the same class",
    "eenet": "EENet utility network (eq. 8-10), pre-sigmoid utility",
    "lookahead": "minus the best net gain of continuing: max_j>k [P(right at j) - P(right at k) - lambda (c_j - c_k)]",
}


def compute_scores(scorer: dict, features: ExitFeatures) -> np.ndarray:
    """``[N, K]`` float64 stopping scores for the policy's scorer."""
    kind = scorer.get("type")
    if kind in SIMPLE_SCORERS:
        return SIMPLE_SCORERS[kind](features)
    if kind == "eenet":
        return _eenet(features, scorer)
    if kind == "lookahead":
        from eenet_cli.core.lookahead import lookahead_scores

        return lookahead_scores(scorer, features)
    raise ValueError(f"unknown scorer type {kind!r}; expected one of {sorted([*SIMPLE_SCORERS, 'eenet', 'lookahead'])}")


@dataclass
class Applied:
    """What a policy decided for each sample."""

    exits: np.ndarray  # 0-based exit taken
    scores: np.ndarray  # [N, K] scores the decision was made on
    preds: np.ndarray  # prediction at the exit taken
    correct: np.ndarray | None  # bool, when labels are known

    def exit_score(self) -> np.ndarray:
        return self.scores[np.arange(self.exits.size), self.exits]

    def exit_fractions(self, num_exits: int) -> list[float]:
        n = max(self.exits.size, 1)
        return (np.bincount(self.exits, minlength=num_exits) / n).tolist()


def apply_to_features(policy: dict, features: ExitFeatures) -> Applied:
    """Run a policy over precomputed features."""
    scores = compute_scores(policy["scorer"], features)
    exits = apply_thresholds(scores, policy["thresholds"])
    rows = np.arange(features.num_samples)
    preds = features.preds[rows, exits]
    correct = None if features.labels is None else preds == features.labels
    return Applied(exits=exits, scores=scores, preds=preds, correct=correct)
