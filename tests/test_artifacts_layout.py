"""Layout of eenet_cli/artifacts: the only package that opens or writes an eenet artifact.

A grep over the package source: no module outside ``eenet_cli/artifacts/`` reads or writes
Parquet, loads or dumps JSON, or reads or writes CSV itself; those go through the functions
of ``eenet_cli.artifacts``. And the artifacts modules import only the layers below them.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eenet_cli"
ARTIFACTS = PACKAGE / "artifacts"

# what only eenet_cli/artifacts may do with files
FORBIDDEN = {
    "pyarrow.parquet": re.compile(r"\bpyarrow\.parquet\b"),
    "pq.": re.compile(r"\bpq\."),
    "read_parquet": re.compile(r"\bread_parquet\b"),
    "to_parquet": re.compile(r"\bto_parquet\b"),
    "ParquetFile": re.compile(r"\bParquetFile\b"),
    "ParquetWriter": re.compile(r"\bParquetWriter\b"),
    "json.load": re.compile(r"\bjson\.loads?\b"),
    "json.dump": re.compile(r"\bjson\.dumps?\("),
    "read_csv": re.compile(r"\bread_csv\b"),
    "to_csv": re.compile(r"\bto_csv\("),
}

# "path:line" of a use outside eenet_cli/artifacts that is known and accepted, with why.
# Empty: every use moves into eenet_cli/artifacts.
ALLOWED: dict[str, str] = {
    # torch's own archive metadata inside a .pt2 zip, not an eenet artifact; inspected
    # member by member before torch loads the archive
    "eenet_cli/runtime/pt2.py:225": "torch.export archive JSON",
}


def _code_lines(path: Path):
    """(line number, text) of the lines of ``path`` that are code: comments dropped, and
    docstrings (string statements) skipped."""
    text = path.read_text(encoding="utf-8")
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docstring_lines.update(range(node.lineno, node.end_lineno + 1))
    for i, line in enumerate(text.splitlines(), 1):
        if i in docstring_lines:
            continue
        yield i, line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""


def _outside_artifacts() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if ARTIFACTS not in p.parents)


def offenders() -> list[str]:
    found = []
    for path in _outside_artifacts():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for i, line in _code_lines(path):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line) and f"{rel}:{i}" not in ALLOWED:
                    found.append(f"{rel}:{i}: {what}: {line.strip()}")
    return found


def test_only_artifacts_open_or_write_artifacts():
    found = offenders()
    assert not found, "outside eenet_cli/artifacts (use eenet_cli.artifacts instead):\n" + "\n".join(found)


def test_the_grep_sees_what_it_looks_for(tmp_path, monkeypatch):
    """The patterns catch the usual spellings, and skip comments and docstrings."""
    bad = tmp_path / "eenet_cli" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        '"""Mentions pq.read_table and json.loads in prose."""\n'
        "import pyarrow.parquet as pq  # reads\n"
        "t = pq.read_table('x')\n"
        "# json.loads(s) in a comment\n"
        "doc = json.load(fh)\n"
        "s = json.dumps(doc)\n"
        "df = pd.read_parquet(p)\n"
        "w = ParquetWriter(p, schema)\n"
        "json_depth(text)\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", bad.parent)
    monkeypatch.setattr(sys.modules[__name__], "ARTIFACTS", bad.parent / "artifacts")
    lines = sorted({int(x.split(":")[1]) for x in offenders()})
    assert lines == [2, 3, 5, 6, 7, 8]


# ------------------------------------------------------------------ imports of the artifacts package

ORDER = ["files", "costs", "predictions", "policy", "results", "exits", "tables", "kinds"]
ALLOWED_IMPORTS = ("eenet_cli.errors", "eenet_cli.memory", "eenet_cli._version", "eenet_cli.core")


def _eenet_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "eenet_cli"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "eenet_cli":
            if node.module == "eenet_cli.artifacts":
                out += [f"eenet_cli.artifacts.{a.name}" for a in node.names]
            else:
                out.append(node.module)
    return out


def test_artifacts_modules_are_all_known():
    modules = {p.stem for p in ARTIFACTS.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_artifacts_import_only_lower_layers(name):
    """Each module imports errors, memory, _version, core and the artifacts modules before
    it in ORDER: nothing from commands, runtime or api, and no import cycle."""
    below = {f"eenet_cli.artifacts.{m}" for m in ORDER[: ORDER.index(name)]}
    for mod in _eenet_imports(ARTIFACTS / f"{name}.py"):
        if mod.startswith("eenet_cli.artifacts"):
            assert mod in below, f"artifacts/{name}.py imports {mod}, which is not below it"
        else:
            assert mod.startswith(ALLOWED_IMPORTS), f"artifacts/{name}.py imports {mod}"


def test_artifacts_package_import_is_light():
    code = "import sys, eenet_cli.artifacts\nprint('pyarrow' in sys.modules, 'pandas' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_schemas_ship_with_the_package():
    from eenet_cli.artifacts import schema_text
    from eenet_cli.errors import InputError

    for name in ("predictions", "costs", "policy", "results"):
        assert json.loads(schema_text(name))["$schema"]
    with pytest.raises(InputError, match="unknown artifact 'pickle'"):
        schema_text("pickle")
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"artifacts/schemas/*.json"' in pyproject
