"""outbox: claims on messages being sent, and an index of loyalty events to send

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-24

A process sending a message claims it until a time, so that others leave it alone until
then and take it over after, should it have died. The partial index finds the loyalty
events still to send without reading the Audience messages, which no one marks sent yet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_outbox_loyalty_pending",
            ["id"],
            unique=False,
            sqlite_where=sa.text("topic = 'loyalty' AND dispatched_at IS NULL"),
            postgresql_where=sa.text("topic = 'loyalty' AND dispatched_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_loyalty_pending",
            sqlite_where=sa.text("topic = 'loyalty' AND dispatched_at IS NULL"),
            postgresql_where=sa.text("topic = 'loyalty' AND dispatched_at IS NULL"),
        )
        batch_op.drop_column("claimed_until")
