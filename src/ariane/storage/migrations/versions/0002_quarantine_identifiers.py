"""quarantine identifiers: whom each quarantined event names, for erasure and export

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quarantine_identifiers",
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("quarantine_id", BigId, nullable=False),
        sa.PrimaryKeyConstraint(
            "value", "type", "quarantine_id", name=op.f("pk_quarantine_identifiers")
        ),
    )
    op.create_index(
        "ix_quarantine_identifiers_quarantine_id",
        "quarantine_identifiers",
        ["quarantine_id"],
        unique=False,
    )
    # Events quarantined before this revision are found by the ids they were stored with.
    for column, id_type in (("user_id", "user_id"), ("anonymous_id", "anonymous_id")):
        op.execute(
            "INSERT INTO quarantine_identifiers (value, type, quarantine_id)"
            f" SELECT {column}, '{id_type}', id FROM quarantine"
            f" WHERE {column} IS NOT NULL AND {column} <> ''"
        )


def downgrade() -> None:
    op.drop_index("ix_quarantine_identifiers_quarantine_id", table_name="quarantine_identifiers")
    op.drop_table("quarantine_identifiers")
