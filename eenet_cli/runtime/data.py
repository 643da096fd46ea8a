"""Naming data on the command line (docs/spec.md §5) and reading it as checked ``(x, y)`` batches.

A *data spec* is an import string returning an iterable of ``(x, y)`` batches (a
``DataLoader`` works; a callable is called with no arguments), a ``.npz`` file with arrays
``x`` and ``y`` (``allow_pickle=False``), a ``.pt`` file with tensors ``x`` and ``y``
(``weights_only=True``), or a built-in dataset (``digits:train|val|test``). ``x`` may
also be a dict or tuple of tensors (e.g. tokenised text: ``input_ids`` and
``attention_mask``), passed to the model as it is, or a batch of strings, which is
tokenised (:class:`eenet_cli.runtime.text_data.TextOptions`); a ``.csv``/``.tsv``/``.parquet``
file is text data with a text column and an integer label column.

:func:`rebatch` regroups any source's samples into batches of one size.

Every problem with a spec raises :class:`~eenet_cli.errors.InputError` with one line that
names the spec and what is wrong. This module imports torch; import it lazily.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eenet_cli.errors import InputError
from eenet_cli.runtime import models
from eenet_cli.runtime.batch import batch_len, batch_slice
from eenet_cli.runtime.load import resolve_import
from eenet_cli.runtime.messages import first_line
from eenet_cli.runtime.text_data import (
    TextBatches,
    TextOptions,
    is_text,
    is_text_table,
    read_text_table,
)

BUILTIN_DATASETS = {"digits": ("train", "val", "test")}


# --------------------------------------------------------------------------- sources


@dataclass
class DataSource:
    """Batches of ``(x, y)`` tensors, and how many samples there are when known.

    ``x`` is a tensor, or a dict/tuple of tensors (tokenised text); batches of strings are
    tokenised with ``text`` (:class:`eenet_cli.runtime.text_data.TextOptions`).
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


# --------------------------------------------------------------------------- checking batches


def check_batch(batch: Any, index: int, spec: str, text: Any = None) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, dict) and "x" in batch and "y" in batch:
        batch = (batch["x"], batch["y"])
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
        raise InputError(f"batch {index}: expected an (x, y) pair, got {got}", source=spec)
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


# --------------------------------------------------------------------------- data specs


def load_data(spec: str, batch_size: int = 256, split_hint: str | None = None, text: Any = None) -> DataSource:
    """Resolve a data spec (see the module docstring) into batches.

    ``text`` (:class:`eenet_cli.runtime.text_data.TextOptions`) tokenises text: a ``.csv``/``.tsv``/
    ``.parquet`` file's text column, or batches of strings from an import string.
    """
    if not spec:
        raise InputError("no data given", field="--data")
    if batch_size < 1:
        raise InputError(f"must be at least 1, got {batch_size}", field="--batch-size")
    if is_text_table(spec):
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
                raise InputError(f"calling it failed: {first_line(e)}", source=spec, field="--data") from None
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


# --------------------------------------------------------------------------- rebatching


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


# --------------------------------------------------------------------------- files and arrays


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
        raise InputError(f"not a readable .npz file ({first_line(e)})", source=spec, field="--data") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"not a readable .npz file ({first_line(e)})", source=spec, field="--data") from None
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
        raise InputError(f"not a readable torch file ({first_line(e)})", source=spec, field="--data") from None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        obj = {"x": obj[0], "y": obj[1]}
    if not isinstance(obj, dict) or not {"x", "y"} <= set(obj):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"expected a dict with tensors 'x' and 'y', found {found}", source=spec, field="--data")
    return _check_xy(obj["x"], obj["y"], spec)
