"""The package's layout, read from its source: which module may import which (arrows point down only).

Every ``import`` and ``from`` statement counts wherever it stands (inside a function, under
``if TYPE_CHECKING:``), because a lazy or type-only import is still an arrow: it is where the next
edit turns into a real import, and where a circle already exists for mypy and for readers. The
rules::

    no import circle between modules of the package
    worker side (pool.worker, pool.template, app.*)  never reaches replica.*, runtime.*, requests,
                                                     urllib3 or http.client, directly or through
                                                     other modules of the package
    foundation (errors, units, logs, config,         imports no other module of the package
      settings, limits, _version)
    runtime.*                                        never reaches replica.* or pool.*
    ``import cmworker``                              loads no parent-side module and no HTTP stack
    every module                                     at most 600 lines

An import of a module counts as an arrow to that module only, not to the packages around it: a
package's ``__init__`` is reached only when something names it.

Each rule is a function of the package's root directory, so the tests at the bottom can show that it
fails on a small package built to break it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cmworker"

WORKER_SIDE = ("pool.worker", "pool.template", "app")
FOUNDATION = ("errors", "units", "logs", "redaction", "config", "settings", "limits", "_version")
NETWORK = ("requests", "urllib3", "http.client")
PARENT_ONLY = ("supervisor", "executor", "replica", "runtime")  # never loaded by `import cmworker`
MAX_LINES = 600


# --- reading the imports ------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    """One arrow: ``source`` names ``target`` at ``where`` (file:line)."""

    source: str
    target: str
    where: str


Graph = dict[str, list[Import]]  # every module of the package -> its imports, in source order


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module under ``root/package`` by dotted name; a package by its own name."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def read_imports(root: Path, package: str) -> Graph:
    """The imports of every module of ``package`` (below ``root``), read with ``ast``."""
    modules = modules_of(root, package)
    graph: Graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = [Import(name, target, f"{path.relative_to(root)}:{node.lineno}")
                       for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                       for target in _targets(node, name, is_package, modules)]
        graph[name].sort(key=lambda edge: int(edge.where.rpartition(":")[2]))
    return graph


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: Iterable[str]) -> list[str]:
    """The modules one statement names. ``from a import b`` names ``a.b`` when that is a module of the
    package, else ``a``; outside the package both (``from http import client`` is ``http.client``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    known = set(modules)
    if base.split(".")[0] in {name.split(".")[0] for name in known}:
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _within(name: str, prefixes: Iterable[str]) -> bool:
    """``name`` is one of ``prefixes`` or a module below one."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


# --- the rules --------------------------------------------------------------------------------

def import_cycles(graph: Graph) -> list[str]:
    """One circle per strongly connected group of modules, spelt out with the line of each arrow."""
    edges = {name: [edge for edge in imports if edge.target in graph] for name, imports in graph.items()}
    reported: set[str] = set()
    problems = []
    for start in sorted(graph):
        if start in reported:
            continue
        cycle = _cycle_through(start, edges)
        if cycle:
            reported.update(edge.source for edge in cycle)
            chain = " -> ".join([cycle[0].source, *(edge.target for edge in cycle)])
            lines = ", ".join(f"{edge.source} -> {edge.target} at {edge.where}" for edge in cycle)
            problems.append(f"import circle {chain} ({lines})")
    return problems


def _cycle_through(start: str, edges: dict[str, list[Import]]) -> list[Import]:
    """The arrows of a shortest path from ``start`` back to itself, or [] (breadth first)."""
    came_by: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        next_frontier = []
        for name in frontier:
            for edge in edges[name]:
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came_by[path[0].source])
                    return path
                if edge.target not in came_by:
                    came_by[edge.target] = edge
                    next_frontier.append(edge.target)
        frontier = next_frontier
    return []


def forbidden_reach(graph: Graph, sources: Callable[[str], bool], forbidden: Iterable[str]) -> list[str]:
    """Each module selected by ``sources`` that imports a ``forbidden`` module, directly or through
    modules of the package; the chain of imports that gets there, with file and line."""
    banned = tuple(forbidden)
    problems = []
    for start in sorted(name for name in graph if sources(name)):
        came_by: dict[str, Import] = {}
        queue, seen = [start], {start}
        while queue:
            name = queue.pop(0)
            for edge in graph[name]:
                if _within(edge.target, banned):
                    chain = [edge]
                    while chain[0].source != start:
                        chain.insert(0, came_by[chain[0].source])
                    route = " -> ".join([start, *(e.target for e in chain)])
                    problems.append(f"{start} reaches {edge.target}: {route} ({edge.where})")
                    queue = []
                    break
                if edge.target in graph and edge.target not in seen:
                    seen.add(edge.target)
                    came_by[edge.target] = edge
                    queue.append(edge.target)
    return problems


def foundation_imports(graph: Graph, package: str) -> list[str]:
    """Each import from a foundation module of anything of the package above the foundation."""
    foundation = [f"{package}.{name}" for name in FOUNDATION]
    return [f"{edge.source} imports {edge.target} ({edge.where}): the foundation imports nothing above it"
            for name, imports in sorted(graph.items()) if name in foundation
            for edge in imports if _within(edge.target, [package]) and edge.target not in foundation]


def worker_side_problems(graph: Graph, package: str) -> list[str]:
    side = [f"{package}.{name}" for name in WORKER_SIDE]
    banned = [f"{package}.replica", f"{package}.runtime", *NETWORK]
    return forbidden_reach(graph, lambda name: _within(name, side), banned)


def runtime_problems(graph: Graph, package: str) -> list[str]:
    return forbidden_reach(graph, lambda name: _within(name, [f"{package}.runtime"]),
                           [f"{package}.replica", f"{package}.pool"])


def loaded_by_import(root: Path, package: str) -> list[str]:
    """What ``import package`` loads that it must not: parent-side modules and the HTTP stack."""
    program = (f"import sys, json, {package}; "
               f"print(json.dumps(sorted(m for m in sys.modules if m == {package!r} "
               f"or m.startswith({package + '.'!r}) or m.split('.')[0] in ('requests', 'urllib3') "
               f"or m == 'http.client')))")
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", program], cwd=root, env=environ, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    return [f"`import {package}` loads {name}" for name in loaded
            if _within(name, NETWORK) or set(name.split(".")[1:]) & set(PARENT_ONLY)]


def oversized_modules(root: Path, package: str, limit: int = MAX_LINES) -> list[str]:
    problems = []
    for path in modules_of(root, package).values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            problems.append(f"{path.relative_to(root)} has {lines} lines (at most {limit})")
    return problems


# --- cmworker ---------------------------------------------------------------------------------

def _assert_none(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_imports(ROOT, PACKAGE)


def test_the_package_has_no_import_circle(graph: Graph) -> None:
    _assert_none(import_cycles(graph))


def test_the_worker_side_never_reaches_the_network_or_the_parent_side(graph: Graph) -> None:
    _assert_none(worker_side_problems(graph, PACKAGE))


def test_the_foundation_imports_nothing_above_it(graph: Graph) -> None:
    _assert_none(foundation_imports(graph, PACKAGE))


def test_the_runtime_emulator_imports_neither_replica_nor_pool(graph: Graph) -> None:
    _assert_none(runtime_problems(graph, PACKAGE))


def test_importing_cmworker_loads_no_parent_side_module_and_no_http_stack() -> None:
    _assert_none(loaded_by_import(ROOT, PACKAGE))


def test_no_module_is_over_600_lines() -> None:
    _assert_none(oversized_modules(ROOT, PACKAGE))


def test_the_rules_cover_every_worker_side_and_foundation_module(graph: Graph) -> None:
    """A rename must not leave a module outside the rules by accident: each name in them exists."""
    for name in (*WORKER_SIDE, *FOUNDATION):
        assert f"{PACKAGE}.{name}" in graph, name


# --- each rule can fail: a package built to break it ------------------------------------------

def write_package(root: Path, files: dict[str, str]) -> None:
    """``files`` by path below ``root`` ("bad/pool/worker.py"); every folder gets an ``__init__.py``."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        for folder in path.relative_to(root).parents:
            if folder != Path("."):
                (root / folder / "__init__.py").touch()


def test_a_circle_through_a_type_only_import_is_reported(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "bad/app/registry.py": "from bad.app.schema import analyse\n",
        "bad/app/schema.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from bad.app.registry import FunctionSpec\n",
        "bad/units.py": "",
    })
    [problem] = import_cycles(read_imports(tmp_path, "bad"))
    assert "bad.app.registry -> bad.app.schema -> bad.app.registry" in problem
    assert "bad/app/schema.py:3" in problem


def test_a_circle_through_a_function_body_and_a_relative_import_is_reported(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "bad/runtime/client.py": "from . import discovery\n",
        "bad/runtime/discovery.py": "def find():\n    from bad.runtime.embedded import start\n",
        "bad/runtime/embedded.py": "def client():\n    from ..runtime.client import Client\n",
    })
    [problem] = import_cycles(read_imports(tmp_path, "bad"))
    assert "bad.runtime.client -> bad.runtime.discovery -> bad.runtime.embedded -> bad.runtime.client" in problem


def test_a_worker_side_import_of_the_network_is_reported_directly_and_through_another_module(
        tmp_path: Path) -> None:
    write_package(tmp_path, {
        "bad/pool/worker.py": "def send():\n    import urllib3\n",
        "bad/pool/template.py": "from bad import helpers\n",
        "bad/helpers.py": "from http import client\n",
        "bad/app/context.py": "import bad.replica.poller\n",
        "bad/replica/poller.py": "",
        "bad/app/encoding.py": "import http.cookies\nimport json\n",  # http, but not http.client
    })
    problems = worker_side_problems(read_imports(tmp_path, "bad"), "bad")
    assert len(problems) == 3, problems
    assert any(p.startswith("bad.pool.worker reaches urllib3") for p in problems)
    assert any("bad.pool.template -> bad.helpers -> http.client" in p for p in problems)
    assert any(p.startswith("bad.app.context reaches bad.replica.poller") for p in problems)


def test_a_foundation_module_importing_above_it_is_reported(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "bad/config.py": "from bad.settings import SETTINGS\nfrom typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from bad.app.registry import FunctionSpec\n",
        "bad/settings.py": "from bad.units import parse\n",
        "bad/units.py": "",
        "bad/app/registry.py": "",
    })
    [problem] = foundation_imports(read_imports(tmp_path, "bad"), "bad")
    assert problem.startswith("bad.config imports bad.app.registry (bad/config.py:4)")


def test_the_runtime_reaching_the_pool_is_reported(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "bad/runtime/client.py": "from bad.executor import Executor\n",
        "bad/executor.py": "from bad.pool.supervisor import Pool\n",
        "bad/pool/supervisor.py": "",
    })
    [problem] = runtime_problems(read_imports(tmp_path, "bad"), "bad")
    assert "bad.runtime.client -> bad.executor -> bad.pool.supervisor" in problem


def test_an_import_that_loads_the_parent_side_or_the_http_stack_is_reported(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "bad/__init__.py": "from bad.replica import poller\nimport http.client\n",
        "bad/replica/poller.py": "",
    })
    problems = loaded_by_import(tmp_path, "bad")
    assert "`import bad` loads bad.replica" in problems
    assert "`import bad` loads bad.replica.poller" in problems
    assert "`import bad` loads http.client" in problems


def test_a_long_module_is_reported(tmp_path: Path) -> None:
    write_package(tmp_path, {"bad/short.py": "x = 1\n" * 600, "bad/long.py": "x = 1\n" * 601})
    assert oversized_modules(tmp_path, "bad") == [f"{Path('bad/long.py')} has 601 lines (at most 600)"]
