"""Tiny multi-exit models and datasets, named by import strings in the tests.

``fixtures_models.tiny_models:tiny_staged`` and friends (``tests/`` is on ``sys.path``
under pytest; subprocesses get it through ``PYTHONPATH``). Everything is seeded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IN_FEATURES = 6
NUM_CLASSES = 3


class TinyStaged(nn.Module):
    """Staged: stage k is Linear+ReLU (growing work per stage), head k is Linear."""

    def __init__(self, num_exits: int = 3, hidden: int = 16, in_features: int = IN_FEATURES, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.Linear(in_features if k == 0 else hidden, hidden), nn.ReLU(), *[m for _ in range(k) for m in (nn.Linear(hidden, hidden), nn.ReLU())]) for k in range(num_exits)]
        )
        self.heads = nn.ModuleList([nn.Linear(hidden, num_classes) for _ in range(num_exits)])

    def forward(self, x):
        out, h = [], x
        for s, hd in zip(self.stages, self.heads):
            h = s(h)
            out.append(hd(h))
        return out


class TinyAllExits(nn.Module):
    """All-exits only: forward returns a tuple of K logits, no stages/heads."""

    def __init__(self, num_exits: int = 2, in_features: int = IN_FEATURES, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.body = nn.ModuleList([nn.Linear(in_features, num_classes) for _ in range(num_exits)])

    def forward(self, x):
        return tuple(lin(x * (k + 1)) for k, lin in enumerate(self.body))


class SingleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x):
        return self.lin(x)


def tiny_staged(num_exits: int = 3, hidden: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyStaged(num_exits=num_exits, hidden=hidden)


def tiny_all_exits(num_exits: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyAllExits(num_exits=num_exits)


def single_output() -> nn.Module:
    torch.manual_seed(0)
    return SingleOutput()


def returns_int() -> int:
    return 5


def needs_arg(depth):  # called without --model-arg depth=... fails
    return tiny_staged()


def raises() -> nn.Module:
    raise RuntimeError("boom from the factory")


not_callable = 42


def arrays(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, IN_FEATURES)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)
    return x, y


def tiny_batches(n: int = 40, batch: int = 7):
    """A list of (x, y) tensor batches (last one short)."""
    x, y = arrays(n)
    return [(torch.from_numpy(x[s : s + batch]), torch.from_numpy(y[s : s + batch])) for s in range(0, n, batch)]


def tiny_loader():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = arrays(40)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=8, shuffle=False)


def many(n: int = 50_000, batch: int = 1000):
    """A generator of n samples made on the fly (for the memory test)."""
    g = torch.Generator().manual_seed(0)
    for s in range(0, n, batch):
        m = min(batch, n - s)
        yield torch.randn(m, IN_FEATURES, generator=g), torch.randint(0, NUM_CLASSES, (m,), generator=g)


def wrong_shape():
    return [(torch.zeros(4, IN_FEATURES + 3), torch.zeros(4, dtype=torch.long))]


def not_pairs():
    return [torch.zeros(4, IN_FEATURES)]


def bad_labels():
    return [(torch.zeros(4, IN_FEATURES), torch.tensor([0, 1, 2, 7]))]
