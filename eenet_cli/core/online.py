"""Applying a policy online, one exit at a time (Algorithm 2), with numpy alone.

The offline :func:`~eenet_cli.core.policy.apply_to_features` sees every exit's scores at
once; a deployed model only has the exits it has run. :class:`OnlinePolicy` makes the same
decision from exits 1..k only — every scorer is causal — using the same numerical steps as
the offline path, so both stop every sample at the same exit.

Three ways in:

- :meth:`OnlinePolicy.sample` gives an :class:`OnlineSample`: feed it exit k's scores
  ``[C]`` with :meth:`~OnlineSample.step` as soon as head k has run; it says whether to
  stop there. This is what a deployed model calls, one exit decision at a time.
- :meth:`OnlinePolicy.run` decides for one sample whose exits are given ``[K, C]`` (or
  computed on demand by indexing, as the runtime's lazy exits are).
- :meth:`OnlinePolicy.begin` / :meth:`OnlinePolicy.step` decide for a batch.

At batch size 1 everything per exit is prepared once (weights as contiguous float64
arrays, preallocated buffers for the softmax and for the scorer's inputs), so a decision
is a few small numpy calls in place (about 15 for EENet, 5 for max-prob) and no
allocation, concatenation or loop over classes. Lookahead keeps one sample's inputs
as its exits arrive (:class:`~eenet_cli.core.lookahead.OnlineInputs`: each exit's
summaries once) and scores exit k with the offline column code. The arithmetic is the offline path's,
step for step: the float32 softmax and its entropy of
:func:`~eenet_cli.core.measures.block_measures`, and, for EENet, the same BLAS kernels as
:func:`~eenet_cli.core.eenet.eenet_forward` on a large batch: the sample's row sits
in a small block of rows so that its products run as a batch's would, not by OpenBLAS's
matrix-vector path, which rounds differently (the block sizes are checked once per exit,
see :func:`_blocks_like_batch`). Scores then equal, bit for bit, the offline scores of a
sample in the body of a batch. (OpenBLAS can round the last rows of a batch, or of a
thread's share of one, differently by an ulp; a sample whose score sits exactly on a
threshold may then, rarely, go the other way — the same caveat as for logits computed
on a different batch, see :mod:`eenet_cli.runtime`.)

>>> import numpy as np
>>> policy = {"num_exits": 2, "num_classes": 3, "thresholds": [0.9, None], "scorer": {"type": "maxprob"}}
>>> OnlinePolicy(policy).run(np.array([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
(0, 0)
>>> s = OnlinePolicy(policy).sample()
>>> s.step(np.array([1.0, 0.0, 0.0])), s.exit, s.prediction   # max-prob 0.58 < 0.9: go on
(False, 0, 0)
>>> s.step(np.array([0.0, 1.0, 0.0])), s.exit, s.prediction   # the last exit always stops
(True, 1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eenet_cli.core.eenet import _sigmoid
from eenet_cli.core.measures import block_measures, entropy_confidence
from eenet_cli.core.policy import TIE_BREAK_SCALE

_MAXPROB, _ENTROPY, _VOTE, _PATIENCE, _EENET, _LOOKAHEAD = range(6)
_CODES = {"maxprob": _MAXPROB, "entropy": _ENTROPY, "vote": _VOTE, "patience": _PATIENCE, "eenet": _EENET}

_F32 = np.float32
_F64 = np.float64
_ndarray = np.ndarray
_add = np.add
_add_reduce = np.add.reduce
_subtract = np.subtract
_multiply = np.multiply
_divide = np.divide
_maximum = np.maximum
_exp = np.exp
_log = np.log
_tanh = np.tanh
_dot = np.dot
_copyto = np.copyto
_where = np.where


@dataclass
class OnlineState:
    """Per-sample history of a batch: predictions and EENet utilities of exits run so far."""

    preds: np.ndarray  # [B, K] int64, -1 where not run
    qhat: np.ndarray  # [B, K] float64 sigmoid utilities (EENet only)
    maxp: np.ndarray  # [B, K] float64 max-prob (vote tie-break)
    history: np.ndarray | None = None  # [B, K, C] scores seen, for scorers without a fast path
    logp: np.ndarray | None = None  # [B, K, C] float64 log-probabilities seen (combined outputs only)


_BLOCKS = (2, 4, 8, 16, 32, 64)  # rows of the blocks tried for the hidden layer and the utility


def _blocks_like_batch(w: np.ndarray, wu: np.ndarray) -> tuple[int, int]:
    """Row counts of the blocks whose first row BLAS computes as in a large batch.

    The offline path multiplies a whole batch, ``x @ w.T`` and ``h @ wu``; one sample's row
    alone would take OpenBLAS's matrix-vector path (rounded differently), and how a small
    product is split across threads can differ too. So the row is computed inside a block
    of ``m`` rows (the others zero), with the smallest ``m`` whose first row equals, bit for
    bit, the same row inside a 256-row batch: checked once per exit, on random inputs in
    [0, 1) like the real ones, with the very calls the decisions make.
    """
    rng = np.random.default_rng(0)
    wt = np.ascontiguousarray(w).T
    probe = rng.random((256, wt.shape[0]))
    hidden = probe @ wt  # as eenet_forward
    act = np.maximum(hidden, 0.01 * hidden)

    def smallest_block(batch: np.ndarray, operand: np.ndarray, want: np.ndarray) -> int:
        for m in _BLOCKS:
            block = np.zeros((m, batch.shape[1]))
            out = np.empty((m, *operand.shape[1:]))
            for i in range(0, 256, 37):
                block[0] = batch[i]
                _dot(block, operand, out)
                if not np.array_equal(out[0], want[i]):
                    break
            else:
                return m
        return _BLOCKS[-1]  # none matched: the largest block, the closest to a batch

    return smallest_block(probe, wt, hidden), max(smallest_block(act, wu, act @ wu), 4)


class _Layer:
    """One exit of EENet's scorer, prepared for single-sample decisions.

    ``x`` is an ``[m, D]`` block whose first row is the exit's input (class probabilities,
    the three measures, earlier utilities) and whose other rows stay zero, so that
    ``x @ w.T`` runs as on a large batch (a matrix product, not a matrix-vector one; see
    :func:`_blocks_like_batch`); ``g`` is an ``[m', H]`` block for the utility, likewise.
    """

    __slots__ = ("wt", "b", "wu", "bu", "x", "xrow", "xp", "h2", "h2row", "g", "grow", "tmp", "u4", "leaky_max")

    def __init__(self, w: np.ndarray, b: np.ndarray, wu: np.ndarray, bu: float, c: int, slope: float, blocks: tuple[int, int]):
        h, d = w.shape
        m_hidden, m_util = blocks
        self.wt = np.ascontiguousarray(w).T  # the offline operand: a transposed C-contiguous [H, D]
        self.b = np.ascontiguousarray(b)
        self.wu = np.ascontiguousarray(wu)
        self.bu = float(bu)
        self.x = np.zeros((m_hidden, d), dtype=np.float64)
        self.xrow = self.x[0]
        self.xp = self.x[0, :c]
        self.h2 = np.empty((m_hidden, h), dtype=np.float64)
        self.h2row = self.h2[0]
        self.g = np.zeros((m_util, h), dtype=np.float64)
        self.grow = self.g[0]
        self.tmp = np.empty(h, dtype=np.float64)
        self.u4 = np.empty(m_util, dtype=np.float64)
        # where(h > 0, h, s*h) == maximum(h, s*h) for 0 <= s <= 1 (zeros and NaN alike)
        self.leaky_max = 0.0 <= slope <= 1.0


class _Buffers:
    """Per-sample scratch arrays for ``C`` classes (one set per :class:`OnlineSample`)."""

    __slots__ = ("c", "log_c", "m", "total", "z", "e", "p", "pz", "layers")

    def __init__(self, c: int, layers: list | None):
        self.c = c
        self.log_c = float(np.log(c))  # as the offline entropy's np.log(c)
        self.m = np.empty((), dtype=np.float32)
        self.total = np.empty((), dtype=np.float32)
        self.z = np.empty(c, dtype=np.float32)
        self.e = np.empty(c, dtype=np.float32)
        self.p = np.empty(c, dtype=np.float32)
        self.pz = np.empty(c, dtype=np.float32)
        self.layers = layers


class OnlinePolicy:
    """A policy dict prepared for repeated online decisions."""

    FAST = tuple(_CODES)  # the scorers with a fast path; the others run their offline code

    def __init__(self, policy: dict):
        self.policy = policy
        self.k = int(policy["num_exits"])
        self.kind = policy["scorer"]["type"]
        measure = policy["scorer"].get("measure")
        if self.kind in ("eenet", "lookahead") and measure in _CODES:
            self.kind = measure  # a learned fit that chose a baseline's rule stops on its measure
        thr = policy["thresholds"]
        self.thresholds = [np.inf if t is None else float(t) for t in thr[:-1]] + [-np.inf]
        # the single-sample path keeps None (an exit that never stops), as apply_thresholds does
        self._thr = [None if t is None else float(t) for t in thr[: self.k - 1]] + [None]
        self.slope = float(policy["scorer"].get("negative_slope", 0.01))
        # patience with its max-prob tie-break (core.policy.TIE_BREAKS): run + max-prob / 2
        self.tie_break = self.kind == "patience" and policy["scorer"].get("tie_break") == "max_prob"
        self.code = _CODES.get(self.kind, -1)
        self.layers = []
        self.num_classes: int | None = policy.get("num_classes")
        self.compact_eenet = False
        if self.kind == "eenet":
            from eenet_cli.core.eenet import scorer_inputs

            # the compact layout's arithmetic is row-exact (core.eenet.compact_exit_forward): one
            # sample's decision runs the very code of the offline batch, bit for bit
            self.compact_eenet = scorer_inputs(policy["scorer"]) == "compact"
        if self.kind == "eenet" and not self.compact_eenet:
            for e in policy["scorer"]["exits"]:
                self.layers.append(
                    (
                        np.asarray(e["shared_weight"], dtype=np.float64),
                        np.asarray(e["shared_bias"], dtype=np.float64),
                        np.asarray(e["utility_weight"], dtype=np.float64),
                        float(e["utility_bias"]),
                    )
                )
            if self.layers:
                self.num_classes = int(self.layers[0][0].shape[1]) - 3
        self.compact_layers: list = []
        if self.compact_eenet:  # core.eenet.compact_exit_forward's operands, per exit
            self.compact_layers = [
                (np.asarray(e["shared_weight"], dtype=np.float64), np.asarray(e["shared_bias"], dtype=np.float64),
                 np.asarray(e["utility_weight"], dtype=np.float64), float(e["utility_bias"]))
                for e in policy["scorer"]["exits"]
            ]
        self.prepared = None  # lookahead: its scorer as arrays, prepared once
        if self.kind == "lookahead":  # noqa: SIM102
            from eenet_cli.core.lookahead import LookaheadScorer

            self.prepared = LookaheadScorer(policy["scorer"])
            if self.prepared.measure is None and self.prepared.k_all == self.k:
                self.code = _LOOKAHEAD  # one sample: each exit's inputs computed once (core.lookahead.OnlineInputs)
        self._pool: dict[bool, list] = {False: [], True: []}
        self._blocks: list | None = None  # EENet: block rows per exit, found on first use
        # combined exit outputs (core.outputs): exit j's scores are replaced, before anything
        # else reads them, by the pooled log-probabilities of exits 0..j, as offline
        block = policy.get("outputs")
        self.outputs: list | None = None
        if block and any(e is not None for e in block["exits"]):
            self.outputs = [None if e is None else [float(w) for w in e["weights"]] for e in block["exits"]]

    def combined(self, j: int, scores: np.ndarray, seen: list, probs: bool) -> np.ndarray:
        """Exit ``j``'s scores ``[b, C]`` as the policy's outputs say: appends this exit's
        log-probabilities to ``seen`` (one ``[b, C]`` array per exit so far) and returns the
        pooled scores (or ``scores`` unchanged where exit j keeps its own output)."""
        from eenet_cli.core.outputs import as_kind, log_probs, pooled

        kind = "probs" if probs else "logits"
        seen.append(log_probs(scores, kind))
        w = self.outputs[j]
        if w is None:
            return scores
        dtype = scores.dtype if scores.dtype.kind == "f" else np.float32
        return as_kind(pooled(seen[: j + 1], w), kind, dtype)

    # ------------------------------------------------------------------ one sample

    def sample(self, probs: bool = False) -> "OnlineSample":
        """A fresh single-sample decision state (reusable: :meth:`OnlineSample.reset`)."""
        return OnlineSample(self, probs)

    def _buffers(self, c: int) -> _Buffers:
        layers = None
        if self.code == _EENET and not self.compact_eenet:
            if c != self.num_classes:
                raise ValueError(f"EENet scorer is for {self.num_classes} classes, got scores for {c}")
            if self._blocks is None:
                self._blocks = [_blocks_like_batch(w, wu) for (w, _, wu, _) in self.layers[: self.k - 1]]
            layers = [_Layer(w, b, wu, bu, c, self.slope, m) for (w, b, wu, bu), m in zip(self.layers, self._blocks)]
        return _Buffers(c, layers)

    def run(self, exit_logits, probs: bool = False) -> tuple[int, int]:
        """One sample's scores ``[K, C]``: returns ``(exit, prediction)``.

        ``exit_logits[k]`` is read only if exit k-1 did not stop the sample, so it may
        compute exit k on demand (the runtime's lazy exits do).
        """
        pool = self._pool[bool(probs)]
        try:
            s = pool.pop()  # atomic: concurrent callers never share a sample's buffers
            s.reset()
        except IndexError:
            s = OnlineSample(self, probs)
        step = s.step
        for j in range(self.k):
            if step(exit_logits[j]):
                pool.append(s)
                return j, s.prediction
        raise AssertionError("the last exit always stops")  # pragma: no cover

    # ------------------------------------------------------------------ a batch

    def begin(self, batch: int) -> OnlineState:
        return OnlineState(
            preds=np.full((batch, self.k), -1, dtype=np.int64),
            qhat=np.zeros((batch, self.k), dtype=np.float64),
            maxp=np.zeros((batch, self.k), dtype=np.float64),
        )

    def _generic_score(self, state: OnlineState, j: int, logits: np.ndarray, rows: np.ndarray, probs: bool) -> np.ndarray:
        """Any causal scorer: recompute its scores on the exits seen so far."""
        from eenet_cli.core.measures import exit_features

        if state.history is None:
            state.history = np.zeros((state.preds.shape[0], self.k, logits.shape[-1]), dtype=np.float32)
        state.history[rows, j] = logits
        seen = exit_features(state.history[rows, : j + 1], "probs" if probs else "logits")
        return self.seen_scores(seen, j)

    def seen_scores(self, seen, j: int) -> np.ndarray:
        """Exit ``j``'s offline scores from the features of exits 0..j only (every scorer is causal)."""
        from eenet_cli.core.policy import compute_scores

        if self.prepared is not None:
            return self.prepared.scores(seen, only=j)
        return compute_scores(self.policy["scorer"], seen)[:, j]

    def _compact_scores(self, state: OnlineState, j: int, rows: np.ndarray, p: np.ndarray, maxp, ent, votes) -> np.ndarray:
        """EENet's compact scorer at exit ``j`` for a batch: the inputs of core.eenet.exit_inputs
        from this exit's float32 probabilities and the earlier predictions, then the same
        row-exact arithmetic as offline."""
        from eenet_cli.core.eenet import compact_exit_forward

        c = p.shape[1]
        x = np.empty((len(rows), 4 + j), dtype=np.float64)
        x[:, 0] = maxp
        x[:, 1] = ent
        x[:, 2] = votes
        x[:, 3] = np.partition(p, c - 2, axis=1)[:, c - 2]
        if j:
            x[:, 4:] = np.take_along_axis(p, state.preds[rows, :j], axis=1)
        w, b, wu, bu = self.compact_layers[j]
        u, _ = compact_exit_forward(x, [state.qhat[rows, i] for i in range(j)], w, b, wu, bu, self.slope)
        state.qhat[rows, j] = _sigmoid(u)
        return u

    def step(self, state: OnlineState, j: int, logits: np.ndarray, rows: np.ndarray | None = None, probs: bool = False):
        """Exit ``j`` (0-based) for the samples ``rows`` of the batch, given their scores ``[b, C]``.

        Returns ``(stop [b] bool, prediction [b], score [b])``.
        """
        rows = np.arange(logits.shape[0]) if rows is None else rows
        if self.outputs is not None:
            logits = np.asarray(logits)
            if state.logp is None:
                state.logp = np.zeros((state.preds.shape[0], self.k, logits.shape[-1]), dtype=np.float64)
            seen = [state.logp[rows, i] for i in range(j)]
            logits = self.combined(j, logits, seen, probs)
            state.logp[rows, j] = seen[-1]
        p, pred, maxp, ent = block_measures(np.asarray(logits), "probs" if probs else "logits")
        state.preds[rows, j] = pred
        state.maxp[rows, j] = maxp
        hist = state.preds[rows, : j + 1]
        if self.kind == "maxprob":
            score = maxp
        elif self.kind == "entropy":
            score = ent
        elif self.kind == "eenet" and self.compact_eenet:
            votes = (hist[:, :, None] == hist[:, None, :]).sum(axis=2).max(axis=1) / (j + 1)
            score = self._compact_scores(state, j, rows, p, maxp, ent, votes)
        elif self.kind == "vote" or self.kind == "eenet":
            votes = (hist[:, :, None] == hist[:, None, :]).sum(axis=2).max(axis=1) / (j + 1)
            if self.kind == "vote":
                score = votes + maxp / (self.k + 1)
            else:
                w, b, wu, bu = self.layers[j]
                x = np.concatenate([p.astype(np.float64), maxp[:, None], ent[:, None], votes[:, None], state.qhat[rows, :j]], axis=1)
                h = x @ w.T + b
                h = np.where(h > 0, h, self.slope * h)
                score = h @ wu + bu
                state.qhat[rows, j] = _sigmoid(score)
        elif self.kind == "patience":
            same = hist == hist[:, -1:]
            # length of the run of equal predictions ending at exit j
            run = np.argmin(np.concatenate([same[:, ::-1], np.zeros((len(rows), 1), bool)], axis=1), axis=1)
            score = run.astype(np.float64)
            if self.tie_break:
                score = score + TIE_BREAK_SCALE * maxp
        elif j < self.k - 1 and self._thr[j] is None and self.prepared is not None:
            # an exit switched off (or one that never stops): no decision here, the sample goes on
            if state.history is None:
                state.history = np.zeros((state.preds.shape[0], self.k, logits.shape[-1]), dtype=np.float32)
            state.history[rows, j] = logits
            score = np.full(len(rows), np.nan)
        else:
            score = self._generic_score(state, j, np.asarray(logits), rows, probs)
        stop = score >= self.thresholds[j] if j < self.k - 1 else np.ones(len(rows), dtype=bool)
        return stop, pred, score


class OnlineSample:
    """One sample's decisions, exit by exit: ``step(scores_k)`` is True where it stops.

    After each step ``exit`` is the 0-based exit just decided, ``prediction`` its class and
    ``score`` its stopping score (None at the last exit, which stops every sample without
    one, and at an exit whose threshold is null for max-prob and entropy, which need none
    there). Not for sharing between threads: take one per thread (:meth:`OnlinePolicy.sample`).
    """

    __slots__ = (
        "policy", "probs", "exit", "prediction", "score",
        "_k", "_last_exit", "_code", "_thr", "_slope", "_bufs", "_counts", "_best", "_run", "_prev", "_util", "_hist",
        "_compact", "_preds", "_qs", "_la", "_tie", "_lp",
    )

    def __init__(self, policy: OnlinePolicy, probs: bool = False):
        self.policy = policy
        self.probs = bool(probs)
        self._k = policy.k
        self._last_exit = policy.k - 1
        self._code = policy.code
        self._thr = policy._thr
        self._slope = policy.slope
        self._compact = policy.compact_eenet
        self._tie = policy.tie_break
        self._bufs: _Buffers | None = None
        self._la = None
        if self._code == _LOOKAHEAD:
            from eenet_cli.core.lookahead import OnlineInputs

            self._la = OnlineInputs(policy.prepared.class_scale)
        self.reset()

    def reset(self) -> None:
        """Start a new sample (the buffers are kept)."""
        self.exit = -1
        self.prediction = -1
        self.score: float | None = None
        self._counts: dict = {}
        self._best = 0  # votes for the most common prediction so far
        self._run = 0  # consecutive exits, ending at the last one, with the same prediction
        self._prev = -1  # the last exit's prediction
        self._util = 0.0  # EENet: the last exit's pre-sigmoid utility
        self._hist: list | None = None
        self._preds: list = []  # compact EENet: every exit's prediction so far
        self._qs: list = []  # compact EENet: every exit's sigmoid utility so far, as [1] arrays
        self._lp: list = []  # combined outputs: every exit's log-probabilities so far, as [1, C] arrays
        if self._la is not None:
            self._la.reset()

    def step(self, scores) -> bool:
        """The next exit's scores ``[C]`` (logits, or probabilities if ``probs``): stop here?"""
        j = self.exit + 1
        last = self._last_exit
        if j > last:
            raise ValueError(f"all {self._k} exits have been decided; reset() starts a new sample")
        self.exit = j
        code = self._code
        if self.policy.outputs is not None:
            arr = np.asarray(scores)
            scores = self.policy.combined(j, arr[None] if arr.ndim == 1 else arr, self._lp, self.probs)[0]
        if code < 0:
            return self._step_generic(j, scores)
        t = self._thr[j]
        if t is None and code <= _ENTROPY and j < last:
            # max-prob and entropy keep no history: an exit that never stops needs nothing
            self.prediction = -1
            self.score = None
            return False
        if type(scores) is not _ndarray or scores.dtype != _F32:
            scores = np.asarray(scores, dtype=_F32)  # as block_measures' astype(float32)
        bufs = self._bufs
        c = scores.shape[-1]
        if bufs is None or bufs.c != c:
            bufs = self._bufs = self.policy._buffers(c)
        # --- probabilities, prediction, max-prob: measures.block_measures for one row
        if self.probs:
            p = scores
        else:
            z = bufs.z
            m = bufs.m  # 0-d float32 arrays: no scalar conversions in the ufunc calls
            m[()] = scores[scores.argmax()]  # max(z)
            _subtract(scores, m, z)
            e = bufs.e
            _exp(z, e)
            total = bufs.total
            _add_reduce(e, 0, None, total)  # float32 accumulation, as sum(dtype=float32)
            p = bufs.p
            _divide(e, total, p)
        cls = int(p.argmax())
        self.prediction = cls
        if self._compact:
            self._preds.append(cls)
        if code == _LOOKAHEAD:
            return self._lookahead_step(j, p, cls, bufs, t)
        if j == last:
            self.score = None
            return True
        maxp = p.item(cls)
        # --- the score
        if code == _MAXPROB:
            score = maxp
        elif code == _PATIENCE:
            self._run = run = self._run + 1 if self._prev == cls else 1
            self._prev = cls
            score = float(run) + TIE_BREAK_SCALE * maxp if self._tie else float(run)
        else:
            if code != _ENTROPY:  # vote and EENet: share of exits so far agreeing with the majority
                counts = self._counts
                n = counts.get(cls, 0) + 1
                counts[cls] = n
                if n > self._best:
                    self._best = n
                votes = self._best / (j + 1)
            if code == _VOTE:
                score = votes + maxp / (self._k + 1)
            else:
                ent = self._entropy(p, bufs)
                if code == _ENTROPY:
                    score = ent
                elif self._compact:  # EENet's compact scorer: core.eenet.compact_exit_forward for one row
                    score = self._compact_score(j, p, c, maxp, ent, votes)
                else:  # EENet's pre-sigmoid utility: core.eenet.eenet_forward for one row
                    layers = bufs.layers
                    if j:  # the previous exit's sigmoid utility, an input from this exit on
                        q = 0.5 * (1.0 + float(_tanh(0.5 * self._util)))
                        for later in layers[j:]:
                            later.xrow[c + 2 + j] = q
                    layer = layers[j]
                    xrow = layer.xrow
                    _copyto(layer.xp, p)  # float32 -> float64, as probs.astype(float64)
                    xrow[c] = maxp
                    xrow[c + 1] = ent
                    xrow[c + 2] = votes
                    _dot(layer.x, layer.wt, layer.h2)  # the batch's x @ w.T, by the matrix-product kernel
                    g = layer.grow
                    _add(layer.h2row, layer.b, g)
                    if layer.leaky_max:
                        tmp = layer.tmp
                        _multiply(g, self._slope, tmp)
                        _maximum(g, tmp, out=g)
                    else:
                        g[:] = _where(g > 0, g, self._slope * g)
                    u4 = layer.u4
                    _dot(layer.g, layer.wu, u4)  # the batch's h @ wu, by the matrix-vector kernel
                    self._util = score = u4.item(0) + layer.bu
        self.score = score
        return t is not None and score >= t

    def _entropy(self, p: np.ndarray, bufs: _Buffers) -> float:
        """Entropy confidence of this exit, as measures.block_measures computes it (bufs
        hold the softmax pass of :meth:`step`)."""
        if self.probs:
            return float(entropy_confidence(p[None, :])[0])
        # sum p log p = sum p (z - max z) - log sum exp(z - max z)
        pz = bufs.pz
        _multiply(p, bufs.z, pz)
        plogp = float(_add_reduce(pz, 0, _F64)) - float(_log(float(bufs.total)))
        ent = 1.0 + plogp / bufs.log_c
        return 0.0 if ent < 0.0 else (1.0 if ent > 1.0 else ent)  # np.clip (NaN stays NaN)

    def _lookahead_step(self, j: int, p: np.ndarray, cls: int, bufs: _Buffers, t: float | None) -> bool:
        """Lookahead at exit ``j``: this exit's inputs are added to the sample's, then its
        column is scored by the offline code (core.lookahead.LookaheadScorer.column)."""
        if j == self._last_exit:
            self.score = None
            return True
        counts = self._counts  # the vote measure, as for vote and EENet
        n = counts.get(cls, 0) + 1
        counts[cls] = n
        if n > self._best:
            self._best = n
        la = self._la
        la.add(p, cls, self._entropy(p, bufs), self._best / (j + 1))
        if t is None:
            # an exit switched off (or one that never stops): no decision here, the sample goes on
            self.prediction = -1
            self.score = None
            return False
        score = float(self.policy.prepared.column(la, j)[0])
        self.score = score
        return score >= t

    def _compact_score(self, j: int, p: np.ndarray, c: int, maxp: float, ent: float, votes: float) -> float:
        from eenet_cli.core.eenet import compact_exit_forward

        x = np.empty((1, 4 + j), dtype=np.float64)
        x[0, 0] = maxp
        x[0, 1] = ent
        x[0, 2] = votes
        x[0, 3] = np.partition(p, c - 2)[c - 2]
        if j:
            x[0, 4:] = p[self._preds[:j]]
        w, b, wu, bu = self.policy.compact_layers[j]
        u, _ = compact_exit_forward(x, self._qs, w, b, wu, bu, self._slope)
        self._qs.append(_sigmoid(u))
        return float(u[0])

    def _step_generic(self, j: int, scores) -> bool:
        """A scorer without a fast path (lookahead): its offline code on the exits seen so far.

        The sample is repeated in a 4-row block so that its matrix-vector products run by
        the same kernel as in the body of a large batch.
        """
        from eenet_cli.core.measures import exit_features

        if self._hist is None:
            self._hist = []
        self._hist.append(np.asarray(scores))
        t = self._thr[j]
        prepared = self.policy.prepared
        if t is None and j < self._last_exit and prepared is not None:
            # an exit switched off (or one that never stops): no decision, the sample goes on
            self.prediction = -1
            self.score = None
            return False
        seen = np.repeat(np.stack(self._hist)[None], 4, axis=0)
        feats = exit_features(seen, "probs" if self.probs else "logits")
        self.prediction = int(feats.preds[0, j])
        if j == self._last_exit:
            self.score = None
            return True
        score = float(self.policy.seen_scores(feats, j)[0])
        self.score = score
        return t is not None and score >= t
