"""Websites call the tracking API from their own origin, as the browser SDKs do: CORS on
every answer, errors included, the paths analytics-next and RudderStack post to, and a
503 the SDKs retry when the database cannot take events."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.storage.database import Database
from ariane.storage.tables import events

SITE = "https://shop.example"


def stored(container: Container) -> list[tuple[str, str | None]]:
    with container.db.read() as conn:
        rows = conn.execute(sa.select(events.c.message_id, events.c.type).order_by(events.c.id))
        return [(row.message_id, row.type) for row in rows]


def assert_open_to(response: Any, origin: str = SITE) -> None:
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Retry-After" in response.headers["access-control-expose-headers"]
    assert "Origin" in response.headers["vary"]


def test_a_preflight_is_answered_with_the_headers_the_sdks_send(client: TestClient) -> None:
    asked = "authorization, content-type, anonymousid, x-retry-count, sentat, rsa-token, x-evil"
    answer = client.options(
        "/v1/batch",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert answer.status_code == 204
    assert_open_to(answer)
    allowed = answer.headers["access-control-allow-headers"].split(", ")
    sdk_headers = ["authorization", "content-type", "anonymousid", "x-retry-count", "sentat"]
    assert allowed == [*sdk_headers, "rsa-token"]
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert int(answer.headers["access-control-max-age"]) > 0


def test_analytics_next_paths_and_text_plain_bodies_are_stored(
    client: TestClient, container: Container, write_key: str
) -> None:
    """analytics-next posts `text/plain` (no preflight) with the write key in the body, to
    the first letter of each type, and batches to /v1/b."""
    for path, kind in [("i", "identify"), ("t", "track"), ("p", "page"), ("s", "screen")]:
        body: dict[str, Any] = {
            "type": kind,
            "writeKey": write_key,
            "anonymousId": "anon-1",
            "messageId": f"m-{path}",
        }
        if kind == "track":
            body["event"] = "Viewed"
        sent = client.post(
            f"/v1/{path}",
            content=orjson.dumps(body),
            headers={"Origin": SITE, "Content-Type": "text/plain"},
        )
        assert sent.status_code == 200, sent.text
        assert_open_to(sent)
    batch = {
        "writeKey": write_key,
        "batch": [
            {"type": "group", "anonymousId": "anon-1", "groupId": "g", "messageId": "m-g"},
            {"type": "alias", "userId": "ada", "previousId": "anon-1", "messageId": "m-a"},
        ],
    }
    sent = client.post(
        "/v1/b", content=orjson.dumps(batch), headers={"Origin": SITE, "Content-Type": "text/plain"}
    )
    assert sent.status_code == 200, sent.text
    assert [message_id for message_id, _ in stored(container)] == [
        "m-i",
        "m-t",
        "m-p",
        "m-s",
        "m-g",
        "m-a",
    ]


def test_rudderstack_beacon_batches_are_stored(
    client: TestClient, container: Container, write_key: str
) -> None:
    """navigator.sendBeacon cannot set headers: the write key comes in the query string."""
    batch = {"batch": [{"type": "track", "anonymousId": "a", "event": "Left", "messageId": "b-1"}]}
    sent = client.post(
        f"/beacon/v1/batch?writeKey={write_key}",
        content=orjson.dumps(batch),
        headers={"Origin": SITE, "Content-Type": "text/plain;charset=UTF-8"},
    )
    assert sent.status_code == 200, sent.text
    assert_open_to(sent)
    assert stored(container) == [("b-1", "track")]


def test_errors_are_readable_across_origins(client: TestClient, write_key: str) -> None:
    """A page's script can only read an error (and so honour it) if CORS covers it."""
    unknown = client.post(
        "/v1/t", json={"writeKey": "nope", "event": "x"}, headers={"Origin": SITE}
    )
    assert unknown.status_code == 401
    assert_open_to(unknown)
    broken = client.post("/v1/b", content=b"{", headers={"Origin": SITE}, auth=(write_key, ""))
    assert (broken.status_code, broken.json()["code"]) == (400, "bad_json")
    assert_open_to(broken)
    missing = client.post("/v1/nothing-here", json={}, headers={"Origin": SITE})
    assert missing.status_code == 404
    assert_open_to(missing)


def test_the_admin_api_stays_closed_to_other_origins(
    client: TestClient, admin_token: dict[str, str]
) -> None:
    answer = client.get("/api/sources", headers={**admin_token, "Origin": SITE})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    preflight = client.options(
        "/api/sources", headers={"Origin": SITE, "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_without_an_origin_no_cors_header_is_added(client: TestClient, write_key: str) -> None:
    sent = client.post("/v1/track", json={"userId": "u", "event": "e"}, auth=(write_key, ""))
    assert sent.status_code == 200
    assert "access-control-allow-origin" not in sent.headers


def database_locked_error(path: str) -> sa.exc.OperationalError:
    """What SQLite really raises when another process holds the database too long."""
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
        with pytest.raises(sa.exc.OperationalError) as locked, engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO sources (id) VALUES ('x')"))
        engine.dispose()
        return locked.value
    finally:
        holder.rollback()
        holder.close()


def unreachable_postgres_error() -> sa.exc.OperationalError:
    engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(sa.exc.OperationalError) as refused:
        engine.connect()
    engine.dispose()
    return refused.value


def unavailable_error(container: Container) -> sa.exc.OperationalError:
    """What the container's database really raises when it cannot take a write now."""
    if container.db.dialect.name == "sqlite":
        return database_locked_error(container.settings.database_url.removeprefix("sqlite:///"))
    return unreachable_postgres_error()


def test_busy_or_unreachable_databases_are_told_apart_from_bad_statements(
    tmp_path: Any, db_url: str
) -> None:
    db = Database(db_url)
    try:
        if db.dialect.name == "sqlite":
            assert db.is_unavailable(database_locked_error(db_url.removeprefix("sqlite:///")))
        else:
            assert db.is_unavailable(unreachable_postgres_error())
        with pytest.raises(sa.exc.DBAPIError) as bad, db.read() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
        assert not db.is_unavailable(bad.value)
    finally:
        db.dispose()


def test_a_database_that_cannot_take_events_answers_503_the_sdks_retry(
    client: TestClient, container: Container, write_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = unavailable_error(container)

    def unavailable(*_: Any) -> Any:
        raise failure

    monkeypatch.setattr(container.ingest, "ingest", unavailable)
    answer = client.post(
        "/v1/t",
        content=orjson.dumps({"writeKey": write_key, "anonymousId": "a", "event": "e"}),
        headers={"Origin": SITE},
    )
    assert (answer.status_code, answer.json()["code"]) == (503, "unavailable")
    assert answer.headers["retry-after"] == "1"
    assert_open_to(answer)

    def broken(*_: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(container.ingest, "ingest", broken)
    answer = client.post(
        "/v1/t",
        content=orjson.dumps({"writeKey": write_key, "anonymousId": "a", "event": "e"}),
        headers={"Origin": SITE},
    )
    assert (answer.status_code, answer.json()["code"]) == (500, "internal")
    assert_open_to(answer)
