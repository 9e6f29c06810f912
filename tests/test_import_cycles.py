"""No import circles in ``backend/`` or ``mvp4d_blender/``.

Walks every module's imports with :mod:`ast` -- module level and inside functions alike, relative imports
resolved against the importing package -- and fails on any cycle between modules of the same tree. A
package's ``__init__`` counts as the package: ``from .x import y`` inside ``pkg/__init__.py`` is an edge
``pkg -> pkg.x``; ``import pkg.x`` from elsewhere is an edge to ``pkg.x`` (and, because Python runs it
first, to ``pkg``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ("backend", "mvp4d_blender")


def _modules(tree: str) -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / tree).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if any(p.startswith(".") or p in ("node_modules", "backend_src") for p in parts):
            continue
        mods[".".join(parts)] = path
    return mods


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ``known`` that ``module`` imports (anywhere in its body)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        # importing a.b.c runs a, a.b and a.b.c: each is an edge (but a package's own parents are not
        # edges of its children: ``backend.x`` importing ``backend.y`` runs ``backend`` first anyway)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            cand = ".".join(parts[:i])
            if cand in known and cand != module and not module.startswith(cand + "."):
                found.add(cand)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base)
    return found


def _graph(tree: str) -> dict[str, set[str]]:
    known = _modules(tree)
    return {m: _imports(m, p, known) for m, p in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve():
    assert _resolve("backend.training.trainer", False, 1, "stream") == "backend.training.stream"
    assert _resolve("backend.training", True, 1, "stream") == "backend.training.stream"
    assert _resolve("backend.training.trainer", False, 2, "errors") == "backend.errors"
    assert _resolve("backend.avatar.fit_export_stages", False, 2, None) == "backend"


def test_the_graph_sees_function_level_imports():
    graph = _graph("backend")
    assert {"backend.errors", "backend.contract.presets"} <= graph["backend.contract.jobspec"]  # ..errors, .presets
    # backend/cli.py imports its commands lazily, inside functions
    assert any(m.startswith("backend.") for m in graph["backend.cli"])
    assert len(graph) > 50


@pytest.mark.parametrize("tree", TREES)
def test_no_import_cycles(tree):
    cycles = _cycles(_graph(tree))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
