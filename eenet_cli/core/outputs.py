"""Combined exit outputs: exit k may predict with a weighted geometric mean of the class
probabilities of exits 1..k instead of its own.

A later exit of a multi-exit network often errs where an earlier one was right; pooling
their probabilities can lift the later exit's accuracy (docs/outputs.md has the numbers).
The combination for exit k is log-linear:

    z_k = sum_{i <= k} w_{k,i} · log p_i          (w_{k,i} >= 0)

and exit k predicts ``softmax(z_k)``. The weights are fitted on validation rows by
minimising the log loss (projected Newton, float64). Which exits use it:

- ``own``: none (the model's own heads; no ``outputs`` block in the policy);
- ``combined``: every exit after the first;
- ``auto``: an exit whose combination beats its own head on held-out folds of the
  validation rows (3 folds: weights fitted on 2, hits counted on the third) by more than
  :data:`GUARD` standard errors of the paired difference.

The policy carries the weights (docs/spec.md §2.4, ``outputs``); applying it needs numpy
alone: :func:`combine` rebuilds the features with the combined scores, and every scorer,
threshold and figure then reads them as it reads a model's own exits. Combined outputs
need the full score vectors: a compact file (docs/spec.md §2.1.1) has only summaries, so
``combined`` is refused there and ``auto`` keeps the own outputs.

>>> import numpy as np
>>> from eenet_cli.core.measures import exit_features
>>> f = exit_features(np.array([[[2.0, 0.0], [0.0, 1.0]]]), "logits", np.array([0]))
>>> block = {"type": "geometric", "version": 1, "exits": [None, {"weights": [1.0, 0.5]}]}
>>> combine(f, block).preds.tolist()   # exit 2 alone says class 1; pooled with exit 1, class 0
[[0, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eenet_cli.core.measures import ExitFeatures, exit_features
from eenet_cli.core.thresholds import wins_beyond_noise
from eenet_cli.errors import InputError

OUTPUTS_TYPE = "geometric"
OUTPUTS_VERSION = 1
MODES = ("own", "combined", "auto")
LOG_FLOOR = -50.0  # log-probabilities are floored here (a probability of 0 stays finite)
FOLDS = 3
GUARD = 1.0  # standard errors of the paired held-out difference a combination must win by
MAX_FIT_ELEMENTS = 8_000_000  # rows x exits x classes one weight fit holds at most (seeded row sample beyond)
NEWTON_STEPS = 50
RIDGE = 1e-8  # per row, on the Newton system only (keeps it solvable when exits agree exactly)
_CHUNK_ELEMENTS = 4_000_000

COMPACT_REFUSAL = ("combined exit outputs need every exit's full score vector, and this file is compact "
                   "(docs/spec.md §2.1.1); use --outputs own, or dump the predictions without --compact")


def check_mode(mode, field: str = "--outputs") -> str:
    """``mode`` when it is one of :data:`MODES`, else one line naming them."""
    if mode not in MODES:
        raise InputError(f"expected one of {', '.join(MODES)}, got {mode!r}", field=field)
    return mode


def log_probs(scores: np.ndarray, kind: str) -> np.ndarray:
    """``[..., C]`` float64 log-probabilities of stored scores (logits or probabilities),
    floored at :data:`LOG_FLOOR`."""
    s = np.asarray(scores, dtype=np.float64)
    if kind == "probs":
        with np.errstate(divide="ignore"):
            out = np.log(s)
    else:
        m = s.max(axis=-1, keepdims=True)
        out = s - m
        out -= np.log(np.exp(out).sum(axis=-1, keepdims=True))
    return np.maximum(out, LOG_FLOOR)


def pooled(logp: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i · logp[i]`` in float64, accumulated in exit order (the online path adds
    the same terms in the same order, so both give the same bits)."""
    z = np.zeros_like(logp[0])
    for w, lp in zip(weights, logp):
        z += float(w) * lp
    return z


def as_kind(z: np.ndarray, kind: str, dtype) -> np.ndarray:
    """Combined scores ``z`` as stored scores of ``kind``: logits as they are, probabilities
    through a float64 softmax."""
    if kind == "probs":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        z = e / e.sum(axis=-1, keepdims=True)
    return z.astype(dtype, copy=False)


def combined_exits(block: dict | None) -> list[int]:
    """0-based exits whose outputs the block combines."""
    if not block:
        return []
    return [k for k, e in enumerate(block["exits"]) if e is not None]


def describe(block: dict | None) -> str:
    """``own``, or the 1-based exits that use combined outputs (``combined: exits 3, 4``)."""
    ks = combined_exits(block)
    return "own" if not ks else "combined: exit" + ("s " if len(ks) > 1 else " ") + ", ".join(str(k + 1) for k in ks)


def combine(features: ExitFeatures, block: dict | None) -> ExitFeatures:
    """The features of the same rows with the block's combined outputs in place of the own
    ones (exits the block leaves ``null`` keep their stored scores bit for bit)."""
    ks = combined_exits(block)
    if not ks:
        return features
    if features.compact:
        raise InputError(COMPACT_REFUSAL, source=features._source or None, field="outputs")
    stored = features._stored()
    kind = features._kind
    n, k_all, c = stored.shape
    out = np.array(stored, copy=True)
    step = max(1, _CHUNK_ELEMENTS // max(k_all * c, 1))
    for start in range(0, n, step):
        sl = slice(start, start + step)
        lp = [log_probs(stored[sl, i], kind) for i in range(k_all)]
        for k in ks:
            out[sl, k] = as_kind(pooled(lp[: k + 1], block["exits"][k]["weights"]), kind, out.dtype)
    return exit_features(out, kind, features.labels)


def attach_outputs(policy: dict, block: dict | None) -> dict:
    """Put the block in a policy fitted on the features it combines, with the policy format
    version that carries it (docs/spec.md §2.4)."""
    from eenet_cli.core.policy import POLICY_OUTPUTS_VERSION

    if block is not None:
        policy["outputs"] = block
        policy["version"] = max(int(policy.get("version", 1)), POLICY_OUTPUTS_VERSION)
    return policy


# --------------------------------------------------------------------------- fitting


def _fit_weights(lp: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Non-negative weights ``[m]`` minimising the mean log loss of ``softmax(sum_i w_i lp[i])``
    (``lp`` is ``[m, N, C]``, exit-major, so that every product below is one BLAS call), by
    projected Newton steps with backtracking, from ``start`` or ``w = (0, .., 0, 1)`` (the own head)."""
    m, n, c = lp.shape
    w = np.zeros(m)
    w[-1] = 1.0
    if start is not None:
        w = np.maximum(np.asarray(start, dtype=np.float64), 0.0)

    def pooled_rows(block, w):
        k, r, _ = block.shape
        z = (w @ block.reshape(k, -1)).reshape(r, -1)  # [r, C]: sum_i w_i block[i]
        z -= z.max(axis=1, keepdims=True)
        return z

    def loss(w):
        z = pooled_rows(lp, w)
        return float(np.log(np.exp(z).sum(axis=1)).sum() - z[np.arange(n), y].sum()) / max(n, 1)

    cur = loss(w)
    step = max(1, _CHUNK_ELEMENTS // max(m * c, 1))
    for _ in range(NEWTON_STEPS):
        g = np.zeros(m)
        h = np.zeros((m, m))
        for start in range(0, n, step):
            block = np.ascontiguousarray(lp[:, start : start + step])
            r = block.shape[1]
            p = np.exp(pooled_rows(block, w))
            p /= p.sum(axis=1, keepdims=True)
            e = (block * p).sum(axis=2).T  # [r, m]: E_p[log p_i]
            g += (e - block[:, np.arange(r), y[start : start + r]].T).sum(axis=0)
            a = (block * np.sqrt(p)).reshape(m, -1)
            h += a @ a.T - e.T @ e
        g /= n
        h /= n
        h[np.diag_indices(m)] += RIDGE
        # variables held at the bound with a gradient pushing outwards stay there
        free = ~((w <= 0.0) & (g > 0.0))
        d = np.zeros(m)
        try:
            d[free] = np.linalg.solve(h[np.ix_(free, free)], g[free])
        except np.linalg.LinAlgError:
            d[free] = g[free]
        t, improved, gain = 1.0, False, 0.0
        for _ in range(30):
            trial = np.maximum(w - t * d, 0.0)
            if trial.any():
                new = loss(trial)
                if new < cur - 1e-12 * max(abs(cur), 1.0):
                    gain = cur - new
                    w, cur, improved = trial, new, True
                    break
            t *= 0.5
        if not improved or gain < 1e-10 * max(abs(cur), 1.0):
            break
    return w


def _sample_rows(n: int, m: int, c: int, seed: int, salt: int) -> np.ndarray:
    cap = max(200, MAX_FIT_ELEMENTS // max(m * c, 1))
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng([int(seed), 41, int(salt)]).choice(n, cap, replace=False))


def fit_outputs(features: ExitFeatures, mode: str = "auto", *, seed: int = 0) -> dict | None:
    """The ``outputs`` block for ``mode`` (see the module docstring), or None for the own
    outputs. The block's ``fit`` records, per exit, the held-out accuracy of the own head
    and of the combination (``auto``), and what was chosen."""
    check_mode(mode)
    if mode == "own" or features.num_exits < 2:
        return None
    if features.compact:
        if mode == "combined":
            raise InputError(COMPACT_REFUSAL, source=features._source or None, field="--outputs")
        return None
    if features.labels is None:
        raise InputError("combined exit outputs are fitted on labelled validation rows; these have no labels",
                         field="--outputs")
    stored = features._stored()
    kind = features._kind
    y = np.asarray(features.labels, dtype=np.int64)
    n, k_all, c = stored.shape
    own_right = features.correct
    exits: list = [None]
    info: list = [{"exit": 1, "chosen": "own"}]
    folds = np.random.default_rng([int(seed), 43]).permutation(n) % FOLDS if n >= 2 * FOLDS else None
    for k in range(1, k_all):
        rows = _sample_rows(n, k + 1, c, seed, k)
        lp = np.stack([log_probs(stored[rows, i], kind) for i in range(k + 1)], axis=0)  # [k+1, n, C]
        entry: dict = {"exit": k + 1}
        use = mode == "combined"
        if mode == "auto":
            if folds is None:
                entry["chosen"] = "own"
                entry["reason"] = f"fewer than {2 * FOLDS} validation rows"
                exits.append(None)
                info.append(entry)
                continue
            f_rows = folds[rows]
            diff = np.zeros(rows.size)
            fold_w = []
            for f in range(FOLDS):
                tr, te = f_rows != f, f_rows == f
                if not te.any() or not tr.any():
                    continue
                w = _fit_weights(lp[:, tr], y[rows][tr])
                fold_w.append(w)
                held = lp[:, te]
                pred = (w @ held.reshape(k + 1, -1)).reshape(held.shape[1], c).argmax(axis=1)
                diff[te] = (pred == y[rows][te]).astype(np.float64) - own_right[rows[te], k]
            entry["heldout_own_accuracy"] = float(own_right[rows, k].mean())
            entry["heldout_combined_accuracy"] = float(own_right[rows, k].mean() + diff.mean())
            use = wins_beyond_noise(diff, GUARD)
        if use:
            w = _fit_weights(lp, y[rows], np.mean(fold_w, axis=0) if mode == "auto" and fold_w else None)
            exits.append({"weights": [float(v) for v in w]})
            entry["chosen"] = "combined"
        else:
            exits.append(None)
            entry["chosen"] = "own"
        info.append(entry)
    if all(e is None for e in exits):
        return None
    return {"type": OUTPUTS_TYPE, "version": OUTPUTS_VERSION, "exits": exits,
            "fit": {"mode": mode, "folds": FOLDS, "guard_se": GUARD, "rows": int(n), "exits": info}}


def validate_outputs(block, num_exits: int) -> str | None:
    """One line saying what is wrong with a policy's ``outputs`` block, or None."""
    if not isinstance(block, dict):
        return "expected an object with type, version and exits"
    if block.get("type") != OUTPUTS_TYPE:
        return f"unknown outputs type {block.get('type')!r}; expected {OUTPUTS_TYPE!r}"
    v = block.get("version")
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= OUTPUTS_VERSION:
        return f"outputs version {v!r} is not one this eenet reads (1..{OUTPUTS_VERSION})"
    unknown = sorted(set(block) - {"type", "version", "exits", "fit"})
    if unknown:
        return f"unknown outputs key(s) {unknown}"
    exits = block.get("exits")
    if not isinstance(exits, list) or len(exits) != num_exits:
        return f"expected outputs.exits to list {num_exits} exits"
    if exits and exits[0] is not None:
        return "exit 1 has nothing to combine with: outputs.exits[0] must be null"
    for k, e in enumerate(exits):
        if e is None:
            continue
        w = e.get("weights") if isinstance(e, dict) else None
        if not isinstance(w, list) or len(w) != k + 1:
            return f"outputs.exits[{k}] must be null or an object with {k + 1} weights"
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) or x < 0 for x in w):
            return f"outputs.exits[{k}].weights must be finite numbers >= 0"
        if not any(x > 0 for x in w):
            return f"outputs.exits[{k}].weights are all 0"
    return None
