"""Loyalty movements on members' timelines: each movement queues its event in the outbox
in its own transaction (`Points Earned`, `Points Spent`, `Reward Redeemed`,
`Coupon Burned`, `Coupon Burn Rolled Back`); once committed, `publish` sends the events
through ingestion like any other, so that segments and computed traits see them.

An event is sent at least once and stored once: its message id is fixed by the movement,
and ingestion keeps one event per message id and source. Processes claim what they send,
so that each event is sent by one of them, unless it dies before marking it sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ariane.domain.loyalty import addressed
from ariane.services.ingest import Envelope, IngestService
from ariane.storage import loyalty as store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Database
from ariane.storage.tables import LOYALTY_SOURCE

log = logging.getLogger(__name__)

# How long a process has to send the events it claimed before another may take them.
CLAIM = timedelta(seconds=60)


class LoyaltyEvents:
    def __init__(self, db: Database, clock: Callable[[], datetime], ingest: IngestService) -> None:
        self.db = db
        self.clock = clock
        self.ingest = ingest

    def publish(self, limit: int = 500) -> int:
        """Send the oldest events not yet sent, up to `limit`; how many there were."""
        now = self.clock()
        pending = self.db.write(
            lambda conn: store.claim_events(conn, self.db.dialect, limit, now, now + CLAIM)
        )
        if not pending:
            return 0
        with self.db.read() as conn:
            members = {
                queued: profile_store.resolve_profile_id(conn, queued)
                for queued in {profile_id for _, profile_id, _ in pending}
            }
            held = store.identifiers_of(conn, [m for m in set(members.values()) if m])
        messages = [
            addressed(message, member, held.get(member, []))
            for _, queued, message in pending
            # An erased member's events went with them; nothing is left to send.
            if (member := members[queued]) is not None
        ]
        if messages:
            self.ingest.ingest(LOYALTY_SOURCE, messages, Envelope(received_at=self.clock()))
        sent = [row_id for row_id, _, _ in pending]
        self.db.write(lambda conn: store.mark_sent(conn, sent, self.clock()))
        return len(sent)

    def run(self, stop: threading.Event, interval: float) -> None:
        """Publish until `stop` is set, looking again every `interval` seconds."""
        while not stop.is_set():
            try:
                while self.publish() and not stop.is_set():
                    pass
            except Exception:
                log.exception("loyalty events: a round failed; retrying")
            stop.wait(interval)
