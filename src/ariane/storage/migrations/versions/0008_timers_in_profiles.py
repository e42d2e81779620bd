"""profiles.due_at: a profile's segment timer is kept in its row

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24

When time alone may next change a person's segments was a row of `profile_timers`,
written beside the profile's own row by every batch that moved it. It is now a column of
the profile, written with the row that is written anyway, and indexed only where set.
The timers waiting move across, and back on a downgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_profiles_due_at",
            ["due_at"],
            unique=False,
            sqlite_where=sa.text("due_at IS NOT NULL"),
            postgresql_where=sa.text("due_at IS NOT NULL"),
        )
    op.execute(
        "UPDATE profiles SET due_at ="
        " (SELECT t.due_at FROM profile_timers t WHERE t.profile_id = profiles.id)"
        " WHERE id IN (SELECT profile_id FROM profile_timers)"
    )
    with op.batch_alter_table("profile_timers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profile_timers_due_at"))
    op.drop_table("profile_timers")


def downgrade() -> None:
    op.create_table(
        "profile_timers",
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", name=op.f("pk_profile_timers")),
    )
    with op.batch_alter_table("profile_timers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profile_timers_due_at"), ["due_at"], unique=False)
    op.execute(
        "INSERT INTO profile_timers (profile_id, due_at)"
        " SELECT id, due_at FROM profiles WHERE due_at IS NOT NULL"
    )
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index("ix_profiles_due_at")
        batch_op.drop_column("due_at")
