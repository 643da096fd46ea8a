"""Helpers over one batch of model input ``x``: a tensor, or a dict/tuple of tensors (tokenised text).

>>> import torch
>>> x = {"input_ids": torch.zeros(4, 7), "attention_mask": torch.ones(4, 7)}
>>> batch_len(x), describe_input(batch_slice(x, slice(0, 2)))
(4, '{input_ids [2, 7], attention_mask [2, 7]}')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def batch_len(x: Any) -> int:
    """Samples in ``x`` (a tensor, or a dict/tuple of tensors)."""
    if isinstance(x, Mapping):
        return int(next(iter(x.values())).shape[0])
    if isinstance(x, (tuple, list)):
        return int(x[0].shape[0])
    return int(x.shape[0]) if x.ndim else 0


def batch_slice(x: Any, s: slice) -> Any:
    """``x[s]`` along the batch axis, for tensors and dicts/tuples of them."""
    if isinstance(x, Mapping):
        return {k: v[s] for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(v[s] for v in x)
    return x[s]


def batch_to(x: Any, device: Any) -> Any:
    """``x`` moved to ``device``, for tensors and dicts/tuples of them."""
    if isinstance(x, Mapping):
        return {k: v.to(device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(v.to(device) for v in x)
    return x.to(device)


def describe_input(x: Any) -> str:
    """``shape [1, 3, 32, 32]``, or ``{input_ids [1, 12], attention_mask [1, 12]}``."""
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k} {list(v.shape)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(str(list(v.shape)) for v in x) + ")"
    return f"of shape {list(x.shape)}"
