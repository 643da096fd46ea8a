"""Applying a policy online, one exit at a time (Algorithm 2), with numpy alone.

The offline :func:`~eenet_cli.core.policy.apply_to_features` sees every exit's scores at
once; a deployed model only has the exits it has run. :class:`OnlinePolicy` makes the same
decision from exits 1..k only — every scorer is causal — using the same numerical steps as
the offline path, so both stop every sample at the same exit.

>>> import numpy as np
>>> policy = {"num_exits": 2, "num_classes": 3, "thresholds": [0.9, None], "scorer": {"type": "maxprob"}}
>>> OnlinePolicy(policy).run(np.array([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
(0, 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eenet_cli.core.measures import block_measures, entropy_confidence


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class OnlineState:
    """Per-sample history of a batch: predictions and EENet utilities of exits run so far."""

    preds: np.ndarray  # [B, K] int64, -1 where not run
    qhat: np.ndarray  # [B, K] float64 sigmoid utilities (EENet only)
    maxp: np.ndarray  # [B, K] float64 max-prob (vote tie-break)
    history: np.ndarray | None = None  # [B, K, C] scores seen, for scorers without a fast path


class OnlinePolicy:
    """A policy dict prepared for repeated online decisions."""

    def __init__(self, policy: dict):
        self.policy = policy
        self.k = int(policy["num_exits"])
        self.kind = policy["scorer"]["type"]
        thr = policy["thresholds"]
        self.thresholds = [np.inf if t is None else float(t) for t in thr[:-1]] + [-np.inf]
        self.slope = float(policy["scorer"].get("negative_slope", 0.01))
        self.layers = []
        if self.kind == "eenet":
            for e in policy["scorer"]["exits"]:
                self.layers.append(
                    (
                        np.asarray(e["shared_weight"], dtype=np.float64),
                        np.asarray(e["shared_bias"], dtype=np.float64),
                        np.asarray(e["utility_weight"], dtype=np.float64),
                        float(e["utility_bias"]),
                    )
                )

    FAST = ("maxprob", "entropy", "vote", "patience", "eenet")

    def begin(self, batch: int) -> OnlineState:
        return OnlineState(
            preds=np.full((batch, self.k), -1, dtype=np.int64),
            qhat=np.zeros((batch, self.k), dtype=np.float64),
            maxp=np.zeros((batch, self.k), dtype=np.float64),
        )

    def _generic_score(self, state: OnlineState, j: int, logits: np.ndarray, rows: np.ndarray, probs: bool) -> np.ndarray:
        """Any causal scorer: recompute its scores on the exits seen so far."""
        from eenet_cli.core.measures import exit_features
        from eenet_cli.core.policy import compute_scores

        if state.history is None:
            state.history = np.zeros((state.preds.shape[0], self.k, logits.shape[-1]), dtype=np.float32)
        state.history[rows, j] = logits
        seen = exit_features(state.history[rows, : j + 1], "probs" if probs else "logits")
        return compute_scores(self.policy["scorer"], seen)[:, j]

    def step(self, state: OnlineState, j: int, logits: np.ndarray, rows: np.ndarray | None = None, probs: bool = False):
        """Exit ``j`` (0-based) for the samples ``rows`` of the batch, given their scores ``[b, C]``.

        Returns ``(stop [b] bool, prediction [b], score [b])``.
        """
        rows = np.arange(logits.shape[0]) if rows is None else rows
        p, pred, maxp, ent = block_measures(np.asarray(logits), "probs" if probs else "logits")
        state.preds[rows, j] = pred
        state.maxp[rows, j] = maxp
        hist = state.preds[rows, : j + 1]
        if self.kind == "maxprob":
            score = maxp
        elif self.kind == "entropy":
            score = ent
        elif self.kind in ("vote", "eenet"):
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
        else:
            score = self._generic_score(state, j, np.asarray(logits), rows, probs)
        stop = score >= self.thresholds[j] if j < self.k - 1 else np.ones(len(rows), dtype=bool)
        return stop, pred, score

    def run(self, exit_logits: np.ndarray, probs: bool = False) -> tuple[int, int]:
        """One sample's scores ``[K, C]``: returns ``(exit, prediction)``.

        A lean single-sample path (no batch bookkeeping) with the same arithmetic as the
        offline path; in real use exit k's scores are computed only if exit k-1 did not stop.
        """
        if self.kind not in self.FAST:
            state = self.begin(1)
            for j in range(self.k):
                stop, pred, _ = self.step(state, j, exit_logits[j : j + 1], probs=probs)
                if stop[0]:
                    return j, int(pred[0])
        preds: list[int] = []
        qhat: list[float] = []
        log_c = np.log(exit_logits.shape[-1])
        for j in range(self.k):
            z = np.array(exit_logits[j], dtype=np.float32)
            if probs:
                p = z
                ent = None
            else:  # the arithmetic of measures.block_measures, for one row
                z -= z.max()
                e = np.exp(z)
                total = e.sum(dtype=np.float32)
                p = e / total
                ent = None
            c = int(p.argmax())
            preds.append(c)
            if j == self.k - 1:
                return j, c
            maxp = float(p[c])
            kind = self.kind
            if kind == "maxprob":
                score = maxp
            elif kind == "patience":
                run = 1
                while run <= j and preds[j - run] == c:
                    run += 1
                score = float(run)
            else:
                votes = max(preds.count(v) for v in set(preds)) / (j + 1)
                if kind == "vote":
                    score = votes + maxp / (self.k + 1)
                else:
                    p64 = p.astype(np.float64)
                    if probs:
                        ent = float(entropy_confidence(p[None, :])[0])
                    else:
                        plogp = float((p * z).sum(dtype=np.float64)) - float(np.log(np.float64(total)))
                        ent = min(max(1.0 + plogp / log_c, 0.0), 1.0)
                    if kind == "entropy":
                        score = ent
                    else:
                        w, b, wu, bu = self.layers[j]
                        x = np.concatenate([p64, (maxp, ent, votes), qhat])
                        h = w @ x + b
                        h = np.where(h > 0, h, self.slope * h)
                        score = float(h @ wu + bu)
                        qhat.append(0.5 * (1.0 + np.tanh(0.5 * score)))
            if score >= self.thresholds[j]:
                return j, c
        raise AssertionError("the last exit always stops")  # pragma: no cover
