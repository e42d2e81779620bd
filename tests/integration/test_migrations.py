"""The Alembic migrations build exactly the schema that `storage.tables` declares."""

from __future__ import annotations

import ast

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ariane.storage.database import Database
from ariane.storage.migrate import MIGRATIONS
from ariane.storage.tables import metadata


def test_migrations_match_the_declared_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        db.dispose()
    assert differences == []


def test_migrations_do_not_depend_on_the_live_schema() -> None:
    """A migration is history: editing `tables.py` later must not change what it did."""
    revisions = sorted((MIGRATIONS / "versions").glob("*.py"))
    assert revisions
    for path in revisions:
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        assert not {name for name in imported if name.split(".")[0] == "ariane"}, path.name
