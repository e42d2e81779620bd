"""Destinations as declared, and what their deliveries did."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage import definitions
from ariane.storage.tables import destination_stats, destinations

# Upper bounds, in seconds from an event's receipt to its delivery, of the latency
# buckets each destination counts (and one bucket past the last).
DELIVERY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip


def get(conn: Connection, ident: str) -> dict[str, Any] | None:
    return definitions.get(conn, destinations, ident)


def every(conn: Connection) -> list[dict[str, Any]]:
    return definitions.every(conn, destinations)


def versions(conn: Connection) -> dict[str, int]:
    rows = conn.execute(sa.select(destinations.c.id, destinations.c.version))
    return {row.id: row.version for row in rows}


def save(
    conn: Connection, ident: str, kind: str, definition: Mapping[str, Any], now: datetime
) -> tuple[str, int]:
    """Create or replace; ("created" | "updated" | "unchanged", version)."""
    return definitions.save(conn, destinations, ident, definition, now, type=kind)


def delete(conn: Connection, ident: str) -> bool:
    conn.execute(destination_stats.delete().where(destination_stats.c.destination == ident))
    return definitions.delete(conn, destinations, ident)


# --- what deliveries did ----------------------------------------------------------------


def record_deliveries(
    conn: Connection, ident: str, latencies: Sequence[float], now: datetime
) -> None:
    counts = [0] * (len(DELIVERY_BUCKETS) + 1)
    for seconds in latencies:
        counts[bisect.bisect_left(DELIVERY_BUCKETS, seconds)] += 1
    row = _stats(conn, ident)
    if row is None:
        conn.execute(
            destination_stats.insert().values(
                destination=ident,
                delivered=len(latencies),
                failed=0,
                latency=counts,
                last_delivered_at=now,
            )
        )
        return
    before = list(row.latency)
    conn.execute(
        destination_stats.update()
        .where(destination_stats.c.destination == ident)
        .values(
            delivered=row.delivered + len(latencies),
            latency=[a + b for a, b in zip(before, counts, strict=True)],
            last_delivered_at=now,
        )
    )


def record_failure(conn: Connection, ident: str, error: str, now: datetime) -> None:
    row = _stats(conn, ident)
    if row is None:
        conn.execute(
            destination_stats.insert().values(
                destination=ident,
                delivered=0,
                failed=1,
                latency=[0] * (len(DELIVERY_BUCKETS) + 1),
                last_error=error[:2000],
                last_error_at=now,
            )
        )
        return
    conn.execute(
        destination_stats.update()
        .where(destination_stats.c.destination == ident)
        .values(failed=row.failed + 1, last_error=error[:2000], last_error_at=now)
    )


def stats(conn: Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(sa.select(destination_stats))
    return {row.destination: dict(row._mapping) for row in rows}


def _stats(conn: Connection, ident: str) -> Any:
    return conn.execute(
        sa.select(destination_stats)
        .where(destination_stats.c.destination == ident)
        .with_for_update()
    ).first()
