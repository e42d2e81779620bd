"""Loyalty movements on the member's timeline, on both databases: each movement's event
is queued in its own transaction and sent through ingestion once, so that the timeline
shows it and segments count it, even when it is sent again or the member was merged."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import CacheStats

from ariane.bootstrap import Container
from ariane.domain.clock import iso
from ariane.services.ingest import Envelope
from ariane.storage.loyalty import claim_events
from ariane.storage.tables import LOYALTY_SOURCE, events, outbox
from tests.conftest import FakeClock
from tests.integration.test_loyalty_ledger import at_once

CLUB: dict[str, Any] = {
    "id": "club",
    "rewards": [{"id": "voucher", "cost": 100, "pool": "vouchers"}],
    "coupon_pools": [{"id": "vouchers", "generate": {"count": 3}}],
}


def send(container: Container, *messages: dict[str, Any]) -> list[str]:
    source = container.access.create_source(f"shop-{uuid.uuid4().hex[:8]}")[0].id
    stamped = [{"messageId": uuid.uuid4().hex, **message} for message in messages]
    done = container.ingest.ingest(source, stamped, Envelope(received_at=container.clock()))
    return done.profile_ids


def timeline(container: Container, profile_id: str) -> list[dict[str, Any]]:
    page = container.profiles.events(profile_id, limit=100)
    return [e for e in page["events"] if e.get("event") != "Audience Entered"]


def test_each_movement_is_on_the_timeline_once_however_often_it_is_sent(
    container: Container, clock: FakeClock
) -> None:
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    earned = container.loyalty.earn("club", ada, 150, "order-1", reference="R-1")
    clock.advance(minutes=1)
    bought = container.loyalty.redeem("club", ada, "voucher", "ada-voucher")
    code = bought["coupon"]["code"]
    clock.advance(minutes=1)
    container.coupons.burn(code, "till-1", channel="till", location="paris-04", reference="R-2")
    clock.advance(minutes=1)
    container.coupons.rollback(code, "till-1-cancel", reference="R-2 cancelled")
    # Nothing is on the timeline before it is published: the movement's transaction
    # only queued it.
    assert timeline(container, ada)[0]["type"] == "identify"

    assert container.loyalty_events.publish() == 5
    shown = timeline(container, ada)
    assert [e["event"] for e in shown[:5]] == [
        "Coupon Burn Rolled Back",
        "Coupon Burned",
        "Reward Redeemed",
        "Points Spent",
        "Points Earned",
    ]
    burn = shown[1]
    assert burn["properties"] == {
        "programme": "club",
        "reward": "voucher",
        "coupon_code": code,
        "channel": "till",
        "location": "paris-04",
        "reference": "R-2",
    }
    assert shown[2]["properties"] == {
        "programme": "club",
        "reward": "voucher",
        "points": 100,
        "coupon_code": code,
    }
    # Queued in one round trip with the purchase's, the spend's event comes before it.
    assert shown[3]["properties"] == {
        "programme": "club",
        "points": 100,
        "reference": "reward:voucher",
    }
    assert shown[4]["properties"] == {
        "programme": "club",
        "points": 150,
        "reference": "R-1",
        "available_at": iso(earned["at"]),
        "expires_at": None,
    }
    assert shown[4]["timestamp"] == iso(earned["at"])
    assert container.loyalty_events.publish() == 0

    # Sent again, as after a crash between sending and marking them sent: stored once.
    container.db.write(lambda conn: conn.execute(outbox.update().values(dispatched_at=None)))
    assert container.loyalty_events.publish() == 5
    with container.db.read() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).where(events.c.source_id == LOYALTY_SOURCE)
        ).scalar_one()
    assert stored == 5


def test_a_movement_compiles_no_statement_a_movement_before_it_compiled(
    container: Container,
) -> None:
    """Every request of a till pays for each statement it compiles: a movement like one
    before it runs on compiled statements alone, its events' included."""
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    compiled: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any) -> None:
        # A statement of SQLAlchemy's (not SQL handed to the driver) compiled afresh: one
        # not cached yet, or one it cannot cache.
        if context.compiled is not None and context.cache_hit is not CacheStats.CACHE_HIT:
            compiled.append(statement)

    def movements(turn: int) -> None:
        container.loyalty.earn("club", ada, 150, f"order-{turn}", reference=f"R-{turn}")
        bought = container.loyalty.redeem("club", ada, "voucher", f"voucher-{turn}")
        container.coupons.burn(bought["coupon"]["code"], f"till-{turn}", channel="till")

    # The purchases take from one lot, then two (a statement per shape), then one again.
    movements(1)
    movements(2)
    sa.event.listen(container.db.engine, "after_cursor_execute", note)
    try:
        movements(3)
    finally:
        sa.event.remove(container.db.engine, "after_cursor_execute", note)
    assert compiled == []


def test_a_segment_counts_loyalty_events(container: Container) -> None:
    container.programmes.apply(CLUB)
    container.segments.save_segment(
        "coupon_users", "", {"event": "Coupon Burned", "count": {"gte": 1}, "within": "P30D"}
    )
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    container.loyalty.earn("club", ada, 100, "order-1")
    code = container.loyalty.redeem("club", ada, "voucher", "v-1")["coupon"]["code"]
    container.coupons.burn(code, "web-1", channel="web")
    assert container.segments.members("coupon_users")["members"] == []

    container.loyalty_events.publish()

    members = container.segments.members("coupon_users")["members"]
    assert [m["profile_id"] for m in members] == [ada]


def test_an_event_queued_before_a_merge_goes_to_the_profile_that_absorbed_the_member(
    container: Container,
) -> None:
    container.programmes.apply(CLUB)
    [visitor] = send(container, {"type": "page", "anonymousId": "anon-7"})
    container.loyalty.earn("club", visitor, 40, "welcome")
    [known] = send(container, {"type": "identify", "userId": "ada"})
    send(container, {"type": "identify", "userId": "ada", "anonymousId": "anon-7"})
    ada = container.profiles.lookup("user_id", "ada")
    assert {visitor, known} - {ada}, "the two profiles were merged"

    assert container.loyalty_events.publish() == 1

    earned = [e for e in timeline(container, ada) if e.get("event") == "Points Earned"]
    assert [(e["properties"]["points"], e["userId"]) for e in earned] == [(40, "ada")]
    assert container.loyalty.balance("club", visitor)["available"] == 40
    # Sent with an id the profile holds: no identifier was added.
    assert {i["type"] for i in container.profiles.view(ada)["identities"]} == {
        "user_id",
        "anonymous_id",
    }


def test_a_member_known_only_by_an_anonymous_id_gets_the_event_under_it(
    container: Container,
) -> None:
    container.programmes.apply(CLUB)
    [visitor] = send(container, {"type": "page", "anonymousId": "anon-9"})
    container.loyalty.earn("club", visitor, 5, "quiz")

    container.loyalty_events.publish()

    [event] = [e for e in timeline(container, visitor) if e.get("event") == "Points Earned"]
    assert event["anonymousId"] == "anon-9"
    assert "userId" not in event


def test_processes_send_each_event_once_and_take_over_those_of_one_that_died(
    container: Container, clock: FakeClock
) -> None:
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    for i in range(30):
        container.loyalty.earn("club", ada, 1, f"order-{i}")

    # A process claims ten of them, then dies before sending them.
    now = clock()
    dead = container.db.write(
        lambda conn: claim_events(conn, container.db.dialect, 10, now, now + timedelta(seconds=60))
    )
    assert len(dead) == 10
    claimed: list[int] = []

    def drain(_: int) -> None:
        while count := container.loyalty_events.publish(limit=3):
            claimed.append(count)

    assert at_once(4, drain) == Counter({"ok": 4})
    # Each of the other twenty claimed by one process only.
    assert sum(claimed) == 20
    assert len(loyalty_events(container)) == 20
    clock.advance(seconds=61)
    assert container.loyalty_events.publish() == 10
    assert len(loyalty_events(container)) == 30


def loyalty_events(container: Container) -> list[str]:
    with container.db.read() as conn:
        return list(
            conn.execute(
                sa.select(events.c.message_id).where(events.c.source_id == LOYALTY_SOURCE)
            ).scalars()
        )
