"""profiles.computed: json rather than jsonb on PostgreSQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24

A profile's computed state (counters, computed traits, memberships, the next timer) is
read and written whole by Ariane, and no query reads into it in SQL. As `jsonb`,
PostgreSQL parsed it into a tree on every write and printed it back on every read; as
`json` it is kept as written (checked, not rebuilt). SQLite stores both as text:
nothing changes there. On PostgreSQL the change rewrites the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "profiles",
            "computed",
            type_=sa.JSON(),
            existing_type=postgresql.JSONB(),
            existing_nullable=False,
            postgresql_using="computed::json",
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "profiles",
            "computed",
            type_=postgresql.JSONB(),
            existing_type=sa.JSON(),
            existing_nullable=False,
            postgresql_using="computed::jsonb",
        )
