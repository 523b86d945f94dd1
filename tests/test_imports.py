"""Every hydranet module imports on its own, and hydranet's own imports form no cycle.

Importing each module alone: one child process per module, forked from a parent that has
loaded the third-party modules hydranet uses (found by importing all of hydranet in a
first child) but no hydranet module, so every child starts with none of hydranet imported
and imports one module (a fresh interpreter per module would take ~5 s each, minutes in
all on a 2-core machine; what the children share is not hydranet's, so hydranet's import
order is the same). A module that fails only because an optional extra is missing is
reported as such, not as a failure.

The import graph is static, read from the source with ``ast``: every ``import`` and
``from ... import`` of a hydranet module anywhere in a file, inside functions too (an import
moved into a function to dodge a cycle at import time still ties the two modules together),
except under ``if TYPE_CHECKING:``. ``from hydranet.x import y`` is an edge to the submodule
``hydranet.x.y`` when ``y`` is one, else to ``hydranet.x``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import deque
from pathlib import Path

from tests_helpers import ROOT

SRC = ROOT / "src"
PACKAGE = "hydranet"
# the entry point of `python -m hydranet`: importing it runs the CLI
NOT_IMPORTED_ALONE = {"hydranet.__main__"}


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


# ------------------------------------------------------------ each module alone
_DRIVER = r"""
import importlib, json, os, sys, tempfile, traceback

names = json.loads(sys.argv[1])
answers = tempfile.mkdtemp()


def start(i, job):
    # fork; the child runs job() and writes its answer to a file, then exits without cleanup
    pid = os.fork()
    if pid == 0:
        try:
            msg = job()
        except BaseException:
            msg = traceback.format_exc()
        with open(os.path.join(answers, str(i)), "w") as f:
            f.write(msg)
        os._exit(0)
    return pid


def answer(i, status):
    try:
        with open(os.path.join(answers, str(i))) as f:
            return f.read()
    except OSError:
        return f"the child died (wait status {status})"


def ours(name):
    return name == "hydranet" or name.startswith("hydranet.")


def third_party():
    # what importing all of hydranet loads besides hydranet, in the order it was loaded
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:
            pass
    return json.dumps([m for m in sys.modules if not ours(m)])


def import_alone(name):
    def job():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top and top != "hydranet":
                return f"missing {top}"
            raise
        return "ok"

    return job


pid = start("preload", third_party)
for module in json.loads(answer("preload", os.waitpid(pid, 0)[1])):
    try:
        importlib.import_module(module)
    except BaseException:
        pass
assert not any(ours(m) for m in sys.modules)
results, running, todo = {}, {}, list(enumerate(names))
while todo or running:
    while todo and len(running) < int(sys.argv[2]):
        i, name = todo.pop(0)
        running[start(i, import_alone(name))] = i
    pid, status = os.wait()
    i = running.pop(pid)
    results[names[i]] = answer(i, status)
print(json.dumps(results))
"""


def test_every_module_imports_on_its_own():
    names = sorted(set(_modules()) - NOT_IMPORTED_ALONE)
    # two children at a time: the machine's two cores
    res = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(names), "2"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(results) == names
    failed = {
        n: msg for n, msg in results.items() if msg != "ok" and not msg.startswith("missing ")
    }
    assert not failed, "\n\n".join(
        f"import {n} on its own failed:\n{msg}" for n, msg in failed.items()
    )


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return env


# ------------------------------------------------------------ the static graph
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_only: bool = False):
    """Every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:`` unless
    ``type_only``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if not type_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(type_only: bool = False) -> dict[str, set[str]]:
    """hydranet module -> the hydranet modules it imports (statically, see the docstring;
    with ``type_only``, the imports under ``if TYPE_CHECKING:`` too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path)), type_only):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # `import hydranet.a.b` binds hydranet.a.b; its nearest module is the edge
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] == PACKAGE:
                    graph[name].add(target)
    return graph


def _strong_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    out.append(component)
    return out


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str, within: set[str]):
    prev = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = prev[node]
            return path[::-1]
        for child in sorted(graph[node] & within):
            if child not in prev:
                prev[child] = node
                queue.append(child)
    return None


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For every edge that lies on a cycle, the shortest cycle through it (duplicates
    removed): removing every edge listed here removes every cycle."""
    cycles: dict[tuple[str, ...], list[str]] = {}
    for component in _strong_components(graph):
        if len(component) < 2:
            continue
        for a in sorted(component):
            for b in sorted(graph[a] & component):
                path = _shortest_path(graph, b, a, component)
                cycle = [a, *path]  # a -> b -> ... -> a
                ring = cycle[:-1]
                i = ring.index(min(ring))
                key = tuple(ring[i:] + ring[:i])
                cycles.setdefault(key, [*key, key[0]])
    return sorted(cycles.values(), key=lambda c: (len(c), c))


def test_the_graph_reader_sees_what_a_cycle_is_made_of(tmp_path, monkeypatch):
    """The reader on a small package: function-level and relative imports count, a
    TYPE_CHECKING import does not, and the cycle is printed a -> b -> a."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from hydranet.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nimport hydranet.a\nif TYPE_CHECKING:\n    import hydranet.d\n"
    )
    (pkg / "d.py").write_text("import hydranet.c\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    graph = import_graph()
    assert graph["hydranet.a"] == {"hydranet.sub.b"}
    assert graph["hydranet.sub.b"] == {"hydranet.c"}
    assert graph["hydranet.c"] == {"hydranet.a"}
    assert graph["hydranet.d"] == {"hydranet.c"}
    assert import_cycles(graph) == [["hydranet.a", "hydranet.sub.b", "hydranet.c", "hydranet.a"]]
    # counting type-only imports, c -> d -> c is a cycle too
    typed = import_graph(type_only=True)
    assert typed["hydranet.c"] == {"hydranet.a", "hydranet.d"}
    assert ["hydranet.c", "hydranet.d", "hydranet.c"] in import_cycles(typed)


def test_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, f"{len(cycles)} import cycles in hydranet:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_no_import_cycle_counting_type_only_imports():
    """Imports go one way even for annotations: a module the trainer (or the Spec, or the
    request validation) builds on names what it needs of it as a Protocol or from a lower
    module, never by importing it back under TYPE_CHECKING."""
    cycles = import_cycles(import_graph(type_only=True))
    assert not cycles, f"{len(cycles)} import cycles in hydranet:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )
