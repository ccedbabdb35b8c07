"""The tree's shape: no import cycle among quantcore's modules, docs/architecture.md
names every source file under csrc/ and src/quantcore/ (and no file that is
gone), and the installed package holds no generated C."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Set

import pytest

import quantcore

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(quantcore.__file__).resolve().parent


# ---- imports ------------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: Set[str]) -> Set[str]:
    """The quantcore modules `path` imports, at module level or inside functions
    (a lazy import that dodges a cycle is still one), ``if TYPE_CHECKING:`` blocks
    excepted (they never run)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in modules else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != me}


def _graph() -> Dict[str, Set[str]]:
    files = sorted(PKG.rglob("*.py"))
    modules = {_module_name(f) for f in files} | {"quantcore._ext"}
    return {_module_name(f): _imports(f, modules) for f in files}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_walker_sees_cycles_and_lazy_imports(tmp_path):
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.t\n"
                   "def f():\n    from x import y\n")
    global PKG
    old, PKG = PKG, tmp_path
    try:
        assert _imports(src, {"x", "x.y", "x.t", "m"}) == {"x.y"}
    finally:
        PKG = old


def test_no_import_cycle_among_quantcore_modules():
    graph = _graph()
    assert "quantcore.bench.run" in graph and "quantcore.tensor" in graph
    assert "quantcore.metrics" in graph["quantcore.tensor"]  # the walker reads real edges
    assert _cycles(graph) == [], "import cycles among quantcore's modules"


# ---- docs/architecture.md ------------------------------------------------------------------

BUILD_OUTPUTS = re.compile(r"(\.so|\.o|\.pyc|\.pyd)$|(^|/)__pycache__/|^src/quantcore/_ext\.c$|"
                           r"^src/quantcore/include/")


def _source_files() -> List[str]:
    """Tracked files under csrc/ and src/quantcore/ (git), or the files there that
    are not build outputs where the tree is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "csrc", "src/quantcore"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            return sorted(out.stdout.split())
    except (OSError, subprocess.SubprocessError):
        pass
    files = []
    for top in ("csrc", "src/quantcore"):
        for dirpath, _, names in os.walk(ROOT / top):
            for n in names:
                rel = (Path(dirpath) / n).relative_to(ROOT).as_posix()
                if not BUILD_OUTPUTS.search(rel):
                    files.append(rel)
    return sorted(files)


def test_architecture_names_every_source_file():
    doc = ROOT / "docs" / "architecture.md"
    if not (ROOT / "csrc").is_dir():
        pytest.skip("no source tree next to the tests (csrc/ is missing)")
    assert doc.is_file(), "docs/architecture.md is missing"
    text = doc.read_text()
    files = _source_files()
    assert "src/quantcore/__init__.py" in files and "csrc/api.c" in files
    missing = [f for f in files if f"`{f}`" not in text]
    assert not missing, f"docs/architecture.md does not name: {missing}"
    named = set(re.findall(r"`((?:csrc|src/quantcore)/[^`\s*]+\.[A-Za-z]+)`", text))  # not globs
    gone = sorted(n for n in named if not (ROOT / n).exists())
    assert not gone, f"docs/architecture.md names files that do not exist: {gone}"


# ---- the installed package -----------------------------------------------------------------

def test_installed_package_holds_no_generated_c():
    if (PKG.parent.parent / "setup.py").is_file():
        pytest.skip("quantcore runs from a source tree (src/), where Cython's _ext.c is a "
                    "build output; the installed package is checked in CI")
    generated = sorted(p.name for p in PKG.rglob("*.c"))
    assert generated == [], f"generated C in the installed package: {generated}"
