"""The ledger's other movements on both databases: points expired written off by the
loop, given or taken by hand, moved between members; every kind reconciles with the lots
and is on the timeline."""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.domain.errors import DomainError
from ariane.domain.loyalty import NotEnoughPoints
from tests.conftest import FakeClock
from tests.integration.test_loyalty_ledger import at_once, member


@pytest.fixture(autouse=True)
def club(container: Container) -> None:
    container.programmes.apply({"id": "club", "expiry": {"validity": "P30D"}})


def kinds(container: Container, profile_id: str) -> list[tuple[str, int]]:
    entries = container.loyalty.history("club", profile_id)["entries"]
    return [(entry["kind"], entry["points"]) for entry in reversed(entries)]


def test_points_past_their_expiry_are_written_off_the_ledger(
    container: Container, clock: FakeClock
) -> None:
    ada = member(container, "ada")
    container.loyalty.earn("club", ada, 100, "order-1")
    clock.advance(days=10)
    container.loyalty.earn("club", ada, 40, "order-2")
    container.loyalty.spend("club", ada, 30, "reward-1")
    assert container.loyalty.expire_due() == 0
    clock.advance(days=20)
    assert container.loyalty.expire_due() == 1
    assert container.loyalty.expire_due() == 0
    assert kinds(container, ada) == [("earn", 100), ("earn", 40), ("spend", -30), ("expire", -70)]
    assert container.loyalty.balance("club", ada)["available"] == 40
    assert container.loyalty.discrepancies("club") == []
    container.bus.drain()
    names = [e.get("event") for e in container.profiles.events(ada)["events"]]
    assert "Points Expired" in names


def test_points_are_given_or_taken_by_hand_never_below_zero(container: Container) -> None:
    ada = member(container, "ada")
    given = container.loyalty.adjust("club", ada, 200, "desk-1", reason="late delivery")
    assert (given["kind"], given["points"], given["reference"]) == ("adjust", 200, "late delivery")
    assert container.loyalty.adjust("club", ada, 200, "desk-1") == given
    container.loyalty.adjust("club", ada, -50, "desk-2")
    with pytest.raises(NotEnoughPoints):
        container.loyalty.adjust("club", ada, -151, "desk-3")
    with pytest.raises(DomainError) as zero:
        container.loyalty.adjust("club", ada, 0, "desk-4")
    assert zero.value.field == "points"
    assert container.loyalty.balance("club", ada)["available"] == 150
    assert container.loyalty.discrepancies("club") == []


def test_points_move_between_members_once_and_never_beyond_what_the_giver_has(
    container: Container,
) -> None:
    ada, bob = member(container, "ada"), member(container, "bob")
    container.loyalty.earn("club", ada, 100, "order-1")
    container.loyalty.earn("club", bob, 100, "order-2")
    moved = container.loyalty.transfer("club", ada, bob, 60, "gift-1", reference="birthday")
    assert (moved["from"]["points"], moved["to"]["points"]) == (-60, 60)
    assert container.loyalty.transfer("club", ada, bob, 60, "gift-1") == moved
    with pytest.raises(DomainError):
        container.loyalty.transfer("club", ada, ada, 1, "self")
    # Transfers both ways at once: the locks are taken in one order, nothing deadlocks,
    # and no one gives what they do not have.
    outcomes = at_once(
        20,
        lambda i: container.loyalty.transfer(
            "club", *((ada, bob) if i % 2 else (bob, ada)), 30, f"swap-{i}"
        ),
    )
    assert set(outcomes) <= {"ok", "NotEnoughPoints"}
    assert outcomes["ok"] >= 2
    total = sum(container.loyalty.balance("club", p)["available"] for p in (ada, bob))
    assert total == 200
    assert container.loyalty.discrepancies("club") == []
    assert Counter(kind for kind, _ in kinds(container, bob))["transfer"] >= 1


def test_the_api_adjusts_and_transfers_with_an_idempotency_key(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    ada, bob = member(container, "ada"), member(container, "bob")
    url = "/api/loyalty/programmes/club/members"
    given = client.post(
        f"{url}/{ada}/adjust",
        json={"points": 80, "reason": "goodwill"},
        headers={**admin_token, "Idempotency-Key": "a1"},
    )
    assert given.status_code == 200, given.text
    moved = client.post(
        f"{url}/{ada}/transfer",
        json={"to": bob, "points": 30},
        headers={**admin_token, "Idempotency-Key": "t1"},
    )
    assert moved.status_code == 200, moved.text
    too_much = client.post(
        f"{url}/{ada}/transfer",
        json={"to": bob, "points": 51},
        headers={**admin_token, "Idempotency-Key": "t2"},
    )
    assert (too_much.status_code, too_much.json()["code"]) == (409, "not_enough_points")
    assert client.get(f"{url}/{bob}", headers=admin_token).json()["available"] == 30
