"""Seeded stratified splits of rows, in numpy alone (independent of scikit-learn's
version): by named part sizes (the built-in digits data, the shipped samples) or by a
share of each class (``evaluate --val-fraction``)."""

from __future__ import annotations

import numpy as np

from eenet_cli.errors import InputError


def stratified_split(labels: np.ndarray, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into parts of the given sizes.

    Pure numpy (independent of scikit-learn's version): shuffle each class, deal its
    members to the parts in proportion to their sizes (largest remainders), then shuffle
    inside each part. Returns sorted-free index arrays.
    """
    labels = np.asarray(labels)
    n = labels.size
    names = list(sizes)
    total = sum(sizes.values())
    if total != n:
        raise InputError(f"split sizes add up to {total}, expected {n}")
    rng = np.random.default_rng(seed)
    frac = np.array([sizes[k] for k in names], dtype=np.float64) / n
    classes = np.unique(labels)
    per_class = {}
    want = np.zeros((classes.size, len(names)), dtype=np.int64)
    for i, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        per_class[c] = idx
        raw = idx.size * frac
        want[i] = np.floor(raw)
    # give the leftover samples of each part to the classes with the largest remainders
    for j, name in enumerate(names):
        short = sizes[name] - want[:, j].sum()
        spare = np.array([per_class[c].size - want[i].sum() for i, c in enumerate(classes)])
        rem = np.array([per_class[c].size * frac[j] - want[i, j] for i, c in enumerate(classes)])
        order = np.lexsort((np.arange(classes.size), -rem))
        for i in order:
            if short <= 0:
                break
            if spare[i] > 0:
                want[i, j] += 1
                spare[i] -= 1
                short -= 1
    out: dict[str, list] = {k: [] for k in names}
    for i, c in enumerate(classes):
        idx = per_class[c]
        at = 0
        for j, name in enumerate(names):
            out[name].append(idx[at : at + want[i, j]])
            at += want[i, j]
    result = {}
    for name in names:
        part = np.concatenate(out[name]) if out[name] else np.empty(0, np.int64)
        rng.shuffle(part)
        result[name] = part.astype(np.int64)
    return result


def stratified_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: ``fraction`` of each class, seeded."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):  # loop over classes, not samples
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        mask[idx[: int(round(fraction * idx.size))]] = True
    return mask
