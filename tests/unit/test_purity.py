"""Pure modules stay pure: no event loop, sockets or drivers, not even transitively.

DESIGN: protocol cores, admission, routing and policy are functions and state machines over
values; time comes in as an argument. This test walks the import graph statically.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PURE = ("exitgate.errors", "exitgate.model", "exitgate.rules", "exitgate.geo",
        "exitgate.admission", "exitgate.wire", "exitgate.routing", "exitgate.policy",
        "exitgate.hub.keepalive")
FORBIDDEN = ("asyncio", "socket", "ssl", "selectors", "uvloop", "sqlalchemy", "psycopg",
             "fastapi", "starlette", "uvicorn", "httpx", "redis", "h2", "exitgate.net",
             "exitgate.app", "exitgate.admin", "exitgate.cli", "exitgate.store.sql",
             "exitgate.hub", "exitgate.agent", "exitgate.services")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in (SRC / "exitgate").rglob("*.py")}


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import: not function bodies, not `if TYPE_CHECKING:` blocks."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            test = stmt.test
            if isinstance(test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(test):
                continue
            yield from _top_level(stmt.body + stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _top_level(stmt.body + stmt.orelse + stmt.finalbody)
            for handler in stmt.handlers:
                yield from _top_level(handler.body)
        else:
            yield stmt


def _imports(name: str) -> set[str]:
    """What importing `name` imports (lazy imports inside functions do not count)."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in _top_level(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _closure(name: str) -> dict[str, str]:
    """Every module reachable from `name`, with the module that imported it."""
    seen: dict[str, str] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        for imported in _imports(current):
            if imported in seen:
                continue
            seen[imported] = current
            if imported in MODULES:
                todo.append(imported)
    return seen


PURE_MODULES = sorted(m for m in MODULES if m.startswith(PURE))


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_edge(module: str) -> None:
    offending = {
        imported: via
        for imported, via in _closure(module).items()
        if any(imported == bad or imported.startswith(bad + ".") for bad in FORBIDDEN)
    }
    assert not offending, f"{module} reaches edge modules: {offending}"


def test_the_check_can_fail() -> None:
    assert any(m.startswith("exitgate.net") for m in MODULES)
    assert "asyncio" in _closure("exitgate.net.conn")
