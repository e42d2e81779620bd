"""The layers of docs/architecture.md, read from the source: imports only point inward,
and SQL stays in `storage`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "ariane"

# What each layer may not import (a module, or any module under it).
FORBIDDEN = {
    "domain": ("sqlalchemy", "fastapi", "ariane.storage", "ariane.services", "ariane.web"),
    "services": ("sqlalchemy", "fastapi", "ariane.storage.tables", "ariane.web"),
    "destinations": ("sqlalchemy", "fastapi", "ariane.storage", "ariane.web"),
    "channels": ("sqlalchemy", "fastapi", "ariane.storage", "ariane.web"),
    "web": ("sqlalchemy", "ariane.storage.tables"),
    "handlers.py": ("sqlalchemy", "ariane.storage.tables", "ariane.web"),
    "loops.py": ("sqlalchemy", "ariane.storage.tables", "ariane.web"),
    "cli.py": ("sqlalchemy", "ariane.storage.tables"),
}

# Only storage runs statements and knows the dialect.
STORAGE_ONLY_CALLS = ("execute", "exec_driver_sql", "scalar", "scalars")


def _modules(part: str) -> Iterator[Path]:
    where = PACKAGE / part
    yield from sorted(where.rglob("*.py")) if where.is_dir() else [where]


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_inward(part: str) -> None:
    found = []
    for path in _modules(part):
        for line, name in _imports(ast.parse(path.read_text())):
            for banned in FORBIDDEN[part]:
                if name == banned or name.startswith(banned + "."):
                    found.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert found == []


@pytest.mark.parametrize(
    "part", ["services", "handlers.py", "loops.py", "destinations", "channels"]
)
def test_statements_and_dialects_stay_in_storage(part: str) -> None:
    found = []
    for path in _modules(part):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "dialect":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} reads .dialect")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in STORAGE_ONLY_CALLS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "conn"
            ):
                found.append(
                    f"{path.relative_to(PACKAGE)}:{node.lineno} runs conn.{node.func.attr}"
                )
    assert found == []
