"""The package's shape: no import cycle between its modules, none over 450 lines.

Imports are read from the source with `ast` (those inside functions too, as
a function-level import is how a cycle is usually hidden), relative imports
resolved, and only imports of kerastune_lab's own modules kept.
"""

import ast
import pkgutil

import pytest

import kerastune_lab

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

MAX_LINES = 450


def _modules():
    """Returns {module name: source file} for every module of kerastune_lab."""
    def fail(name):
        raise ImportError(f"cannot import package {name} to walk it")

    modules = {"kerastune_lab": kerastune_lab.__file__}
    for info in pkgutil.walk_packages(kerastune_lab.__path__, "kerastune_lab.",
                                      onerror=fail):
        modules[info.name] = info.module_finder.find_spec(info.name).origin
    return modules


def _is_package(path):
    return path.endswith("__init__.py")


def _imported(name, path, modules):
    """The kerastune_lab modules that the module `name` (file `path`) imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = name if _is_package(path) else name.rpartition(".")[0]
    found = set()

    def add(target):
        # The deepest kerastune_lab module that `target` names: "a.b.func" -> "a.b".
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - (node.level - 1)])
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:  # `from pkg import module` imports pkg.module
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def _cycles(graph):
    """Returns one cycle (a list of names, first repeated last) for every
    strongly connected group of modules that import each other (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph, group):
    """A shortest cycle through the first module of `group` (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in {sorted(group)}")  # unreachable for an SCC


def test_the_cycle_finder_reports_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    modules = _modules()
    assert "kerastune_lab.finetune.lora.layers" in modules  # the walk goes deep
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert "kerastune_lab.finetune._backbone" in graph["kerastune_lab.finetune.quantize"]
    cycles = [" -> ".join(cycle) for cycle in _cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_is_under_the_line_limit():
    over = {}
    for name, path in sorted(_modules().items()):
        with open(path, encoding="utf-8") as f:
            lines = len(f.read().splitlines())
        if lines > MAX_LINES:
            over[name] = lines
    assert not over, (f"modules over {MAX_LINES} lines (split them): "
                      + ", ".join(f"{name} ({lines})" for name, lines in over.items()))
