"""Seeded synthetic multi-exit predictions for tests and benchmarks.

Each sample has a true class and a difficulty. Exit k sees a class signal that grows
with depth and shrinks with difficulty, plus noise that is partly shared across exits
(so exits agree and disagree the way real ones do). Optionally each class gets its own
temperature, so that samples predicted as some classes are systematically over-confident
and others under-confident: max-prob then ranks samples poorly across classes, which is
exactly what a learned, class-aware exit policy can fix.

>>> d = make_predictions(num_samples=200, num_exits=3, num_classes=10, seed=0)
>>> d.logits.shape, d.logits.dtype, d.labels.shape
((200, 3, 10), dtype('float32'), (200,))
>>> bool((d.logits == make_predictions(num_samples=200, num_exits=3, num_classes=10, seed=0).logits).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SyntheticPredictions:
    logits: np.ndarray  # [N, K, C] float32
    labels: np.ndarray  # [N] int64
    split: np.ndarray  # [N] str: "val" / "test"
    costs: list[float]
    unit: str
    meta: dict = field(default_factory=dict)

    def exit_accuracy(self) -> list[float]:
        return (self.logits.argmax(-1) == self.labels[:, None]).mean(0).tolist()


def make_predictions(
    num_samples: int = 4000,
    num_exits: int = 4,
    num_classes: int = 10,
    *,
    seed: int = 0,
    miscalibration: float = 0.0,
    difficulty_spread: float = 1.0,
    shared_noise: float = 0.6,
    signal: float = 4.0,
    val_fraction: float = 0.5,
    costs: list[float] | None = None,
    unit: str = "ms",
) -> SyntheticPredictions:
    """Synthetic logits ``[N, K, C]`` with labels, a val/test split and costs.

    ``miscalibration`` (0 = none, 1 = strong) sets how far per-class temperatures stray from 1:
    each class gets a temperature ``exp(u)``, ``u ~ U(-m·ln 4, m·ln 4)``, applied to the
    logits of samples predicted as that class.
    """
    if not 1 <= num_exits <= 16 or num_classes < 2:
        raise ValueError("need 1-16 exits and at least 2 classes")
    rng = np.random.default_rng(seed)
    n, k, c = num_samples, num_exits, num_classes
    labels = rng.integers(0, c, size=n)
    difficulty = rng.beta(2.0, 2.0, size=n) * difficulty_spread + (1 - difficulty_spread) * 0.5
    # depth profile: early exits see much less of the signal
    depth = np.linspace(0.35, 1.0, k) ** 1.2
    logits = np.empty((n, k, c), dtype=np.float32)
    common = rng.standard_normal((n, c), dtype=np.float32)
    temps = np.exp(rng.uniform(-1.0, 1.0, size=c) * miscalibration * np.log(4.0)).astype(np.float32)
    rows = np.arange(n)
    for j in range(k):
        z = np.sqrt(shared_noise) * common + np.sqrt(1 - shared_noise) * rng.standard_normal((n, c), dtype=np.float32)
        z[rows, labels] += (signal * depth[j] * (1.5 - difficulty)).astype(np.float32)
        if miscalibration > 0:
            z *= temps[z.argmax(axis=1)][:, None]
        logits[:, j] = z
    split = np.where(rng.random(n) < val_fraction, "val", "test")
    if costs is None:
        costs = [round(1.0 + 3.0 * j / max(k - 1, 1), 6) for j in range(k)]
    return SyntheticPredictions(
        logits=logits,
        labels=labels.astype(np.int64),
        split=split,
        costs=list(costs),
        unit=unit,
        meta={"seed": seed, "miscalibration": miscalibration, "generator": "eenet_cli.synthetic"},
    )
