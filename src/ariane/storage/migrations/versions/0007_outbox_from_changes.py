"""segment_changes.message_id: an Audience message joins the outbox when its change is applied

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24

Each entry or exit wrote an outbox row in the transaction that decided it, beside its
row of `segment_changes`. The change now names its Audience event (`message_id`), and
`storage.segments.catch_up` puts the message in the outbox in the transaction that
applies the change, in bulk. Changes recorded before this revision have no message id:
their message is in the outbox already.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("segment_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    # The messages of changes not yet applied go to the outbox now, as they did then.
    op.execute(
        "INSERT INTO outbox (topic, message_id, profile_id, payload, created_at)"
        " SELECT 'audience', message_id, profile_id, NULL, at FROM segment_changes"
        " WHERE message_id IS NOT NULL ORDER BY id"
    )
    with op.batch_alter_table("segment_changes", schema=None) as batch_op:
        batch_op.drop_column("message_id")
