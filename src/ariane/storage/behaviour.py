"""What profiles did in their first days: the counts behaviour discovery groups them by.

A count is the number of `track` events named E whose timestamp t satisfies
`first_seen <= t < first_seen + window`, for a live profile. Events Ariane records itself
(source `ariane`) are not behaviour. Adding an interval to a column is written differently
on each database, so the events are read with their profile's first_seen and counted here;
they are streamed, and only the counts stay in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage.tables import INTERNAL_SOURCE, events, profiles

# Rows fetched from the database at a time.
_BATCH = 5000


def _behaviour_events() -> sa.ColumnElement[bool]:
    return sa.and_(events.c.type == "track", events.c.source_id != INTERNAL_SOURCE)


def _live() -> sa.ColumnElement[bool]:
    return sa.and_(profiles.c.merged_into.is_(None), profiles.c.first_seen.is_not(None))


def most_shared_events(conn: Connection, limit: int) -> list[str]:
    """The names of the `limit` track events sent by the most live profiles."""
    reach = sa.func.count(sa.distinct(events.c.profile_id))
    query = (
        sa.select(events.c.event)
        .select_from(events.join(profiles, profiles.c.id == events.c.profile_id))
        .where(_behaviour_events(), events.c.event.is_not(None), _live())
        .group_by(events.c.event)
        .order_by(reach.desc(), events.c.event)
        .limit(limit)
    )
    return [str(name) for name in conn.execute(query).scalars()]


def first_days_counts(
    conn: Connection, features: Sequence[tuple[str, timedelta]]
) -> dict[str, list[int]]:
    """For each live profile with a first_seen, in id order, one count per (event name,
    window) feature, in the order of `features`; a profile that sent none counts zeros.

    Read inside `Database.read()`, so that both queries see the same profiles.
    """
    counts: dict[str, list[int]] = {}
    for profile_id in conn.execute(
        sa.select(profiles.c.id).where(_live()).order_by(profiles.c.id),
        execution_options={"yield_per": _BATCH},
    ).scalars():
        counts[profile_id] = [0] * len(features)
    windows: dict[str, list[tuple[int, timedelta]]] = {}
    for column, (event, window) in enumerate(features):
        windows.setdefault(event, []).append((column, window))
    if not windows:
        return counts

    query = (
        sa.select(events.c.profile_id, events.c.event, events.c.timestamp, profiles.c.first_seen)
        .select_from(events.join(profiles, profiles.c.id == events.c.profile_id))
        .where(_behaviour_events(), events.c.event.in_(sorted(windows)), _live())
    )
    for profile_id, event, timestamp, first_seen in conn.execute(
        query, execution_options={"yield_per": _BATCH}
    ):
        since = timestamp - first_seen
        if since < timedelta(0):
            continue
        # Both queries read one snapshot (`Database.read`): every profile here was listed.
        row = counts[profile_id]
        for column, window in windows[event]:
            if since < window:
                row[column] += 1
    return counts
