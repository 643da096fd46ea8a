"""Running a loaded model on one batch: every exit's logits, checked.

:func:`run_exits` runs a staged model stage by stage (or calls ``forward`` of an
all-exits model); :func:`check_outputs` insists on K logits tensors ``[batch, C]`` with one
C; :func:`run_checked` does both and turns a failure on the input into one clear
:class:`~eenet_cli.errors.InputError`. This module imports torch; import it lazily.
"""

from __future__ import annotations

from typing import Any

import torch

from eenet_cli.errors import InputError
from eenet_cli.runtime.batch import batch_len, describe_input
from eenet_cli.runtime.load import LoadedModel
from eenet_cli.runtime.messages import first_line


def run_exits(model: LoadedModel, x: Any) -> list[torch.Tensor]:
    """All K exit logits for a batch (staged: stage by stage; otherwise ``forward``)."""
    if model.staged:
        out = []
        h = x
        for stage, head in zip(model.module.stages, model.module.heads):  # type: ignore[attr-defined]
            h = stage(h)
            out.append(head(h))
        return out
    outs = model.module(x)
    return list(outs) if isinstance(outs, (list, tuple)) else outs


def check_outputs(outs: Any, model: LoadedModel, batch: int) -> list[torch.Tensor]:
    """The exit outputs must be K tensors ``[batch, C]`` with one C."""
    if isinstance(outs, torch.Tensor) or not isinstance(outs, (list, tuple)):
        raise InputError(
            f"forward() returned a {type(outs).__name__}; a multi-exit model returns a list of K logits tensors "
            "(or has stages and heads)",
            source=model.spec,
        )
    if not outs:
        raise InputError("forward() returned no exits", source=model.spec)
    c = None
    for k, o in enumerate(outs):
        if not isinstance(o, torch.Tensor) or o.ndim != 2 or o.shape[0] != batch:
            shape = list(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
            raise InputError(f"exit {k} gave {shape}, expected logits [batch={batch}, classes]", source=model.spec)
        if c is None:
            c = o.shape[1]
        elif o.shape[1] != c:
            raise InputError(f"exit {k} has {o.shape[1]} classes but exit 0 has {c}", source=model.spec)
    if c is None or c < 2:
        raise InputError(f"exits give {c} class score(s); at least 2 are needed", source=model.spec)
    return list(outs)


def run_checked(model: LoadedModel, x: Any, data_spec: str) -> list[torch.Tensor]:
    """``run_exits`` that turns a failure on the input into one clear line."""
    try:
        outs = run_exits(model, x)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as e:
        raise InputError(
            f"model {model.spec} cannot run on input {describe_input(x)} ({first_line(e)}); "
            "check the input shape",
            source=data_spec,
        ) from None
    return check_outputs(outs, model, batch_len(x))
