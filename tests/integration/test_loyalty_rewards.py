"""Programmes as code, rewards bought with points, and coupons burned from any channel,
on both databases: applied twice, a programme changes nothing; one code never goes to
two members; one coupon is burned once however many tills try at once."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container, build
from ariane.domain.clock import iso
from ariane.domain.errors import Conflict, NotFound
from ariane.domain.loyalty import NotEnoughPoints
from ariane.services.coupons import CouponUnusable
from ariane.services.redemptions import RewardUnavailable
from ariane.settings import Settings
from ariane.storage.tables import loyalty_coupon_uses, loyalty_entries, loyalty_redemptions
from tests.conftest import FakeClock
from tests.integration.test_loyalty_ledger import at_once, member

CLUB: dict[str, Any] = {
    "id": "club",
    "name": "Club Bijoux",
    "expiry": {"validity": "P365D"},
    "rewards": [
        {"id": "voucher", "cost": 100, "per_member": 2, "pool": "vouchers"},
        {"id": "tote", "cost": 50, "stock": 5},
        {"id": "ring", "cost": 10, "pool": "rings", "coupon_validity": "P30D"},
        {
            "id": "xmas",
            "cost": 10,
            "valid_from": "2026-12-01T00:00:00Z",
            "valid_until": "2026-12-25T00:00:00Z",
        },
    ],
    "coupon_pools": [
        {"id": "vouchers", "generate": {"count": 10, "prefix": "BJX-", "length": 8}},
        {"id": "rings"},
    ],
}


@pytest.fixture
def club(container: Container) -> dict[str, Any]:
    return container.programmes.apply(CLUB)[0]


def rich(container: Container, user_id: str, points: int = 1_000) -> str:
    found = member(container, user_id)
    container.loyalty.earn("club", found, points, f"{user_id}-welcome")
    return found


def test_a_programme_applied_twice_changes_nothing_the_second_time(
    container: Container,
) -> None:
    first = container.programmes.apply(CLUB)
    assert first == [
        {"id": "club", "change": "created", "version": 1, "codes_generated": {"vouchers": 10}}
    ]
    again = container.programmes.apply(CLUB)
    assert again == [
        {"id": "club", "change": "unchanged", "version": 1, "codes_generated": {"vouchers": 0}}
    ]
    bigger = {**CLUB, "coupon_pools": [{"id": "vouchers", "generate": {"count": 15}}]}
    bigger["rewards"] = [r for r in CLUB["rewards"] if r["id"] == "voucher"]
    changed = container.programmes.apply(bigger)
    assert changed[0]["change"] == "updated"
    assert changed[0]["version"] == 2
    assert changed[0]["codes_generated"] == {"vouchers": 5}
    shown = container.programmes.get("club")
    assert shown["coupon_pools"] == {"vouchers": {"free": 15, "issued": 0, "burned": 0}}
    assert shown["definition"]["rewards"][0] == {
        "id": "voucher",
        "name": "voucher",
        "cost": 100,
        "per_member": 2,
        "pool": "vouchers",
    }


def test_a_reward_is_paid_in_points_and_hands_out_a_code_once_per_purchase(
    container: Container, club: dict[str, Any]
) -> None:
    ada = rich(container, "ada", 240)
    bought = container.loyalty.redeem("club", ada, "voucher", "ada-voucher-1")
    code = bought["coupon"]["code"]
    assert code.startswith("BJX-") and len(code) == 12
    assert (bought["points"], bought["reward"], bought["profile_id"]) == (100, "voucher", ada)
    # Replayed: the same code, nothing more spent.
    assert container.loyalty.redeem("club", ada, "voucher", "ada-voucher-1") == bought
    balance = container.loyalty.balance("club", ada)
    assert balance["available"] == 140
    assert [c["code"] for c in balance["coupons"]] == [code]

    second = container.loyalty.redeem("club", ada, "voucher", "ada-voucher-2")
    assert second["coupon"]["code"] != code
    with pytest.raises(RewardUnavailable) as limit:
        container.loyalty.redeem("club", ada, "voucher", "ada-voucher-3")
    assert (limit.value.field, limit.value.code) == ("reward", "reward_unavailable")
    assert "as often as one member may" in limit.value.message
    with pytest.raises(NotEnoughPoints):
        container.loyalty.redeem("club", ada, "tote", "ada-tote-1")
    # Refused, nothing was recorded: the key is free for a retry.
    container.loyalty.earn("club", ada, 10, "ada-top-up")
    assert container.loyalty.redeem("club", ada, "tote", "ada-tote-1")["coupon"] is None
    assert container.loyalty.discrepancies("club", ada) == []


def test_a_reward_out_of_codes_or_off_offer_is_refused_and_nothing_is_spent(
    container: Container, club: dict[str, Any], clock: FakeClock
) -> None:
    ada = rich(container, "ada")
    with pytest.raises(RewardUnavailable) as empty:
        container.loyalty.redeem("club", ada, "ring", "ada-ring-1")
    assert "no codes left in pool 'rings'" in empty.value.message
    with pytest.raises(RewardUnavailable) as early:
        container.loyalty.redeem("club", ada, "xmas", "ada-xmas-1")
    assert "not now" in early.value.message
    with pytest.raises(NotFound) as unknown:
        container.loyalty.redeem("club", ada, "yacht", "ada-yacht-1")
    assert unknown.value.field == "reward"
    assert container.loyalty.balance("club", ada)["available"] == 1_000
    with container.db.read() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(loyalty_redemptions)).scalar() == 0
        )

    container.programmes.import_codes("club", "rings", ["RING-1"])
    bought = container.loyalty.redeem("club", ada, "ring", "ada-ring-1")
    assert bought["coupon"] == {"code": "RING-1", "expires_at": clock() + timedelta(days=30)}


def test_codes_imported_twice_are_kept_once_and_a_code_of_another_pool_is_refused(
    container: Container, club: dict[str, Any]
) -> None:
    added = container.programmes.import_codes("club", "rings", ["R-1", "R-2", "R-2"])
    assert added == {"added": 2, "already_there": 0, "free": 2, "issued": 0, "burned": 0}
    again = container.programmes.import_codes("club", "rings", ["R-2", "R-3"])
    assert (again["added"], again["already_there"], again["free"]) == (1, 1, 3)
    voucher = container.programmes.get("club")
    assert voucher["coupon_pools"]["rings"]["free"] == 3
    container.programmes.apply({"id": "staff", "coupon_pools": [{"id": "perks"}]})
    with pytest.raises(Conflict) as clash:
        container.programmes.import_codes("staff", "perks", ["P-1", "R-1"])
    assert clash.value.field == "codes"
    assert "'R-1'" in clash.value.message
    assert container.programmes.get("staff")["coupon_pools"]["perks"]["free"] == 0


def test_a_hundred_members_buying_ten_codes_at_once_get_ten_distinct_codes(
    container: Container, club: dict[str, Any]
) -> None:
    members = [rich(container, f"m{i}") for i in range(100)]

    bought: list[str] = []

    def buy(i: int) -> None:
        bought.append(
            container.loyalty.redeem("club", members[i], "voucher", f"buy-{i}")["coupon"]["code"]
        )

    outcomes = at_once(100, buy)

    assert outcomes == Counter({"ok": 10, "RewardUnavailable": 90})
    assert len(set(bought)) == 10
    assert container.programmes.get("club")["coupon_pools"]["vouchers"]["issued"] == 10
    # The 90 refused spent nothing.
    with container.db.read() as conn:
        spends = conn.execute(
            sa.select(sa.func.count()).where(loyalty_entries.c.kind == "spend")
        ).scalar_one()
    assert spends == 10
    assert container.loyalty.discrepancies("club") == []


def test_a_hundred_members_buying_a_stock_of_five_at_once_get_five(
    container: Container, club: dict[str, Any]
) -> None:
    members = [rich(container, f"m{i}") for i in range(100)]

    outcomes = at_once(
        100, lambda i: container.loyalty.redeem("club", members[i], "tote", f"t-{i}")
    )

    assert outcomes == Counter({"ok": 5, "RewardUnavailable": 95})
    assert container.programmes.get("club")["stock_issued"] == {"tote": 5}


def issued(container: Container, user_id: str = "ada") -> str:
    ada = rich(container, user_id)
    code: str = container.loyalty.redeem("club", ada, "voucher", f"{user_id}-v")["coupon"]["code"]
    return code


def test_a_coupon_burns_once_and_a_rollback_puts_it_back(
    container: Container, club: dict[str, Any], clock: FakeClock
) -> None:
    coupons = container.coupons
    code = issued(container)
    burned = coupons.burn(code, "till-7/R-1", channel="till", location="paris-04", reference="R-1")
    assert burned["status"] == "burned"
    assert burned["burn"] == {
        "at": clock(),
        "channel": "till",
        "location": "paris-04",
        "reference": "R-1",
    }
    clock.advance(minutes=5)
    assert coupons.burn(code, "till-7/R-1", channel="till", location="paris-04") == burned
    with pytest.raises(CouponUnusable) as twice:
        coupons.burn(code, "web/order-9", channel="web")
    assert twice.value.field == "code"
    assert f"burned at {iso(burned['burn']['at'])} on till at paris-04 (reference R-1)" in (
        twice.value.message
    )

    back = coupons.rollback(code, "till-7/R-1/cancel", reference="R-1 cancelled")
    assert back["status"] == "issued"
    assert coupons.rollback(code, "till-7/R-1/cancel") == back
    with pytest.raises(CouponUnusable) as nothing:
        coupons.rollback(code, "till-7/R-1/cancel-again")
    assert "nothing to roll back" in nothing.value.message
    again = coupons.burn(code, "web/order-9", channel="web")
    assert again["burn"]["channel"] == "web"
    # The first burn's key still answers what it answered first.
    assert coupons.burn(code, "till-7/R-1", channel="till") == burned
    with pytest.raises(Conflict) as reused:
        coupons.rollback(code, "web/order-9")
    assert reused.value.field == "Idempotency-Key"
    with container.db.read() as conn:
        kinds = conn.execute(
            sa.select(loyalty_coupon_uses.c.kind).order_by(loyalty_coupon_uses.c.id)
        ).scalars()
        assert list(kinds) == ["burn", "rollback", "burn"]


def test_a_coupon_not_issued_expired_or_unknown_is_refused(
    container: Container, club: dict[str, Any], clock: FakeClock
) -> None:
    with container.db.read() as conn:
        free = conn.execute(sa.text("SELECT code FROM loyalty_coupons LIMIT 1")).scalar_one()
    with pytest.raises(CouponUnusable) as unissued:
        container.coupons.burn(free, "k1", channel="till")
    assert "has not been issued" in unissued.value.message
    with pytest.raises(NotFound):
        container.coupons.burn("NOPE-1", "k2", channel="till")
    ada = rich(container, "ada")
    container.programmes.import_codes("club", "rings", ["RING-1"])
    ring = container.loyalty.redeem("club", ada, "ring", "ada-ring")["coupon"]["code"]
    clock.advance(days=30)
    with pytest.raises(CouponUnusable) as late:
        container.coupons.burn(ring, "k3", channel="web")
    assert "expired" in late.value.message


def test_a_hundred_burns_at_once_of_one_coupon_give_one_success(
    container: Container, club: dict[str, Any]
) -> None:
    code = issued(container)

    outcomes = at_once(100, lambda i: container.coupons.burn(code, f"till-{i}", channel="till"))

    assert outcomes == Counter({"ok": 1, "CouponUnusable": 99})
    with container.db.read() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(loyalty_coupon_uses)).scalar() == 1
        )


def test_a_hundred_burns_at_once_with_one_key_all_get_the_first_answer(
    container: Container, club: dict[str, Any]
) -> None:
    code = issued(container)
    answers: list[Any] = []

    outcomes = at_once(
        100, lambda _: answers.append(container.coupons.burn(code, "till-1", channel="till"))
    )

    assert outcomes == Counter({"ok": 100})
    assert all(answer == answers[0] for answer in answers)
    with container.db.read() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(loyalty_coupon_uses)).scalar() == 1
        )


def test_the_api_burns_with_an_idempotency_key_and_answers_409_naming_the_first_burn(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    put = client.put("/api/loyalty/programmes/club", json=CLUB, headers=admin_token)
    assert put.status_code == 200, put.text
    code = issued(container)
    url = f"/api/loyalty/coupons/{code}/burn"
    body = {"channel": "till", "location": "lyon-02"}
    missing = client.post(url, json=body, headers=admin_token)
    assert missing.status_code == 422
    assert missing.json()["field"] == "Idempotency-Key"
    first = client.post(url, json=body, headers={**admin_token, "Idempotency-Key": "a"})
    assert first.status_code == 200, first.text
    replay = client.post(url, json=body, headers={**admin_token, "Idempotency-Key": "a"})
    assert (replay.status_code, replay.json()) == (200, first.json())
    second = client.post(
        url, json={"channel": "web"}, headers={**admin_token, "Idempotency-Key": "b"}
    )
    assert second.status_code == 409
    assert second.json()["code"] == "coupon_unusable"
    assert "on till at lyon-02" in second.json()["message"]
    back = client.post(
        f"/api/loyalty/coupons/{code}/rollback", headers={**admin_token, "Idempotency-Key": "c"}
    )
    assert (back.status_code, back.json()["status"]) == (200, "issued")
    shown = client.get(f"/api/loyalty/coupons/{code}", headers=admin_token)
    assert (shown.status_code, shown.json()["status"]) == (200, "issued")


def test_the_api_reads_replaces_and_checks_a_programme_naming_the_faulty_key(
    client: TestClient, admin_token: dict[str, str], analyst_token: dict[str, str]
) -> None:
    url = "/api/loyalty/programmes/club"
    assert client.get(url, headers=analyst_token).status_code == 404
    assert client.put(url, json=CLUB, headers=analyst_token).status_code == 403
    bad = {**CLUB, "rewards": [{"id": "voucher", "cost": -5}]}
    refused = client.put(url, json=bad, headers=admin_token)
    assert refused.status_code == 422
    assert refused.json()["field"] == "rewards[0].cost"
    other = client.put(url, json={**CLUB, "id": "shop"}, headers=admin_token)
    assert (other.status_code, other.json()["field"]) == (422, "id")
    assert client.put(url, json=CLUB, headers=admin_token).json()["change"] == "created"
    shown = client.get(url, headers=analyst_token).json()
    assert shown["definition"]["name"] == "Club Bijoux"
    assert shown["coupon_pools"]["vouchers"]["free"] == 10
    assert [
        p["id"] for p in client.get("/api/loyalty/programmes", headers=analyst_token).json()
    ] == ["club"]


def test_the_api_moves_points_with_an_idempotency_key(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    client.put("/api/loyalty/programmes/club", json=CLUB, headers=admin_token)
    ada = member(container, "ada")
    url = f"/api/loyalty/programmes/club/members/{ada}"
    key = {**admin_token, "Idempotency-Key": "till-3/R-88"}
    earned = client.post(f"{url}/earn", json={"points": 120, "reference": "R-88"}, headers=key)
    assert earned.status_code == 200, earned.text
    assert client.post(f"{url}/earn", json={"points": 120}, headers=key).json() == earned.json()
    no_key = client.post(f"{url}/spend", json={"points": 10}, headers=admin_token)
    assert (no_key.status_code, no_key.json()["field"]) == (422, "Idempotency-Key")
    too_much = client.post(
        f"{url}/spend", json={"points": 500}, headers={**admin_token, "Idempotency-Key": "s1"}
    )
    assert (too_much.status_code, too_much.json()["code"]) == (409, "not_enough_points")
    bought = client.post(
        f"{url}/redeem",
        json={"reward": "voucher"},
        headers={**admin_token, "Idempotency-Key": "r1"},
    )
    assert bought.status_code == 200, bought.text
    balance = client.get(url, headers=admin_token).json()
    assert balance["available"] == 20
    assert balance["coupons"][0]["code"] == bought.json()["coupon"]["code"]
    history = client.get(f"{url}/history?limit=1", headers=admin_token).json()
    assert [e["kind"] for e in history["entries"]] == ["spend"]
    rest = client.get(f"{url}/history?cursor={history['next_cursor']}", headers=admin_token).json()
    assert [(e["kind"], e["points"]) for e in rest["entries"]] == [("earn", 120)]


def test_a_till_finds_the_member_by_card_email_or_phone(
    client: TestClient, container: Container, write_key: str, admin_token: dict[str, str]
) -> None:
    client.put("/api/loyalty/programmes/club", json=CLUB, headers=admin_token)
    traits = {"email": "Ada@Example.org", "phone": "+33 6 12 34 56 78", "loyalty_card": "LC-42"}
    sent = client.post(
        "/v1/identify", json={"userId": "ada", "traits": traits}, auth=(write_key, "")
    )
    assert sent.status_code == 200
    ada = container.profiles.lookup("user_id", "ada")
    container.loyalty.earn("club", ada, 70, "ada-welcome")
    url = "/api/loyalty/programmes/club/members"
    for query in ("card=LC-42", "email=ada@example.org", "phone=%2B33612345678"):
        found = client.get(f"{url}?{query}", headers=admin_token)
        assert found.status_code == 200, found.text
        assert (found.json()["profile_id"], found.json()["available"]) == (ada, 70)
    unknown = client.get(f"{url}?card=LC-43", headers=admin_token)
    assert unknown.status_code == 404
    both = client.get(f"{url}?card=LC-42&email=ada@example.org", headers=admin_token)
    assert (both.status_code, both.json()["field"]) == (422, "card")


def test_a_purchase_replayed_after_the_programme_changed_gives_the_first_answer(
    container: Container, club: dict[str, Any]
) -> None:
    ada = rich(container, "ada")
    bought = container.loyalty.redeem("club", ada, "voucher", "k1")
    dearer = {**CLUB, "rewards": [{**CLUB["rewards"][0], "cost": 120}]}
    container.programmes.apply(dearer)
    assert container.loyalty.redeem("club", ada, "voucher", "k1") == bought
    container.programmes.apply({**CLUB, "rewards": []})
    assert container.loyalty.redeem("club", ada, "voucher", "k1") == bought
    # A plain spend is not the purchase, even of as many points.
    with pytest.raises(Conflict) as reused:
        container.loyalty.spend("club", ada, 100, "k1")
    assert reused.value.field == "Idempotency-Key"
    assert "the purchase of reward 'voucher'" in reused.value.message
    with pytest.raises(Conflict):
        container.loyalty.redeem("club", ada, "ring", "k1")
    assert container.loyalty.balance("club", ada)["available"] == 900


def test_a_programme_changed_by_another_process_is_in_force_at_once_here(
    container: Container, club: dict[str, Any], settings: Settings, clock: FakeClock
) -> None:
    """Each process keeps the programme it parsed, for as long as its version is the
    one in the database: a change made elsewhere holds for the next movement here."""
    ada = rich(container, "ada")
    container.loyalty.redeem("club", ada, "voucher", "k1")
    other = build(settings, clock=clock)
    try:
        dearer = {**CLUB, "rewards": [{**CLUB["rewards"][0], "cost": 120}]}
        other.programmes.apply(dearer)
        container.loyalty.redeem("club", ada, "voucher", "k2")
        assert container.loyalty.balance("club", ada)["available"] == 1_000 - 100 - 120
        other.programmes.apply({**CLUB, "rewards": []})
        with pytest.raises(NotFound):
            container.loyalty.redeem("club", ada, "voucher", "k3")
    finally:
        other.close()


def test_codes_are_found_in_any_case_and_a_malformed_one_is_no_coupon(
    container: Container, club: dict[str, Any], clock: FakeClock
) -> None:
    container.programmes.import_codes("club", "rings", ["Ring-Gold-1"])
    assert container.programmes.import_codes("club", "rings", ["RING-GOLD-1"])["added"] == 0
    ada = rich(container, "ada")
    code = container.loyalty.redeem("club", ada, "ring", "r1")["coupon"]["code"]
    assert code == "RING-GOLD-1"
    assert container.coupons.show("ring-gold-1")["status"] == "issued"
    with pytest.raises(NotFound):
        container.coupons.burn("ring gold", "k", channel="till")
    clock.advance(days=30)
    assert container.coupons.show(code)["status"] == "expired"
    assert container.loyalty.balance("club", ada)["coupons"][0]["status"] == "expired"


def test_the_last_page_of_history_says_so(container: Container, club: dict[str, Any]) -> None:
    ada = rich(container, "ada")
    container.loyalty.spend("club", ada, 1, "s1")
    page = container.loyalty.history("club", ada, limit=2)
    assert len(page["entries"]) == 2
    assert page["next_cursor"] is None


def test_the_same_programme_applied_at_once_makes_one_version(container: Container) -> None:
    outcomes = at_once(8, lambda _: container.programmes.apply(CLUB))
    assert outcomes == Counter({"ok": 8})
    shown = container.programmes.get("club")
    assert shown["version"] == 1
    assert shown["coupon_pools"]["vouchers"]["free"] == 10


def test_a_buyer_waits_for_a_code_another_holds_rather_than_be_told_none_is_left(
    container: Container, club: dict[str, Any], db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's single writer holds no row another could wait for")
    ada = rich(container, "ada")
    container.programmes.import_codes("club", "rings", ["RING-1"])
    holder = sa.create_engine(db_url)
    released = threading.Event()

    def hold() -> None:
        with holder.begin() as conn:
            conn.execute(sa.text("SELECT id FROM loyalty_coupons WHERE code = 'RING-1' FOR UPDATE"))
            held.set()
            released.wait(10)

    held = threading.Event()
    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    threading.Timer(0.3, released.set).start()
    try:
        bought = container.loyalty.redeem("club", ada, "ring", "r1")
    finally:
        released.set()
        thread.join()
        holder.dispose()
    assert bought["coupon"]["code"] == "RING-1"
