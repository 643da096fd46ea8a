"""Built-in multi-exit models and the built-in ``digits`` dataset.

Every model here is *staged* (docs/spec.md §5): ``stages`` and ``heads`` are two
``nn.ModuleList`` of K modules, and exit k's logits are
``heads[k](stages[k](... stages[0](x)))``. ``forward(x)`` returns the K logits as a list.

This module imports torch at the top; the command line imports it only inside the model
commands, so ``eenet --help`` stays free of torch.

>>> import torch
>>> m = DigitsCNN()
>>> [tuple(t.shape) for t in m(torch.zeros(2, 1, 8, 8))]
[(2, 10), (2, 10), (2, 10), (2, 10)]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eenet_cli.core.splits import stratified_split


class StagedModel(nn.Module):
    """Base class: ``forward`` runs every stage and returns every exit's logits."""

    stages: nn.ModuleList
    heads: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = x
        for stage, head in zip(self.stages, self.heads):
            h = stage(h)
            out.append(head(h))
        return out


# --------------------------------------------------------------------------- digits CNN


class DigitsCNN(StagedModel):
    """A small 4-exit CNN for 8×8 grey digits (input ``[B, 1, 8, 8]``, values in [0, 1]).

    Stages are 3×3 conv + batch-norm + ReLU blocks (8, 16, 32, then two of 64 channels).
    Early head k squeezes its stage to ``head_channels[k]`` channels with a 1×1 conv and
    pools to 2×2 before a linear layer, so early exits are deliberately weak (about
    0.55 / 0.85 / 0.95 accuracy against 0.99 for the last exit on the sample data): that
    is what makes an exit policy worth learning.
    """

    def __init__(self, num_classes: int = 10, width: int = 8, head_channels: str | tuple = (3, 2, 1)):
        super().__init__()
        w = int(width)
        if isinstance(head_channels, (int, str)):
            head_channels = tuple(int(v) for v in str(head_channels).split(","))
        r = [int(v) for v in head_channels]
        if len(r) == 1:
            r = r * 3
        if len(r) != 3:
            raise ValueError("head_channels takes 1 or 3 numbers (one per early exit)")

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.stages = nn.ModuleList(
            [
                nn.Sequential(*block(1, w)),  # 8x8
                nn.Sequential(*block(w, 2 * w), nn.MaxPool2d(2)),  # 4x4
                nn.Sequential(*block(2 * w, 4 * w)),  # 4x4
                nn.Sequential(*block(4 * w, 8 * w), *block(8 * w, 8 * w)),  # 4x4
            ]
        )

        def small_head(cin: int, r: int) -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(cin, r, 1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * r, num_classes)
            )

        self.heads = nn.ModuleList(
            [
                small_head(w, r[0]),
                small_head(2 * w, r[1]),
                small_head(4 * w, r[2]),
                nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32 * w, num_classes)),
            ]
        )


# --------------------------------------------------------------------------- ResNet-56


class BasicBlock(nn.Module):
    """The CIFAR ResNet basic block (two 3×3 convolutions, identity or 1×1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _conv_exit_head(channels: int, num_classes: int) -> nn.Module:
    """The paper's early-exit classifier: three 3×3 conv layers with ReLU, then a linear layer."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )


class ResNet56(StagedModel):
    """Multi-exit ResNet-56 for 32×32 images (input ``[B, 3, 32, 32]``), K = 3.

    Three stages of 9 basic blocks (16, 32, 64 channels); as in the paper, exits sit after
    the 18th and 36th layers (ends of stages 1 and 2), each a head of three 3×3 conv layers
    and a linear layer; the last exit is the usual global-pool + linear classifier.
    """

    def __init__(self, num_classes: int = 10, blocks_per_stage: int = 9, in_channels: int = 3):
        super().__init__()
        n = int(blocks_per_stage)

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]

        stem = [nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        self.stages = nn.ModuleList(
            [nn.Sequential(*stem, *stage(16, 16, 1)), nn.Sequential(*stage(16, 32, 2)), nn.Sequential(*stage(32, 64, 2))]
        )
        self.heads = nn.ModuleList(
            [
                _conv_exit_head(16, num_classes),
                _conv_exit_head(32, num_classes),
                nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)),
            ]
        )


# --------------------------------------------------------------------------- MLP


class MultiExitMLP(StagedModel):
    """A multi-exit MLP: stage k is ``Linear + ReLU``, head k is ``Linear`` to the classes.

    Input is flattened, so any shape with ``in_features`` values per sample works.
    """

    def __init__(self, in_features: int = 64, hidden: int = 64, num_exits: int = 3, num_classes: int = 10):
        super().__init__()
        if num_exits < 1:
            raise ValueError("num_exits must be at least 1")
        stages: list[nn.Module] = [nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())]
        stages += [nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()) for _ in range(num_exits - 1)]
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList([nn.Linear(hidden, num_classes) for _ in range(num_exits)])


# --------------------------------------------------------------------------- registry

#: built-in model name -> (factory, default input shape without the batch axis, description)
BUILTIN_MODELS: dict[str, tuple] = {
    "digits-cnn": (DigitsCNN, (1, 8, 8), "4-exit CNN for 8x8 digits (the sample data's model)"),
    "resnet56": (ResNet56, (3, 32, 32), "3-exit ResNet-56 for 32x32 images (exits after layers 18 and 36)"),
    "mlp": (MultiExitMLP, None, "multi-exit MLP (args in_features, hidden, num_exits, num_classes)"),
}


def default_input_shape(name: str, model_args: dict | None = None) -> tuple[int, ...] | None:
    """The input shape (no batch axis) a built-in model expects, if it has a natural one."""
    if name not in BUILTIN_MODELS:
        return None
    if name == "mlp":
        return (int((model_args or {}).get("in_features", 64)),)
    if name == "resnet56":
        return (int((model_args or {}).get("in_channels", 3)), 32, 32)
    return BUILTIN_MODELS[name][1]


# --------------------------------------------------------------------------- digits data

DIGITS_SEED = 0
DIGITS_SPLIT_SIZES = {"train": 897, "val": 450, "test": 450}


def load_digits_split(split: str, seed: int = DIGITS_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The built-in ``digits`` dataset: scikit-learn's bundled 8×8 digits (1797 images),
    split 897/450/450 into train/val/test, stratified and seeded.

    Returns ``x`` float32 ``[n, 1, 8, 8]`` scaled to [0, 1] and ``y`` int64 ``[n]``.
    Needs scikit-learn (only for the bundled images; no download).
    """
    if split not in DIGITS_SPLIT_SIZES and split != "all":
        raise ValueError(f"unknown split {split!r}; expected one of train, val, test, all")
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dev dependency
        from eenet_cli.errors import InputError

        raise InputError("the built-in dataset 'digits' needs scikit-learn (pip install scikit-learn)", field="--data") from None
    d = load_digits()
    x = (np.asarray(d.images, dtype=np.float32) / 16.0)[:, None, :, :]
    y = np.asarray(d.target, dtype=np.int64)
    if split == "all":
        return x, y
    parts = stratified_split(y, DIGITS_SPLIT_SIZES, seed)
    idx = parts[split]
    return np.ascontiguousarray(x[idx]), y[idx]
