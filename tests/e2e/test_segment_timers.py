"""The timer loop of a running server moves people out of a segment when a window empties,
with no event to trigger it, and picks up after a crash."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from ariane.domain.clock import iso, parse_timestamp
from tests.e2e.conftest import Server, ariane, last_line

pytestmark = pytest.mark.slow


def _history(admin: httpx.Client) -> list[dict[str, str]]:
    response = admin.get("/api/segments/recent/history")
    assert response.status_code == 200, response.text
    changes: list[dict[str, str]] = response.json()["changes"]
    return changes


def _wait_for_exits(admin: httpx.Client, count: int, timeout: float) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exits = [c for c in _history(admin) if c["change"] == "exited"]
        if len(exits) >= count:
            return exits
        time.sleep(0.1)
    raise AssertionError(f"expected {count} exits, history is {_history(admin)}")


def test_a_running_server_fires_timers_and_a_restarted_one_catches_up(
    server: Server, admin: httpx.Client
) -> None:
    created = admin.post(
        "/api/segments",
        json={
            "name": "recent",
            "description": "",
            "condition": {"event": "Ping", "count": {"gte": 1}, "within": "PT1S"},
        },
    )
    assert created.status_code == 201, created.text
    write_key = last_line(ariane(server.db_url, "sources", "create", "app"))

    def ping(user: str) -> datetime:
        at = datetime.now(UTC)
        sent = httpx.post(
            f"{server.url}/v1/track",
            json={
                "userId": user,
                "event": "Ping",
                "timestamp": iso(at),
                "messageId": uuid.uuid4().hex,
            },
            auth=(write_key, ""),
        )
        assert sent.status_code == 200, sent.text
        return at

    pinged = ping("ada")
    [exit_] = _wait_for_exits(admin, 1, timeout=15)
    # Never before the window emptied.
    assert parse_timestamp(exit_["at"]) >= pinged + timedelta(seconds=1)

    # A timer that falls due while no server runs fires at the next start.
    ping("bob")
    server.kill()
    time.sleep(1.5)
    server.start()
    exits = _wait_for_exits(admin, 2, timeout=15)
    assert len(exits) == 2
