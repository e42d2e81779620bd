"""Messages under their send keys, the in-app inbox, and web push subscriptions."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage.database import dialect_of, insert_new
from ariane.storage.dialect import chunked
from ariane.storage.tables import inbox, messages, push_subscriptions

# A message that counts towards a frequency cap: made due, whatever became of it since,
# unless it was skipped or failed before reaching the person.
COUNTED = ("queued", "sending", "sent", "unknown")
# People a statement asks about at most: SQLite takes up to 32,766 parameters.
_CHUNK = 400


def add(conn: Connection, row: Mapping[str, Any]) -> int | None:
    """The new message's id; None when its send key is taken (sent once)."""
    made: int | None = insert_new(conn, messages, row, ("send_key",))
    return made


def lock(conn: Connection, ids: Collection[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    query = (
        sa.select(messages)
        .where(messages.c.id.in_(sorted(ids)))
        .order_by(messages.c.id)
        .with_for_update()
    )
    return {row.id: dict(row._mapping) for row in conn.execute(query)}


def get(conn: Connection, ident: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(messages).where(messages.c.id == ident)).first()
    return None if row is None else dict(row._mapping)


def by_key(conn: Connection, send_key: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(messages).where(messages.c.send_key == send_key)).first()
    return None if row is None else dict(row._mapping)


# Run with a list of parameters, one a message: `b_id` names it, the others are columns.
_UPDATE_EACH = messages.update().where(messages.c.id == sa.bindparam("b_id"))


def update_each(conn: Connection, changes: Sequence[Mapping[str, Any]]) -> None:
    """Set the values of each message (`id` names it): one statement run for every
    message that sets the same columns."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        values = {name: value for name, value in change.items() if name != "id"}
        by_columns.setdefault(tuple(sorted(values)), []).append({"b_id": change["id"], **values})
    for parameters in by_columns.values():
        conn.execute(_UPDATE_EACH, parameters)


def recent(
    conn: Connection, profile_id: str, since: datetime, statuses: Collection[str] = COUNTED
) -> list[tuple[str, str, datetime]]:
    """(channel, category, made due at) of the person's messages made due since `since`
    whose status counts towards a cap."""
    query = sa.select(messages.c.channel, messages.c.category, messages.c.created_at).where(
        messages.c.profile_id == profile_id,
        messages.c.created_at >= since,
        messages.c.status.in_(sorted(statuses)),
    )
    return [(row[0], row[1], row[2]) for row in conn.execute(query)]


def of_profile(conn: Connection, profile_id: str, limit: int = 100) -> list[dict[str, Any]]:
    query = (
        sa.select(messages)
        .where(messages.c.profile_id == profile_id)
        .order_by(messages.c.id.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def of_journey(
    conn: Connection, journey: str, *, status: str | None, after: int, limit: int
) -> list[dict[str, Any]]:
    query = sa.select(messages).where(messages.c.journey_id == journey, messages.c.id > after)
    if status is not None:
        query = query.where(messages.c.status == status)
    return [dict(row._mapping) for row in conn.execute(query.order_by(messages.c.id).limit(limit))]


def status_counts(conn: Connection, journey: str) -> dict[tuple[str, str, str], int]:
    """Messages of a journey by (step, status, arm)."""
    query = (
        sa.select(messages.c.step, messages.c.status, messages.c.arm, sa.func.count())
        .where(messages.c.journey_id == journey)
        .group_by(messages.c.step, messages.c.status, messages.c.arm)
    )
    return {(row[0], row[1], row[2]): row[3] for row in conn.execute(query)}


# --- the in-app inbox -------------------------------------------------------------------


def put_in_inbox(conn: Connection, row: Mapping[str, Any]) -> int:
    """The inbox message's id, stored once per send key."""
    dialect = dialect_of(conn)
    dialect.insert_ignoring_conflicts(conn, inbox, [row])
    return int(
        conn.execute(sa.select(inbox.c.id).where(inbox.c.send_key == row["send_key"])).scalar_one()
    )


def inbox_of(
    conn: Connection, profile_ids: Collection[str], *, after: int, limit: int, dismissed: bool
) -> list[dict[str, Any]]:
    query = sa.select(inbox).where(inbox.c.profile_id.in_(sorted(profile_ids)), inbox.c.id > after)
    if not dismissed:
        query = query.where(inbox.c.dismissed_at.is_(None))
    return [dict(row._mapping) for row in conn.execute(query.order_by(inbox.c.id).limit(limit))]


def mark_inbox(
    conn: Connection, profile_ids: Collection[str], ident: int, column: str, now: datetime
) -> dict[str, Any] | None:
    """Set `read_at` or `dismissed_at` of one of the person's inbox messages (kept if
    set already); the message, or None if it is not theirs."""
    where = sa.and_(inbox.c.id == ident, inbox.c.profile_id.in_(sorted(profile_ids)))
    conn.execute(inbox.update().where(where, inbox.c[column].is_(None)).values({column: now}))
    row = conn.execute(sa.select(inbox).where(where)).first()
    return None if row is None else dict(row._mapping)


def newest_inbox_id(conn: Connection, profile_ids: Collection[str]) -> int:
    found = conn.execute(
        sa.select(sa.func.max(inbox.c.id)).where(inbox.c.profile_id.in_(sorted(profile_ids)))
    ).scalar()
    return int(found or 0)


# --- web push subscriptions -------------------------------------------------------------


def subscribe(conn: Connection, row: Mapping[str, Any]) -> None:
    """Store a subscription; an endpoint seen before moves to this person and keys."""
    dialect = dialect_of(conn)
    statement = dialect.insert_statement(push_subscriptions).values(**row)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["endpoint"],
            set_={"profile_id": row["profile_id"], "keys": row["keys"], "device": row["device"]},
        )
    )


def subscriptions_of(
    conn: Connection, profile_ids: Collection[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each person's subscriptions, oldest first (none for those without)."""
    found: dict[str, list[dict[str, Any]]] = {person: [] for person in profile_ids}
    c = push_subscriptions.c
    for chunk in chunked(sorted(found), _CHUNK):
        query = (
            sa.select(c.profile_id, c.endpoint, c["keys"])
            .where(c.profile_id.in_(chunk))
            .order_by(c.id)
        )
        for profile_id, endpoint, keys in conn.execute(query):
            found[profile_id].append({"endpoint": endpoint, "keys": keys})
    return found


def forget_subscriptions(conn: Connection, endpoints: Sequence[str]) -> None:
    if endpoints:
        conn.execute(
            push_subscriptions.delete().where(push_subscriptions.c.endpoint.in_(list(endpoints)))
        )
