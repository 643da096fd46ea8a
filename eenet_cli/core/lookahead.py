"""Lookahead: a cost-aware stopping policy that estimates what later exits would bring.

The method, the choices behind it and its measurements: docs/lookahead.md. In short:

**Estimators.** For each exit k and each later-or-equal exit j, an L2 logistic regression
on summaries of exits 0..k only (margins, max-prob, entropy, a label-free relative margin,
agreement with earlier exits, the vote measure, and a per-class intercept and slope)
estimates ``P̂[k, j] = P(exit j's prediction is right | exits 0..k)``. They are fitted with
seeded k-fold cross-fitting, so λ and the rule are chosen on honest estimates, then refitted
on all validation rows. They do not depend on the budget (``fit_lookahead(cache=...)``).

**Rule.** With a price λ ≥ 0 per unit of cost, a sample at exit k < K-1 stops iff

    gain_k = max_{j>k} [P̂[k, j] - λ c_j] - (P̂[k, k] - λ c_k) <= 0.

The score is ``-gain_k`` with thresholds 0 (the last exit always stops), so the generic rule
"stop at the first k with score >= t_k" applies. λ is the smallest price (bisection) whose
realised validation cost fits the budget, raised again if the refitted estimators overspend,
so the policy's own validation figures always meet the budget. Quota thresholds on P̂[k, k]
(and, at λ = 0, a "fill" variant with λ < 0) are tried too and the most accurate on the
cross-fitted scores is kept (``rule = "quota"`` in the scorer). When the budget leaves no
room past the first exit, the thresholds are the shared first-exit ones
(:func:`eenet_cli.core.thresholds.first_exit_thresholds`), ``threshold_fit.rule`` is
"first-exit-only".

**Trees.** With at least :data:`MIN_TREE_ROWS` validation rows, each estimator is also
fitted as gradient-boosted trees (scikit-learn, imported only when fitting; the predicted
class is a categorical input) and kept where its cross-fitted log loss is lower by
:data:`TREE_MARGIN`; a tree estimator is stored as node arrays and evaluated with numpy
(:mod:`eenet_cli.core.trees`).

**Switching exits off, and the baselines' rules.** Candidates also include the rule with
exits switched off (``"skip"``: null thresholds, left out of the rule's max) and the
baselines' own rules (``"measure"``); the candidate with the most held-out hits over 5
folds of the validation rows wins.

Scorer JSON (``policy["scorer"]``), version 2 (version 1 files, logistic only, still load)::

    {"type": "lookahead", "version": 2,
     "skip": [K booleans],                 # optional: exits switched off
     "measure": "maxprob" | ...,           # optional: stop on this baseline measure instead
     "rule": "lookahead" | "quota",
     "lambda": float,                      # price per cost unit (rule "lookahead")
     "costs": [c_1, ..., c_K],             # cumulative costs the price applies to
     "num_classes": C, "margin_clip": 30.0, "log_floor": -30.0,
     "class_scale": [[C] x K],             # per exit, mean margin of rows predicted as each class
     "exits": [                            # exit k = 0..K-1
        {"inputs": [D_k feature names],
         "targets": [                      # j = k..K-1
            {"exit": j, "bias": float, "weight": [D_k],
             "class_bias": [C], "class_slope": [C]}          # or
            {"exit": j, "model": "trees", "trees": forest}, ...]}, ...]}

logit P̂[k, j] = bias + x_k · weight + class_bias[y_k] + class_slope[y_k] · margin_k, where
x_k are the named inputs and y_k exit k's predicted class. Applying it needs numpy only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from eenet_cli.core.measures import ExitFeatures
from eenet_cli.core.trees import Forest, validate_forest
from eenet_cli.core.thresholds import (
    Ranking,
    apply_thresholds,
    first_exit_only,
    first_exit_thresholds,
    fit_distribution,
    fit_geometric,
    realised_cost,
    within_budget,
    wins_beyond_noise,
)

SCORER_TYPE = "lookahead"
SCORER_VERSION = 2
SCORER_VERSIONS = (1, 2)  # version 1: logistic estimators only, no skipped exits, no measure
TREE_CLASS_LIMIT = 255  # the predicted class is a tree input (categorical) up to this many classes


def _measure_names() -> tuple[str, ...]:
    """The baselines' measures a fit may fall back on (the registry's simple scorers)."""
    from eenet_cli.core.policy import SIMPLE_SCORERS

    return tuple(SIMPLE_SCORERS)
MARGIN_CLIP = 30.0
LOG_FLOOR = -30.0
RULES = ("lookahead", "quota")

DEFAULT_FOLDS = 5
TREE_STAGES = (20, 50, 100)  # numbers of boosted trees tried per estimator (cross-fitted log loss)
TREE_MAX_ROWS = 8000  # rows one tree fit uses at most (a seeded sample beyond)
MIN_TREE_ROWS = 2000  # fewer validation rows: logistic estimators only (and no scikit-learn fit time)
TREE_MARGIN = 0.005  # trees must lower the cross-fitted log loss by this share to be chosen
SKIP_MARGIN = 0.002  # switching an exit off must raise the cross-fitted accuracy by this much
DEFAULT_ALPHAS = (1.0, 10.0, 100.0)  # L2 strengths tried per estimator, chosen by cross-fitted log loss
BIAS_PENALTY = 1e-4

DESCRIPTION = (
    "lookahead: logistic estimates P[k,j] of exit j being right from exits <= k; "
    "rule 'lookahead' scores -(max_{j>k}[P[k,j] - lambda c_j] - (P[k,k] - lambda c_k)) with thresholds 0, "
    "rule 'quota' scores P[k,k]"
)


# --------------------------------------------------------------------------- inputs


def input_names(k: int) -> list[str]:
    """Names of the dense inputs at exit ``k`` (0-based), in weight order."""
    names = []
    for i in range(k + 1):
        names += [f"margin_{i}", f"log_max_prob_{i}", f"entropy_{i}", f"relative_margin_{i}"]
    for i in range(k):
        names += [f"agree_{i}", f"support_{i}"]
    if k > 0:
        names.append("vote")
    return names


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(p.astype(np.float64)), LOG_FLOOR)


SCALE_PRIOR = 10.0  # pseudo-rows of the overall mean margin added to each class's mean


def class_scales(margin: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, C]``: per exit, the mean margin of rows predicted as each class, shrunk towards
    the exit's overall mean by :data:`SCALE_PRIOR` pseudo-rows. Label-free: dividing a margin
    by its class's scale undoes a per-class temperature."""
    k = margin.shape[1]
    out = np.empty((k, num_classes))
    for i in range(k):
        overall = float(margin[:, i].mean()) if margin.shape[0] else 1.0
        overall = max(overall, 1e-6)
        total = np.bincount(preds[:, i], margin[:, i], num_classes)
        count = np.bincount(preds[:, i], minlength=num_classes)
        out[i] = np.maximum((total + SCALE_PRIOR * overall) / (count + SCALE_PRIOR), 1e-6)
    return out


class _Inputs:
    """Per-exit summaries of a set of predictions, computed once (exits 0..K'-1)."""

    def __init__(self, features: ExitFeatures, num_exits: int | None = None, class_scale=None):
        k = features.num_exits if num_exits is None else min(num_exits, features.num_exits)
        # per-exit summaries only (never the full probability vectors), so compact
        # predictions (docs/spec.md §2.1.1) give the same inputs as full ones
        c = features.num_classes
        self.num_exits = k
        self.num_classes = c
        self.n = features.num_samples
        self.preds = features.preds[:, :k]
        if c >= 2:
            top2 = features.top2_probs[:, :k]
            self.margin = np.clip(_log(top2[..., 1]) - _log(top2[..., 0]), 0.0, MARGIN_CLIP)
        else:
            self.margin = np.zeros(self.preds.shape)
        self.log_max = _log(features.max_prob[:, :k])
        self.entropy = np.asarray(features.entropy[:, :k], dtype=np.float64)
        self.vote = np.asarray(features.vote[:, :k], dtype=np.float64)
        self._pred_probs = features.pred_probs[:, :k, :k]
        if class_scale is None:
            class_scale = class_scales(self.margin, self.preds, c)
        self.class_scale = np.asarray(class_scale, dtype=np.float64)
        rel = [self.margin[:, i] / self.class_scale[i, self.preds[:, i]] for i in range(k)]
        self.rel_margin = np.stack(rel, axis=1) if k else self.margin

    def design(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense inputs ``[N, D_k]``, predicted class and margin at exit ``k``."""
        cols = []
        for i in range(k + 1):
            cols += [self.margin[:, i], self.log_max[:, i], self.entropy[:, i], self.rel_margin[:, i]]
        pk = self.preds[:, k]
        for i in range(k):
            cols.append((self.preds[:, i] == pk).astype(np.float64))
            cols.append(_log(self._pred_probs[:, i, k]))
        if k > 0:
            cols.append(self.vote[:, k])
        x = np.stack(cols, axis=1) if cols else np.zeros((self.n, 0))
        return np.ascontiguousarray(x, dtype=np.float64), pk, self.margin[:, k]


# --------------------------------------------------------------------------- logistic regression


def _expit(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


_SMALL_WORK = 200_000  # m·n·k of one matrix product: below it OpenBLAS stays single-threaded


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.T @ b`` summed over fixed blocks of rows.

    Each block's product is small enough for OpenBLAS to run it on one thread: its threaded
    path is many times slower when the machine's cores are busy with other work (measured:
    ~500 ms instead of ~2 ms for 8,000 x 23). The block order is fixed, so the sum is too.
    """
    rows = max(16, _SMALL_WORK // max(1, a.shape[1] * b.shape[1]))
    out = np.zeros((a.shape[1], b.shape[1]))
    for start in range(0, a.shape[0], rows):
        out += a[start : start + rows].T @ b[start : start + rows]
    return out


def _fit_logistic(x: np.ndarray, cls: np.ndarray, m: np.ndarray, num_classes: int, y: np.ndarray,
                  alpha: float | tuple[float, float], max_iter: int = 50, tol: float = 1e-9,
                  init: tuple | None = None) -> dict:
    """L2 logistic regression with a dense part and a per-class (intercept, slope on m) part.

    Minimises ``sum logloss + alpha_d/2 |w|^2 + alpha_c/2 (|a|^2 + |s|^2) + BIAS_PENALTY/2 b^2``
    (``alpha`` is one strength for both or a pair ``(alpha_d, alpha_c)``) on
    standardised inputs by damped Newton steps; the per-class block is block-diagonal (2x2
    per class) and is eliminated by a Schur complement. ``init`` (the ``"state"`` of an
    earlier fit on similar data) warm-starts it. Returns weights on the raw scale.
    """
    n, d = x.shape
    c = num_classes
    alpha_d, alpha_c = (float(alpha), float(alpha)) if np.isscalar(alpha) else (float(alpha[0]), float(alpha[1]))
    mu = x.mean(axis=0) if n else np.zeros(d)
    sd = x.std(axis=0) if n else np.ones(d)
    sd = np.where(sd > 1e-12, sd, 1.0)
    xs = (x - mu) / sd
    m_mu = float(m.mean()) if n else 0.0
    m_sd = float(m.std()) if n else 1.0
    m_sd = m_sd if m_sd > 1e-12 else 1.0
    ms = (m - m_mu) / m_sd
    y = y.astype(np.float64)
    ybar = float(np.clip(y.mean() if n else 0.5, 1e-3, 1 - 1e-3))
    if init is None:
        b = math.log(ybar / (1 - ybar))
        w = np.zeros(d)
        a = np.zeros(c)
        s = np.zeros(c)
    else:
        b, w, a, s = float(init[0]), init[1].copy(), init[2].copy(), init[3].copy()

    def objective(b, w, a, s):
        z = b + xs @ w + a[cls] + s[cls] * ms
        val = float(np.sum(np.logaddexp(0.0, z) - y * z))
        return val + 0.5 * alpha_d * float(w @ w) + 0.5 * alpha_c * float(a @ a + s @ s) + 0.5 * BIAS_PENALTY * b * b, z

    loss, z = objective(b, w, a, s)
    eye = np.eye(d)
    for _ in range(max_iter):
        p = _expit(z)
        r = p - y
        v = np.maximum(p * (1 - p), 1e-12)
        vm = v * ms
        g_u = np.empty(1 + d)
        g_u[0] = r.sum() + BIAS_PENALTY * b
        g_u[1:] = xs.T @ r + alpha_d * w
        g_a = np.bincount(cls, r, c) + alpha_c * a
        g_s = np.bincount(cls, r * ms, c) + alpha_c * s
        xv = xs * v[:, None]
        h = np.empty((1 + d, 1 + d))
        h[0, 0] = v.sum() + BIAS_PENALTY
        h[0, 1:] = h[1:, 0] = xv.sum(axis=0)
        h[1:, 1:] = _gram(xs, xv) + alpha_d * eye
        ba = np.empty((1 + d, c))
        bs = np.empty((1 + d, c))
        ba[0] = np.bincount(cls, v, c)
        bs[0] = np.bincount(cls, vm, c)
        for j in range(d):
            ba[1 + j] = np.bincount(cls, xv[:, j], c)
            bs[1 + j] = np.bincount(cls, xv[:, j] * ms, c)
        haa = ba[0] + alpha_c
        has = bs[0]
        hss = np.bincount(cls, vm * ms, c) + alpha_c
        det = haa * hss - has * has
        i11, i12, i22 = hss / det, -has / det, haa / det
        ma = ba * i11 + bs * i12  # B D^-1, a-columns
        mb = ba * i12 + bs * i22  # B D^-1, s-columns
        schur = h - _gram(ma.T, ba.T) - _gram(mb.T, bs.T)
        rhs = g_u - ma @ g_a - mb @ g_s
        du = np.linalg.solve(schur, rhs)
        ga2 = g_a - ba.T @ du
        gs2 = g_s - bs.T @ du
        da = i11 * ga2 + i12 * gs2
        ds = i12 * ga2 + i22 * gs2
        step = 1.0
        improved = False
        for _ in range(30):
            nb, nw, na, ns = b - step * du[0], w - step * du[1:], a - step * da, s - step * ds
            new_loss, new_z = objective(nb, nw, na, ns)
            if new_loss <= loss + 1e-12 * abs(loss):
                improved = True
                break
            step *= 0.5
        if not improved:
            break
        delta = step * max(abs(du).max(initial=0.0), abs(da).max(initial=0.0), abs(ds).max(initial=0.0))
        b, w, a, s = nb, nw, na, ns
        done = loss - new_loss <= tol * (1.0 + abs(new_loss)) or delta < 1e-8
        loss, z = new_loss, new_z
        if done:
            break
    # back to raw inputs
    w_raw = w / sd
    slope = s / m_sd
    return {
        "bias": float(b - w_raw @ mu),
        "weight": w_raw,
        "class_bias": a - slope * m_mu,
        "class_slope": slope,
        "state": (b, w, a, s),
    }


def _logit(params: dict, x: np.ndarray, cls: np.ndarray, m: np.ndarray) -> np.ndarray:
    w = np.asarray(params["weight"], dtype=np.float64)
    cb = np.asarray(params["class_bias"], dtype=np.float64)
    cs = np.asarray(params["class_slope"], dtype=np.float64)
    return (x @ w + float(params["bias"])) + (cb[cls] + cs[cls] * m)


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


# --------------------------------------------------------------------------- the rule


def tree_inputs(k: int, num_classes: int) -> list[str]:
    """Inputs of exit ``k``'s tree estimators: the predicted class (a categorical input,
    when there are at most :data:`TREE_CLASS_LIMIT` classes) and the dense inputs."""
    return (["class"] if num_classes <= TREE_CLASS_LIMIT else []) + input_names(k)


def _tree_design(x: np.ndarray, cls: np.ndarray, num_classes: int) -> np.ndarray:
    if num_classes <= TREE_CLASS_LIMIT:
        return np.concatenate([cls[:, None].astype(np.float64), x], axis=1)
    return x


class _Exit:
    """Exit k's estimators prepared as arrays: logistic ones as one weight matrix, tree
    ones as one concatenated forest (all their trees descended together)."""

    def __init__(self, k: int, exit_json: dict, num_classes: int):
        self.k = k
        self.num_classes = num_classes
        self.targets = [int(t["exit"]) for t in exit_json["targets"]]
        logi = [(i, t) for i, t in enumerate(exit_json["targets"]) if t.get("model", "logistic") == "logistic"]
        trees = [(i, t) for i, t in enumerate(exit_json["targets"]) if t.get("model") == "trees"]
        self.logistic_cols = [i for i, _ in logi]
        if logi:
            self.w = [np.asarray(t["weight"], dtype=np.float64) for _, t in logi]
            self.b = np.asarray([float(t["bias"]) for _, t in logi])
            self.cb = np.stack([np.asarray(t["class_bias"], dtype=np.float64) for _, t in logi], axis=1)
            self.cs = np.stack([np.asarray(t["class_slope"], dtype=np.float64) for _, t in logi], axis=1)
        self.tree_cols = [i for i, _ in trees]
        self.forest = Forest([t["trees"] for _, t in trees], num_categories=num_classes) if trees else None
        # each forest alone too: one estimator (the quota rule's P̂[k, k]) descends its own trees only
        self.single = {i: Forest(t["trees"], num_categories=num_classes) for i, t in trees} if len(trees) > 1 else {}

    def logits(self, x: np.ndarray, cls: np.ndarray, m: np.ndarray, cols: Sequence[int] | None = None,
               rows_alike: bool = False) -> np.ndarray:
        """``[N, len(targets)]`` logits of P̂[k, j] (only the columns ``cols`` if given;
        the others are left NaN). ``rows_alike``: every row is the same (the online block),
        so the trees, which score each row on its own, descend for the first row only."""
        n = x.shape[0]
        out = np.full((n, len(self.targets)), np.nan)
        want = set(range(len(self.targets))) if cols is None else set(cols)
        for i, c in enumerate(self.logistic_cols):  # one matrix-vector product per estimator
            if c in want:
                out[:, c] = (x @ self.w[i] + self.b[i]) + (self.cb[cls, i] + self.cs[cls, i] * m)
        wanted_trees = [c for c in self.tree_cols if c in want]
        if rows_alike and wanted_trees:
            x, cls = x[:1], cls[:1]
        if len(wanted_trees) == 1 and wanted_trees[0] in self.single:
            c = wanted_trees[0]
            out[:, c] = self.single[c].raw(_tree_design(x, cls, self.num_classes), cls)[:, 0]
        elif wanted_trees:
            z = self.forest.raw(_tree_design(x, cls, self.num_classes), cls)
            out[:, self.tree_cols] = z
        return out


class LookaheadScorer:
    """A lookahead scorer dict prepared once for repeated scoring (numpy only)."""

    def __init__(self, scorer: dict):
        self.scorer = scorer
        self.k_all = len(scorer["exits"])
        self.num_classes = int(scorer.get("num_classes", len(scorer["class_scale"][0])))
        self.class_scale = np.asarray(scorer["class_scale"], dtype=np.float64)
        self.rule = scorer["rule"]
        self.measure = scorer.get("measure")
        self.costs = np.asarray(scorer["costs"], dtype=np.float64)
        self.lam = float(scorer["lambda"])
        self.skip = np.asarray(scorer.get("skip") or [False] * self.k_all, dtype=bool)
        self.exits = [_Exit(k, e, self.num_classes) for k, e in enumerate(scorer["exits"])]

    def _check(self, features: ExitFeatures) -> None:
        if features.num_exits > self.k_all:
            raise ValueError(f"scorer has {self.k_all} exits, predictions have {features.num_exits}")

    def estimates(self, features: ExitFeatures, diagonal_only: bool = False, only: int | None = None) -> np.ndarray:
        """``[N, K', K]`` P̂[k, j] (NaN where j < k, or j > k with ``diagonal_only``, or k
        other than ``only``)."""
        self._check(features)
        inputs = _Inputs(features, self.k_all, self.class_scale)
        return _estimates_prepared(self.exits, inputs, diagonal_only, only)

    def scores(self, features: ExitFeatures, only: int | None = None) -> np.ndarray:
        """``[N, K']`` stopping scores, or with ``only`` the ``[N]`` column of that exit."""
        self._check(features)
        if self.measure is not None:
            from eenet_cli.core.policy import SIMPLE_SCORERS

            if self.measure == "vote":  # the tie-break divides by the policy's K, not the exits seen
                s = features.vote + features.max_prob / (self.k_all + 1)
            else:
                s = SIMPLE_SCORERS[self.measure](features)
            return np.asarray(s, dtype=np.float64) if only is None else np.asarray(s[:, only], dtype=np.float64)
        if only is not None:
            return self.column(_Inputs(features, self.k_all, self.class_scale), only)
        p = self.estimates(features, diagonal_only=self.rule == "quota")
        return _scores_from_estimates(self.scorer, p, self.skip)

    def column(self, inputs, k: int) -> np.ndarray:
        """``[N]`` stopping scores of exit ``k`` from prepared ``inputs`` (anything with
        ``n``, ``num_exits`` and ``design(k)``, as :class:`_Inputs`): the offline column and
        the online single-sample path (:class:`OnlineInputs`) both run this code."""
        p = _estimates_prepared(self.exits, inputs, self.rule == "quota", k)
        if self.rule == "quota":
            return p[:, k, k]
        return _rule_column(p, self.costs, self.lam, k, self.skip)


class OnlineInputs:
    """One sample's lookahead inputs, built exit by exit as the exits arrive (the online
    path, :class:`eenet_cli.core.online.OnlineSample`): each exit's summaries are computed
    once, with :class:`_Inputs`' arithmetic on that exit's float32 probabilities, and
    :meth:`design` lays out exit k's inputs as :meth:`_Inputs.design` does. The row sits in a
    block of :data:`ROWS` identical rows, so that its products run by the kernel a batch's
    rows use."""

    ROWS = 4
    rows_alike = True  # every row of the block is the sample's
    __slots__ = ("n", "num_exits", "class_scale", "summaries", "probs", "preds", "votes")

    def __init__(self, class_scale: np.ndarray):
        self.n = self.ROWS
        self.class_scale = class_scale
        self.reset()

    def reset(self) -> None:
        self.num_exits = 0
        self.summaries: list = []  # per exit: [margin, log max-prob, entropy, relative margin]
        self.probs: list = []  # per exit: its float32 probabilities
        self.preds: list = []
        self.votes: list = []

    def add(self, p: np.ndarray, cls: int, ent: float, vote: float) -> None:
        """Exit ``num_exits``'s float32 probabilities ``[C]``, prediction, entropy
        confidence and vote measure (as the offline features hold them)."""
        k = self.num_exits
        c = p.shape[0]
        if c >= 2:
            second = np.partition(p, c - 2)[c - 2]
            logs = _log(np.array([p[cls], second], dtype=np.float32))
            margin = float(np.clip(logs[:1] - logs[1:], 0.0, MARGIN_CLIP)[0])
            log_max = float(logs[0])
        else:
            margin, log_max = 0.0, float(_log(np.array([p[cls]], dtype=np.float32))[0])
        rel = margin / float(self.class_scale[k, cls])
        self.summaries += [margin, log_max, float(ent), rel]
        self.probs.append(p.copy())
        self.preds.append(int(cls))
        self.votes.append(float(vote))
        self.num_exits = k + 1

    def design(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls = self.preds[k]
        row = self.summaries[: 4 * (k + 1)]
        if k:
            pp = _log(np.array([self.probs[i][cls] for i in range(k)], dtype=np.float32))
            for i in range(k):
                row += [1.0 if self.preds[i] == cls else 0.0, float(pp[i])]
            row.append(self.votes[k])
        x = np.empty((self.ROWS, len(row)), dtype=np.float64)
        x[:] = row
        return x, np.full(self.ROWS, cls, dtype=np.int64), np.full(self.ROWS, self.summaries[4 * k])


def _estimates_prepared(exits: list[_Exit], inputs: _Inputs, diagonal_only: bool = False, only: int | None = None) -> np.ndarray:
    k_all = len(exits)
    out = np.full((inputs.n, inputs.num_exits, k_all), np.nan)
    for k in range(inputs.num_exits):
        if only is not None and k != only:
            continue
        x, cls, m = inputs.design(k)
        e = exits[k]
        cols = [e.targets.index(k)] if diagonal_only else None
        z = e.logits(x, cls, m, cols, rows_alike=getattr(inputs, "rows_alike", False))
        for i, j in enumerate(e.targets):
            if not diagonal_only or j == k:
                out[:, k, j] = _expit(z[:, i])
    return out


def _estimates(exits: Sequence[dict], inputs: _Inputs, diagonal_only: bool = False) -> np.ndarray:
    """``[N, K', K]`` P̂[k, j] (NaN where j < k, or j > k with ``diagonal_only``) from
    JSON-style estimators."""
    prepared = [_Exit(k, e, inputs.num_classes) for k, e in enumerate(exits)]
    return _estimates_prepared(prepared, inputs, diagonal_only)


def _rule_column(p: np.ndarray, costs: np.ndarray, lam: float, k: int, skip: np.ndarray | None = None) -> np.ndarray:
    """``-gain_k`` at exit ``k`` (0 at the last exit); skipped exits are never gone to."""
    k_all = p.shape[2]
    if k >= k_all - 1:
        return np.zeros(p.shape[0])
    later = np.arange(k + 1, k_all)
    if skip is not None and skip.any():
        later = later[~skip[later]]
    stay = p[:, k, k] - lam * costs[k]
    go = (p[:, k, later] - lam * costs[later]).max(axis=1)
    return stay - go


def _rule_scores(p: np.ndarray, costs: np.ndarray, lam: float, skip: np.ndarray | None = None) -> np.ndarray:
    """``-gain_k`` for every exit seen (``p`` is ``[N, K', K]``); 0 at the last exit."""
    n, kseen, k_all = p.shape
    out = np.zeros((n, kseen))
    for k in range(min(kseen, k_all - 1)):
        out[:, k] = _rule_column(p, costs, lam, k, skip)
    return out


def _scores_from_estimates(scorer: dict, p: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
    if scorer["rule"] == "quota":
        k_seen = p.shape[1]
        return np.stack([p[:, k, k] for k in range(k_seen)], axis=1)
    return _rule_scores(p, np.asarray(scorer["costs"], dtype=np.float64), float(scorer["lambda"]), skip)


def lookahead_scores(scorer: dict, features: ExitFeatures) -> np.ndarray:
    """``[N, K']`` float64 stopping scores (numpy only); thresholds decide as usual.

    Causal: column k uses exits 0..k only, so ``features`` may hold only the first K' <= K
    exits (the online runtime's case) and the K' columns are the same as with all K.
    """
    return LookaheadScorer(scorer).scores(features)


def lookahead_estimates(scorer: dict, features: ExitFeatures) -> np.ndarray:
    """``[N, K', K]`` estimated chance that exit j is right, seen from exit k (NaN for j < k)."""
    return LookaheadScorer(scorer).estimates(features)


# --------------------------------------------------------------------------- validation


def validate_lookahead_scorer(scorer, num_exits: int, num_classes: int) -> str | None:
    """An error message for a malformed lookahead scorer, else None."""

    def finite_list(v, length, what):
        if not isinstance(v, list) or len(v) != length:
            return f"{what} must be a list of {length} numbers"
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{what} must hold numbers"
        if arr.shape != (length,) or any(isinstance(e, bool) for e in v):
            return f"{what} must be a flat list of {length} numbers"
        if not np.all(np.isfinite(arr)):
            return f"{what} holds a non-finite number"
        return None

    def finite_number(v, what):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{what} must be a finite number"
        return None

    if not isinstance(scorer, dict):
        return "scorer must be an object"
    if scorer.get("type") != SCORER_TYPE:
        return f"scorer type must be {SCORER_TYPE!r}"
    version = scorer.get("version", 1)
    if isinstance(version, bool) or version not in SCORER_VERSIONS:
        return f"lookahead scorer version {version!r} is not supported (expected one of {list(SCORER_VERSIONS)})"
    if version == 1 and any(key in scorer for key in ("skip", "measure")):
        return "scorer.skip and scorer.measure need scorer version 2"
    if "measure" in scorer and scorer["measure"] not in _measure_names():
        return f"scorer.measure must be one of {list(_measure_names())}"
    if "skip" in scorer:
        skip = scorer["skip"]
        if not isinstance(skip, list) or len(skip) != num_exits or any(not isinstance(v, bool) for v in skip):
            return f"scorer.skip must be a list of {num_exits} booleans"
        if skip and skip[-1]:
            return "scorer.skip: the last exit cannot be skipped"
    if scorer.get("rule") not in RULES:
        return f"scorer.rule must be one of {list(RULES)}"
    err = finite_number(scorer.get("lambda"), "scorer.lambda")
    if err:
        return err
    err = finite_list(scorer.get("costs"), num_exits, "scorer.costs")
    if err:
        return err
    if np.any(np.diff(np.asarray(scorer["costs"], dtype=np.float64)) <= 0):
        return "scorer.costs must be strictly increasing"
    if scorer.get("num_classes", num_classes) != num_classes:
        return f"scorer.num_classes is {scorer.get('num_classes')!r}, the policy has {num_classes} classes"
    if scorer.get("margin_clip", MARGIN_CLIP) != MARGIN_CLIP or scorer.get("log_floor", LOG_FLOOR) != LOG_FLOOR:
        return f"scorer.margin_clip and scorer.log_floor must be {MARGIN_CLIP} and {LOG_FLOOR} (scorer version {SCORER_VERSION})"
    scale = scorer.get("class_scale")
    if not isinstance(scale, list) or len(scale) != num_exits:
        return f"scorer.class_scale must be a list of {num_exits} lists of {num_classes} numbers"
    for k, row in enumerate(scale):
        err = finite_list(row, num_classes, f"scorer.class_scale[{k}]")
        if err:
            return err
        if min(row) <= 0:
            return f"scorer.class_scale[{k}] must be positive"
    exits = scorer.get("exits")
    if not isinstance(exits, list) or len(exits) != num_exits:
        return f"scorer.exits must be a list of {num_exits} exits"
    for k, e in enumerate(exits):
        where = f"scorer.exits[{k}]"
        if not isinstance(e, dict):
            return f"{where} must be an object"
        names = input_names(k)
        if e.get("inputs", names) != names:
            return f"{where}.inputs must be {names}"
        targets = e.get("targets")
        if not isinstance(targets, list) or len(targets) != num_exits - k:
            return f"{where}.targets must be a list of {num_exits - k} estimators (exits {k}..{num_exits - 1})"
        for i, t in enumerate(targets):
            tw = f"{where}.targets[{i}]"
            if not isinstance(t, dict):
                return f"{tw} must be an object"
            if t.get("exit") != k + i or isinstance(t.get("exit"), bool):
                return f"{tw}.exit must be {k + i}"
            model = t.get("model", "logistic")
            if model not in ("logistic", "trees") or (model == "trees" and version == 1):
                return f"{tw}.model must be 'logistic'" + (" or 'trees'" if version != 1 else "")
            if model == "trees":
                has_class = num_classes <= TREE_CLASS_LIMIT
                err = validate_forest(t.get("trees"), len(names) + int(has_class), f"{tw}.trees",
                                      0 if has_class else None, num_classes)
                if err:
                    return err
                continue
            err = (finite_number(t.get("bias"), f"{tw}.bias")
                   or finite_list(t.get("weight"), len(names), f"{tw}.weight")
                   or finite_list(t.get("class_bias"), num_classes, f"{tw}.class_bias")
                   or finite_list(t.get("class_slope"), num_classes, f"{tw}.class_slope"))
            if err:
                return err
    return None


# --------------------------------------------------------------------------- fitting


def _fingerprint(features: ExitFeatures) -> str:
    h = hashlib.sha256()
    for arr in (features.preds, features.max_prob, features.entropy, features.labels):
        a = np.ascontiguousarray(arr)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _folds(n: int, num_folds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), 9])
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(n)] = np.arange(n) % num_folds
    return fold


def _alpha_json(alpha):
    return float(alpha) if np.isscalar(alpha) else [float(v) for v in alpha]


def _estimator_json(params: dict, k: int, j: int) -> dict:
    return {
        "exit": j,
        "bias": float(params["bias"]),
        "weight": [float(v) for v in params["weight"]],
        "class_bias": [float(v) for v in params["class_bias"]],
        "class_slope": [float(v) for v in params["class_slope"]],
    }


def _tree_rows(mask: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """The rows of ``mask`` a tree fit uses: all of them, or a seeded sample of
    :data:`TREE_MAX_ROWS` (the fit time grows with the rows; the log loss hardly moves)."""
    rows = np.flatnonzero(mask)
    if rows.size <= TREE_MAX_ROWS:
        return rows
    pick = np.random.default_rng([int(seed), 17, int(salt)]).choice(rows.size, TREE_MAX_ROWS, replace=False)
    return rows[np.sort(pick)]


def _tree_candidate(x, cls, m, y, fold, num_folds, c, seed):
    """Cross-fitted raw scores of gradient-boosted trees after each of :data:`TREE_STAGES`
    trees, or None where trees cannot be fitted (too few rows, or a fold with one class)."""
    from eenet_cli.core.trees import fit_forest, staged_raw

    n = y.size
    if n < MIN_TREE_ROWS or num_folds < 2:
        return None
    xt_all = _tree_design(x, cls, c)
    cat = 0 if c <= TREE_CLASS_LIMIT else None
    out = {s: np.empty(n) for s in TREE_STAGES}
    for f in range(num_folds):
        tr = _tree_rows(fold != f, seed, f)
        yt = y[tr]
        if yt.min() == yt.max():
            return None
        model = fit_forest(xt_all[tr], yt, iterations=max(TREE_STAGES), categorical=cat, seed=seed)
        held = fold == f
        for stage, z in staged_raw(model, xt_all[held], list(TREE_STAGES)).items():
            out[stage][held] = z
    return out


def fit_estimators(features: ExitFeatures, *, seed: int = 0, num_folds: int = DEFAULT_FOLDS,
                   alphas: Sequence[float] = DEFAULT_ALPHAS, trees: bool = True) -> dict:
    """The budget-independent part: cross-fitted and final estimators of P̂[k, j].

    Each estimator is an L2 logistic regression or, with ``trees`` (scikit-learn needed),
    gradient-boosted trees, whichever has the lower cross-fitted log loss (trees must beat
    it by :data:`TREE_MARGIN`, relative, so that small validation sets keep the simple model).

    Returns ``{"exits": JSON estimators (refit on all rows), "cv": [N, K, K] cross-fitted
    P̂, "final": [N, K, K] P̂ of the JSON estimators on these rows, "info": {...}}``.
    """
    if features.labels is None:
        raise ValueError("lookahead needs labels to learn a policy")
    inputs = _Inputs(features)
    n, kk, c = inputs.n, inputs.num_exits, inputs.num_classes
    correct = features.correct
    num_folds = int(max(2, min(num_folds, n // 2))) if n >= 4 else 1
    fold = _folds(n, num_folds, seed) if num_folds > 1 else np.zeros(n, dtype=np.int64)
    cv = np.full((n, kk, kk), np.nan)
    exits_json = []
    chosen_alpha: list[list] = []
    cv_loss: list[list[float]] = []
    models: list[list[str]] = []
    logistic_loss: list[list[float]] = []
    tree_losses: list[list] = []
    for k in range(kk):
        x, cls, m = inputs.design(k)
        targets, alpha_row, loss_row, model_row, logistic_row, trees_row = [], [], [], [], [], []
        for j in range(k, kk):
            y = correct[:, j].astype(np.float64)
            zs = [np.empty(n) for _ in alphas]
            states: list[list] = [[] for _ in alphas]
            for f in range(num_folds):
                tr = fold != f if num_folds > 1 else np.ones(n, dtype=bool)
                te = ~tr if num_folds > 1 else tr
                xt, ct, mt, yt = x[tr], cls[tr], m[tr], y[tr]
                state = None
                for i, alpha in enumerate(alphas):  # each strength warm-starts from the previous one
                    params = _fit_logistic(xt, ct, mt, c, yt, alpha, init=state)
                    state = params["state"]
                    states[i].append(state)
                    zs[i][te] = _logit(params, x[te], cls[te], m[te])
            losses = [_log_loss(z, y) for z in zs]
            best = min(range(len(alphas)), key=lambda i: (losses[i], i))
            loss, alpha, z = losses[best], alphas[best], zs[best]
            tree_z = _tree_candidate(x, cls, m, y, fold, num_folds, c, seed) if trees else None
            tree_loss = {s: _log_loss(tz, y) for s, tz in tree_z.items()} if tree_z is not None else {}
            stage = min(tree_loss, key=lambda s: (tree_loss[s], s)) if tree_loss else None
            if stage is not None and tree_loss[stage] < loss * (1.0 - TREE_MARGIN):
                from eenet_cli.core.trees import export_forest, fit_forest, trim_categories

                cv[:, k, j] = _expit(tree_z[stage])
                rows = _tree_rows(np.ones(n, dtype=bool), seed, num_folds)
                model = fit_forest(_tree_design(x[rows], cls[rows], c), y[rows], iterations=stage,
                                   categorical=0 if c <= TREE_CLASS_LIMIT else None, seed=seed)
                targets.append({"exit": j, "model": "trees", "trees": trim_categories(export_forest(model), c)})
                alpha_row.append(None)
                model_row.append(f"trees-{stage}")
                loss_row.append(float(tree_loss[stage]))
            else:
                cv[:, k, j] = _expit(z)
                st = states[best]
                init = (float(np.mean([t[0] for t in st])), *(np.mean([t[i] for t in st], axis=0) for i in (1, 2, 3)))
                params = _fit_logistic(x, cls, m, c, y, alpha, init=init)
                targets.append(_estimator_json(params, k, j))
                alpha_row.append(_alpha_json(alpha))
                model_row.append("logistic")
                loss_row.append(float(loss))
            logistic_row.append(float(loss))
            trees_row.append(float(tree_loss[stage]) if stage is not None else None)
        exits_json.append({"inputs": input_names(k), "targets": targets})
        chosen_alpha.append(alpha_row)
        cv_loss.append(loss_row)
        models.append(model_row)
        logistic_loss.append(logistic_row)
        tree_losses.append(trees_row)
    final = _estimates(exits_json, inputs)
    info = {
        "folds": num_folds,
        "alphas_tried": [_alpha_json(a) for a in alphas],
        "alpha": chosen_alpha,
        "cv_log_loss": cv_loss,
        "model": models,
        "cv_log_loss_logistic": logistic_loss,
        "cv_log_loss_trees": tree_losses,
    }
    scale = [[float(v) for v in row] for row in inputs.class_scale]
    return {"exits": exits_json, "class_scale": scale, "cv": cv, "final": final, "info": info}


def _exits_and_figures(scores: np.ndarray, thresholds: list, correct: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, float, float]:
    ex = apply_thresholds(scores, thresholds)
    acc = float(correct[np.arange(ex.size), ex].mean()) if ex.size else 0.0
    return ex, acc, realised_cost(ex, costs)


def _rule_thresholds(k: int, skip: np.ndarray | None = None) -> list:
    """The lookahead rule's thresholds: 0, null at a skipped exit and at the last one."""
    skip = np.zeros(k, dtype=bool) if skip is None else skip
    return [None if skip[i] else 0.0 for i in range(k - 1)] + [None]


def _bisect_lambda(p: np.ndarray, costs: np.ndarray, budget: float, lo: float, hi: float, iters: int = 60,
                   skip: np.ndarray | None = None) -> float:
    """Smallest λ in [lo, hi] whose realised cost fits (``hi`` must fit)."""
    thr = _rule_thresholds(costs.size, skip)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        ex = apply_thresholds(_rule_scores(p, costs, mid, skip), thr)
        if within_budget(realised_cost(ex, costs), budget):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
    return hi


def _price_span(costs: np.ndarray) -> float:
    return 4.0 / float(np.min(np.diff(costs))) if costs.size > 1 else 1.0


def _fit_lambda(p: np.ndarray, costs: np.ndarray, budget: float, fill: bool, skip: np.ndarray | None = None) -> float | None:
    """λ ≥ 0 for the budget, or with ``fill`` the λ ≤ 0 that spends a loose budget; None
    when no price fits (possible only with skipped exits)."""
    thr = _rule_thresholds(costs.size, skip)
    span = _price_span(costs)

    def cost(lam):
        return realised_cost(apply_thresholds(_rule_scores(p, costs, lam, skip), thr), costs)

    if not within_budget(cost(0.0), budget):
        if not within_budget(cost(span), budget):
            return None
        return _bisect_lambda(p, costs, budget, 0.0, span, skip=skip)
    if not fill:
        return 0.0
    if within_budget(cost(-span), budget):
        return -span
    return _bisect_lambda(p, costs, budget, -span, 0.0, skip=skip)


def _measure_candidates(features: ExitFeatures, costs: np.ndarray, budget: float) -> list[dict]:
    """The baselines' own rules (geometric quotas on max-prob, entropy and vote; patience),
    fitted on all validation rows: a lookahead fit keeps one when it beats every lookahead
    candidate, so it never does worse on validation than the best of them."""
    from eenet_cli.core.policy import SIMPLE_SCORERS

    correct = features.correct
    out = []
    for name in _measure_names():
        scores = SIMPLE_SCORERS[name](features)
        if name == "patience":
            thr = _patience_thresholds(scores, correct, costs, budget)
        else:
            thr = fit_geometric(Ranking(scores), costs, budget).thresholds
        _, acc, cost = _exits_and_figures(scores, thr, correct, costs)
        out.append({"rule": f"measure-{name}", "measure": name, "cv_accuracy": acc, "cv_avg_cost": cost,
                    "thresholds": [None if t is None else float(t) for t in thr]})
    return out


def _patience_thresholds(scores: np.ndarray, correct: np.ndarray, costs: np.ndarray, budget: float) -> list:
    k = costs.size
    best = None
    for t in range(1, k + 1):
        thr = first_exit_thresholds(k) if t == 1 else [float(t)] * (k - 1) + [None]
        _, acc, cost = _exits_and_figures(scores, thr, correct, costs)
        if within_budget(cost, budget) and (best is None or acc > best[0]):
            best = (acc, thr)
    return best[1]


def _held_out_exits(cand: dict, cv: np.ndarray, measures: dict, correct: np.ndarray, costs: np.ndarray,
                    budget: float, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    """A candidate rule's settings fitted on rows ``tr`` (their cross-fitted estimates), its
    exits on rows ``te``."""
    k = costs.size
    rule = cand["rule"]
    if rule.startswith("lookahead"):
        skip = np.asarray(cand.get("skip") or [False] * k, dtype=bool)
        lam = _fit_lambda(cv[tr], costs, budget, fill=rule == "lookahead-fill", skip=skip)
        lam = _price_span(costs) if lam is None else lam
        return apply_thresholds(_rule_scores(cv[te], costs, lam, skip), _rule_thresholds(k, skip))
    if rule.startswith("measure-"):
        scores = measures[cand["measure"]]
        if cand["measure"] == "patience":
            thr = _patience_thresholds(scores[tr], correct[tr], costs, budget)
        else:
            thr = fit_geometric(Ranking(scores[tr]), costs, budget).thresholds
        return apply_thresholds(scores[te], thr)
    diag_tr = np.stack([cv[tr, j, j] for j in range(k)], axis=1)
    diag_te = np.stack([cv[te, j, j] for j in range(k)], axis=1)
    if rule == "quota-geometric":
        thr = fit_geometric(Ranking(diag_tr), costs, budget).thresholds
    else:  # quotas following the lookahead rule's distribution on the same rows
        lam = _fit_lambda(cv[tr], costs, budget, fill=False)
        ex = apply_thresholds(_rule_scores(cv[tr], costs, lam), _rule_thresholds(k))
        thr = fit_distribution(Ranking(diag_tr), costs, budget, np.bincount(ex, minlength=k) / max(ex.size, 1)).thresholds
    return apply_thresholds(diag_te, thr)


CHOICE_FOLDS = 5
CHOICE_GUARD = 1.0  # standard errors of the paired held-out difference a candidate must win by


def _held_out_choice(candidates: list[dict], own: int, cv: np.ndarray, measures: dict, correct: np.ndarray,
                     costs: np.ndarray, budget: float, seed: int) -> int:
    """Index of the chosen candidate: each candidate's settings (λ, quotas, a baseline's
    thresholds) are fitted on 4 folds of the rows and scored on the fifth, so a rule with
    more settings to fit gains nothing from fitting noise.
    The lookahead rule's own variants compete on held-out hits (ties to the earlier); a
    variant with exits switched off, or a baseline's rule (index >= ``own``), replaces the
    choice only when its held-out hits beat it by more than :data:`CHOICE_GUARD` standard
    errors of the paired difference. Records ``heldout_accuracy`` in each candidate."""
    n = correct.shape[0]
    if n < 2 * CHOICE_FOLDS:
        best = max(range(own), key=lambda i: (candidates[i]["cv_accuracy"], -i))
        for i in range(own, len(candidates)):
            if candidates[i]["cv_accuracy"] > candidates[best]["cv_accuracy"]:
                best = i
        return best
    fold = np.random.default_rng([int(seed), 23]).permutation(n) % CHOICE_FOLDS
    right = np.zeros((len(candidates), n), dtype=np.int8)  # per row: right on its held-out fold?
    for f in range(CHOICE_FOLDS):
        tr, te = fold != f, fold == f
        rows = np.arange(int(te.sum()))
        for i, cand in enumerate(candidates):
            ex = _held_out_exits(cand, cv, measures, correct, costs, budget, tr, te)
            right[i, te] = correct[te][rows, ex]
    hits = right.sum(axis=1, dtype=np.int64)
    for i, cand in enumerate(candidates):
        cand["heldout_accuracy"] = float(hits[i] / n)
    # the lookahead rule stays unless another candidate beats it by more than the noise of
    # the paired difference (CHOICE_GUARD standard errors): with few rows, a held-out gap of a
    # point is chance, and choosing on it loses as often as it wins
    plain = [i for i in range(own) if candidates[i]["rule"] != "lookahead-skip"]
    best = max(plain, key=lambda i: (hits[i], -i))
    for i in range(len(candidates)):
        if i in plain:
            continue
        if wins_beyond_noise(right[i].astype(np.float64) - right[best], CHOICE_GUARD):
            best = i
    return best


def _skip_search(cv: np.ndarray, costs: np.ndarray, budget: float, correct: np.ndarray, base_acc: float) -> dict | None:
    """The lookahead rule with exits switched off, greedily, while the cross-fitted accuracy
    rises by at least :data:`SKIP_MARGIN` (or 3 rows) per exit switched off."""
    k, n = costs.size, correct.shape[0]
    margin = max(SKIP_MARGIN, 3.0 / max(n, 1))
    skip = np.zeros(k, dtype=bool)
    best = None
    acc_now = base_acc
    for _ in range(k - 1):
        round_best = None
        for e in range(k - 1):
            if skip[e]:
                continue
            trial = skip.copy()
            trial[e] = True
            lam = _fit_lambda(cv, costs, budget, fill=False, skip=trial)
            if lam is None:
                continue
            _, acc, cost = _exits_and_figures(_rule_scores(cv, costs, lam, trial), _rule_thresholds(k, trial), correct, costs)
            if round_best is None or acc > round_best[0]:
                round_best = (acc, cost, lam, trial)
        if round_best is None or round_best[0] < acc_now + margin:
            break
        acc_now, _, lam, skip = round_best
        best = {"rule": "lookahead-skip", "lambda": lam, "skip": [bool(v) for v in skip],
                "cv_accuracy": round_best[0], "cv_avg_cost": round_best[1]}
    return best


def _validation(exits: np.ndarray, correct: np.ndarray, costs: np.ndarray, k: int) -> dict:
    n = exits.size
    return {
        "accuracy": float(correct[np.arange(n), exits].mean()) if n else 0.0,
        "avg_cost": realised_cost(exits, costs) if n else 0.0,
        "n": int(n),
        "exit_fractions": (np.bincount(exits, minlength=k) / max(n, 1)).tolist(),
    }


def fit_lookahead(features: ExitFeatures, costs: np.ndarray, budget: float, *, seed: int = 0,
                  cache: dict | None = None) -> dict:
    """Fit the lookahead policy for one budget on validation features.

    Returns ``{"scorer", "thresholds", "exit_distribution", "validation", "training",
    "threshold_fit"}`` (see the module docstring). ``cache`` (any dict, kept by the caller)
    holds the estimators, which do not depend on the budget, so further budgets on the same
    data only redo the cheap λ search. The result is a pure function of the inputs and
    ``seed`` (no timings inside), with or without the cache.
    """
    costs = np.asarray(costs, dtype=np.float64)
    k = features.num_exits
    if costs.shape != (k,):
        raise ValueError(f"expected {k} costs, one per exit, got shape {costs.shape}")
    if not np.all(np.isfinite(costs)) or np.any(costs <= 0) or np.any(np.diff(costs) <= 0):
        raise ValueError("costs must be positive and strictly increasing")
    budget = float(budget)
    if not math.isfinite(budget) or not within_budget(costs[0], budget):
        raise ValueError(f"budget {budget:g} is below the cost of the first exit ({costs[0]:g})")
    if features.labels is None:
        raise ValueError("lookahead needs labels to learn a policy")

    key = ("lookahead", int(seed), _fingerprint(features))
    est = None if cache is None else cache.get(key)
    if est is None:
        est = fit_estimators(features, seed=seed)
        if cache is not None:
            cache[key] = est
    correct = features.correct
    cv, final = est["cv"], est["final"]
    thr0 = [0.0] * (k - 1) + [None]

    if first_exit_only(costs, budget, features.num_samples):
        # no room past the first exit: the thresholds every method uses there (stop everyone)
        candidates: list = []
        choice: dict = {"rule": "first-exit-only"}
    else:
        # candidates, judged on the cross-fitted estimates
        candidates = []
        lam = _fit_lambda(cv, costs, budget, fill=False)
        _, acc, cost = _exits_and_figures(_rule_scores(cv, costs, lam), thr0, correct, costs)
        candidates.append({"rule": "lookahead", "lambda": lam, "cv_accuracy": acc, "cv_avg_cost": cost})
        look_exits = apply_thresholds(_rule_scores(cv, costs, lam), thr0)
        if lam == 0.0 and k > 1:
            lam_fill = _fit_lambda(cv, costs, budget, fill=True)
            if lam_fill != 0.0:
                _, acc, cost = _exits_and_figures(_rule_scores(cv, costs, lam_fill), thr0, correct, costs)
                candidates.append({"rule": "lookahead-fill", "lambda": lam_fill, "cv_accuracy": acc, "cv_avg_cost": cost})
        if k > 2:
            skipped = _skip_search(cv, costs, budget, correct, max(c["cv_accuracy"] for c in candidates))
            if skipped is not None:
                candidates.append(skipped)
        cv_rank = Ranking(np.stack([cv[:, j, j] for j in range(k)], axis=1))
        geo = fit_geometric(cv_rank, costs, budget)
        _, acc, cost = _exits_and_figures(cv_rank.scores, geo.thresholds, correct, costs)
        candidates.append({"rule": "quota-geometric", "cv_accuracy": acc, "cv_avg_cost": cost, **geo.info})
        look_dist = np.bincount(look_exits, minlength=k) / max(look_exits.size, 1)
        dist = fit_distribution(cv_rank, costs, budget, look_dist)
        _, acc, cost = _exits_and_figures(cv_rank.scores, dist.thresholds, correct, costs)
        candidates.append({"rule": "quota-lookahead-distribution", "cv_accuracy": acc, "cv_avg_cost": cost,
                           "distribution": [float(v) for v in look_dist], **dist.info})
        own = len(candidates)
        candidates += _measure_candidates(features, costs, budget)
        # the most accurate on held-out folds; ties go to the earlier candidate (the rule);
        # a baseline's own rule only where it beats every lookahead candidate
        from eenet_cli.core.policy import SIMPLE_SCORERS

        measures = {name: np.asarray(SIMPLE_SCORERS[name](features), dtype=np.float64) for name in _measure_names()}
        choice = candidates[_held_out_choice(candidates, own, cv, measures, correct, costs, budget, seed)]

    # the policy itself: final estimators, settings met on all validation rows
    scorer = {
        "type": SCORER_TYPE,
        "version": SCORER_VERSION,
        "description": DESCRIPTION,
        "rule": "lookahead",
        "lambda": 0.0,
        "costs": [float(v) for v in costs],
        "num_classes": int(features.num_classes),
        "margin_clip": MARGIN_CLIP,
        "log_floor": LOG_FLOOR,
        "class_scale": est["class_scale"],
        "exits": est["exits"],
    }
    fit_info: dict = {"rule": choice["rule"], "candidates": candidates}
    if choice["rule"] == "first-exit-only":
        scorer["rule"] = "quota"
        thresholds: list = first_exit_thresholds(k)
    elif choice["rule"].startswith("measure-"):
        scorer["rule"] = "quota"
        scorer["measure"] = choice["measure"]
        thresholds = list(choice["thresholds"])
    elif choice["rule"].startswith("lookahead"):
        skip = np.asarray(choice.get("skip") or [False] * k, dtype=bool)
        lam = float(choice["lambda"])
        thr_rule = _rule_thresholds(k, skip)
        ex = apply_thresholds(_rule_scores(final, costs, lam, skip), thr_rule)
        if not within_budget(realised_cost(ex, costs), budget):
            # the refitted estimators spend more than the cross-fitted ones: raise the price
            span = _price_span(costs)
            hi = max(span, lam)
            while not within_budget(realised_cost(apply_thresholds(_rule_scores(final, costs, hi, skip), thr_rule), costs), budget):
                hi *= 2.0  # with skipped exits, stopping everyone at exit 1 may need a higher price
                if hi > 1e12:
                    raise AssertionError("no price keeps the lookahead rule within the budget")
            lam = _bisect_lambda(final, costs, budget, lam, hi, skip=skip)
        scorer["lambda"] = float(lam)
        if skip.any():
            scorer["skip"] = [bool(v) for v in skip]
        fit_info.update({"lambda": float(lam), "lambda_cv": float(choice["lambda"])})
        thresholds = thr_rule
    else:
        scorer["rule"] = "quota"
        rank = Ranking(np.stack([final[:, j, j] for j in range(k)], axis=1))
        if choice["rule"] == "quota-geometric":
            qf = fit_geometric(rank, costs, budget)
        else:
            qf = fit_distribution(rank, costs, budget, np.asarray(choice["distribution"]))
        thresholds = [None if t is None else float(t) for t in qf.thresholds]
        fit_info.update(qf.info)
    scores = lookahead_scores(scorer, features)
    exits = apply_thresholds(scores, thresholds)
    validation = _validation(exits, correct, costs, k)
    training = {
        "seed": int(seed),
        "hyperparameters": {
            "folds": est["info"]["folds"],
            "tree_stages": list(TREE_STAGES),
            "tree_margin": TREE_MARGIN,
            "alphas_tried": est["info"]["alphas_tried"],
            "bias_penalty": BIAS_PENALTY,
            "margin_clip": MARGIN_CLIP,
            "log_floor": LOG_FLOOR,
        },
        "alpha": est["info"]["alpha"],
        "cv_log_loss": est["info"]["cv_log_loss"],
        "model": est["info"]["model"],
        "cv_log_loss_logistic": est["info"]["cv_log_loss_logistic"],
        "cv_log_loss_trees": est["info"]["cv_log_loss_trees"],
    }
    return {
        "scorer": scorer,
        "thresholds": thresholds,
        "exit_distribution": validation["exit_fractions"],
        "validation": validation,
        "training": training,
        "threshold_fit": fit_info,
    }
