"""Stored events, their messageId dedupe, and quarantined events."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.messages import INTERNAL_SOURCE, MAX_DEPTH, Message
from ariane.storage.commits import wake_on_commit
from ariane.storage.database import Database, RetryTransaction, dialect_of
from ariane.storage.dialect import chunked
from ariane.storage.tables import events, quarantine, quarantine_identifiers


def seen_message_ids(conn: Connection, source_id: str, message_ids: Collection[str]) -> set[str]:
    dialect = dialect_of(conn)
    seen: set[str] = set()
    for chunk in chunked(sorted(message_ids), 500):
        query = dialect.probe(
            [events.c.message_id], events.c.message_id, chunk, events.c.source_id == source_id
        )
        seen.update(conn.execute(query).scalars())
    return seen


# An event's columns but its profile, which is known only inside the write transaction.
EVENT_COLUMNS = ("source_id", "message_id", "type", "event", "timestamp", "received_at", "payload")


def event_rows(db: Database, source_id: str, messages: Sequence[Message]) -> list[tuple[Any, ...]]:
    """Events in the driver's form, but for their profile id: built before the write
    transaction, so that a writer holding it does not spend its time converting."""
    return db.dialect.driver_rows(
        events,
        EVENT_COLUMNS,
        [
            {
                "source_id": source_id,
                "message_id": m.message_id,
                "type": m.type,
                "event": m.event,
                "timestamp": m.timestamp,
                "received_at": m.received_at,
                "payload": m.payload,
            }
            for m in messages
        ],
    )


def insert_events(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `event_rows`, each followed by its profile id. A messageId stored by a
    concurrent writer meanwhile is a lost race."""
    dialect = dialect_of(conn)
    columns = (*EVENT_COLUMNS, "profile_id")
    if dialect.insert_driver_rows(conn, events, columns, rows) != len(rows):
        raise RetryTransaction("a messageId was stored by another writer meanwhile")
    if rows:
        # The consumers of the events log react once the batch commits.
        wake_on_commit(conn, "events")


# What a timeline shows of an event: all but its place in the log.
_TIMELINE_COLUMNS = [column for column in events.c if column.name != "tx"]


def tracks_of(
    conn: Connection, profile_ids: Sequence[str], names: Sequence[str]
) -> list[tuple[str, str, str, datetime, dict[str, Any]]]:
    """The track events of these names the profiles did (not those Ariane recorded), as
    (profile id, event, message id, timestamp, payload), by profile and time."""
    c = events.c
    query = (
        sa.select(c.profile_id, c.event, c.message_id, c.timestamp, c.payload)
        .where(
            c.profile_id.in_(profile_ids),
            c.type == "track",
            c.event.in_(names),
            c.source_id != INTERNAL_SOURCE,
        )
        .order_by(c.profile_id, c.timestamp, c.id)
    )
    return [(p, name, m, at, payload) for p, name, m, at, payload in conn.execute(query)]


def timeline(
    conn: Connection, profile_id: str, *, limit: int, before: tuple[datetime, int | None] | None
) -> list[dict[str, Any]]:
    """A person's events, newest first (by timestamp, then id). `before` is where the
    previous page ended: an event's (timestamp, id), or (time, None) for an Audience
    event (`storage.segments.audience_timeline`), which comes before all the events of
    its time."""
    query = sa.select(*_TIMELINE_COLUMNS).where(events.c.profile_id == profile_id)
    if before is not None:
        at, event_id = before
        if event_id is None:
            query = query.where(events.c.timestamp <= at)
        else:
            query = query.where(
                sa.or_(
                    events.c.timestamp < at,
                    sa.and_(events.c.timestamp == at, events.c.id < event_id),
                )
            )
    query = query.order_by(events.c.timestamp.desc(), events.c.id.desc()).limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]


def insert_quarantine(
    conn: Connection,
    rows: Sequence[dict[str, Any]],
    named: Sequence[Sequence[tuple[str, str]]],
) -> None:
    """Keep rejected events, each with the (type, value) identifiers it names."""
    if not rows:
        return
    statement = quarantine.insert().returning(quarantine.c.id, sort_by_parameter_order=True)
    ids = conn.execute(statement, list(rows)).scalars().all()
    links = [
        {"quarantine_id": quarantine_id, "type": id_type, "value": value}
        for quarantine_id, identifiers in zip(ids, named, strict=True)
        for id_type, value in identifiers
    ]
    if links:
        conn.execute(quarantine_identifiers.insert(), links)


# Widths of the quarantine's columns (storage.tables.quarantine).
_IDENTIFIER_WIDTH = 512
_FIELD_WIDTH = 200
# The longest quarantined payload kept whole, in characters: more than any request the
# tracking API takes, but not every line a file to import may hold.
_PAYLOAD_WIDTH = 1_000_000
_DEEPER = f"(nested more than {MAX_DEPTH} levels deep: not kept)"


def _storable_text(value: str, width: int | None = None) -> str:
    # PostgreSQL refuses NUL in text columns; the JSON payload keeps it, escaped as \u0000.
    # Neither database takes a lone surrogate: it is kept as its escape, \ud800.
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode()
    text = value.replace("\x00", "").strip()
    return text if width is None else text[:width]


def _pruned(value: Any, levels: int = 0) -> Any:
    """`value` with what JSON cannot hold made storable: objects and arrays nested more
    than `MAX_DEPTH` levels deep replaced by a note, lone surrogates by their escape, whole
    numbers beyond 64 bits by their text."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, dict | list) and levels > MAX_DEPTH:
        return _DEEPER
    if isinstance(value, dict):
        return {_pruned(str(key)): _pruned(item, levels + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_pruned(item, levels + 1) for item in value]
    return value


def _storable_payload(raw: Any) -> str:
    """The event as JSON text that either database stores and every reader of the
    quarantine reads back (`_pruned`); over `_PAYLOAD_WIDTH` characters, a JSON string of
    its start."""
    kept = _pruned(raw)
    if not isinstance(kept, str):
        text = orjson.dumps(kept, default=str).decode()
        if len(text) <= _PAYLOAD_WIDTH:
            return text
        kept = text
    if len(kept) > _PAYLOAD_WIDTH:
        kept = kept[:_PAYLOAD_WIDTH] + " (cut)"
    return orjson.dumps(kept).decode()


def quarantine_row(
    source_id: str, raw: Any, reason: str, field: str | None, received_at: datetime
) -> dict[str, Any]:
    """A row that either database stores, whatever the event holds; never its write key."""
    if isinstance(raw, dict) and "writeKey" in raw:
        raw = {key: value for key, value in raw.items() if key != "writeKey"}

    def ident(key: str) -> str | None:
        value = raw.get(key) if isinstance(raw, dict) else None
        if not isinstance(value, (str, int)):
            return None
        return _storable_text(str(value), _IDENTIFIER_WIDTH)

    return {
        "source_id": source_id,
        "received_at": received_at,
        "reason": _storable_text(reason),
        "field": None if field is None else _storable_text(field, _FIELD_WIDTH),
        "user_id": ident("userId"),
        "anonymous_id": ident("anonymousId"),
        "payload": _storable_payload(raw),
    }


def list_quarantine(
    conn: Connection, *, limit: int, after_id: int | None, source_id: str | None
) -> list[dict[str, Any]]:
    query = sa.select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
    if after_id is not None:
        query = query.where(quarantine.c.id < after_id)
    if source_id is not None:
        query = query.where(quarantine.c.source_id == source_id)
    rows = []
    for row in conn.execute(query):
        item = dict(row._mapping)
        item["payload"] = orjson.loads(item["payload"])
        rows.append(item)
    return rows
