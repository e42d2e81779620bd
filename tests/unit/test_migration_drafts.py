"""A drafted migration spells Ariane's column types as plain SQLAlchemy types."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext

from ariane.storage.migrate import render_type
from ariane.storage.tables import BigId, JSONDoc, UTCDateTime


def test_a_draft_imports_nothing_from_ariane_and_builds_the_same_columns() -> None:
    metadata = sa.MetaData()
    sa.Table(
        "notes",
        metadata,
        sa.Column("id", BigId, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("body", JSONDoc, nullable=False),
    )
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"target_metadata": metadata})
        upgrade = produce_migrations(context, metadata).upgrade_ops
        assert upgrade is not None
        code = render_python_code(upgrade, render_item=render_type, migration_context=context)
    assert "ariane" not in code
    assert "sa.DateTime()" in code
    assert 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")' in code
    assert 'sa.BigInteger().with_variant(sa.Integer(), "sqlite")' in code
