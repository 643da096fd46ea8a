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
from dataclasses import dataclass
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


class Predictions:
    """Per-exit scores of N samples, as read from a predictions file (docs/spec.md §2.1).

    Read whole (``scores`` is ``[N, K, C]`` float32), or streamed (per-exit features only;
    ``scores`` is then read from the file on first use), or compact (docs/spec.md §2.1.1:
    no full score vectors exist, and ``scores`` raises one line saying so).
    """

    def __init__(self, scores=None, labels=None, split=None, sample_id=None, meta=None, source="", files=None, _sha=None,
                 *, features=None, lazy=None, rows=None):
        self._scores = scores
        self.labels = labels
        self.split = split
        self.sample_id = sample_id
        self.meta = meta if meta is not None else {}
        self.source = source
        self.files = list(files) if files else []
        self._sha = _sha
        self._features = features  # streamed or compact: the per-exit features of these rows
        self._lazy = lazy  # streamed full file: a LazyScores of the whole file
        self._rows = rows  # streamed full file: these rows' positions in the file

    @property
    def compact(self) -> bool:
        return self._scores is None and self._lazy is None

    @property
    def scores(self) -> np.ndarray:
        if self._scores is not None:
            return self._scores
        if self._lazy is None:
            from eenet_cli.core.measures import COMPACT_REFUSAL

            raise InputError(COMPACT_REFUSAL.format(what="this operation"), source=self.source)
        full = self._lazy.get()
        return full if self._rows is None else full[self._rows]

    @property
    def num_samples(self) -> int:
        return int(self._scores.shape[0]) if self._scores is not None else self._features.num_samples

    @property
    def num_exits(self) -> int:
        return int(self._scores.shape[1]) if self._scores is not None else self._features.num_exits

    @property
    def num_classes(self) -> int:
        return int(self._scores.shape[2]) if self._scores is not None else self._features.num_classes

    @property
    def score_kind(self) -> str:
        return self.meta.get("scores", "logits")

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = sha256_paths(self.files) if self.files else ""
        return self._sha

    def rows(self, mask: np.ndarray) -> "Predictions":
        take = (lambda a: None if a is None else a[mask])  # noqa: E731
        if self._scores is not None:
            return Predictions(self._scores[mask], take(self.labels), take(self.split), take(self.sample_id), self.meta,
                               self.source, self.files, self._sha)
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        base = None if self._lazy is None else (idx if self._rows is None else self._rows[idx])
        return Predictions(None, take(self.labels), take(self.split), take(self.sample_id), self.meta, self.source,
                           self.files, self._sha, features=self._features.subset(idx), lazy=self._lazy, rows=base)

    def features(self):
        if self._features is not None:
            return self._features
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


STREAM_BUFFER_BYTES = 1 << 20  # a streamed read fetches a column chunk through a buffer this size


def _open_parquet(path: Path, source: str, *, stream: bool = False):
    """A ``ParquetFile``, or one line on why not. ``stream=True`` turns off Arrow's
    pre-buffering (which keeps every column chunk read so far in memory until the handle is
    dropped: the size of the file, on a whole-file pass) and reads column chunks through a
    small buffer, page by page, so a batch holds only its own rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=STREAM_BUFFER_BYTES) if stream else pq.ParquetFile(path)
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


def read_predictions(path: str | os.PathLike, *, validate: bool = True, stream: bool = False) -> Predictions:
    """Read a predictions file or folder of part files into ``[N, K, C]`` float32.

    Exit columns are copied row group by row group straight from Arrow buffers into one
    preallocated array: no per-row Python objects and no second full-size copy.

    With ``stream=True`` a full-score file is read batch by batch into per-exit features
    only (peak memory bounded by the features, not the scores; the scores are read again
    if something asks for them). A compact file (docs/spec.md §2.1.1) is always streamed.
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
        _same_layout(pfs[0], (f, pf), meta, part_meta)
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
    if _is_compact(meta, first_schema, source):
        return _read_compact(pfs, files, source, meta, first_schema, sha, validate)
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
    if stream:
        return _read_full_streamed(path, pfs, files, source, meta, names, cols, num_classes, scores_kind, sha, reopen, validate)
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


# --------------------------------------------------------------------------- streamed reading

STREAM_BATCH_BYTES = 1 << 25  # scores per streamed batch (32 MiB of float32): bounds the decoded temporaries


def _is_compact(meta: dict, schema, source: str) -> bool:
    """Whether the file is the compact layout (version 2); refuses versions this release
    cannot read, with one line."""
    import pyarrow as pa

    if "version" not in meta:
        return False
    v = meta["version"]
    major = None
    if not isinstance(v, bool) and isinstance(v, (int, float, str)):
        try:
            major = int(str(v).split(".")[0])
        except ValueError:
            major = None
    if major == COMPACT_VERSION:
        t = schema.field("exit_0").type if "exit_0" in schema.names else None
        if t is not None and pa.types.is_struct(t):
            return True
        # any other version-2 layout is one this release does not know: refused as before
    check_version("predictions", v, f"{source}: metadata eenet.version")
    return False


def _same_layout(first, part, first_meta: dict, part_meta: dict) -> None:
    """Refuse, in one line, a folder that mixes compact and full-score part files."""
    (f0, pf0), (f, pf) = first, part
    a = _is_compact(first_meta, pf0.schema_arrow, str(f0))
    b = _is_compact(part_meta, pf.schema_arrow, str(f))
    if a != b:
        what = ("compact predictions (top-k per exit)", "full scores")
        raise InputError(
            f"part file holds {what[not b]} but {f0.name} holds {what[not a]}; a folder's parts must all be one or the other "
            "(eenet compact converts a full part)", source=str(f),
        )


def _batches(pfs, files, source, columns, rows_per_batch):
    """Yield ``(part source, first row, record batch)`` over every part file, in order.

    Each file on disk is opened afresh for the pass with pre-buffering off (see
    :func:`_open_parquet`) and dropped at its end, and Arrow's freed memory is handed back
    after each file: memory is bounded by a batch, whatever the file or row group size."""
    import pyarrow as pa

    row = 0
    pool = pa.default_memory_pool()
    for f, pf in pfs:
        src = source if len(files) == 1 else str(f)
        if isinstance(f, Path) and str(f) != "-":
            pf = _open_parquet(f, src, stream=True)
        it = pf.iter_batches(batch_size=rows_per_batch, columns=columns, use_threads=True)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"cannot read the rows after row {row} ({str(e).splitlines()[0]})", source=src) from None
            yield src, row, batch
            row += batch.num_rows
            del batch
        del it, pf
        pool.release_unused()


def _fsl_numpy(arr, width: int, src: str, name: str, dtype=None) -> np.ndarray:
    """``[rows, width]`` numpy view of a fixed_size_list array (no copy)."""
    child = arr.values
    if child.null_count:
        raise InputError("holds nulls inside its lists", source=src, field=name)
    dt = np.dtype(dtype) if dtype is not None else np.dtype(_NUMPY_FLOAT.get(str(child.type)) or f"int{child.type.bit_width}")
    start = (arr.offset * width + child.offset) * dt.itemsize
    return np.frombuffer(child.buffers()[1], dtype=dt, count=len(arr) * width, offset=start).reshape(len(arr), width)


class _SmallColumns:
    """label, split and sample_id, gathered batch by batch (see :func:`_fill_from_parts`)."""

    def __init__(self, n: int, names):
        self.names = names
        self.labels = np.empty(n, dtype=np.int64) if "label" in names else None
        self.split_parts: list[np.ndarray] = []
        self.id_parts: list[np.ndarray] = []

    def add(self, batch, row: int, src: str) -> None:
        import pyarrow as pa

        m = batch.num_rows
        if self.labels is not None:
            lab = pa.chunked_array([batch.column("label")])
            _no_nulls(lab, row, src, "label")
            self.labels[row : row + m] = _ints(lab, row, src, "label")
        if "split" in self.names:
            sp = pa.chunked_array([batch.column("split")])
            if sp.null_count:
                raise InputError(f"{sp.null_count} rows have no split", source=src, field="split")
            self.split_parts.append(_strings(sp))
        if "sample_id" in self.names:
            sid = pa.chunked_array([batch.column("sample_id")])
            _no_nulls(sid, row, src, "sample_id")
            self.id_parts.append(_ints(sid, row, src, "sample_id") if pa.types.is_integer(sid.type) else _strings(sid))

    def split(self):
        return np.concatenate(self.split_parts) if self.split_parts else None

    def ids(self):
        return np.concatenate(self.id_parts) if self.id_parts else None


def _pipelined(items, work, small):
    """Run ``work(item)`` on a worker thread while the next item decodes (at most two in
    flight); ``small(item)`` runs on this thread. Errors come out in row order."""
    from collections import deque

    workers = READ_THREADS
    if workers < 2:
        for item in items:
            small(item)
            work(item)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eenet-stream") as ex:
        try:
            for item in items:
                pending.append(ex.submit(work, item))
                try:
                    small(item)
                except InputError:
                    while pending:  # an earlier row's error is the one reported
                        pending.popleft().result()
                    raise
                while len(pending) >= workers:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def _check_full_block(block: np.ndarray, start: int, kind: str, src: str) -> None:
    """The checks :func:`validate_predictions` makes, on one streamed block of scores."""
    finite = np.isfinite(block)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise InputError(f"non-finite score (NaN or infinite) at row {start + bad[0]}, class {bad[2]}", source=src, field=f"exit_{bad[1]}")
    if kind == "probs":
        if (block < 0).any():
            raise InputError("eenet.scores is 'probs' but some scores are negative", source=src, field="eenet.scores")
        sums = block.sum(axis=-1, dtype=np.float64)
        off = np.abs(sums - 1.0) > 1e-3
        if off.any():
            r, e = np.argwhere(off)[0]
            raise InputError(
                f"eenet.scores is 'probs' but row {start + r} sums to {sums[r, e]:.4g}, not 1 (store logits, or softmaxed scores)",
                source=src,
                field=f"exit_{e}",
            )


def _read_full_streamed(path, pfs, files, source, meta, names, cols, num_classes, kind, sha, reopen, validate) -> Predictions:
    from eenet_cli.core.measures import FeatureBlocks, LazyScores

    n = sum(pf.metadata.num_rows for _, pf in pfs)
    if n == 0:
        raise InputError("has no rows", source=source)
    if num_classes < 2:
        raise InputError(f"needs at least 2 classes, got {num_classes}", source=source, field="exit_0")
    k = len(cols)
    feats = FeatureBlocks(n, k)
    small = _SmallColumns(n, names)
    want = cols + [c for c in ("label", "split", "sample_id") if c in names]
    rows = max(1, STREAM_BATCH_BYTES // (4 * k * num_classes))

    def work(item) -> None:
        src, start, batch = item
        m = batch.num_rows
        block = np.empty((m, k, num_classes), dtype=np.float32)
        for j, name in enumerate(cols):
            col = batch.column(name)
            if col.null_count:
                raise InputError(f"{col.null_count} rows have no scores (null)", source=src, field=name)
            with np.errstate(over="ignore"):
                block[:, j, :] = _fixed_list_view(col, num_classes, src, name)
        if validate:
            _check_full_block(block, start, kind, src)
        feats.add_full(start, block, kind)

    _pipelined(_batches(pfs, files, source, want, rows), work, lambda item: small.add(item[2], item[1], item[0]))

    def load() -> np.ndarray:
        return _eager_scores(pfs, files, source, cols, names, num_classes, reopen)

    lazy = LazyScores(load, num_classes)
    preds = Predictions(
        None, small.labels, small.split(), small.ids(), meta, source, [] if sha is not None else files, sha,
        features=feats.features(kind, num_classes, small.labels, lazy, source), lazy=lazy,
    )
    if validate:
        _check_rows(preds, num_classes)
    return preds


def _eager_scores(pfs, files, source, cols, names, num_classes, reopen) -> np.ndarray:
    """Every score of the file as ``[N, K, C]`` float32 (the whole-file read)."""
    n = sum(pf.metadata.num_rows for _, pf in pfs)
    scores = np.empty((n, len(cols), num_classes), dtype=np.float32)
    workers = min(len(cols), READ_THREADS)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eenet-read") if workers > 1 else None
    try:
        _fill_from_parts(pfs, files, source, cols, list(cols), [], num_classes, scores, None, [], [], executor, reopen)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return scores


def _check_rows(p: Predictions, num_classes: int) -> None:
    """Label range and sample-id uniqueness (the row checks of :func:`validate_predictions`)."""
    src = p.source
    if p.labels is not None:
        bad = (p.labels < 0) | (p.labels >= num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"label {p.labels[i]} at row {i} is outside [0, {num_classes})", source=src, field="label")
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


# --------------------------------------------------------------------------- compact predictions (§2.1.1)

COMPACT_VERSION = 2
COMPACT_FIELDS = ("top_scores", "top_classes", "logsumexp", "entropy", "pred_scores", "label_score")


def _check_compact_schema(schema, meta: dict, source: str) -> tuple[list[str], int, int, bool]:
    """(exit columns, top-k, classes, has label_score) of a compact file, or one line on what is wrong."""
    import pyarrow as pa

    names = schema.names
    exit_cols = [n for n in names if n.startswith(EXIT_PREFIX)]
    k = len(exit_cols)
    expected = [f"{EXIT_PREFIX}{j}" for j in range(k)]
    if sorted(exit_cols, key=lambda s: (len(s), s)) != expected:
        raise InputError(f"exit columns must be exit_0 ... exit_{k - 1} with no gaps, got {exit_cols}", source=source, field="exit columns")
    c = meta.get("num_classes")
    if type(c) is not int or c < 2:
        raise InputError(f"a compact file must say its number of classes (an integer >= 2), got {c!r}", source=source, field="eenet.num_classes")
    if "num_exits" in meta and meta["num_exits"] != k:
        raise InputError(f"says {meta['num_exits']} exits but the file has {k} exit columns", source=source, field="eenet.num_exits")
    with_label = "label" in names
    top_k = None
    for name in expected:
        t = schema.field(name).type
        if not pa.types.is_struct(t):
            raise InputError(f"expected a struct of top-k fields (compact layout), got {t}", source=source, field=name)
        fields = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        need = [f for f in COMPACT_FIELDS if f != "label_score" or with_label]
        missing = [f for f in need if f not in fields]
        if missing:
            raise InputError(f"struct lacks field(s) {', '.join(missing)}", source=source, field=name)
        floats = (pa.types.is_float32, pa.types.is_float16)
        for f, size, kinds in (("top_scores", None, floats), ("top_classes", None, (pa.types.is_int32, pa.types.is_int64)),
                               ("pred_scores", k, floats)):
            ft = fields[f]
            if not (pa.types.is_fixed_size_list(ft) and any(is_(ft.value_type) for is_ in kinds)):
                raise InputError(f"expected {f} as a fixed_size_list of {'int32' if f == 'top_classes' else 'float32'}, got {ft}", source=source, field=f"{name}.{f}")
            if size is not None and ft.list_size != size:
                raise InputError(f"{f} holds {ft.list_size} values, expected one per exit ({size})", source=source, field=f"{name}.{f}")
        if fields["top_scores"].list_size != fields["top_classes"].list_size:
            raise InputError("top_scores and top_classes hold different numbers of values", source=source, field=f"{name}.top_classes")
        if top_k is None:
            top_k = fields["top_scores"].list_size
        elif fields["top_scores"].list_size != top_k:
            raise InputError(f"keeps the top {fields['top_scores'].list_size} classes but exit_0 keeps {top_k}", source=source, field=name)
        for f in ("logsumexp", "entropy"):
            if not pa.types.is_float64(fields[f]):
                raise InputError(f"expected {f} as float64, got {fields[f]}", source=source, field=f"{name}.{f}")
        if with_label and not (pa.types.is_float32(fields["label_score"]) or pa.types.is_float16(fields["label_score"])):
            raise InputError(f"expected label_score as float32, got {fields['label_score']}", source=source, field=f"{name}.label_score")
    if not 2 <= top_k <= c:
        raise InputError(f"keeps the top {top_k} classes; a compact file keeps between 2 and num_classes ({c})", source=source, field="exit_0.top_scores")
    if "sample_id" in names:
        t = schema.field("sample_id").type
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(f"expected integers or strings, got {t}", source=source, field="sample_id")
    if with_label and not pa.types.is_integer(schema.field("label").type):
        raise InputError(f"expected int64 labels, got {schema.field('label').type}", source=source, field="label")
    if "split" in names and not (pa.types.is_string(schema.field("split").type) or pa.types.is_large_string(schema.field("split").type) or pa.types.is_dictionary(schema.field("split").type)):
        raise InputError(f"expected strings, got {schema.field('split').type}", source=source, field="split")
    return expected, top_k, c, with_label


def _read_compact(pfs, files, source, meta, schema, sha, validate) -> Predictions:
    from eenet_cli.core.measures import FeatureBlocks

    cols, top_k, c, _ = _check_compact_schema(schema, meta, source)
    for f, pf in pfs[1:]:
        if not pf.schema_arrow.remove_metadata().equals(schema.remove_metadata()):
            raise InputError(f"part file schema differs from {files[0].name}", source=str(f))
    kind = meta.get("scores", "logits")
    if kind not in ("logits", "probs"):
        raise InputError(f"expected 'logits' or 'probs', got {kind!r}", source=source, field="eenet.scores")
    n = sum(pf.metadata.num_rows for _, pf in pfs)
    if n == 0:
        raise InputError("has no rows", source=source)
    k = len(cols)
    names = schema.names
    feats = FeatureBlocks(n, k)
    small = _SmallColumns(n, names)
    want = cols + [x for x in ("label", "split", "sample_id") if x in names]

    def work(item) -> None:
        src, start, batch = item
        parts = {f: [] for f in COMPACT_FIELDS[:5]}
        for j, name in enumerate(cols):
            col = batch.column(name)
            if col.null_count:
                raise InputError(f"{col.null_count} rows have no value (null)", source=src, field=name)
            children = dict(zip([col.type.field(i).name for i in range(col.type.num_fields)], col.flatten()))
            for f in ("logsumexp", "entropy"):
                if children[f].null_count:
                    raise InputError(f"{children[f].null_count} rows have no value (null)", source=src, field=f"{name}.{f}")
                parts[f].append(children[f].to_numpy(zero_copy_only=False))
            for f, width, dt in (("top_scores", top_k, np.float32), ("top_classes", top_k, np.int64), ("pred_scores", k, np.float32)):
                if children[f].null_count:
                    raise InputError(f"{children[f].null_count} rows have no value (null)", source=src, field=f"{name}.{f}")
                parts[f].append(_fsl_numpy(children[f], width, src, f"{name}.{f}").astype(dt))
        top = np.stack(parts["top_scores"], axis=1)
        cls = np.stack(parts["top_classes"], axis=1)
        lse = np.stack(parts["logsumexp"], axis=1)
        ent = np.stack(parts["entropy"], axis=1)
        pred = np.stack(parts["pred_scores"], axis=1)
        if validate:
            for f, a in (("top_scores", top), ("logsumexp", lse), ("entropy", ent), ("pred_scores", pred)):
                bad = ~np.isfinite(a)
                if bad.any():
                    at = np.argwhere(bad)[0]
                    raise InputError(f"non-finite value (NaN or infinite) at row {start + at[0]}", source=src, field=f"exit_{at[1]}.{f}")
            bad = (cls < 0) | (cls >= c)
            if bad.any():
                at = np.argwhere(bad)[0]
                raise InputError(f"class {cls[tuple(at)]} at row {start + at[0]} is outside [0, {c})", source=src, field=f"exit_{at[1]}.top_classes")
            if (ent < -1e-6).any():
                at = np.argwhere(ent < -1e-6)[0]
                raise InputError(f"entropy {ent[tuple(at)]:.4g} at row {start + at[0]} is negative", source=src, field=f"exit_{at[1]}.entropy")
            if kind == "logits":
                off = lse < top.max(axis=-1) - 1e-3
                if off.any():
                    at = np.argwhere(off)[0]
                    raise InputError(f"logsumexp at row {start + at[0]} is below the largest stored logit", source=src, field=f"exit_{at[1]}.logsumexp")
        feats.add_compact(start, top, cls, lse, ent, pred, kind)

    rows = max(1, STREAM_BATCH_BYTES // (8 * k * (top_k + k + 2)))
    _pipelined(_batches(pfs, files, source, want, rows), work, lambda item: small.add(item[2], item[1], item[0]))
    preds = Predictions(
        None, small.labels, small.split(), small.ids(), meta, source, [] if sha is not None else files, sha,
        features=feats.features(kind, c, small.labels, None, source),
    )
    if validate:
        _check_rows(preds, c)
    return preds


def compact_schema(num_exits: int, top_k: int, *, with_label: bool = True, with_split: bool = True, sample_id_type=None):
    import pyarrow as pa

    fields = [
        pa.field("top_scores", pa.list_(pa.float32(), top_k), nullable=False),
        pa.field("top_classes", pa.list_(pa.int32(), top_k), nullable=False),
        pa.field("logsumexp", pa.float64(), nullable=False),
        pa.field("entropy", pa.float64(), nullable=False),
        pa.field("pred_scores", pa.list_(pa.float32(), num_exits), nullable=False),
    ]
    if with_label:
        fields.append(pa.field("label_score", pa.float32(), nullable=False))
    cols = [pa.field(f"{EXIT_PREFIX}{j}", pa.struct(fields), nullable=False) for j in range(num_exits)]
    if with_label:
        cols.append(pa.field("label", pa.int64()))
    if with_split:
        cols.append(pa.field("split", pa.string()))
    if sample_id_type is not None:
        cols.append(pa.field("sample_id", sample_id_type))
    return pa.schema(cols)


class _AtomicWriter:
    """What both Parquet writers share: ``self._writer`` (a pyarrow ParquetWriter) writes
    into ``self._ctx`` (an atomic replace, artifacts.files), which publishes the file only
    on :meth:`close`; :meth:`abort` leaves the target as it was."""

    def close(self) -> None:
        self._writer.close()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException | None = None) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(type(exc) if exc else RuntimeError, exc or RuntimeError("aborted"), None)

    def __enter__(self) -> "_AtomicWriter":
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is None:
            self.close()
        else:
            self.abort(ev)


class CompactWriter(_AtomicWriter):
    """Stream compact predictions (docs/spec.md §2.1.1) into one Parquet file, a row group
    per ``write`` call; the file appears under its name only when ``close()`` succeeds."""

    def __init__(self, path, *, num_exits: int, num_classes: int, top_k: int, scores: str = "logits", costs=None,
                 model=None, class_names=None, sample_id_type=None, with_split: bool = True, with_label: bool = True,
                 with_ids: bool = True):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.num_exits, self.num_classes, self.top_k, self.with_label = num_exits, num_classes, top_k, with_label
        meta = predictions_metadata(num_exits, num_classes, scores=scores, costs=costs, model=model, class_names=class_names)
        meta[b"eenet.version"] = json.dumps(COMPACT_VERSION).encode()
        meta[b"eenet.top_k"] = json.dumps(top_k).encode()
        self.schema = compact_schema(num_exits, top_k, with_label=with_label, with_split=with_split,
                                     sample_id_type=(sample_id_type or pa.int64()) if with_ids else None).with_metadata(meta)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.rows = 0

    def append_from(self, path) -> None:
        """Copy every row of an existing compact file (same K, C and top-k) into this one,
        row group by row group (``dump --keep top-k:K --append``)."""
        import pyarrow as pa

        src = str(path)
        pf = _open_parquet(Path(path), src, stream=True)
        old = pf.schema_arrow
        meta = _decode_meta(old.metadata, src)
        if not _is_compact(meta, old, src):
            raise InputError("--append: the file holds full scores; drop --keep to append to it, or write a new file", source=src, field="--keep")
        _, top_k, c, _ = _check_compact_schema(old, meta, src)
        k = meta.get("num_exits")
        if (k, c, top_k) != (self.num_exits, self.num_classes, self.top_k):
            raise InputError(
                f"--append: the file keeps the top {top_k} of {c} classes at {k} exits; the new rows would keep the top "
                f"{self.top_k} of {self.num_classes} at {self.num_exits}", source=src, field="--keep",
            )
        if not old.remove_metadata().equals(self.schema.remove_metadata()):
            raise InputError("--append: the file's columns differ from the ones this dump writes; write a new file", source=src)
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g)
            self._writer.write_table(pa.Table.from_arrays(t.columns, schema=self.schema))
            self.rows += t.num_rows

    def write(self, cols: dict, labels=None, split=None, sample_id=None) -> None:
        """``cols``: the arrays of :func:`eenet_cli.core.measures.compact_block` for n rows."""
        import pyarrow as pa

        n, k = cols["logsumexp"].shape
        arrays = []
        struct_type = self.schema.field("exit_0").type
        for j in range(k):
            children = [
                pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(cols["top_scores"][:, j]).reshape(-1)), self.top_k),
                pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(cols["top_classes"][:, j], dtype=np.int32).reshape(-1)), self.top_k),
                pa.array(np.ascontiguousarray(cols["logsumexp"][:, j])),
                pa.array(np.ascontiguousarray(cols["entropy"][:, j])),
                pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(cols["pred_scores"][:, j]).reshape(-1)), k),
            ]
            if self.with_label:
                children.append(pa.array(np.ascontiguousarray(cols["label_score"][:, j])))
            arrays.append(pa.StructArray.from_arrays(children, fields=list(struct_type)))
        names = [f.name for f in self.schema]
        if "label" in names:
            arrays.append(pa.array(np.asarray(labels, dtype=np.int64)))
        if "split" in names:
            sp = np.full(n, split, dtype=object) if isinstance(split, str) or split is None else np.asarray(split, dtype=object)
            arrays.append(pa.array(sp, type=pa.string()))
        if "sample_id" in names:
            ids = np.arange(self.rows, self.rows + n) if sample_id is None else sample_id
            arrays.append(pa.array(ids, type=self.schema.field("sample_id").type))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += n



def compact_predictions(path, output, *, top_k: int = 5, progress=None) -> dict:
    """Convert a full-score predictions file (or folder of parts) into a compact file,
    batch by batch (memory bounded by a batch of scores). Returns a summary dict."""
    from eenet_cli.core.measures import compact_block

    source = display(path)
    files = _part_files(Path(path), source)
    pfs = [(f, _open_parquet(f, source if len(files) == 1 else str(f))) for f in files]
    schema = pfs[0][1].schema_arrow
    meta = _decode_meta(schema.metadata, source)
    for f, pf in pfs[1:]:
        part_meta = _decode_meta(pf.schema_arrow.metadata, str(f))
        _same_layout(pfs[0], (f, pf), meta, part_meta)
        for key in ("format", "version", "num_exits", "num_classes", "scores"):
            if part_meta.get(key) != meta.get(key):
                raise InputError(f"part file declares {key} {part_meta.get(key)!r} but {files[0].name} declares {meta.get(key)!r}", source=str(f), field=f"eenet.{key}")
        if not pf.schema_arrow.remove_metadata().equals(schema.remove_metadata()):
            raise InputError(f"part file schema differs from {files[0].name}", source=str(f))
    fmt = meta.get("format", "predictions")
    if fmt != "predictions":
        raise InputError(f"expected eenet.format 'predictions', got {fmt!r}", source=source, field="eenet.format")
    if _is_compact(meta, schema, source):
        raise InputError("is already compact (top-k scores); compact reads a full-score file", source=source)
    cols, c, _ = _check_schema(schema, source)
    k = len(cols)
    if "num_exits" in meta and meta["num_exits"] != k:
        raise InputError(f"says {meta['num_exits']} exits but the file has {k} exit columns", source=source, field="eenet.num_exits")
    if "num_classes" in meta and meta["num_classes"] != c:
        raise InputError(f"says {meta['num_classes']} classes but exit columns hold {c}", source=source, field="eenet.num_classes")
    kind = meta.get("scores", "logits")
    if kind not in ("logits", "probs"):
        raise InputError(f"expected 'logits' or 'probs', got {kind!r}", source=source, field="eenet.scores")
    if not 2 <= top_k <= c:
        raise InputError(f"must be between 2 and the number of classes ({c}), got {top_k}", field="--top-k")
    n = sum(pf.metadata.num_rows for _, pf in pfs)
    if n == 0:
        raise InputError("has no rows", source=source)
    names = schema.names
    with_label = "label" in names
    id_type = schema.field("sample_id").type if "sample_id" in names else None
    want = cols + [x for x in ("label", "split", "sample_id") if x in names]
    rows = max(1, STREAM_BATCH_BYTES // (4 * k * c))
    written = 0
    with CompactWriter(output, num_exits=k, num_classes=c, top_k=top_k, scores=kind, costs=meta.get("costs"),
                       model=meta.get("model"), class_names=meta.get("class_names"), sample_id_type=id_type,
                       with_split="split" in names, with_label=with_label, with_ids=id_type is not None) as w:
        for src, start, batch in _batches(pfs, files, source, want, rows):
            m = batch.num_rows
            block = np.empty((m, k, c), dtype=np.float32)
            for j, name in enumerate(cols):
                col = batch.column(name)
                if col.null_count:
                    raise InputError(f"{col.null_count} rows have no scores (null)", source=src, field=name)
                with np.errstate(over="ignore"):
                    block[:, j, :] = _fixed_list_view(col, c, src, name)
            _check_full_block(block, start, kind, src)
            small = _SmallColumns(m, names)
            small.add(batch, 0, src)
            labels = small.labels
            if labels is not None:
                bad = (labels < 0) | (labels >= c)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise InputError(f"label {labels[i]} at row {start + i} is outside [0, {c})", source=src, field="label")
            out = compact_block(block, kind, top_k, labels)
            w.write(out, labels, small.split(), small.ids())
            written += m
            if progress is not None:
                progress(m)
    return {"input": source, "output": str(output), "rows": written, "num_exits": k, "num_classes": c, "top_k": top_k, "scores": kind}


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
    _check_rows(p, p.num_classes)


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


class PredictionsWriter(_AtomicWriter):
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
    top_k: int | None = None  # a compact file (docs/spec.md §2.1.1): the classes it keeps per exit

    @property
    def compact(self) -> bool:
        return self.top_k is not None


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
    t0 = pf.schema_arrow.field("exit_0").type if "exit_0" in names else None
    fp16 = t0 is not None and pa.types.is_fixed_size_list(t0) and pa.types.is_float16(t0.value_type)
    compact = _is_compact(meta, pf.schema_arrow, src)
    top_k = _check_compact_schema(pf.schema_arrow, meta, src)[1] if compact else None
    return ExistingPredictions(meta, next_id, string_ids, fp16, pf.metadata.num_rows, tuple(names), top_k)


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
