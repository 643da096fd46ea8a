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

from dataclasses import dataclass

import numpy as np

_CHUNK = 4096  # rows per chunk when converting logits, to bound temporaries


def softmax(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float32, chunked over rows."""
    scores = np.asarray(scores)
    if out is None:
        out = np.empty(scores.shape, dtype=np.float32)
    for start in range(0, scores.shape[0], _CHUNK):
        block = scores[start : start + _CHUNK].astype(np.float32, copy=True)
        block -= block.max(axis=-1, keepdims=True)
        np.exp(block, out=block)
        block /= block.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
        out[start : start + _CHUNK] = block
    return out


def to_probs(scores: np.ndarray, kind: str = "logits") -> np.ndarray:
    """Class probabilities from stored scores: softmax for logits, as-is for probs."""
    if kind == "probs":
        return np.asarray(scores, dtype=np.float32)
    if kind != "logits":
        raise ValueError(f"unknown score kind {kind!r}; expected 'logits' or 'probs'")
    return softmax(scores)


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


@dataclass(frozen=True)
class ExitFeatures:
    """Everything the policies need from one set of predictions, computed once.

    ``probs`` is ``[N, K, C]`` float32; the rest are ``[N, K]``.
    """

    probs: np.ndarray
    preds: np.ndarray
    max_prob: np.ndarray
    entropy: np.ndarray
    vote: np.ndarray
    labels: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return self.probs.shape[0]

    @property
    def num_exits(self) -> int:
        return self.probs.shape[1]

    @property
    def num_classes(self) -> int:
        return self.probs.shape[2]

    @property
    def correct(self) -> np.ndarray:
        """``[N, K]`` bool: is exit k's prediction right? Needs labels."""
        if self.labels is None:
            raise ValueError("these predictions carry no labels")
        return self.preds == self.labels[:, None]

    def subset(self, rows: np.ndarray) -> "ExitFeatures":
        return ExitFeatures(
            probs=self.probs[rows],
            preds=self.preds[rows],
            max_prob=self.max_prob[rows],
            entropy=self.entropy[rows],
            vote=self.vote[rows],
            labels=None if self.labels is None else self.labels[rows],
        )


def exit_features(scores: np.ndarray, kind: str = "logits", labels: np.ndarray | None = None) -> ExitFeatures:
    """Compute probabilities, predictions and the three confidence measures once."""
    probs = to_probs(scores, kind)
    preds = probs.argmax(axis=-1).astype(np.int64)
    return ExitFeatures(
        probs=probs,
        preds=preds,
        max_prob=max_prob(probs),
        entropy=entropy_confidence(probs),
        vote=vote(preds),
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
    )
