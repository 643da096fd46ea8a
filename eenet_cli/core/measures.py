"""Class scores and the confidence measures of the paper (eq. 5-7), vectorised.

Every function takes arrays shaped ``[N, K, C]`` (samples, exits, classes) or ``[N, K]``
and returns new arrays; nothing loops over samples in Python.

>>> import numpy as np
>>> p = np.array([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])   # N=1, K=2, C=3
>>> max_prob(p).tolist()
[[0.5, 1.0]]
>>> entropy_confidence(p).round(4).tolist()      # 0*log(0) counts as 0
[[0.3691, 1.0]]
>>> vote(np.array([[2, 2, 1]])).tolist()
[[1.0, 1.0, 0.6666666666666666]]
"""

from __future__ import annotations

import numpy as np

_CHUNK = 4096  # rows per chunk when converting logits, to bound temporaries


def _softmax_block(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax of a block of logits (last axis), in float32.

    Returns ``(probs, shifted, total)`` where ``shifted = z - max(z)`` and ``total`` is the
    float32 sum of ``exp(shifted)``. The single place this arithmetic is written: the
    offline features, lazily computed probabilities and the online path all call it, so they
    agree bit for bit.
    """
    z = block.astype(np.float32, copy=True)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=-1, keepdims=True, dtype=np.float32)
    e /= total
    return e, z, total


def softmax(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float32, chunked over rows."""
    scores = np.asarray(scores)
    if out is None:
        out = np.empty(scores.shape, dtype=np.float32)
    for start in range(0, scores.shape[0], _CHUNK):
        out[start : start + _CHUNK] = _softmax_block(scores[start : start + _CHUNK])[0]
    return out


def to_probs(scores: np.ndarray, kind: str = "logits") -> np.ndarray:
    """Class probabilities from stored scores: softmax for logits, as-is for probs."""
    if kind == "probs":
        return np.asarray(scores, dtype=np.float32)
    if kind != "logits":
        raise ValueError(f"unknown score kind {kind!r}; expected 'logits' or 'probs'")
    return softmax(scores)


def block_measures(block: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(probs, predictions, max-prob, entropy confidence) of a block ``[..., C]``.

    For logits the entropy comes from the softmax pass itself:
    ``sum p log p = sum p·(z - max z) - log sum exp(z - max z)``, which avoids a logarithm
    per class (and 0·log 0 never arises).
    """
    c = block.shape[-1]
    if kind == "probs":
        p = np.asarray(block, dtype=np.float32)
        ent = entropy_confidence(p)
    else:
        p, z, total = _softmax_block(block)
        plogp = (p * z).sum(axis=-1, dtype=np.float64) - np.log(total[..., 0].astype(np.float64))
        ent = np.clip(1.0 + plogp / np.log(c), 0.0, 1.0)
    pred = p.argmax(axis=-1)
    maxp = np.take_along_axis(p, pred[..., None], axis=-1)[..., 0].astype(np.float64)
    return p, pred.astype(np.int64), maxp, ent


def max_prob(probs: np.ndarray) -> np.ndarray:
    """Eq. 5: the largest class probability at each exit, ``[N, K]`` float64."""
    return probs.max(axis=-1).astype(np.float64)


def entropy_confidence(probs: np.ndarray) -> np.ndarray:
    """Eq. 6: ``1 + sum_c p log p / log C`` in [0, 1]; 1 is certain. 0·log 0 is 0."""
    num_classes = probs.shape[-1]
    if num_classes < 2:
        raise ValueError("the entropy measure needs at least 2 classes")
    out = np.empty(probs.shape[:-1], dtype=np.float64)
    flat_out = out.reshape(-1)
    flat = probs.reshape(-1, num_classes)
    for start in range(0, flat.shape[0], _CHUNK):
        p = flat[start : start + _CHUNK].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        flat_out[start : start + _CHUNK] = 1.0 + plogp.sum(axis=-1) / np.log(num_classes)
    return np.clip(out, 0.0, 1.0)


def vote(preds: np.ndarray) -> np.ndarray:
    """Eq. 7: share of exits 1..k that agree with the most common prediction so far."""
    n, k = preds.shape
    same = preds[:, :, None] == preds[:, None, :]  # [N, K, K]
    out = np.empty((n, k), dtype=np.float64)
    for j in range(k):  # loop over exits, not samples
        counts = same[:, : j + 1, : j + 1].sum(axis=2)  # votes for each earlier prediction
        out[:, j] = counts.max(axis=1) / (j + 1)
    return out


def run_length(preds: np.ndarray) -> np.ndarray:
    """How many consecutive exits, ending at k, predicted the class exit k predicts."""
    n, k = preds.shape
    out = np.ones((n, k), dtype=np.int64)
    for j in range(1, k):
        out[:, j] = np.where(preds[:, j] == preds[:, j - 1], out[:, j - 1] + 1, 1)
    return out


class ExitFeatures:
    """Everything the policies need from one set of predictions, computed once.

    ``preds``, ``max_prob``, ``entropy`` and ``vote`` are ``[N, K]``; ``probs`` (``[N, K, C]``
    float32) is computed from the stored scores only when first asked for (only EENet's
    scorer needs it), so the baselines never hold a second copy of the logits.
    """

    def __init__(self, scores, kind, preds, max_prob, entropy, vote, labels=None, rows=None):
        self._scores = scores
        self._kind = kind
        self._rows = rows
        self._probs: np.ndarray | None = None
        self.preds = preds
        self.max_prob = max_prob
        self.entropy = entropy
        self.vote = vote
        self.labels = labels

    @property
    def probs(self) -> np.ndarray:
        if self._probs is None:
            scores = self._scores if self._rows is None else self._scores[self._rows]
            self._probs = to_probs(scores, self._kind)
        return self._probs

    @property
    def num_samples(self) -> int:
        return int(self.preds.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.preds.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self._scores.shape[2])

    @property
    def correct(self) -> np.ndarray:
        """``[N, K]`` bool: is exit k's prediction right? Needs labels."""
        if self.labels is None:
            raise ValueError("these predictions carry no labels")
        return self.preds == self.labels[:, None]

    def subset(self, rows: np.ndarray) -> "ExitFeatures":
        """The features of some rows (a boolean mask or indices); probs stay lazy."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        base = rows if self._rows is None else self._rows[rows]
        out = ExitFeatures(
            self._scores, self._kind, self.preds[rows], self.max_prob[rows], self.entropy[rows], self.vote[rows],
            None if self.labels is None else self.labels[rows], base,
        )
        if self._probs is not None:
            out._probs = self._probs[rows]
        return out


def concat_features(parts: list[ExitFeatures]) -> ExitFeatures:
    """The rows of several feature sets as one (the stored scores are shared, not copied,
    when the parts come from one file)."""
    first = parts[0]
    if all(p._scores is first._scores and p._kind == first._kind for p in parts):
        scores = first._scores
        rows = np.concatenate([p._rows if p._rows is not None else np.arange(p._scores.shape[0]) for p in parts])
    else:
        scores = np.concatenate([p._scores if p._rows is None else p._scores[p._rows] for p in parts])
        rows = None
    labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return ExitFeatures(scores, first._kind, cat("preds"), cat("max_prob"), cat("entropy"), cat("vote"), labels, rows)


def exit_features(scores: np.ndarray, kind: str = "logits", labels: np.ndarray | None = None) -> ExitFeatures:
    """Predictions and the three confidence measures, in one chunked pass over the scores."""
    if kind not in ("logits", "probs"):
        raise ValueError(f"unknown score kind {kind!r}; expected 'logits' or 'probs'")
    scores = np.asarray(scores)
    n, k, _ = scores.shape
    preds = np.empty((n, k), dtype=np.int64)
    maxp = np.empty((n, k), dtype=np.float64)
    ent = np.empty((n, k), dtype=np.float64)
    step = max(1, _CHUNK // max(k, 1))
    for start in range(0, n, step):
        sl = slice(start, start + step)
        _, preds[sl], maxp[sl], ent[sl] = block_measures(scores[sl], kind)
    return ExitFeatures(
        scores, kind, preds, maxp, ent, vote(preds), None if labels is None else np.asarray(labels, dtype=np.int64)
    )
