"""The layout of pipelines/ (docs/architecture.md): which room may import which, the two table engines
independent of each other, no import cycle, no module name shared with lime_model/ for another thing.

Imports are read with ``ast`` (module level, inside functions and under TYPE_CHECKING alike), so
nothing is imported to check them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# room -> the rooms it may import (besides itself): stages -> (runtime, tools) -> tables -> (faults, errors)
ALLOWED = {
    "pipelines.errors": set(),
    "pipelines.faults": {"pipelines.errors"},
    "pipelines.tables": {"pipelines.errors", "pipelines.faults"},
    "pipelines.runtime": {"pipelines.errors", "pipelines.faults", "pipelines.tables"},
    "pipelines.tools": {"pipelines.errors", "pipelines.faults", "pipelines.tables"},
    "pipelines.deploy": {"pipelines.errors", "pipelines.tables"},  # reads run_audit for the demo summary
    "pipelines.stages": {"pipelines.errors", "pipelines.faults", "pipelines.tables", "pipelines.runtime",
                         "pipelines.tools"},
}
ENGINES = ("pipelines.tables.delta_rs", "pipelines.tables.delta_spark")
# the same thing on both sides: pipelines.errors extends lime_model.errors' LimeRankError
SHARED_NAMES = {"__init__", "errors"}


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``root``."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(root: Path, package: str = "pipelines") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``from a.b import c`` is ``a.b.c`` when that
    is a module, else ``a.b``)."""
    mods = modules(root, package)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == package}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                targets |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_every_module_lives_in_a_room(graph: dict[str, set[str]]) -> None:
    assert {room(m) for m in graph if m != "pipelines"} <= set(ALLOWED)


def test_rooms_import_only_downwards(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                   if m != "pipelines" and room(t) != room(m) and room(t) not in ALLOWED[room(m)])
    assert wrong == []


def test_tables_import_no_stage_runtime_or_tool(graph: dict[str, set[str]]) -> None:
    upward = ("pipelines.stages", "pipelines.runtime", "pipelines.tools")
    assert sorted((m, t) for m, ts in graph.items() if room(m) == "pipelines.tables"
                  for t in ts if room(t) in upward) == []


def test_the_engines_do_not_import_each_other(graph: dict[str, set[str]]) -> None:
    rs, spark = ENGINES
    assert spark not in graph[rs]
    assert rs not in graph[spark]


def test_no_import_cycle_in_pipelines(graph: dict[str, set[str]]) -> None:
    assert find_cycle(graph) is None


def test_lime_model_imports_nothing_of_the_pipeline() -> None:
    for path in (REPO / "lime_model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("pipelines", "jobs", "dags", "pyspark")], path


def test_no_module_name_means_two_things() -> None:
    model = {p.stem for p in (REPO / "lime_model").rglob("*.py")}
    pipeline = {p.stem for p in (REPO / "pipelines").rglob("*.py")}
    assert (model & pipeline) - SHARED_NAMES == set()


def test_an_injected_cycle_is_found(tmp_path: Path) -> None:
    """The checks above must be able to fail: a cycle written into a copy of the package is reported."""
    pkg = tmp_path / "pipelines"
    for sub in ("", "tables", "stages"):
        (pkg / sub).mkdir(exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "tables" / "store.py").write_text("from pipelines.tables.delta_rs import DeltaRsStore\n")
    (pkg / "tables" / "delta_rs.py").write_text("def f():\n    from pipelines.stages import context\n")
    (pkg / "stages" / "context.py").write_text("from pipelines.tables import store\n")
    graph = import_graph(tmp_path)
    assert graph["pipelines.tables.delta_rs"] == {"pipelines.stages.context"}
    assert find_cycle(graph) == ["pipelines.stages.context", "pipelines.tables.store", "pipelines.tables.delta_rs",
                                 "pipelines.stages.context"]


def test_no_function_in_pipelines_or_lime_model_is_longer_than_60_lines() -> None:
    long = []
    for package in ("pipelines", "lime_model"):
        for path in modules(REPO, package).values():
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > 60:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
