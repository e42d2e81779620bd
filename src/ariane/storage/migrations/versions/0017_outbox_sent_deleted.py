"""outbox: loyalty and earn messages dealt with are deleted

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-25

Those messages are now deleted once sent (loyalty events) or read (earn rules), rather
than marked sent: the ones marked sent before go too. Nothing reads them again, so going
back down leaves the outbox as it is.
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM outbox WHERE topic IN ('loyalty', 'earn') AND dispatched_at IS NOT NULL"
    )


def downgrade() -> None:
    pass
