"""Reading weights files and loading them into a model, refusing anything that is not plain tensors.

Weights (``--weights``) come from ``.safetensors`` or from a state dict read with
``torch.load(weights_only=True)``: never an arbitrary pickle. A state dict is loaded
strictly (:func:`load_weights`), and one whose dtypes would be cast lossily is refused
(:func:`dtype_problem`). Every problem raises :class:`~eenet_cli.errors.InputError` with
one line. This module imports torch; import it lazily.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from eenet_cli.errors import InputError
from eenet_cli.runtime.messages import first_line


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``torch.load(weights_only=True)``; never a pickled object."""
    p = Path(path)
    src = str(path)
    if not p.exists():
        raise InputError("no such file", source=src, field="--weights")
    if p.is_dir():
        raise InputError("is a directory, expected a weights file", source=src, field="--weights")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise InputError(f"not a readable safetensors file ({first_line(e)})", source=src, field="--weights") from None
        return dict(state)
    import pickle
    import zipfile

    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols; our error says more
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "WeightsUnpickler" in msg:
            raise InputError(
                "holds pickled Python objects, not just tensors; eenet loads only state dicts "
                "(torch.load weights_only=True). Save model.state_dict() or use .safetensors",
                source=src,
                field="--weights",
            ) from None
        raise InputError(f"not a readable torch file ({first_line(e)})", source=src, field="--weights") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise InputError(f"not a readable torch file ({first_line(e)})", source=src, field="--weights") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(
            f"expected a state dict (names -> tensors), got a {type(obj).__name__}; save model.state_dict()",
            source=src,
            field="--weights",
        )
    return obj


def dtype_problem(value: torch.Tensor, target: torch.Tensor) -> str | None:
    """Why ``value`` may not be copied into ``target`` (``load_state_dict`` would cast it silently), or None.

    A floating-point tensor takes any floating-point value (float16/bfloat16/float64 are
    cast); integers, bools and complex numbers are refused there (bool weights run, badly).
    A complex tensor takes floating or complex values. An integer or bool tensor (e.g.
    BatchNorm's ``num_batches_tracked``) takes integers, and floats only when every value
    converts exactly (a checkpoint cast wholesale to float16 keeps its counters).
    """
    src, dst = value.dtype, target.dtype
    if src == dst:
        return None
    if dst.is_floating_point:
        return None if src.is_floating_point else f"is {_dtype_name(src)} in the file, the model expects {_dtype_name(dst)} (only floating-point weights are converted)"
    if dst.is_complex:
        return None if (src.is_floating_point or src.is_complex) else f"is {_dtype_name(src)} in the file, the model expects {_dtype_name(dst)}"
    if src.is_complex:
        return f"is {_dtype_name(src)} in the file, the model expects {_dtype_name(dst)}"
    try:  # an integer/bool tensor: the values must survive the conversion exactly
        exact = value.numel() == 0 or bool(torch.equal(value.to(dst).to(src), value))
    except (RuntimeError, TypeError):
        exact = False
    return None if exact else f"is {_dtype_name(src)} in the file with values the model's {_dtype_name(dst)} cannot hold exactly"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_weight_dtypes(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], path: str, spec: str) -> None:
    """Refuse, naming the first tensor, a state dict whose dtypes would be cast lossily (:func:`dtype_problem`)."""
    bad = [(k, why) for k, v in state.items() if k in own and (why := dtype_problem(v, own[k])) is not None]
    if bad:
        k, why = bad[0]
        more = f" (+{len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise InputError(f"weights do not fit model {spec}: tensor {k!r} {why}{more}", source=path, field="--weights")


def load_weights(module: nn.Module, path: str, spec: str) -> None:
    """Load a state dict strictly, with one clear line if it belongs to another model."""
    state = read_state_dict(path)
    own = module.state_dict()
    if set(state) != set(own) and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel/DDP
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatch(es), first {k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        )
    if problems:
        raise InputError(f"weights do not fit model {spec}: " + "; ".join(problems), source=path, field="--weights")
    check_weight_dtypes(state, own, path, spec)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"weights do not fit model {spec}: {first_line(e)}", source=path, field="--weights") from None
