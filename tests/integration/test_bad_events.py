"""Events no database can store are quarantined; they never sink their batch."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient


def test_unstorable_events_are_quarantined_and_the_rest_of_the_batch_kept(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    batch = [
        {"type": "track", "userId": "kept", "event": "Fine"},
        {"type": "track", "userId": "nul\u0000", "event": "E"},
        {"type": "track", "userId": "x", "event": "E", "properties": {"p": "a\u0000b"}},
        {"type": "track", "userId": "x", "event": "E", "timestamp": "0001-01-01T00:00:00+01:00"},
        {"type": "track", "userId": "x", "event": "E", "timestamp": "2999-01-01T00:00:00Z"},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=auth)
    assert response.status_code == 200, response.text

    quarantined = client.get("/api/quarantine", headers=admin_token).json()["events"]
    assert sorted(q["field"] for q in quarantined) == [
        "properties",
        "timestamp",
        "timestamp",
        "userId",
    ]
    kept = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "kept"}, headers=admin_token
    )
    assert kept.status_code == 200
    assert kept.json()["computed"]["event_counts"] == {"Fine": 1}
    unknown = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "x"}, headers=admin_token
    )
    assert unknown.status_code == 404


def test_a_quarantine_page_id_out_of_range_is_refused_with_its_field(
    client: TestClient, admin_token: dict[str, str]
) -> None:
    response = client.get("/api/quarantine", params={"before_id": 2**70}, headers=admin_token)
    assert response.status_code == 422
    assert response.json()["field"].endswith("before_id")


def test_a_nul_in_the_batch_integrations_quarantines_its_events_without_a_500(
    client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    body = {
        "batch": [{"type": "track", "userId": "i-1", "event": "E"}],
        "integrations": {"Mixpanel\u0000": True},
    }
    response = client.post("/v1/batch", json=body, headers=auth)
    assert response.status_code == 200, response.text
    quarantined = client.get("/api/quarantine", headers=admin_token).json()["events"]
    assert [q["field"] for q in quarantined] == ["integrations"]
