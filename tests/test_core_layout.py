"""``eenet_cli/core`` is numpy-only and stands alone.

Every module under ``eenet_cli/core`` is parsed (not imported) and its imports, anywhere in
the file (inside functions too), are checked: no torch, no third-party package but numpy,
and nothing from the layers above core (the torch trainers in ``eenet_cli.learn``, the model
side, the commands, the API, file formats). Torch training reaches core only as an argument
(``learner=``, wired in by :mod:`eenet_cli.api`). Core raises only eenet's own error types
(:mod:`eenet_cli.errors`), plus ``AssertionError`` for internal invariants.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

CORE = ROOT / "eenet_cli" / "core"

# Modules under core/ exempt from these rules: none.
EXCLUDE: set[str] = set()

# No core module may import these (or anything under them).
FORBIDDEN = (
    "torch",
    "eenet_cli.learn",
    "eenet_cli.runtime",
    "eenet_cli.commands",
    "eenet_cli.cli",
    "eenet_cli.api",
    "eenet_cli.io",
    "eenet_cli.artifacts",
    # the model side's old module names (now eenet_cli.runtime)
    "eenet_cli.models",
    "eenet_cli.modelspec",
    "eenet_cli.profiling",
    "eenet_cli.pt2_inspect",
    "eenet_cli.dumping",
)

# Third-party packages core may use; everything else must be the standard library or eenet_cli.
THIRD_PARTY = {"numpy"}

# Packages needed only to *fit* (never to apply a policy): allowed in these modules, and
# only inside a function, so importing core (or applying a policy) never loads them.
FIT_ONLY = {"sklearn": {"trees.py"}, "threadpoolctl": {"trees.py"}}

# Built-in exceptions that core modules still raise where an eenet error belongs (user
# input). Convert them to eenet_cli.errors types, then delete the entry; the test fails
# both on a new foreign raise and on an entry that no longer occurs.
KNOWN_FOREIGN_RAISES: dict[str, set[str]] = {
    "certify.py": {"ValueError", "Infeasible"},  # Infeasible subclasses ValueError
    "lookahead.py": {"ValueError"},
    "measures.py": {"ValueError"},
    "online.py": {"ValueError"},
}

# Raised for internal invariants, not for input.
INTERNAL = {"AssertionError"}


def core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if p.relative_to(CORE).as_posix() not in EXCLUDE)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative imports resolved, plus
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            out.append((node.lineno, stem))
            out += [(node.lineno, f"{stem}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return out


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(CORE).as_posix() for p in paths]


def test_the_excluded_modules_exist():
    """An excluded name that is gone should leave EXCLUDE too."""
    assert all((CORE / name).exists() for name in EXCLUDE), sorted(n for n in EXCLUDE if not (CORE / n).exists())


@pytest.mark.parametrize("path", core_modules(), ids=_ids(core_modules()))
def test_core_imports_no_torch_and_no_upper_layer(path):
    bad: dict[int, str] = {}  # line -> the first forbidden name imported there
    for line, name in imported_names(path):
        if any(_is_under(name, prefix) for prefix in FORBIDDEN):
            bad.setdefault(line, name)
    assert not bad, "\n".join(f"{path.relative_to(ROOT)}:{line}: imports {name}" for line, name in bad.items())


@pytest.mark.parametrize("path", core_modules(), ids=_ids(core_modules()))
def test_core_uses_numpy_and_the_standard_library_only(path):
    allowed = set(sys.stdlib_module_names) | THIRD_PARTY | {"eenet_cli", "__future__"}
    rel = path.relative_to(CORE).as_posix()
    lazy = _function_level_lines(path)
    bad: dict[int, str] = {}
    for line, name in imported_names(path):
        top = name.split(".")[0] if name else name
        if top in FIT_ONLY and rel in FIT_ONLY[top] and line in lazy:
            continue
        if name and top not in allowed:
            bad.setdefault(line, name)
    assert not bad, "\n".join(f"{path.relative_to(ROOT)}:{line}: imports {name}" for line, name in bad.items())


def _function_level_lines(path: Path) -> set[int]:
    """Lines of the imports made inside a function body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def _raised_names(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Attribute):
                out.append((node.lineno, exc.attr))
            elif isinstance(exc, ast.Name):
                out.append((node.lineno, exc.id))
            else:
                out.append((node.lineno, ast.unparse(exc)))
    return out


def _is_own_error(module, name: str) -> bool:
    """``name`` (as the module sees it, or as eenet_cli.errors defines it) is an EenetError."""
    from eenet_cli import errors

    obj = getattr(module, name, None) or getattr(errors, name, None)
    return isinstance(obj, type) and issubclass(obj, errors.EenetError)


@pytest.mark.parametrize("path", core_modules(), ids=_ids(core_modules()))
def test_core_raises_only_eenet_errors(path):
    module = importlib.import_module(_module_name(path))
    foreign: dict[str, list[int]] = {}
    for line, name in _raised_names(path):
        if name not in INTERNAL and not _is_own_error(module, name):
            foreign.setdefault(name, []).append(line)
    rel = path.relative_to(CORE).as_posix()
    known = KNOWN_FOREIGN_RAISES.get(rel, set())
    new = {name: lines for name, lines in foreign.items() if name not in known}
    assert not new, f"{rel} raises {new} (name: lines); raise an eenet_cli.errors type for bad input"
    gone = known - set(foreign)
    assert not gone, f"{rel} no longer raises {sorted(gone)}: remove them from KNOWN_FOREIGN_RAISES"


def test_importing_core_and_the_api_does_not_import_torch():
    """Checked in a fresh interpreter: the modules are imported, not just parsed."""
    modules = [_module_name(p) for p in core_modules()] + ["eenet_cli.api", "eenet_cli.learn"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'threadpoolctl'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
