"""Loyalty movements on the member's timeline, on both databases: each movement records
what it did in its own transaction, and the bus stores it through ingestion once, so that
the timeline shows it and segments count it, even when it is given again or the member
was merged."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.selectable import Select

from ariane.bootstrap import Container, build
from ariane.domain.clock import iso
from ariane.handlers import empty_outbox
from ariane.services.bus import Handler, RetryPolicy
from ariane.services.ingest import Envelope
from ariane.settings import Settings
from ariane.storage import bus as bus_store
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
    # Nothing is on the timeline before the bus carries it: the movement's transaction
    # only recorded it.
    assert timeline(container, ada)[0]["type"] == "identify"

    container.bus.drain()
    assert len(loyalty_events(container)) == 5
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
    # Read by every handler, they leave the outbox.
    empty_outbox(container)
    with container.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() == 0


def test_events_sent_again_after_a_crash_are_stored_once(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that stops between storing the events and moving its place in the
    outbox leaves them to be stored again: the timeline still shows each once."""
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    container.loyalty.earn("club", ada, 150, "order-1")
    container.loyalty.redeem("club", ada, "voucher", "ada-voucher")

    def crash(*args: Any) -> None:
        raise ConnectionError("the process stopped here")

    with monkeypatch.context() as patched:
        patched.setattr(bus_store, "save_position", crash)
        with pytest.raises(ConnectionError):
            container.bus.run_once(handler(container, "loyalty-timeline"))
    assert len(loyalty_events(container)) == 3
    container.bus.drain()
    assert sorted(Counter(loyalty_events(container)).values()) == [1, 1, 1]


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


def test_a_movement_builds_no_statement(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a statement costs more than running it compiled: the statements a
    movement, a burn and the token check run are built once, not on every call."""
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    _, secret = container.access.create_token("admin")
    built: list[str] = []

    def movements(turn: int) -> None:
        assert container.access.token_for_secret(secret) is not None
        container.loyalty.earn("club", ada, 150, f"order-{turn}", reference=f"R-{turn}")
        bought = container.loyalty.redeem("club", ada, "voucher", f"voucher-{turn}")
        container.coupons.burn(bought["coupon"]["code"], f"till-{turn}", channel="till")

    movements(1)
    for kind in (Select, Insert, Update, Delete):
        made = kind.__init__

        def counted(self: Any, *args: Any, _made: Any = made, **kwargs: Any) -> None:
            built.append(type(self).__name__)
            _made(self, *args, **kwargs)

        monkeypatch.setattr(kind, "__init__", counted)
    movements(2)
    monkeypatch.undo()
    assert built == []


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

    container.bus.drain()

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

    container.bus.drain()

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

    container.bus.drain()

    [event] = [e for e in timeline(container, visitor) if e.get("event") == "Points Earned"]
    assert event["anonymousId"] == "anon-9"
    assert "userId" not in event


def test_processes_store_each_event_once(
    container: Container, settings: Settings, clock: FakeClock
) -> None:
    """Processes on one database (each its own `Container`) take turns at the handler:
    each event is stored by one of them, once."""
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    for i in range(30):
        container.loyalty.earn("club", ada, 1, f"order-{i}")
    processes = [build(settings, clock=clock) for _ in range(4)]
    try:

        def drain(i: int) -> None:
            timeline = handler(processes[i], "loyalty-timeline")
            # A process that found the handler taken by another looks again, as it
            # would when woken, until all are stored.
            deadline = time.monotonic() + 30
            while len(loyalty_events(container)) < 30 and time.monotonic() < deadline:
                processes[i].bus.run_once(timeline)

        assert at_once(4, drain) == Counter({"ok": 4})
    finally:
        for process in processes:
            process.close()
    assert Counter(loyalty_events(container)).most_common(1)[0][1] == 1
    assert len(loyalty_events(container)) == 30


def test_while_a_process_stores_the_events_the_others_leave_them_alone(
    container: Container, settings: Settings, clock: FakeClock
) -> None:
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    container.loyalty.earn("club", ada, 150, "order-1")
    other = build(settings, clock=clock)
    storing = threading.Event()
    go_on = threading.Event()
    ingest = container.loyalty_timeline.ingest.ingest

    def slow_ingest(*args: Any, **kwargs: Any) -> Any:
        storing.set()
        assert go_on.wait(10)
        return ingest(*args, **kwargs)

    container.loyalty_timeline.ingest.ingest = slow_ingest  # type: ignore[method-assign]
    try:
        first = threading.Thread(
            target=container.bus.run_once, args=(handler(container, "loyalty-timeline"),)
        )
        first.start()
        assert storing.wait(10)
        assert other.bus.run_once(handler(other, "loyalty-timeline")) == 0
        go_on.set()
        first.join()
    finally:
        go_on.set()
        other.close()
    assert len(loyalty_events(container)) == 1


def test_events_that_could_not_be_stored_are_tried_again_in_order(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    container.programmes.apply(CLUB)
    [ada] = send(container, {"type": "identify", "userId": "ada"})
    for i in range(5):
        container.loyalty.earn("club", ada, 1, f"order-{i}")
    container.bus.policy = RetryPolicy(first=0.001, ceiling=0.002, attempts=1000)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("ingestion is down")

    with monkeypatch.context() as patched:
        patched.setattr(container.loyalty_timeline.ingest, "ingest", down)
        for _ in range(5):
            container.bus.drain()
            time.sleep(0.003)
    assert loyalty_events(container) == []
    time.sleep(0.003)
    container.bus.drain()
    assert loyalty_events(container) == [f"loyalty-entry-{n}" for n in range(1, 6)]
    assert container.bus.parked() == []


def handler(container: Container, name: str) -> Handler:
    return next(found for found in container.bus.handlers() if found.name == name)


def loyalty_events(container: Container) -> list[str]:
    with container.db.read() as conn:
        return list(
            conn.execute(
                sa.select(events.c.message_id).where(events.c.source_id == LOYALTY_SOURCE)
            ).scalars()
        )
