"""EENet's scorer (eq. 8-10) in numpy: the single place utilities are computed for
thresholds and for applying a policy, so both always agree bit for bit.

Scorer JSON (``policy["scorer"]``)::

    {"type": "eenet",
     "features": ["class_probs", "max_prob", "entropy", "vote", "previous_utilities"],
     "negative_slope": 0.01,
     "exits": [{"shared_weight": [[...D_k] x H_k], "shared_bias": [...H_k],
                "utility_weight": [...H_k], "utility_bias": float,
                "assign_weight": [...H_k], "assign_bias": float}, ...K]}

Exit k (0-based) sees D_k = C + 3 + k inputs: its class probabilities, the three
confidence measures (max-prob, entropy, vote), and the sigmoid utilities q̂ of the k
earlier exits. The score compared with the thresholds is the pre-sigmoid utility.
"""

from __future__ import annotations

import numpy as np

from eenet_cli.core.measures import ExitFeatures

_CHUNK = 8192  # rows per block at most
_BLOCK_BYTES = 64 * 2**20  # working memory of one block's hidden layer and inputs


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def eenet_forward(scorer: dict, features: ExitFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Pre-sigmoid utilities and assignment logits, both ``[N, K]`` float64."""
    n, k, c = features.probs.shape
    exits = scorer["exits"]
    if len(exits) != k:
        raise ValueError(f"scorer has {len(exits)} exits, predictions have {k}")
    slope = float(scorer.get("negative_slope", 0.01))
    params = []
    for j, e in enumerate(exits):
        w = np.asarray(e["shared_weight"], dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != c + 3 + j:
            raise ValueError(f"scorer exit {j}: shared_weight must be [H, {c + 3 + j}], got {list(w.shape)}")
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
    util = np.empty((n, k), dtype=np.float64)
    assign = np.empty((n, k), dtype=np.float64)
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
