"""The Segment-compatible tracking API, on both databases."""

from __future__ import annotations

import base64
import gzip
import zlib
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.storage.tables import quarantine


def basic(key: str, colon: bool = True) -> dict[str, str]:
    token = base64.b64encode(f"{key}{':' if colon else ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def profile_of(client: TestClient, headers: dict[str, str], id_type: str, value: str) -> Any:
    response = client.get(
        "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_every_call_is_accepted_with_exactly_success_true(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    calls = {
        "identify": {"userId": "u1", "traits": {"plan": "trial"}},
        "track": {"userId": "u1", "event": "Signed Up"},
        "page": {"userId": "u1", "name": "Home"},
        "screen": {"userId": "u1", "name": "Map"},
        "group": {"userId": "u1", "groupId": "acme"},
        "alias": {"userId": "u1", "previousId": "anon-9"},
    }
    for kind, body in calls.items():
        response = client.post(f"/v1/{kind}", json=body, headers=basic(write_key))
        assert response.status_code == 200, (kind, response.text)
        assert response.json() == {"success": True}
    profile = profile_of(client, admin_token, "user_id", "u1")
    assert profile["computed"]["type_counts"] == {
        "identify": 1,
        "track": 1,
        "page": 1,
        "screen": 1,
        "group": 1,
        "alias": 1,
    }
    assert {"type": "anonymous_id", "value": "anon-9"} in [
        {"type": i["type"], "value": i["value"]} for i in profile["identities"]
    ]


def test_write_key_in_header_without_colon_or_in_body(client: TestClient, write_key: str) -> None:
    assert (
        client.post(
            "/v1/track", json={"userId": "a", "event": "E"}, headers=basic(write_key, colon=False)
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/v1/track", json={"userId": "a", "event": "E", "writeKey": write_key}
        ).status_code
        == 200
    )


def test_bad_write_key_is_401_with_a_reason(client: TestClient) -> None:
    response = client.post("/v1/track", json={"userId": "a", "event": "E"}, headers=basic("nope"))
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert client.post("/v1/track", json={"userId": "a", "event": "E"}).status_code == 401


def test_bad_json_is_400(client: TestClient, write_key: str) -> None:
    response = client.post("/v1/batch", content=b"{not json", headers=basic(write_key))
    assert response.status_code == 400
    assert set(response.json()) == {"code", "message"}


def test_gzip_body_and_batch_level_context(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "userId": "g1",
                "event": "Opened",
                "messageId": "m-1",
                "context": {"page": {"path": "/"}},
            },
        ],
        "context": {"library": {"name": "test"}, "page": {"path": "/ignored"}},
        "integrations": {"All": True},
    }
    response = client.post(
        "/v1/batch",
        content=gzip.compress(orjson.dumps(body)),
        headers={
            **basic(write_key),
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 200, response.text
    profile = profile_of(client, admin_token, "user_id", "g1")
    events = client.get(f"/api/profiles/{profile['id']}/events", headers=admin_token).json()
    event = events["events"][0]
    assert event["context"] == {"library": {"name": "test"}, "page": {"path": "/"}}
    assert event["integrations"] == {"All": True}
    assert event["receivedAt"]


def test_timestamp_corrected_by_sent_at(
    client: TestClient, write_key: str, admin_token: dict[str, str], container: Container
) -> None:
    # The device clock is an hour behind; the event happened 10 s before it was sent.
    body = {
        "batch": [
            {
                "type": "track",
                "userId": "t1",
                "event": "E",
                "timestamp": "2024-01-01T10:00:00.123456789Z",
            }
        ],
        "sentAt": "2024-01-01T10:00:10.123Z",
    }
    client.post("/v1/batch", json=body, headers=basic(write_key))
    profile = profile_of(client, admin_token, "user_id", "t1")
    event = client.get(f"/api/profiles/{profile['id']}/events", headers=admin_token).json()[
        "events"
    ][0]
    from ariane.domain.clock import iso, parse_timestamp

    received = parse_timestamp(event["receivedAt"])
    assert event["timestamp"] == iso(
        received
        - (
            parse_timestamp("2024-01-01T10:00:10.123Z")
            - parse_timestamp("2024-01-01T10:00:00.123456Z")
        )
    )
    assert event["originalTimestamp"] == "2024-01-01T10:00:00.123456Z"
    assert container.clock() == received


def test_invalid_events_are_quarantined_without_sinking_the_batch(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    batch = [
        {"type": "track", "userId": "ok", "event": "Fine"},
        {"type": "track", "event": "No one"},
        {"type": "track", "userId": "ok"},
        {"type": "track", "userId": "ok", "event": "Huge", "properties": {"x": "a" * 40_000}},
        {"type": "launch", "userId": "ok"},
        {"type": "identify", "userId": "ok", "timestamp": "yesterday"},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key))
    assert response.status_code == 200
    quarantined = client.get("/api/quarantine", headers=admin_token).json()["events"]
    assert sorted(q["field"] for q in quarantined) == sorted(
        ["userId/anonymousId", "event", "(event)", "type", "timestamp"]
    )
    assert all(q["reason"] for q in quarantined)
    profile = profile_of(client, admin_token, "user_id", "ok")
    assert profile["computed"]["event_counts"] == {"Fine": 1}
    metrics = client.get("/metrics").text
    assert 'ariane_events_quarantined_total{source="' in metrics
    assert any(
        line.startswith("ariane_events_quarantined_total") and line.endswith(" 5.0")
        for line in metrics.splitlines()
    )


def test_a_single_invalid_event_is_told_why_and_kept(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    response = client.post("/v1/track", json={"userId": "x"}, headers=basic(write_key))
    assert response.status_code == 400
    assert response.json()["field"] == "event"
    assert len(client.get("/api/quarantine", headers=admin_token).json()["events"]) == 1


def test_limits_413(client: TestClient, write_key: str) -> None:
    too_many = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 2501}
    response = client.post("/v1/batch", json=too_many, headers=basic(write_key))
    assert response.status_code == 413
    too_big = {"batch": [{"type": "track", "userId": "u", "event": "E" * 1000}] * 600}
    response = client.post("/v1/batch", json=too_big, headers=basic(write_key))
    assert response.status_code == 413
    bomb = gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}")
    response = client.post(
        "/v1/batch", content=bomb, headers={**basic(write_key), "Content-Encoding": "gzip"}
    )
    assert response.status_code == 413


def test_saturation_answers_429_with_retry_after(
    client: TestClient, write_key: str, container: Container
) -> None:
    container.settings.max_inflight_ingest = 0
    response = client.post(
        "/v1/track", json={"userId": "u", "event": "E"}, headers=basic(write_key)
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "overloaded"


def test_message_id_dedupe(client: TestClient, write_key: str, admin_token: dict[str, str]) -> None:
    event = {"type": "track", "userId": "d1", "event": "Paid", "messageId": "same"}
    for _ in range(3):
        assert (
            client.post(
                "/v1/batch", json={"batch": [event, event]}, headers=basic(write_key)
            ).status_code
            == 200
        )
    profile = profile_of(client, admin_token, "user_id", "d1")
    assert profile["computed"]["event_counts"] == {"Paid": 1}
    assert (
        len(
            client.get(f"/api/profiles/{profile['id']}/events", headers=admin_token).json()[
                "events"
            ]
        )
        == 1
    )


def test_a_quarantined_event_never_keeps_the_write_key(
    client: TestClient, write_key: str, admin_token: dict[str, str], container: Container
) -> None:
    # The key authenticates the request from the body, and the event has no name.
    single = client.post("/v1/track", json={"userId": "k", "writeKey": write_key})
    assert single.status_code == 400, single.text
    in_batch = {"type": "track", "userId": "k", "writeKey": write_key}
    response = client.post("/v1/batch", json={"batch": [in_batch]}, headers=basic(write_key))
    assert response.status_code == 200
    quarantined = client.get("/api/quarantine", headers=admin_token).json()["events"]
    assert [q["payload"] for q in quarantined] == [
        {"type": "track", "userId": "k"},
        {"userId": "k"},
    ]
    with container.db.read() as conn:
        stored = conn.execute(sa.select(quarantine.c.payload)).scalars().all()
    assert len(stored) == 2
    assert not any(write_key in payload for payload in stored)


def test_nul_characters_do_not_stop_an_event_from_being_quarantined(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    # Invalid twice over: NUL characters, and a track event without its name.
    event = {"userId": "u\x00-1", "anonymousId": "\x00a-1", "properties": {"p": "x\x00y"}}
    response = client.post("/v1/track", json=event, headers=basic(write_key))
    assert response.status_code == 400, response.text
    [kept] = client.get("/api/quarantine", headers=admin_token).json()["events"]
    assert (kept["user_id"], kept["anonymous_id"]) == ("u-1", "a-1")
    assert kept["payload"] == event


def gzip_post(client: TestClient, write_key: str, content: bytes) -> Any:
    headers = {**basic(write_key), "Content-Encoding": "gzip"}
    return client.post("/v1/batch", content=content, headers=headers)


def test_a_gzip_body_of_several_members_is_read_whole(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    body = orjson.dumps({"batch": [{"type": "track", "userId": "z", "event": "Zipped"}]})
    members = b"".join(gzip.compress(body[i : i + 7]) for i in range(0, len(body), 7))
    response = gzip_post(client, write_key, members)
    assert response.status_code == 200, response.text
    profile = profile_of(client, admin_token, "user_id", "z")
    assert profile["computed"]["event_counts"] == {"Zipped": 1}


def test_a_truncated_or_trailed_gzip_body_is_bad_gzip(client: TestClient, write_key: str) -> None:
    whole = gzip.compress(orjson.dumps({"batch": []}))
    for content in (whole[:-4], whole[:5], b"", whole + b"trailing garbage"):
        response = gzip_post(client, write_key, content)
        assert response.status_code == 400, (content, response.text)
        assert response.json()["code"] == "bad_gzip", content


def test_a_deflate_body_is_read_and_other_encodings_are_refused_by_name(
    client: TestClient, container: Container, write_key: str
) -> None:
    body = orjson.dumps({"batch": [{"type": "track", "userId": "z", "event": "Zipped"}]})
    deflated = client.post(
        "/v1/batch",
        content=zlib.compress(body),
        headers={**basic(write_key), "Content-Encoding": "deflate"},
    )
    assert deflated.status_code == 200, deflated.text
    for encoding in ("br", "zstd", "gzip, br"):
        refused = client.post(
            "/v1/batch", content=body, headers={**basic(write_key), "Content-Encoding": encoding}
        )
        assert refused.status_code == 415, encoding
        assert refused.json()["field"] == "Content-Encoding"
        assert "gzip or deflate" in refused.json()["message"]
    # Said to be deflate, but not: not reported as a JSON or UTF-8 error.
    wrong = client.post(
        "/v1/batch", content=body, headers={**basic(write_key), "Content-Encoding": "deflate"}
    )
    assert (wrong.status_code, wrong.json()["code"]) == (400, "bad_deflate")
    assert "not valid deflate" in wrong.json()["message"]


def test_a_body_that_is_not_utf8_is_told_where(client: TestClient, write_key: str) -> None:
    body = b'{"batch": [\n  {"type": "track", "userId": "u", "event": "caf\xe9"}]}'
    refused = client.post("/v1/batch", content=body, headers=basic(write_key))
    assert (refused.status_code, refused.json()["code"]) == (400, "bad_json")
    assert "not valid UTF-8 at byte 60 (line 2, column 49)" in refused.json()["message"]
    broken = client.post(
        "/v1/batch", content=b'{"batch": [\n  {"type": "track",, }]}', headers=basic(write_key)
    )
    assert "line 2 column 20" in broken.json()["message"]


def test_a_whole_number_beyond_any_float_is_refused_as_bad_json_not_a_500(
    client: TestClient, write_key: str
) -> None:
    huge = b"1" + b"0" * 400
    body = b'{"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"n": '
    refused = client.post("/v1/batch", content=body + huge + b"}}]}", headers=basic(write_key))
    assert (refused.status_code, refused.json()["code"]) == (400, "bad_json")
    assert "line 1 column 79" in refused.json()["message"]


def test_json_that_is_not_json_is_refused_as_strictly_as_before(
    client: TestClient, write_key: str
) -> None:
    for body in (b'{"batch": [{"a": NaN}]}', b'{"batch": [{"a": 1e400}]}', b"[" * 100_000):
        refused = client.post("/v1/batch", content=body, headers=basic(write_key))
        assert (refused.status_code, refused.json()["code"]) == (400, "bad_json"), body[:30]
