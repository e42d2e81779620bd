"""The schema. A change here ships with its Alembic migration.

`PERSONAL_DATA` lists, for every table holding data about a person, how to find a
person's rows; the export and erasure code walk it, and a test fails when a table that
refers to a profile is missing from it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from ariane.domain.messages import INTERNAL_SOURCE as INTERNAL_SOURCE
from ariane.domain.messages import LOYALTY_SOURCE as LOYALTY_SOURCE
from ariane.domain.profiles import SEARCH_KEY_LENGTH

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both databases."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


JSONDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def log_transaction_column() -> sa.Column[int]:
    """The `tx` column of a table read as a log: PostgreSQL fills it with the writing
    transaction's id (migration 0019 sets the default); SQLite, whose writers commit one
    after the other in id order, with 0."""
    return sa.Column("tx", sa.BigInteger, nullable=False, server_default="0")


def log_index(table: str) -> sa.Index:
    """The (tx, id) order of a log, on PostgreSQL; on SQLite, where the id alone orders
    it, an index kept empty (tx is always 0), so that writes do not pay for it."""
    return sa.Index(f"ix_{table}_log", "tx", "id", sqlite_where=sa.text("tx <> 0"))


def code_ordered(length: int) -> sa.types.TypeEngine[str]:
    """Text ordered character code by character code on PostgreSQL too (COLLATE "C"),
    whatever the database's locale, as SQLite orders it: the texts that start with a
    prefix are then one range of an index (`storage.profiles.search`)."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("write_key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("merged_into", sa.String(32), nullable=True, index=True),
    sa.Column("traits", JSONDoc, nullable=False),
    # Ariane's own state (counters, computed traits, memberships), which no query reads
    # in SQL: on PostgreSQL `json`, kept as written, rather than `jsonb`, parsed into a
    # tree on every write and printed back on every read.
    sa.Column("computed", sa.JSON(), nullable=False),
    sa.Column("first_seen", UTCDateTime, nullable=True),
    sa.Column("last_seen", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # When time alone may next change the person's segments: their durable timer, kept
    # in the profile's row, which is written anyway, rather than in a table of its own.
    # Indexed only where set: where no segment depends on time, no profile pays for it.
    sa.Column("due_at", UTCDateTime, nullable=True),
    # The `name` and `email` traits as a search compares them (`domain.profiles.search_key`),
    # for `q` of the profile list: columns of their own rather than an index over `traits`,
    # so that a write changing other traits leaves these indexes alone (and on PostgreSQL
    # stays a HOT update).
    sa.Column("search_name", code_ordered(SEARCH_KEY_LENGTH), nullable=True),
    sa.Column("search_email", code_ordered(SEARCH_KEY_LENGTH), nullable=True),
    sa.Index(
        "ix_profiles_due_at",
        "due_at",
        sqlite_where=sa.text("due_at IS NOT NULL"),
        postgresql_where=sa.text("due_at IS NOT NULL"),
    ),
    sa.Index(
        "ix_profiles_search_name",
        "search_name",
        sqlite_where=sa.text("search_name IS NOT NULL"),
        postgresql_where=sa.text("search_name IS NOT NULL"),
    ),
    sa.Index(
        "ix_profiles_search_email",
        "search_email",
        sqlite_where=sa.text("search_email IS NOT NULL"),
        postgresql_where=sa.text("search_email IS NOT NULL"),
    ),
)

identities = sa.Table(
    "identities",
    metadata,
    # The value leads the key: lookups give many values and few types, and a key led by
    # the type makes PostgreSQL scan every identifier of that type. In code order, so that
    # the values starting with a prefix are a range of the key.
    sa.Column("value", code_ordered(512), primary_key=True),
    sa.Column("type", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("source_id", sa.String(32), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("source_id", sa.String(32), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("event", sa.String(200), nullable=True),
    sa.Column("timestamp", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("payload", JSONDoc, nullable=False),
    # The transaction that wrote the row, on PostgreSQL: consumers read the table as a
    # log in (tx, id) order (see `storage.outbox`). 0 on SQLite.
    log_transaction_column(),
    # messageId first, for the same reason: it is the selective column of the dedupe probe.
    sa.UniqueConstraint("message_id", "source_id"),
    sa.Index("ix_events_profile_timeline", "profile_id", "timestamp", "id"),
    log_index("events"),
    # Ids are positions in the log: never taken again once deleted (see `log_index`).
    sqlite_autoincrement=True,
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("source_id", sa.String(32), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("field", sa.String(200), nullable=True),
    sa.Column("user_id", sa.String(512), nullable=True, index=True),
    sa.Column("anonymous_id", sa.String(512), nullable=True, index=True),
    sa.Column("payload", sa.Text, nullable=False),
)

# The normalised identifiers a quarantined event names, whatever its flaw: erasure and
# export find a person's quarantined events through them.
quarantine_identifiers = sa.Table(
    "quarantine_identifiers",
    metadata,
    sa.Column("value", sa.String(512), primary_key=True),
    sa.Column("type", sa.String(64), primary_key=True),
    sa.Column("quarantine_id", BigId, primary_key=True),
    sa.Index("ix_quarantine_identifiers_quarantine_id", "quarantine_id"),
)

merges = sa.Table(
    "merges",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("absorbed_id", sa.String(32), nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("identifiers", JSONDoc, nullable=False),
    sa.Column("message_id", sa.String(200), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
)

identity_decisions = sa.Table(
    "identity_decisions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("identifier_type", sa.String(64), nullable=False),
    sa.Column("identifier_value", sa.String(512), nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("message_id", sa.String(200), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
)

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("purpose", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Index("ix_consents_profile_purpose", "profile_id", "purpose", "at"),
)

erasure_receipts = sa.Table(
    "erasure_receipts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("erased_at", UTCDateTime, nullable=False),
    sa.Column("requested_by", sa.String(200), nullable=False),
    sa.Column("counts", JSONDoc, nullable=False),
)

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("condition", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

computed_traits = sa.Table(
    "computed_traits",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# One row, bumped by every change to segments or computed traits: a writer reads it in
# its transaction and reloads its definitions when it moved.
catalogue_version = sa.Table(
    "catalogue_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)

segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("segment_id", sa.String(32), primary_key=True),
    sa.Column("profile_id", sa.String(32), primary_key=True),
    sa.Column("entered_at", UTCDateTime, nullable=False),
    sa.Index("ix_segment_members_profile_id", "profile_id"),
)

# Each row is also the person's `Audience Entered/Exited` event: the timeline reads it
# from here (`storage.segments.audience_timeline`) rather than from a copy in `events`.
# Rows applied before migration 0010 have no message id: their events are in `events`
# (source `ariane`).
segment_history = sa.Table(
    "segment_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("segment_id", sa.String(32), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("change", sa.String(10), nullable=False),
    sa.Column("cause", sa.String(20), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("message_id", sa.String(200), nullable=True),
    # The segment's name when the change was applied: its event keeps it after the
    # segment is deleted.
    sa.Column("segment_name", sa.String(200), nullable=True),
    sa.Index("ix_segment_history_segment_id_at", "segment_id", "at", "id"),
    # A person's timeline reads their Audience events newest first.
    sa.Index("ix_segment_history_profile_id_at", "profile_id", "at"),
)

# Entries and exits as they are decided, in the transaction that decides them, moved in
# bulk into `segment_members` and `segment_history` by `storage.segments.catch_up`
# before anything reads those: their indexes by segment would otherwise take a page per
# segment for every batch. No index: rows are read in id order and deleted.
segment_changes = sa.Table(
    "segment_changes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("segment_id", sa.String(32), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("change", sa.String(10), nullable=False),
    sa.Column("cause", sa.String(20), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    # The message id of the change's Audience event, on the timeline from the moment the
    # change is recorded (read from here until it is applied, then from the history);
    # applying the change records it for the bus (`SegmentEntered`, `SegmentExited`).
    # None for changes recorded before migration 0007.
    sa.Column("message_id", sa.String(200), nullable=True),
    # Whether the change was recorded for the bus when it was decided (a segment that a
    # journey or a destination reads, `SegmentService.told_at_once`), rather than when
    # it is applied.
    sa.Column("told", sa.Boolean, nullable=False, server_default=sa.false()),
)

# What happened (`domain.events`), written in the transaction that made it happen, read
# by the handlers once it commits (`storage.outbox`).
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(100), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=False, unique=True),
    sa.Column("profile_id", sa.String(32), nullable=True, index=True),
    # What `DomainEvent.payload` keeps of it.
    sa.Column("payload", JSONDoc, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    log_transaction_column(),
    log_index("outbox"),
    sqlite_autoincrement=True,
)


# How far each handler of the bus has read its log, as a (tx, id) position.
bus_positions = sa.Table(
    "bus_positions",
    metadata,
    sa.Column("handler", sa.String(200), primary_key=True),
    sa.Column("tx", sa.BigInteger, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# What a handler gave up on after its retries, with the error, for an admin to replay:
# a copy, since the outbox row may be gone by then.
bus_parked = sa.Table(
    "bus_parked",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("handler", sa.String(200), nullable=False),
    sa.Column("stream", sa.String(16), nullable=False),
    sa.Column("tx", sa.BigInteger, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("event_id", sa.String(400), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=True, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("payload", JSONDoc, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("parked_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("handler", "event_id"),
)


# Loyalty (see domain.loyalty). A member's account row is what a movement of their points
# locks; the ledger (`loyalty_entries`) is append-only, one row per movement, each with
# an idempotency key unique in its programme; a lot holds what one earn brought and what
# remains of it, and `loyalty_movements` what each entry took from each lot, so that
# every lot's remainder can be worked out again from the ledger.
loyalty_accounts = sa.Table(
    "loyalty_accounts",
    metadata,
    sa.Column("programme", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(32), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The member's tier (domain.tiers), since when, since when their points are below it
    # (a grace period), and when to look again though nothing moves.
    sa.Column("tier", sa.String(64), nullable=True),
    sa.Column("tier_since", UTCDateTime, nullable=True),
    sa.Column("tier_below_since", UTCDateTime, nullable=True),
    sa.Column("tier_review_at", UTCDateTime, nullable=True),
    sa.Index("ix_loyalty_accounts_profile_id", "profile_id"),
    sa.Index("ix_loyalty_accounts_tier_review_at", "tier_review_at"),
)

loyalty_entries = sa.Table(
    "loyalty_entries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("programme", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False),
    # earn, spend, expire, reverse, adjust, transfer
    sa.Column("kind", sa.String(16), nullable=False),
    # Signed: what the entry adds to the member's points (a spend is negative).
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("reference", sa.String(200), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    # The earn rule that gave it, if one did: what a rule's limit counts.
    sa.Column("rule", sa.String(64), nullable=True),
    sa.UniqueConstraint("idempotency_key", "programme"),
    sa.Index("ix_loyalty_entries_profile_id", "profile_id", "programme", "id"),
    sa.Index("ix_loyalty_entries_rule", "profile_id", "programme", "rule", "at"),
)

loyalty_lots = sa.Table(
    "loyalty_lots",
    metadata,
    # The id of the earn entry that brought it.
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("programme", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("remaining", sa.BigInteger, nullable=False),
    sa.Column("earned_at", UTCDateTime, nullable=False),
    sa.Column("available_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Index("ix_loyalty_lots_profile_id", "profile_id", "programme"),
    # The lots with points left, by when they expire: what the loop writes off.
    sa.Index(
        "ix_loyalty_lots_expires_at",
        "expires_at",
        sqlite_where=sa.text("remaining > 0"),
        postgresql_where=sa.text("remaining > 0"),
    ),
)

loyalty_movements = sa.Table(
    "loyalty_movements",
    metadata,
    sa.Column("entry_id", BigId, primary_key=True, autoincrement=False),
    sa.Column("lot_id", BigId, primary_key=True, autoincrement=False),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    # What the entry took from the lot (positive).
    sa.Column("points", sa.BigInteger, nullable=False),
)

# What each purchase earned, for its returns: the earn entry (and lot) of a purchase rule,
# the amount that earned points and how much of it came back, in ten-thousandths of the
# currency unit.
loyalty_purchases = sa.Table(
    "loyalty_purchases",
    metadata,
    sa.Column("entry_id", BigId, primary_key=True, autoincrement=False),
    sa.Column("programme", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("order_id", sa.String(200), nullable=False),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("eligible", sa.BigInteger, nullable=False),
    sa.Column("returned", sa.BigInteger, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_loyalty_purchases_order_id", "programme", "order_id"),
)

# Programmes as declared (domain.programmes), in their canonical JSON; `version` counts
# the changes, for caches.
loyalty_programmes = sa.Table(
    "loyalty_programmes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# How many of a reward with a stock have been bought: raised only where it stays within
# the stock, in the statement that checks it, so that two buyers never take the last one.
loyalty_reward_stock = sa.Table(
    "loyalty_reward_stock",
    metadata,
    sa.Column("programme", sa.String(64), primary_key=True),
    sa.Column("reward", sa.String(64), primary_key=True),
    sa.Column("issued", sa.BigInteger, nullable=False),
)

# Each purchase of a reward: the spend entry that paid for it and the coupon it handed out.
loyalty_redemptions = sa.Table(
    "loyalty_redemptions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("programme", sa.String(64), nullable=False),
    sa.Column("reward", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("entry_id", BigId, nullable=False, unique=True),
    sa.Column("coupon_id", BigId, nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_loyalty_redemptions_profile_id", "profile_id", "programme", "reward"),
)

# Coupon codes, unique across programmes (a till burns a code, whatever its programme).
# A code is free until issued to a member; `burn_id` is the use in force, if any.
loyalty_coupons = sa.Table(
    "loyalty_coupons",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("code", sa.String(64), nullable=False, unique=True),
    sa.Column("programme", sa.String(64), nullable=False),
    sa.Column("pool", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=True, index=True),
    sa.Column("reward", sa.String(64), nullable=True),
    sa.Column("issued_at", UTCDateTime, nullable=True),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("burn_id", BigId, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The free codes of a pool, in the order they are handed out.
    sa.Index(
        "ix_loyalty_coupons_free",
        "programme",
        "pool",
        "id",
        sqlite_where=sa.text("issued_at IS NULL"),
        postgresql_where=sa.text("issued_at IS NULL"),
    ),
)

# Every burn of a coupon and every rollback of one, each under its idempotency key: a
# replay answers what the first request was answered.
loyalty_coupon_uses = sa.Table(
    "loyalty_coupon_uses",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("coupon_id", BigId, nullable=False, index=True),
    sa.Column("profile_id", sa.String(32), nullable=True, index=True),
    # burn, rollback
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    # For a rollback, the burn it undid.
    sa.Column("burn_id", BigId, nullable=True),
    sa.Column("channel", sa.String(32), nullable=True),
    sa.Column("location", sa.String(200), nullable=True),
    sa.Column("reference", sa.String(200), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
)

# How each table holding personal data is tied to a person: by a profile-id column, or
# by identifier values (quarantined events never reached a profile: they are found
# through the identifiers they name, and those rows go with them).
PERSONAL_DATA: dict[str, dict[str, str]] = {
    "profiles": {"profile_column": "id"},
    "identities": {"profile_column": "profile_id"},
    "events": {"profile_column": "profile_id"},
    "merges": {"profile_column": "profile_id"},
    "identity_decisions": {"profile_column": "profile_id"},
    "consents": {"profile_column": "profile_id"},
    # A merge hands the absorbed profile's memberships to the survivor (see
    # `record_merge`); the survivor is evaluated afresh.
    "segment_members": {"profile_column": "profile_id", "on_merge": "drop"},
    "segment_history": {"profile_column": "profile_id"},
    # A merge moves the changes not yet applied into the tables above first (`catch_up`):
    # none is left for the absorbed profile.
    "segment_changes": {"profile_column": "profile_id", "on_merge": "drop"},
    "outbox": {"profile_column": "profile_id"},
    "bus_parked": {"profile_column": "profile_id"},
    # A member's account is only what their movements lock: the survivor of a merge has
    # or makes its own.
    "loyalty_accounts": {"profile_column": "profile_id", "on_merge": "drop"},
    "loyalty_entries": {"profile_column": "profile_id"},
    "loyalty_lots": {"profile_column": "profile_id"},
    "loyalty_movements": {"profile_column": "profile_id"},
    "loyalty_purchases": {"profile_column": "profile_id"},
    "loyalty_redemptions": {"profile_column": "profile_id"},
    "loyalty_coupons": {"profile_column": "profile_id"},
    "loyalty_coupon_uses": {"profile_column": "profile_id"},
    # A merge moves a person's journeys, messages and inbox to the survivor.
    "enrollments": {"profile_column": "profile_id"},
    "journey_steps": {"profile_column": "profile_id"},
    "journey_conversions": {"profile_column": "profile_id"},
    "messages": {"profile_column": "profile_id"},
    "inbox": {"profile_column": "profile_id"},
    "push_subscriptions": {"profile_column": "profile_id"},
    "quarantine": {"identified_by": "quarantine_identifiers"},
    "quarantine_identifiers": {"part_of": "quarantine"},
}

# Destinations (`domain.destinations`): their definitions as given, secrets included
# (never shown), and what their deliveries did, for /metrics and the API.
destinations = sa.Table(
    "destinations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

destination_stats = sa.Table(
    "destination_stats",
    metadata,
    sa.Column("destination", sa.String(64), primary_key=True),
    sa.Column("delivered", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    # Deliveries by how long after the event was received they were acknowledged: the
    # counts of `DELIVERY_BUCKETS`, and one past the last.
    sa.Column("latency", JSONDoc, nullable=False),
    sa.Column("last_delivered_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", UTCDateTime, nullable=True),
)

# Channels, templates and journeys (`domain.channels`, `domain.templates`,
# `domain.journeys`): their definitions as given, secrets included (never shown).
channels = sa.Table(
    "channels",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Workspace-wide sending rules: frequency caps, the global control group.
messaging_policies = sa.Table(
    "messaging_policies",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Every version a journey had: people stay on the version they entered.
journey_versions = sa.Table(
    "journey_versions",
    metadata,
    sa.Column("journey_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("definition", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# A person in a journey: where they are, and when they are due or what they wait for.
enrollments = sa.Table(
    "enrollments",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("entry_key", sa.String(200), nullable=False),
    # "journey|profile|key" while active, else None: one active enrollment per key.
    sa.Column("active_key", sa.String(300), nullable=True, unique=True),
    # "journey|what made them enter" (an event, a segment change): entered once for it.
    sa.Column("entry_id", sa.String(300), nullable=False, unique=True),
    sa.Column("arm", sa.String(16), nullable=False),
    sa.Column("variants", JSONDoc, nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    # active (due at `due_at`), waiting (for `waiting_for`, until `due_at`), done, exited.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=True, index=True),
    # "event:<name>" or "segment:<name>"; with the profile, what a wait is found by.
    sa.Column("waiting_for", sa.String(250), nullable=True),
    # How often each step was run, for the occurrence of its send key.
    sa.Column("visits", JSONDoc, nullable=False),
    # The entering event's properties and name, for templates and keyed waits.
    sa.Column("entry", JSONDoc, nullable=False),
    sa.Column("entered_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("end_reason", sa.String(200), nullable=True),
    sa.Index("ix_enrollments_profile_id_waiting_for", "profile_id", "waiting_for"),
    sa.Index("ix_enrollments_journey_id_step_status", "journey_id", "step", "status"),
)

# What each step did to each person: moved on, exited, skipped (with the reason).
journey_steps = sa.Table(
    "journey_steps",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("enrollment_id", BigId, nullable=False, index=True),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(300), nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_journey_steps_journey_id_step_outcome", "journey_id", "step", "outcome"),
)

# A journey's goal reached, once per enrollment, within its window.
journey_conversions = sa.Table(
    "journey_conversions",
    metadata,
    sa.Column("enrollment_id", BigId, primary_key=True),
    sa.Column("journey_id", sa.String(64), nullable=False, index=True),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("arm", sa.String(16), nullable=False),
    sa.Column("event_id", sa.String(300), nullable=True),
    sa.Column("revenue", sa.Float, nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
)

# Every message a journey sent, held back (holdout) or skipped, under its send key.
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("send_key", sa.String(300), nullable=False, unique=True),
    sa.Column("journey_id", sa.String(64), nullable=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("enrollment_id", BigId, nullable=True, index=True),
    sa.Column("step", sa.String(64), nullable=True),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("template", sa.String(64), nullable=False),
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("arm", sa.String(16), nullable=False),
    sa.Column("variant", sa.String(64), nullable=True),
    # queued, sending, sent, failed, skipped, unknown; held: the holdout's, not sent.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("provider_id", sa.String(300), nullable=True),
    # The step's context for the template: the journey's entry and variant.
    sa.Column("context", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    # Frequency caps count a person's messages by when they were made due.
    sa.Index("ix_messages_profile_id_created_at", "profile_id", "created_at"),
    sa.Index("ix_messages_journey_id_status", "journey_id", "status"),
)

# The in-app inbox: what the inbox channel delivered to each person.
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("send_key", sa.String(300), nullable=False, unique=True),
    sa.Column("profile_id", sa.String(32), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("html", sa.Text, nullable=True),
    sa.Column("data", JSONDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("read_at", UTCDateTime, nullable=True),
    sa.Column("dismissed_at", UTCDateTime, nullable=True),
    sa.Index("ix_inbox_profile_id_id", "profile_id", "id"),
)

# Web push subscriptions, one per browser or device of a person.
push_subscriptions = sa.Table(
    "push_subscriptions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("profile_id", sa.String(32), nullable=False, index=True),
    sa.Column("endpoint", sa.String(2000), nullable=False, unique=True),
    sa.Column("keys", JSONDoc, nullable=False),
    sa.Column("device", sa.String(200), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
