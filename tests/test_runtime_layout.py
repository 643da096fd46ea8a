"""``eenet_cli/runtime`` (the model wing) imports only downwards and never the command line.

Every module under ``eenet_cli/runtime`` is parsed (not imported). Its imports, anywhere in
the file (inside functions too), may name only the shared modules below and the runtime
package itself: never the commands, the CLI or the API, nor the old module names
(``eenet_cli.modelspec``, ``eenet_cli.text``, ...). The imports that run when a module is
imported (module level, not inside functions, not under ``if TYPE_CHECKING:``) must form
no circle among eenet_cli modules, following them out of runtime as far as they go.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "eenet_cli"
RUNTIME = PACKAGE / "runtime"

# what runtime may import from eenet_cli (a name, or anything under it)
ALLOWED = (
    "eenet_cli.runtime",
    "eenet_cli.errors",
    "eenet_cli.memory",
    "eenet_cli._version",
    "eenet_cli.core",
    "eenet_cli.io",
    "eenet_cli.artifacts",
)
FORBIDDEN = ("eenet_cli.commands", "eenet_cli.cli", "eenet_cli.api")


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_path(name: str) -> Path | None:
    """The file of eenet_cli module ``name`` (a module or a package's ``__init__``), if any."""
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], module_level: bool):
    """Every statement in ``body``; with ``module_level``, only those that run on import."""
    for node in body:
        yield node
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if module_level and isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.orelse, module_level)
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                stmts = [s for s in inner if isinstance(s, ast.stmt)]
                for s in inner:  # except handlers and match cases hold statements one level down
                    if isinstance(s, (ast.ExceptHandler, ast.match_case)):
                        stmts.extend(s.body)
                yield from _statements(stmts, module_level)


def eenet_imports(path: Path, *, module_level: bool) -> set[str]:
    """The eenet_cli modules ``path`` imports (``from a.b import c`` names ``a.b.c`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    nodes = _statements(tree.body, module_level) if module_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod]
            names += [f"{mod}.{a.name}" for a in node.names if _module_path(f"{mod}.{a.name}") is not None]
        else:
            continue
        found.update(n for n in names if _under(n, ("eenet_cli",)))
    return found


RUNTIME_FILES = sorted(RUNTIME.rglob("*.py"))


def test_runtime_is_a_package_of_modules():
    assert (RUNTIME / "__init__.py").is_file()
    assert not (PACKAGE / "runtime.py").exists(), "eenet_cli/runtime.py would shadow the package"
    assert len(RUNTIME_FILES) > 5


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: p.name)
def test_runtime_imports_only_shared_modules_and_itself(path):
    names = eenet_imports(path, module_level=False)
    forbidden = sorted(n for n in names if _under(n, FORBIDDEN))
    assert not forbidden, f"{path.name} imports the command line: {forbidden}"
    foreign = sorted(n for n in names if not _under(n, ALLOWED) and n != "eenet_cli")
    assert not foreign, f"{path.name} imports {foreign}; runtime may import only {', '.join(ALLOWED)}"


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: p.name)
def test_every_runtime_module_says_what_it_holds(path):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc and doc.strip(), f"{path.name} has no module docstring"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return stack[stack.index(nxt) :] + [nxt]
            if colour[nxt] == WHITE and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE and (cycle := visit(node)):
            return cycle
    return None


def module_level_graph(roots: list[str]) -> dict[str, set[str]]:
    """Module-level eenet_cli imports, from ``roots`` as far as they reach."""
    graph: dict[str, set[str]] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in graph:
            continue
        path = _module_path(name)
        graph[name] = set()
        if path is None:
            continue
        graph[name] = {n for n in eenet_imports(path, module_level=True) if n != name and _module_path(n) is not None}
        todo.extend(graph[name])
    return graph


def test_no_import_circle_from_runtime():
    graph = module_level_graph([_module_name(p) for p in RUNTIME_FILES])
    cycle = _find_cycle(graph)
    assert cycle is None, "module-level import circle: " + " -> ".join(cycle or [])


def test_the_checks_see_imports_and_circles():
    assert "eenet_cli.runtime.load" in eenet_imports(RUNTIME / "data.py", module_level=True)
    assert "eenet_cli.artifacts.predictions" in eenet_imports(RUNTIME / "dump.py", module_level=False)  # inside a function
    assert "eenet_cli.runtime.load" in eenet_imports(RUNTIME / "dump.py", module_level=True)
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
