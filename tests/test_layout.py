"""The architecture of docs/architecture.md, checked: which wing may import which, no
import circle anywhere in the package, and method names listed only in the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PKG = ROOT / "eenet_cli"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """eenet (and torch) modules ``path`` imports; with ``top_level_only``, only imports
    that run when the module is loaded (not inside functions or TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return {m for m in found if m.startswith("eenet_cli") or m.split(".")[0] == "torch"}


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "eenet_cli"


# wing -> wings it may never import (at any depth of the file, functions included)
FORBIDDEN = {
    "core": {"torch", "learn", "runtime", "artifacts", "commands", "api", "app", "cli", "render", "plotting"},
    "learn": {"runtime", "artifacts", "commands", "api", "app", "cli", "render", "plotting"},
    "artifacts": {"torch", "learn", "runtime", "commands", "api", "app", "cli", "render", "plotting"},
    "runtime": {"learn", "commands", "api", "app", "cli", "render", "plotting"},
    "plotting": {"torch", "learn", "runtime", "commands", "api", "app", "cli", "render"},
    "api": {"commands", "app", "cli", "render"},
    "errors": {"torch", "core", "learn", "runtime", "artifacts", "commands", "api", "app", "cli", "render", "plotting", "memory"},
    "memory": {"torch", "core", "learn", "runtime", "artifacts", "commands", "api", "app", "cli", "render", "plotting"},
    "render": {"torch", "learn", "runtime", "commands", "api", "cli", "plotting"},
    "app": {"torch", "learn", "runtime", "artifacts", "commands", "api", "cli", "render", "plotting", "core"},
    "commands": {"cli"},
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_wing_imports_only_what_it_may(module):
    w = wing(module)
    bad = []
    for imp in imports(MODULES[module], top_level_only=False):
        target = "torch" if imp.split(".")[0] == "torch" else wing(imp)
        if target in FORBIDDEN.get(w, set()):
            bad.append(imp)
    assert not bad, f"{module} ({w}) imports {sorted(bad)}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _resolve(imp: str) -> str | None:
    while imp and imp not in MODULES:
        imp = imp.rpartition(".")[0]
    return imp or None


def test_no_import_circle_in_the_package():
    graph = {}
    for name, path in MODULES.items():
        deps = {_resolve(i) for i in imports(path, top_level_only=True) if i.startswith("eenet_cli")}
        # importing a.b also runs a/__init__.py: the package is a dependency too, unless it is this module's own
        graph[name] = {d for d in deps if d and d != name}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_circles():
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


REGISTRY = {PKG / "core" / "methods.py", PKG / "core" / "policy.py"}


def _name_sequences(path: Path):
    """List, tuple and set literals holding three or more method or scorer names."""
    from eenet_cli.core.methods import METHODS
    from eenet_cli.core.policy import SCORERS

    names = set(METHODS) | set(SCORERS)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            found = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
            if len(found) >= 3:
                yield node.lineno, found


def test_method_and_scorer_names_are_listed_only_in_the_registry():
    offenders = [f"{path.relative_to(ROOT)}:{line}: {found}" for path in sorted(PKG.rglob("*.py")) if path not in REGISTRY
                 for line, found in _name_sequences(path)]
    assert not offenders, "method lists outside core/methods.py and core/policy.py:\n" + "\n".join(offenders)
