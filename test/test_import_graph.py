"""The package's import graph, read from the source: imports point down the layers only
(meta, runtime -> sim -> rl -> ros), and no module imports another that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maml_ros"
LAYERS = {"meta": 0, "runtime": 0, "sim": 1, "rl": 2, "ros": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The maml_ros modules ``path`` imports at run time (function-level imports included,
    ``if TYPE_CHECKING:`` blocks excluded); ``from pkg import name`` counts as importing
    ``pkg.name`` when that is a module, else ``pkg``."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for t in ast.walk(tree)
        if isinstance(t, ast.If) and _type_checking_only(t)
        for b in t.body
        for n in ast.walk(b)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): runtime_imports(p, modules) for p in paths}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_imports_point_down_the_layers() -> None:
    upward = [
        (a, b)
        for a, targets in import_graph().items()
        for b in targets
        if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)
    ]
    assert upward == []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_import_cycles() -> None:
    graph = import_graph()
    reach = {module: reachable(graph, module) for module in graph}
    circles = {tuple(sorted(m for m in reach[a] if a in reach[m])) for a in graph if a in reach[a]}
    # A package's __init__ re-exporting its submodules is no circle unless one imports it back.
    assert sorted(circles) == []
