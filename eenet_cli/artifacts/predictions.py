"""Predictions files (docs/spec.md §2.1): Parquet with one fixed-size-list column of scores per
exit, read into ``[N, K, C]`` float32 and written in row groups, atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eenet_cli.artifacts import files as _files
from eenet_cli.artifacts.files import (
    CREATED_BY,
    _stat_input,
    atomic_path,
    check_version,
    display,
    loads_strict,
    sha256_paths,
)
from eenet_cli.errors import InputError

EXIT_PREFIX = "exit_"


@dataclass
class Predictions:
    """Per-exit scores of N samples, as read from a predictions file (docs/spec.md §2.1)."""

    scores: np.ndarray  # [N, K, C] float32
    labels: np.ndarray | None  # [N] int64
    split: np.ndarray | None  # [N] object (str)
    sample_id: np.ndarray | None
    meta: dict
    source: str
    files: list[Path] = field(default_factory=list)
    _sha: str | None = None

    @property
    def num_samples(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.scores.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[2])

    @property
    def score_kind(self) -> str:
        return self.meta.get("scores", "logits")

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = sha256_paths(self.files) if self.files else ""
        return self._sha

    def rows(self, mask: np.ndarray) -> "Predictions":
        return Predictions(
            scores=self.scores[mask],
            labels=None if self.labels is None else self.labels[mask],
            split=None if self.split is None else self.split[mask],
            sample_id=None if self.sample_id is None else self.sample_id[mask],
            meta=self.meta,
            source=self.source,
            files=self.files,
            _sha=self._sha,
        )

    def features(self):
        from eenet_cli.core.measures import exit_features

        return exit_features(self.scores, self.score_kind, self.labels)


def _decode_meta(raw: dict[bytes, bytes] | None, source: str) -> dict:
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        key = k.decode("utf-8", "replace")
        if not key.startswith("eenet."):
            continue
        max_bytes = _files.MAX_METADATA_BYTES  # looked up per call: one limit, set in files.py
        if len(v) > max_bytes:
            limit = f"{max_bytes / 2**20:g} MiB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
            raise InputError(f"metadata value of {len(v)} bytes is larger than the {limit} limit", source=source, field=key)
        out[key[len("eenet.") :]] = loads_strict(v, f"{source}: metadata {key}")
    return out


def _open_parquet(path: Path, source: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        pf.schema_arrow  # noqa: B018 - decoded lazily; a damaged footer fails here, not later
        return pf
    except PermissionError:
        raise InputError("permission denied", source=source) from None
    except (pa.ArrowException, OSError, ValueError) as e:  # ValueError: e.g. a column name that is not UTF-8
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"not a readable Parquet file ({msg})", source=source) from None


def _part_files(path: Path, source: str) -> list[Path]:
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
        if not parts:
            raise InputError("folder holds no .parquet part files", source=source)
        return parts
    _stat_input(path, source)
    return [path]


def _check_schema(schema, source: str) -> tuple[list[str], int, bool]:
    import pyarrow as pa

    names = schema.names
    exit_cols = [n for n in names if n.startswith(EXIT_PREFIX)]
    if not exit_cols:
        raise InputError("no exit columns (expected exit_0 ... exit_{K-1})", source=source, field="exit_0")
    k = len(exit_cols)
    expected = [f"{EXIT_PREFIX}{j}" for j in range(k)]
    if sorted(exit_cols, key=lambda s: (len(s), s)) != expected:
        raise InputError(f"exit columns must be exit_0 ... exit_{k - 1} with no gaps, got {exit_cols}", source=source, field="exit columns")
    num_classes = None
    fp16 = False
    for name in expected:
        t = schema.field(name).type
        if not pa.types.is_fixed_size_list(t):
            raise InputError(f"expected fixed_size_list<float32>[C], got {t}", source=source, field=name)
        vt = t.value_type
        if not (pa.types.is_float32(vt) or pa.types.is_float16(vt) or pa.types.is_float64(vt)):
            raise InputError(f"expected float32 (or float16) scores, got {vt}", source=source, field=name)
        fp16 |= pa.types.is_float16(vt)
        if num_classes is None:
            num_classes = t.list_size
        elif t.list_size != num_classes:
            raise InputError(
                f"has {t.list_size} classes but exit_0 has {num_classes}; every exit must score the same classes",
                source=source,
                field=name,
            )
    if "sample_id" in names:
        t = schema.field("sample_id").type
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(f"expected integers or strings, got {t}", source=source, field="sample_id")
    if "label" in names and not pa.types.is_integer(schema.field("label").type):
        raise InputError(f"expected int64 labels, got {schema.field('label').type}", source=source, field="label")
    if "split" in names and not (pa.types.is_string(schema.field("split").type) or pa.types.is_large_string(schema.field("split").type) or pa.types.is_dictionary(schema.field("split").type)):
        raise InputError(f"expected strings, got {schema.field('split').type}", source=source, field="split")
    return expected, int(num_classes), fp16


_NUMPY_FLOAT = {"halffloat": np.float16, "float": np.float32, "double": np.float64}


def _fixed_list_view(chunk, num_classes: int, source: str, name: str) -> np.ndarray:
    """``[rows, C]`` numpy view of a fixed_size_list<float> chunk's buffer (no copy)."""
    child = chunk.values  # the whole child array; the chunk's rows start at chunk.offset
    if child.null_count:
        raise InputError("scores contain nulls", source=source, field=name)
    dtype = np.dtype(_NUMPY_FLOAT[str(child.type)])
    start = (chunk.offset * num_classes + child.offset) * dtype.itemsize
    flat = np.frombuffer(child.buffers()[1], dtype=dtype, count=len(chunk) * num_classes, offset=start)
    return flat.reshape(len(chunk), num_classes)


def _signed_ids():
    import pyarrow as pa

    return {pa.int8().id, pa.int16().id, pa.int32().id, pa.int64().id}


def _no_nulls(col, first_row: int, source: str, name: str) -> None:
    """Refuse a null in a column that needs a value in every row, naming the first such row."""
    if col.null_count:
        import pyarrow.compute as pc

        at = int(pc.index(pc.is_null(col), True).as_py())
        raise InputError(f"row {first_row + at} has no value (null); {col.null_count} row(s) in all", source=source, field=name)


def _ints(col, first_row: int = 0, source: str = "", name: str = "") -> np.ndarray:
    """An integer column as int64 straight from its buffers (nulls are checked by the
    caller); an unsigned value beyond the int64 range is refused, not wrapped."""
    parts = [_array_ints(chunk) for chunk in col.chunks]
    if not parts:
        return np.empty(0, np.int64)
    out = np.concatenate(parts)
    if out.dtype == np.uint64 and out.size and out.max() > np.iinfo(np.int64).max:
        at = int(np.argmax(out > np.iinfo(np.int64).max))
        raise InputError(f"value {int(out[at])} at row {first_row + at} is beyond the int64 range", source=source, field=name)
    return out.astype(np.int64)


def _array_ints(arr) -> np.ndarray:
    dtype = np.dtype(f"int{arr.type.bit_width}" if arr.type.id in _signed_ids() else f"uint{arr.type.bit_width}")
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def _strings(col) -> np.ndarray:
    """A string column as an object array, via its dictionary (few distinct values)."""
    import pyarrow as pa

    enc = col.combine_chunks()
    if not pa.types.is_dictionary(enc.type):
        enc = enc.dictionary_encode()
    values = np.array(enc.dictionary.to_pylist() + [None], dtype=object)
    idx = _array_ints(enc.indices).astype(np.int64)
    return values[idx]


READ_THREADS = max(1, min(2, os.cpu_count() or 1))  # exit columns decoded at once (each holds a decoded temporary)


class _ThreadHandles:
    """One ``ParquetFile`` per file and thread: a file handle is not shared between threads
    that read at the same time (the main thread keeps the handles already open)."""

    def __init__(self, opened: dict, reopen=None):
        self.main = threading.get_ident()
        self.opened = opened
        self.reopen = reopen or _open_parquet
        self.local = threading.local()

    def get(self, f: Path, src: str):
        if threading.get_ident() == self.main:
            return self.opened[f]
        mine = self.local.__dict__.setdefault("files", {})
        if f not in mine:
            mine[f] = self.reopen(f, src)
        return mine[f]


def _fill_from_parts(pfs, files, source, cols, want, names, num_classes, scores, labels, split_parts, id_parts, executor, reopen=None) -> bool:
    """Copy every part file's rows into the preallocated arrays (see :func:`read_predictions`);
    returns whether every score is finite."""
    import pyarrow as pa

    k = len(cols)
    handles = _ThreadHandles(dict(pfs), reopen)
    nonfinite: list = []  # list.append is atomic: safe from the worker threads
    row = 0
    for f, pf in pfs:
        src = source if len(files) == 1 else str(f)
        pool = pa.default_memory_pool()

        def read(g: int, columns: list[str], handle=pf):
            try:
                return handle.read_row_group(g, columns=columns)
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"cannot read row group {g} ({str(e).splitlines()[0]})", source=src) from None

        def copy_exit(g: int, j: int, start: int) -> None:
            name = cols[j]
            col = read(g, [name], handles.get(f, src)).column(0)
            if col.null_count:
                raise InputError(f"{col.null_count} rows have no scores (null)", source=src, field=name)
            at = start
            for chunk in col.chunks:
                cm = len(chunk)
                view = _fixed_list_view(chunk, num_classes, src, name)
                dest = scores[at : at + cm, j, :]
                with np.errstate(over="ignore"):
                    dest[...] = view  # float64 beyond the float32 range becomes inf here
                if not np.isfinite(dest).all():  # checked after the cast, while the block is in cache
                    nonfinite.append((at, j))
                at += cm
            del col
            pool.release_unused()

        # one task per (row group, exit column), all queued at once: Arrow decodes and numpy
        # copies without the GIL, so the columns are read in parallel with no core idle at a
        # row group's end, while only the running tasks hold a decoded column (one exit's
        # share of a row group each); the main thread reads the small columns meanwhile
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]) + row
        if executor is not None and k > 1:
            futures = [executor.submit(copy_exit, g, j, int(starts[g])) for g in range(pf.num_row_groups) for j in range(k)]
        else:
            futures = []
            for g in range(pf.num_row_groups):
                for j in range(k):
                    copy_exit(g, j, int(starts[g]))
        try:
            for g in range(pf.num_row_groups):
                tbl = read(g, [c for c in want if c not in cols])
                m = pf.metadata.row_group(g).num_rows
                if labels is not None:
                    lab = tbl.column("label")
                    _no_nulls(lab, row, src, "label")
                    labels[row : row + m] = _ints(lab, row, src, "label")
                if "split" in names:
                    sp = tbl.column("split")
                    if sp.null_count:
                        raise InputError(f"{sp.null_count} rows have no split", source=src, field="split")
                    split_parts.append(_strings(sp))
                if "sample_id" in names:
                    sid = tbl.column("sample_id")
                    _no_nulls(sid, row, src, "sample_id")
                    id_parts.append(_ints(sid, row, src, "sample_id") if pa.types.is_integer(sid.type) else _strings(sid))
                row += m
                del tbl
            for fut in futures:  # in (row group, exit) order: the first bad column is the one reported
                fut.result()
        finally:
            for fut in futures:
                fut.cancel()
        pool.release_unused()  # hand decoded buffers back at once
    return not nonfinite


def read_predictions(path: str | os.PathLike, *, validate: bool = True) -> Predictions:
    """Read a predictions file or folder of part files into ``[N, K, C]`` float32.

    Exit columns are copied row group by row group straight from Arrow buffers into one
    preallocated array: no per-row Python objects and no second full-size copy.
    """
    import pyarrow as pa

    source = display(path)
    if str(path) == "-":
        # stdin is read whole into memory (Parquet needs its footer first); no copy on disk
        import pyarrow as pa

        buf = sys.stdin.buffer.read()
        if not buf:
            raise InputError("stdin is empty; expected a predictions Parquet file", source=source)
        sha = hashlib.sha256(buf).hexdigest()
        files = [Path("-")]
        pfs = [(files[0], _open_parquet(pa.BufferReader(buf), source))]

        def reopen(f, src):
            return _open_parquet(pa.BufferReader(buf), src)
    else:
        sha = reopen = None
        files = _part_files(Path(path), source)
        pfs = [(f, _open_parquet(f, source if len(files) == 1 else str(f))) for f in files]
    first_schema = pfs[0][1].schema_arrow
    meta = _decode_meta(first_schema.metadata, source)
    for f, pf in pfs[1:]:  # every part must declare what the first declares
        part_meta = _decode_meta(pf.schema_arrow.metadata, str(f))
        for key in ("format", "version", "num_exits", "num_classes", "scores"):
            if part_meta.get(key) != meta.get(key):
                raise InputError(
                    f"part file declares {key} {part_meta.get(key)!r} but {files[0].name} declares {meta.get(key)!r}",
                    source=str(f),
                    field=f"eenet.{key}",
                )
    fmt = meta.get("format", "predictions")
    if fmt != "predictions":
        raise InputError(f"expected eenet.format 'predictions', got {fmt!r}", source=source, field="eenet.format")
    if "version" in meta:
        check_version("predictions", meta["version"], f"{source}: metadata eenet.version")
    cols, num_classes, _ = _check_schema(first_schema, source)
    for f, pf in pfs[1:]:
        if not pf.schema_arrow.remove_metadata().equals(first_schema.remove_metadata()):
            raise InputError(f"part file schema differs from {files[0].name}", source=str(f))
    k = len(cols)
    if "num_exits" in meta and meta["num_exits"] != k:
        raise InputError(f"says {meta['num_exits']} exits but the file has {k} exit columns", source=source, field="eenet.num_exits")
    if "num_classes" in meta and meta["num_classes"] != num_classes:
        raise InputError(f"says {meta['num_classes']} classes but exit columns hold {num_classes}", source=source, field="eenet.num_classes")
    scores_kind = meta.get("scores", "logits")
    if scores_kind not in ("logits", "probs"):
        raise InputError(f"expected 'logits' or 'probs', got {scores_kind!r}", source=source, field="eenet.scores")
    names = first_schema.names
    n = sum(pf.metadata.num_rows for _, pf in pfs)
    if n == 0:
        raise InputError("has no rows", source=source)
    if num_classes < 2:
        raise InputError(f"needs at least 2 classes, got {num_classes}", source=source, field="exit_0")
    scores = np.empty((n, k, num_classes), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64) if "label" in names else None
    split_parts: list[np.ndarray] = []
    id_parts: list[np.ndarray] = []
    want = cols + [c for c in ("label", "split", "sample_id") if c in names]
    workers = min(k, READ_THREADS)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eenet-read") if workers > 1 else None
    try:
        finite = _fill_from_parts(pfs, files, source, cols, want, names, num_classes, scores, labels, split_parts, id_parts, executor, reopen)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    preds = Predictions(
        scores=scores,
        labels=labels,
        split=np.concatenate(split_parts) if split_parts else None,
        sample_id=np.concatenate(id_parts) if id_parts else None,
        meta=meta,
        source=source,
        files=[] if sha is not None else files,
    )
    if sha is not None:
        preds._sha = sha
    if validate:
        # the copy already checked finiteness; the full scan runs only to name the first bad score
        validate_predictions(preds, check_finite=not finite)
    return preds


def validate_predictions(p: Predictions, *, check_finite: bool = True) -> None:
    src = p.source
    step = 8192  # rows per check, to keep the temporary boolean mask small
    for start in range(0, p.num_samples if check_finite else 0, step):
        block = p.scores[start : start + step]
        finite = np.isfinite(block)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise InputError(
                f"non-finite score (NaN or infinite) at row {start + bad[0]}, class {bad[2]}",
                source=src,
                field=f"exit_{bad[1]}",
            )
    if p.score_kind == "probs":
        if (p.scores < 0).any():
            raise InputError("eenet.scores is 'probs' but some scores are negative", source=src, field="eenet.scores")
        sums = p.scores.sum(axis=-1, dtype=np.float64)
        off = np.abs(sums - 1.0) > 1e-3
        if off.any():
            r, e = np.argwhere(off)[0]
            raise InputError(
                f"eenet.scores is 'probs' but row {r} sums to {sums[r, e]:.4g}, not 1 (store logits, or softmaxed scores)",
                source=src,
                field=f"exit_{e}",
            )
    if p.labels is not None:
        c = p.num_classes
        bad = (p.labels < 0) | (p.labels >= c)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"label {p.labels[i]} at row {i} is outside [0, {c})", source=src, field="label")
    if p.sample_id is not None:
        splits = p.split if p.split is not None else np.zeros(p.num_samples, dtype=object)
        for value in np.unique(splits):  # a handful of splits, not samples
            rows = np.flatnonzero(splits == value)
            ids = p.sample_id[rows]
            order = np.argsort(ids, kind="stable")
            same = ids[order][1:] == ids[order][:-1]
            if same.any():
                i = int(rows[order][1:][np.argmax(same)])
                dup = p.sample_id[i].item() if isinstance(p.sample_id[i], np.generic) else p.sample_id[i]
                raise InputError(f"sample_id {dup!r} appears more than once within a split", source=src, field="sample_id")


def predictions_schema(num_exits: int, num_classes: int, *, fp16: bool = False, sample_id_type=None, with_split: bool = True, with_label: bool = True):
    import pyarrow as pa

    vt = pa.float16() if fp16 else pa.float32()
    fields = [pa.field(f"{EXIT_PREFIX}{j}", pa.list_(vt, num_classes), nullable=False) for j in range(num_exits)]
    if with_label:
        fields.append(pa.field("label", pa.int64()))
    if with_split:
        fields.append(pa.field("split", pa.string()))
    if sample_id_type is not None:
        fields.append(pa.field("sample_id", sample_id_type))
    return pa.schema(fields)


def predictions_metadata(num_exits: int, num_classes: int, *, scores: str = "logits", costs: dict | None = None, model: str | None = None, class_names: list | None = None) -> dict[bytes, bytes]:
    meta: dict[str, Any] = {
        "format": "predictions",
        "version": 1,
        "num_exits": num_exits,
        "num_classes": num_classes,
        "scores": scores,
        "created_by": CREATED_BY,
    }
    if costs is not None:
        meta["costs"] = costs
    if model is not None:
        meta["model"] = model
    if class_names is not None:
        meta["class_names"] = class_names
    return {f"eenet.{k}".encode(): json.dumps(v, allow_nan=False).encode() for k, v in meta.items()}


def _exit_arrays(scores: np.ndarray, fp16: bool):
    import pyarrow as pa

    n, k, c = scores.shape
    dtype = np.float16 if fp16 else np.float32
    arrs = []
    for j in range(k):
        flat = np.ascontiguousarray(scores[:, j, :], dtype=dtype).reshape(-1)
        arrs.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), c))
    return arrs


class PredictionsWriter:
    """Stream predictions into one Parquet file, a row group per ``write`` call.

    The file appears under its final name only when ``close()`` succeeds (use it as a
    context manager). ``append_from`` copies the rows of an existing file first, which is
    how ``dump --append`` adds a split without rewriting anything in place.

    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp(); path = os.path.join(d, "p.parquet")
    >>> with PredictionsWriter(path, num_exits=2, num_classes=3) as w:
    ...     w.write(np.zeros((4, 2, 3), np.float32), labels=np.arange(4) % 3, split="val")
    >>> read_predictions(path).scores.shape
    (4, 2, 3)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_exits: int,
        num_classes: int,
        scores: str = "logits",
        fp16: bool = False,
        costs: dict | None = None,
        model: str | None = None,
        class_names: list | None = None,
        sample_id_type=None,
        with_split: bool = True,
    ):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.num_exits, self.num_classes, self.fp16 = num_exits, num_classes, fp16
        self.schema = predictions_schema(
            num_exits, num_classes, fp16=fp16, sample_id_type=sample_id_type or pa.int64(), with_split=with_split
        ).with_metadata(predictions_metadata(num_exits, num_classes, scores=scores, costs=costs, model=model, class_names=class_names))
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.rows = 0

    def write(self, scores: np.ndarray, labels: np.ndarray, split: str | np.ndarray | None = None, sample_id: np.ndarray | None = None) -> None:
        import pyarrow as pa

        scores = np.asarray(scores)
        n = scores.shape[0]
        if scores.shape[1:] != (self.num_exits, self.num_classes):
            raise ValueError(f"expected scores [n, {self.num_exits}, {self.num_classes}], got {list(scores.shape)}")
        cols = _exit_arrays(scores, self.fp16)
        cols.append(pa.array(np.asarray(labels, dtype=np.int64)))
        names = [f.name for f in self.schema]
        if "split" in names:
            sp = np.full(n, split, dtype=object) if isinstance(split, str) or split is None else np.asarray(split, dtype=object)
            cols.append(pa.array(sp, type=pa.string()))
        if "sample_id" in names:
            ids = np.arange(self.rows, self.rows + n) if sample_id is None else sample_id
            cols.append(pa.array(ids, type=self.schema.field("sample_id").type))
        self._writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))
        self.rows += n

    def append_from(self, path: str | os.PathLike) -> None:
        """Copy every row of an existing predictions file (same K and C) into this one."""
        import pyarrow.parquet as pq

        old = read_predictions(path)
        if (old.num_exits, old.num_classes) != (self.num_exits, self.num_classes):
            raise InputError(
                f"cannot append: file has {old.num_exits} exits × {old.num_classes} classes, new rows have "
                f"{self.num_exits} × {self.num_classes}",
                source=str(path),
            )
        pf = pq.ParquetFile(old.files[0])
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g)
            self.write(
                np.stack([np.asarray(t.column(f"exit_{j}").combine_chunks().flatten()).reshape(-1, self.num_classes) for j in range(self.num_exits)], axis=1),
                labels=t.column("label").to_numpy() if "label" in t.column_names else np.zeros(t.num_rows, np.int64),
                split=np.asarray(t.column("split").to_numpy(zero_copy_only=False), dtype=object) if "split" in t.column_names else None,
                sample_id=t.column("sample_id").to_numpy(zero_copy_only=False) if "sample_id" in t.column_names else None,
            )

    def close(self) -> None:
        self._writer.close()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException | None = None) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(type(exc) if exc else RuntimeError, exc or RuntimeError("aborted"), None)

    def __enter__(self) -> "PredictionsWriter":
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is None:
            self.close()
        else:
            self.abort(ev)


def write_predictions(
    path: str | os.PathLike,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    split: np.ndarray | str | None = None,
    sample_id: np.ndarray | None = None,
    costs: dict | None = None,
    scores_kind: str = "logits",
    fp16: bool = False,
    model: str | None = None,
    row_group_size: int = 8192,
) -> None:
    """Write a whole predictions array (atomically), in row groups of ``row_group_size``."""
    n, k, c = scores.shape
    with PredictionsWriter(path, num_exits=k, num_classes=c, scores=scores_kind, fp16=fp16, costs=costs, model=model, with_split=split is not None) as w:
        for s in range(0, n, row_group_size):
            sl = slice(s, s + row_group_size)
            w.write(
                scores[sl],
                labels[sl],
                split=split if isinstance(split, str) or split is None else split[sl],
                sample_id=None if sample_id is None else sample_id[sl],
            )



# --------------------------------------------------------------------------- appending (dump --append)


@dataclass
class ExistingPredictions:
    """What ``dump --append`` needs from the file it appends to."""

    meta: dict
    next_id: int  # the sample id the first appended row gets
    string_ids: bool  # the file's sample ids are strings (new rows cannot continue them)
    fp16: bool
    rows: int
    names: tuple = ()  # the file's column names


def read_existing(path: Path) -> ExistingPredictions:
    """What --append needs from the file it appends to (metadata and the last sample id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = str(path)
    if not path.is_file():
        raise InputError("--append: no such file to append to (drop --append to create it)", source=src, field="--output")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"--append: not a readable Parquet file ({str(e).splitlines()[0]})", source=src) from None
    meta = _decode_meta(pf.schema_arrow.metadata, src)
    if meta.get("format", "predictions") != "predictions":
        raise InputError(f"--append: expected a predictions file, got format {meta.get('format')!r}", source=src)
    for key in ("num_exits", "num_classes"):
        value = meta.get(key)
        if value is None:
            raise InputError(f"--append: not an eenet predictions file (no eenet.{key} metadata); append only to a file written by eenet dump", source=src)
        if type(value) is not int or value < 1:
            raise InputError(f"--append: eenet.{key} metadata is {str(value)[:40]!r}, expected a positive integer", source=src)
    names = pf.schema_arrow.names
    next_id, string_ids = pf.metadata.num_rows, False
    if "sample_id" in names:
        t = pf.schema_arrow.field("sample_id").type
        if pa.types.is_integer(t):
            ids = pq.read_table(path, columns=["sample_id"]).column("sample_id")
            if len(ids):
                import pyarrow.compute as pc

                next_id = int(pc.max(ids).as_py()) + 1
        else:
            string_ids = True
    fp16 = "exit_0" in names and pa.types.is_float16(pf.schema_arrow.field("exit_0").type.value_type)
    return ExistingPredictions(meta, next_id, string_ids, fp16, pf.metadata.num_rows, tuple(names))


def next_part_sample_id(folder: Path) -> int:
    """The sample id after the last one in the part files ``folder/part-*.parquet`` of a
    sharded dump (a part without a sample_id column counts its rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    nxt = 0
    for p in sorted(folder.glob("part-*.parquet")):
        pf = pq.ParquetFile(p)
        if "sample_id" in pf.schema_arrow.names:
            ids = pq.read_table(p, columns=["sample_id"]).column("sample_id")
            if len(ids) and pa.types.is_integer(pf.schema_arrow.field("sample_id").type):
                nxt = max(nxt, int(pc.max(ids).as_py()) + 1)
        else:
            nxt += pf.metadata.num_rows
    return nxt


def read_dump_manifest(path: Path) -> Any:
    """The parsed JSON of a sharded dump's part-file manifest (``.eenet-dump.json``); raises
    ``OSError``, ``ValueError`` or ``UnicodeDecodeError`` as reading and ``json.loads`` do."""
    return json.loads(path.read_text(encoding="utf-8"))


def write_dump_manifest(path: Path, doc: dict) -> None:
    """Write a part-file manifest atomically (one-space indent, newline at the end)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
