"""Tiers on both databases: promoted the moment points earned reach a level, demoted by
the loop once points leave the window (or a grace period ends), each change a
`Tier Changed` event on the timeline; spending points does not lower a tier."""

from __future__ import annotations

import uuid
from typing import Any

from ariane.bootstrap import Container
from ariane.services.ingest import Envelope
from tests.conftest import FakeClock

CLUB: dict[str, Any] = {
    "id": "club",
    "expiry": {"validity": "P730D"},
    "tiers": {
        "window": "P365D",
        "demotion": "immediate",
        "levels": [{"id": "silver", "points": 0}, {"id": "gold", "points": 1000}],
    },
    "earn_rules": [
        {
            "id": "purchases",
            "event": "Order Completed",
            "points_per_unit": 1,
            "multipliers": [{"tier": "gold", "factor": 2}],
        }
    ],
}


def member(container: Container, user: str) -> str:
    source = container.access.create_source(f"shop-{uuid.uuid4().hex[:8]}")[0].id
    message = {"type": "identify", "userId": user, "messageId": uuid.uuid4().hex}
    done = container.ingest.ingest(source, [message], Envelope(received_at=container.clock()))
    return done.profile_ids[0]


def tier(container: Container, profile_id: str) -> Any:
    return container.loyalty.balance("club", profile_id)["tier"]


def changes(container: Container, profile_id: str) -> list[tuple[Any, Any, str]]:
    container.bus.drain()
    events = container.profiles.events(profile_id, limit=100)["events"]
    return [
        (e["properties"]["from"], e["properties"]["to"], e["properties"]["cause"])
        for e in reversed(events)
        if e.get("event") == "Tier Changed"
    ]


def test_a_member_is_promoted_at_once_and_demoted_when_points_leave_the_window(
    container: Container, clock: FakeClock
) -> None:
    container.programmes.apply(CLUB)
    ada = member(container, "ada")
    container.loyalty.earn("club", ada, 600, "order-1")
    assert tier(container, ada) == "silver"
    clock.advance(days=100)
    container.loyalty.earn("club", ada, 500, "order-2")
    assert tier(container, ada) == "gold"
    # Spending does not lower what was earned.
    container.loyalty.spend("club", ada, 1100, "reward-1")
    assert tier(container, ada) == "gold"

    clock.advance(days=264)
    assert container.loyalty.review_tiers() == 0
    clock.advance(days=1)
    assert container.loyalty.review_tiers() == 1
    balance = container.loyalty.balance("club", ada)
    assert (balance["tier"], balance["points_in_tier_window"]) == ("silver", 500)
    assert changes(container, ada) == [
        (None, "silver", "earned"),
        ("silver", "gold", "earned"),
        ("gold", "silver", "window"),
    ]
    assert container.loyalty.review_tiers() == 0


def test_a_grace_period_delays_the_demotion(container: Container, clock: FakeClock) -> None:
    tiers = {**CLUB["tiers"], "demotion": "P30D"}
    container.programmes.apply({**CLUB, "tiers": tiers})
    ada = member(container, "ada")
    container.loyalty.earn("club", ada, 1000, "order-1")
    clock.advance(days=365)
    container.loyalty.review_tiers()
    assert tier(container, ada) == "gold"
    clock.advance(days=30)
    container.loyalty.review_tiers()
    assert tier(container, ada) == "silver"


def test_the_tier_multiplies_what_rules_give(container: Container) -> None:
    container.programmes.apply(CLUB)
    ada = member(container, "ada")
    source = container.access.create_source("web")[0].id
    order = {"type": "track", "userId": "ada", "event": "Order Completed"}

    def buy(amount: int) -> None:
        message = {**order, "messageId": uuid.uuid4().hex, "properties": {"revenue": amount}}
        container.ingest.ingest(source, [message], Envelope(received_at=container.clock()))
        container.bus.drain()

    buy(1000)
    assert tier(container, ada) == "gold"
    buy(100)
    assert container.loyalty.balance("club", ada)["available"] == 1200
