"""Returns on both databases: the points of returned items are taken back in proportion
to what earned them, from the purchase's own lot first, never below zero; returning an
order in parts takes back exactly what it earned; a retry takes nothing more."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.domain.errors import DomainError, NotFound
from ariane.services.ingest import Envelope

CLUB: dict[str, Any] = {
    "id": "club",
    "earn_rules": [
        {
            "id": "purchases",
            "event": "Order Completed",
            "points_per_unit": 1,
            "exclude": {"categories": ["gift-cards"]},
        }
    ],
}
RING = {"sku": "RING-1", "category": "rings", "price": 100, "quantity": 1}
CHAIN = {"sku": "CHAIN-1", "category": "chains", "price": 50, "quantity": 1}
CARD = {"sku": "CARD-1", "category": "gift-cards", "price": 30, "quantity": 1}


@pytest.fixture(autouse=True)
def club(container: Container) -> None:
    container.programmes.apply(CLUB)


def member(container: Container, user: str) -> str:
    source = container.access.create_source(f"shop-{uuid.uuid4().hex[:8]}")[0].id
    message = {"type": "identify", "userId": user, "messageId": uuid.uuid4().hex}
    return container.ingest.ingest(
        source, [message], Envelope(received_at=container.clock())
    ).profile_ids[0]


def buy(container: Container, profile_id: str, order: str, *products: dict[str, Any]) -> int:
    sold = container.earning.record(
        "club",
        profile_id,
        "Order Completed",
        {"order_id": order, "products": list(products)},
        f"till/{order}",
    )
    points: int = sold["points"]
    return points


def available(container: Container, profile_id: str) -> int:
    points: int = container.loyalty.balance("club", profile_id)["available"]
    return points


def test_returned_items_take_back_what_they_earned_and_a_retry_nothing_more(
    container: Container,
) -> None:
    ada = member(container, "ada")
    assert buy(container, ada, "R-1", RING, CHAIN, CARD) == 150
    back = container.earning.return_items("club", ada, "R-1", [RING], "return-1")
    assert (back["points"], back["shortfall"]) == (100, 0)
    assert available(container, ada) == 50
    again = container.earning.return_items("club", ada, "R-1", [RING], "return-1")
    assert again["points"] == 100
    assert available(container, ada) == 50
    # A gift card earned nothing: returning it takes nothing back.
    assert container.earning.return_items("club", ada, "R-1", [CARD], "return-2")["points"] == 0
    rest = container.earning.return_items("club", ada, "R-1", None, "return-3")
    assert rest["points"] == 50
    assert available(container, ada) == 0
    [entry, *_] = container.loyalty.history("club", ada)["entries"]
    assert (entry["kind"], entry["points"], entry["reference"]) == ("reverse", -50, "R-1")
    assert container.loyalty.discrepancies("club", ada) == []


def test_an_order_returned_in_parts_takes_back_exactly_what_it_earned(
    container: Container,
) -> None:
    ada = member(container, "ada")
    third = {"sku": "X", "category": "rings", "price": 33.33, "quantity": 1}
    assert buy(container, ada, "R-2", third, third, third) == 99
    taken = [
        container.earning.return_items("club", ada, "R-2", [third], f"part-{i}")["points"]
        for i in range(3)
    ]
    assert sum(taken) == 99
    assert available(container, ada) == 0


def test_a_return_never_takes_the_balance_below_zero(container: Container) -> None:
    ada = member(container, "ada")
    buy(container, ada, "R-3", RING, CHAIN)
    container.loyalty.spend("club", ada, 120, "reward-1")
    back = container.earning.return_items("club", ada, "R-3", None, "return-1")
    assert (back["points"], back["shortfall"]) == (30, 120)
    assert available(container, ada) == 0
    assert container.loyalty.discrepancies("club", ada) == []
    with pytest.raises(NotFound) as unknown:
        container.earning.return_items("club", ada, "R-404", None, "return-2")
    assert unknown.value.field == "order_id"


def test_a_refund_event_through_the_pipeline_takes_back_the_points(
    client: TestClient, container: Container, write_key: str, admin_token: dict[str, str]
) -> None:
    sent = client.post(
        "/v1/track",
        json={
            "userId": "ada",
            "event": "Order Completed",
            "properties": {"order_id": "R-5", "products": [RING, CHAIN]},
        },
        auth=(write_key, ""),
    )
    assert sent.status_code == 200
    container.bus.drain()
    ada = container.profiles.lookup("user_id", "ada")
    assert available(container, ada) == 150
    refund = {
        "userId": "ada",
        "event": "Order Refunded",
        "properties": {"order_id": "R-5", "products": [CHAIN]},
    }
    client.post("/v1/track", json=refund, auth=(write_key, ""))
    container.bus.drain()
    assert available(container, ada) == 100
    url = f"/api/loyalty/programmes/club/members/{ada}/returns"
    returned = client.post(
        url, json={"order_id": "R-5"}, headers={**admin_token, "Idempotency-Key": "desk-1"}
    )
    assert returned.status_code == 200, returned.text
    assert returned.json()["points"] == 100
    assert available(container, ada) == 0


def test_a_return_takes_back_what_the_items_earned_with_their_multipliers_and_not_a_limit(
    container: Container,
) -> None:
    rules = [
        {
            "id": "purchases",
            "event": "Order Completed",
            "points_per_unit": 1,
            "multipliers": [{"category": "rings", "factor": 2}],
            "limit": {"count": 2, "per": "P30D"},
        }
    ]
    container.programmes.apply({"id": "club", "earn_rules": rules})
    ada = member(container, "ada")
    sock = {"sku": "SOCK-1", "category": "socks", "price": 100, "quantity": 1}
    assert buy(container, ada, "O-1", RING, sock) == 300
    assert container.earning.return_items("club", ada, "O-1", [RING], "r-1")["points"] == 200
    assert container.earning.return_items("club", ada, "O-1", None, "r-2")["points"] == 100
    # The return used none of the rule's two purchases a month.
    assert buy(container, ada, "O-2", sock) == 100
    with pytest.raises(DomainError) as long_key:
        container.earning.return_items("club", ada, "O-2", None, "k" * 190)
    assert long_key.value.field == "Idempotency-Key"
