"""Segments, computed traits, memberships and their history."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.clock import iso
from ariane.domain.events import AudienceChange, SegmentEntered, SegmentExited
from ariane.domain.predicates import micros
from ariane.domain.segments import Transition
from ariane.storage import bus as bus_store
from ariane.storage.database import Database, dialect_of
from ariane.storage.tables import (
    catalogue_version,
    computed_traits,
    segment_changes,
    segment_history,
    segment_members,
    segments,
)

# Recorded segment changes applied per round of `catch_up`.
_APPLY_CHUNK = 20_000


def version(conn: Connection) -> int:
    found = conn.execute(sa.select(catalogue_version.c.version)).scalar()
    return 0 if found is None else int(found)


def hold_catalogue(conn: Connection) -> None:
    """Keep the segment definitions in force until the transaction ends (a change of
    definitions, `bump_version`, waits for it)."""
    dialect_of(conn).hold_catalogue(conn, exclusive=False)


def bump_version(conn: Connection) -> int:
    """Take the catalogue alone: a change of definitions waits for the writers that hold
    it, and they wait for the change."""
    dialect = dialect_of(conn)
    dialect.hold_catalogue(conn, exclusive=True)
    bumped = conn.execute(
        catalogue_version.update().values(version=catalogue_version.c.version + 1)
    )
    if bumped.rowcount == 0:
        # The row the migration seeds is gone (a table emptied by hand): start again.
        conn.execute(catalogue_version.insert().values(id=1, version=1))
    return version(conn)


def segment_rows(conn: Connection) -> list[dict[str, Any]]:
    query = sa.select(segments).order_by(segments.c.name)
    return [dict(row._mapping) for row in conn.execute(query)]


def computed_rows(conn: Connection) -> list[dict[str, Any]]:
    query = sa.select(computed_traits).order_by(computed_traits.c.name)
    return [dict(row._mapping) for row in conn.execute(query)]


def segment_row(conn: Connection, key: str) -> dict[str, Any] | None:
    """A segment by id or by name."""
    row = conn.execute(
        sa.select(segments).where(sa.or_(segments.c.id == key, segments.c.name == key))
    ).first()
    return None if row is None else dict(row._mapping)


def insert_segment(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(segments.insert().values(**row))


def update_segment(conn: Connection, segment_id: str, values: dict[str, Any]) -> None:
    conn.execute(segments.update().where(segments.c.id == segment_id).values(**values))


def delete_segment(conn: Connection, segment_id: str) -> None:
    conn.execute(segment_members.delete().where(segment_members.c.segment_id == segment_id))
    conn.execute(segments.delete().where(segments.c.id == segment_id))


def upsert_computed(conn: Connection, row: dict[str, Any]) -> None:
    known = conn.execute(
        sa.select(computed_traits.c.id).where(computed_traits.c.name == row["name"])
    ).scalar()
    if known is None:
        conn.execute(computed_traits.insert().values(**row))
    else:
        values = {k: v for k, v in row.items() if k not in ("id", "created_at")}
        conn.execute(computed_traits.update().where(computed_traits.c.id == known).values(values))


def delete_computed(conn: Connection, name: str) -> int:
    return conn.execute(computed_traits.delete().where(computed_traits.c.name == name)).rowcount


def audience_event(
    at: datetime,
    message_id: str,
    change: str,
    segment_id: str,
    segment_name: str | None,
    cause: str,
    profile_id: str,
) -> dict[str, Any]:
    """The `Audience Entered/Exited` event of a change, in Segment's shape, as the
    timeline shows it. The arguments are `_event_columns` of a
    row of the history (or of a change waiting, with its segment's name)."""
    return {
        "type": "track",
        "event": "Audience Entered" if change == "entered" else "Audience Exited",
        "messageId": message_id,
        "timestamp": iso(at),
        "properties": {"audience_id": segment_id, "audience_name": segment_name, "cause": cause},
        "context": {"library": {"name": "ariane"}},
        "ariane_profile_id": profile_id,
    }


def _event_columns(table: sa.Table, name: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:
    """What `audience_event` reads of a row of `table` (the history or the changes),
    `name` being where the segment's name comes from."""
    c = table.c
    return [c.at, c.message_id, c.change, c.segment_id, name, c.cause, c.profile_id]


# How the message id of every Audience event begins.
AUDIENCE_PREFIX = "audience-"

# Counts the Audience message ids this process makes (`transition_rows`), in 12
# hexadecimal digits.
_MESSAGE_COUNT = itertools.count()
_COUNT_CYCLE = 16**12

# The columns of a change, in the order of `TransitionRows.changes`.
_CHANGE_COLUMNS = ("segment_id", "profile_id", "change", "cause", "at", "message_id", "told")


@dataclass(frozen=True, slots=True)
class TransitionRows:
    """The rows of `segment_changes` that `record_transitions` writes for transitions at
    `at` of one `cause`, in the driver's form. Each is also the transition's Audience
    event. Built before a write transaction where that is known, so that the writer
    holding it only writes."""

    at: datetime
    cause: str
    changes: list[tuple[Any, ...]]
    # What the bus is told at once: the changes of segments someone reacts to live.
    told: list[AudienceChange]


def transition_rows(
    db: Database,
    transitions: Sequence[Transition],
    now: datetime,
    cause: str,
    told_at_once: Collection[str] = (),
) -> TransitionRows:
    """Each transition's change, with the message id of its Audience event.

    A message id is the time in hexadecimal microseconds, a number this process counts
    up for every id it makes, then 96 random bits, which keep it unique across processes
    (unique, not secret: the fast generator is enough, as for profile ids). The time
    first makes the ids a round writes fall side by side in the outbox's unique index,
    rather than one page each at random; the count orders a person's Audience events of
    one microsecond on the timeline as they were decided, also across batches.
    """
    at = db.dialect.datetime_param(now)
    ids = f"{AUDIENCE_PREFIX}{micros(now):014x}-"
    changes = []
    told: list[AudienceChange] = []
    for t in transitions:
        message_id = f"{ids}{next(_MESSAGE_COUNT) % _COUNT_CYCLE:012x}{random.getrandbits(96):024x}"
        tell = t.segment.name in told_at_once
        change = "entered" if t.entered else "exited"
        changes.append((t.segment.id, t.profile_id, change, cause, at, message_id, tell))
        if tell:
            told.append(
                (SegmentEntered if t.entered else SegmentExited)(
                    event_id=message_id,
                    profile_id=t.profile_id,
                    at=now,
                    segment_id=t.segment.id,
                    segment=t.segment.name,
                    cause=cause,
                )
            )
    return TransitionRows(now, cause, changes, told)


def record_transitions(conn: Connection, rows: TransitionRows) -> None:
    """Write `transition_rows`, through `Dialect.insert_bulk_driver_rows`: a batch of new
    people can enter hundreds of segments at once."""
    dialect = dialect_of(conn)
    dialect.insert_bulk_driver_rows(conn, segment_changes, _CHANGE_COLUMNS, rows.changes)
    bus_store.record(conn, rows.told)


def catch_up(conn: Connection, profile_ids: Collection[str] | None = None) -> int:
    """Apply the recorded changes (of `profile_ids` only, if given) to memberships and
    their history, and record what happened for the bus; how many there were.

    One transaction at a time (`Dialect.hold_projection`), in the order they were
    recorded: the changes of one person are recorded under the lock of their profile, so
    those a transaction sees come in the order they were decided. For each person and
    segment the last change decides the membership. A round ends at the last change
    recorded when it began; rows move between tables in SQL, picked by id: on PostgreSQL
    a row with a smaller id may commit later, unseen until the next round.
    """
    dialect = dialect_of(conn)
    dialect.hold_projection(conn)
    columns = segment_changes.c
    whose = [] if profile_ids is None else [columns.profile_id.in_(sorted(profile_ids))]
    last = conn.execute(sa.select(sa.func.max(columns.id)).where(*whose)).scalar()
    if last is None:
        return 0
    query = sa.select(columns.id, columns.segment_id, columns.profile_id, columns.change)
    applied = 0
    after = 0
    while True:
        rows = conn.execute(
            query.where(columns.id > after, columns.id <= last, *whose)
            .order_by(columns.id)
            .limit(_APPLY_CHUNK)
        ).all()
        if not rows:
            return applied
        _apply_changes(conn, rows)
        applied += len(rows)
        after = rows[-1][0]


def _apply_changes(conn: Connection, rows: Sequence[tuple[int, str, str, str]]) -> None:
    """`rows` of `segment_changes` (id, segment, profile, change), in id order, into the
    history and the bus's outbox, then the memberships."""
    dialect = dialect_of(conn)
    columns = segment_changes.c
    ids = [row[0] for row in rows]
    picked = dialect.among(columns.id, ids)
    # With the segment's name, which its Audience event keeps: a segment is not renamed,
    # and one being deleted has its changes applied first.
    history = sa.select(
        columns.segment_id,
        columns.profile_id,
        columns.change,
        columns.cause,
        columns.at,
        columns.message_id,
        segments.c.name,
    ).select_from(segment_changes.outerjoin(segments, segments.c.id == columns.segment_id))
    conn.execute(
        segment_history.insert().from_select(
            ["segment_id", "profile_id", "change", "cause", "at", "message_id", "segment_name"],
            history.where(picked).order_by(columns.id),
        )
    )
    # What happened, for the bus's handlers (destinations...): typed, in order.
    told = conn.execute(
        sa.select(
            columns.change,
            columns.message_id,
            columns.profile_id,
            columns.at,
            columns.segment_id,
            segments.c.name,
            columns.cause,
        )
        .select_from(segment_changes.outerjoin(segments, segments.c.id == columns.segment_id))
        .where(picked, columns.message_id.is_not(None), columns.told.is_(sa.false()))
        .order_by(columns.id)
    ).all()
    bus_store.record(
        conn,
        [
            (SegmentEntered if change == "entered" else SegmentExited)(
                event_id=message_id,
                profile_id=profile_id,
                at=at,
                segment_id=segment_id,
                segment=name or segment_id,
                cause=cause,
            )
            for change, message_id, profile_id, at, segment_id, name, cause in told
        ],
    )
    # The last change of each person in each segment decides: an exit removes the
    # membership, an entry makes it, entered then (after an exit and a new entry in one
    # round, the row still there takes the new entry's time). Most changes are entries,
    # and each costs one write; deleting every pair touched first cost one more.
    last: dict[tuple[str, str], tuple[int, str]] = {}
    for change_id, segment_id, profile_id, change in rows:
        last[(segment_id, profile_id)] = (change_id, change)
    entered = [change_id for change_id, change in last.values() if change == "entered"]
    exited = [change_id for change_id, change in last.values() if change != "entered"]
    if exited:
        pairs = sa.tuple_(segment_members.c.segment_id, segment_members.c.profile_id)
        gone = sa.select(columns.segment_id, columns.profile_id).where(
            dialect.among(columns.id, exited)
        )
        conn.execute(segment_members.delete().where(pairs.in_(gone)))
    if entered:
        made = dialect.insert_statement(segment_members).from_select(
            ["segment_id", "profile_id", "entered_at"],
            sa.select(columns.segment_id, columns.profile_id, columns.at).where(
                dialect.among(columns.id, entered)
            ),
        )
        conn.execute(
            made.on_conflict_do_update(
                index_elements=[segment_members.c.segment_id, segment_members.c.profile_id],
                set_={"entered_at": made.excluded.entered_at},
            )
        )
    conn.execute(segment_changes.delete().where(picked))


def oldest_change(conn: Connection) -> datetime | None:
    """When the first change still to apply was recorded, or None when there is none."""
    columns = segment_changes.c
    query = sa.select(columns.at).order_by(columns.id).limit(1)
    found: datetime | None = conn.execute(query).scalar()
    return found


def inherit_memberships(conn: Connection, absorbed: str, survivor: str) -> None:
    """The survivor of a merge holds the segments the absorbed profile held. The changes
    recorded must have been applied (`catch_up`)."""

    def held(profile_id: str) -> dict[str, datetime]:
        query = sa.select(segment_members.c.segment_id, segment_members.c.entered_at).where(
            segment_members.c.profile_id == profile_id
        )
        return {str(segment_id): at for segment_id, at in conn.execute(query)}

    kept = held(survivor)
    inherited = []
    for segment_id, entered_at in held(absorbed).items():
        if segment_id not in kept:
            inherited.append(
                {"segment_id": segment_id, "profile_id": survivor, "entered_at": entered_at}
            )
        elif entered_at < kept[segment_id]:
            # In both: the person has been in it since the earlier entry.
            conn.execute(
                segment_members.update()
                .where(
                    segment_members.c.segment_id == segment_id,
                    segment_members.c.profile_id == survivor,
                )
                .values(entered_at=entered_at)
            )
    if inherited:
        conn.execute(segment_members.insert(), inherited)


def members_page(
    conn: Connection, segment_id: str, *, limit: int, after: str | None
) -> list[tuple[str, datetime]]:
    query = sa.select(segment_members.c.profile_id, segment_members.c.entered_at).where(
        segment_members.c.segment_id == segment_id
    )
    if after is not None:
        query = query.where(segment_members.c.profile_id > after)
    query = query.order_by(segment_members.c.profile_id).limit(limit)
    return [(str(p), at) for p, at in conn.execute(query)]


def member_count(conn: Connection, segment_id: str) -> int:
    query = sa.select(sa.func.count()).where(segment_members.c.segment_id == segment_id)
    return int(conn.execute(query).scalar_one())


def history_page(
    conn: Connection, segment_id: str, *, limit: int, before: int | None
) -> list[dict[str, Any]]:
    query = sa.select(segment_history).where(segment_history.c.segment_id == segment_id)
    if before is not None:
        query = query.where(segment_history.c.id < before)
    query = query.order_by(segment_history.c.id.desc()).limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]


def audience_timeline(
    conn: Connection, profile_id: str, *, limit: int, before: tuple[datetime, str | None] | None
) -> list[tuple[datetime, str, dict[str, Any]]]:
    """A person's Audience events, newest first (by time, then message id): up to `limit`
    (time, message id, event), from the history and from the changes not yet applied
    (the connection's snapshot sees each change in one place or the other).

    `before` is where the previous page ended: an Audience event's (time, message id),
    or (time, None) for another event at that time, which comes after all the Audience
    events of its time.
    """
    applied = segment_history.c
    waiting = segment_changes.c
    # A change waiting to be applied takes its segment's name as the history will.
    named = segment_changes.outerjoin(segments, segments.c.id == waiting.segment_id)
    found: list[Any] = []
    for table, name, source in (
        (segment_history, applied.segment_name, segment_history),
        (segment_changes, segments.c.name, named),
    ):
        columns = table.c
        query = (
            sa.select(*_event_columns(table, name))
            .select_from(source)
            .where(columns.profile_id == profile_id, columns.message_id.is_not(None))
        )
        if before is not None:
            at, message_id = before
            later = columns.at < at
            if message_id is not None:
                later = sa.or_(later, sa.and_(columns.at == at, columns.message_id < message_id))
            query = query.where(later)
        query = query.order_by(columns.at.desc(), columns.message_id.desc()).limit(limit)
        found += conn.execute(query).all()
    found.sort(key=lambda row: (row[0], row[1]), reverse=True)
    return [(row[0], row[1], audience_event(*row)) for row in found[:limit]]
