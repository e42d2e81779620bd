"""The bus's storage: the outbox, the two logs its handlers read, their positions, and
what they parked. The only module that touches the `outbox`, `bus_positions` and
`bus_parked` tables.

Two logs: the outbox, where services record what happened (`domain.events`) in the
transaction that made it happen, and the events table, whose rows are not copied to the
outbox: its consumers read it where it is. Both are read in the order of
`Dialect.log_order`, from a position (tx, id) each handler keeps, and only as far as
`Dialect.log_after` allows: on PostgreSQL no further than the oldest transaction still
running, so that a transaction that commits late, with lower ids than rows already read,
is never passed over.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.clock import parse_timestamp
from ariane.domain.events import KINDS, DomainEvent, StoredEvent, from_record
from ariane.storage.commits import wake_on_commit
from ariane.storage.database import dialect_of
from ariane.storage.tables import bus_parked, bus_positions, events, outbox

Position = tuple[int, int]
Stream = Literal["outbox", "events"]
START: Position = (0, 0)
# A horizon past every transaction: what is committed, whatever may still commit before it.
LATEST = 2**63 - 1
# What the events log's entries are called, beside the kinds of `domain.events`.
STORED_EVENT = "StoredEvent"

_LOGS: dict[str, sa.Table] = {"outbox": outbox, "events": events}


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a log, as a handler receives it."""

    stream: Stream
    position: Position
    event: DomainEvent | StoredEvent

    @property
    def kind(self) -> str:
        return self.event.kind if isinstance(self.event, DomainEvent) else STORED_EVENT

    @property
    def event_id(self) -> str:
        return self.event.event_id


# --- writing ----------------------------------------------------------------------------

_RECORD = outbox.insert()


def record(conn: Connection, happened: Sequence[DomainEvent]) -> None:
    """Write what happened to the outbox, in the caller's transaction, in this order."""
    if not happened:
        return
    conn.execute(_RECORD, [_row(event) for event in happened])
    wake_on_commit(conn, "outbox", {event.kind for event in happened})


def record_once(conn: Connection, happened: Sequence[DomainEvent]) -> None:
    """`record`, leaving out what the outbox holds already under the same event id."""
    dialect = dialect_of(conn)
    if not happened:
        return
    dialect.insert_ignoring_conflicts(conn, outbox, [_row(event) for event in happened])
    wake_on_commit(conn, "outbox", {event.kind for event in happened})


def _row(event: DomainEvent) -> dict[str, Any]:
    return {
        "topic": event.kind,
        "message_id": event.event_id,
        "profile_id": event.profile_id,
        "payload": event.payload(),
        "created_at": event.at,
    }


# --- reading ----------------------------------------------------------------------------


def horizon(conn: Connection) -> int:
    """What `read` and `head` are given, read with a connection of its own before the
    snapshot they read in begins (`Dialect.log_horizon`)."""
    dialect = dialect_of(conn)
    return dialect.log_horizon(conn)


def read(
    conn: Connection,
    stream: Stream,
    after: Position,
    limit: int,
    horizon: int,
    kinds: Collection[str] | None = None,
) -> tuple[list[Entry], Position]:
    """Up to `limit` entries after `after`, of `kinds` only if given (outbox), and the
    position read up to: past the last entry, or past entries of other kinds."""
    dialect = dialect_of(conn)
    table = _LOGS[stream]
    window = dialect.log_after(table, after, horizon)
    query = sa.select(*_COLUMNS[stream]).where(window)
    if stream == "outbox":
        query = query.where(outbox.c.topic.in_(sorted(KINDS if kinds is None else kinds)))
    rows = conn.execute(query.order_by(*dialect.log_order(table)).limit(limit)).all()
    found = [_entry(stream, row._mapping) for row in rows]
    if len(found) < limit and stream == "outbox":
        # Nothing more of those kinds: the rows of other kinds up to the end are read.
        last = conn.execute(
            sa.select(table.c.tx, table.c.id)
            .where(window)
            .order_by(*(column.desc() for column in dialect.log_order(table)))
            .limit(1)
        ).first()
        if last is not None:
            return found, (last.tx, last.id)
    return found, (found[-1].position if found else after)


def head(conn: Connection, stream: Stream, horizon: int) -> Position:
    """The position after everything in the log now: where a handler that should not
    read what came before starts."""
    dialect = dialect_of(conn)
    table = _LOGS[stream]
    last = conn.execute(
        sa.select(table.c.tx, table.c.id)
        .where(dialect.log_after(table, START, horizon))
        .order_by(*(column.desc() for column in dialect.log_order(table)))
        .limit(1)
    ).first()
    return START if last is None else (last.tx, last.id)


def held_back(
    conn: Connection,
    stream: Stream,
    after: Position,
    horizon: int,
    kinds: Collection[str] | None = None,
) -> bool:
    """Whether entries after `after` (of `kinds`, in the outbox) are committed or being
    written but not readable yet, behind a transaction older than theirs still running
    (`Dialect.log_horizon`): they will be readable once it ends, which may write nothing
    to either log and so wake no one."""
    table = _LOGS[stream]
    behind = dialect_of(conn).log_held_back(table, after, horizon)
    if behind is None:
        return False
    query = sa.select(table.c.id).where(behind)
    if stream == "outbox":
        query = query.where(outbox.c.topic.in_(sorted(KINDS if kinds is None else kinds)))
    return conn.execute(query.limit(1)).first() is not None


def oldest_after(conn: Connection, stream: Stream, after: Position) -> datetime | None:
    """When the first entry after `after` was written (None: there is none)."""
    dialect = dialect_of(conn)
    table = _LOGS[stream]
    moment = table.c.received_at if stream == "events" else table.c.created_at
    row = conn.execute(
        sa.select(moment)
        .where(dialect.log_after(table, after, LATEST))
        .order_by(*dialect.log_order(table))
        .limit(1)
    ).first()
    return None if row is None else row[0]


_COLUMNS: dict[str, list[sa.ColumnElement[Any]]] = {
    "outbox": [
        outbox.c.tx,
        outbox.c.id,
        outbox.c.topic,
        outbox.c.message_id,
        outbox.c.profile_id,
        outbox.c.created_at,
        outbox.c.payload,
    ],
    "events": [
        events.c.tx,
        events.c.id,
        events.c.source_id,
        events.c.message_id,
        events.c.profile_id,
        events.c.type,
        events.c.event,
        events.c.timestamp,
        events.c.received_at,
        events.c.payload,
    ],
}


def _entry(stream: Stream, row: Mapping[Any, Any]) -> Entry:
    position = (row["tx"], row["id"])
    if stream == "events":
        return Entry(stream, position, stored_event(position, row))
    event = from_record(
        row["topic"], row["message_id"], row["profile_id"], row["created_at"], row["payload"]
    )
    return Entry(stream, position, event)


def stored_event(position: Position, row: Mapping[Any, Any]) -> StoredEvent:
    return StoredEvent(
        position=position,
        source_id=row["source_id"],
        message_id=row["message_id"],
        profile_id=row["profile_id"],
        type=row["type"],
        event=row["event"],
        timestamp=row["timestamp"],
        received_at=row["received_at"],
        payload=row["payload"],
    )


# --- positions --------------------------------------------------------------------------


def positions(conn: Connection, handlers: Iterable[str]) -> dict[str, Position]:
    names = sorted(set(handlers))
    if not names:
        return {}
    rows = conn.execute(
        sa.select(bus_positions.c.handler, bus_positions.c.tx, bus_positions.c.position).where(
            bus_positions.c.handler.in_(names)
        )
    )
    return {row.handler: (row.tx, row.position) for row in rows}


def save_position(conn: Connection, handler: str, position: Position, now: datetime) -> None:
    dialect = dialect_of(conn)
    values = {"handler": handler, "tx": position[0], "position": position[1], "updated_at": now}
    statement = dialect.insert_statement(bus_positions).values(values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["handler"],
            set_={"tx": position[0], "position": position[1], "updated_at": now},
        )
    )


def forget_positions(conn: Connection, handlers: Iterable[str]) -> None:
    names = sorted(set(handlers))
    if names:
        conn.execute(bus_positions.delete().where(bus_positions.c.handler.in_(names)))


def known_handlers(conn: Connection) -> list[str]:
    return list(conn.execute(sa.select(bus_positions.c.handler)).scalars())


def collect_garbage(conn: Connection, upto: Position) -> int:
    """Delete the outbox's entries up to `upto`, which every handler has read."""
    dialect = dialect_of(conn)
    done = conn.execute(
        outbox.delete().where(dialect.log_through(outbox, upto), outbox.c.topic.in_(sorted(KINDS)))
    )
    return done.rowcount or 0


# --- parked entries ---------------------------------------------------------------------


def park(
    conn: Connection,
    handler: str,
    entry: Entry,
    error: str,
    attempts: int,
    now: datetime,
) -> None:
    """Keep `entry` apart, with the error that made `handler` give up on it (kept once:
    parked again, it stays as it was)."""
    dialect = dialect_of(conn)
    event = entry.event
    at = event.at if isinstance(event, DomainEvent) else event.received_at
    dialect.insert_ignoring_conflicts(
        conn,
        bus_parked,
        [
            {
                "handler": handler,
                "stream": entry.stream,
                "tx": entry.position[0],
                "position": entry.position[1],
                "kind": entry.kind,
                "event_id": entry.event_id,
                "profile_id": event.profile_id,
                "at": at,
                "payload": _parked_payload(entry),
                "error": error[:4000],
                "attempts": attempts,
                "parked_at": now,
            }
        ],
    )


@dataclass(frozen=True, slots=True)
class Parked:
    id: int
    handler: str
    entry: Entry
    error: str
    attempts: int
    parked_at: datetime

    def shown(self) -> dict[str, Any]:
        event = self.entry.event
        return {
            "id": self.id,
            "handler": self.handler,
            "stream": self.entry.stream,
            "kind": self.entry.kind,
            "event_id": self.entry.event_id,
            "profile_id": event.profile_id,
            "error": self.error,
            "attempts": self.attempts,
            "parked_at": self.parked_at,
            "payload": _parked_payload(self.entry),
        }


def parked(
    conn: Connection,
    *,
    handler: str | None = None,
    ids: Collection[int] | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[Parked]:
    query = sa.select(bus_parked).where(bus_parked.c.id > after)
    if handler is not None:
        query = query.where(bus_parked.c.handler == handler)
    if ids is not None:
        query = query.where(bus_parked.c.id.in_(sorted(ids)))
    rows = conn.execute(query.order_by(bus_parked.c.id).limit(limit))
    return [_parked(row._mapping) for row in rows]


def unpark(conn: Connection, parked_id: int) -> None:
    conn.execute(bus_parked.delete().where(bus_parked.c.id == parked_id))


def failed_again(conn: Connection, parked_id: int, error: str) -> None:
    conn.execute(
        bus_parked.update()
        .where(bus_parked.c.id == parked_id)
        .values(error=error[:4000], attempts=bus_parked.c.attempts + 1)
    )


def parked_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        sa.select(bus_parked.c.handler, sa.func.count()).group_by(bus_parked.c.handler)
    )
    return {handler: count for handler, count in rows}


def _parked_payload(entry: Entry) -> dict[str, Any]:
    event = entry.event
    if isinstance(event, DomainEvent):
        return {**event.payload(), "at": event.at}
    return {
        "source_id": event.source_id,
        "message_id": event.message_id,
        "type": event.type,
        "event": event.event,
        "timestamp": event.timestamp,
        "received_at": event.received_at,
        "payload": dict(event.payload),
    }


def _parked(row: Mapping[Any, Any]) -> Parked:
    position = (row["tx"], row["position"])
    payload = dict(row["payload"])
    event: DomainEvent | StoredEvent
    if row["stream"] == "events":
        # Kept as JSON when parked: its moments as text.
        moments = {key: parse_timestamp(payload[key]) for key in ("timestamp", "received_at")}
        event = stored_event(position, {**payload, **moments, "profile_id": row["profile_id"]})
    else:
        payload.pop("at", None)
        event = from_record(row["kind"], row["event_id"], row["profile_id"], row["at"], payload)
    return Parked(
        id=row["id"],
        handler=row["handler"],
        entry=Entry(row["stream"], position, event),
        error=row["error"],
        attempts=row["attempts"],
        parked_at=row["parked_at"],
    )
