"""bus: events and outbox read as logs; each handler's position; parked messages

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

The handlers of the bus read the outbox, and the events table, as logs in (tx, id)
order, where tx is the id of the transaction that wrote the row on PostgreSQL: reading
only the rows of transactions below the oldest one still running, a handler never
passes a row that commits late with a lower id. Rows already there are given 0: they
come before anything written from now on. On SQLite, whose writers commit one after the
other, tx stays 0 and the id alone orders the log.

The outbox now holds typed events (`domain.events`), read by handlers from positions of
their own rather than claimed row by row: the claims' columns and indexes go.
- Audience changes are recorded as `SegmentEntered` and `SegmentExited`, read by the
  destinations; the messages the outbox held for them named the history without copying
  it, and nothing ever read them: they go (the history keeps every change).
- The loyalty movements' events still to put on timelines become typed events
  (`PointsEarned`...).
- The earn rules read the events table itself: the events queued for them go, and the
  rules' handler starts at the first event still queued (after every event, if none).
Going back down brings none of them back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_WRITER = "pg_current_xact_id()::text::bigint"
_LOGS = ("events", "outbox")


# Loyalty track events by name, and the kind each becomes.
_LOYALTY_KINDS = {
    "Points Earned": "PointsEarned",
    "Points Spent": "PointsSpent",
    "Reward Redeemed": "RewardRedeemed",
    "Points Expired": "PointsExpired",
    "Points Reversed": "PointsReversed",
    "Points Adjusted": "PointsAdjusted",
    "Points Transferred": "PointsTransferred",
    "Tier Changed": "TierChanged",
    "Coupon Burned": "CouponBurned",
    "Coupon Burn Rolled Back": "CouponRolledBack",
}


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.execute("DELETE FROM outbox WHERE topic = 'audience'")
    op.drop_index("ix_outbox_loyalty_pending", table_name="outbox")
    op.drop_index("ix_outbox_earn_pending", table_name="outbox")
    for table in _LOGS:
        # On SQLite, an id is never taken again once its row is deleted (AUTOINCREMENT):
        # ids are positions in the log, and a handler past a deleted row's id must not
        # find a new row behind it. The table is written anew for that.
        with op.batch_alter_table(
            table,
            schema=None,
            recreate="auto" if postgres else "always",
            table_kwargs={"sqlite_autoincrement": True},
        ) as batch_op:
            batch_op.add_column(
                sa.Column("tx", sa.BigInteger(), server_default="0", nullable=False)
            )
            if table == "outbox":
                batch_op.drop_column("dispatched_at")
                batch_op.drop_column("claimed_until")
        if postgres:
            # New rows only: the column was added with a constant, without a rewrite.
            op.execute(f"ALTER TABLE {table} ALTER COLUMN tx SET DEFAULT {_WRITER}")
        op.create_index(f"ix_{table}_log", table, ["tx", "id"], sqlite_where=sa.text("tx <> 0"))
    op.create_table(
        "bus_positions",
        sa.Column("handler", sa.String(length=200), nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("handler", name=op.f("pk_bus_positions")),
    )
    op.create_table(
        "bus_parked",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("handler", sa.String(length=200), nullable=False),
        sa.Column("stream", sa.String(length=16), nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=400), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("parked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bus_parked")),
        sa.UniqueConstraint("handler", "event_id", name=op.f("uq_bus_parked_handler_event_id")),
    )
    op.create_index("ix_bus_parked_profile_id", "bus_parked", ["profile_id"])
    _type_loyalty_events(bind)
    _start_earn_rules(bind)


def _type_loyalty_events(bind: sa.Connection) -> None:
    outbox = sa.table(
        "outbox",
        sa.column("id", sa.BigInteger),
        sa.column("topic", sa.String),
        sa.column("payload", sa.JSON),
    )
    rows = bind.execute(
        sa.select(outbox.c.id, outbox.c.payload).where(outbox.c.topic == "loyalty")
    ).all()
    for row_id, payload in rows:
        message = _document(payload)
        kind = _LOYALTY_KINDS.get(message.get("event", ""))
        if kind is None:
            bind.execute(outbox.delete().where(outbox.c.id == row_id))
            continue
        properties = dict(message.get("properties") or {})
        programme = str(properties.pop("programme", ""))
        bind.execute(
            outbox.update()
            .where(outbox.c.id == row_id)
            .values(topic=kind, payload={"programme": programme, "properties": properties})
        )


def _document(payload: Any) -> dict[str, Any]:
    """A JSON payload as read back (a dict, or text on some drivers); {} for none."""
    if isinstance(payload, str | bytes):
        payload = json.loads(payload)
    return payload if isinstance(payload, dict) else {}


def _start_earn_rules(bind: sa.Connection) -> None:
    outbox = sa.table("outbox", sa.column("topic", sa.String), sa.column("payload", sa.JSON))
    events = sa.table(
        "events",
        sa.column("id", sa.BigInteger),
        sa.column("source_id", sa.String),
        sa.column("message_id", sa.String),
    )
    queued = bind.execute(sa.select(outbox.c.payload).where(outbox.c.topic == "earn")).all()
    first = None
    for (payload,) in queued:
        ref = _document(payload)
        found = bind.execute(
            sa.select(events.c.id).where(
                events.c.source_id == ref.get("source_id"),
                events.c.message_id == ref.get("message_id"),
            )
        ).scalar()
        if found is not None and (first is None or found < first):
            first = found
    if first is not None:
        start = first - 1
    else:
        start = bind.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar()
    positions = sa.table(
        "bus_positions",
        sa.column("handler", sa.String),
        sa.column("tx", sa.BigInteger),
        sa.column("position", sa.BigInteger),
        sa.column("updated_at", sa.DateTime),
    )
    bind.execute(
        positions.insert().values(
            handler="earn-rules",
            tx=0,
            position=start,
            updated_at=datetime.now(UTC).replace(tzinfo=None),
        )
    )
    bind.execute(sa.delete(outbox).where(outbox.c.topic == "earn"))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(), nullable=True))
    for topic in ("loyalty", "earn"):
        op.create_index(
            f"ix_outbox_{topic}_pending",
            "outbox",
            ["id"],
            sqlite_where=sa.text(f"topic = '{topic}' AND dispatched_at IS NULL"),
            postgresql_where=sa.text(f"topic = '{topic}' AND dispatched_at IS NULL"),
        )
    op.drop_index("ix_bus_parked_profile_id", table_name="bus_parked")
    op.drop_table("bus_parked")
    op.drop_table("bus_positions")
    for table in _LOGS:
        op.drop_index(f"ix_{table}_log", table_name=table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("tx")
