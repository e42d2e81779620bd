"""Earn rules on both databases: events sent through /v1 earn points once they are
processed, once each however often they are read; limits hold per member and period;
"commented on Facebook AND on Instagram" gives a voucher, once; referrals reward both;
a sale a till sends and the same order sent as an event earn once."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.services.bus import RetryPolicy
from ariane.services.ingest import Envelope
from tests.conftest import FakeClock
from tests.integration.test_loyalty_ledger import at_once

CLUB: dict[str, Any] = {
    "id": "club",
    "rewards": [{"id": "voucher", "cost": 500, "pool": "vouchers"}],
    "coupon_pools": [{"id": "vouchers", "generate": {"count": 5}}],
    "earn_rules": [
        {
            "id": "purchases",
            "event": "Order Completed",
            "points_per_unit": 1,
            "exclude": {"categories": ["gift-cards"]},
            "multipliers": [{"category": "rings", "factor": 2}, {"segment": "vip", "factor": 1.5}],
        },
        {
            "id": "newsletter",
            "event": "Newsletter Subscribed",
            "points": 50,
            "limit": {"count": 1, "per": "P30D"},
        },
        {
            "id": "social",
            "event": "Comment Posted",
            "when": {
                "all": [
                    {
                        "event": "Comment Posted",
                        "where": [{"property": "network", "op": "eq", "value": network}],
                        "count": {"gte": 1},
                    }
                    for network in ("facebook", "instagram")
                ]
            },
            "reward": "voucher",
            "limit": {"count": 1},
        },
        {
            "id": "referral",
            "event": "Referral Completed",
            "referral": {"referrer": 100, "referred": 50},
        },
        {"id": "first-review", "event": "Review Posted", "points": 20, "stop": True},
        {"id": "any-review", "event": "Review Posted", "points": 5},
    ],
}


@pytest.fixture(autouse=True)
def club(container: Container) -> None:
    container.segments.save_segment("vip", "", {"trait": "vip", "op": "eq", "value": True})
    container.programmes.apply(CLUB)


def send(container: Container, *messages: dict[str, Any]) -> list[str]:
    source = container.access.create_source(f"web-{uuid.uuid4().hex[:8]}")[0].id
    stamped = [{"messageId": uuid.uuid4().hex, **m} for m in messages]
    return container.ingest.ingest(
        source, stamped, Envelope(received_at=container.clock())
    ).profile_ids


def track(user: str, event: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": event, "properties": properties}


def available(container: Container, profile_id: str) -> int:
    points: int = container.loyalty.balance("club", profile_id)["available"]
    return points


def drain(container: Container) -> int:
    return container.bus.drain()


ORDER = {
    "order_id": "R-1",
    "products": [
        {"sku": "RING-1", "category": "rings", "price": 100, "quantity": 1},
        {"sku": "CARD-1", "category": "gift-cards", "price": 50, "quantity": 1},
    ],
    "shipping": 10,
}


def test_a_purchase_sent_through_the_pipeline_earns_once_processed(container: Container) -> None:
    [ada] = send(container, {"type": "identify", "userId": "ada", "traits": {"vip": True}})
    send(container, track("ada", "Order Completed", **ORDER), track("ada", "Page Scrolled"))
    assert available(container, ada) == 0
    drain(container)
    # 100 in rings, twice, and 1.5 times that for a vip; the gift card earns nothing.
    assert available(container, ada) == 300
    [entry] = container.loyalty.history("club", ada)["entries"]
    assert (entry["rule"], entry["reference"]) == ("purchases", "R-1")
    # The same order again (another message id, as a resent sale): nothing more.
    send(container, track("ada", "Order Completed", **ORDER))
    drain(container)
    assert available(container, ada) == 300


def test_a_rule_added_later_reads_the_events_sent_after_it(container: Container) -> None:
    [bob] = send(container, track("bob", "Wishlist Shared"))
    drain(container)
    rules = [*CLUB["earn_rules"], {"id": "share", "event": "Wishlist Shared", "points": 3}]
    container.programmes.apply({**CLUB, "earn_rules": rules})
    send(container, track("bob", "Wishlist Shared"))
    drain(container)
    assert available(container, bob) == 3


def test_a_limit_per_period_holds_even_when_events_are_read_at_once(
    container: Container, clock: FakeClock
) -> None:
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    send(container, *[track("ada", "Newsletter Subscribed") for _ in range(6)])
    assert at_once(3, lambda _: drain(container))["ok"] == 3
    assert available(container, ada) == 50
    clock.advance(days=31)
    send(container, track("ada", "Newsletter Subscribed"))
    drain(container)
    assert available(container, ada) == 100


def test_commenting_on_facebook_and_on_instagram_gives_a_voucher_once(
    container: Container,
) -> None:
    [ada] = send(container, track("ada", "Comment Posted", network="facebook"))
    drain(container)
    assert container.loyalty.balance("club", ada)["coupons"] == []
    send(container, track("ada", "Comment Posted", network="instagram"))
    drain(container)
    [coupon] = container.loyalty.balance("club", ada)["coupons"]
    assert coupon["reward"] == "voucher"
    # The voucher costs nothing when a rule gives it, and is given once.
    send(container, track("ada", "Comment Posted", network="facebook"))
    drain(container)
    assert len(container.loyalty.balance("club", ada)["coupons"]) == 1
    assert available(container, ada) == 0


def test_a_referral_rewards_the_referrer_and_the_referred(container: Container) -> None:
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    [bob] = send(container, track("bob", "Referral Completed", referrer_id="ada"))
    [eve] = send(container, track("eve", "Referral Completed", referrer_id="nobody"))
    drain(container)
    assert (available(container, ada), available(container, bob)) == (100, 50)
    # A referrer no one is: the referred still earns.
    assert available(container, eve) == 50


def test_a_rule_that_stops_ends_the_rules_of_its_event(container: Container) -> None:
    [ada] = send(container, track("ada", "Review Posted"))
    drain(container)
    assert available(container, ada) == 20


def test_a_sale_from_a_till_and_the_same_order_as_an_event_earn_once(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    url = f"/api/loyalty/programmes/club/members/{ada}/events"
    body = {"event": "Order Completed", "properties": ORDER}
    headers = {**admin_token, "Idempotency-Key": "till-4/R-1"}
    sold = client.post(url, json=body, headers=headers)
    assert sold.status_code == 200, sold.text
    assert sold.json()["points"] == 200
    again = client.post(url, json=body, headers=headers)
    assert again.json()["points"] == 200
    send(container, track("ada", "Order Completed", **ORDER))
    drain(container)
    assert available(container, ada) == 200
    # The sale is on the timeline once published, and the rules do not read it again.
    drain(container)
    timeline = container.profiles.events(ada)["events"]
    assert [e["event"] for e in timeline if e.get("event") == "Order Completed"] == [
        "Order Completed",
        "Order Completed",
    ]
    assert available(container, ada) == 200


def test_simulate_shows_what_an_event_would_earn_and_changes_nothing(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    [ada] = send(container, {"type": "identify", "userId": "ada", "traits": {"vip": True}})
    send(container, track("ada", "Newsletter Subscribed"))
    drain(container)
    body = {"programme": "club", "event": "Order Completed", "properties": ORDER}
    anyone = client.post("/api/loyalty/simulate", json=body, headers=admin_token)
    assert anyone.status_code == 200, anyone.text
    assert anyone.json()["points"] == 200
    vip = client.post(
        "/api/loyalty/simulate", json={**body, "profile_id": ada}, headers=admin_token
    ).json()
    assert vip["points"] == 300
    assert vip["awards"][0]["eligible_amount"] == 100.0
    news = client.post(
        "/api/loyalty/simulate",
        json={"programme": "club", "event": "Newsletter Subscribed", "profile_id": ada},
        headers=admin_token,
    ).json()
    assert (news["points"], news["awards"][0]["held_back"]) == (0, "limit")
    assert available(container, ada) == 50


def test_a_till_retry_after_its_sale_promoted_the_member_answers_the_first_answer(
    container: Container,
) -> None:
    tiers = {"window": "P365D", "levels": [{"id": "gold", "points": 100}]}
    rules = [
        {
            "id": "purchases",
            "event": "Order Completed",
            "points_per_unit": 1,
            "multipliers": [{"tier": "gold", "factor": 2}],
        }
    ]
    container.programmes.apply({"id": "club", "tiers": tiers, "earn_rules": rules})
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    sale = {"order_id": "R-9", "revenue": 100}
    first = container.earning.record("club", ada, "Order Completed", sale, "till/R-9")
    assert first["points"] == 100
    assert container.loyalty.balance("club", ada)["tier"] == "gold"
    again = container.earning.record("club", ada, "Order Completed", sale, "till/R-9")
    assert again["points"] == 100
    assert available(container, ada) == 100


def test_two_members_may_share_an_order_number_and_a_poisoned_event_blocks_no_other(
    container: Container,
) -> None:
    [ada] = send(container, track("ada", "Order Completed", order_id="7", revenue=10))
    [bob] = send(container, track("bob", "Order Completed", order_id="7", revenue=20))
    send(
        container,
        track("eve", "Order Completed", order_id="8", revenue=1e20),
        track("ada", "Newsletter Subscribed"),
    )
    drain(container)
    assert (available(container, ada), available(container, bob)) == (60, 20)
    assert drain(container) == 0


def test_an_event_the_rules_failed_on_is_read_again_until_it_goes_through(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules read the events in order: one they fail on is tried again after a
    growing pause (then parked, see the bus), and the orders after it wait for it."""
    container.bus.policy = RetryPolicy(first=0.001, ceiling=0.002, attempts=1000)
    [ada] = send(container, track("ada", "Order Completed", order_id="1", revenue=10))
    send(container, track("ada", "Order Completed", order_id="2", revenue=20))
    apply = container.earning.apply

    def failing(programme: Any, member: str, event: Any) -> Any:
        if event.reference == "1":
            raise RuntimeError("the database went away")
        return apply(programme, member, event)

    with monkeypatch.context() as patched:
        patched.setattr(container.earning, "apply", failing)
        for _ in range(3):
            drain(container)
            time.sleep(0.003)
        assert available(container, ada) == 0
    time.sleep(0.003)
    drain(container)
    assert available(container, ada) == 30
