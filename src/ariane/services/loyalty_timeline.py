"""Loyalty movements on members' timelines: a handler of the bus.

Each movement records what it did in its own transaction (`PointsEarned`,
`PointsSpent`, `RewardRedeemed`, `CouponBurned`, `TierChanged`, ...: `domain.events`);
once committed, this handler stores it as a track event of the member's profile, through
ingestion like any other event, so that segments and computed traits see it; but
addressed to the profile by id: the member is known, and their events are not sent
through identity resolution again. The event names them as Segment's spec wants, by a
user id their profile holds, else an anonymous id, for those who read it elsewhere
(destinations).

A movement's event is stored once: its message id is the movement's, and ingestion keeps
one event per message id and source, however often the bus gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ariane.domain.events import OnTimeline
from ariane.services.ingest import Envelope, IngestService
from ariane.storage import profiles as profile_store
from ariane.storage.bus import Entry
from ariane.storage.database import Database


class LoyaltyTimeline:
    def __init__(self, db: Database, clock: Callable[[], datetime], ingest: IngestService) -> None:
        self.db = db
        self.clock = clock
        self.ingest = ingest

    def handle(self, entries: Sequence[Entry]) -> None:
        movements = [entry.event for entry in entries if isinstance(entry.event, OnTimeline)]
        if not movements:
            return
        with self.db.read() as conn:
            members = profile_store.resolve_profile_ids(
                conn, (event.profile_id for event in movements if event.profile_id)
            )
            held = profile_store.identifiers_of(
                conn, {m for m in members.values() if m}, per_type=1
            )
        # An erased member's events went with them; a merged one's go to the survivor.
        by_source: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for event in movements:
            member = members.get(event.profile_id) if event.profile_id else None
            if member is not None:
                message = named(event.track(), held.get(member, {}))
                by_source.setdefault(event.source, []).append((member, message))
        for source, kept in by_source.items():
            self.ingest.ingest(
                source,
                [message for _, message in kept],
                Envelope(received_at=self.clock()),
                profiles=[member for member, _ in kept],
            )


def named(message: dict[str, Any], identifiers: Mapping[str, list[str]]) -> dict[str, Any]:
    """The message with the member's user id, else their anonymous id, if they hold one."""
    if identifiers.get("user_id"):
        return {**message, "userId": identifiers["user_id"][0]}
    if identifiers.get("anonymous_id"):
        return {**message, "anonymousId": identifiers["anonymous_id"][0]}
    return message
