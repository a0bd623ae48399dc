"""No import cycles inside cmraudit, its built-in plugins, attacks and reports included.

Function-level imports count: one that hides a cycle still means two modules cannot be read, tested or changed
apart. The graph is built from the source (ast), so the test sees every import whether or not it runs.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGES = ("cmraudit", "cmraudit.plugins", "cmraudit.attacks", "cmraudit.reports")


def _modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package's __init__), for every module of the installed packages."""
    found: dict[str, tuple[Path, bool]] = {}
    for package in PACKAGES:
        for root in importlib.util.find_spec(package).submodule_search_locations:
            for path in Path(root).rglob("*.py"):
                parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
                found.setdefault(".".join([package, *parts]), (path, path.name == "__init__.py"))
    return found


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names an import statement may refer to (a module, or a name inside one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module if is_package else module.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(name, is_package, node):
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                # a package importing its own submodules is how packages work, not a cycle
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_check_finds_a_cycle_hidden_in_a_function():
    source = "def f():\n    from .b import x\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert _imported("pkg.a", False, node)[0] == "pkg.b"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_covers_every_package():
    graph = import_graph()
    assert {"cmraudit.run.audit_run", "cmraudit.plugins.gan", "cmraudit.attacks.membership",
            "cmraudit.reports.html"} <= set(graph)
    assert "cmraudit.run.folder" in graph["cmraudit.reports.page"]  # function-level and top-level edges alike


def test_no_import_cycles():
    assert cycles(import_graph()) == []
