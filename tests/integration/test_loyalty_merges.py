"""Members merged on both databases: when identity resolution joins a shop account and a
web account, their points, history and coupons are the survivor's, the tier is looked at
again, a reward limited per member cannot be had twice more, and spends racing the merge
leave nothing behind on the absorbed profile."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.domain.identity import Merge
from ariane.services.ingest import Envelope
from ariane.services.redemptions import RewardUnavailable
from ariane.storage.profiles import record_merge
from ariane.storage.tables import loyalty_entries
from tests.integration.test_loyalty_ledger import at_once

CLUB: dict[str, Any] = {
    "id": "club",
    "tiers": {
        "window": "P365D",
        "levels": [{"id": "silver", "points": 0}, {"id": "gold", "points": 1000}],
    },
    "rewards": [{"id": "welcome", "cost": 10, "per_member": 1, "pool": "codes"}],
    "coupon_pools": [{"id": "codes", "generate": {"count": 10}}],
}


def send(container: Container, message: dict[str, Any]) -> str:
    source = container.access.create_source(f"src-{uuid.uuid4().hex[:8]}")[0].id
    stamped = {"messageId": uuid.uuid4().hex, **message}
    return container.ingest.ingest(
        source, [stamped], Envelope(received_at=container.clock())
    ).profile_ids[0]


def test_a_merge_consolidates_points_coupons_and_the_tier(container: Container) -> None:
    container.programmes.apply(CLUB)
    shop = send(
        container,
        {
            "type": "identify",
            "anonymousId": "card-reader-1",
            "traits": {"email": "ada@example.org"},
        },
    )
    web = send(container, {"type": "identify", "userId": "ada"})
    container.loyalty.earn("club", shop, 600, "shop-1")
    container.loyalty.earn("club", web, 500, "web-1")
    shop_code = container.loyalty.redeem("club", shop, "welcome", "shop-welcome")["coupon"]["code"]
    container.loyalty.redeem("club", web, "welcome", "web-welcome")
    assert container.loyalty.balance("club", web)["tier"] == "silver"

    survivor = send(
        container, {"type": "identify", "userId": "ada", "traits": {"email": "ada@example.org"}}
    )
    container.loyalty.review_tiers()

    balance = container.loyalty.balance("club", survivor)
    assert balance["available"] == 1080
    assert (balance["tier"], balance["points_in_tier_window"]) == ("gold", 1100)
    assert shop_code in {c["code"] for c in balance["coupons"]}
    assert len(balance["coupons"]) == 2
    # Either id leads to the one member.
    for old in (shop, web):
        assert container.loyalty.balance("club", old)["profile_id"] == survivor
    assert len(container.loyalty.history("club", survivor)["entries"]) == 4
    try:
        container.loyalty.redeem("club", survivor, "welcome", "again")
        raise AssertionError("a reward limited to one per member was bought a third time")
    except RewardUnavailable as refused:
        assert "2 time(s)" in refused.message
    assert container.loyalty.discrepancies("club") == []


def test_spends_racing_a_merge_leave_nothing_on_the_absorbed_profile(container: Container) -> None:
    container.programmes.apply(CLUB)
    shop = send(container, {"type": "identify", "anonymousId": "card-reader-2"})
    web = send(container, {"type": "identify", "userId": "bob"})
    container.loyalty.earn("club", shop, 100, "shop-1")
    container.loyalty.earn("club", web, 100, "web-1")

    def act(i: int) -> None:
        if i == 0:
            send(container, {"type": "identify", "userId": "bob", "anonymousId": "card-reader-2"})
        else:
            container.loyalty.spend("club", shop if i % 2 else web, 10, f"spend-{i}")

    outcomes = at_once(12, act)

    assert outcomes["ok"] == 12
    survivor = container.profiles.lookup("user_id", "bob")
    absorbed = ({shop, web} - {survivor}).pop()
    with container.db.read() as conn:
        left = conn.execute(
            sa.select(sa.func.count()).where(loyalty_entries.c.profile_id == absorbed)
        ).scalar_one()
    assert left == 0
    assert container.loyalty.balance("club", survivor)["available"] == 90
    assert container.loyalty.discrepancies("club") == []


def test_an_explicit_merge_joins_a_shop_and_a_web_account_but_never_two_users(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    container.programmes.apply(CLUB)
    shop = send(
        container, {"type": "identify", "anonymousId": "till-9", "traits": {"loyalty_card": "LC-9"}}
    )
    web = send(container, {"type": "identify", "userId": "eve"})
    other = send(container, {"type": "identify", "userId": "mallory"})
    container.loyalty.earn("club", shop, 700, "shop-1")
    container.loyalty.earn("club", web, 400, "web-1")
    url = "/api/loyalty/members/merge"
    joined = client.post(url, json={"survivor": web, "absorbed": shop}, headers=admin_token)
    assert joined.status_code == 200, joined.text
    assert joined.json() == {"profile_id": web, "merged_ids": [shop]}
    container.loyalty.review_tiers()
    found = client.get("/api/loyalty/programmes/club/members?card=LC-9", headers=admin_token)
    assert (found.json()["profile_id"], found.json()["available"], found.json()["tier"]) == (
        web,
        1100,
        "gold",
    )
    again = client.post(url, json={"survivor": web, "absorbed": shop}, headers=admin_token)
    assert (again.status_code, again.json()["field"]) == (409, "absorbed")
    two = client.post(url, json={"survivor": web, "absorbed": other}, headers=admin_token)
    assert two.status_code == 409
    assert "not one person" in two.json()["message"]
    assert container.loyalty.balance("club", other)["profile_id"] == other


def test_a_movement_that_waited_on_a_merged_member_runs_again_under_the_survivor(
    container: Container, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's single writer runs one transaction at a time: nothing waits")
    container.programmes.apply(CLUB)
    shop = send(container, {"type": "identify", "anonymousId": "till-3"})
    web = send(container, {"type": "identify", "userId": "zoe"})
    container.loyalty.earn("club", shop, 100, "shop-1")
    outcome: list[Any] = []
    with container.db.engine.connect() as conn, conn.begin():
        conn.execute(
            sa.text("SELECT 1 FROM loyalty_accounts WHERE profile_id = :p FOR UPDATE"), {"p": shop}
        )
        spender = threading.Thread(
            target=lambda: outcome.append(container.loyalty.spend("club", shop, 10, "spend-1"))
        )
        spender.start()
        time.sleep(0.3)
        record_merge(conn, Merge(web, shop, [], []), "test", None, container.clock())
    spender.join(10)
    assert outcome and outcome[0]["profile_id"] == web
    assert container.loyalty.balance("club", web)["available"] == 90
    assert container.loyalty.discrepancies("club") == []
