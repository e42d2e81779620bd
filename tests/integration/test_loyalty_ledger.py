"""The loyalty ledger on both databases: points earned in lots and spent oldest first,
each movement once however often it is sent, and never more spent than held, even when a
hundred requests arrive at once."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ariane.bootstrap import Container
from ariane.domain.errors import Conflict, NotFound
from ariane.domain.loyalty import NotEnoughPoints
from ariane.services.ingest import Envelope
from ariane.storage.tables import loyalty_entries, loyalty_lots, loyalty_movements
from tests.conftest import FakeClock

PROGRAMME = "club"
# Points pending through a return window of 14 days.
SHOP = "shop"


@pytest.fixture(autouse=True)
def programmes(container: Container) -> None:
    container.programmes.apply(
        {
            "programmes": [
                {"id": PROGRAMME, "expiry": {"validity": "P365D"}},
                {"id": "shop", "expiry": {"return_window": "P14D", "validity": "P365D"}},
                {"id": "staff"},
            ]
        }
    )


def member(container: Container, user_id: str) -> str:
    message = {"type": "identify", "userId": user_id, "messageId": uuid.uuid4().hex}
    done = container.ingest.ingest(
        container.access.create_source(f"shop-{user_id}")[0].id,
        [message],
        Envelope(received_at=container.clock()),
    )
    return done.profile_ids[0]


def at_once(count: int, call: Callable[[int], Any]) -> Counter[str]:
    """`call(i)` for i in range(count), from as many threads released together; how each
    ended: "ok" or the name of the error."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            call(i)
            outcome = "ok"
        except Exception as error:  # counted, then asserted on
            outcome = type(error).__name__
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_points_are_earned_in_lots_and_spent_oldest_first(
    container: Container, clock: FakeClock
) -> None:
    loyalty = container.loyalty
    ada = member(container, "ada")
    first = loyalty.earn(SHOP, ada, 100, "order-1", reference="order-1")
    clock.advance(days=1)
    loyalty.earn(SHOP, ada, 50, "order-2")
    # Both past the return window of 14 days; the third within it.
    clock.advance(days=14)
    loyalty.earn(SHOP, ada, 30, "order-3")
    now = loyalty.balance(SHOP, ada)
    assert (now["available"], now["pending"], now["expiring"]) == (150, 30, 100)
    assert now["next_expiry"] == first["at"] + timedelta(days=365)

    spent = loyalty.spend(SHOP, ada, 120, "reward-1")
    assert (spent["kind"], spent["points"]) == ("spend", -120)
    with container.db.read() as conn:
        taken = conn.execute(
            sa.select(loyalty_movements.c.lot_id, loyalty_movements.c.points).order_by(
                loyalty_movements.c.lot_id
            )
        ).all()
        remaining = dict(conn.execute(sa.select(loyalty_lots.c.id, loyalty_lots.c.remaining)).all())
    # The oldest lot whole, then part of the second (the third is pending).
    assert [tuple(t) for t in taken] == [(first["id"], 100), (first["id"] + 1, 20)]
    assert sorted(remaining.values()) == [0, 30, 30]
    assert loyalty.balance(SHOP, ada)["available"] == 30

    with pytest.raises(NotEnoughPoints) as refused:
        loyalty.spend(SHOP, ada, 31, "reward-2")
    assert refused.value.field == "points"
    clock.advance(days=14)
    assert loyalty.spend(SHOP, ada, 31, "reward-2")["points"] == -31
    assert loyalty.balance(SHOP, ada)["available"] == 29
    assert loyalty.discrepancies(SHOP, ada) == []


def test_a_movement_replayed_gives_the_first_answer_and_moves_nothing_more(
    container: Container,
) -> None:
    loyalty = container.loyalty
    ada = member(container, "ada")
    earned = loyalty.earn(PROGRAMME, ada, 100, "order-1")
    assert loyalty.earn(PROGRAMME, ada, 100, "order-1") == earned
    spent = loyalty.spend(PROGRAMME, ada, 40, "till-7/receipt-31")
    assert loyalty.spend(PROGRAMME, ada, 40, "till-7/receipt-31") == spent
    assert loyalty.balance(PROGRAMME, ada)["available"] == 60
    # The same key for another movement is a mistake of the caller's, named.
    with pytest.raises(Conflict) as clash:
        loyalty.spend(PROGRAMME, ada, 10, "order-1")
    assert clash.value.field == "Idempotency-Key"
    assert "another movement (earn of 100 points)" in clash.value.message
    bob = member(container, "bob")
    with pytest.raises(Conflict):
        loyalty.earn(PROGRAMME, bob, 100, "order-1")
    # Keys are per programme.
    assert loyalty.earn("staff", bob, 100, "order-1")["points"] == 100
    with pytest.raises(NotFound):
        loyalty.balance(PROGRAMME, "no-such-profile")


def test_a_hundred_spends_at_once_of_a_balance_that_covers_two_give_two(
    container: Container,
) -> None:
    loyalty = container.loyalty
    ada = member(container, "ada")
    loyalty.earn(PROGRAMME, ada, 60, "order-1")
    loyalty.earn(PROGRAMME, ada, 40, "order-2")

    outcomes = at_once(100, lambda i: loyalty.spend(PROGRAMME, ada, 50, f"reward-{i}"))

    assert outcomes == Counter({"ok": 2, "NotEnoughPoints": 98})
    assert loyalty.balance(PROGRAMME, ada)["available"] == 0
    assert loyalty.discrepancies(PROGRAMME, ada) == []
    with container.db.read() as conn:
        spends = conn.execute(
            sa.select(sa.func.count()).where(loyalty_entries.c.kind == "spend")
        ).scalar_one()
    assert spends == 2


def test_a_hundred_earns_at_once_with_one_key_earn_once(container: Container) -> None:
    loyalty = container.loyalty
    ada = member(container, "ada")

    outcomes = at_once(100, lambda _: loyalty.earn(PROGRAMME, ada, 25, "order-9"))

    assert outcomes == Counter({"ok": 100})
    assert loyalty.balance(PROGRAMME, ada)["available"] == 25
    with container.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(loyalty_entries)).scalar() == 1
    assert loyalty.discrepancies(PROGRAMME, ada) == []


def test_a_lot_past_its_expiry_cannot_be_spent(container: Container, clock: FakeClock) -> None:
    loyalty = container.loyalty
    ada = member(container, "ada")
    loyalty.earn(PROGRAMME, ada, 100, "order-1")
    clock.advance(days=364)
    assert loyalty.balance(PROGRAMME, ada)["available"] == 100
    clock.advance(days=1)
    assert loyalty.balance(PROGRAMME, ada)["available"] == 0
    with pytest.raises(NotEnoughPoints):
        loyalty.spend(PROGRAMME, ada, 1, "reward-1")


def test_a_movement_in_a_programme_not_declared_is_refused_naming_it(
    container: Container,
) -> None:
    ada = member(container, "ada")
    with pytest.raises(NotFound) as refused:
        container.loyalty.earn("nowhere", ada, 10, "order-1")
    assert refused.value.field == "programme"
    assert "ariane loyalty apply" in refused.value.message
