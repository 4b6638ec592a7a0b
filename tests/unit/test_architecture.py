"""The package's shape: imports go one way (no cycle, counting imports inside functions
too), every subpackage says what it is, every module stays small, and the worker's
settings never reach Celery's configuration."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FARM = Path(__file__).resolve().parents[2] / "farm"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(FARM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(FARM.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """The farm modules that `name` imports anywhere in its body (functions included).
    ``from farm.x import y`` counts as farm.x.y when that is a module, else farm.x."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
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


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_import_graph_is_read_from_every_module() -> None:
    # the graph is real: the worker's wiring reaches the app, the tasks and the runtime
    assert {"farm.app", "farm.worker.tasks", "farm.worker.lifecycle"} <= GRAPH[
        "farm.worker.wiring"]
    assert "farm.worker.runtime" in GRAPH["farm.worker.tasks"]
    assert len(GRAPH) > 40


def test_imports_have_no_cycle() -> None:
    assert find_cycle(GRAPH) is None


def test_the_celery_app_does_not_import_the_worker() -> None:
    """farm.app publishes; the worker is built on top of it, never the other way round."""
    reached = reach("farm.app") - {"farm.app"}
    assert not {m for m in reached if m.startswith(("farm.worker", "farm.cli"))}, reached


def reach(start: str) -> set[str]:
    """The farm modules `start` imports, directly or through others (functions included)."""
    reached = {start}
    todo = [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    return reached


def external_imports(path: Path) -> set[str]:
    """The top-level packages outside the farm that a module imports (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"farm"}


def test_a_worker_imports_no_sqlalchemy() -> None:
    """A worker's statements run on farm.store.db (psycopg): SQLAlchemy (12.4 MB of a
    worker's imports with its dialect, ops/bench_imports.py) is the schema's, Alembic's and
    the reports'. No module a worker reaches imports it, not even inside a function."""
    worker = reach("farm.worker.wiring") | reach("farm")
    assert {"farm.worker.tasks", "farm.store.jobs", "farm.batches.loop"} <= worker
    users = sorted(m for m in worker
                   if {"sqlalchemy", "alembic"} & external_imports(MODULES[m]))
    assert not users, f"reached by a worker and importing SQLAlchemy: {users}"
    # and the check sees such an import where there is one
    assert "sqlalchemy" in external_imports(MODULES["farm.store.schema"])


def test_a_worker_process_loads_no_sqlalchemy() -> None:
    """What `celery -A farm worker` imports, in a fresh interpreter: no SQLAlchemy module."""
    import subprocess
    import sys

    code = ("import sys, celery.worker, celeryconfig, farm; "
            "from farm.worker.wiring import worker_app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=FARM.parent, check=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("package", sorted(n for n, p in MODULES.items()
                                           if p.name == "__init__.py"))
def test_every_package_opens_with_a_docstring(package: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and len(doc.split()) >= 8, f"{package} does not say what it is"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_is_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines < MAX_LINES, f"{module} has {lines} lines"


def test_settings_stay_out_of_celerys_configuration() -> None:
    """Flower's Config tab shows the app's configuration to every operator: no settings
    object, no URL with a password, no API key in it."""
    from farm.settings import Settings
    from farm.worker.wiring import worker_app

    settings = Settings(broker_url="redis://:brokerpass@127.0.0.1:1/0",
                        database_url="postgresql://u:dbpass@127.0.0.1:1/farm",
                        anthropic_api_key="sk-ant-secret-key")
    app = worker_app(settings)
    try:
        shown = {key: repr(value) for key, value in app.conf.items()
                 if key not in ("broker_url", "BROKER_URL")}
        assert not any(isinstance(v, Settings) for v in app.conf.values())
        flat = " ".join(shown.values())
        for secret in ("dbpass", "sk-ant-secret-key", "farm_settings"):
            assert secret not in flat and secret not in shown
        assert "farm.run_job" in app.tasks  # the worker's tasks are installed on it
    finally:
        app.close()
