"""outbox.payload may be empty: the message is then the timeline event of that messageId

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

An Audience Entered/Exited event was written twice, on the timeline and as the outbox
row's payload. The outbox row now names it by its messageId and leaves the payload to
the event (`events`, source `ariane`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

PAYLOAD = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("payload", existing_type=PAYLOAD, nullable=True)


def downgrade() -> None:
    # The messages that name their event get its payload back; those whose event is gone
    # (erased) go too.
    op.execute(
        "UPDATE outbox SET payload = (SELECT events.payload FROM events"
        " WHERE events.message_id = outbox.message_id AND events.source_id = 'ariane')"
        " WHERE payload IS NULL"
    )
    op.execute("DELETE FROM outbox WHERE payload IS NULL")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("payload", existing_type=PAYLOAD, nullable=False)
