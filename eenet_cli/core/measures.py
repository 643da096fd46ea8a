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
    p, pred, maxp, plogp, _ = _block_parts(block, kind)
    return p, pred, maxp, confidence_from_plogp(plogp, block.shape[-1])


def _block_parts(block: np.ndarray, kind: str):
    """(probs, predictions, max-prob, sum p log p, float32 softmax denominator or None) of a
    block ``[..., C]``: the arithmetic :func:`block_measures` and the compact writer share."""
    if kind == "probs":
        p = np.asarray(block, dtype=np.float32)
        plogp = _plogp_probs(p)
        total = None
    else:
        p, z, total = _softmax_block(block)
        plogp = (p * z).sum(axis=-1, dtype=np.float64) - np.log(total[..., 0].astype(np.float64))
    pred = p.argmax(axis=-1)
    maxp = np.take_along_axis(p, pred[..., None], axis=-1)[..., 0].astype(np.float64)
    return p, pred.astype(np.int64), maxp, plogp, total


def confidence_from_plogp(plogp: np.ndarray, num_classes: int) -> np.ndarray:
    """Eq. 6 from ``sum p log p`` (float64): ``1 + sum p log p / log C``, clipped to [0, 1]."""
    return np.clip(1.0 + plogp / np.log(num_classes), 0.0, 1.0)


def max_prob(probs: np.ndarray) -> np.ndarray:
    """Eq. 5: the largest class probability at each exit, ``[N, K]`` float64."""
    return probs.max(axis=-1).astype(np.float64)


def entropy_confidence(probs: np.ndarray) -> np.ndarray:
    """Eq. 6: ``1 + sum_c p log p / log C`` in [0, 1]; 1 is certain. 0·log 0 is 0."""
    num_classes = probs.shape[-1]
    if num_classes < 2:
        raise ValueError("the entropy measure needs at least 2 classes")
    return confidence_from_plogp(_plogp_probs(probs), num_classes)


def _plogp_probs(probs: np.ndarray) -> np.ndarray:
    """``sum_c p log p`` (float64, 0·log 0 = 0) of probabilities ``[..., C]``, chunked."""
    num_classes = probs.shape[-1]
    out = np.empty(probs.shape[:-1], dtype=np.float64)
    flat_out = out.reshape(-1)
    flat = probs.reshape(-1, num_classes)
    for start in range(0, flat.shape[0], _CHUNK):
        p = flat[start : start + _CHUNK].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        flat_out[start : start + _CHUNK] = plogp.sum(axis=-1)
    return out


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


COMPACT_REFUSAL = (
    "holds compact predictions (top-k scores per exit), but {what} reads full class-probability vectors; "
    "run it on the full-score file (eenet dump without --keep), or use a scorer that reads per-exit features "
    "(every method's default, EENet's compact inputs included)"
)


class LazyScores:
    """Stored scores ``[N, K, C]`` read only when first asked for (``load`` is called once)."""

    def __init__(self, load, num_classes: int):
        self._load = load
        self._value: np.ndarray | None = None
        self.num_classes = int(num_classes)

    def get(self) -> np.ndarray:
        if self._value is None:
            self._value = self._load()
        return self._value


class ExitFeatures:
    """Everything the policies need from one set of predictions, computed once.

    ``preds``, ``max_prob``, ``entropy`` and ``vote`` are ``[N, K]``; ``probs`` (``[N, K, C]``
    float32) is computed from the stored scores only when first asked for (only EENet's
    scorer needs it), so the baselines never hold a second copy of the logits. The stored
    scores are an array, a :class:`LazyScores` (read from the file on first use), or
    ``None`` for a compact file, whose ``probs`` raise one line naming why.

    ``top2_probs`` (``[N, K, 2]``: the second-largest and the largest class probability)
    and ``pred_probs`` (``[N, K, K]``: at exit i, the probability of the class exit j
    predicts) are what a scorer may read beyond the four measures; both come bit for bit
    from the same float32 softmax as ``probs``, from full and compact files alike.
    """

    def __init__(self, scores, kind, preds, max_prob, entropy, vote, labels=None, rows=None, *,
                 num_classes: int | None = None, top2=None, pred_probs=None, source: str = ""):
        self._scores = scores
        self._kind = kind
        self._rows = rows
        self._probs: np.ndarray | None = None
        self._num_classes = num_classes
        self._top2 = top2
        self._pred_probs = pred_probs
        self._source = source
        self.preds = preds
        self.max_prob = max_prob
        self.entropy = entropy
        self.vote = vote
        self.labels = labels

    @property
    def compact(self) -> bool:
        """True when no full score vectors stand behind these features (a compact file)."""
        return self._scores is None

    def _stored(self) -> np.ndarray:
        if self._scores is None:
            from eenet_cli.errors import InputError

            raise InputError(COMPACT_REFUSAL.format(what="EENet's scorer"), source=self._source or None)
        scores = self._scores.get() if isinstance(self._scores, LazyScores) else self._scores
        return scores if self._rows is None else scores[self._rows]

    @property
    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = to_probs(self._stored(), self._kind)
        return self._probs

    @property
    def top2_probs(self) -> np.ndarray:
        """``[N, K, 2]`` float32: (second-largest, largest) class probability at each exit."""
        if self._top2 is None:
            c = self.num_classes
            self._top2 = np.partition(self.probs, c - 2, axis=2)[..., c - 2 :]
        return self._top2

    @property
    def pred_probs(self) -> np.ndarray:
        """``[N, K, K]`` float32: ``[n, i, j]`` is exit i's probability of exit j's prediction."""
        if self._pred_probs is None:
            self._pred_probs = np.take_along_axis(self.probs, np.broadcast_to(self.preds[:, None, :], (self.num_samples, self.num_exits, self.num_exits)), axis=2)
        return self._pred_probs

    @property
    def num_samples(self) -> int:
        return int(self.preds.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.preds.shape[1])

    @property
    def num_classes(self) -> int:
        if self._num_classes is not None:
            return int(self._num_classes)
        if isinstance(self._scores, LazyScores):
            return self._scores.num_classes
        return int(self._scores.shape[2])

    @property
    def correct(self) -> np.ndarray:
        """``[N, K]`` bool: is exit k's prediction right? Needs labels."""
        if self.labels is None:
            raise ValueError("these predictions carry no labels")
        return self.preds == self.labels[:, None]

    def _like(self, scores, rows, take, **kw) -> "ExitFeatures":
        return ExitFeatures(
            scores, self._kind, take(self.preds), take(self.max_prob), take(self.entropy), take(self.vote),
            None if self.labels is None else take(self.labels), rows, num_classes=self.num_classes,
            top2=None if self._top2 is None else take(self._top2),
            pred_probs=None if self._pred_probs is None else take(self._pred_probs), source=self._source, **kw,
        )

    def subset(self, rows: np.ndarray) -> "ExitFeatures":
        """The features of some rows (a boolean mask or indices); probs stay lazy."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        base = None if self._scores is None else (rows if self._rows is None else self._rows[rows])
        out = self._like(self._scores, base, lambda a: a[rows])
        if self._probs is not None:
            out._probs = self._probs[rows]
        return out


def concat_features(parts: list[ExitFeatures]) -> ExitFeatures:
    """The rows of several feature sets as one (the stored scores are shared, not copied,
    when the parts come from one file)."""
    first = parts[0]
    if first._scores is None or any(p._scores is None for p in parts):
        if not all(p._scores is None for p in parts):
            raise ValueError("cannot join features of a compact file with those of a full one")
        scores, rows = None, None
    elif all(p._scores is first._scores and p._kind == first._kind for p in parts):
        scores = first._scores
        rows = np.concatenate([p._rows if p._rows is not None else np.arange(p.num_samples) for p in parts])
    elif all(isinstance(p._scores, np.ndarray) for p in parts):
        scores = np.concatenate([p._scores if p._rows is None else p._scores[p._rows] for p in parts])
        rows = None
    else:
        scores = LazyScores(lambda: np.concatenate([p._stored() for p in parts]), first.num_classes)
        rows = None
    labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    extra = {}
    for name in ("_top2", "_pred_probs"):
        if all(getattr(p, name) is not None for p in parts):
            extra[name[1:] if name == "_pred_probs" else "top2"] = cat(name)
    return ExitFeatures(scores, first._kind, cat("preds"), cat("max_prob"), cat("entropy"), cat("vote"), labels, rows,
                        num_classes=first.num_classes, source=first._source, **extra)


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


# --------------------------------------------------------------------------- streamed and compact features


class FeatureBlocks:
    """Per-exit features of a file read block by block: ``add`` fills rows in place, then
    ``features`` returns them. Holds ``[N, K]`` measures plus ``[N, K, 2]`` and
    ``[N, K, K]`` float32 probabilities: memory grows with N·K², never with C."""

    def __init__(self, n: int, k: int):
        self.preds = np.empty((n, k), dtype=np.int64)
        self.max_prob = np.empty((n, k), dtype=np.float64)
        self.plogp = np.empty((n, k), dtype=np.float64)
        self.top2 = np.empty((n, k, 2), dtype=np.float32)
        self.pred_probs = np.empty((n, k, k), dtype=np.float32)

    def add_full(self, start: int, block: np.ndarray, kind: str) -> None:
        """Rows ``start:start+len(block)`` from full scores ``[m, K, C]`` (float32), in
        chunks of rows so the temporaries stay small."""
        m, k, c = block.shape
        step = max(1, _CHUNK // max(k, 1))
        for s in range(0, m, step):
            b = block[s : s + step]
            p, pred, maxp, plogp, _ = _block_parts(b, kind)
            sl = slice(start + s, start + s + b.shape[0])
            self.preds[sl], self.max_prob[sl], self.plogp[sl] = pred, maxp, plogp
            self.top2[sl] = np.partition(p, c - 2, axis=2)[..., c - 2 :]
            self.pred_probs[sl] = np.take_along_axis(p, np.broadcast_to(pred[:, None, :], (b.shape[0], k, k)), axis=2)

    def add_compact(self, start: int, top_scores: np.ndarray, top_classes: np.ndarray, logsumexp: np.ndarray,
                    entropy_nats: np.ndarray, pred_scores: np.ndarray, kind: str) -> None:
        """Rows from compact columns (docs/spec.md §2.1.1); the arithmetic is that of the
        full path, so every value equals the one computed from the full scores."""
        sl = slice(start, start + top_scores.shape[0])
        self.preds[sl] = top_classes[..., 0]
        self.plogp[sl] = -entropy_nats
        if kind == "probs":
            self.max_prob[sl] = top_scores[..., 0].astype(np.float64)
            self.top2[sl] = top_scores[..., 1::-1]
            self.pred_probs[sl] = pred_scores
            return
        top = top_scores.max(axis=-1)  # the largest logit is always among the stored ones
        total = np.exp(logsumexp - top.astype(np.float64)).astype(np.float32)  # the float32 softmax denominator, exactly
        self.max_prob[sl] = (np.float32(1.0) / total).astype(np.float64)
        shifted = np.ascontiguousarray(top_scores[..., 1::-1] - top[..., None])
        self.top2[sl] = np.exp(shifted) / total[..., None]
        shifted = np.ascontiguousarray(pred_scores - top[..., None])
        self.pred_probs[sl] = np.exp(shifted) / total[..., None]

    def features(self, kind: str, num_classes: int, labels, scores=None, source: str = "") -> ExitFeatures:
        return ExitFeatures(
            scores, kind, self.preds, self.max_prob, confidence_from_plogp(self.plogp, num_classes), vote(self.preds),
            labels, num_classes=num_classes, top2=self.top2, pred_probs=self.pred_probs, source=source,
        )


def compact_block(block: np.ndarray, kind: str, top_k: int, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The compact columns (docs/spec.md §2.1.1) of full scores ``[m, K, C]`` float32.

    ``top_classes`` are the ``top_k`` classes in the order of the float32 softmax
    probability, then class index (so ``top_classes[..., 0]`` is the full file's
    prediction, ties included), with the largest logit always among them;
    ``top_scores`` their stored scores; ``logsumexp`` is ``max + log(sum exp(z - max))``
    in float64 from the float32 sum; ``entropy`` is ``-sum p log p`` in nats;
    ``pred_scores[n, i, j]`` is exit i's score of exit j's predicted class; and
    ``label_score`` exit k's score of the label.
    """
    m, k, c = block.shape
    if not 2 <= top_k <= c:
        raise ValueError(f"top-k must be between 2 and the number of classes ({c}), got {top_k}")
    out = {
        "top_scores": np.empty((m, k, top_k), np.float32), "top_classes": np.empty((m, k, top_k), np.int32),
        "logsumexp": np.empty((m, k), np.float64), "entropy": np.empty((m, k), np.float64),
        "pred_scores": np.empty((m, k, k), np.float32),
    }
    if labels is not None:
        out["label_score"] = np.empty((m, k), np.float32)
    step = max(1, (1 << 21) // max(1, k * c))
    for s in range(0, m, step):
        b = np.asarray(block[s : s + step], dtype=np.float32)
        r = b.shape[0]
        sl = slice(s, s + r)
        p, pred, _, plogp, total = _block_parts(b, kind)
        kth = np.partition(p, c - top_k, axis=-1)[..., c - top_k, None]
        above = p > kth
        tied = p == kth
        need = top_k - above.sum(axis=-1, keepdims=True)
        chosen = above | (tied & (np.cumsum(tied, axis=-1) <= need))  # ties at the cut: lowest classes first
        idx = np.nonzero(chosen.reshape(-1, c))[1].reshape(r, k, top_k)  # ascending class within a row
        order = np.argsort(-np.take_along_axis(p, idx, axis=-1), axis=-1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=-1)
        if kind == "logits":  # more than top_k classes tie at the top: keep the largest logit too
            big = b.argmax(axis=-1)
            missing = ~(idx == big[..., None]).any(axis=-1)
            idx[..., -1] = np.where(missing, big, idx[..., -1])
        out["top_classes"][sl] = idx
        out["top_scores"][sl] = np.take_along_axis(b, idx, axis=-1)
        if kind == "logits":
            out["logsumexp"][sl] = b.max(axis=-1).astype(np.float64) + np.log(total[..., 0].astype(np.float64))
        else:
            out["logsumexp"][sl] = 0.0
        out["entropy"][sl] = -plogp
        out["pred_scores"][sl] = np.take_along_axis(b, np.broadcast_to(pred[:, None, :], (r, k, k)), axis=-1)
        if labels is not None:
            lab = np.asarray(labels[sl], dtype=np.int64)
            out["label_score"][sl] = np.take_along_axis(b, np.broadcast_to(lab[:, None, None], (r, k, 1)), axis=-1)[..., 0]
    return out
