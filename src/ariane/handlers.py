"""Who reacts to what: the bus's handler table, the map of everything that follows a
commit. Read `EVENT_HANDLERS` as: when this happens (left), these handlers react (right).

A handler reads the events log if it reacts to stored events, else the outbox for the
kinds it reacts to; the destinations, which react to both, run as two handlers each,
one per log, each with its own position. `jobs` is the work that time makes due rather
than a commit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

from ariane.bootstrap import Container
from ariane.domain import events as happened
from ariane.services.bus import Handler, Job
from ariane.services.messaging import CHANNEL_PREFIX
from ariane.storage import bus as bus_store

# What happened                     who reacts
EVENT_HANDLERS: dict[type, list[str]] = {
    happened.StoredEvent: ["earn_rules", "destinations", "journeys"],
    happened.SegmentEntered: ["destinations", "journeys"],
    happened.SegmentExited: ["destinations", "journeys"],
    happened.MessageQueued: ["channels"],
    **{kind: ["timeline"] for kind in happened.LOYALTY_EVENTS.values()},
    happened.SaleRecorded: ["timeline"],
    **{kind: ["timeline"] for kind in happened.MESSAGE_EVENTS.values()},
}

# How often the outbox is emptied of what every handler has read, in seconds.
GARBAGE_INTERVAL = 5.0


def _kinds(name: str) -> frozenset[str]:
    return frozenset(
        kind.__name__
        for kind, names in EVENT_HANDLERS.items()
        if name in names and kind is not happened.StoredEvent
    )


def handler_table(container: Container) -> Callable[[], Sequence[Handler]]:
    """The handlers now: the table's own, and one or two per destination in force."""
    table = [
        Handler("earn-rules", "events", container.earning.handle, asleep=container.earning.asleep),
        # Named when it carried loyalty alone: the name keeps its position.
        Handler(
            "loyalty-timeline",
            "outbox",
            container.loyalty_timeline.handle,
            kinds=_kinds("timeline"),
        ),
        Handler(
            "journeys",
            "events",
            container.journey_engine.on_events,
            asleep=container.journey_engine.asleep,
            wants=container.journey_engine.wants,
        ),
        Handler(
            "journeys:audiences",
            "outbox",
            container.journey_engine.on_audiences,
            kinds=_kinds("journeys"),
        ),
    ]

    def current() -> list[Handler]:
        return [*table, *container.destinations.handlers(), *container.messaging.handlers()]

    return current


def share(index: int, processes: int) -> Callable[[Handler], bool]:
    """Which handlers bus process `index` (from 0) of `processes` runs: the channels'
    hand-overs in processes 1 and up, each channel in one of them (by a stable hash of its
    name); every other handler in process 0, which also runs the jobs. A campaign's
    messages are then made due by the journeys' handler in one interpreter while they are
    rendered and handed over in another, each on a core of its own."""
    if processes <= 1:
        return lambda handler: True
    senders = processes - 1

    def runs(handler: Handler) -> bool:
        if not handler.name.startswith(CHANNEL_PREFIX):
            return index == 0
        return index == 1 + zlib.crc32(handler.name.encode()) % senders

    return runs


def jobs(container: Container) -> list[Job]:
    """What time makes due, for `services.bus.run_jobs`: segment timers, points to write
    off and tiers to review, and the outbox's clean-up."""
    settings = container.settings
    found = []
    if settings.bus_idle_interval > 0:
        found.append(Job("outbox-garbage", lambda: empty_outbox(container), GARBAGE_INTERVAL))
    if settings.segment_timer_interval > 0:
        apply_every = settings.segment_apply_interval
        found.append(
            Job(
                "segment-timers",
                lambda: fire_timers(container, apply_every),
                settings.segment_timer_interval,
            )
        )
    if settings.loyalty_review_interval > 0:
        found.append(
            Job(
                "loyalty-review",
                container.earning.write_off_and_review,
                settings.loyalty_review_interval,
            )
        )
    return found


def fire_timers(container: Container, apply_every: float) -> int:
    """The durable timers: segments' (time alone changes a membership), then journeys'
    (a scheduled entry, a delay that ran out, a wait that timed out, quiet hours that
    ended)."""
    fired = container.segments.fire_and_apply(apply_every)
    fired += container.journey_engine.run_schedules()
    while done := container.journey_engine.fire_due():
        fired += done
    return fired


def empty_outbox(container: Container) -> int:
    """Delete what every handler of the outbox has read (none if one has not started)."""
    db = container.db
    names = [handler.name for handler in container.bus.handlers() if handler.stream == "outbox"]
    with db.lookup() as conn:
        horizon = bus_store.horizon(conn)
    with db.read() as conn:
        known = bus_store.positions(conn, names)
        if len(known) < len(names):
            return 0
        head = bus_store.head(conn, "outbox", horizon)
        upto = min(known.values(), default=head)
    db.write(lambda conn: bus_store.collect_garbage(conn, upto))
    return 0
