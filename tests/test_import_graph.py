"""The package's import graph has no cycle, counting imports inside functions.

An import inside a function hides a cycle from Python until that function runs; the graph read
here includes them, and an import of `a.b.c` from outside package `a.b` also runs `a/b/__init__`.
Imports under `if TYPE_CHECKING:` never run and are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prco_mega"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules: dict) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its file), plus the packages whose
    `__init__` such an import runs first."""
    modules, graph = _modules(), {}
    for name, path in modules.items():
        edges = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            for target in _targets(node, name, path.name == "__init__.py"):
                found = _known(target, modules)
                while found and found != name:
                    if not name.startswith(found + "."):  # a parent package of its own: no edge
                        edges.add(found)
                    found = found.rpartition(".")[0] if "." in found else None
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [m0, m1, ..., m0], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_sees_a_cycle_through_a_function_level_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_reads_imports_inside_functions_and_package_inits():
    graph = import_graph()
    # `cli._train` imports the run inside the function (the run imports torch at its top)
    assert "prco_mega.runtime.loop" in graph["prco_mega.cli"]
    # importing `rollout.vllm_engine` runs `rollout/__init__` first
    assert "prco_mega.rollout.vllm_engine" in graph["prco_mega.runtime.build"]
    assert "prco_mega.rollout" in graph["prco_mega.runtime.build"]


def test_prco_mega_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_imports_the_run_or_the_cli():
    graph = import_graph()
    users = {m for m, edges in graph.items()
             if any(e == "prco_mega.cli" or e.startswith("prco_mega.runtime") for e in edges)}
    assert {u for u in users if not u.startswith("prco_mega.runtime")} <= {"prco_mega.cli"}, users
