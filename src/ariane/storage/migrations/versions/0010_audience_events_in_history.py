"""segment_history carries each change's Audience event: message id and segment name

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24

An `Audience Entered/Exited` event was written twice: as the change (then its row of
`segment_history`) and as a row of `events`, with the unique and timeline indexes that
table keeps for people's own events. From 0010 the history row is the event: it carries
the message id and the segment's name, the timeline reads it there (indexed by person
and time), and the outbox names it. The events of changes applied before stay in
`events`; those of changes still waiting leave it, the change being the event now.

Going back writes the Audience events of the history rows and of the changes not yet
applied into `events` (those not there already), where 0009 reads them, so that no
timeline loses one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("segment_history", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("segment_name", sa.String(length=200), nullable=True))
        batch_op.drop_index(batch_op.f("ix_segment_history_profile_id"))
        batch_op.create_index("ix_segment_history_profile_id_at", ["profile_id", "at"])
    # A change still waiting to be applied is its Audience event from now on, and its
    # history row will be: the copy written into `events` when it was recorded goes, or
    # the timeline would show it twice.
    op.execute(
        "DELETE FROM events WHERE source_id = 'ariane' AND message_id IN"
        " (SELECT message_id FROM segment_changes WHERE message_id IS NOT NULL)"
    )


def _audience_events(rows: str, name: str) -> str:
    """An INSERT of `events` rows for the Audience events of `rows` (a FROM clause naming
    the change `c`), in the shape Ariane wrote them before 0010."""
    if op.get_bind().dialect.name == "postgresql":
        stamp = """to_char(c.at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
        build = "jsonb_build_object"
    else:
        # SQLite keeps the time as 'YYYY-MM-DD HH:MM:SS.ffffff'.
        stamp = "replace(c.at, ' ', 'T') || 'Z'"
        build = "json_object"
    event = "CASE c.change WHEN 'entered' THEN 'Audience Entered' ELSE 'Audience Exited' END"
    payload = (
        f"{build}('type', 'track', 'event', {event}, 'messageId', c.message_id,"
        f" 'timestamp', {stamp},"
        f" 'properties', {build}('audience_id', c.segment_id, 'audience_name', {name},"
        " 'cause', c.cause),"
        f" 'context', {build}('library', {build}('name', 'ariane')),"
        " 'ariane_profile_id', c.profile_id)"
    )
    return (
        "INSERT INTO events (source_id, message_id, profile_id, type, event, timestamp,"
        f" received_at, payload) SELECT 'ariane', c.message_id, c.profile_id, 'track', {event},"
        f" c.at, c.at, {payload} FROM {rows} WHERE c.message_id IS NOT NULL"
        # One written there already (by a downgrade before, with changes still waiting).
        " AND NOT EXISTS (SELECT 1 FROM events e"
        " WHERE e.message_id = c.message_id AND e.source_id = 'ariane')"
        " ORDER BY c.id"
    )


def downgrade() -> None:
    op.execute(_audience_events("segment_history c", "c.segment_name"))
    op.execute(
        _audience_events("segment_changes c LEFT JOIN segments s ON s.id = c.segment_id", "s.name")
    )
    with op.batch_alter_table("segment_history", schema=None) as batch_op:
        batch_op.drop_index("ix_segment_history_profile_id_at")
        batch_op.create_index(
            batch_op.f("ix_segment_history_profile_id"), ["profile_id"], unique=False
        )
        batch_op.drop_column("segment_name")
        batch_op.drop_column("message_id")
