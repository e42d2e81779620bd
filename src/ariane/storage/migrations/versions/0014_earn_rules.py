"""loyalty: the earn rule of each ledger entry, and an index of events for the rules

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-24

A ledger entry remembers the earn rule that gave it, so that a rule's limit per member
and period counts its entries. Ingestion queues the events that earn rules read in the
outbox (topic `earn`); a partial index finds those still to read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loyalty_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rule", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_loyalty_entries_rule", ["profile_id", "programme", "rule", "at"], unique=False
        )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_earn_pending",
            ["id"],
            unique=False,
            sqlite_where=sa.text("topic = 'earn' AND dispatched_at IS NULL"),
            postgresql_where=sa.text("topic = 'earn' AND dispatched_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_earn_pending")
    with op.batch_alter_table("loyalty_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_entries_rule")
        batch_op.drop_column("rule")
