"""Naming models, weights and data on the command line (docs/spec.md §5), and loading them safely.

A *model spec* is one of

* the name of a built-in model (``digits-cnn``, ``resnet56``, ``mlp``; see
  :data:`eenet_cli.models.BUILTIN_MODELS`),
* an import string ``package.module:factory``; the factory is called with the
  ``--model-arg key=value`` pairs and must return a ``torch.nn.Module``,
* a ``torch.export`` file (``.pt2``),
* a Hugging Face model folder (``config.json`` + weights): a BERT-like text encoder made
  staged with exit heads by :func:`eenet_cli.text.build_text_model` (the ``--model-arg``
  pairs go to it: ``num_classes``, ``exits``, ``pooling``, ...).

Weights (``--weights``) come from ``.safetensors`` or from a state dict read with
``torch.load(weights_only=True)``: never an arbitrary pickle.

A *data spec* is an import string returning an iterable of ``(x, y)`` batches (a
``DataLoader`` works; a callable is called with no arguments), a ``.npz`` file with arrays
``x`` and ``y`` (``allow_pickle=False``), a ``.pt`` file with tensors ``x`` and ``y``
(``weights_only=True``), or a built-in dataset (``digits:train|val|test``). ``x`` may
also be a dict or tuple of tensors (e.g. tokenised text: ``input_ids`` and
``attention_mask``), passed to the model as it is, or a batch of strings, which is
tokenised (:class:`eenet_cli.text.TextOptions`); a ``.csv``/``.tsv``/``.parquet`` file is
text data with a text column and an integer label column.

A staged model may define hooks the commands use: ``eenet_make_inputs(batch, shape,
generator)`` (``profile``'s random input), ``eenet_pack_inputs(x)`` (a dict/tuple batch as
the one tensor the runtime takes) and ``eenet_load_weights(path)`` (``--weights``).

Every problem with a spec raises :class:`~eenet_cli.errors.InputError` with one line that
names the spec and what is wrong. This module imports torch; import it lazily.
"""

from __future__ import annotations

import warnings
import importlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eenet_cli.errors import InputError

BUILTIN_DATASETS = {"digits": ("train", "val", "test")}


# --------------------------------------------------------------------------- model args


def parse_value(text: str) -> Any:
    """``--model-arg`` values: int, then float, then bool (true/false), else the string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_model_args(pairs: list[str] | None) -> dict[str, Any]:
    """``["depth=3", "act=relu"]`` -> ``{"depth": 3, "act": "relu"}``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InputError(f"expected key=value with a Python identifier as key, got {pair!r}", field="--model-arg")
        if key in out:
            raise InputError(f"{key!r} is given twice", field="--model-arg")
        out[key] = parse_value(value)
    return out


# --------------------------------------------------------------------------- import strings


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def resolve_import(spec: str, what: str, option: str) -> Any:
    """The object named by ``package.module:attr`` (``attr`` may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"expected an import string package.module:name, got {spec!r}", source=spec, field=option)
    add_working_folder_to_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise InputError(f"no module named {e.name!r} (is it installed, or on PYTHONPATH?)", source=spec, field=option) from None
        raise InputError(f"importing {module_name!r} failed: {_first_line(e)}", source=spec, field=option) from None
    except Exception as e:  # noqa: BLE001 - user code; report it in one line
        raise InputError(f"importing {module_name!r} failed: {_first_line(e)}", source=spec, field=option) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"module {module_name!r} has no attribute {attr!r}{_shadowed_hint(module_name, module)}", source=spec, field=option)
        obj = getattr(obj, part)
    return obj


def add_working_folder_to_path() -> None:
    """Make modules in the working folder importable, *after* every installed package.

    A ``numpy.py`` or ``safetensors.py`` lying in the folder where eenet runs must not be
    imported instead of the real package (by eenet itself, by torch, or by the user's
    module), so the folder goes to the end of ``sys.path``, never the front. (``python -m
    eenet_cli`` puts it first; ``eenet_cli/__main__.py`` moves it to the end.)
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the working folder was removed
        return
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _shadowed_hint(module_name: str, module: Any) -> str:
    """``; note: ./models.py is not used: ...`` when an installed module of the same name came first."""
    top = module_name.split(".")[0]
    try:
        cwd = Path(os.getcwd())
    except OSError:
        return ""
    local = next((p for p in (cwd / f"{top}.py", cwd / top) if p.exists()), None)
    found = getattr(module, "__file__", None) or ""
    if local is None or (found and Path(found).resolve().is_relative_to(cwd.resolve())):
        return ""
    return f" (the installed module {top!r} at {found or 'a built-in'} comes before {local.name} in the working folder; rename your file)"


# --------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A model ready to run, with what the commands need to know about it."""

    module: nn.Module
    spec: str
    kind: str  # "staged" or "all-exits"
    num_exits: int | None  # known up front for staged models
    input_shape: tuple[int, ...] | None = None  # a natural default (built-ins)
    device: str = "cpu"
    args: dict = field(default_factory=dict)

    @property
    def staged(self) -> bool:
        return self.kind == "staged"

    @property
    def stages(self) -> list[nn.Module]:
        return list(self.module.stages)  # type: ignore[attr-defined]

    @property
    def heads(self) -> list[nn.Module]:
        return list(self.module.heads)  # type: ignore[attr-defined]


def staged_parts(module: nn.Module, spec: str) -> int | None:
    """K if ``module`` is staged (``stages`` and ``heads`` of K modules each), else None."""
    stages = getattr(module, "stages", None)
    heads = getattr(module, "heads", None)
    if stages is None and heads is None:
        return None
    if stages is None or heads is None:
        have, missing = ("stages", "heads") if heads is None else ("heads", "stages")
        raise InputError(f"the model has {have!r} but no {missing!r}; a staged model needs both", source=spec)
    for name, seq in (("stages", stages), ("heads", heads)):
        if not isinstance(seq, (nn.ModuleList, nn.Sequential, list, tuple)) or not all(isinstance(m, nn.Module) for m in seq):
            raise InputError(f"model.{name} must be a sequence of nn.Module (an nn.ModuleList)", source=spec)
    if len(stages) != len(heads) or len(stages) == 0:
        raise InputError(f"model has {len(stages)} stages and {len(heads)} heads; a staged model needs K of each (K >= 1)", source=spec)
    return len(stages)


def load_model(spec: str, model_args: dict | None = None, weights: str | None = None, device: str = "cpu") -> LoadedModel:
    """Build (or load) the model named by ``spec``, load ``weights``, move it to ``device``, eval mode."""
    from eenet_cli import models

    model_args = dict(model_args or {})
    input_shape = None
    if not spec:
        raise InputError("no model given", field="MODEL")
    if spec.endswith(".pt2"):
        if model_args:
            raise InputError("--model-arg does not apply to a torch.export file", source=spec)
        module = _load_exported(spec, device)
        if weights:
            raise InputError("a .pt2 file carries its own weights; drop --weights", source=spec, field="--weights")
        weights = None
    elif Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise InputError("is a folder without config.json; a Hugging Face model folder holds config.json and the weights", source=spec)
        from eenet_cli.text import build_text_model

        for key in ("weights", "path"):
            if key in model_args:
                raise InputError(f"{key!r} does not apply to a model folder (the folder is MODEL; weights come with --weights)", source=spec, field="--model-arg")
        module = _call_factory(build_text_model, {"path": spec, **model_args, "weights": weights}, spec)
        weights = None  # loaded by the builder (heads-only files are allowed there)
    elif spec in models.BUILTIN_MODELS:
        factory = models.BUILTIN_MODELS[spec][0]
        module = _call_factory(factory, model_args, spec)
        input_shape = models.default_input_shape(spec, model_args)
    elif ":" in spec:
        factory = resolve_import(spec, "model", "MODEL")
        if isinstance(factory, nn.Module):
            if model_args:
                raise InputError("names a module instance, which takes no --model-arg", source=spec)
            module = factory
        elif not callable(factory):
            raise InputError(f"is not callable (it is of type {type(factory).__name__}); expected a factory returning a torch.nn.Module", source=spec)
        else:
            module = _call_factory(factory, model_args, spec)
    else:
        names = ", ".join(models.BUILTIN_MODELS)
        what = "not a .pt2 file" if Path(spec).exists() else "unknown model"
        raise InputError(
            f"{what}; expected a built-in name ({names}), an import string package.module:factory, a torch.export .pt2 file "
            "or a Hugging Face model folder",
            source=spec,
        )
    if not isinstance(module, nn.Module):
        raise InputError(f"the factory returned an object of type {type(module).__name__}, expected a torch.nn.Module", source=spec)
    k = staged_parts(module, spec)
    if weights:
        loader = getattr(module, "eenet_load_weights", None)
        if callable(loader):
            loader(weights)  # e.g. a text model: a heads-only file keeps the pretrained encoder
        else:
            load_weights(module, weights, spec)
    dev = check_device(device)
    if not spec.endswith(".pt2"):  # an exported module is already on its device and in eval form
        module = module.to(dev).eval()
    return LoadedModel(module, spec, "staged" if k else "all-exits", k, input_shape, str(dev), model_args)


def _call_factory(factory, model_args: dict, spec: str) -> Any:
    from eenet_cli.errors import EenetError

    try:
        return factory(**model_args)
    except EenetError:
        raise  # already one clear line
    except TypeError as e:
        raise InputError(f"calling the factory with {model_args or 'no arguments'} failed ({_first_line(e)}); check --model-arg", source=spec) from None
    except Exception as e:  # noqa: BLE001
        raise InputError(f"the factory failed: {_first_line(e)}", source=spec) from None


def _load_exported(spec: str, device: str) -> nn.Module:
    p = Path(spec)
    if not p.is_file():
        raise InputError("no such file", source=spec)
    import logging
    import zipfile

    import io

    from eenet_cli.pt2_inspect import read_checked_pt2

    dev = check_device(device)
    if not zipfile.is_zipfile(p):
        raise InputError("not a torch.export file (a .pt2 file is a zip archive written by torch.export.save)", source=spec)
    # torch.export.load unpickles (weights_only=False), sympifies and execs parts of the
    # archive: every member is checked first, and torch reads the very bytes checked
    data = read_checked_pt2(str(p), spec)
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # torch logs the traceback of a failed load itself
    try:
        prog = torch.export.load(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a readable torch.export file ({_first_line(e)})", source=spec) from None
    finally:
        logger.setLevel(level)
    if dev.type != "cpu":
        from torch.export.passes import move_to_device_pass

        prog = move_to_device_pass(prog, dev)
    try:
        return prog.module()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a usable torch.export file ({_first_line(e)})", source=spec) from None


def check_device(device: str) -> torch.device:
    d = (device or "cpu").strip()
    if d not in ("cpu", "cuda", "mps") and not d.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; expected cpu, cuda or cuda:N", field="--device")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine (this torch build or no GPU); use --device cpu", field="--device")
    if d == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("MPS is not available on this machine; use --device cpu", field="--device")
    return torch.device(d)


# --------------------------------------------------------------------------- weights


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
            raise InputError(f"not a readable safetensors file ({_first_line(e)})", source=src, field="--weights") from None
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
        raise InputError(f"not a readable torch file ({_first_line(e)})", source=src, field="--weights") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise InputError(f"not a readable torch file ({_first_line(e)})", source=src, field="--weights") from None
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
        raise InputError(f"weights do not fit model {spec}: {_first_line(e)}", source=path, field="--weights") from None


# --------------------------------------------------------------------------- data


@dataclass
class DataSource:
    """Batches of ``(x, y)`` tensors, and how many samples there are when known.

    ``x`` is a tensor, or a dict/tuple of tensors (tokenised text); batches of strings are
    tokenised with ``text`` (:class:`eenet_cli.text.TextOptions`).
    """

    spec: str
    batches: Iterable
    num_samples: int | None = None
    num_batches: int | None = None
    text: Any = None

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        for i, batch in enumerate(self.batches):
            yield check_batch(batch, i, self.spec, self.text)


class ArrayBatches:
    """Re-iterable batches over in-memory arrays ``x`` and ``y``."""

    def __init__(self, x: Any, y: Any, batch_size: int):
        self.x, self.y, self.batch_size = x, y, int(batch_size)

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for s in range(0, len(self.y), self.batch_size):
            yield self.x[s : s + self.batch_size], self.y[s : s + self.batch_size]


def _as_tensor(a: Any, what: str, spec: str, index: int) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise InputError(f"batch {index}: {what} is an object array, expected numbers", source=spec, field=what)
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(a, (list, tuple)) and what == "y":
        try:
            return torch.as_tensor(a)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise InputError(f"batch {index}: {what} is a {type(a).__name__}, expected a tensor or numpy array", source=spec, field=what)


def _is_structured(a: Any) -> bool:
    """A dict (or Mapping, e.g. a tokenizer's BatchEncoding) or tuple/list of tensors/arrays."""
    if isinstance(a, Mapping):
        return True
    return isinstance(a, (tuple, list)) and len(a) > 0 and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in a)


def _structured_x(a: Any, spec: str, index: int) -> dict | tuple:
    """Check a dict/tuple ``x``: tensors with one batch size; integer dtypes are kept (token ids)."""
    items = list(a.items()) if isinstance(a, Mapping) else list(enumerate(a))
    if not items:
        raise InputError(f"batch {index}: x is an empty {type(a).__name__}", source=spec, field="x")
    out = []
    n = None
    for key, v in items:
        what = f"x[{key!r}]"
        if isinstance(v, (list, tuple)):
            try:
                v = torch.as_tensor(v)
            except (TypeError, ValueError, RuntimeError):
                raise InputError(f"batch {index}: {what} is a ragged or non-numeric list, expected a tensor", source=spec, field="x") from None
        t = _as_tensor(v, what, spec, index)
        if t.ndim == 0:
            raise InputError(f"batch {index}: {what} is a scalar, expected a batch", source=spec, field="x")
        if t.dtype == torch.float64:
            t = t.float()
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise InputError(f"batch {index}: {what} has {t.shape[0]} samples but {items[0][0]!r} has {n}", source=spec, field="x")
        out.append((key, t))
    return {k: t for k, t in out} if isinstance(a, Mapping) else tuple(t for _, t in out)


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


def check_batch(batch: Any, index: int, spec: str, text: Any = None) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, dict) and "x" in batch and "y" in batch:
        batch = (batch["x"], batch["y"])
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
        raise InputError(f"batch {index}: expected an (x, y) pair, got {got}", source=spec)
    from eenet_cli.text import is_text

    raw = batch[0]
    if is_text(raw):
        if text is None:
            raise InputError(
                f"batch {index}: x is text; tokenising it needs a tokenizer: give --tokenizer FOLDER, or a Hugging Face model folder as MODEL",
                source=spec,
                field="--tokenizer",
            )
        raw = text.tokenize(list(raw))
    y = _as_tensor(batch[1], "y", spec, index)
    if y.ndim != 1:
        raise InputError(f"batch {index}: labels y must be 1-D class indices, got shape {list(y.shape)}", source=spec, field="y")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        if y.dtype.is_floating_point and bool(torch.all(y == torch.round(y))):
            y = y.long()
        else:
            raise InputError(f"batch {index}: labels y must be integers, got {y.dtype}", source=spec, field="y")
    if _is_structured(raw):
        x: Any = _structured_x(raw, spec, index)
        if batch_len(x) != y.shape[0]:
            raise InputError(f"batch {index}: x has {batch_len(x)} samples but y has {y.shape[0]}", source=spec)
        return x, y.long()
    x = _as_tensor(raw, "x", spec, index)
    if x.ndim == 0 or x.shape[0] != y.shape[0]:
        raise InputError(f"batch {index}: x has {x.shape[0] if x.ndim else 0} samples but y has {y.shape[0]}", source=spec)
    if x.dtype in (torch.float64, torch.float16, torch.bfloat16) or not x.dtype.is_floating_point:
        x = x.float()
    return x, y.long()


def load_data(spec: str, batch_size: int = 256, split_hint: str | None = None, text: Any = None) -> DataSource:
    """Resolve a data spec (see the module docstring) into batches.

    ``text`` (:class:`eenet_cli.text.TextOptions`) tokenises text: a ``.csv``/``.tsv``/
    ``.parquet`` file's text column, or batches of strings from an import string.
    """
    from eenet_cli import models

    if not spec:
        raise InputError("no data given", field="--data")
    if batch_size < 1:
        raise InputError(f"must be at least 1, got {batch_size}", field="--batch-size")
    from eenet_cli.text import is_text_table

    if is_text_table(spec):
        from eenet_cli.text import TextBatches, TextOptions, read_text_table

        text = text if text is not None else TextOptions()
        texts, labels = read_text_table(spec, text.text_column, text.label_column)
        text.check(spec)
        return DataSource(spec, TextBatches(texts, labels, batch_size, text), len(labels), None, text)
    if text is not None and text.explicit_columns:
        raise InputError("--text-column/--label-column apply to .csv, .tsv or .parquet data only", source=spec, field="--text-column")
    name, _, part = spec.partition(":")
    if name in BUILTIN_DATASETS and "." not in name and "/" not in spec:
        splits = BUILTIN_DATASETS[name]
        part = part or (split_hint if split_hint in splits else "")
        if part not in splits:
            raise InputError(f"built-in dataset {name!r} needs a split: {', '.join(f'{name}:{s}' for s in splits)}", source=spec, field="--data")
        try:
            x, y = models.load_digits_split(part)
        except ImportError as e:
            raise InputError(str(e), source=spec, field="--data") from None
        return DataSource(spec, ArrayBatches(torch.from_numpy(x), torch.from_numpy(y), batch_size), len(y), None)
    path = Path(spec)
    if spec.endswith(".npz"):
        x, y = _read_npz(path, spec)
        return DataSource(spec, ArrayBatches(x, y, batch_size), len(y))
    if spec.endswith(".pt") or spec.endswith(".pth"):
        x, y = _read_pt(path, spec)
        return DataSource(spec, ArrayBatches(x, y, batch_size), len(y))
    if ":" in spec and not path.exists():
        obj = resolve_import(spec, "data", "--data")
        if callable(obj) and not _is_iterable(obj):
            try:
                obj = obj()
            except Exception as e:  # noqa: BLE001
                raise InputError(f"calling it failed: {_first_line(e)}", source=spec, field="--data") from None
        if not _is_iterable(obj):
            raise InputError(f"gave a {type(obj).__name__}, expected an iterable of (x, y) batches (a DataLoader works)", source=spec, field="--data")
        n = None
        ds = getattr(obj, "dataset", None)
        if ds is not None and hasattr(ds, "__len__") and getattr(obj, "sampler", None) is not None:
            try:
                n = len(ds)
            except TypeError:
                n = None
        nb = None
        try:
            nb = len(obj)  # type: ignore[arg-type]
        except TypeError:
            pass
        return DataSource(spec, obj, n, nb, text)
    if path.exists():
        raise InputError(
            "unknown data file type; expected .npz (arrays x and y), .pt (tensors x and y), or text in .csv/.tsv/.parquet",
            source=spec,
            field="--data",
        )
    names = ", ".join(f"{n}:{s[0]}" for n, s in BUILTIN_DATASETS.items())
    raise InputError(f"no such file, and not an import string package.module:name or a built-in dataset ({names}, ...)", source=spec, field="--data")


def rebatch(source: DataSource, batch_size: int) -> DataSource:
    """``source``'s samples regrouped into batches of exactly ``batch_size`` (the last one
    may be shorter), whatever batches it gives, a DataLoader's own batch size included.

    Batches are split and joined along the batch axis (dim 0), in order. Text (lists of
    strings) is regrouped before it is tokenised, so it is padded per new batch, as
    ``eenet``'s own text batches are. Tensors and dicts/tuples of tensors are sliced and
    concatenated; pre-tokenised inputs keep the padding they came with, and batches of a
    dict with an ``attention_mask`` padded to different lengths are joined by padding the
    shorter ones' 2-D tensors on the right with zeros (attention mask 0). Other inputs whose
    shapes beyond the batch axis differ cannot be joined: an :class:`InputError` names them.
    """
    if batch_size < 1:
        raise InputError(f"must be at least 1, got {batch_size}", field="--batch-size")
    n = source.num_samples
    return DataSource(source.spec, _Rebatched(source, int(batch_size)), n, None if n is None else -(-n // batch_size), source.text)


class _Rebatched:
    """Re-iterable batches of ``batch_size`` samples over another source's (see :func:`rebatch`)."""

    def __init__(self, source: DataSource, batch_size: int):
        self.source, self.batch_size = source, batch_size

    def __len__(self) -> int:
        if self.source.num_samples is None:
            raise TypeError("unknown number of samples")
        return -(-self.source.num_samples // self.batch_size)

    def _pieces(self):
        """``(kind, x, y)`` per source batch: raw texts (tokenised later, per new batch) or checked tensors."""
        from eenet_cli.text import is_text

        spec = self.source.spec
        for i, raw in enumerate(self.source.batches):
            pair = (raw["x"], raw["y"]) if isinstance(raw, dict) and "x" in raw and "y" in raw else raw
            if isinstance(pair, (tuple, list)) and len(pair) == 2 and is_text(pair[0]):
                texts = [str(t) for t in pair[0]]
                y = _as_tensor(pair[1], "y", spec, i)
                if y.ndim != 1 or y.shape[0] != len(texts):
                    raise InputError(f"batch {i}: x has {len(texts)} texts but y has shape {list(y.shape)}", source=spec)
                yield "text", texts, y
            else:
                x, y = check_batch(raw, i, spec, self.source.text)
                yield "tensor", x, y

    def __iter__(self):
        bs = self.batch_size
        xs: list = []
        ys: list[torch.Tensor] = []
        have = 0
        kind = None

        def flush():
            x = [t for part in xs for t in part] if kind == "text" else _join(xs, self.source.spec)
            return x, torch.cat(ys) if len(ys) > 1 else ys[0]

        for k, x, y in self._pieces():
            if have and k != kind:  # text and tensors are not joined: finish the batch so far
                yield flush()
                xs, ys, have = [], [], 0
            kind = k
            n = len(x) if k == "text" else batch_len(x)
            start = 0
            while start < n:
                take = min(bs - have, n - start)
                xs.append(x[start : start + take] if k == "text" else batch_slice(x, slice(start, start + take)))
                ys.append(y[start : start + take])
                have += take
                start += take
                if have == bs:
                    yield flush()
                    xs, ys, have = [], [], 0
        if have:
            yield flush()


def _join(parts: list, spec: str) -> Any:
    """Concatenate batches along dim 0 (see :func:`rebatch`)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, Mapping):
        if any(set(p) != set(first) for p in parts):
            raise InputError(f"cannot join batches with different keys into one batch: {sorted(map(str, first))} and others", source=spec, field="--batch-size")
        pad = "attention_mask" in first
        return {k: _cat([p[k] for p in parts], f"x[{k!r}]", spec, pad=pad) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_cat([p[i] for p in parts], f"x[{i}]", spec) for i in range(len(first)))
    return _cat(parts, "x", spec)


def _cat(ts: list[torch.Tensor], what: str, spec: str, *, pad: bool = False) -> torch.Tensor:
    shapes = [tuple(t.shape[1:]) for t in ts]
    if len(set(shapes)) > 1:
        if pad and all(len(sh) == 1 for sh in shapes):
            width = max(sh[0] for sh in shapes)
            ts = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ts]
        else:
            raise InputError(
                f"cannot join samples of shapes {sorted(set(shapes))} ({what}, without the batch axis) into one batch of "
                "--batch-size; give batches whose samples have one shape, or --batch-size 1",
                source=spec,
                field="--batch-size",
            )
    return torch.cat(ts)


def _is_iterable(obj: Any) -> bool:
    return hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, dict))


def _check_xy(x: Any, y: Any, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    y = torch.from_numpy(np.ascontiguousarray(y)) if isinstance(y, np.ndarray) else y
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError("x and y must be arrays/tensors", source=spec)
    if y.ndim != 1:
        raise InputError(f"y must be 1-D class indices, got shape {list(y.shape)}", source=spec, field="y")
    if x.ndim == 0 or x.shape[0] != y.shape[0]:
        raise InputError(f"x has {x.shape[0] if x.ndim else 0} samples but y has {y.shape[0]}", source=spec, field="x")
    if y.numel() == 0:
        raise InputError("holds no samples", source=spec)
    return x, y


def _read_npz(path: Path, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    import zipfile

    if not path.is_file():
        raise InputError("no such file", source=spec, field="--data")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"x", "y"} <= keys:
                raise InputError(f"expected arrays 'x' and 'y', found {sorted(keys)}", source=spec, field="--data")
            x, y = z["x"], z["y"]
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise InputError("holds pickled object arrays; eenet reads only numeric arrays (allow_pickle=False)", source=spec, field="--data") from None
        raise InputError(f"not a readable .npz file ({_first_line(e)})", source=spec, field="--data") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"not a readable .npz file ({_first_line(e)})", source=spec, field="--data") from None
    return _check_xy(x, y, spec)


def _read_pt(path: Path, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    import pickle
    import zipfile

    if not path.is_file():
        raise InputError("no such file", source=spec, field="--data")
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols; our error says more
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            "holds pickled Python objects, not just tensors; eenet reads .pt data with torch.load(weights_only=True): "
            "save {'x': tensor, 'y': tensor}",
            source=spec,
            field="--data",
        ) from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise InputError(f"not a readable torch file ({_first_line(e)})", source=spec, field="--data") from None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        obj = {"x": obj[0], "y": obj[1]}
    if not isinstance(obj, dict) or not {"x", "y"} <= set(obj):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"expected a dict with tensors 'x' and 'y', found {found}", source=spec, field="--data")
    return _check_xy(obj["x"], obj["y"], spec)


# --------------------------------------------------------------------------- running


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
            f"model {model.spec} cannot run on input {describe_input(x)} ({_first_line(e)}); "
            "check the input shape",
            source=data_spec,
        ) from None
    return check_outputs(outs, model, batch_len(x))


def parse_shape(text: str, batch_size: int = 1, *, bytes_per_element: int = 4) -> tuple[int, ...]:
    """``3,32,32`` -> ``(3, 32, 32)`` (no batch axis).

    A shape whose input batch (``batch_size`` samples of float32) would not fit in the
    machine's memory is refused here, with both sizes, instead of failing in the allocator
    (:func:`eenet_cli.memory.check_memory`).
    """
    from eenet_cli.memory import check_memory

    parts = text.replace("x", ",").split(",")
    if len(text) > 200 or len(parts) > 32:
        raise InputError(f"expected at most 32 positive integers like 3,32,32, got {len(parts)} in {len(text)} characters", field="--input-shape")
    try:
        dims = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise InputError(f"expected positive integers like 3,32,32, got {text!r}", field="--input-shape") from None
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"expected positive integers like 3,32,32, got {text!r}", field="--input-shape")
    elements = max(int(batch_size), 1)
    for d in dims:
        elements *= d
    shape = ",".join(map(str, dims))
    check_memory(elements * bytes_per_element, f"{shape} at batch size {max(int(batch_size), 1)}", field="--input-shape")
    return dims
