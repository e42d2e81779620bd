"""Segments, computed traits, memberships, their history and the outbox rows."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.clock import iso
from ariane.domain.predicates import micros
from ariane.domain.segments import Transition
from ariane.storage.database import Dialect
from ariane.storage.tables import (
    INTERNAL_SOURCE,
    catalogue_version,
    computed_traits,
    events,
    outbox,
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


def bump_version(conn: Connection, dialect: Dialect) -> int:
    """Take the catalogue alone: a change of definitions waits for the writers that hold
    it, and they wait for the change."""
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


def _audience_event(transition: Transition, cause: str, stamp: str, ids: str) -> dict[str, Any]:
    """The event a transition puts on the timeline and in the outbox, in Segment's shape.

    Its message id starts with the time (`ids`, see `transition_rows`), then 128 random
    bits, which keep it unique (unique, not secret: the fast generator is enough, as
    for profile ids).
    """
    name = "Audience Entered" if transition.entered else "Audience Exited"
    return {
        "type": "track",
        "event": name,
        "messageId": f"{ids}{random.getrandbits(128):032x}",
        "timestamp": stamp,
        "properties": {
            "audience_id": transition.segment.id,
            "audience_name": transition.segment.name,
            "cause": cause,
        },
        "context": {"library": {"name": "ariane"}},
        "ariane_profile_id": transition.profile_id,
    }


# The columns of what a transition writes, in the order of `TransitionRows`.
_CHANGE_COLUMNS = ("segment_id", "profile_id", "change", "cause", "at", "message_id")
_EVENT_COLUMNS = (
    "source_id",
    "message_id",
    "profile_id",
    "type",
    "event",
    "timestamp",
    "received_at",
    "payload",
)


@dataclass(frozen=True, slots=True)
class TransitionRows:
    """What `record_transitions` writes for transitions at `at` of one `cause`, in the
    driver's form: the changes (applied to memberships and their history, and their
    messages put in the outbox, by `catch_up`) and the timeline events. Built before a
    write transaction where that is known, so that the writer holding it only writes."""

    at: datetime
    cause: str
    changes: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]


def transition_rows(
    dialect: Dialect, transitions: Sequence[Transition], now: datetime, cause: str
) -> TransitionRows:
    at, stamp = dialect.datetime_param(now), iso(now)
    # Message ids start with the time, in hexadecimal microseconds: the ids a batch writes
    # fall side by side in the unique indexes of events and outbox, rather than one page
    # each at random.
    ids = f"audience-{micros(now):014x}-"
    changes, timeline = [], []
    for t in transitions:
        change = "entered" if t.entered else "exited"
        payload = _audience_event(t, cause, stamp, ids)
        message_id = payload["messageId"]
        changes.append((t.segment.id, t.profile_id, change, cause, at, message_id))
        timeline.append(
            (
                INTERNAL_SOURCE,
                message_id,
                t.profile_id,
                "track",
                payload["event"],
                at,
                at,
                dialect.json_param(payload),
            )
        )
    return TransitionRows(now, cause, changes, timeline)


def record_transitions(conn: Connection, dialect: Dialect, rows: TransitionRows) -> None:
    """Write `transition_rows`, through `Dialect.insert_bulk_driver_rows`: a batch of new
    people can enter hundreds of segments at once."""
    dialect.insert_bulk_driver_rows(conn, segment_changes, _CHANGE_COLUMNS, rows.changes)
    dialect.insert_bulk_driver_rows(conn, events, _EVENT_COLUMNS, rows.events)


def catch_up(conn: Connection, dialect: Dialect, profile_ids: Collection[str] | None = None) -> int:
    """Apply the recorded changes (of `profile_ids` only, if given) to memberships and
    their history, and put their messages in the outbox; how many there were.

    One transaction at a time (`Dialect.hold_projection`), in the order they were
    recorded: the changes of one person are recorded under the lock of their profile, so
    those a transaction sees come in the order they were decided. For each person and
    segment the last change decides the membership. A round ends at the last change
    recorded when it began; rows move between tables in SQL, picked by id: on PostgreSQL
    a row with a smaller id may commit later, unseen until the next round.
    """
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
        _apply_changes(conn, dialect, rows)
        applied += len(rows)
        after = rows[-1][0]


def _apply_changes(
    conn: Connection, dialect: Dialect, rows: Sequence[tuple[int, str, str, str]]
) -> None:
    """`rows` of `segment_changes` (id, segment, profile, change), in id order, into the
    history and the outbox, then the memberships."""
    columns = segment_changes.c
    ids = [row[0] for row in rows]
    picked = dialect.among(columns.id, ids)
    history = sa.select(
        columns.segment_id, columns.profile_id, columns.change, columns.cause, columns.at
    )
    conn.execute(
        segment_history.insert().from_select(
            ["segment_id", "profile_id", "change", "cause", "at"],
            history.where(picked).order_by(columns.id),
        )
    )
    # The message is the change's timeline event: named, not copied. Written here, a
    # round at a time, the outbox's indexes take a page where a batch at a time they
    # took one for every batch.
    queued = sa.select(
        sa.literal("audience"), columns.message_id, columns.profile_id, sa.null(), columns.at
    )
    conn.execute(
        outbox.insert().from_select(
            ["topic", "message_id", "profile_id", "payload", "created_at"],
            queued.where(picked, columns.message_id.is_not(None)).order_by(columns.id),
        )
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
