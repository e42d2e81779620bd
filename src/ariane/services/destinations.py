"""Destinations: declared as code or through the API, each fed by handlers of the bus.

Each destination is two handlers: one reads the events log (`destination:ID`), the
other the outbox's audience changes (`destination:ID:audiences`), each from its own
position, so that a destination that is down holds up nothing else; what it missed is
sent when it comes back, in order. A destination that starts `now` starts after what
the logs hold when it is first run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ariane.destinations import Outgoing, Sender
from ariane.domain.destinations import (
    Destination,
    Person,
    audience_message,
    delivery_id,
    event_message,
    parse_destination,
    shown,
)
from ariane.domain.errors import NotFound
from ariane.domain.events import AudienceChange, SegmentEntered, SegmentExited, StoredEvent
from ariane.domain.predicates import InvalidDefinition
from ariane.services.bus import Handler, Partial
from ariane.storage import bus as bus_store
from ariane.storage import destinations as store
from ariane.storage import profiles as profile_store
from ariane.storage.bus import Entry
from ariane.storage.database import Database

log = logging.getLogger(__name__)

AUDIENCE_KINDS = frozenset({SegmentEntered.kind, SegmentExited.kind})
# How long the destinations read from the database are used before they are read again.
REFRESH_SECONDS = 1.0


def handler_names(ident: str) -> tuple[str, str]:
    return f"destination:{ident}", f"destination:{ident}:audiences"


class DestinationService:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], senders: Mapping[str, Sender]
    ) -> None:
        self.db = db
        self.clock = clock
        self.senders = senders
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Destination]] | None = None

    # --- as code --------------------------------------------------------------------------

    def apply(self, document: Any) -> list[dict[str, Any]]:
        """Create or update every destination of `document` ({"destinations": [...]}),
        all checked before any is saved."""
        items = document.get("destinations") if isinstance(document, Mapping) else document
        if not isinstance(items, list):
            raise InvalidDefinition("needs a list of destinations", field="destinations")
        with self.db.read() as conn:
            before = {row["id"]: row["definition"] for row in store.every(conn)}
        parsed = []
        for index, item in enumerate(items):
            ident = item.get("id") if isinstance(item, Mapping) else None
            parsed.append(parse_destination(item, f"destinations[{index}]", before.get(str(ident))))
        seen: set[str] = set()
        for index, found in enumerate(parsed):
            if found.id in seen:
                raise InvalidDefinition("is given twice", field=f"destinations[{index}].id")
            seen.add(found.id)
        return [self._save(found) for found in parsed]

    def put(self, ident: str, definition: Any) -> dict[str, Any]:
        if isinstance(definition, Mapping) and definition.get("id", ident) != ident:
            raise InvalidDefinition("differs from the id in the path", field="id")
        with self.db.read() as conn:
            before = store.get(conn, ident)
        body = {**definition, "id": ident} if isinstance(definition, Mapping) else definition
        found = parse_destination(body, "destination", before and before["definition"])
        return self._save(found)

    def _save(self, found: Destination) -> dict[str, Any]:
        now = self.clock()
        change, version = self.db.write(
            lambda conn: store.save(conn, found.id, found.type, found.definition, now)
        )
        self._cached = None
        log.info("destination %s %s (version %d)", found.id, change, version)
        return {"id": found.id, "change": change, "version": version}

    def delete(self, ident: str) -> None:
        def work(conn: Any) -> bool:
            bus_store.forget_positions(conn, handler_names(ident))
            return store.delete(conn, ident)

        if not self.db.write(work):
            raise NotFound(f"no destination {ident!r}", field="destination")
        self._cached = None

    def every(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = store.every(conn)
            stats = store.stats(conn)
            parked = bus_store.parked_counts(conn)
        return [self._shown(row, stats.get(row["id"]), parked) for row in rows]

    def get(self, ident: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = store.get(conn, ident)
            if row is None:
                raise NotFound(f"no destination {ident!r}", field="destination")
            stats = store.stats(conn).get(ident)
            parked = bus_store.parked_counts(conn)
            lag = self._lag(conn, ident)
        return {**self._shown(row, stats, parked), "lag_seconds": lag}

    def _shown(
        self, row: Mapping[str, Any], stats: Mapping[str, Any] | None, parked: Mapping[str, int]
    ) -> dict[str, Any]:
        names = handler_names(row["id"])
        counts = list(stats["latency"]) if stats else []
        return {
            "id": row["id"],
            "type": row["type"],
            "version": row["version"],
            "definition": shown(row["definition"]),
            "delivered": stats["delivered"] if stats else 0,
            "failed": stats["failed"] if stats else 0,
            "parked": sum(parked.get(name, 0) for name in names),
            "latency_p99_seconds": p99(counts),
            "last_delivered_at": stats["last_delivered_at"] if stats else None,
            "last_error": stats["last_error"] if stats else None,
            "last_error_at": stats["last_error_at"] if stats else None,
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def _lag(self, conn: Any, ident: str) -> float:
        """Seconds since the oldest event the destination has still to receive was
        received (0 when it has received everything)."""
        events_name, _ = handler_names(ident)
        position = bus_store.positions(conn, [events_name]).get(events_name)
        if position is None:
            return 0.0
        oldest = bus_store.oldest_after(conn, "events", position)
        return 0.0 if oldest is None else max(0.0, (self.clock() - oldest).total_seconds())

    def metrics(self) -> list[dict[str, Any]]:
        """What /metrics shows of every destination."""
        with self.db.read() as conn:
            rows = store.every(conn)
            stats = store.stats(conn)
            parked = bus_store.parked_counts(conn)
            lags = {row["id"]: self._lag(conn, row["id"]) for row in rows}
        return [
            {**self._shown(row, stats.get(row["id"]), parked), "lag_seconds": lags[row["id"]]}
            for row in rows
        ]

    # --- on the bus -----------------------------------------------------------------------

    def destinations(self) -> list[Destination]:
        """Those in force, read again at most every `REFRESH_SECONDS`."""
        with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached[0] < REFRESH_SECONDS:
                return cached[1]
        with self.db.read() as conn:
            rows = store.every(conn)
        found = []
        for row in rows:
            try:
                found.append(parse_destination(row["definition"]))
            except InvalidDefinition as error:
                log.error("destination %s cannot be used: %s", row["id"], error.message)
        with self._lock:
            self._cached = (time.monotonic(), found)
        return found

    def audience_segments(self) -> frozenset[str]:
        """The segments some enabled destination receives the entries or exits of."""
        return frozenset(name for d in self.destinations() if d.enabled for name in d.audiences)

    def handlers(self) -> list[Handler]:
        made = []
        for destination in self.destinations():
            if not destination.enabled or destination.type not in self.senders:
                continue
            events_name, audiences_name = handler_names(destination.id)
            from_head = destination.start == "now"
            if destination.events is not None:
                made.append(
                    Handler(
                        events_name,
                        "events",
                        self._sender_of_events(destination),
                        batch=100,
                        from_head=from_head,
                    )
                )
            if destination.audiences:
                made.append(
                    Handler(
                        audiences_name,
                        "outbox",
                        self._sender_of_changes(destination),
                        kinds=AUDIENCE_KINDS,
                        batch=100,
                        from_head=from_head,
                    )
                )
        return made

    def _sender_of_events(self, destination: Destination) -> Callable[[Sequence[Entry]], None]:
        wanted = destination.events

        def outgoing(entry: Entry) -> Outgoing | None:
            event = entry.event
            if not isinstance(event, StoredEvent) or wanted is None or not wanted.takes(event):
                return None
            return Outgoing(
                delivery_id(destination.id, event.event_id), event_message(event), event.received_at
            )

        return lambda entries: self._send(destination, entries, outgoing)

    def _sender_of_changes(self, destination: Destination) -> Callable[[Sequence[Entry]], None]:
        def send(entries: Sequence[Entry]) -> None:
            profile_ids = [
                entry.event.profile_id
                for entry in entries
                if isinstance(entry.event, AudienceChange) and entry.event.profile_id
            ]
            people = self._people(profile_ids)

            def outgoing(entry: Entry) -> Outgoing | None:
                change = entry.event
                if not isinstance(change, AudienceChange) or not destination.takes_change(change):
                    return None
                person = people.get(change.profile_id or "", Person())
                return Outgoing(
                    delivery_id(destination.id, change.event_id),
                    audience_message(change, person),
                    change.at,
                )

            self._send(destination, entries, outgoing)

        return send

    def _people(self, profile_ids: Sequence[str]) -> dict[str, Person]:
        if not profile_ids:
            return {}
        with self.db.read() as conn:
            held = profile_store.identifiers_of(conn, profile_ids, per_type=1)
        return {
            profile_id: Person(
                user_id=next(iter(ids.get("user_id", [])), None),
                anonymous_id=next(iter(ids.get("anonymous_id", [])), None),
                email=next(iter(ids.get("email", [])), None),
            )
            for profile_id, ids in held.items()
        }

    def _send(
        self,
        destination: Destination,
        entries: Sequence[Entry],
        outgoing: Callable[[Entry], Outgoing | None],
    ) -> None:
        """Send what the destination takes of `entries`; a failure part of the way says
        which entry it stopped at (`Partial`)."""
        messages: list[Outgoing] = []
        at: list[int] = []
        for index, entry in enumerate(entries):
            found = outgoing(entry)
            if found is not None:
                messages.append(found)
                at.append(index)
        if not messages:
            return
        try:
            self.senders[destination.type].send(destination, messages)
        except Partial as partial:
            self._delivered(destination, messages[: partial.done])
            self._failed(destination, partial.cause)
            raise Partial(at[partial.done], partial.cause) from None
        except Exception as error:
            self._failed(destination, error)
            raise
        self._delivered(destination, messages)

    def _delivered(self, destination: Destination, messages: Sequence[Outgoing]) -> None:
        now = self.clock()
        latencies = [max(0.0, (now - o.received_at).total_seconds()) for o in messages]
        self.db.write(lambda conn: store.record_deliveries(conn, destination.id, latencies, now))

    def _failed(self, destination: Destination, error: BaseException) -> None:
        now = self.clock()
        said = str(error) or type(error).__name__
        self.db.write(lambda conn: store.record_failure(conn, destination.id, said, now))


def p99(counts: Sequence[int]) -> float | None:
    """The upper bound of the latency bucket holding the 99th percentile delivery."""
    total = sum(counts)
    if not total:
        return None
    rank = 0.99 * total
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= rank:
            bounds = store.DELIVERY_BUCKETS
            return bounds[index] if index < len(bounds) else float("inf")
    return None
