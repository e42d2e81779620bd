"""A round of a loop that reads the outbox (the loyalty events to put on timelines, the
events earn rules are still to read): one process at a time takes a topic's oldest
messages, deals with them, and deletes those it dealt with.

One process at a time (`Database.alone`) rather than a claim written on each row:
claiming a message and then marking it sent were two updates of its row, most of what a
round wrote to PostgreSQL's log, and the log is what the requests' commits wait for. A
process that dies lets the topic go with its connection; the messages it had taken are
taken again, and dealing with one twice does nothing twice (ingestion stores an event
once per message id, an award's key makes it once).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ariane.storage import loyalty as store
from ariane.storage.database import Database


@dataclass(slots=True)
class Round:
    """The messages taken, (row id, profile id, message) in order; the round lists in
    `done` the row ids of those it dealt with."""

    messages: list[tuple[int, str, dict[str, Any]]]
    done: list[int] = field(default_factory=list)


@contextmanager
def taking(
    db: Database, topic: str, limit: int, now: datetime, hold_back: timedelta
) -> Iterator[Round]:
    """The oldest messages of `topic`, up to `limit`, for the block to deal with; none
    while another process is at it. When the block ends, those it listed in `done` are
    deleted, and the others (all of them, if it failed) are held back for `hold_back`
    before they are taken again, while the messages after them go on."""
    with db.alone(f"outbox-{topic}") as first:
        if not first:
            yield Round([])
            return
        with db.read() as conn:
            taken = Round(store.pending_events(conn, limit, now, topic))
        try:
            yield taken
        finally:
            if taken.messages:
                done = set(taken.done)
                held = [row_id for row_id, _, _ in taken.messages if row_id not in done]
                db.write(
                    lambda conn: store.settle_events(
                        conn, db.dialect, sorted(done), held, now + hold_back
                    )
                )
