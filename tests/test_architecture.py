"""The house rules of `bench/` as tests: imports run one way (no cycles, function-level imports
included; no wing imports a wing above it) and no module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"rbench": ROOT / "bench", "rbench.methods": ROOT / "methods"}

# The wings in the order data flows through them; a module may import its own wing and the ones
# before it. The modules at the top of bench/ (runner, sweep, regress, distributed) join the wings;
# the CLI sits above everything.
WINGS = ("core", "data", "layers", "train", "methods", "evaluate", "store", "report", "perf")
TOP, CLI = len(WINGS), len(WINGS) + 1
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of rbench (bench/ and methods/)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "rbench" and parts[:1] == ("methods",):
                continue
            modules[name] = path
    return modules


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The rbench modules `source` imports anywhere (module level, inside functions, under `if`),
    resolved to the module actually loaded: `from rbench.x import y` is `rbench.x.y` when that is a
    module, else `rbench.x`."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "rbench")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "rbench":
                continue
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.add(child if child in known else target)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {
        name: imported_modules(path.read_text(), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def wing_of(module: str) -> int:
    """The rank of a module's wing (-1: the package root, importable by all)."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[1] in WINGS:
        return WINGS.index(parts[1])
    return CLI if parts[1] == "cli" else TOP


def test_the_cycle_finder_sees_a_planted_cycle_and_a_function_level_import():
    known = {"rbench.a", "rbench.b", "rbench.c"}
    source = "import os\n\ndef late():\n    from rbench.b import thing\n"
    assert imported_modules(source, "rbench.a", False, known) == {"rbench.b"}
    graph = {"rbench.a": {"rbench.b"}, "rbench.b": {"rbench.c"}, "rbench.c": {"rbench.a"}}
    assert find_cycle(graph) == ["rbench.a", "rbench.b", "rbench.c", "rbench.a"]
    graph["rbench.c"] = set()
    assert find_cycle(graph) is None


def test_relative_and_submodule_imports_resolve_to_the_module_loaded():
    known = {"rbench.layers", "rbench.layers.base", "rbench.layers.masks"}
    source = (
        "from . import base\nfrom .masks import top_k_mask\nfrom rbench.layers import rebuild\n"
    )
    got = imported_modules(source, "rbench.layers.factorised", False, known | {"x"})
    assert got == {"rbench.layers.base", "rbench.layers.masks", "rbench.layers"}


def test_every_module_is_found():
    files = module_files()
    assert "rbench.runner" in files and "rbench.methods.cstar" in files
    assert "rbench.core.registry" in files and "rbench.layers" in files
    assert all(path.exists() for path in files.values())


def test_rbench_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_wing_imports_a_wing_above_it():
    upward = [
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if wing_of(dst) > wing_of(src)
    ]
    assert not upward, "imports against the flow: " + "; ".join(sorted(upward))


def test_the_methods_never_see_the_evaluator_or_the_cli():
    for src, targets in import_graph().items():
        if src.startswith("rbench.methods."):
            assert all(wing_of(dst) <= WINGS.index("methods") for dst in targets), src


@pytest.mark.parametrize("name", sorted(module_files()))
def test_no_module_is_over_400_lines(name):
    lines = module_files()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines"
