"""The Alembic migrations build exactly the schema that `storage.tables` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ariane.storage.database import Database
from ariane.storage.tables import metadata


def test_migrations_match_the_declared_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        db.dispose()
    assert differences == []
