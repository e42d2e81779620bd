"""loyalty: members' tiers, and what each purchase earned for its returns

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-24

Each account holds the member's tier, since when, since when their points are below it
(a grace period before demotion), and when to look at it again though nothing moves
(points leaving the rolling window), indexed for the loop that does. A purchase that a
purchase rule rewarded keeps the amount that earned points and how much of it came back,
so that returns take back points in proportion.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loyalty_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tier", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("tier_since", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("tier_below_since", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("tier_review_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_loyalty_accounts_tier_review_at", ["tier_review_at"])
    op.create_table(
        "loyalty_purchases",
        sa.Column(
            "entry_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("programme", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("eligible", sa.BigInteger(), nullable=False),
        sa.Column("returned", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", name=op.f("pk_loyalty_purchases")),
    )
    op.create_index("ix_loyalty_purchases_order_id", "loyalty_purchases", ["programme", "order_id"])
    op.create_index(op.f("ix_loyalty_purchases_profile_id"), "loyalty_purchases", ["profile_id"])


def downgrade() -> None:
    op.drop_table("loyalty_purchases")
    with op.batch_alter_table("loyalty_accounts", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_accounts_tier_review_at")
        for column in ("tier_review_at", "tier_below_since", "tier_since", "tier"):
            batch_op.drop_column(column)
