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
from eenet_cli.errors import InputError


def _vote_with_tiebreak(f: ExitFeatures) -> np.ndarray:
    # The vote measure takes only k+1 distinct values at exit k (and is 1 for everyone at
    # exit 1), so rank ties by max-prob: vote + a_max / (K + 1). The added term is below
    # the smallest gap between vote levels (1/K), so it never reorders different votes.
    return f.vote + f.max_prob / (f.num_exits + 1)


def _patience(f: ExitFeatures) -> np.ndarray:
    return run_length(f.preds).astype(np.float64)


def _eenet(scorer: dict, f: ExitFeatures) -> np.ndarray:
    from eenet_cli.core.eenet import eenet_utilities

    if scorer.get("measure") is not None:  # eenet-search chose a baseline's rule
        return SIMPLE_SCORERS[scorer["measure"]](f)
    return eenet_utilities(scorer, f)


def _lookahead(scorer: dict, f: ExitFeatures) -> np.ndarray:
    from eenet_cli.core.lookahead import lookahead_scores

    return lookahead_scores(scorer, f)


#: Secondary measures that order samples *within* one level of an integer-valued score.
#: Only ``patience`` takes one (``scorer.tie_break``): its score becomes run length +
#: max-prob / 2, which keeps every integer threshold's decisions (a run of r scores in
#: (r, r + 0.5]) but lets a threshold between two run lengths stop the more confident
#: samples of the lower one. Certified patience policies use it, so that their threshold
#: shift moves the cost continuously (docs/certify.md); PABEE's own fit does not.
TIE_BREAKS: dict[str, Callable[[ExitFeatures], np.ndarray]] = {"max_prob": lambda f: f.max_prob}
TIE_BREAK_SCALE = 0.5
TIE_BREAK_SCORERS = ("patience",)
POLICY_TIE_BREAK_VERSION = 2  # policy format version of a file whose scorer has a tie_break (docs/spec.md §2.4)
POLICY_OUTPUTS_VERSION = 3  # policy format version of a file with combined exit outputs (docs/spec.md §2.4)


@dataclass(frozen=True)
class Scorer:
    """How one kind of policy scores each exit, and what the score is called.

    ``measure`` scores from the features alone (the baselines); ``learned`` from the
    features and the weights the policy carries (EENet, lookahead). Exactly one is set.
    """

    name: str
    description: str  # stored in the policy's scorer block
    axis: str  # the score's name on a plot axis
    note: str = ""  # what its values are, on a plot
    measure: Callable[[ExitFeatures], np.ndarray] | None = None
    learned: Callable[[dict, ExitFeatures], np.ndarray] | None = None

    def scores(self, scorer: dict, features: ExitFeatures) -> np.ndarray:
        """``[N, K]`` float64 stopping scores."""
        if self.measure is None:
            return self.learned(scorer, features)
        s = self.measure(features)
        if scorer.get("tie_break") is not None:  # patience: run length + max-prob / 2 (TIE_BREAKS)
            s = s + TIE_BREAK_SCALE * TIE_BREAKS[scorer["tie_break"]](features)
        return s


#: Every scorer a policy may name, the one list that policy validation, ``apply``, the
#: early-exit runtime and the plots read.
SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in (
        Scorer("maxprob", "largest class probability at the exit (eq. 5)", "max-prob", measure=lambda f: f.max_prob),
        Scorer("entropy", "1 + sum p log p / log C at the exit (eq. 6)", "entropy", measure=lambda f: f.entropy),
        Scorer(
            "vote",
            "share of exits so far agreeing with the majority (eq. 7), ties broken by max-prob: vote + a_max/(K+1)",
            "vote",
            measure=_vote_with_tiebreak,
        ),
        Scorer("patience", "number of consecutive exits, ending here, that predict the same class", "patience", "run length", measure=_patience),
        Scorer("eenet", "EENet utility network (eq. 8-10), pre-sigmoid utility", "eenet", "pre-sigmoid utility", learned=_eenet),
        Scorer(
            "lookahead",
            "minus the best net gain of continuing: max_j>k [P(right at j) - P(right at k) - lambda (c_j - c_k)]",
            "lookahead",
            "minus the best gain of going on",
            learned=_lookahead,
        ),
    )
}

#: The scorers computed from the features alone, by name.
SIMPLE_SCORERS: dict[str, Callable[[ExitFeatures], np.ndarray]] = {n: s.measure for n, s in SCORERS.items() if s.measure is not None}
SCORER_DESCRIPTIONS = {n: s.description for n, s in SCORERS.items()}


def check_scorer(kind, *, source: str = "policy", field: str = "scorer.type") -> Scorer:
    """The registered scorer ``kind``, or one line naming the ones there are."""
    if kind not in SCORERS:
        raise InputError(f"unknown scorer type {kind!r}; expected one of {', '.join(SCORERS)}", source=source, field=field)
    return SCORERS[kind]


def compute_scores(scorer: dict, features: ExitFeatures) -> np.ndarray:
    """``[N, K]`` float64 stopping scores for the policy's scorer."""
    return check_scorer(scorer.get("type"), field="scorer").scores(scorer, features)


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


def policy_features(policy: dict, features: ExitFeatures) -> ExitFeatures:
    """The features the policy decides on: the predictions' own, or with the exits its
    ``outputs`` block combines (:mod:`eenet_cli.core.outputs`) rebuilt."""
    if policy.get("outputs") is None:
        return features
    from eenet_cli.core.outputs import combine

    return combine(features, policy["outputs"])


def apply_to_features(policy: dict, features: ExitFeatures) -> Applied:
    """Run a policy over precomputed features (with its combined outputs, if it has any)."""
    features = policy_features(policy, features)
    scores = compute_scores(policy["scorer"], features)
    exits = apply_thresholds(scores, policy["thresholds"])
    rows = np.arange(features.num_samples)
    preds = features.preds[rows, exits]
    correct = None if features.labels is None else preds == features.labels
    return Applied(exits=exits, scores=scores, preds=preds, correct=correct)
