"""loyalty: programmes, rewards and coupons

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24

Programmes as declared, the stock each reward has handed out, each purchase of a reward,
coupon codes (unique across programmes, free until issued) and every burn and rollback
of one under its idempotency key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loyalty_coupon_uses",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "coupon_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("profile_id", sa.String(length=32), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("burn_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("location", sa.String(length=200), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_coupon_uses")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_loyalty_coupon_uses_idempotency_key")),
    )
    with op.batch_alter_table("loyalty_coupon_uses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_loyalty_coupon_uses_coupon_id"), ["coupon_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_loyalty_coupon_uses_profile_id"), ["profile_id"], unique=False
        )

    op.create_table(
        "loyalty_coupons",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("programme", sa.String(length=64), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=True),
        sa.Column("reward", sa.String(length=64), nullable=True),
        sa.Column("issued_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("burn_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_coupons")),
        sa.UniqueConstraint("code", name=op.f("uq_loyalty_coupons_code")),
    )
    with op.batch_alter_table("loyalty_coupons", schema=None) as batch_op:
        batch_op.create_index(
            "ix_loyalty_coupons_free",
            ["programme", "pool", "id"],
            unique=False,
            sqlite_where=sa.text("issued_at IS NULL"),
            postgresql_where=sa.text("issued_at IS NULL"),
        )
        batch_op.create_index(
            batch_op.f("ix_loyalty_coupons_profile_id"), ["profile_id"], unique=False
        )

    op.create_table(
        "loyalty_programmes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column(
            "definition", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_programmes")),
    )
    op.create_table(
        "loyalty_redemptions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("programme", sa.String(length=64), nullable=False),
        sa.Column("reward", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("coupon_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_redemptions")),
        sa.UniqueConstraint("entry_id", name=op.f("uq_loyalty_redemptions_entry_id")),
    )
    with op.batch_alter_table("loyalty_redemptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_loyalty_redemptions_profile_id", ["profile_id", "programme", "reward"], unique=False
        )

    op.create_table(
        "loyalty_reward_stock",
        sa.Column("programme", sa.String(length=64), nullable=False),
        sa.Column("reward", sa.String(length=64), nullable=False),
        sa.Column("issued", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("programme", "reward", name=op.f("pk_loyalty_reward_stock")),
    )


def downgrade() -> None:
    for table in (
        "loyalty_reward_stock",
        "loyalty_redemptions",
        "loyalty_programmes",
        "loyalty_coupons",
        "loyalty_coupon_uses",
    ):
        op.drop_table(table)
