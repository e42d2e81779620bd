"""Destinations on both databases, against a real HTTP receiver on localhost: declared
through the API with their secrets kept out of sight, fed by the bus, delivered at least
once, in order, signed, with stable delivery ids, retried when the receiver fails or
throttles, parked when it refuses, and counted."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.services.bus import RetryPolicy
from tests.integration.test_tracking import basic
from tests.receiver import Receiver, receiving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


@pytest.fixture
def fast_bus(container: Container) -> Container:
    container.bus.policy = RetryPolicy(first=0.001, ceiling=0.01, attempts=3)
    return container


def webhook(receiver: Receiver, **receives: Any) -> dict[str, Any]:
    return {
        "type": "webhook",
        "receives": receives or {"events": {"types": ["track"]}},
        "settings": {
            "url": f"{receiver.url}/hook",
            "secret": "whsec-42",
            "headers": {"X-Api-Key": "k-123"},
        },
        "start": "beginning",
    }


def deliver(container: Container, until: Any, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "not delivered in time"
        container.bus.drain()
        time.sleep(0.005)


def track(client: TestClient, write_key: str, *names: str, user: str = "ada") -> None:
    batch = [
        {"type": "track", "userId": user, "event": name, "messageId": f"m-{name}"} for name in names
    ]
    sent = client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key))
    assert sent.status_code == 200, sent.text


def test_secrets_are_never_shown_and_a_masked_secret_keeps_its_value(
    client: TestClient, admin_token: dict[str, str], receiver: Receiver, container: Container
) -> None:
    created = client.put("/api/destinations/crm", json=webhook(receiver), headers=admin_token)
    assert created.status_code == 200, created.text
    assert created.json() == {"id": "crm", "change": "created", "version": 1}
    shown = client.get("/api/destinations/crm", headers=admin_token).json()
    settings = shown["definition"]["settings"]
    assert settings["secret"] == "********"
    assert settings["headers"] == {"X-Api-Key": "********"}
    assert "whsec-42" not in str(client.get("/api/destinations", headers=admin_token).json())
    # Sent back as shown, with one change: the secrets keep their values.
    again = {**shown["definition"], "receives": {"events": {"types": ["identify"]}}}
    assert (
        client.put("/api/destinations/crm", json=again, headers=admin_token).json()["change"]
        == "updated"
    )
    kept = container.destinations.destinations()[0]
    assert kept.settings["secret"] == "whsec-42"
    assert kept.settings["headers"] == {"X-Api-Key": "k-123"}


def test_a_definition_that_cannot_be_used_names_its_path(
    client: TestClient, admin_token: dict[str, str]
) -> None:
    bad = {
        "type": "webhook",
        "receives": {"events": {"types": ["track", "click"]}},
        "settings": {"url": "https://x.example"},
    }
    refused = client.put("/api/destinations/crm", json=bad, headers=admin_token)
    assert refused.status_code == 422
    assert refused.json()["field"] == "destination.receives.events.types[1]"
    no_url = {**bad, "receives": {"events": {}}, "settings": {"url": "ftp://x"}}
    refused = client.put("/api/destinations/crm", json=no_url, headers=admin_token)
    assert refused.json()["field"] == "destination.settings.url"
    analyst = client.get("/api/destinations", headers=admin_token)
    assert analyst.status_code == 200


def test_matching_events_are_delivered_in_order_signed_with_stable_ids(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    receiver: Receiver,
    container: Container,
) -> None:
    hook = webhook(
        receiver,
        events={"types": ["track"], "names": ["Order Completed", "Signed Up"]},
    )
    client.put("/api/destinations/crm", json=hook, headers=admin_token)
    track(client, write_key, "Signed Up", "Viewed Page", "Order Completed")
    deliver(container, lambda: len(receiver.delivered()) == 2)
    first, second = receiver.delivered()
    assert [first.json["event"], second.json["event"]] == ["Signed Up", "Order Completed"]
    assert first.json["messageId"] == "m-Signed Up" and first.json["userId"] == "ada"
    assert first.headers["x-api-key"] == "k-123"
    assert first.headers["idempotency-key"] == first.headers["x-ariane-delivery"]
    stamp, mac = first.headers["x-ariane-signature"].split(",")
    timestamp = stamp.removeprefix("t=")
    expected = hmac.new(b"whsec-42", f"{timestamp}.".encode() + first.body, hashlib.sha256)
    assert mac == f"v1={expected.hexdigest()}"
    assert timestamp == first.headers["x-ariane-timestamp"]
    shown = client.get("/api/destinations/crm", headers=admin_token).json()
    assert (shown["delivered"], shown["failed"], shown["parked"]) == (2, 0, 0)
    assert shown["lag_seconds"] == 0


def test_a_receiver_that_fails_and_throttles_loses_nothing_and_duplicates_keep_their_id(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    receiver: Receiver,
    fast_bus: Container,
) -> None:
    client.put("/api/destinations/crm", json=webhook(receiver), headers=admin_token)
    receiver.script.extend(
        [
            (500, {}, b"down"),
            (503, {"Retry-After": "0"}, b"busy"),
            (429, {"Retry-After": "0"}, b"slow down"),
        ]
    )
    names = [f"E{i}" for i in range(6)]
    track(client, write_key, *names)
    deliver(fast_bus, lambda: len(receiver.delivered()) == 6)
    assert [r.json["event"] for r in receiver.delivered()] == names
    by_event: dict[str, set[str]] = {}
    for request in receiver.received:
        by_event.setdefault(request.json["event"], set()).add(request.headers["idempotency-key"])
    assert all(len(ids) == 1 for ids in by_event.values())
    shown = client.get("/api/destinations/crm", headers=admin_token).json()
    assert shown["delivered"] == 6 and shown["failed"] == 3
    assert "429" in shown["last_error"]


def test_a_refusal_is_parked_with_the_answer_and_replayed_once_mended(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    receiver: Receiver,
    fast_bus: Container,
) -> None:
    client.put("/api/destinations/crm", json=webhook(receiver), headers=admin_token)
    receiver.script.append((400, {}, b'{"error": "unknown field userId"}'))
    track(client, write_key, "First", "Second")
    deliver(fast_bus, lambda: len(receiver.delivered()) == 1)
    parked = client.get("/api/outbox/parked", headers=admin_token).json()["parked"]
    assert [(p["handler"], p["payload"]["message_id"]) for p in parked] == [
        ("destination:crm", "m-First")
    ]
    assert "400" in parked[0]["error"] and "unknown field userId" in parked[0]["error"]
    assert client.get("/api/destinations/crm", headers=admin_token).json()["parked"] == 1
    replayed = client.post("/api/outbox/parked/replay", json={}, headers=admin_token)
    assert replayed.json() == {"replayed": [parked[0]["id"]], "failed": []}
    assert [r.json["event"] for r in receiver.delivered()] == ["Second", "First"]
    assert client.get("/api/outbox/parked", headers=admin_token).json()["parked"] == []


def test_a_destination_that_starts_now_receives_only_what_comes_after(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    receiver: Receiver,
    container: Container,
) -> None:
    track(client, write_key, "Before")
    client.put(
        "/api/destinations/crm", json={**webhook(receiver), "start": "now"}, headers=admin_token
    )
    container.bus.drain()
    track(client, write_key, "After")
    deliver(container, lambda: len(receiver.delivered()) == 1)
    container.bus.drain()
    assert [r.json["event"] for r in receiver.delivered()] == ["After"]


def test_segment_forward_sends_batches_with_the_write_key(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    receiver: Receiver,
    container: Container,
) -> None:
    forward = {
        "type": "segment",
        "receives": {"events": {}},
        "settings": {"url": receiver.url, "write_key": "other-key", "batch_size": 2},
        "start": "beginning",
    }
    assert client.put("/api/destinations/rudder", json=forward, headers=admin_token).is_success
    track(client, write_key, "A", "B", "C")
    deliver(container, lambda: sum(len(r.json["batch"]) for r in receiver.delivered()) == 3)
    first = receiver.delivered()[0]
    assert first.path == "/v1/batch"
    assert first.headers["authorization"] == basic("other-key")["Authorization"]
    assert [m["messageId"] for r in receiver.delivered() for m in r.json["batch"]] == [
        "m-A",
        "m-B",
        "m-C",
    ]
    assert "sentAt" in first.json


def test_deliveries_are_counted_in_metrics(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    receiver: Receiver,
    container: Container,
) -> None:
    client.put("/api/destinations/crm", json=webhook(receiver), headers=admin_token)
    track(client, write_key, "A", "B")
    deliver(container, lambda: len(receiver.delivered()) == 2)
    scraped = client.get("/metrics").text
    assert 'ariane_destination_delivered_total{destination="crm"} 2.0' in scraped
    assert 'ariane_destination_lag_seconds{destination="crm"} 0.0' in scraped
    assert 'ariane_destination_parked{destination="crm"} 0.0' in scraped
