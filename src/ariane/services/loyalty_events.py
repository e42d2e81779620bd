"""Loyalty movements on members' timelines: each movement queues its event in the outbox
in its own transaction (`Points Earned`, `Points Spent`, `Reward Redeemed`,
`Coupon Burned`, `Coupon Burn Rolled Back`); once committed, `publish` sends the events
through ingestion like any other, so that segments and computed traits see them.

An event is sent at least once and stored once: its message id is fixed by the movement,
and ingestion keeps one event per message id and source. One process at a time sends
them (`services.outbox`), and deletes them from the outbox once sent; one that dies
before leaves them to the next.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ariane.domain.loyalty import addressed
from ariane.services.ingest import Envelope, IngestService
from ariane.services.outbox import taking
from ariane.storage import loyalty as store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Database
from ariane.storage.tables import LOYALTY_SOURCE

log = logging.getLogger(__name__)

# How long events that could not be sent wait before they are tried again.
HOLD_BACK = timedelta(seconds=60)


class LoyaltyEvents:
    def __init__(self, db: Database, clock: Callable[[], datetime], ingest: IngestService) -> None:
        self.db = db
        self.clock = clock
        self.ingest = ingest

    def publish(self, limit: int = 500) -> int:
        """Send the oldest events not yet sent, up to `limit`; how many there were."""
        with taking(self.db, store.EVENT_TOPIC, limit, self.clock(), HOLD_BACK) as taken:
            if not taken.messages:
                return 0
            with self.db.read() as conn:
                members = profile_store.resolve_profile_ids(
                    conn, (queued for _, queued, _ in taken.messages)
                )
                held = store.identifiers_of(conn, [m for m in set(members.values()) if m])
            messages = [
                addressed(message, member, held.get(member, []))
                for _, queued, message in taken.messages
                # An erased member's events went with them; nothing is left to send.
                if (member := members[queued]) is not None
            ]
            if messages:
                self.ingest.ingest(LOYALTY_SOURCE, messages, Envelope(received_at=self.clock()))
            taken.done.extend(row_id for row_id, _, _ in taken.messages)
        return len(taken.messages)

    def run(self, stop: threading.Event, interval: float) -> None:
        """Publish until `stop` is set, looking again every `interval` seconds."""
        while not stop.is_set():
            try:
                while self.publish() and not stop.is_set():
                    pass
            except Exception:
                log.exception("loyalty events: a round failed; retrying")
            stop.wait(interval)
