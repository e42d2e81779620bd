"""The rights of the person: export everything held, erase everything held."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.services.bus import Dispatcher, GiveUp, Handler
from ariane.services.inbox import user_token
from ariane.storage import personal_data
from ariane.storage.bus import Entry
from ariane.storage.tables import PERSONAL_DATA, metadata

# Tables that may name a person's ids without being personal data themselves.
NOT_PERSONAL = {"erasure_receipts"}
PERSON_COLUMNS = {"absorbed_id", "user_id", "anonymous_id"}


def holds_a_person(column: sa.Column[Any]) -> bool:
    return "profile" in column.name or column.name in PERSON_COLUMNS


def test_every_table_that_refers_to_a_person_is_personal_data() -> None:
    referring = {
        table.name
        for table in metadata.sorted_tables
        if any(holds_a_person(column) for column in table.columns)
    }
    assert {"events", "identities", "consents", "quarantine", "merges"} <= referring
    missing = referring - NOT_PERSONAL - set(PERSONAL_DATA)
    assert not missing, f"add {sorted(missing)} to PERSONAL_DATA in storage/tables.py"
    for name, link in PERSONAL_DATA.items():
        table = metadata.tables[name]
        column = link.get("profile_column")
        assert column is None or column in table.c, (name, link)
        if "identified_by" in link:
            links = metadata.tables[link["identified_by"]]
            assert {f"{name}_id", "type", "value"} <= set(links.c.keys()), (name, link)
            assert PERSONAL_DATA[links.name] == {"part_of": name}, "the links go with the rows"
    receipt = metadata.tables["erasure_receipts"]
    assert not any(holds_a_person(column) for column in receipt.columns)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def lookup(client: TestClient, headers: dict[str, str], id_type: str, value: str) -> Any:
    return client.get(
        "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=headers
    )


@dataclass
class Person:
    profile_id: str
    absorbed_id: str
    values: list[str]


def build_rich_person(client: TestClient, write_key: str, headers: dict[str, str]) -> Person:
    """Ada, with every kind of row Ariane can hold about a person."""

    def post(path: str, body: dict[str, Any]) -> Any:
        return client.post(path, json=body, headers=basic(write_key))

    # A segment she will enter: memberships, their history, a timer and the outbox.
    segments = client.app.state.container.segments  # type: ignore[attr-defined]
    segments.save_segment(
        "viewers", "", {"event": "Viewed Product", "count": {"gte": 1}, "within": "P30D"}
    )
    # And one whose entry is recorded but not yet applied to its members (segment_changes).
    segments.save_segment("sharers", "", {"event": "Shared", "count": {"gte": 1}})
    # Bob exists first, so that Ada's event carrying Bob's device is refused a merge.
    assert post("/v1/identify", {"userId": "bob-77", "anonymousId": "anon-bob-77"}).is_success
    # Ada browses anonymously, then signs up on another device: two profiles...
    assert post(
        "/v1/track",
        {
            "anonymousId": "anon-ada-1",
            "event": "Viewed Product",
            "context": {"consent": {"categoryPreferences": {"analytics": True}}},
        },
    ).is_success
    assert post(
        "/v1/identify",
        {
            "userId": "ada-42",
            "anonymousId": "anon-ada-2",
            "traits": {"email": "Ada.Lovelace@Example.org", "phone": "+44 20 7946 0958"},
            "context": {"device": {"id": "device-ada-9"}},
        },
    ).is_success
    absorbed = lookup(client, headers, "anonymous_id", "anon-ada-1").json()["id"]
    # ... merged when she logs in on the first device.
    assert post("/v1/identify", {"userId": "ada-42", "anonymousId": "anon-ada-1"}).is_success
    # An event of hers carrying Bob's anonymous id: merging would give one person two
    # user ids, so the identifier is dropped and the decision recorded.
    assert post(
        "/v1/track", {"userId": "ada-42", "anonymousId": "anon-bob-77", "event": "Shared"}
    ).is_success
    # Her invalid events are quarantined, found by userId or anonymousId.
    assert post("/v1/track", {"userId": "ada-42"}).status_code == 400
    assert post("/v1/track", {"anonymousId": "anon-ada-2", "event": 7}).status_code == 400

    profile = lookup(client, headers, "user_id", "ada-42").json()
    assert profile["merged_ids"] == [absorbed]
    consent = client.put(
        f"/api/profiles/{profile['id']}/consents/marketing_email",
        json={"status": "granted"},
        headers=headers,
    )
    assert consent.status_code == 200
    # A loyalty member: an account, the ledger, a lot and what a spend took from it, a
    # reward bought and its coupon burned.
    club = {
        "rewards": [{"id": "gift", "cost": 10, "pool": "gifts"}],
        "coupon_pools": [{"id": "gifts", "generate": {"count": 2}}],
        "earn_rules": [{"id": "buy", "event": "Order Completed", "points_per_unit": 1}],
    }
    assert client.put("/api/loyalty/programmes/club", json=club, headers=headers).status_code == 200
    member = f"/api/loyalty/programmes/club/members/{profile['id']}"
    for action, body, key in [
        ("earn", {"points": 100}, "ada-order-1"),
        ("spend", {"points": 30}, "ada-spend-1"),
        (
            "events",
            {"event": "Order Completed", "properties": {"order_id": "A-1", "revenue": 5}},
            "ada-sale-1",
        ),
        ("redeem", {"reward": "gift"}, "ada-reward-1"),
    ]:
        done = client.post(
            f"{member}/{action}", json=body, headers={**headers, "Idempotency-Key": key}
        )
        assert done.status_code == 200, done.text
    code = done.json()["coupon"]["code"]
    burned = client.post(
        f"/api/loyalty/coupons/{code}/burn",
        json={"channel": "till"},
        headers={**headers, "Idempotency-Key": "till-1"},
    )
    assert burned.status_code == 200, burned.text
    container = client.app.state.container  # type: ignore[attr-defined]
    # In a journey: her enrollment, what its steps did, a message in her in-app inbox,
    # and the goal she reached; and a browser's push subscription.
    journey = {
        "channels": [{"name": "in-app", "type": "inbox", "purpose": "marketing_app"}],
        "templates": [{"name": "hi", "subject": "Hi", "text": "Hello {{ traits.email }}"}],
        "journeys": [
            {
                "id": "welcome",
                "entry": {"api": True},
                "goal": {"event": "Checked Out", "within": "P30D"},
                "steps": [
                    {"send": {"channel": "in-app", "template": "hi", "category": "transactional"}},
                    {"wait": {"event": "Never", "timeout": "P30D"}},
                ],
            }
        ],
    }
    assert client.post("/api/journeys", json=journey, headers=headers).status_code == 200
    entered = client.post(
        "/api/journeys/welcome/enrollments", json={"profile_id": profile["id"]}, headers=headers
    )
    assert entered.status_code == 200, entered.text
    container.bus.drain()
    assert post("/v1/track", {"userId": "ada-42", "event": "Checked Out"}).is_success
    container.bus.drain()
    container.inbox.secret = "inbox-s3cret"
    subscribed = client.post(
        "/v1/push/subscriptions",
        json={"endpoint": "https://push.example/ada", "keys": {"p256dh": "k", "auth": "a"}},
        headers={
            "X-Ariane-User": "ada-42",
            "X-Ariane-User-Token": user_token("inbox-s3cret", "ada-42"),
        },
    )
    assert subscribed.status_code == 200, subscribed.text
    # What a handler of the bus gave up on about her, parked.

    def refuse(_: Sequence[Entry]) -> None:
        raise GiveUp("the receiver refused it")

    refuser = Handler("refuser", "events", refuse)
    Dispatcher(container.db, container.clock, lambda: [refuser]).drain()
    as_sent = ["Ada.Lovelace@Example.org", "+44 20 7946 0958"]
    values = [i["value"] for i in profile["identities"]] + as_sent
    assert len(values) == 8
    return Person(profile["id"], absorbed, values)


def every_value(container: Container) -> dict[str, list[str]]:
    """The text of every row of every table the database holds, by table."""
    reflected = sa.MetaData()
    found: dict[str, list[str]] = {}
    with container.db.read() as conn:
        reflected.reflect(conn)
        for table in reflected.sorted_tables:
            found[table.name] = [
                orjson.dumps(list(row), default=str).decode()
                for row in conn.execute(sa.select(table))
            ]
    return found


def mentions(rows: Iterable[str], needles: Iterable[str]) -> list[str]:
    needles = list(needles)
    return [row for row in rows if any(needle in row for needle in needles)]


def test_export_then_erase_a_rich_profile(
    client: TestClient, write_key: str, admin_token: dict[str, str], container: Container
) -> None:
    ada = build_rich_person(client, write_key, admin_token)
    ada_marks = [ada.profile_id, ada.absorbed_id, *ada.values]
    bob = lookup(client, admin_token, "user_id", "bob-77").json()
    bob_events = client.get(f"/api/profiles/{bob['id']}/events", headers=admin_token).json()

    exported = client.get(f"/api/profiles/{ada.absorbed_id}/export", headers=admin_token)
    assert exported.status_code == 200, exported.text
    export = exported.json()
    assert export["profile_id"] == ada.profile_id
    assert set(export["data"]) == set(PERSONAL_DATA)
    for name in PERSONAL_DATA:
        assert export["data"][name], f"the export has no {name} rows"
    assert {row["id"] for row in export["data"]["profiles"]} == {ada.profile_id, ada.absorbed_id}
    assert [row["absorbed_id"] for row in export["data"]["merges"]] == [ada.absorbed_id]
    assert {row["payload"].get("event") for row in export["data"]["quarantine"]} == {None, 7}
    assert [row["identifier_value"] for row in export["data"]["identity_decisions"]] == [
        "anon-bob-77"
    ]
    assert {row["purpose"] for row in export["data"]["consents"]} == {
        "analytics",
        "marketing_email",
    }
    exported_text = orjson.dumps(export["data"]).decode()
    assert all(mark in exported_text for mark in ada_marks)

    # The scan below sees Ada in every personal-data table before the erasure.
    before = every_value(container)
    for name in PERSONAL_DATA:
        assert mentions(before[name], ada_marks), name

    erased = client.delete(f"/api/profiles/{ada.profile_id}", headers=admin_token)
    assert erased.status_code == 200, erased.text
    receipt = erased.json()
    assert set(receipt) == {"id", "erased_at", "requested_by", "counts"}
    assert receipt["counts"]["profiles"] == 2
    # Her events, as exported (what she sent, and what loyalty and her journey put on
    # her timeline); her two Audience Entered are the entry in her history and the one
    # recorded but not yet applied.
    assert receipt["counts"]["events"] == len(export["data"]["events"]) > 4
    assert receipt["counts"]["segment_history"] == 1
    assert receipt["counts"]["segment_changes"] == 1
    assert receipt["counts"]["quarantine"] == 2
    assert receipt["counts"]["merges"] == 1

    after = every_value(container)
    leftovers = {name: mentions(rows, ada_marks) for name, rows in after.items()}
    assert not any(leftovers.values()), leftovers
    assert len(after["erasure_receipts"]) == 1

    for pid in (ada.profile_id, ada.absorbed_id):
        gone = client.get(f"/api/profiles/{pid}", headers=admin_token)
        assert gone.status_code == 404
        assert gone.json()["code"] == "not_found"
    assert lookup(client, admin_token, "email", "ada.lovelace@example.org").status_code == 404
    assert client.delete(f"/api/profiles/{ada.profile_id}", headers=admin_token).status_code == 404

    # Bob, whose id Ada's data mentioned, keeps everything of his own.
    assert client.get(f"/api/profiles/{bob['id']}", headers=admin_token).json() == bob
    assert client.get(f"/api/profiles/{bob['id']}/events", headers=admin_token).json() == bob_events


def test_a_person_who_comes_back_after_erasure_starts_afresh(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    identify = {"userId": "again", "traits": {"plan": "pro"}}
    assert client.post("/v1/identify", json=identify, headers=basic(write_key)).is_success
    first = lookup(client, admin_token, "user_id", "again").json()
    assert client.delete(f"/api/profiles/{first['id']}", headers=admin_token).status_code == 200
    track = {"userId": "again", "event": "Returned"}
    assert client.post("/v1/track", json=track, headers=basic(write_key)).is_success
    second = lookup(client, admin_token, "user_id", "again").json()
    assert second["id"] != first["id"]
    assert second["traits"] == {}
    assert second["computed"]["event_counts"] == {"Returned": 1}


def test_export_and_erase_of_an_unknown_profile_are_404(
    client: TestClient, admin_token: dict[str, str], container: Container
) -> None:
    assert client.get("/api/profiles/nobody/export", headers=admin_token).status_code == 404
    response = client.delete("/api/profiles/nobody", headers=admin_token)
    assert response.status_code == 404
    assert response.json()["field"] == "profile_id"
    assert every_value(container)["erasure_receipts"] == []


def test_decisions_about_the_persons_identifiers_go_with_them(
    client: TestClient, write_key: str, admin_token: dict[str, str], container: Container
) -> None:
    """Carol's event carried Ada's anonymous id, refused because Ada is someone else.

    The refusal names Ada's identifier, so it is erased with Ada; Carol's event stays,
    since it is Carol's.
    """
    for body in (
        {"userId": "ada-1", "anonymousId": "shared-browser"},
        {"userId": "carol-1", "anonymousId": "shared-browser"},
    ):
        assert client.post("/v1/identify", json=body, headers=basic(write_key)).is_success
    ada = lookup(client, admin_token, "user_id", "ada-1").json()
    carol = lookup(client, admin_token, "user_id", "carol-1").json()

    def decisions() -> list[str]:
        return every_value(container)["identity_decisions"]

    assert len(mentions(decisions(), [carol["id"]])) == 1
    assert client.delete(f"/api/profiles/{ada['id']}", headers=admin_token).status_code == 200
    assert decisions() == []
    carol_events = client.get(f"/api/profiles/{carol['id']}/events", headers=admin_token).json()
    assert [e["anonymousId"] for e in carol_events["events"]] == ["shared-browser"]


def test_invalid_events_naming_the_person_in_any_way_go_with_them(
    client: TestClient, write_key: str, admin_token: dict[str, str], container: Container
) -> None:
    known = {
        "type": "identify",
        "userId": "cleo-1",
        "traits": {"email": "Cleo@Example.org", "phone": "+33 6 12 34 56 78"},
        "context": {"device": {"id": "cleo-phone"}, "externalIds": [{"id": "C-9", "type": "crm"}]},
    }
    assert (
        client.post("/v1/batch", json={"batch": [known]}, headers=basic(write_key)).status_code
        == 200
    )
    rejected = [
        # No userId nor anonymousId: invalid, yet it names Cleo by her email.
        {"type": "track", "event": "Opened", "context": {"traits": {"email": "cleo@example.org "}}},
        # A track without a name, known by the phone in its properties.
        {"type": "track", "anonymousId": "new-tab", "properties": {"phone": "+33612345678"}},
        # A malformed context, but a device id and an external id Cleo holds.
        {"type": "launch", "anonymousId": "x-1", "context": {"device": {"id": "cleo-phone"}}},
        {
            "type": "page",
            "anonymousId": "x-2",
            "timestamp": "soon",
            "context": {"externalIds": [{"id": "C-9", "type": "crm"}]},
        },
        # Somebody else's invalid event stays.
        {"type": "track", "userId": "dan-2"},
        # One naming both goes with Cleo (it holds her data), but her export shows her links.
        {"type": "track", "userId": "dan-2", "context": {"traits": {"email": "cleo@example.org"}}},
    ]
    client.post("/v1/batch", json={"batch": rejected}, headers=basic(write_key))
    assert len(client.get("/api/quarantine", headers=admin_token).json()["events"]) == 6

    cleo = lookup(client, admin_token, "user_id", "cleo-1").json()
    export = client.get(f"/api/profiles/{cleo['id']}/export", headers=admin_token).json()
    assert len(export["data"]["quarantine"]) == 5
    assert ("user_id", "dan-2") not in {
        (link["type"], link["value"]) for link in export["data"]["quarantine_identifiers"]
    }

    erased = client.delete(f"/api/profiles/{cleo['id']}", headers=admin_token).json()
    assert erased["counts"]["quarantine"] == 5
    left = client.get("/api/quarantine", headers=admin_token).json()["events"]
    assert [q["user_id"] for q in left] == ["dan-2"]
    after = every_value(container)
    assert not mentions(after["quarantine_identifiers"], ["cleo", "+33612345678", "C-9"])
    assert mentions(after["quarantine_identifiers"], ["dan-2"])


def test_erasure_and_export_work_in_bounded_chunks(
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    container: Container,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PostgreSQL takes at most 65,535 parameters a statement: a person named by more
    # quarantined events than that is erased chunk by chunk. Tiny chunks prove the logic.
    monkeypatch.setattr(personal_data, "_CHUNK", 3)
    anonymous = [f"eve-device-{n}" for n in range(5)]
    known = [{"type": "identify", "userId": "eve", "anonymousId": a} for a in anonymous]
    client.post("/v1/batch", json={"batch": known}, headers=basic(write_key))
    rejected = [{"type": "track", "anonymousId": anonymous[n % 5]} for n in range(10)]
    rejected.append({"type": "track", "userId": "not-eve"})
    client.post("/v1/batch", json={"batch": rejected}, headers=basic(write_key))

    eve = lookup(client, admin_token, "user_id", "eve").json()
    export = client.get(f"/api/profiles/{eve['id']}/export", headers=admin_token).json()
    assert len(export["data"]["quarantine"]) == 10
    assert len(export["data"]["identities"]) == 6
    erased = client.delete(f"/api/profiles/{eve['id']}", headers=admin_token).json()
    assert erased["counts"]["quarantine"] == 10
    assert erased["counts"]["quarantine_identifiers"] == 10
    left = client.get("/api/quarantine", headers=admin_token).json()["events"]
    assert [q["user_id"] for q in left] == ["not-eve"]
