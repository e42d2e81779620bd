"""segment_changes: entries and exits recorded as they are decided, applied in bulk

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Memberships and their history are indexed by segment: written batch by batch, each
batch touched a page per segment of each index. Ingestion now appends to this table,
which has no index but its key, and `storage.segments.catch_up` moves its rows into
`segment_members` and `segment_history` in bulk, before anything reads them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("segment_id", sa.String(length=32), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("change", sa.String(length=10), nullable=False),
        sa.Column("cause", sa.String(length=20), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_changes")),
    )


def downgrade() -> None:
    # Changes not yet applied are applied first, as `catch_up` does: the history in order,
    # and for each person and segment the last change decides the membership.
    op.execute(
        "INSERT INTO segment_history (segment_id, profile_id, change, cause, at)"
        " SELECT segment_id, profile_id, change, cause, at FROM segment_changes ORDER BY id"
    )
    op.execute(
        "DELETE FROM segment_members WHERE (segment_id, profile_id) IN"
        " (SELECT segment_id, profile_id FROM segment_changes)"
    )
    op.execute(
        "INSERT INTO segment_members (segment_id, profile_id, entered_at)"
        " SELECT c.segment_id, c.profile_id, c.at FROM segment_changes c"
        " WHERE c.change = 'entered' AND c.id = (SELECT max(d.id) FROM segment_changes d"
        " WHERE d.segment_id = c.segment_id AND d.profile_id = c.profile_id)"
    )
    op.drop_table("segment_changes")
