"""Staged models whose hidden state is not one tensor, named by import strings in the tests.

``fixtures_models.state_models:masked_sequence`` carries a dict ``{"h": [B, T, H], "mask":
[B, T]}`` from stage to stage (as a text encoder carries its attention mask);
``fixtures_models.state_models:pair_state`` carries a tuple ``(h, skip)``. Both are seeded
and unknown to eenet: nothing in the package names them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

TOKENS, FEATURES, NUM_CLASSES = 5, 6, 4


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class MaskedStage(nn.Module):
    def __init__(self, cin: int, hidden: int, first: bool):
        super().__init__()
        self.first = first
        self.lin = nn.Linear(cin, hidden)

    def forward(self, state):
        if self.first:  # x: [B, T, F]; a token is padding when its first feature is below -1
            x = state
            mask = (x[..., 0] > -1.0).to(x.dtype)
            return {"h": torch.relu(self.lin(x)) * mask.unsqueeze(-1), "mask": mask}
        return {"h": torch.relu(self.lin(state["h"])) * state["mask"].unsqueeze(-1), "mask": state["mask"]}


class MaskedHead(nn.Module):
    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.lin = nn.Linear(hidden, num_classes)

    def forward(self, state):
        return self.lin(_pool(state["h"], state["mask"]))


class MaskedSequence(nn.Module):
    def __init__(self, num_exits: int = 3, hidden: int = 12, seed: int = 0):
        super().__init__()
        g = torch.random.fork_rng(devices=[])
        with g:
            torch.manual_seed(seed)
            self.stages = nn.ModuleList([MaskedStage(FEATURES if k == 0 else hidden, hidden, k == 0) for k in range(num_exits)])
            self.heads = nn.ModuleList([MaskedHead(hidden, NUM_CLASSES) for _ in range(num_exits)])

    def forward(self, x):
        out, h = [], x
        for s, hd in zip(self.stages, self.heads):
            h = s(h)
            out.append(hd(h))
        return out


class PairStage(nn.Module):
    def __init__(self, cin: int, hidden: int, first: bool):
        super().__init__()
        self.first = first
        self.lin = nn.Linear(cin, hidden)

    def forward(self, state):
        if self.first:
            h = torch.tanh(self.lin(state.flatten(1)))
            return (h, h)
        h, skip = state
        return (torch.tanh(self.lin(h)) + 0.5 * skip, skip)


class PairHead(nn.Module):
    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.lin = nn.Linear(hidden, num_classes)

    def forward(self, state):
        return self.lin(state[0])


class PairState(MaskedSequence):
    def __init__(self, num_exits: int = 3, hidden: int = 10, seed: int = 1):
        nn.Module.__init__(self)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stages = nn.ModuleList([PairStage(TOKENS * FEATURES if k == 0 else hidden, hidden, k == 0) for k in range(num_exits)])
            self.heads = nn.ModuleList([PairHead(hidden, NUM_CLASSES) for _ in range(num_exits)])


def masked_sequence(num_exits: int = 3, hidden: int = 12, seed: int = 0) -> MaskedSequence:
    return MaskedSequence(num_exits, hidden, seed).eval()


def pair_state(num_exits: int = 3, hidden: int = 10, seed: int = 1) -> PairState:
    return PairState(num_exits, hidden, seed).eval()


def arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x`` float32 ``[n, T, F]`` with some padded tokens, ``y`` int64 labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, TOKENS, FEATURES)).astype(np.float32)
    lengths = rng.integers(2, TOKENS + 1, n)
    pad = np.arange(TOKENS)[None, :] >= lengths[:, None]
    x[pad, 0] = -5.0
    y = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    return x, y
