"""The admin API: tokens and roles, the 360° view, lookups, the timeline, health, metrics."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ariane.bootstrap import Container, build
from ariane.settings import Settings
from ariane.web.app import create_app, route_table
from tests.conftest import FakeClock

# Served without a token: the API's own description, which holds no data.
DOCUMENTATION = {"/api/openapi.json", "/api/docs"}
# Reads that only an admin may make: they hand out personal data, everything held on a
# person or the identifiers and traits of a segment's members.
ADMIN_READS = {
    ("GET", "/api/profiles/{profile_id}/export"),
    ("GET", "/api/segments/{segment}/export"),
}
# Reads that are POSTs: what they ask for does not fit in a query string.
POSTED_READS = {
    ("POST", "/api/segments/preview"),
    ("POST", "/api/loyalty/simulate"),
    ("POST", "/api/templates/preview"),
}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def served(client: TestClient) -> list[tuple[str, str]]:
    app: FastAPI = client.app  # type: ignore[assignment]
    return route_table(app)


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves under /api, documentation aside."""
    return [(m, p) for m, p in served(client) if p.startswith("/api") and p not in DOCUMENTATION]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nobody", path)


def call(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    body: dict[str, Any] | None = None if method in ("GET", "DELETE") else {}
    return client.request(method, concrete(path), headers=headers, json=body)


def test_every_api_route_needs_a_token_and_writes_need_an_admin(
    client: TestClient, admin_token: dict[str, str], analyst_token: dict[str, str]
) -> None:
    routes = api_routes(client)
    assert ("GET", "/api/profiles/{profile_id}") in routes
    assert ("PUT", "/api/profiles/{profile_id}/consents/{purpose}") in routes
    assert ("DELETE", "/api/profiles/{profile_id}") in routes
    assert ("POST", "/api/sources") in routes
    for method, path in routes:
        missing = call(client, method, path)
        assert missing.status_code == 401, (method, path)
        assert missing.json()["code"] == "unauthorized"
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        unknown = call(client, method, path, {"Authorization": "Bearer at_not-a-token"})
        assert unknown.status_code == 401, (method, path)
        assert "ariane tokens create" in unknown.json()["message"]

        as_analyst = call(client, method, path, analyst_token)
        route = (method, path)
        if (method == "GET" or route in POSTED_READS) and route not in ADMIN_READS:
            assert as_analyst.status_code not in (401, 403), (method, path, as_analyst.text)
        else:
            assert as_analyst.status_code == 403, (method, path)
            assert as_analyst.json()["code"] == "forbidden"
        assert call(client, method, path, admin_token).status_code not in (401, 403)


def test_the_api_documentation_needs_no_token(client: TestClient) -> None:
    assert {path for _, path in served(client)} >= DOCUMENTATION
    for path in DOCUMENTATION:
        assert client.get(path).status_code == 200, path


def test_a_write_key_is_not_an_api_token(client: TestClient, write_key: str) -> None:
    response = client.get("/api/sources", headers={"Authorization": f"Bearer {write_key}"})
    assert response.status_code == 401


def test_tokens_and_write_keys_are_stored_only_as_hashes(
    client: TestClient, container: Container, admin_token: dict[str, str]
) -> None:
    created = client.post("/api/sources", json={"name": "shop"}, headers=admin_token)
    assert created.status_code == 201, created.text
    write_key = created.json()["write_key"]
    token_secret = container.access.create_token("analyst", "bi")[1]
    secrets = [write_key, token_secret, admin_token["Authorization"].split()[1]]

    dumped = dump_database(container)
    assert len(dumped) > 100
    for secret in secrets:
        assert secret not in dumped
    # The hashes are there: the scan reads the rows the secrets would be in.
    from ariane.storage.access import hash_secret

    assert all(hash_secret(secret) in dumped for secret in secrets)
    # And they still work.
    track(client, write_key, userId="a", event="E")
    assert (
        client.get("/api/sources", headers={"Authorization": f"Bearer {token_secret}"}).status_code
        == 200
    )


def dump_database(container: Container) -> str:
    """Every value in every table, as text."""
    reflected = sa.MetaData()
    parts = []
    with container.db.read() as conn:
        reflected.reflect(conn)
        for table in reflected.sorted_tables:
            for row in conn.execute(sa.select(table)):
                parts.append(orjson.dumps(list(row), default=str).decode())
    return "\n".join(parts)


def test_sources_api(client: TestClient, admin_token: dict[str, str]) -> None:
    created = client.post("/api/sources", json={"name": " app "}, headers=admin_token)
    assert created.status_code == 201
    assert created.json()["name"] == "app"
    again = client.post("/api/sources", json={"name": "app"}, headers=admin_token)
    assert again.status_code == 409
    assert again.json()["field"] == "name"
    blank = client.post("/api/sources", json={"name": "  "}, headers=admin_token)
    assert blank.status_code == 422
    assert blank.json()["field"] == "name"
    missing = client.post("/api/sources", json={}, headers=admin_token)
    assert missing.status_code == 422
    assert missing.json()["field"] == "name"
    assert "body" in missing.json()["message"]
    listed = client.get("/api/sources", headers=admin_token).json()["sources"]
    assert [s["name"] for s in listed] == ["app"]
    assert "write_key" not in listed[0]


def track(client: TestClient, write_key: str, **event: Any) -> None:
    response = client.post("/v1/track", json=event, headers=basic(write_key))
    assert response.status_code == 200, response.text


def test_the_360_view(
    client: TestClient, write_key: str, admin_token: dict[str, str], container: Container
) -> None:
    client.post(
        "/v1/track",
        json={"anonymousId": "anon-v", "event": "Viewed", "timestamp": "2024-03-01T09:00:00Z"},
        headers=basic(write_key),
    )
    client.post(
        "/v1/identify",
        json={
            "userId": "u-view",
            "anonymousId": "anon-w",
            "traits": {"email": "View@Example.com", "plan": "trial"},
            "timestamp": "2024-03-02T09:00:00Z",
            "context": {"consent": {"categoryPreferences": {"analytics": True}}},
        },
        headers=basic(write_key),
    )
    before_merge = client.get(
        "/api/profiles/lookup",
        params={"type": "anonymous_id", "value": "anon-v"},
        headers=admin_token,
    ).json()["id"]
    client.post(
        "/v1/alias", json={"userId": "u-view", "previousId": "anon-v"}, headers=basic(write_key)
    )

    profile = client.get(f"/api/profiles/{before_merge}", headers=admin_token).json()
    assert set(profile) >= {
        "id",
        "identities",
        "traits",
        "computed",
        "segments",
        "consents",
        "merged_ids",
        "created_at",
        "updated_at",
    }
    assert profile["id"] != before_merge
    assert profile["merged_ids"] == [before_merge]
    assert {(i["type"], i["value"]) for i in profile["identities"]} == {
        ("user_id", "u-view"),
        ("anonymous_id", "anon-v"),
        ("anonymous_id", "anon-w"),
        ("email", "view@example.com"),
    }
    assert profile["traits"] == {"email": "View@Example.com", "plan": "trial"}
    assert profile["computed"]["event_counts"] == {"Viewed": 1}
    assert profile["computed"]["first_seen"].startswith("2024-03-01T09:00:00")
    assert profile["segments"] == []
    assert profile["consents"]["analytics"]["granted"] is True
    created = datetime.fromisoformat(profile["created_at"])
    updated = datetime.fromisoformat(profile["updated_at"])
    assert created <= updated == container.clock()


@pytest.mark.parametrize(
    ("id_type", "value"),
    [
        ("email", " Ada@Example.COM "),
        ("EMAIL", "ada@example.com"),
        ("phone", "+33 6 12 34 56 78"),
        ("user_id", "ada"),
        ("loyalty_card", " LC-1 "),
    ],
)
def test_lookup_by_any_identifier_in_any_form(
    client: TestClient, write_key: str, admin_token: dict[str, str], id_type: str, value: str
) -> None:
    client.post(
        "/v1/identify",
        json={
            "userId": "ada",
            "traits": {"email": "ada@example.com", "phone": "+33612345678", "loyalty_card": "LC-1"},
        },
        headers=basic(write_key),
    )
    found = client.get(
        "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=admin_token
    )
    assert found.status_code == 200, found.text
    assert ("user_id", "ada") in {(i["type"], i["value"]) for i in found.json()["identities"]}


def test_lookup_and_profile_errors_say_what_is_wrong(
    client: TestClient, admin_token: dict[str, str]
) -> None:
    unknown = client.get(
        "/api/profiles/lookup", params={"type": "email", "value": "no@one.io"}, headers=admin_token
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not_found"
    assert "no@one.io" in unknown.json()["message"]
    blocked = client.get(
        "/api/profiles/lookup",
        params={"type": "user_id", "value": "undefined"},
        headers=admin_token,
    )
    assert blocked.status_code == 422
    assert blocked.json()["field"] == "value"
    no_value = client.get("/api/profiles/lookup", params={"type": "email"}, headers=admin_token)
    assert no_value.status_code == 422
    assert no_value.json()["field"] == "value"
    assert "query" in no_value.json()["message"]
    for path in (
        "/api/profiles/nobody",
        "/api/profiles/nobody/events",
        "/api/profiles/nobody/consents",
    ):
        missing = client.get(path, headers=admin_token)
        assert missing.status_code == 404, path
        assert {"code", "message"} <= set(missing.json())
        assert missing.json()["code"] == "not_found"
    not_a_route = client.get("/api/nothing-here", headers=admin_token)
    assert not_a_route.status_code == 404
    assert not_a_route.json()["code"] == "not_found"
    wrong_method = client.patch("/api/profiles/nobody", headers=admin_token)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


def test_a_profile_read_right_after_a_200_reflects_the_event(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    for count in range(1, 4):
        track(client, write_key, userId="fresh", event="Clicked")
        profile = client.get(
            "/api/profiles/lookup",
            params={"type": "user_id", "value": "fresh"},
            headers=admin_token,
        ).json()
        assert profile["computed"]["event_counts"] == {"Clicked": count}


def test_timeline_pages_newest_first_without_gaps_or_duplicates(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    # 23 events over 5 distinct timestamps: many share a timestamp.
    batch = [
        {
            "type": "track",
            "userId": "pager",
            "event": f"E{n}",
            "messageId": f"m{n}",
            "timestamp": f"2024-05-0{1 + n % 5}T10:00:00Z",
        }
        for n in range(23)
    ]
    assert (
        client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key)).status_code == 200
    )
    profile_id = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "pager"}, headers=admin_token
    ).json()["id"]

    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = client.get(f"/api/profiles/{profile_id}/events", params=params, headers=admin_token)
        assert page.status_code == 200, page.text
        body = page.json()
        pages += 1
        seen.extend(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["events"]) == 4
    assert pages == 6
    ids = [e["messageId"] for e in seen]
    assert sorted(ids) == sorted(e["messageId"] for e in batch)
    stamps = [e["timestamp"] for e in seen]
    assert stamps == sorted(stamps, reverse=True)
    # Within one timestamp, the later-stored event comes first, on every page.
    same_time = [int(e["messageId"][1:]) for e in seen if e["timestamp"].startswith("2024-05-03")]
    assert same_time == sorted(same_time, reverse=True) and len(same_time) == 5

    exact = client.get(
        f"/api/profiles/{profile_id}/events", params={"limit": 23}, headers=admin_token
    ).json()
    assert len(exact["events"]) == 23 and exact["next_cursor"] is None


@pytest.mark.parametrize("cursor", ["garbage", "Zm9v", base64.b64encode(b"2024|x").decode()])
def test_a_bad_cursor_is_422_naming_it(
    client: TestClient, write_key: str, admin_token: dict[str, str], cursor: str
) -> None:
    track(client, write_key, userId="c", event="E")
    profile_id = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "c"}, headers=admin_token
    ).json()["id"]
    response = client.get(
        f"/api/profiles/{profile_id}/events", params={"cursor": cursor}, headers=admin_token
    )
    assert response.status_code == 422
    assert response.json()["field"] == "cursor"
    too_many = client.get(
        f"/api/profiles/{profile_id}/events", params={"limit": 5000}, headers=admin_token
    )
    assert too_many.status_code == 422
    assert too_many.json()["field"] == "limit"


def test_quarantine_pages(client: TestClient, write_key: str, admin_token: dict[str, str]) -> None:
    batch = [{"type": "track", "userId": f"q{n}"} for n in range(5)]
    client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key))
    first = client.get("/api/quarantine", params={"limit": 3}, headers=admin_token).json()
    rest = client.get(
        "/api/quarantine",
        params={"limit": 3, "before_id": first["next_before_id"]},
        headers=admin_token,
    ).json()
    users = [e["user_id"] for e in first["events"] + rest["events"]]
    assert users == [f"q{n}" for n in reversed(range(5))]
    assert rest["next_before_id"] is None


def test_health_checks_the_database(client: TestClient, container: Container) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": container.db.dialect.name}
    documented = client.get("/api/openapi.json").json()["paths"]["/health"]["get"]["responses"]
    assert documented["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }


@pytest.mark.parametrize(
    "url",
    ["sqlite:///{tmp}/no/such/dir/ariane.db", "postgresql+psycopg://ariane@127.0.0.1:9/none"],
    ids=["sqlite", "postgresql"],
)
def test_health_is_503_when_the_database_is_unreachable(tmp_path: Path, url: str) -> None:
    container = build(Settings(database_url=url.format(tmp=tmp_path)))
    try:
        with TestClient(create_app(container)) as client:
            response = client.get("/health")
    finally:
        container.close()
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert "ARIANE_DATABASE_URL" in response.json()["message"]


def test_an_unexpected_failure_is_a_json_500_and_is_timed(tmp_path: Path) -> None:
    # A database without its schema: the token lookup itself fails.
    container = build(Settings(database_url=f"sqlite:///{tmp_path / 'unmigrated.db'}"))
    try:
        with TestClient(create_app(container), raise_server_exceptions=False) as client:
            response = client.get("/api/sources", headers={"Authorization": "Bearer at_x"})
            timed = samples(client, "ariane_http_request_duration_seconds_count")
    finally:
        container.close()
    assert response.status_code == 500
    assert response.json() == {
        "code": "internal",
        "message": "unexpected error; the server log has the details",
    }
    assert ({"method": "GET", "route": "/api/sources", "status": "500"}, 1.0) in timed


def samples(client: TestClient, name: str) -> list[tuple[dict[str, str], float]]:
    found: list[tuple[dict[str, str], float]] = []
    for family in text_string_to_metric_families(client.get("/metrics").text):
        found.extend((s.labels, s.value) for s in family.samples if s.name == name)
    return found


def test_event_counters(client: TestClient, write_key: str, container: Container) -> None:
    source_id = container.access.list_sources()[0].id
    batch = [
        {"type": "track", "userId": "m", "event": "A", "messageId": "one"},
        {"type": "track", "userId": "m", "event": "A", "messageId": "one"},
        {"type": "track", "userId": "m", "event": "B", "messageId": "two"},
        {"type": "track", "userId": "m"},
    ]
    client.post("/v1/batch", json={"batch": batch}, headers=basic(write_key))
    client.post("/v1/batch", json={"batch": batch[:1]}, headers=basic(write_key))
    expected = {
        "ariane_events_accepted_total": 2,
        "ariane_events_deduplicated_total": 2,
        "ariane_events_quarantined_total": 1,
    }
    for name, value in expected.items():
        assert samples(client, name) == [({"source": source_id}, value)], name


def test_latency_histogram_covers_every_route_by_its_template(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    routes = served(client)
    assert len(routes) > 15
    for method, path in routes:
        call(client, method, path, admin_token)
    client.get("/no/such/page")

    counted = {
        (labels["route"], labels["method"]): value
        for labels, value in samples(client, "ariane_http_request_duration_seconds_count")
    }
    for method, path in routes:
        assert counted.get((path, method), 0) >= 1, (method, path)
    assert counted[("unmatched", "GET")] == 1
    assert not any("nobody" in route for route, _ in counted)
    statuses = {
        labels["status"]
        for labels, _ in samples(client, "ariane_http_request_duration_seconds_count")
        if labels["route"] == "/api/profiles/{profile_id}"
    }
    assert statuses == {"404"}


def test_openapi_lists_the_admin_routes(client: TestClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert documented >= set(api_routes(client))
    assert ("GET", "/health") in documented
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    consent = spec["paths"]["/api/profiles/{profile_id}/consents/{purpose}"]["put"]
    assert consent["security"] == [{"HTTPBearer": []}]


def test_admin_bodies_are_bounded_as_they_arrive(db_url: str, clock: FakeClock) -> None:
    """A 52 MB preview took 88 s and left the server at 3.5 GB: bodies are refused as
    soon as they pass the limit, declared or streamed, and smaller ones go through."""
    app = build(Settings(database_url=db_url, max_admin_body_bytes=10_000), clock=clock)
    with TestClient(create_app(app)) as client:
        token = {"Authorization": f"Bearer {app.access.create_token('admin')[1]}"}
        big = {"name": "x" * 20_000}
        declared = client.post("/api/sources", json=big, headers=token)
        assert (declared.status_code, declared.json()["code"]) == (413, "too_large")
        assert "max_admin_body_bytes" in declared.json()["message"]

        def streamed() -> Iterator[bytes]:
            yield b'{"name": "'
            for _ in range(100):
                yield b"y" * 1_000
            yield b'"}'

        chunked = client.post("/api/sources", content=streamed(), headers=token)
        assert chunked.status_code == 413
        assert client.post("/api/sources", json={"name": "small"}, headers=token).status_code == 201
        listed = client.get("/api/sources", headers=token).json()["sources"]
        assert [source["name"] for source in listed] == ["small"]
    app.close()
