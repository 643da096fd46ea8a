"""Naming models on the command line (docs/spec.md §5), and loading them safely.

A *model spec* is one of

* the name of a built-in model (``digits-cnn``, ``resnet56``, ``mlp``; see
  :data:`eenet_cli.runtime.models.BUILTIN_MODELS`),
* an import string ``package.module:factory``; the factory is called with the
  ``--model-arg key=value`` pairs and must return a ``torch.nn.Module``,
* a ``torch.export`` file (``.pt2``), checked member by member before torch reads it
  (:mod:`eenet_cli.runtime.pt2`),
* an ``eenet export`` bundle (a zip file with a ``manifest.json``, recognised by its content
  whatever its name; :mod:`eenet_cli.runtime.bundle`), checked the same way: the model is its
  stages and heads, and it carries its own policy and costs (``backend="onnx"``: its ONNX
  graphs on onnxruntime, when it was exported with ``--onnx``),
* a Hugging Face model folder (``config.json`` + weights): a BERT-like text encoder made
  staged with exit heads by :func:`eenet_cli.runtime.text_model.build_text_model` (the
  ``--model-arg`` pairs go to it: ``num_classes``, ``exits``, ``pooling``, ...).

Weights (``--weights``) are read by :mod:`eenet_cli.runtime.weights`: ``.safetensors`` or
a state dict read with ``torch.load(weights_only=True)``, never an arbitrary pickle.

A staged model may define hooks the commands use: ``eenet_make_inputs(batch, shape,
generator)`` (``profile``'s random input), ``eenet_pack_inputs(x)`` (a dict/tuple batch as
the one tensor the runtime takes) and ``eenet_load_weights(path)`` (``--weights``).

Every problem with a spec raises :class:`~eenet_cli.errors.InputError` with one line that
names the spec and what is wrong. This module imports torch; import it lazily.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eenet_cli.errors import EenetError, InputError, shorten
from eenet_cli.memory import check_memory
from eenet_cli.runtime import models
from eenet_cli.runtime.messages import first_line
from eenet_cli.runtime.pt2 import read_checked_pt2
from eenet_cli.runtime.text_model import build_text_model
from eenet_cli.runtime.weights import load_weights

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
        raise InputError(f"importing {module_name!r} failed: {first_line(e)}", source=spec, field=option) from None
    except Exception as e:  # noqa: BLE001 - user code; report it in one line
        raise InputError(f"importing {module_name!r} failed: {first_line(e)}", source=spec, field=option) from None
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


def load_model(spec: str, model_args: dict | None = None, weights: str | None = None, device: str = "cpu", backend: str | None = None) -> LoadedModel:
    """Build (or load) the model named by ``spec``, load ``weights``, move it to ``device``, eval mode.

    ``backend`` (``torch`` or ``onnx``) applies to a bundle only: which of its graphs run."""
    model_args = dict(model_args or {})
    input_shape = None
    if not spec:
        raise InputError("no model given", field="MODEL")
    if spec.endswith(".eenet") or _is_bundle(spec):
        return _load_bundle(spec, model_args, weights, device, backend or "torch")
    if backend is not None:
        raise InputError(f"applies to an eenet bundle (from eenet export) only; {shorten(spec)} is not one", field="--backend")
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


def _is_bundle(spec: str) -> bool:
    from eenet_cli.runtime.bundle import is_bundle

    return is_bundle(spec)


def _load_bundle(spec: str, model_args: dict, weights: str | None, device: str, backend: str = "torch") -> LoadedModel:
    """An ``eenet export`` bundle: checked member by member, nothing unpickled."""
    from eenet_cli.runtime.bundle import read_bundle

    if model_args:
        raise InputError("--model-arg does not apply to an eenet bundle (it holds the exported model)", source=spec, field="--model-arg")
    if weights:
        raise InputError("an eenet bundle carries its own weights; drop --weights", source=spec, field="--weights")
    dev = check_device(device)
    module = read_bundle(spec, str(dev), backend=backend)
    return LoadedModel(module, spec, "staged", len(module.stages), module.input_shape, str(dev), {})


def _call_factory(factory, model_args: dict, spec: str) -> Any:
    try:
        return factory(**model_args)
    except EenetError:
        raise  # already one clear line
    except TypeError as e:
        raise InputError(f"calling the factory with {model_args or 'no arguments'} failed ({first_line(e)}); check --model-arg", source=spec) from None
    except Exception as e:  # noqa: BLE001
        raise InputError(f"the factory failed: {first_line(e)}", source=spec) from None


def _load_exported(spec: str, device: str) -> nn.Module:
    p = Path(spec)
    if not p.is_file():
        raise InputError("no such file", source=spec)
    import io
    import logging
    import zipfile

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
        raise InputError(f"not a readable torch.export file ({first_line(e)})", source=spec) from None
    finally:
        logger.setLevel(level)
    if dev.type != "cpu":
        from torch.export.passes import move_to_device_pass

        prog = move_to_device_pass(prog, dev)
    try:
        return prog.module()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a usable torch.export file ({first_line(e)})", source=spec) from None


def check_device(device: str) -> torch.device:
    d = (device or "cpu").strip()
    if d not in ("cpu", "cuda", "mps") and not d.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; expected cpu, cuda or cuda:N", field="--device")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine (this torch build or no GPU); use --device cpu", field="--device")
    if d == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("MPS is not available on this machine; use --device cpu", field="--device")
    return torch.device(d)


# --------------------------------------------------------------------------- input shapes


def parse_shape(text: str, batch_size: int = 1, *, bytes_per_element: int = 4) -> tuple[int, ...]:
    """``3,32,32`` -> ``(3, 32, 32)`` (no batch axis).

    A shape whose input batch (``batch_size`` samples of float32) would not fit in the
    machine's memory is refused here, with both sizes, instead of failing in the allocator
    (:func:`eenet_cli.memory.check_memory`).
    """
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
