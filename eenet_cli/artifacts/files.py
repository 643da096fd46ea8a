"""Opening and writing files: strict JSON reading, limits, format versions, atomic writes,
the shipped JSON Schemas (docs/spec.md §2).

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from eenet_cli._version import __version__
from eenet_cli.errors import InputError, VersionError, WorkFailed, shorten

CREATED_BY = f"eenet {__version__}"
MAX_METADATA_BYTES = 16 * 1024 * 1024  # one metadata value; larger is refused
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_JSON_DEPTH = 64  # nesting of arrays and objects; eenet's own artifacts need 6
MAX_COST = 1e100  # a cost or budget above this is refused: averages over many samples must stay finite

SUPPORTED_VERSIONS = {"predictions": 1, "costs": 1, "policy": 3, "results": 1}


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


# --------------------------------------------------------------------------- JSON Schemas

SCHEMA_PACKAGE = "eenet_cli.artifacts.schemas"
SCHEMA_NAMES = ("predictions", "costs", "policy", "results")


def schema_text(name: str) -> str:
    """The shipped JSON Schema ``name`` (predictions, costs, policy or results) as text.

    >>> '"$schema"' in schema_text("policy")
    True
    """
    from importlib.resources import files

    if name not in SCHEMA_NAMES:
        raise InputError(f"unknown artifact {name!r}; expected one of {', '.join(SCHEMA_NAMES)}")
    return files(SCHEMA_PACKAGE).joinpath(f"{name}.json").read_text(encoding="utf-8")


def _schema_validator(name: str):
    """A validator for the shipped JSON Schema ``name`` (cached)."""
    cached = _VALIDATORS.get(name)
    if cached is None:
        import jsonschema

        schema = json.loads(schema_text(name))
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
