"""loyalty: members' accounts, the ledger of their points, lots and movements

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24

An account per member and programme (what a movement of their points locks), the
append-only ledger with an idempotency key unique in each programme, the lots that earns
bring, and what each entry took from each lot.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loyalty_accounts",
        sa.Column("programme", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("programme", "profile_id", name=op.f("pk_loyalty_accounts")),
    )
    with op.batch_alter_table("loyalty_accounts", schema=None) as batch_op:
        batch_op.create_index("ix_loyalty_accounts_profile_id", ["profile_id"], unique=False)

    op.create_table(
        "loyalty_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("programme", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_entries")),
        sa.UniqueConstraint(
            "idempotency_key",
            "programme",
            name=op.f("uq_loyalty_entries_idempotency_key_programme"),
        ),
    )
    with op.batch_alter_table("loyalty_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_loyalty_entries_profile_id", ["profile_id", "programme", "id"], unique=False
        )

    op.create_table(
        "loyalty_lots",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("programme", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("earned_at", sa.DateTime(), nullable=False),
        sa.Column("available_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loyalty_lots")),
    )
    with op.batch_alter_table("loyalty_lots", schema=None) as batch_op:
        batch_op.create_index(
            "ix_loyalty_lots_profile_id", ["profile_id", "programme"], unique=False
        )

    op.create_table(
        "loyalty_movements",
        sa.Column(
            "entry_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column(
            "lot_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", "lot_id", name=op.f("pk_loyalty_movements")),
    )
    with op.batch_alter_table("loyalty_movements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_loyalty_movements_profile_id"), ["profile_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("loyalty_movements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loyalty_movements_profile_id"))

    op.drop_table("loyalty_movements")
    with op.batch_alter_table("loyalty_lots", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_lots_profile_id")

    op.drop_table("loyalty_lots")
    with op.batch_alter_table("loyalty_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_entries_profile_id")

    op.drop_table("loyalty_entries")
    with op.batch_alter_table("loyalty_accounts", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_accounts_profile_id")

    op.drop_table("loyalty_accounts")
