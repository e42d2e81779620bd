"""What careless clients send, on both databases: refused with a reason naming the field,
kept in quarantine or answered with a 4xx; never a 500, and never at the cost of the valid
events sent with it."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.domain.clock import iso, parse_timestamp
from ariane.domain.messages import MAX_DEPTH
from ariane.services.imports import EventImporter
from ariane.services.ingest import Envelope
from tests.conftest import FakeClock


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def nested(levels: int, leaf: Any = 1) -> dict[str, Any]:
    """Objects `levels` deep: {"a": {"a": ... {"a": leaf}}}."""
    value: Any = leaf
    for _ in range(levels):
        value = {"a": value}
    result: dict[str, Any] = value
    return result


def quarantined(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get("/api/quarantine", headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def counts(client: TestClient, headers: dict[str, str], user_id: str) -> Any:
    found = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": user_id}, headers=headers
    )
    assert found.status_code == 200, found.text
    return found.json()["computed"]["event_counts"]


def good(user_id: str = "kept") -> dict[str, Any]:
    return {"type": "track", "userId": user_id, "event": "Fine"}


# --- 1. nested too deep ---------------------------------------------------------------------


def deep_json(levels: int) -> bytes:
    """`nested(levels)` as JSON text, written by hand: deeper than Python's JSON libraries
    write."""
    return b'{"a": ' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize(
    ("field", "template", "levels"),
    [
        ("properties", b'"type": "track", "event": "E", "properties": %s', 253),
        ("properties", b'"type": "track", "event": "E", "properties": %s', 1000),
        ("traits", b'"type": "identify", "traits": {"list": [%s]}', 300),
        ("context", b'"type": "track", "event": "E", "context": {"page": %s}', 500),
        ("properties", b'"type": "track", "event": "E", "properties": %s', MAX_DEPTH + 1),
    ],
)
def test_an_event_nested_too_deep_is_quarantined_and_the_rest_of_its_batch_stored(
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    field: str,
    template: bytes,
    levels: int,
) -> None:
    bad = b'{"userId": "deep", ' + template % deep_json(levels) + b"}"
    body = b'{"batch": [' + bad + b", " + orjson.dumps(good()) + b"]}"
    response = client.post("/v1/batch", content=body, headers=basic(write_key))
    assert response.status_code == 200, response.text
    [problem] = quarantined(client, admin_token)
    assert problem["field"] == field
    assert f"more than {MAX_DEPTH} levels" in problem["reason"]
    assert problem["user_id"] == "deep"
    assert counts(client, admin_token, "kept") == {"Fine": 1}


def test_an_event_nested_to_the_limit_is_stored(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    event = {"type": "track", "userId": "deep", "event": "E", "properties": nested(MAX_DEPTH)}
    response = client.post("/v1/batch", json={"batch": [event]}, headers=basic(write_key))
    assert response.status_code == 200, response.text
    assert quarantined(client, admin_token) == []
    assert counts(client, admin_token, "deep") == {"E": 1}


def test_a_batch_context_nested_too_deep_quarantines_its_events_without_a_500(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    body = {"batch": [good()], "context": {"page": nested(400)}}
    response = client.post("/v1/batch", json=body, headers=basic(write_key))
    assert response.status_code == 200, response.text
    assert [q["field"] for q in quarantined(client, admin_token)] == ["context"]


def import_lines(container: Container, path: Path, lines: list[bytes]) -> Any:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    source_id = container.access.create_source("files")[0].id
    importer = EventImporter(container.db, container.access, container.ingest, container.clock)
    return importer.run(path, source_id)


def test_an_import_line_nested_too_deep_is_quarantined_and_its_chunk_stored(
    client: TestClient, container: Container, admin_token: dict[str, str], tmp_path: Path
) -> None:
    deep = b'{"type": "track", "userId": "deep", "event": "E", "properties": %s}' % deep_json(600)
    report = import_lines(container, tmp_path / "e.jsonl", [orjson.dumps(good()), deep])
    assert (report.rows, report.accepted, report.quarantined) == (2, 1, 1)
    [problem] = quarantined(client, admin_token)
    assert (problem["field"], problem["user_id"]) == ("properties", "deep")
    # Kept as deep as an event may be, so that every reader of the quarantine reads it.
    kept = nested(MAX_DEPTH, f"(nested more than {MAX_DEPTH} levels deep: not kept)")
    assert problem["payload"]["properties"] == kept
    assert counts(client, admin_token, "kept") == {"Fine": 1}


def test_a_huge_line_that_is_not_json_is_kept_cut_in_quarantine(
    client: TestClient, container: Container, admin_token: dict[str, str], tmp_path: Path
) -> None:
    line = b'{"userId": "ada", "note": "' + b"x" * 1_200_000
    report = import_lines(container, tmp_path / "e.jsonl", [line, orjson.dumps(good())])
    assert (report.accepted, report.quarantined) == (1, 1)
    [problem] = quarantined(client, admin_token)
    assert problem["payload"] == line[:1_000_000].decode() + " (cut)"


@pytest.fixture
def member(client: TestClient, container: Container, admin_token: dict[str, str]) -> str:
    club = {"earn_rules": [{"id": "buy", "event": "Order Completed", "points_per_unit": 1}]}
    container.programmes.apply({"id": "club", **club})
    source_id = container.access.create_source("shop")[0].id
    [profile_id] = container.ingest.ingest(
        source_id,
        [{"type": "identify", "userId": "ada"}],
        Envelope(received_at=container.clock()),
    ).profile_ids
    return profile_id


@pytest.mark.parametrize(
    "properties",
    [
        {"order_id": "R-1", "revenue": 10, "basket": nested(MAX_DEPTH)},
        {"order_id": "R-1", "revenue": 10, "basket": nested(300)},
        {"order_id": "R-1", "revenue": 10, "note": "a\u0000b"},
        {"order_id": "R-1", "revenue": 10, "note": "a\ud800"},
    ],
    ids=["deeper-than-events", "far-too-deep", "nul", "surrogate"],
)
def test_a_loyalty_sale_that_cannot_be_stored_is_refused_naming_its_field(
    client: TestClient,
    container: Container,
    admin_token: dict[str, str],
    member: str,
    properties: dict[str, Any],
) -> None:
    url = f"/api/loyalty/programmes/club/members/{member}/events"
    # Sent as Python's json module writes it: a lone surrogate escaped as \ud800, which
    # the API's parser reads back.
    body = orjson.dumps({"event": "Order Completed"})[:-1] + b', "properties": '
    body += json.dumps(properties).encode() + b"}"
    headers = {**admin_token, "Idempotency-Key": "till-1", "Content-Type": "application/json"}
    response = client.post(url, content=body, headers=headers)
    assert response.status_code == 422, response.text
    # Named as the admin API names a field, or as an event's field: properties.
    assert response.json()["field"].startswith("properties")
    assert container.loyalty.balance("club", member)["available"] == 0
    # Nothing was recorded that the bus would fail on.
    container.bus.drain()
    assert container.bus.parked() == []


# --- 2. NUL characters and lone surrogates --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "event"),
    [
        ("properties", {"type": "track", "userId": "x", "event": "E", "properties": {"k\0": 1}}),
        ("traits", {"type": "identify", "userId": "x", "traits": {"name": "A\u0000"}}),
        ("userId", {"type": "track", "userId": "x\u0000", "event": "E"}),
        ("event", {"type": "track", "userId": "x", "event": "Bought\u0000"}),
        ("context", {"type": "track", "userId": "x", "event": "E", "context": {"ip": "\0"}}),
    ],
)
def test_a_nul_anywhere_in_an_event_quarantines_it_and_the_rest_of_its_batch_is_stored(
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    field: str,
    event: dict[str, Any],
) -> None:
    response = client.post("/v1/batch", json={"batch": [event, good()]}, headers=basic(write_key))
    assert response.status_code == 200, response.text
    [problem] = quarantined(client, admin_token)
    assert problem["field"] == field
    assert "NUL" in problem["reason"]
    assert "\\u0000" in orjson.dumps(problem["payload"]).decode()
    assert counts(client, admin_token, "kept") == {"Fine": 1}


@pytest.mark.parametrize(
    ("field", "event"),
    [
        ("properties", b'"userId": "x", "event": "E", "properties": {"\\ud800": 1}'),
        ("userId", b'"userId": "x\\udfff", "event": "E"'),
        ("event", b'"userId": "x", "event": "Bought\\ud800"'),
    ],
)
def test_a_lone_surrogate_in_a_batch_quarantines_its_event_and_keeps_the_rest(
    client: TestClient,
    write_key: str,
    admin_token: dict[str, str],
    field: str,
    event: bytes,
) -> None:
    bad = b'{"type": "track", ' + event + b"}"
    body = b'{"batch": [' + bad + b", " + orjson.dumps(good()) + b"]}"
    response = client.post("/v1/batch", content=body, headers=basic(write_key))
    assert response.status_code == 200, response.text
    [problem] = quarantined(client, admin_token)
    assert problem["field"] == field
    assert "lone surrogate" in problem["reason"]
    assert counts(client, admin_token, "kept") == {"Fine": 1}


@pytest.mark.parametrize(
    ("field", "event"),
    [
        ("properties", {"type": "track", "userId": "x", "event": "E", "properties": {"\ud800": 1}}),
        ("traits", {"type": "identify", "userId": "x", "traits": {"name": "A\udfff"}}),
        ("userId", {"type": "track", "userId": "x\ud800", "event": "E"}),
        ("event", {"type": "track", "userId": "x", "event": "Bought\ud800"}),
        ("context", {"type": "track", "userId": "x", "event": "E", "context": {"ip": "\ud800"}}),
    ],
)
def test_a_lone_surrogate_anywhere_in_an_event_quarantines_it_and_keeps_its_batch(
    client: TestClient,
    container: Container,
    admin_token: dict[str, str],
    field: str,
    event: dict[str, Any],
) -> None:
    # Python clients (and JSON parsers other than the tracking API's) hand these over.
    source_id = container.access.create_source("python")[0].id
    result = container.ingest.ingest(
        source_id, [event, good()], Envelope(received_at=container.clock())
    )
    assert (result.accepted, result.quarantined) == (1, 1)
    [problem] = quarantined(client, admin_token)
    assert problem["field"] == field
    assert "surrogate" in problem["reason"]
    assert "\\ud" in orjson.dumps(problem["payload"]).decode()
    assert counts(client, admin_token, "kept") == {"Fine": 1}


# --- 3. an id too long to be one ------------------------------------------------------------


@pytest.mark.parametrize("key", ["userId", "anonymousId"])
def test_a_10000_character_id_is_quarantined_as_too_long_not_as_missing(
    client: TestClient, write_key: str, admin_token: dict[str, str], key: str
) -> None:
    event = {"type": "track", key: "u" * 10_000, "event": "E"}
    response = client.post("/v1/batch", json={"batch": [event, good()]}, headers=basic(write_key))
    assert response.status_code == 200, response.text
    [problem] = quarantined(client, admin_token)
    assert problem["field"] == key
    assert problem["reason"] == f"{key} is 10000 characters long; at most 512"
    assert counts(client, admin_token, "kept") == {"Fine": 1}


# --- 4. the year 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timestamp", "0001-01-01T00:00:00Z"),
        ("originalTimestamp", "0001-01-01T00:00:00Z"),
        ("timestamp", "1970-01-01T00:00:00Z"),
        ("timestamp", "1999-12-31T23:59:59.999Z"),
    ],
)
def test_a_timestamp_before_2000_is_quarantined_and_not_the_first_seen(
    client: TestClient, write_key: str, admin_token: dict[str, str], key: str, value: str
) -> None:
    batch = [
        {"type": "track", "userId": "kept", "event": "Old", key: value},
        good(),
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key))
    assert response.status_code == 200, response.text
    [problem] = quarantined(client, admin_token)
    assert problem["field"] == key
    assert "before 2000-01-01" in problem["reason"]
    found = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "kept"}, headers=admin_token
    ).json()
    assert found["computed"]["event_counts"] == {"Fine": 1}
    assert found["computed"]["first_seen"].startswith("2026-")


def test_a_device_clock_reset_to_1970_is_corrected_by_sent_at(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    event = {
        "type": "track",
        "userId": "kept",
        "event": "E",
        "timestamp": "1970-01-01T00:00:10Z",
        "sentAt": "1970-01-01T00:00:15Z",
    }
    response = client.post("/v1/batch", json={"batch": [event]}, headers=basic(write_key))
    assert response.status_code == 200, response.text
    assert quarantined(client, admin_token) == []
    found = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "kept"}, headers=admin_token
    ).json()
    assert parse_timestamp(found["computed"]["first_seen"]) == clock() - timedelta(seconds=5)


# --- 5. consent from a clock ahead -----------------------------------------------------------


def grant_from_a_clock_a_day_ahead(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> str:
    event = {
        "userId": "ada",
        "event": "Opened",
        "timestamp": iso(clock() + timedelta(days=1)),
        "context": {"consent": {"categoryPreferences": {"marketing_email": True}}},
    }
    response = client.post("/v1/track", json=event, headers=basic(write_key))
    assert response.status_code == 200, response.text
    found = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "ada"}, headers=admin_token
    )
    profile_id: str = found.json()["id"]
    return profile_id


def test_a_grant_dated_ahead_by_its_device_gives_way_to_a_later_withdrawal(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    ada = grant_from_a_clock_a_day_ahead(client, write_key, admin_token, clock)
    history = client.get(f"/api/profiles/{ada}/consents", headers=admin_token).json()["history"]
    # Dated when Ariane received it, not a day ahead.
    assert [parse_timestamp(h["at"]) for h in history] == [clock()]
    clock.advance(minutes=5)
    withdrawn = client.put(
        f"/api/profiles/{ada}/consents/marketing_email",
        json={"status": "withdrawn"},
        headers=admin_token,
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["status"] == "withdrawn"
    current = client.get(f"/api/profiles/{ada}/consents", headers=admin_token).json()["current"]
    assert current["marketing_email"]["status"] == "withdrawn"


def test_a_grant_dated_ahead_by_its_device_gives_way_to_a_later_denial_by_event(
    client: TestClient, write_key: str, admin_token: dict[str, str], clock: FakeClock
) -> None:
    ada = grant_from_a_clock_a_day_ahead(client, write_key, admin_token, clock)
    clock.advance(minutes=5)
    denial = {
        "userId": "ada",
        "event": "Unsubscribed",
        "context": {"consent": {"categoryPreferences": {"marketing_email": False}}},
    }
    assert client.post("/v1/track", json=denial, headers=basic(write_key)).status_code == 200
    current = client.get(f"/api/profiles/{ada}/consents", headers=admin_token).json()["current"]
    assert current["marketing_email"]["status"] == "denied"


# --- 6. erasure of lines that are not JSON ---------------------------------------------------


def test_an_import_line_that_is_not_json_goes_with_the_person_it_names(
    client: TestClient, container: Container, admin_token: dict[str, str], tmp_path: Path
) -> None:
    lines = [
        orjson.dumps({"type": "identify", "userId": "ada-1", "traits": {"email": "ada@ex.org"}}),
        orjson.dumps({"type": "identify", "userId": "adam-2", "anonymousId": "anon-9"}),
        b'{"userId": "ada-1", broken',
        b"signed up: ADA@EX.ORG on the phone",
        b'{"userId": "ada-10", broken',
        b'{"userId": "adam-2", "anonymousId": "anon-9", broken',
        b"call ada-1's manager",
    ]
    report = import_lines(container, tmp_path / f"{uuid.uuid4().hex}.jsonl", lines)
    assert (report.accepted, report.quarantined) == (2, 5)
    ada = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "ada-1"}, headers=admin_token
    ).json()["id"]

    export = client.get(f"/api/profiles/{ada}/export", headers=admin_token).json()
    assert sorted(row["payload"] for row in export["data"]["quarantine"]) == [
        "call ada-1's manager\n",
        "signed up: ADA@EX.ORG on the phone\n",
        '{"userId": "ada-1", broken\n',
    ]
    erased = client.delete(f"/api/profiles/{ada}", headers=admin_token)
    assert erased.status_code == 200, erased.text
    assert erased.json()["counts"]["quarantine"] == 3
    # Another id that merely starts with hers, and somebody else's line, stay.
    assert sorted(q["payload"] for q in quarantined(client, admin_token)) == [
        '{"userId": "ada-10", broken\n',
        '{"userId": "adam-2", "anonymousId": "anon-9", broken\n',
    ]
