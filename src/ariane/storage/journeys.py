"""Journeys as declared and versioned, the people in them (enrollments), what each step
did, and the conversions they count."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage.database import dialect_of, insert_new
from ariane.storage.dialect import chunked
from ariane.storage.tables import (
    enrollments,
    journey_conversions,
    journey_steps,
    journey_versions,
    journeys,
)

# Statuses of an enrollment still in its journey.
OPEN = ("active", "waiting")
# People a statement asks about at most: SQLite takes up to 32,766 parameters.
_CHUNK = 400

# --- definitions ------------------------------------------------------------------------


def save(
    conn: Connection, ident: str, definition: Mapping[str, Any], enabled: bool, now: datetime
) -> tuple[str, int]:
    """Create, or make a new version when the definition changed; (change, version)."""
    found = conn.execute(
        sa.select(journeys.c.version, journeys.c.enabled)
        .where(journeys.c.id == ident)
        .with_for_update()
    ).first()
    if found is not None:
        current = definition_of(conn, ident, found.version)
        if current == definition:
            if found.enabled != enabled:
                conn.execute(
                    journeys.update()
                    .where(journeys.c.id == ident)
                    .values(enabled=enabled, updated_at=now)
                )
                return "updated", found.version
            return "unchanged", found.version
    version = 1 if found is None else found.version + 1
    conn.execute(
        journey_versions.insert().values(
            journey_id=ident, version=version, definition=dict(definition), created_at=now
        )
    )
    if found is None:
        conn.execute(
            journeys.insert().values(
                id=ident, version=1, enabled=enabled, created_at=now, updated_at=now
            )
        )
        return "created", 1
    conn.execute(
        journeys.update()
        .where(journeys.c.id == ident)
        .values(version=version, enabled=enabled, updated_at=now)
    )
    return "updated", version


def stamp(conn: Connection) -> tuple[Any, ...]:
    """What changes whenever a journey is declared, changed, turned on or off, or
    deleted: a cheap look at whether the journeys kept in memory are still those."""
    found = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.sum(journeys.c.version),
            sa.func.sum(sa.case((journeys.c.enabled, 1), else_=0)),
            sa.func.max(journeys.c.updated_at),
        )
    ).one()
    return tuple(found)


def definition_of(conn: Connection, ident: str, version: int) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(journey_versions.c.definition).where(
            journey_versions.c.journey_id == ident, journey_versions.c.version == version
        )
    ).first()
    return None if row is None else dict(row.definition)


def every(conn: Connection) -> list[dict[str, Any]]:
    """Each journey with its current version's definition."""
    query = (
        sa.select(journeys, journey_versions.c.definition)
        .join(
            journey_versions,
            sa.and_(
                journey_versions.c.journey_id == journeys.c.id,
                journey_versions.c.version == journeys.c.version,
            ),
        )
        .order_by(journeys.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def versions_in_use(conn: Connection) -> list[tuple[str, int, dict[str, Any]]]:
    """Every version some open enrollment is on, or that is current: (id, version,
    definition)."""
    used = sa.select(enrollments.c.journey_id, enrollments.c.version).where(
        enrollments.c.status.in_(OPEN)
    )
    current = sa.select(journeys.c.id, journeys.c.version)
    pairs = sa.union(used, current).subquery()
    query = sa.select(
        journey_versions.c.journey_id, journey_versions.c.version, journey_versions.c.definition
    ).join(
        pairs,
        sa.and_(
            journey_versions.c.journey_id == pairs.c[0],
            journey_versions.c.version == pairs.c[1],
        ),
    )
    return [(row[0], row[1], dict(row[2])) for row in conn.execute(query)]


def delete(conn: Connection, ident: str) -> bool:
    """The journey goes; its enrollments end, its history stays."""
    done = conn.execute(journeys.delete().where(journeys.c.id == ident)).rowcount
    return bool(done)


# --- enrollments ------------------------------------------------------------------------


def enroll(conn: Connection, row: Mapping[str, Any]) -> int | None:
    """A new enrollment's id; None when the person is in already for this key, or was
    entered by the same cause before."""
    made: int | None = insert_new(conn, enrollments, row)
    return made


def last_entry(
    conn: Connection, journey: str, profile_id: str, key: str
) -> tuple[datetime | None, bool]:
    """When the person last entered the journey with this key, and whether they are in."""
    row = conn.execute(
        sa.select(enrollments.c.entered_at, enrollments.c.status)
        .where(
            enrollments.c.journey_id == journey,
            enrollments.c.profile_id == profile_id,
            enrollments.c.entry_key == key,
        )
        .order_by(enrollments.c.entered_at.desc(), enrollments.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None, False
    return row.entered_at, row.status in OPEN


def last_entries(
    conn: Connection, journeys: Collection[str], profile_ids: Collection[str]
) -> dict[tuple[str, str, str], tuple[datetime, bool]]:
    """`last_entry` of these people in these journeys, by (journey, person, key), for
    every key they entered with."""
    found: dict[tuple[str, str, str], tuple[datetime, bool, int]] = {}
    if not journeys or not profile_ids:
        return {}
    c = enrollments.c
    for chunk in chunked(sorted(profile_ids), _CHUNK):
        query = sa.select(
            c.journey_id, c.profile_id, c.entry_key, c.entered_at, c.status, c.id
        ).where(c.profile_id.in_(chunk), c.journey_id.in_(sorted(journeys)))
        for row in conn.execute(query):
            key = (row.journey_id, row.profile_id, row.entry_key)
            known = found.get(key)
            if known is None or (row.entered_at, row.id) > (known[0], known[2]):
                found[key] = (row.entered_at, row.status in OPEN, row.id)
    return {key: (at, active) for key, (at, active, _) in found.items()}


def claim_due(conn: Connection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Open enrollments whose time has come, locked; on PostgreSQL rows another process
    holds are skipped, so that each is moved on by one process, once."""
    dialect = dialect_of(conn)
    query = dialect.claim_rows(
        sa.select(enrollments)
        .where(enrollments.c.due_at <= now, enrollments.c.status.in_(OPEN))
        .order_by(enrollments.c.due_at)
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def lock(conn: Connection, ids: Collection[int]) -> list[dict[str, Any]]:
    """Open enrollments by id, locked, in id order."""
    if not ids:
        return []
    query = (
        sa.select(enrollments)
        .where(enrollments.c.id.in_(sorted(ids)), enrollments.c.status.in_(OPEN))
        .order_by(enrollments.c.id)
        .with_for_update()
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def open_of(
    conn: Connection, profile_ids: Collection[str], journey_ids: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """The open enrollments of these people (in these journeys), locked, in id order."""
    if not profile_ids:
        return []
    query = sa.select(enrollments).where(
        enrollments.c.profile_id.in_(sorted(profile_ids)), enrollments.c.status.in_(OPEN)
    )
    if journey_ids is not None:
        query = query.where(enrollments.c.journey_id.in_(sorted(journey_ids)))
    return [
        dict(row._mapping)
        for row in conn.execute(query.order_by(enrollments.c.id).with_for_update())
    ]


def waiting_for(
    conn: Connection, profile_ids: Collection[str], waits: Collection[str]
) -> list[dict[str, Any]]:
    """The enrollments of these people waiting for one of `waits` ("event:<name>",
    "segment:<name>"), locked, in id order."""
    if not profile_ids or not waits:
        return []
    query = (
        sa.select(enrollments)
        .where(
            enrollments.c.profile_id.in_(sorted(profile_ids)),
            enrollments.c.waiting_for.in_(sorted(waits)),
            enrollments.c.status == "waiting",
        )
        .order_by(enrollments.c.id)
        .with_for_update()
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def update(conn: Connection, ident: int, values: Mapping[str, Any]) -> None:
    conn.execute(enrollments.update().where(enrollments.c.id == ident).values(**values))


def update_each(conn: Connection, changes: Mapping[int, Mapping[str, Any]]) -> None:
    """Set the values of each enrollment (by id): one statement run for every enrollment
    that sets the same columns."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for ident, values in changes.items():
        by_columns.setdefault(tuple(sorted(values)), []).append({"b_id": ident, **values})
    for parameters in by_columns.values():
        conn.execute(_UPDATE_EACH, parameters)


_UPDATE_EACH = enrollments.update().where(enrollments.c.id == sa.bindparam("b_id"))


def get(conn: Connection, ident: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(enrollments).where(enrollments.c.id == ident)).first()
    return None if row is None else dict(row._mapping)


def of_profile(conn: Connection, profile_id: str, limit: int = 100) -> list[dict[str, Any]]:
    query = (
        sa.select(enrollments)
        .where(enrollments.c.profile_id == profile_id)
        .order_by(enrollments.c.id.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def at_step(
    conn: Connection, journey: str, step: str | None, *, after: int, limit: int
) -> list[dict[str, Any]]:
    """Open enrollments of the journey (at `step`), by id, after `after`."""
    query = sa.select(enrollments).where(
        enrollments.c.journey_id == journey,
        enrollments.c.status.in_(OPEN),
        enrollments.c.id > after,
    )
    if step is not None:
        query = query.where(enrollments.c.step == step)
    return [
        dict(row._mapping) for row in conn.execute(query.order_by(enrollments.c.id).limit(limit))
    ]


def open_counts(conn: Connection, journey: str) -> dict[tuple[str, str], int]:
    """Open enrollments by (step, status)."""
    query = (
        sa.select(enrollments.c.step, enrollments.c.status, sa.func.count())
        .where(enrollments.c.journey_id == journey, enrollments.c.status.in_(OPEN))
        .group_by(enrollments.c.step, enrollments.c.status)
    )
    return {(row[0], row[1]): row[2] for row in conn.execute(query)}


def ended_counts(conn: Connection, journey: str) -> dict[str, int]:
    query = (
        sa.select(enrollments.c.status, sa.func.count())
        .where(enrollments.c.journey_id == journey, enrollments.c.status.not_in(OPEN))
        .group_by(enrollments.c.status)
    )
    return {row[0]: row[1] for row in conn.execute(query)}


def arm_counts(conn: Connection, journey: str) -> dict[str, int]:
    query = (
        sa.select(enrollments.c.arm, sa.func.count())
        .where(enrollments.c.journey_id == journey)
        .group_by(enrollments.c.arm)
    )
    return {row[0]: row[1] for row in conn.execute(query)}


# --- merges -----------------------------------------------------------------------------


def merge_enrollments(conn: Connection, absorbed: str, survivor: str, now: datetime) -> None:
    """Before the absorbed profile's enrollments go to the survivor (`record_merge`):
    one in a journey, under an entry key, in which the survivor is too ends (the
    survivor's own goes on: one person is not sent a journey twice); the others are
    the survivor's from now on, under its active key."""
    rows = conn.execute(
        sa.select(
            enrollments.c.id,
            enrollments.c.journey_id,
            enrollments.c.version,
            enrollments.c.step,
            enrollments.c.entry_key,
        ).where(enrollments.c.profile_id == absorbed, enrollments.c.active_key.is_not(None))
    ).all()
    if not rows:
        return
    keys = {row.id: active_key(row.journey_id, survivor, row.entry_key) for row in rows}
    taken = set(
        conn.execute(
            sa.select(enrollments.c.active_key).where(
                enrollments.c.active_key.in_(sorted(set(keys.values())))
            )
        ).scalars()
    )
    reason = f"merged into {survivor}, already in this journey"
    ended = [row for row in rows if keys[row.id] in taken]
    gone = {row.id for row in ended}
    update_each(
        conn,
        {
            row.id: (
                {"status": "exited", "due_at": None, "waiting_for": None, "active_key": None,
                 "ended_at": now, "end_reason": reason, "updated_at": now}
                if row.id in gone
                else {"active_key": keys[row.id], "updated_at": now}
            )
            for row in rows
        },
    )  # fmt: skip
    log_steps(
        conn,
        [
            {"enrollment_id": row.id, "journey_id": row.journey_id, "version": row.version,
             "profile_id": absorbed, "step": row.step, "outcome": "exited", "reason": reason,
             "at": now}
            for row in ended
        ],
    )  # fmt: skip


def active_key(journey: str, profile_id: str, entry_key: str) -> str:
    """What makes an enrollment the only open one of its person in its journey under its
    entry key (unique while it is open)."""
    return f"{journey}|{profile_id}|{entry_key}"


# --- what the steps did -----------------------------------------------------------------


def log_steps(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(journey_steps.insert(), [dict(row) for row in rows])


def step_counts(conn: Connection, journey: str) -> dict[tuple[str, str], int]:
    """What the steps did, by (step, outcome)."""
    query = (
        sa.select(journey_steps.c.step, journey_steps.c.outcome, sa.func.count())
        .where(journey_steps.c.journey_id == journey)
        .group_by(journey_steps.c.step, journey_steps.c.outcome)
    )
    return {(row[0], row[1]): row[2] for row in conn.execute(query)}


def skip_reasons(conn: Connection, journey: str) -> dict[tuple[str, str], int]:
    query = (
        sa.select(journey_steps.c.step, journey_steps.c.reason, sa.func.count())
        .where(journey_steps.c.journey_id == journey, journey_steps.c.outcome == "skipped")
        .group_by(journey_steps.c.step, journey_steps.c.reason)
    )
    return {(row[0], row[1] or ""): row[2] for row in conn.execute(query)}


# --- conversions ------------------------------------------------------------------------


def convert(conn: Connection, row: Mapping[str, Any]) -> bool:
    """Record the enrollment's conversion, unless it has one; whether it was recorded."""
    dialect = dialect_of(conn)
    return bool(dialect.insert_ignoring_conflicts(conn, journey_conversions, [row]))


def converting(
    conn: Connection, profile_ids: Collection[str], journey_ids: Collection[str], since: datetime
) -> list[dict[str, Any]]:
    """Enrollments of these people in these journeys entered since `since` (the widest
    goal window) and not converted yet."""
    if not profile_ids or not journey_ids:
        return []
    done = sa.select(journey_conversions.c.enrollment_id)
    query = (
        sa.select(enrollments)
        .where(
            enrollments.c.profile_id.in_(sorted(profile_ids)),
            enrollments.c.journey_id.in_(sorted(journey_ids)),
            enrollments.c.entered_at >= since,
            enrollments.c.id.not_in(done),
        )
        .order_by(enrollments.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def conversion_counts(conn: Connection, journey: str) -> dict[str, tuple[int, float]]:
    query = (
        sa.select(
            journey_conversions.c.arm,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(journey_conversions.c.revenue), 0.0),
        )
        .where(journey_conversions.c.journey_id == journey)
        .group_by(journey_conversions.c.arm)
    )
    return {row[0]: (row[1], float(row[2])) for row in conn.execute(query)}
