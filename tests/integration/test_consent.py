"""Consent per purpose, from events and from the admin API, on both databases."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Connection

from ariane.bootstrap import Container
from ariane.domain.errors import NotFound
from ariane.domain.identity import Merge
from ariane.storage import personal_data
from ariane.storage import profiles as profile_store
from ariane.storage.tables import consents as consent_rows
from tests.conftest import FakeClock


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def send(client: TestClient, write_key: str, kind: str, **event: Any) -> None:
    response = client.post(f"/v1/{kind}", json=event, headers=basic(write_key))
    assert response.status_code == 200, response.text


def preferences(**purposes: bool) -> dict[str, Any]:
    return {"consent": {"categoryPreferences": purposes}}


def profile_id(client: TestClient, headers: dict[str, str], user_id: str) -> str:
    found = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": user_id}, headers=headers
    )
    assert found.status_code == 200, found.text
    pid: str = found.json()["id"]
    return pid


def consents(client: TestClient, headers: dict[str, str], pid: str) -> Any:
    response = client.get(f"/api/profiles/{pid}/consents", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_events_record_only_changes_of_consent(
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    container: Container,
    clock: FakeClock,
) -> None:
    source_id = container.access.list_sources()[0].id
    for _ in range(3):
        send(
            client,
            write_key,
            "track",
            userId="c1",
            event="Visit",
            context=preferences(marketing_email=True, analytics=False),
        )
        clock.advance(minutes=1)
    send(client, write_key, "page", userId="c1", context=preferences(marketing_email=False))
    pid = profile_id(client, admin_token, "c1")

    body = consents(client, admin_token, pid)
    history = [(h["purpose"], h["status"], h["source"]) for h in body["history"]]
    assert history == [
        ("marketing_email", "granted", source_id),
        ("analytics", "denied", source_id),
        ("marketing_email", "denied", source_id),
    ]
    assert body["current"]["marketing_email"]["status"] == "denied"
    assert body["current"]["analytics"]["granted"] is False
    view = client.get(f"/api/profiles/{pid}", headers=admin_token).json()
    assert view["consents"] == body["current"]


def test_a_consent_decided_again_at_the_same_moment_is_stored_not_a_500(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    # Events without a timestamp are dated at their receipt: a batch's all at once.
    batch = [
        {"type": "track", "userId": "c1", "event": "Visit", "context": preferences(email=given)}
        for given in (True, False, True)
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key))
    assert response.status_code == 200, response.text
    pid = profile_id(client, admin_token, "c1")
    history = consents(client, admin_token, pid)["history"]
    assert [h["status"] for h in history] == ["granted", "denied", "granted"]
    for _ in range(2):
        put = client.put(
            f"/api/profiles/{pid}/consents/sms", json={"status": "granted"}, headers=admin_token
        )
        assert put.status_code == 200, put.text


def test_a_late_event_does_not_override_a_newer_decision(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    send(
        client, write_key, "track", userId="late", event="Now", context=preferences(analytics=True)
    )
    an_hour_ago = (clock.now - timedelta(hours=1)).isoformat()
    send(
        client,
        write_key,
        "track",
        userId="late",
        event="Old",
        timestamp=an_hour_ago,
        context=preferences(analytics=False),
    )
    body = consents(client, admin_token, profile_id(client, admin_token, "late"))
    assert [h["status"] for h in body["history"]] == ["granted"]
    assert body["current"]["analytics"]["granted"] is True


def test_a_decision_through_the_api_with_an_expiry(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    send(client, write_key, "identify", userId="exp", context=preferences(sms=False))
    pid = profile_id(client, admin_token, "exp")
    clock.advance(minutes=5)
    expires = clock.now + timedelta(days=30)
    response = client.put(
        f"/api/profiles/{pid}/consents/sms",
        json={"status": "granted", "expires_at": expires.isoformat()},
        headers=admin_token,
    )
    assert response.status_code == 200, response.text
    decided = response.json()
    assert datetime.fromisoformat(decided.pop("at")) == clock.now
    assert datetime.fromisoformat(decided.pop("expires_at")) == expires
    assert decided == {
        "purpose": "sms",
        "status": "granted",
        "granted": True,
        "source": "api:admin",
    }
    view = client.get(f"/api/profiles/{pid}", headers=admin_token).json()
    assert view["consents"]["sms"]["granted"] is True

    clock.advance(days=30, seconds=1)
    view = client.get(f"/api/profiles/{pid}", headers=admin_token).json()
    assert view["consents"]["sms"]["granted"] is False
    assert view["consents"]["sms"]["status"] == "expired"
    body = consents(client, admin_token, pid)
    assert [
        (h["status"], h["expires_at"] and datetime.fromisoformat(h["expires_at"]))
        for h in body["history"]
    ] == [
        ("denied", None),
        ("granted", expires),
    ]


def test_an_event_renews_a_grant_that_expired(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    send(client, write_key, "identify", userId="renew")
    pid = profile_id(client, admin_token, "renew")
    client.put(
        f"/api/profiles/{pid}/consents/push",
        json={"status": "granted", "expires_at": (clock.now + timedelta(days=1)).isoformat()},
        headers=admin_token,
    )
    send(client, write_key, "track", userId="renew", event="Still", context=preferences(push=True))
    assert consents(client, admin_token, pid)["current"]["push"]["expires_at"] is not None

    clock.advance(days=2)
    assert consents(client, admin_token, pid)["current"]["push"]["status"] == "expired"
    send(client, write_key, "track", userId="renew", event="Back", context=preferences(push=True))
    body = consents(client, admin_token, pid)
    assert body["current"]["push"]["granted"] is True
    assert body["current"]["push"]["expires_at"] is None
    assert len(body["history"]) == 2


def test_an_expiry_without_offset_is_utc_and_a_source_can_be_named(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    send(client, write_key, "identify", userId="naive")
    pid = profile_id(client, admin_token, "naive")
    expires = (clock.now + timedelta(days=3)).replace(tzinfo=None, microsecond=0)
    response = client.put(
        f"/api/profiles/{pid}/consents/newsletter",
        json={"status": "withdrawn", "expires_at": expires.isoformat(), "source": "call_centre"},
        headers=admin_token,
    )
    assert response.status_code == 200, response.text
    assert datetime.fromisoformat(response.json()["expires_at"]).utcoffset() == timedelta(0)
    assert response.json()["source"] == "call_centre"
    assert response.json()["granted"] is False


def test_consents_follow_a_merge(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    send(client, write_key, "page", anonymousId="visitor-7", context=preferences(analytics=True))
    send(client, write_key, "identify", userId="merged", anonymousId="visitor-7")
    pid = profile_id(client, admin_token, "merged")
    assert consents(client, admin_token, pid)["current"]["analytics"]["granted"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "yes"}, "status"),
        ({}, "status"),
        ({"status": "granted", "expires_at": "next week"}, "expires_at"),
        ({"status": "granted", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        # Past datetime.max once in UTC: no overflow reaches the database.
        ({"status": "granted", "expires_at": "9999-12-31T23:59:59-05:00"}, "expires_at"),
        ({"status": "granted", "expires_at": "9999-12-31T00:00:00Z"}, "expires_at"),
        ({"status": "granted", "expires": "2099-01-01T00:00:00Z"}, "expires"),
        ({"status": "granted", "source": ""}, "source"),
        ({"status": "granted", "source": "s" * 201}, "source"),
    ],
)
def test_a_bad_consent_is_422_naming_the_field(
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    body: dict[str, Any],
    field: str,
) -> None:
    send(client, write_key, "identify", userId="bad")
    pid = profile_id(client, admin_token, "bad")
    response = client.put(
        f"/api/profiles/{pid}/consents/marketing_email", json=body, headers=admin_token
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert response.json()["message"].startswith(field)
    assert consents(client, admin_token, pid)["history"] == []


def test_a_bad_purpose_or_profile(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    send(client, write_key, "identify", userId="purpose")
    pid = profile_id(client, admin_token, "purpose")
    too_long = client.put(
        f"/api/profiles/{pid}/consents/{'p' * 101}", json={"status": "denied"}, headers=admin_token
    )
    assert too_long.status_code == 422
    assert too_long.json()["field"] == "purpose"
    missing = client.put(
        "/api/profiles/nobody/consents/sms", json={"status": "denied"}, headers=admin_token
    )
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


def test_an_expiry_up_to_a_hundred_years_ahead_is_kept(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    send(client, write_key, "identify", userId="long")
    pid = profile_id(client, admin_token, "long")
    expires = clock.now + timedelta(days=365 * 100)
    response = client.put(
        f"/api/profiles/{pid}/consents/research",
        json={"status": "granted", "expires_at": expires.isoformat()},
        headers=admin_token,
    )
    assert response.status_code == 200, response.text
    assert datetime.fromisoformat(response.json()["expires_at"]) == expires


def consent_owners(container: Container) -> list[str]:
    with container.db.read() as conn:
        return list(conn.execute(sa.select(consent_rows.c.profile_id)).scalars())


def while_held(
    container: Container, hold: Callable[[Connection], None], decide: Callable[[], Any]
) -> Future[Any]:
    """Run `decide` in a thread while another transaction, having done `hold`, is open.

    Once `decide` waits for that transaction's locks (or has finished: it did not wait),
    the transaction commits; the future holds what `decide` returned or raised.
    """
    pool = ThreadPoolExecutor(1)
    with container.db.engine.connect() as held, held.begin():
        hold(held)
        decided = pool.submit(decide)
        deadline = time.monotonic() + 10
        while not decided.done() and not waits_for_a_lock(container):
            assert time.monotonic() < deadline, "the decision neither finished nor waited"
            time.sleep(0.01)
    pool.shutdown(wait=True)
    return decided


def waits_for_a_lock(container: Container) -> bool:
    with container.db.engine.connect() as conn:
        waiting = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def skip_on_sqlite(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite runs one write transaction at a time: there is no race to lose")


def test_a_decision_taken_during_a_merge_lands_on_the_survivor(
    db_url: str,
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    container: Container,
    clock: FakeClock,
) -> None:
    skip_on_sqlite(db_url)
    send(client, write_key, "page", anonymousId="drifter")
    send(client, write_key, "identify", userId="keeper")
    absorbed = client.get(
        "/api/profiles/lookup",
        params={"type": "anonymous_id", "value": "drifter"},
        headers=admin_token,
    ).json()["id"]
    survivor = profile_id(client, admin_token, "keeper")

    def merge(conn: Connection) -> None:
        # What ingestion does when an event proves the two are one person.
        profile_store.lock_profiles(conn, [absorbed, survivor])
        merge = Merge(survivor, absorbed, linked_by=[], identifiers=[])
        profile_store.record_merge(conn, merge, "test", None, clock.now)

    decided = while_held(
        container,
        merge,
        lambda: container.profiles.set_consent(absorbed, "sms", "granted", source="test"),
    )

    assert decided.result()["status"] == "granted"
    assert consent_owners(container) == [survivor]
    current = consents(client, admin_token, absorbed)["current"]
    assert current["sms"]["granted"] is True
    assert container.db.retries >= 1


def test_a_decision_taken_during_an_erasure_is_erased_too(
    db_url: str,
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    container: Container,
) -> None:
    skip_on_sqlite(db_url)
    send(client, write_key, "identify", userId="leaving")
    pid = profile_id(client, admin_token, "leaving")

    def erase(conn: Connection) -> None:
        person = personal_data.find_person(conn, pid, lock=True)
        personal_data.erase(conn, person)

    decided = while_held(
        container,
        erase,
        lambda: container.profiles.set_consent(pid, "sms", "granted", source="test"),
    )

    with pytest.raises(NotFound):
        decided.result()
    assert consent_owners(container) == []
