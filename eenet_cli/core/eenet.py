"""EENet (paper §3.2) in numpy: the scorer, the training settings, and the policy.

* The scorer (eq. 8-10): :func:`eenet_forward` computes the utilities compared with the
  thresholds and the assignment logits, the single place they are computed, so fitting and
  applying a policy always agree bit for bit. Rows go in memory-bounded blocks.
* :class:`EENetHyper` (training settings, every default measured: docs/eenet.md) and
  :class:`EENetResult` (a trained scorer and its exit distribution), importable without torch.
* :func:`fit_eenet_policy`: thresholds on the learned utilities (Algorithm 1's quotas, the
  geometric distribution, or eenet-search's cross-validated choice) and the policy's pieces.

Training itself is not here: :func:`fit_eenet_policy` takes the trainer as ``learner``
(:func:`eenet_cli.learn.eenet_torch.train_eenet`, torch), so this package stays numpy-only.
The model, its loss and the measurements behind every choice: docs/eenet.md.

Scorer JSON (``policy["scorer"]``)::

    {"type": "eenet",
     "features": [...],            # which inputs: COMPACT_FEATURES (default) or FEATURES
     "negative_slope": 0.01,
     "exits": [{"shared_weight": [[...D_k] x H_k], "shared_bias": [...H_k],
                "utility_weight": [...H_k], "utility_bias": float,
                "assign_weight": [...H_k], "assign_bias": float}, ...K]}

Two input layouts, named by ``features``:

* **compact** (``COMPACT_FEATURES``, the default): exit k (0-based) sees D_k = 4 + 2k
  numbers: its max-prob, entropy and vote (eq. 5-7), its second-largest class
  probability, its probability of each earlier exit's predicted class, and the sigmoid
  utilities q̂ of the k earlier exits. The size does not grow with the number of classes
  C, and every input is exact on compact prediction files (docs/spec.md §2.1.1).
* **full** (``FEATURES``, the paper's scorer, ``EENetHyper(inputs="full")``): exit k sees
  D_k = C + 3 + k inputs: its class probabilities, the three measures, and the earlier
  utilities. Kept as an ablation where C is small; it needs full prediction files.

The score compared with the thresholds is the pre-sigmoid utility.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from eenet_cli.core.figures import validation_figures
from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.thresholds import (
    Ranking,
    fit_distribution,
    fit_geometric,
    search_thresholds,
    within_budget,
)
from eenet_cli.errors import BudgetError, InputError

FEATURES = ["class_probs", "max_prob", "entropy", "vote", "previous_utilities"]  # the paper's (full) inputs
COMPACT_FEATURES = ["max_prob", "entropy", "vote", "second_prob", "earlier_pred_probs", "previous_utilities"]
INPUTS = {"compact": COMPACT_FEATURES, "full": FEATURES}
NEGATIVE_SLOPE = 0.01

Progress = Callable[[int, int, dict], None]


# -- the scorer -------------------------------------------------------------------------

_CHUNK = 8192  # rows per block at most
_BLOCK_BYTES = 64 * 2**20  # working memory of one block's hidden layer and inputs


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def scorer_inputs(scorer: dict) -> str:
    """``"compact"`` or ``"full"``: the input layout named by ``scorer["features"]``
    (a scorer without the key is the paper's full layout, as every version before 0.x wrote)."""
    feats = list(scorer.get("features", FEATURES))
    for name, names in INPUTS.items():
        if feats == names:
            return name
    raise InputError(f"unknown EENet scorer features {feats}; expected {COMPACT_FEATURES} or {FEATURES}", field="scorer.features")


def base_width(inputs: str, j: int, c: int) -> int:
    """Inputs of exit ``j`` (0-based) before the earlier exits' utilities."""
    return c + 3 if inputs == "full" else 4 + j


def input_width(inputs: str, j: int, c: int) -> int:
    """D_j: every input of exit ``j``, the ``j`` earlier utilities included."""
    return base_width(inputs, j, c) + j


def max_prob_column(inputs: str, c: int) -> int:
    """Where exit j's max-prob sits among its inputs."""
    return c if inputs == "full" else 0


def exit_inputs(features: ExitFeatures, j: int, rows, inputs: str, dtype=np.float64) -> np.ndarray:
    """Exit ``j``'s inputs before the earlier utilities, ``[rows, base_width]`` in ``dtype``:
    the one place both layouts are built (numpy scorer and torch trainer alike)."""
    if inputs == "full":
        probs = features.probs[rows, j]
        out = np.empty((probs.shape[0], probs.shape[1] + 3), dtype=dtype)
        out[:, : probs.shape[1]] = probs
        c = probs.shape[1]
    else:
        c = 0
        second = features.top2_probs[rows, j, 0]
        out = np.empty((second.shape[0], 4 + j), dtype=dtype)
        out[:, 3] = second
        if j:
            out[:, 4:] = features.pred_probs[rows, j, :j]
    out[:, c] = features.max_prob[rows, j]
    out[:, c + 1] = features.entropy[rows, j]
    out[:, c + 2] = features.vote[rows, j]
    return out


def compact_exit_forward(x: np.ndarray, prev: list, w: np.ndarray, b: np.ndarray, wu: np.ndarray, bu: float,
                         slope: float, wa: np.ndarray | None = None, ba: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
    """One exit of the compact layout: pre-sigmoid utilities (and assignment logits with
    ``wa``) of rows ``x`` ``[n, 4 + j]`` whose earlier sigmoid utilities are ``prev`` (j
    arrays ``[n]``).

    Every product is accumulated input by input in a fixed order, vectorised over rows
    only, so a row's result does not depend on which other rows (or how many) are computed
    with it: one sample online equals the same row of a batch, bit for bit, with no BLAS
    kernel in between. The offline scorer and the online decisions both call this."""
    n, base = x.shape
    h = np.empty((n, b.shape[0]), dtype=np.float64)
    h[:] = b
    for d in range(base):
        h += x[:, d, None] * w[None, :, d]
    for d, q in enumerate(prev):
        h += q[:, None] * w[None, :, base + d]
    h = np.where(h > 0, h, slope * h)
    u = np.full(n, bu, dtype=np.float64)
    for i in range(h.shape[1]):
        u += h[:, i] * wu[i]
    if wa is None:
        return u, None
    a = np.full(n, ba, dtype=np.float64)
    for i in range(h.shape[1]):
        a += h[:, i] * wa[i]
    return u, a


def _row_exact_forward(params, features: ExitFeatures, slope: float, upto: int, util, assign) -> None:
    """The compact layout over every row, in blocks (:func:`compact_exit_forward` per exit)."""
    n = util.shape[0]
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        prev: list[np.ndarray] = []
        for j in range(upto):
            w, b, wu, bu, wa, ba = params[j]
            u, a = compact_exit_forward(exit_inputs(features, j, sl, "compact"), prev, w, b, wu, bu, slope, wa, ba)
            util[sl, j] = u
            assign[sl, j] = a
            prev.append(_sigmoid(u))


def eenet_forward(scorer: dict, features: ExitFeatures, *, upto: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-sigmoid utilities and assignment logits, both ``[N, K]`` float64.

    ``upto``: compute only the first ``upto`` exits (a prefix, e.g. the exits a sample has run), from features of those
    exits alone (every input of exit j comes from exits 0..j); the other columns are NaN.
    """
    n, k = features.preds.shape
    exits = scorer["exits"]
    inputs = scorer_inputs(scorer)
    if upto is None:
        if len(exits) != k:
            raise InputError(f"scorer has {len(exits)} exits, predictions have {k}")
        upto = k
    elif not 0 < upto <= min(k, len(exits)):
        raise InputError(f"cannot score {upto} exits from {k} seen of {len(exits)}")
    c = features.num_classes if inputs == "full" else 0
    slope = float(scorer.get("negative_slope", 0.01))
    params = []
    for j, e in enumerate(exits[:upto]):
        w = np.asarray(e["shared_weight"], dtype=np.float64)
        want = input_width(inputs, j, c)
        if w.ndim != 2 or w.shape[1] != want:
            raise InputError(f"scorer exit {j}: shared_weight must be [H, {want}], got {list(w.shape)}")
        params.append(
            (
                w,
                np.asarray(e["shared_bias"], dtype=np.float64),
                np.asarray(e["utility_weight"], dtype=np.float64),
                float(e["utility_bias"]),
                np.asarray(e["assign_weight"], dtype=np.float64),
                float(e["assign_bias"]),
            )
        )
    util = np.full((n, k), np.nan, dtype=np.float64)
    assign = np.full((n, k), np.nan, dtype=np.float64)
    if inputs == "compact":
        _row_exact_forward(params, features, slope, upto, util, assign)
        return util, assign
    conf = np.stack([features.max_prob, features.entropy, features.vote], axis=2)  # [N, K, 3]
    # rows per block: bounded so that a policy with a wide hidden layer or many classes
    # works in bounded memory instead of allocating [rows, H] for 8192 rows at once
    width = max(max(p[0].shape[0] for p in params), c + 3 + k)
    chunk = int(max(1, min(_CHUNK, _BLOCK_BYTES // (8 * width))))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        prev: list[np.ndarray] = []
        for j, (w, b, wu, bu, wa, ba) in enumerate(params):
            x = np.concatenate([features.probs[sl, j].astype(np.float64), conf[sl, j], *(p[:, None] for p in prev)], axis=1)
            h = x @ w.T + b
            h = np.where(h > 0, h, slope * h)
            u = h @ wu + bu
            util[sl, j] = u
            assign[sl, j] = h @ wa + ba
            prev.append(_sigmoid(u))
    return util, assign


def eenet_utilities(scorer: dict, features: ExitFeatures) -> np.ndarray:
    return eenet_forward(scorer, features)[0]


def assignment_distribution(scorer: dict, features: ExitFeatures) -> np.ndarray:
    """p_k = mean over samples of softmax_k(assignment logits) (Algorithm 1, line 7)."""
    _, a = eenet_forward(scorer, features)
    a = a - a.max(axis=1, keepdims=True)
    r = np.exp(a)
    r /= r.sum(axis=1, keepdims=True)
    return r.mean(axis=0)


# -- training settings and results ------------------------------------------------------


@dataclass
class EENetHyper:
    """Training settings; every default is a measured choice (docs/eenet.md)."""

    hidden_ratio: float = 0.5  # D_h = max(min_hidden, ceil(hidden_ratio * D_k))
    min_hidden: int = 8
    alpha: float = 1.0  # weight of L_budget
    beta: float = 0.01  # weight of L_CE
    lr: float = 1e-2
    weight_decay: float = 0.01
    decoupled_weight_decay: bool = True  # AdamW; False = L2 added to the gradient (torch Adam)
    max_steps: int = 500
    min_steps: int = 50
    patience: int = 50  # steps without improvement of the held-out utility loss
    eval_every: int = 5
    min_delta: float = 1e-5
    holdout: float = 0.2  # share of the validation rows held out for early stopping
    batch_size: int | None = None  # None: full batch unless a step would exceed max_batch_work
    max_batch_work: float = 1.5e9  # multiply-adds of the first layers per step (auto mini-batch)
    min_batch: int = 256
    init: str = "spline"  # "spline" | "prior" | "torch"
    inputs: str = "compact"  # "compact" (size independent of C) | "full" (the paper's class-probability inputs)
    max_train_rows: int | None = 50_000  # train on a seeded sample of this many rows at most (thresholds use every row)
    spline_units: int = 4
    detach_previous: bool = True
    num_threads: int | None = 1
    progress_every: int = 10

    def hidden_sizes(self, num_classes: int, num_exits: int) -> list[int]:
        return [max(self.min_hidden, math.ceil(self.hidden_ratio * input_width(self.inputs, k, num_classes))) for k in range(num_exits)]


@dataclass
class EENetResult:
    """A trained scorer (numpy JSON format), its exit distribution and how training went."""

    scorer: dict
    distribution: np.ndarray
    history: dict
    hyperparameters: dict
    seed: int = 0
    budget: float = 0.0
    seconds: float = 0.0
    extras: dict = field(default_factory=dict, repr=False)


Learner = Callable[..., EENetResult]
"""Trains EENet: ``learner(features, costs, budget, *, seed, hyper, progress) -> EENetResult``
(:func:`eenet_cli.learn.eenet_torch.train_eenet`)."""


def require_learner(learner: Learner | None) -> Learner:
    """``learner``, or a clear error when the caller did not wire one in."""
    if learner is None:
        raise InputError(
            "training EENet needs a learner: pass learner=eenet_cli.learn.eenet_torch.train_eenet "
            "(eenet_cli.core does not import torch)",
            field="learner",
        )
    return learner


# -- checks, targets and initial values (numpy; the trainer uses them) ------------------


def _check_inputs(features: ExitFeatures, costs, budget: float) -> np.ndarray:
    if features.labels is None:
        raise InputError("EENet needs labels to learn a policy", field="label")
    n, k = features.num_samples, features.num_exits
    if n < 2:
        raise InputError(f"EENet needs at least 2 validation samples, got {n}")
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != (k,):
        raise InputError(f"expected {k} costs (one per exit), got {costs.size}", field="costs")
    if not np.all(np.isfinite(costs)) or np.any(costs <= 0) or np.any(np.diff(costs) <= 0):
        raise InputError("costs must be positive and strictly increasing", field="costs")
    budget = float(budget)
    if not math.isfinite(budget) or not within_budget(costs[0], budget):
        raise BudgetError(f"budget {budget:g} is below the cost of the first exit ({costs[0]:g})")
    return costs


INITS = ("spline", "prior", "torch")


def _check_hyper(hyper: EENetHyper) -> None:
    if hyper.init not in INITS:
        raise InputError(f"unknown initialisation {hyper.init!r}; expected one of {', '.join(INITS)}", field="init")
    if hyper.inputs not in INPUTS:
        raise InputError(f"unknown EENet inputs {hyper.inputs!r}; expected one of {', '.join(INPUTS)}", field="inputs")
    if not 0.0 <= hyper.holdout < 1.0:
        raise InputError(f"holdout must be in [0, 1), got {hyper.holdout}", field="holdout")
    for name in ("lr", "hidden_ratio", "max_batch_work"):
        if not getattr(hyper, name) > 0:
            raise InputError(f"{name} must be positive, got {getattr(hyper, name)}", field=name)
    for name in ("alpha", "beta", "weight_decay"):
        if not getattr(hyper, name) >= 0:
            raise InputError(f"{name} must be >= 0, got {getattr(hyper, name)}", field=name)
    if hyper.max_train_rows is not None and hyper.max_train_rows < 2:
        raise InputError(f"max_train_rows must be at least 2 (or None), got {hyper.max_train_rows}", field="max_train_rows")
    if hyper.max_steps < 0 or hyper.min_steps < 0 or hyper.patience < 1 or hyper.eval_every < 1:
        raise InputError("max_steps and min_steps must be >= 0, patience and eval_every >= 1", field="steps")


def targets(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3 and eq. 4: q = correctness per exit; r = uniform over the correct exits, or
    uniform over all exits when none is correct.

    >>> q, r = targets(np.array([[False, True, True], [False, False, False]]))
    >>> r.tolist()
    [[0.0, 0.5, 0.5], [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]]
    """
    correct = np.asarray(correct, dtype=bool)
    k = correct.shape[1]
    n_ok = correct.sum(axis=1, keepdims=True)
    r = np.where(n_ok > 0, correct / np.maximum(n_ok, 1), 1.0 / k)
    return correct.astype(np.float64), r


def tilted_distribution(base: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """``p ∝ base · exp(-λ c̃)`` (c̃ = costs scaled to [0, 1]) with ``Σ p c = budget``.

    The distribution closest to ``base`` (in KL) whose expected cost is the budget; used to
    initialise the assignment heads. Budgets outside ``[c_1, c_K]`` give the end points.
    """
    costs = np.asarray(costs, dtype=np.float64)
    logb = np.log(np.clip(np.asarray(base, dtype=np.float64), 1e-12, None))
    span = costs[-1] - costs[0]
    scaled = (costs - costs[0]) / span if span > 0 else np.zeros_like(costs)

    def dist(lam: float) -> np.ndarray:
        z = logb - lam * scaled
        z = np.exp(z - z.max())
        return z / z.sum()

    lo, hi = -500.0, 500.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if dist(mid) @ costs > budget:
            lo = mid
        else:
            hi = mid
    return dist(hi)


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, iters: int = 50) -> tuple[np.ndarray, float]:
    """Damped Newton for a small ridge-penalised logistic regression, in float64.

    The coefficients are pulled towards 0 and the intercept towards the smoothed base rate,
    so an exit that is always (or never) right gets a large but finite utility.
    """
    n, d = x.shape
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)
    rate = (float(y.sum()) + 0.5) / (n + 1.0)
    centre = np.zeros(d + 1)
    centre[-1] = math.log(rate / (1 - rate))
    beta = centre.copy()
    reg = np.full(d + 1, l2 * n)
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (xa @ beta)))
        grad = xa.T @ (p - y) + reg * (beta - centre)
        hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        big = np.abs(step).max()
        if big > 5.0:
            step *= 5.0 / big
        beta -= step
        if big < 1e-9:
            break
    beta = np.clip(beta, -50.0, 50.0)
    return beta[:-1], float(beta[-1])


# -- policies ---------------------------------------------------------------------------

THRESHOLD_METHODS = ("quota", "search", "geometric")


def _training_info(trained: EENetResult) -> dict:
    h = trained.history
    epochs = h["steps"] * h["batch_size"] / max(h["train_rows"], 1)
    return {
        "seed": trained.seed,
        "hyperparameters": trained.hyperparameters,
        "steps": int(h["steps"]),
        "best_step": int(h["best_step"]),
        "epochs": float(epochs),
        "final_loss": float(h["final_loss"]),
        "final_loss_terms": {key: float(v) for key, v in h["final"].items()},
        "holdout_loss_g": h["holdout_loss_g"],
        "budget": trained.budget,
        "learned_distribution": [float(x) for x in trained.distribution],
        "expected_cost": float(h["expected_cost"]),
    }


def _utilities(trained: EENetResult, features: ExitFeatures) -> np.ndarray:
    """The numpy utilities of ``features``; reused from training when it saw this very object."""
    ref = trained.extras.get("features_ref")
    if ref is not None and ref() is features and trained.extras.get("numpy_utilities") is not None:
        return trained.extras["numpy_utilities"]
    return eenet_utilities(trained.scorer, features)


def _resolve_scores(scores_override, features: ExitFeatures, trained: EENetResult):
    scorer = trained.scorer
    if scores_override is None:
        return scorer, _utilities(trained, features)
    if isinstance(scores_override, dict):
        from eenet_cli.core.policy import compute_scores

        return scores_override, compute_scores(scores_override, features)
    override_scorer, scores = scores_override
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (features.num_samples, features.num_exits):
        raise InputError(
            f"scores_override must be [{features.num_samples}, {features.num_exits}], got {list(scores.shape)}"
        )
    return override_scorer, scores


def _search_rules(p: np.ndarray) -> dict:
    """eenet-search's candidate threshold rules on the learned utilities, simplest first:
    Algorithm 1's quotas, the geometric distribution, and coordinate ascent on accuracy
    started from each (on a 64-quantile grid, and on a coarser 16-quantile grid that has
    less room to fit noise)."""

    def quota(ranking, costs, budget, correct):
        return fit_distribution(ranking, costs, budget, p, rounding="round").thresholds

    def geometric(ranking, costs, budget, correct):
        return fit_geometric(ranking, costs, budget).thresholds

    def searched(start, grid, rounds):
        def rule(ranking, costs, budget, correct):
            return search_thresholds(ranking, costs, budget, correct, start(ranking, costs, budget, correct),
                                     grid=grid, rounds=rounds)
        return rule

    rules = {
        "quota": quota,
        "geometric": geometric,
        "search-from-quota": searched(quota, 64, 4),
        "search-from-geometric": searched(geometric, 64, 4),
        "coarse-search-from-quota": searched(quota, 16, 2),
        "coarse-search-from-geometric": searched(geometric, 16, 2),
    }
    rules.update(_skip_rules(p))
    return rules


def _skip_rules(p: np.ndarray) -> dict:
    """Algorithm 1's quotas with one middle exit switched off (its share moved to the exit
    after it, its threshold null): where a middle exit is weaker than the one before it,
    stopping nobody there can be worth more than its quota. Chosen only when held-out
    folds favour it by more than the noise (``guarded`` in
    :func:`eenet_cli.core.thresholds.cross_validated_choice`)."""
    out = {}
    k = p.size
    for e in range(1, k - 1):
        q = np.array(p, dtype=np.float64)
        q[e + 1] += q[e]
        q[e] = 0.0

        def rule(ranking, costs, budget, correct, q=q, e=e):
            thr = list(fit_distribution(ranking, costs, budget, q, rounding="round").thresholds)
            thr[e] = None  # never stops here (the budget fallback may shift mass to exit 1 only)
            return thr

        out[f"quota-skip-exit-{e + 1}"] = rule
    return out


SEARCH_FOLDS = 5


def _patience_rule(ranking, costs, budget, correct):
    """PABEE's rule on run lengths: the most accurate patience t whose cost fits."""
    from eenet_cli.core.thresholds import apply_thresholds, first_exit_thresholds, realised_cost

    k = ranking.shape[1]
    rows = np.arange(ranking.shape[0])
    best = None
    for t in range(1, k + 1):
        thr = first_exit_thresholds(k) if t == 1 else [float(t)] * (k - 1) + [None]
        ex = apply_thresholds(ranking.scores, thr)
        acc = float(correct[rows, ex].mean()) if rows.size else 0.0
        if within_budget(realised_cost(ex, costs), budget) and (best is None or acc > best[0]):
            best = (acc, thr)
    return best[1]


def _baseline_rules(features: ExitFeatures) -> tuple[dict, dict]:
    """The baselines' own rules as eenet-search candidates: geometric quotas on max-prob,
    entropy and vote, and PABEE's patience, each on its own measure."""
    from eenet_cli.core.policy import SIMPLE_SCORERS

    def geometric(ranking, costs, budget, correct):
        return fit_geometric(ranking, costs, budget).thresholds

    rules, scores = {}, {}
    for name in SIMPLE_SCORERS:
        rules[f"baseline-{name}"] = _patience_rule if name == "patience" else geometric
        scores[f"baseline-{name}"] = np.asarray(SIMPLE_SCORERS[name](features), dtype=np.float64)
    return rules, scores


def _search_policy(ranking: Ranking, scores, correct, costs, budget: float, p, seed: int, features: ExitFeatures | None = None):
    """eenet-search: the candidate rule with the best 5-fold cross-validated accuracy on the
    validation rows, refitted on all of them (so the realised validation cost <= budget).

    The candidates include the baselines' own rules on their own measures (with
    ``features``), so the choice never trails the best baseline by more than the noise of
    the cross-validation. Returns the thresholds, the fit info and the measure chosen (None
    for EENet's own utilities)."""
    from eenet_cli.core.thresholds import cross_validated_choice

    rules = _search_rules(np.asarray(p, dtype=np.float64))
    scores_for: dict = {}
    if features is not None:
        extra, scores_for = _baseline_rules(features)
        rules.update(extra)
    chosen, figures = cross_validated_choice(rules, scores, correct, costs, budget, folds=SEARCH_FOLDS, seed=seed,
                                             scores_for=scores_for, guarded=[r for r in rules if r.startswith("quota-skip-")])
    measure = None
    if chosen in scores_for:
        measure = chosen.split("-", 1)[1]
        ranking = Ranking(scores_for[chosen])
    thr = rules[chosen](ranking, costs, budget, correct)
    info = {
        "selection": f"{SEARCH_FOLDS}-fold cross-validated accuracy" if figures else "too few rows to cross-validate",
        "chosen_rule": chosen,
        "cross_validated_accuracy": {key: float(v) for key, v in figures.items()},
    }
    return thr, info, measure


def fit_eenet_policy(
    features: ExitFeatures,
    costs,
    budget: float,
    *,
    learner: Learner | None = None,
    seed: int = 0,
    hyper: EENetHyper | None = None,
    progress: Progress | None = None,
    thresholds: str = "quota",
    scores_override=None,
    trained: EENetResult | None = None,
    ranking: Ranking | None = None,
) -> dict:
    """Train EENet with ``learner`` (or reuse ``trained``) and fit thresholds on the same
    validation rows.

    ``thresholds``: ``"quota"`` (Algorithm 1: the learned distribution's quotas filled by
    utility, with the realised-cost guarantee of :func:`fit_distribution`), ``"geometric"``
    (learned utilities, MSDNet's geometric distribution: the eenet-geometric ablation) or
    ``"search"`` (eenet-search: among the quota and geometric thresholds and coordinate
    ascent on validation accuracy started from each, the rule with the best
    cross-validated accuracy, see :func:`_search_policy`). ``scores_override`` replaces the utilities used for the
    thresholds: a scorer dict (e.g. ``{"type": "maxprob"}``) or a ``(scorer, scores)``
    pair; the returned policy then carries that scorer. ``ranking`` is an optional
    precomputed :class:`Ranking` of the override's scores. ``trained`` reuses a training
    result made at the same budget (``learner``, ``seed``, ``hyper`` and ``progress`` are
    then unused), so several variants cost one training. ``learner`` is the trainer
    (:data:`Learner`, e.g. :func:`eenet_cli.learn.eenet_torch.train_eenet`), needed only
    when ``trained`` is not given.

    Returns the policy's pieces: ``scorer``, ``thresholds``, ``exit_distribution``
    (planned share per exit), ``validation``, ``training`` and ``threshold_fit``.
    """
    if thresholds not in THRESHOLD_METHODS:
        raise InputError(f"unknown threshold method {thresholds!r}; expected one of {', '.join(THRESHOLD_METHODS)}")
    costs = _check_inputs(features, costs, budget)
    budget = float(budget)
    if trained is None:
        trained = require_learner(learner)(features, costs, budget, seed=seed, hyper=hyper, progress=progress)
    elif thresholds != "geometric" and not math.isclose(trained.budget, budget, rel_tol=1e-12, abs_tol=0.0):
        raise InputError(
            f"the training result was made for budget {trained.budget:g}, not {budget:g}; "
            "its exit distribution only applies to its own budget"
        )
    if ranking is not None and scores_override is None:
        raise InputError("a precomputed ranking needs scores_override naming the scorer it ranks")
    scorer, scores = _resolve_scores(scores_override, features, trained)
    if ranking is None:
        ranking = Ranking(scores)
    elif ranking.shape != scores.shape:
        raise InputError(f"the ranking is {list(ranking.shape)}, the features are {list(scores.shape)}")
    p = np.asarray(trained.distribution, dtype=np.float64)
    info: dict = {"method": thresholds}
    if thresholds == "geometric":
        fit = fit_geometric(ranking, costs, budget)
        info.update(fit.info)
        thr, planned = fit.thresholds, fit.distribution
    else:
        fit = fit_distribution(ranking, costs, budget, p, rounding="round")
        info.update(fit.info)
        info["rounding"] = "round"
        thr, planned = fit.thresholds, fit.distribution
        if thresholds == "search":
            thr, choice, measure = _search_policy(ranking, scores, features.correct, costs, budget, p, seed,
                                                  features if scores_override is None else None)
            info.update(choice)
            planned = None
            if measure is not None:
                # a baseline's rule won: the scorer keeps EENet's weights and stops on the measure
                from eenet_cli.core.policy import compute_scores

                scorer = {**scorer, "measure": measure}
                scores = compute_scores(scorer, features)
    validation = validation_figures(features, scores, thr, costs)
    if planned is None:
        planned = validation["exit_fractions"]
    if not within_budget(validation["avg_cost"], budget):  # the fitters above guarantee it; guard the contract
        raise AssertionError("fitted thresholds overrun the budget on validation")
    return {
        "scorer": scorer,
        "thresholds": [None if t is None else float(t) for t in thr],
        "exit_distribution": [float(x) for x in planned],
        "validation": validation,
        "training": _training_info(trained),
        "threshold_fit": info,
    }


def fit_eenet_maxprob(
    features: ExitFeatures,
    costs,
    budget: float,
    *,
    learner: Learner | None = None,
    seed: int = 0,
    hyper: EENetHyper | None = None,
    progress: Progress | None = None,
    trained: EENetResult | None = None,
    ranking: Ranking | None = None,
) -> dict:
    """The eenet-maxprob ablation: EENet's learned exit distribution, max-prob scores.

    ``ranking`` may be a precomputed ``Ranking(features.max_prob)``.
    """
    scores = features.max_prob if ranking is None else ranking.scores
    return fit_eenet_policy(
        features,
        costs,
        budget,
        learner=learner,
        seed=seed,
        hyper=hyper,
        progress=progress,
        thresholds="quota",
        scores_override=({"type": "maxprob"}, scores),
        trained=trained,
        ranking=ranking,
    )
