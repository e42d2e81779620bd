"""Apply Alembic migrations to the configured database."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config

from ariane.storage.database import Database
from ariane.storage.tables import UTCDateTime

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    config = alembic_config(db)
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def make_revision(db: Database, message: str) -> None:
    """Draft a migration from what `tables.py` declares and `db`, at the latest revision,
    lacks. For developers; see "Schema changes" in docs/configuration.md."""
    config = alembic_config(db)
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)


def render_type(kind: str, value: Any, context: AutogenContext) -> str | Literal[False]:
    """Write Ariane's column types into a drafted migration as plain SQLAlchemy types.

    A migration must not import `ariane.storage.tables`: a later change there would
    rewrite what an applied migration did. False lets Alembic render anything else.
    """
    if kind != "type":
        return False
    if isinstance(value, UTCDateTime):
        return "sa.DateTime()"
    if isinstance(value, sa.JSON):
        context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    if isinstance(value, sa.BigInteger) and "sqlite" in value._variant_mapping:
        return 'sa.BigInteger().with_variant(sa.Integer(), "sqlite")'
    return False
