"""Checking a ``torch.export`` (``.pt2``) archive before torch reads it.

``torch.export.load`` is not safe on an untrusted file: it unpickles members with
``weights_only=False`` (weights or constants marked ``use_pickle``, ``opaque_obj_*`` and
``custom_obj_*`` constants, legacy ``data/weights/<model>.pt`` files, and the sample inputs
whenever ``weights_only=True`` fails on them), loads AOTInductor shared libraries, passes the
archive's shape expressions to ``sympy.sympify`` (which calls ``eval``), ``exec``\\ s its
``guards_code`` when the module is built, and calls any ``torch.*`` attribute a graph node
names. :func:`read_checked_pt2` reads the file once into memory and refuses it, with one
line, unless every member is on this allow-list; the caller then loads *those same bytes*
(no second read of the path that could see another file):

=========================================  ==============================================
member (under the archive's one top folder)  why it cannot run code
=========================================  ==============================================
``archive_format``, ``archive_version``,    short text, read as strings
``byteorder``, ``.data/version``,
``.data/serialization_id``, ``extra/*``
``models/<name>.json``                      JSON; every graph node's target must be a torch
                                            operator (``torch.ops...``, a higher-order op or
                                            a symbolic-shape op), every ``expr_str`` a sympy
                                            expression over shape symbols and known functions
                                            only, every ``guards_code`` line a plain
                                            comparison of input sizes
``data/weights/<name>_weights_config.json``  JSON; every entry must have ``use_pickle: false``
``data/constants/<name>_constants_config.json``  and a ``weight_N``/``tensor_N`` raw storage
``data/weights/weight_N``,                  raw tensor bytes, read with
``data/constants/tensor_N``                 ``get_storage_from_record``, never unpickled
``data/sample_inputs/<name>.pt``            the one pickle ``torch.export.save`` writes: a
                                            ``torch.save`` zip of the example inputs. Its
                                            ``data.pkl`` may name only the tensor-rebuild
                                            globals below (checked opcode by opcode, without
                                            unpickling), and it must load with
                                            ``torch.load(weights_only=True)`` here, so torch's
                                            own ``weights_only=True`` load succeeds too and its
                                            ``weights_only=False`` fallback is never reached
=========================================  ==============================================

Anything else (``*.pkl``, ``opaque_obj_*``/``custom_obj_*`` constants, ``data/aotinductor/``,
the pre-2.8 layout, duplicate or case-colliding names, paths with ``..``) is refused. This
module imports torch; import it lazily.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickletools
import re
import zipfile
from pathlib import PurePosixPath
from typing import Any

from eenet_cli.errors import InputError

# text members torch reads as strings (or not at all)
_TEXT = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id", ".format_version", ".storage_alignment"}
_NAME = r"[A-Za-z0-9_.\-]+"
_MODEL = re.compile(rf"models/({_NAME})\.json")
_WEIGHTS_CONFIG = re.compile(rf"data/weights/({_NAME})_weights_config\.json")
_CONSTANTS_CONFIG = re.compile(rf"data/constants/({_NAME})_constants_config\.json")
_WEIGHT = re.compile(r"data/weights/weight_[0-9]+")
_TENSOR = re.compile(r"data/constants/tensor_[0-9]+")
_SAMPLE = re.compile(rf"data/sample_inputs/({_NAME})\.pt")
_EXTRA = re.compile(r"extra/[^\x00]+")

# members of a torch.save zip (the sample inputs)
_TORCH_SAVE_TEXT = {"byteorder", "version", ".format_version", ".storage_alignment", ".data/version", ".data/serialization_id"}
_TORCH_SAVE_DATA = re.compile(r"data/[0-9]+")
_STORAGES = {
    f"{t}Storage"
    for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexFloat", "ComplexDouble", "Untyped")
}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch", "device"),
    *(("torch", s) for s in _STORAGES),
}

# sympy expressions (srepr as torch writes them): functions the deserializer knows
_SYM_FUNCS = {
    # sympy
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "floor", "ceiling",
    "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair", "ITE",
    # torch.utils._sympy.functions, as the deserializer maps them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift",
    "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
}  # fmt: skip
_SYM_CONSTANTS = {"oo", "zoo", "nan", "true", "false", "pi", "E"}
_SYMBOL = re.compile(r"[a-z]{1,8}[0-9]+")  # s0, s77, u3, zuf0, ...
_ASSUMPTIONS = {
    "algebraic", "commutative", "complex", "composite", "even", "extended_negative", "extended_nonnegative",
    "extended_nonpositive", "extended_nonzero", "extended_positive", "extended_real", "finite", "hermitian",
    "imaginary", "infinite", "integer", "irrational", "negative", "noninteger", "nonnegative", "nonpositive",
    "nonzero", "odd", "positive", "prime", "rational", "real", "transcendental", "zero", "antihermitian", "polar",
}  # fmt: skip
_OPS = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift,
    ast.Invert,
)  # fmt: skip
# guards_code (exec'd by torch when the module is built): comparisons of input sizes
_GUARD_METHODS = {"size", "stride", "storage_offset", "dim", "numel"}
_GUARD_FUNCS = {"min", "max", "abs", "int", "float", "IsNonOverlappingAndDenseIndicator", "cast_symbool_to_symint_guardless"}
_GUARD_MATH = {"floor", "ceil", "trunc", "sqrt", "log2", "inf"}
_GUARD_TORCH = {"sym_max", "sym_min", "sym_float", "sym_int", "sym_sqrt", "_sym_sqrt", "sym_ite", "sym_not", "sym_sum"}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Refused(Exception):
    """One reason the archive is refused (turned into an InputError by the caller)."""


def read_checked_pt2(path: str, source: str) -> bytes:
    """The bytes of ``path`` once every member has passed the allow-list (module docstring)."""
    from eenet_cli.memory import check_memory

    try:
        with open(path, "rb") as fh:  # read once: torch gets these bytes, not the path again
            check_memory(os.fstat(fh.fileno()).st_size, "reading the file", source=source)
            data = fh.read()
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror or e})", source=source) from None
    try:
        check_pt2_bytes(data)
    except _Refused as e:
        raise InputError(f"refused: {e}; eenet loads only torch.export archives whose members cannot run code", source=source) from None
    return data


def check_pt2_bytes(data: bytes) -> None:
    """Raise :class:`_Refused` unless the archive ``data`` holds only allow-listed members."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise _Refused(f"not a readable zip archive ({e})") from None
    members = _members(infos, "the archive")
    names = set(members)
    if "archive_format" not in names or "archive_version" not in names:
        raise _Refused("no archive_format/archive_version member (a torch.export archive from torch >= 2.8 has both)")
    models = []
    for rel, info in members.items():
        if info.is_dir():
            continue
        if rel in _TEXT or _EXTRA.fullmatch(rel):
            _open_member(zf, info, rel)  # local header consistent with the directory
        elif m := _MODEL.fullmatch(rel):
            models.append(m.group(1))
            _check_model_json(_read_json(zf, info, rel), rel)
        elif _WEIGHTS_CONFIG.fullmatch(rel):
            _check_payload_config(_read_json(zf, info, rel), rel, "weight_", "data/weights/", names)
        elif _CONSTANTS_CONFIG.fullmatch(rel):
            _check_payload_config(_read_json(zf, info, rel), rel, "tensor_", "data/constants/", names)
        elif _WEIGHT.fullmatch(rel) or _TENSOR.fullmatch(rel):
            _open_member(zf, info, rel)  # raw bytes: torch maps them as a storage
        elif _SAMPLE.fullmatch(rel):
            _check_sample_inputs(_read(zf, info, rel), rel)
        elif rel.startswith("data/aotinductor/"):
            raise _Refused(f"member {rel} is AOTInductor compiled code (a shared library torch would load)")
        elif rel.endswith(".pkl") or rel.endswith(".pt") or rel.endswith(".pth"):
            raise _Refused(f"member {rel} is a pickle (torch unpickles such members with weights_only=False)")
        else:
            raise _Refused(f"member {rel} is not one of the members eenet can check")
    if not models:
        raise _Refused("no models/<name>.json member (no exported program)")


def _members(infos: list[zipfile.ZipInfo], what: str) -> dict[str, zipfile.ZipInfo]:
    """Members by their name under the archive's single top folder (as torch reads them)."""
    tops = set()
    out: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        low = name.lower()
        if low in seen:
            raise _Refused(f"{what} names {name!r} twice (ignoring case); torch could read either copy")
        seen.add(low)
        parts = PurePosixPath(name).parts
        if "\\" in name or "\x00" in name or name.startswith("/") or ".." in parts or len(parts) < (1 if info.is_dir() else 2):
            raise _Refused(f"{what} has a member {name!r} outside one top folder")
        if info.is_dir():  # a folder entry (some zip tools write them): nothing to read
            tops.add(parts[0])
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _Refused(f"{what} member {name!r} uses an unsupported compression")
        tops.add(parts[0])
        out[name.split("/", 1)[1]] = info
    if len(tops) != 1:
        raise _Refused(f"{what} has members under {len(tops)} top folders; torch writes one")
    return out


def _open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> None:
    try:
        with zf.open(info):
            pass
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
        raise _Refused(f"member {rel} is damaged ({e})") from None


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> bytes:
    from eenet_cli.memory import MEMORY_FRACTION, format_bytes, total_memory

    total = total_memory()
    if total is not None and info.file_size > MEMORY_FRACTION * total:
        raise _Refused(f"member {rel} unpacks to {format_bytes(info.file_size)}; this machine has {format_bytes(total)}")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
        raise _Refused(f"member {rel} is damaged ({e})") from None


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> Any:
    try:
        return json.loads(_read(zf, info, rel))
    except (ValueError, RecursionError) as e:
        raise _Refused(f"member {rel} is not valid JSON ({str(e)[:80]})") from None


# --------------------------------------------------------------------------- payload configs


def _check_payload_config(doc: Any, rel: str, prefix: str, folder: str, names: set[str]) -> None:
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise _Refused(f"member {rel} has no 'config' object")
    pattern = re.compile(re.escape(prefix) + "[0-9]+")
    for fqn, entry in config.items():
        if not isinstance(entry, dict):
            raise _Refused(f"member {rel}: entry {fqn!r} is not an object")
        if entry.get("use_pickle") is not False:
            raise _Refused(f"member {rel}: {fqn!r} is stored with pickle (use_pickle), which torch unpickles with weights_only=False")
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
            raise _Refused(f"member {rel}: {fqn!r} is stored as {str(path_name)[:60]!r}, not a raw tensor {prefix}N")
        if folder + path_name not in names:
            raise _Refused(f"member {rel}: {fqn!r} names {folder + path_name}, which the archive lacks")


# --------------------------------------------------------------------------- the exported program


def _check_model_json(doc: Any, rel: str) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise _Refused(f"member {rel} is not a serialized exported program")
    guards = doc.get("guards_code") or []
    if not isinstance(guards, list):
        raise _Refused(f"member {rel}: guards_code is not a list")
    for g in guards:
        if not isinstance(g, str):
            raise _Refused(f"member {rel}: a guards_code entry is not a string")
        _check_guard(g, rel)
    stack: list[Any] = [doc]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if "target" in o and "inputs" in o:
                _check_target(o["target"], rel)
            expr = o.get("expr_str")
            if expr is not None:
                if not isinstance(expr, str):
                    raise _Refused(f"member {rel}: an expr_str is not a string")
                _check_sym_expr(expr, rel)
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def _check_target(target: Any, rel: str) -> None:
    """A graph node may call torch operators only (torch resolves any ``torch.*`` attribute)."""
    import torch

    if not isinstance(target, str):
        raise _Refused(f"member {rel}: a graph node's target is not a string")
    obj = _resolve_target(target)
    if isinstance(obj, str) and not target.startswith("#"):
        return  # unresolved: torch refuses the node itself, calling nothing
    ok = isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator))
    if not ok:
        try:
            from torch._export.serde.serialize import _SYM_OPS

            ok = obj in _SYM_OPS
        except (ImportError, TypeError):
            ok = False
    if not ok:
        raise _Refused(f"member {rel}: a graph node calls {target[:80]!r}, which is not a torch operator")


def _resolve_target(target: str) -> Any:
    """What torch's deserializer resolves ``target`` to (attribute look-ups only, no calls)."""
    import math
    import operator

    import torch

    if target.startswith("#"):
        return target
    for prefix, module in (("_operator", operator), ("torch", torch), ("math", math)):
        if target.startswith(prefix):
            obj: Any = module
            for name in target.split(".")[1:]:
                if not hasattr(obj, name):
                    return target
                obj = getattr(obj, name)
            return obj
    return target


def _parse(text: str, rel: str, what: str) -> ast.AST:
    if len(text) > 10_000:
        raise _Refused(f"member {rel}: a {what} is {len(text)} characters long")
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Refused(f"member {rel}: {what} {text[:60]!r} is not an expression") from None


def _visit_arithmetic(node: ast.AST, visit, bad) -> None:
    """The part the shape-expression and guard allow-lists share: number constants and
    arithmetic, comparison and boolean operators (only those in ``_OPS``); anything else is
    refused."""
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float, bool):
            raise bad(node)
    elif isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.cmpop, ast.operator, ast.unaryop, ast.boolop)):
                if not isinstance(child, _OPS):
                    raise bad(child)
                continue
            visit(child)
    else:
        raise bad(node)


def _check_sym_expr(text: str, rel: str) -> None:
    """``sympy.sympify`` evaluates the text: only shape symbols and known functions may appear."""
    import sympy

    def bad(node: ast.AST) -> _Refused:
        return _Refused(f"member {rel}: shape expression {text[:60]!r} is not a plain sympy expression ({type(node).__name__})")

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Expression):
            visit(node.body)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _SYM_FUNCS:
                raise bad(node)
            for i, a in enumerate(node.args):
                if isinstance(a, ast.Constant) and isinstance(a.value, str):
                    ok = (node.func.id == "Symbol" and i == 0 and _KEY.fullmatch(a.value)) or (
                        node.func.id == "Float" and i == 0 and re.fullmatch(r"[-+0-9.eE]+|[-+]?inf|nan", a.value)
                    )
                    if not ok:
                        raise bad(a)
                else:
                    visit(a)
            for kw in node.keywords:
                if kw.arg is None or not isinstance(kw.value, ast.Constant):
                    raise bad(kw)
                if kw.arg == "precision" and type(kw.value.value) is int:
                    continue
                if kw.arg not in _ASSUMPTIONS or not isinstance(kw.value.value, bool):
                    raise bad(kw)
        elif isinstance(node, ast.Name):
            name = node.id
            if not (name in _SYM_FUNCS or name in _SYM_CONSTANTS or (_SYMBOL.fullmatch(name) and not hasattr(sympy, name))):
                raise bad(node)
        elif isinstance(node, ast.Tuple):  # Piecewise((expr, cond), ...)
            for child in node.elts:
                visit(child)
        else:
            _visit_arithmetic(node, visit, bad)

    visit(_parse(text, rel, "shape expression"))


def _check_guard(text: str, rel: str) -> None:
    """torch ``exec``\\ s guards_code: only comparisons of input sizes/strides may appear."""

    def bad(node: ast.AST) -> _Refused:
        return _Refused(f"member {rel}: guard {text[:60]!r} is not a plain shape check ({type(node).__name__})")

    def input_ref(node: ast.AST) -> bool:  # L['x'], L['x']['k'], L['args'][0]
        while isinstance(node, ast.Subscript):
            key = node.slice
            if not isinstance(key, ast.Constant) or not (
                (isinstance(key.value, str) and _KEY.fullmatch(key.value)) or type(key.value) is int
            ):
                return False
            node = node.value
        return isinstance(node, ast.Name) and node.id == "L"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Expression):
            visit(node.body)
        elif isinstance(node, ast.Subscript):  # L[...] or x.size()[0]
            if input_ref(node):
                return
            if not (isinstance(node.slice, ast.Constant) and type(node.slice.value) is int):
                raise bad(node)
            visit(node.value)
        elif isinstance(node, ast.Call):
            f = node.func
            if node.keywords:
                raise bad(node)
            if isinstance(f, ast.Attribute) and f.attr in _GUARD_METHODS and input_ref(f.value):
                if any(not (isinstance(a, ast.Constant) and type(a.value) is int) for a in node.args):
                    raise bad(node)
                return
            ok = (isinstance(f, ast.Name) and f.id in _GUARD_FUNCS) or (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Name)
                and ((f.value.id == "math" and f.attr in _GUARD_MATH) or (f.value.id == "torch" and f.attr in _GUARD_TORCH))
            )
            if not ok:
                raise bad(node)
            for a in node.args:
                visit(a)
        elif isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr == "inf"):
                raise bad(node)
        elif isinstance(node, ast.Name):
            if node.id != "inf":
                raise bad(node)
        else:
            _visit_arithmetic(node, visit, bad)

    if "\n" in text or '"' in text or "\\" in text:
        raise _Refused(f"member {rel}: guard {text[:60]!r} is not a plain shape check")
    visit(_parse(text, rel, "guard"))


# --------------------------------------------------------------------------- the sample inputs


def _check_sample_inputs(blob: bytes, rel: str) -> None:
    """A ``torch.save`` zip of tensors only; proven loadable with ``weights_only=True``."""
    if not blob:
        return  # torch reads no sample inputs then
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise _Refused(f"member {rel} is not a torch.save zip archive (a bare pickle?)") from None
    members = _members(infos, f"member {rel}")
    if "data.pkl" not in members:
        raise _Refused(f"member {rel} has no data.pkl")
    for name, info in members.items():
        if info.is_dir():
            continue
        if name == "data.pkl":
            _check_pickle(_read(zf, info, f"{rel}:{name}"), f"{rel}:{name}")
        elif name in _TORCH_SAVE_TEXT or _TORCH_SAVE_DATA.fullmatch(name):
            _open_member(zf, info, f"{rel}:{name}")
        else:
            raise _Refused(f"member {rel} holds {name!r}, not part of a torch.save archive of tensors")
    import warnings

    import torch

    try:  # the same call torch makes first; if it fails torch falls back to weights_only=False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure would send torch to its unsafe fallback
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise _Refused(f"member {rel} does not load with torch.load(weights_only=True) ({first})") from None


def _check_pickle(data: bytes, rel: str) -> None:
    """Walk the opcodes without unpickling: only the tensor-rebuild globals may be named."""
    strings: list[Any] = []  # recent string pushes, for STACK_GLOBAL
    memo: dict[int, Any] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("FRAME", "PROTO"):
                continue
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"):
                strings.append(arg)
                continue
            if name in ("BINPUT", "LONG_BINPUT", "PUT"):
                if strings:
                    memo[int(arg)] = strings[-1]
                continue
            if name == "MEMOIZE":
                if strings:
                    memo[len(memo)] = strings[-1]
                continue
            if name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(arg)))
                continue
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                _check_global(module, attr, rel)
            elif name == "STACK_GLOBAL":
                if len(strings) < 2 or not all(isinstance(s, str) for s in strings[-2:]):
                    raise _Refused(f"member {rel} names a global this check cannot follow")
                _check_global(strings[-2], strings[-1], rel)
            elif name in ("INST", "EXT1", "EXT2", "EXT4"):
                raise _Refused(f"member {rel} uses the pickle opcode {name}")
            strings.append(None)  # anything else breaks a run of string pushes
    except _Refused:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed pickle
        raise _Refused(f"member {rel} is not a readable pickle ({type(e).__name__})") from None


def _check_global(module: str, attr: str, rel: str) -> None:
    if (module, attr) not in _SAFE_GLOBALS:
        raise _Refused(f"member {rel} is a pickle that calls {module}.{attr}, not only tensor storage")
