"""Reading and writing eenet's artifacts (docs/spec.md §2): the only module that touches files.

Every write is atomic: the bytes go to a hidden temporary file in the destination folder,
which is renamed over the final name only once complete, so an interrupted command never
leaves a half-written file and never damages an existing one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from decimal import Decimal
from typing import Any

import numpy as np

from eenet_cli._version import __version__
from eenet_cli.errors import BudgetError, InputError, VersionError, WorkFailed, shorten

CREATED_BY = f"eenet {__version__}"
MAX_METADATA_BYTES = 16 * 1024 * 1024  # one metadata value; larger is refused
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_JSON_DEPTH = 64  # nesting of arrays and objects; eenet's own artifacts need 6
MAX_COST = 1e100  # a cost or budget above this is refused: averages over many samples must stay finite

SUPPORTED_VERSIONS = {"predictions": 1, "costs": 1, "policy": 1, "results": 1}


# --------------------------------------------------------------------------- helpers


def display(path: str | os.PathLike | None) -> str:
    return "<stdin>" if path in (None, "-") else str(path)


def check_version(doc_format: str, version: Any, source: str) -> None:
    """Refuse a newer major version with one line saying what this release understands."""
    known = SUPPORTED_VERSIONS[doc_format]
    if isinstance(version, bool) or not isinstance(version, (int, float, str)):
        raise InputError(f"expected a version number, got {version!r}", source=source, field="version")
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise InputError(f"expected a version number, got {version!r}", source=source, field="version") from None
    if major > known:
        raise VersionError(
            f"{doc_format} format version {version} is newer than this eenet understands "
            f"(version {known}); upgrade eenet to read it",
            source=source,
            field="version",
        )
    if major < 1:
        raise InputError(f"unknown {doc_format} format version {version!r}", source=source, field="version")


def finite_number(v: Any) -> bool:
    """A JSON number (not a bool) that is finite as a float; ints beyond float range are not."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


_BRACKETS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_text(obj: Any, source: str) -> None:
    """Refuse strings that are not valid Unicode (a lone surrogate such as ``\\udc80``): they
    cannot be printed, drawn or written back."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError("contains a string that is not valid Unicode (a lone surrogate escape)", source=source) from None
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, strings skipped; found in one
    linear scan before parsing, so a hostile file cannot exhaust the parser's stack."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if b"[" not in data and b"{" not in data:
        return 0
    tokens = np.frombuffer(b"".join(m.group(0)[:1] for m in _BRACKETS.finditer(data)), dtype=np.uint8)
    steps = np.where((tokens == ord("[")) | (tokens == ord("{")), 1, np.where((tokens == ord("]")) | (tokens == ord("}")), -1, 0))
    return int(np.cumsum(steps).max(initial=0))


def loads_strict(text: str | bytes, source: str) -> Any:
    """Parse JSON refusing NaN/Infinity literals and duplicate keys."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH}", source=source)
    try:
        doc = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=no_dupes)
    except RecursionError:
        raise InputError(f"JSON nested too deeply; at most {MAX_JSON_DEPTH} levels", source=source) from None
    except (ValueError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"not valid JSON ({msg})", source=source) from None
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if _SURROGATE_ESCAPE.search(raw):  # rare: walk the parsed document once
        _check_text(doc, source)
    return doc


def read_bytes(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES) -> bytes:
    """Read a whole input file (``-`` is stdin) with clear errors for the usual mistakes."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        p = Path(path)
        st = _stat_input(p, str(path))
        if stat.S_ISDIR(st.st_mode):
            raise InputError("is a directory, expected a file", source=str(path))
        try:
            with open(p, "rb") as fh:
                data = fh.read(limit + 1)
        except PermissionError:
            raise InputError("permission denied", source=str(path)) from None
        except OSError as e:
            raise InputError(f"cannot read ({e.strerror})", source=str(path)) from None
    if len(data) > limit:
        raise InputError(f"larger than the {limit // (1024 * 1024)} MiB limit", source=display(path))
    return data


PARQUET_MAGIC = b"PAR1"


def read_json(path: str | os.PathLike, *, what: str = "JSON file", hint: str = "") -> Any:
    """Parse a JSON artifact; a Parquet file given by mistake is named as such."""
    data = read_bytes(path)
    if data[:4] == PARQUET_MAGIC:
        raise InputError(f"this looks like a predictions file (Parquet), not a {what}{hint}", source=display(path))
    return loads_strict(data, display(path))


def dumps(obj: Any) -> str:
    """Deterministic JSON text (insertion order kept, finite floats only, newline at end)."""
    return json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _exists(path: Path) -> bool:
    """``path.exists()`` that is False, not an error, for names the system refuses (too long)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _stat_input(path: Path, source: str):
    """``os.stat`` of an input with one-line errors: no such file, a dangling link, a link loop."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"is a symbolic link to {os.readlink(path)}, which does not exist", source=source) from None
        raise InputError("no such file", source=source) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError("is a symbolic link loop", source=source) from None
        if e.errno == errno.ENAMETOOLONG:
            raise InputError("file name too long", source=source) from None
        raise InputError(f"cannot read ({e.strerror})", source=source) from None


def output_target(path: str | os.PathLike) -> Path:
    """Where writing ``path`` really lands: a symbolic link's target (the link is kept)."""
    p = Path(path)
    if p.is_symlink():
        return Path(os.path.realpath(p))
    return p


def check_output_path(path: str | os.PathLike | None) -> None:
    """Fail before any work if the output cannot be written where asked."""
    if path is None or str(path) == "-":
        return
    text = str(path)
    if text.endswith(("/", os.sep)):
        raise InputError("ends with a slash; expected a file name, not a folder", source=text)
    given = Path(path)
    for p in (given, None):
        if p is None:
            try:
                p = output_target(path)
            except OSError as e:
                raise InputError(f"cannot follow the link ({e.strerror})", source=text) from None
        name_bytes = len(p.name.encode("utf-8", "surrogateescape"))
        parent = p.parent if str(p.parent) else Path(".")
        try:
            name_max = os.pathconf(parent, "PC_NAME_MAX")
        except (OSError, ValueError):
            name_max = 255
        if name_bytes > name_max:
            raise InputError(f"file name is {name_bytes} bytes long; this file system allows {name_max}", source=text)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError("is a symbolic link loop", source=text) from None
        raise InputError(f"cannot be written ({e.strerror})", source=text) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory, expected a file name for the output", source=text)
    if not parent.exists():
        raise InputError(f"output folder {parent} does not exist", source=text)
    if not parent.is_dir():
        raise InputError(f"{parent} is not a folder", source=text)
    if not os.access(parent, os.W_OK) and (st is None or stat.S_ISREG(st.st_mode)):
        raise InputError(f"output folder {parent} is not writable", source=text)


def refuse_output_onto_inputs(output: str | os.PathLike | None, inputs: list[tuple[str, str | os.PathLike | None]]) -> None:
    """Refuse (exit 2) an output that is one of the command's inputs: the same file (inode,
    symlinks followed) or a file inside an input folder of part files."""
    if output is None or str(output) == "-":
        return
    try:
        out_stat = os.stat(output)
    except (OSError, ValueError):
        out_stat = None
    out_real = os.path.realpath(output)
    for label, given in inputs:
        if given is None or str(given) == "-":
            continue
        try:
            st = os.stat(given)
        except (OSError, ValueError):
            continue  # not a file (an inline value) or missing: its reader says so
        if out_stat is not None and (st.st_dev, st.st_ino) == (out_stat.st_dev, out_stat.st_ino):
            raise InputError(f"is also the {label}; writing there would destroy it. Choose another output file", source=str(output), field="--output")
        real = os.path.realpath(given)
        if stat.S_ISDIR(st.st_mode) and os.path.commonpath([out_real, real]) == real:
            raise InputError(f"is inside the {label} folder {given}; choose an output outside it", source=str(output), field="--output")


def _write_failed(e: OSError, path) -> WorkFailed:
    return WorkFailed(f"cannot write ({e.strerror or e}); nothing was changed", source=str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path to write; the result appears under ``path`` only on success.

    A regular file (or a new name) is written to a temporary file beside it and renamed
    over it at the end, so an interrupted or failed write leaves the old file intact. A
    symbolic link's target is replaced, not the link. A character device, FIFO or socket
    (``/dev/null``, a named pipe) is written directly: renaming over it would replace a
    device for the whole machine. A failed write (disk full, file-size limit) is one
    line, exit 1.
    """
    check_output_path(path)
    final = output_target(path)
    try:
        st = os.stat(final)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            yield final
        except OSError as e:
            raise _write_failed(e, path) from None
        return
    folder = final.parent if str(final.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".eenet-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _write_failed(e, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~umask  # a replaced file keeps its mode
    try:
        os.chmod(tmp_path, mode)  # mkstemp makes 0600; artifacts get the usual mode
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
            raise _write_failed(e, path) from None
        raise


def write_text(path: str | os.PathLike | None, text: str) -> None:
    """Write text atomically; ``-`` or ``None`` writes to stdout."""
    if path is None or str(path) == "-":
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _write_failed(e, "<stdout>") from None
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike | None, obj: Any) -> None:
    write_text(path, dumps(obj))


def sha256_paths(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- costs

TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
WORK_UNITS = {"flops": 1.0, "kflops": 1e3, "mflops": 1e6, "gflops": 1e9, "tflops": 1e12}
_CANONICAL = {"us": "us", "µs": "us", "ms": "ms", "s": "s", "flops": "flops", "kflops": "KFLOPs", "mflops": "MFLOPs", "gflops": "GFLOPs", "tflops": "TFLOPs"}


def normalise_unit(unit: str, source: str = "unit") -> str:
    key = unit.strip().lower()
    if key in ("µs", "μs"):
        key = "us"
    if key in ("flop",):
        key = "flops"
    if key not in TIME_UNITS and key not in WORK_UNITS:
        raise InputError(
            f"unknown unit {unit!r}; expected one of us, ms, s, FLOPs, MFLOPs, GFLOPs", source=source, field="unit"
        )
    return _CANONICAL[key]


def unit_scale(unit: str) -> tuple[str, float]:
    """(dimension, factor to SI) for a canonical unit."""
    key = unit.lower()
    if key in TIME_UNITS:
        return "time", TIME_UNITS[key]
    return "work", WORK_UNITS[key]


def unit_factor(from_unit: str, to_unit: str, source: str = "budget"):
    """The exact decimal factor from one canonical unit to another of the same dimension."""
    from decimal import Decimal

    d1, f1 = unit_scale(from_unit)
    d2, f2 = unit_scale(to_unit)
    if d1 != d2:
        what = {"time": "a time", "work": "a FLOP count"}
        raise BudgetError(
            f"a value in {from_unit} is {what[d1]} but the costs are {what[d2]} in {to_unit}; "
            f"give the budget in {to_unit} (or as a percentage)",
            source=source,
        )
    return Decimal(repr(f1)) / Decimal(repr(f2))


def convert(value: float, from_unit: str, to_unit: str, source: str = "budget") -> float:
    return float(Decimal(repr(float(value))) * unit_factor(from_unit, to_unit, source))


@dataclass
class Costs:
    """Cumulative per-exit costs (docs/spec.md §2.2)."""

    values: np.ndarray  # [K] float64, positive, strictly increasing
    unit: str
    source: str
    extra: dict = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return int(self.values.size)

    def to_json(self) -> dict:
        out = {"format": "costs", "version": 1, "unit": self.unit, "costs": [float(v) for v in self.values]}
        for k, v in self.extra.items():
            if k not in out:
                out[k] = v
        return out

    def brief(self) -> dict:
        return {"unit": self.unit, "costs": [float(v) for v in self.values]}


def _brief(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return f"[{shown}]" if values.size <= limit else f"[{shown}, … {values.size} values]"


def validate_costs(values: Any, unit: Any, source: str, field_name: str = "costs") -> Costs:
    if not isinstance(unit, str):
        raise InputError(f"expected a unit string, got {unit!r}", source=source, field="unit")
    unit = normalise_unit(unit, source)
    if not isinstance(values, list) or not values:
        raise InputError("expected a non-empty list of numbers", source=source, field=field_name)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise InputError(f"expected numbers, got {shorten(repr(values))}", source=source, field=field_name)
    if not all(finite_number(v) for v in values):
        raise InputError("costs must be finite", source=source, field=field_name)
    arr = np.asarray(values, dtype=np.float64)
    if np.any(arr <= 0):
        raise InputError(f"costs must be positive, got {_brief(arr)}", source=source, field=field_name)
    if np.any(arr > MAX_COST):
        raise InputError(f"costs must be at most {MAX_COST:g} (sums of many would overflow), got {arr.max():g}", source=source, field=field_name)
    if np.any(np.diff(arr) <= 0):
        raise InputError(
            f"costs must be strictly increasing (cumulative cost to each exit), got {_brief(arr)}",
            source=source,
            field=field_name,
        )
    return Costs(arr, unit, source)


def parse_costs_json(obj: Any, source: str) -> Costs:
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object with format, version, unit and costs", source=source)
    fmt = obj.get("format")
    if fmt is not None and fmt != "costs":
        raise InputError(f"expected format 'costs', got {fmt!r}", source=source, field="format")
    if "version" in obj:
        check_version("costs", obj["version"], source)
    for key in ("unit", "costs"):
        if key not in obj:
            raise InputError(f"missing field {key!r}", source=source, field=key)
    costs = validate_costs(obj["costs"], obj["unit"], source)
    costs.extra = {k: v for k, v in obj.items() if k not in ("format", "version", "unit", "costs")}
    return costs


def parse_inline_costs(text: str) -> Costs:
    """``1.2,2.5,3.7ms`` (one unit at the end, or on every number)."""
    import re

    if len(text) > 10_000:
        raise InputError(f"an inline cost list is at most 10000 characters, got {len(text)}", field="--costs")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    src = f"--costs {text}"
    if not parts:
        raise InputError("expected numbers like 1.2,2.5,3.7ms", source=src)
    vals: list[float] = []
    units: set[str] = set()
    for p in parts:
        m = re.fullmatch(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµμ]*)", p)
        if not m:
            raise InputError(f"cannot read {p!r} as a cost", source=src)
        vals.append(float(m.group(1)))
        if m.group(2):
            units.add(normalise_unit(m.group(2), src))
    if len(units) > 1:
        raise InputError(f"mixed units {sorted(units)}", source=src)
    unit = units.pop() if units else "ms"
    return validate_costs(vals, unit, src)


def load_costs(spec: str | None, predictions_meta: dict | None = None, predictions_source: str = "") -> Costs | None:
    """Costs by the precedence of docs/spec.md §2.2: ``--costs FILE``, ``--costs 1,2,3ms``, the predictions' metadata."""
    if spec is not None and not spec.strip():
        raise InputError("is empty: give a costs file or an inline list like 1.2,2.5,3.7ms", field="--costs")
    if spec:
        path = Path(spec)
        if spec == "-" and predictions_source == "<stdin>":
            raise InputError("stdin already carries the predictions; give the costs as a file or inline", field="--costs")
        if spec == "-" or path.suffix.lower() == ".json" or _exists(path) or os.path.islink(spec):
            return parse_costs_json(read_json(spec), display(spec))
        if any(ch.isdigit() for ch in spec) and "," in spec or spec.replace(".", "", 1).rstrip("smuµμ").isdigit():
            return parse_inline_costs(spec)
        raise InputError("no such file (and not an inline list like 1.2,2.5,3.7ms)", source=spec, field="--costs")
    if predictions_meta and predictions_meta.get("costs") is not None:
        src = f"{predictions_source} (metadata eenet.costs)"
        return parse_costs_json(predictions_meta["costs"], src)
    return None


# --------------------------------------------------------------------------- predictions

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
        if len(v) > MAX_METADATA_BYTES:
            limit = f"{MAX_METADATA_BYTES / 2**20:g} MiB" if MAX_METADATA_BYTES >= 2**20 else f"{MAX_METADATA_BYTES} bytes"
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


# --------------------------------------------------------------------------- results

RESULT_LIST_FIELDS = ("exit_fractions", "val_exit_fractions")
REQUIRED_RESULT_FIELDS = ("method", "budget", "accuracy", "avg_cost", "budget_met")


def results_format(path: str | os.PathLike | None) -> str:
    if path is None or str(path) == "-":
        return "json"
    suffix = Path(path).suffix.lower()
    return {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix, "")


def write_results(path: str | os.PathLike | None, doc: dict) -> None:
    """Results as JSON, Parquet or CSV chosen by the extension (docs/spec.md §2.5)."""
    fmt = results_format(path)
    if fmt == "json":
        write_json(path, doc)
        return
    if not fmt:
        raise InputError("unknown results format; use a .json, .parquet or .csv file name", source=str(path))
    import pandas as pd

    df = pd.DataFrame(doc["results"])
    header = {k: v for k, v in doc.items() if k != "results"}
    if fmt == "csv":
        for col in RESULT_LIST_FIELDS:
            if col in df:
                df[col] = df[col].map(lambda v: json.dumps(v))
        text = df.to_csv(index=False, lineterminator="\n")
        write_text(path, text)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({f"eenet.{k}".encode(): json.dumps(v).encode() for k, v in header.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _schema_validator(name: str):
    """A validator for the shipped JSON Schema ``name`` (cached)."""
    cached = _VALIDATORS.get(name)
    if cached is None:
        from importlib.resources import files

        import jsonschema

        schema = json.loads(files("eenet_cli.schemas").joinpath(f"{name}.json").read_text(encoding="utf-8"))
        cached = _VALIDATORS[name] = jsonschema.Draft202012Validator(schema)
    return cached


_VALIDATORS: dict = {}


def check_schema(doc: Any, name: str, source: str) -> None:
    """Refuse ``doc`` with one line naming the first place it breaks the shipped schema."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_schema_validator(name).iter_errors(doc))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or None
        raise InputError(f"does not match the {name} schema: {shorten(error.message, 160)}", source=source, field=where)


def _results_from_records(records: list[dict], header: dict, source: str) -> dict:
    if not records:
        raise InputError("has no result records", source=source)
    check_schema({**header, "format": "results", "version": header.get("version", 1), "results": records}, "results", source)
    for i, r in enumerate(records):
        for key in REQUIRED_RESULT_FIELDS:
            if key not in r:
                raise InputError(f"record {i} has no {key!r}", source=source, field=key)
        for key in ("budget", "accuracy", "avg_cost"):
            v = r[key]
            if not finite_number(v):
                raise InputError(f"record {i}: expected a finite number, got {v!r}", source=source, field=key)
        if not isinstance(r["method"], str):
            raise InputError(f"record {i}: expected a method name, got {r['method']!r}", source=source, field="method")
        if not isinstance(r["budget_met"], bool):
            raise InputError(f"record {i}: expected true or false, got {r['budget_met']!r}", source=source, field="budget_met")
    return {**header, "results": records}


def read_results(path: str | os.PathLike) -> dict:
    """Read a results file written by ``evaluate`` in any of its three formats."""
    source = display(path)
    fmt = results_format(path) if str(path) != "-" else "json"
    if fmt == "json" or not fmt:
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("format") != "results":
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise InputError(f"expected an eenet results file (format 'results'), got {got!r}", source=source, field="format")
        check_version("results", doc.get("version"), source)
        recs = doc.get("results")
        if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
            raise InputError("expected a list of records", source=source, field="results")
        return _results_from_records(recs, {k: v for k, v in doc.items() if k != "results"}, source)
    if fmt == "csv":
        import pandas as pd

        if Path(path).is_dir():
            raise InputError("is a directory, expected a file", source=source)
        try:
            df = pd.read_csv(path)
        except FileNotFoundError:
            raise InputError("no such file", source=source) from None
        except Exception as e:  # pandas raises many types for malformed CSV
            raise InputError(f"not a readable CSV file ({str(e).splitlines()[0]})", source=source) from None
        for col in RESULT_LIST_FIELDS:
            if col in df:
                df[col] = df[col].map(lambda s: loads_strict(s, source) if isinstance(s, str) else s)
        header = {"format": "results", "version": 1}
    else:
        if not Path(path).exists():
            raise InputError("no such file", source=source)
        pf = _open_parquet(Path(path), source)
        header = _decode_meta(pf.schema_arrow.metadata, source)
        if header.get("format", "results") != "results":
            raise InputError(f"expected an eenet results file, got format {header.get('format')!r}", source=source, field="eenet.format")
        if "version" in header:
            check_version("results", header["version"], source)
        df = pf.read().to_pandas()
        for col in RESULT_LIST_FIELDS:
            if col in df:
                df[col] = df[col].map(lambda v: [float(x) for x in v])
    records = json.loads(df.to_json(orient="records"))
    for r in records:
        for col in RESULT_LIST_FIELDS:
            if col in r and isinstance(r[col], str):
                r[col] = loads_strict(r[col], source)
    return _results_from_records(records, header, source)


# --------------------------------------------------------------------------- policies

POLICY_KEYS = {
    "format", "version", "method", "num_exits", "num_classes", "budget", "costs", "thresholds",
    "exit_distribution", "scorer", "validation", "training", "provenance", "threshold_fit",
}


def read_policy(path: str | os.PathLike, *, role: str | None = None) -> dict:
    """Read and check a policy JSON (docs/spec.md §2.4): version, keys, thresholds, scorer.

    ``role`` names the command-line argument, for the hint when the arguments are swapped."""
    source = display(path)
    doc = read_json(path, what="policy JSON", hint=f"; {role} comes first" if role else "")
    validate_policy(doc, source)
    return doc


def validate_policy(doc: Any, source: str) -> None:
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object", source=source)
    if doc.get("format") != "policy":
        raise InputError(f"expected format 'policy', got {doc.get('format')!r}", source=source, field="format")
    check_version("policy", doc.get("version"), source)
    unknown = sorted(set(doc) - POLICY_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) {unknown}", source=source)
    for key in ("method", "num_exits", "num_classes", "costs", "thresholds", "scorer"):
        if key not in doc:
            raise InputError(f"missing field {key!r}", source=source, field=key)
    k = doc["num_exits"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"expected a positive integer, got {k!r}", source=source, field="num_exits")
    c = doc["num_classes"]
    if isinstance(c, bool) or not isinstance(c, int) or c < 2:
        raise InputError(f"expected an integer >= 2, got {c!r}", source=source, field="num_classes")
    thr = doc["thresholds"]
    if not isinstance(thr, list) or len(thr) != k:
        raise InputError(f"expected a list of {k} thresholds", source=source, field="thresholds")
    for i, t in enumerate(thr):
        if t is not None and not finite_number(t):
            raise InputError(f"threshold {i} must be a finite number or null, got {t!r}", source=source, field="thresholds")
    if thr[-1] is not None:
        raise InputError("the last exit accepts every sample: its threshold must be null", source=source, field="thresholds")
    costs = doc["costs"]
    if not isinstance(costs, dict):
        raise InputError("expected an object with unit and costs", source=source, field="costs")
    cst = validate_costs(costs.get("costs"), costs.get("unit"), source, "costs.costs")
    if cst.num_exits != k:
        raise InputError(f"has {cst.num_exits} costs for {k} exits", source=source, field="costs")
    scorer = doc["scorer"]
    if not isinstance(scorer, dict) or not isinstance(scorer.get("type"), str):
        raise InputError("expected an object with a 'type'", source=source, field="scorer")
    kinds = ("maxprob", "entropy", "vote", "patience", "eenet", "lookahead")
    if scorer["type"] not in kinds:
        raise InputError(f"unknown scorer type {scorer['type']!r}; expected one of {', '.join(kinds)}", source=source, field="scorer.type")
    if scorer["type"] == "eenet":
        _validate_eenet_scorer(scorer, k, c, source)
    elif scorer["type"] == "lookahead":
        from eenet_cli.core.lookahead import validate_lookahead_scorer

        problem = validate_lookahead_scorer(scorer, k, c)
        if problem:
            raise InputError(problem, source=source, field="scorer")
    budget = doc.get("budget")
    if budget is not None:
        value = budget.get("value") if isinstance(budget, dict) else None
        if not isinstance(budget, dict) or (value is not None and not _positive_number(value)):
            raise InputError(f"expected an object with a positive number 'value', got {budget!r}", source=source, field="budget")


def _positive_number(v: Any) -> bool:
    return finite_number(v) and v > 0


def _validate_eenet_scorer(scorer: dict, k: int, c: int, source: str) -> None:
    exits = scorer.get("exits")
    if not isinstance(exits, list) or len(exits) != k:
        raise InputError(f"expected weights for {k} exits", source=source, field="scorer.exits")
    slope = scorer.get("negative_slope", 0.01)
    if not finite_number(slope):
        raise InputError(f"expected a number, got {slope!r}", source=source, field="scorer.negative_slope")
    for j, e in enumerate(exits):
        fld = f"scorer.exits[{j}]"
        if not isinstance(e, dict):
            raise InputError("expected an object of weights", source=source, field=fld)
        try:
            w = np.asarray(e["shared_weight"], dtype=np.float64)
            arrays = [np.asarray(e[n], dtype=np.float64) for n in ("shared_bias", "utility_weight", "assign_weight")]
            scalars = [e["utility_bias"], e["assign_bias"]]
        except KeyError as ex:
            raise InputError(f"missing {ex.args[0]!r}", source=source, field=fld) from None
        except (TypeError, ValueError, OverflowError):
            raise InputError("weights must be numeric nested lists", source=source, field=fld) from None
        h = w.shape[0] if w.ndim == 2 else -1
        if w.ndim != 2 or w.shape[1] != c + 3 + j:
            raise InputError(f"shared_weight must be [H, {c + 3 + j}], got {list(w.shape)}", source=source, field=fld)
        if any(a.shape != (h,) for a in arrays):
            raise InputError(f"bias and head weights must have {h} entries", source=source, field=fld)
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in scalars):
            raise InputError("utility_bias and assign_bias must be numbers", source=source, field=fld)
        if not (np.isfinite(w).all() and all(np.isfinite(a).all() for a in arrays) and all(finite_number(s) for s in scalars)):
            raise InputError("weights must be finite", source=source, field=fld)
