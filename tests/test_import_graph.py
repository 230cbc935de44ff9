"""The modules of ``ablations`` and of ``core`` import one another without cycles, counting imports inside
functions and those made only for type checking (an annotation that needs the other module is a cycle too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """The modules of ``package`` (dotted names below it) that ``path`` imports anywhere, lazily and for typing too."""
    found: set[str] = set()
    own = f"{package}."

    def add(name: str) -> None:
        # ``core.models.registry`` -> the longest known module it names (a package's __init__ counts as the package)
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                found.add(".".join(parts[:i]))
                return

    class Visitor(ast.NodeVisitor):
        def visit_Import(self, node: ast.Import) -> None:
            for a in node.names:
                if a.name.startswith(own):
                    add(a.name)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module == package or (node.module and node.module.startswith(own)):
                for a in node.names:  # from core.models import plugins: a submodule, or a name of the package
                    sub = f"{node.module}.{a.name}"
                    add(sub if sub in modules else node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return found - {_name(path, package)}


def _name(path: Path, package: str) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph(package: str) -> dict[str, set[str]]:
    files = {_name(p, package): p for p in (ROOT / package).rglob("*.py")}
    # a package's __init__ re-exports lazily or imports its submodules: count the modules alone
    files = {n: p for n, p in files.items() if p.name != "__init__.py"}
    return {name: _imports(path, package, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``[a, b, a]``), or ``None``."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_in_ablations():
    cycle = _cycle(_graph("ablations"))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_import_cycles_in_core():
    graph = _graph("core")
    assert "core.fused" in graph["core.train"] and "core.models.plugins" in graph["core.models.registry"]
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
