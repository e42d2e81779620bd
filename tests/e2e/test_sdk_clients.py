"""The real Segment and RudderStack Python clients, unchanged, against `ariane serve`."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from rudderstack.analytics import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics import Client as SegmentClient  # type: ignore[import-untyped]

from tests.e2e.conftest import Server, ariane, last_line

pytestmark = pytest.mark.slow

USERS = 15


class ErrorLog:
    """The clients' on_error callback: any call is a failed upload."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            self.errors.append(f"{error!r} ({len(batch)} events)")


def send_journeys(client: Any, prefix: str) -> set[str]:
    """Every kind of call, for USERS people, through either SDK (both descend from
    analytics-python); returns the messageIds the client made."""
    sent: list[Any] = []
    for n in range(USERS):
        user, anonymous = f"{prefix}-{n}", f"{prefix}-anon-{n}"
        sent += [
            client.page(anonymous_id=anonymous, name="Pricing", properties={"path": "/pricing"}),
            client.alias(previous_id=anonymous, user_id=user),
            client.identify(user, {"email": f"{prefix}.{n}@example.com", "plan": "trial"}),
            client.track(user, "Order Completed", {"revenue": 10 + n, "currency": "EUR"}),
            client.track(user, "Order Completed", {"revenue": 5, "currency": "EUR"}),
            client.screen(user, name="Home"),
            client.group(user, f"{prefix}-company"),
        ]
    accepted = {msg["messageId"] for queued, msg in sent if queued}
    assert len(accepted) == len(sent), "the client refused to queue some calls"
    return accepted


def check_profiles(admin: httpx.Client, prefix: str) -> set[str]:
    """Each person is one profile with everything they did; returns the stored messageIds."""
    stored: set[str] = set()
    for n in range(USERS):
        found = admin.get(
            "/api/profiles/lookup", params={"type": "email", "value": f"{prefix}.{n}@example.com"}
        )
        assert found.status_code == 200, found.text
        profile = found.json()
        assert profile["traits"]["plan"] == "trial"
        assert {"type": "user_id", "value": f"{prefix}-{n}"} in [
            {"type": i["type"], "value": i["value"]} for i in profile["identities"]
        ]
        by_anonymous_id = admin.get(
            "/api/profiles/lookup", params={"type": "anonymous_id", "value": f"{prefix}-anon-{n}"}
        )
        assert by_anonymous_id.json()["id"] == profile["id"], "alias did not join the visit"
        assert profile["computed"]["type_counts"] == {
            "page": 1,
            "alias": 1,
            "identify": 1,
            "track": 2,
            "screen": 1,
            "group": 1,
        }
        assert profile["computed"]["event_counts"] == {"Order Completed": 2}
        events = admin.get(f"/api/profiles/{profile['id']}/events", params={"limit": 100}).json()
        assert len(events["events"]) == 7
        for event in events["events"]:
            assert event["context"]["library"]["name"] == "analytics-python"
            stored.add(event["messageId"])
    return stored


def new_source(server: Server, name: str) -> str:
    return last_line(ariane(server.db_url, "sources", "create", name))


def test_segment_client_batched_gzip_and_synchronous(server: Server, admin: httpx.Client) -> None:
    write_key = new_source(server, "segment")
    on_error = ErrorLog()
    batched = SegmentClient(
        write_key, host=server.url, gzip=True, on_error=on_error, upload_size=40, max_retries=2
    )
    sent = send_journeys(batched, "seg")
    batched.flush()
    batched.shutdown()
    assert on_error.errors == []

    # sync_mode posts each call at once and raises on any answer but 2xx.
    synchronous = SegmentClient(write_key, host=server.url, gzip=False, sync_mode=True)
    sent |= send_journeys(synchronous, "segsync")

    assert check_profiles(admin, "seg") | check_profiles(admin, "segsync") == sent


def test_rudderstack_client(server: Server, admin: httpx.Client) -> None:
    write_key = new_source(server, "rudder")
    on_error = ErrorLog()
    client = RudderClient(
        write_key, host=server.url, gzip=True, on_error=on_error, upload_size=40, max_retries=2
    )
    sent = send_journeys(client, "rudder")
    client.flush()
    client.shutdown()
    assert on_error.errors == []

    plain = RudderClient(write_key, host=server.url, gzip=False, on_error=on_error)
    sent |= send_journeys(plain, "rudderplain")
    plain.flush()
    plain.shutdown()
    assert on_error.errors == []

    assert check_profiles(admin, "rudder") | check_profiles(admin, "rudderplain") == sent
