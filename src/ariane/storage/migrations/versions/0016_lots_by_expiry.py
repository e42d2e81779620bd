"""loyalty: lots with points left, by when they expire

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-24

The loop that writes expired points off the ledger finds the lots past their expiry with
points left through this partial index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_loyalty_lots_expires_at",
        "loyalty_lots",
        ["expires_at"],
        sqlite_where=sa.text("remaining > 0"),
        postgresql_where=sa.text("remaining > 0"),
    )


def downgrade() -> None:
    op.drop_index("ix_loyalty_lots_expires_at", table_name="loyalty_lots")
