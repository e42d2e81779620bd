"""/api/segments and /api/computed-traits on both databases: definitions, members,
history, previews, the errors that name the faulty node, and the 360° view."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from tests.conftest import FakeClock
from tests.integration.test_admin_api import basic
from tests.integration.test_segments import TRIAL_CONDITION

SUBSCRIBERS = {"trait": "plan", "op": "eq", "value": "paid"}
ORDERS_30D = {"kind": "count", "event": "Order Completed", "within": "P30D"}
# The three conditions of issue 3, exactly as written there.
ENGAGED_TRIAL = TRIAL_CONDITION
BROWSING = {"event": "Page Viewed", "count": {"gte": 1}, "within": "PT3S"}
DORMANT = {"event": "App Opened", "count": {"eq": 0}, "within": "P3D"}


class Api:
    """The admin API as an admin uses it, and the tracking API to make people act."""

    def __init__(self, client: TestClient, admin: dict[str, str], write_key: str) -> None:
        self.client = client
        self.admin = admin
        self.write_key = write_key

    def send(self, user: str, event: str | None = None, **fields: Any) -> str:
        message: dict[str, Any] = {"userId": user, "messageId": uuid.uuid4().hex}
        if event is None:
            message.update(type="identify", traits=fields)
        else:
            message.update(type="track", event=event, properties=fields)
        sent = self.client.post(
            "/v1/batch", json={"batch": [message]}, headers=basic(self.write_key)
        )
        assert sent.status_code == 200, sent.text
        found = self.get("/api/profiles/lookup", params={"type": "user_id", "value": user})
        profile_id: str = found["id"]
        return profile_id

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, headers=self.admin, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def create(self, name: str, condition: dict[str, Any], description: str = "") -> Any:
        body = {"name": name, "description": description, "condition": condition}
        response = self.client.post("/api/segments", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        return response.json()

    def trait(self, name: str, definition: dict[str, Any]) -> Any:
        response = self.client.post(
            "/api/computed-traits", json={"name": name, **definition}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        return response.json()

    def members(self, segment: str) -> set[str]:
        page = self.get(f"/api/segments/{segment}/members", params={"limit": 1000})
        return {m["profile_id"] for m in page["members"]}


@pytest.fixture
def api(client: TestClient, admin_token: dict[str, str], write_key: str) -> Api:
    return Api(client, admin_token, write_key)


def test_create_read_replace_and_delete_a_segment(
    api: Api, client: TestClient, admin_token: dict[str, str], clock: FakeClock
) -> None:
    ada = api.send("ada", plan="trial")
    api.send("bob", plan="paid")

    created = api.create("trial", {"trait": "plan", "op": "eq", "value": "trial"}, "On trial")
    assert created["members"] == 1
    assert created["name"] == "trial" and created["description"] == "On trial"
    assert created["condition"] == {"trait": "plan", "op": "eq", "value": "trial"}
    assert datetime.fromisoformat(created["created_at"]) == clock()
    assert api.members("trial") == {ada}

    by_id = api.get(f"/api/segments/{created['id']}")
    assert by_id == api.get("/api/segments/trial") == created
    assert api.get("/api/segments") == {"segments": [created]}

    clock.advance(minutes=1)
    replaced = client.put(
        f"/api/segments/{created['id']}",
        json={"name": "trial", "condition": {"trait": "plan", "op": "exists"}},
        headers=admin_token,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["members"] == 2
    assert replaced.json()["description"] == ""
    assert datetime.fromisoformat(replaced.json()["updated_at"]) == clock()
    assert len(api.members("trial")) == 2

    deleted = client.delete("/api/segments/trial", headers=admin_token)
    assert deleted.status_code == 204 and deleted.content == b""
    assert api.get("/api/segments") == {"segments": []}
    assert client.get(f"/api/segments/{created['id']}", headers=admin_token).status_code == 404


def test_segment_errors_say_what_is_wrong(api: Api, client: TestClient) -> None:
    api.create("subscribers", SUBSCRIBERS)
    api.create("engaged", {"segment": "subscribers"})
    headers = api.admin

    taken = client.post(
        "/api/segments", json={"name": "subscribers", "condition": SUBSCRIBERS}, headers=headers
    )
    assert taken.status_code == 409
    assert taken.json() == {
        "code": "conflict",
        "message": "a segment named 'subscribers' exists already",
        "field": "name",
    }
    renamed = client.put(
        "/api/segments/subscribers",
        json={"name": "payers", "condition": SUBSCRIBERS},
        headers=headers,
    )
    assert renamed.status_code == 409 and renamed.json()["field"] == "name"
    in_use = client.delete("/api/segments/subscribers", headers=headers)
    assert in_use.status_code == 409
    assert "used by engaged" in in_use.json()["message"]

    for method in ("GET", "PUT", "DELETE"):
        body = {"name": "nope", "condition": SUBSCRIBERS} if method == "PUT" else None
        missing = client.request(method, "/api/segments/nope", json=body, headers=headers)
        assert missing.status_code == 404, method
        assert missing.json() == {
            "code": "not_found",
            "message": "no segment 'nope'",
            "field": "segment",
        }
    for path in ("/api/segments/nope/members", "/api/segments/nope/history"):
        assert client.get(path, headers=headers).status_code == 404, path

    no_condition = client.post("/api/segments", json={"name": "x"}, headers=headers)
    assert no_condition.status_code == 422 and no_condition.json()["field"] == "condition"
    not_an_object = client.post(
        "/api/segments", json={"name": "x", "condition": [SUBSCRIBERS]}, headers=headers
    )
    assert not_an_object.status_code == 422 and not_an_object.json()["field"] == "condition"
    typo = client.post(
        "/api/segments", json={"name": "x", "conditions": SUBSCRIBERS}, headers=headers
    )
    assert typo.status_code == 422
    blank = client.post(
        "/api/segments", json={"name": " ", "condition": SUBSCRIBERS}, headers=headers
    )
    assert blank.status_code == 422 and blank.json()["field"] == "name"
    assert [s["name"] for s in api.get("/api/segments")["segments"]] == ["engaged", "subscribers"]


@pytest.mark.parametrize(
    ("condition", "field", "says"),
    [
        (
            {"all": [SUBSCRIBERS, {"trait": "plan", "op": "equals", "value": "x"}]},
            "condition.all[1].op",
            "unknown operator 'equals'",
        ),
        (
            {"all": [SUBSCRIBERS, {"event": "Feature Used", "count": {"gte": "three"}}]},
            "condition.all[1].count.gte",
            "a count bound is a whole number",
        ),
        (
            {"all": [SUBSCRIBERS, {"event": "Feature Used", "count": {"atleast": 3}}]},
            "condition.all[1].count.atleast",
            "unknown bound 'atleast'",
        ),
        ({**DORMANT, "within": "3 days"}, "condition.within", "is not an ISO-8601 duration"),
        (
            {"trait": "trial_started_at", "op": "older_than", "value": "P25"},
            "condition.value",
            "is not an ISO-8601 duration",
        ),
        ({"not": {"segment": "subscribers"}}, "condition.not.segment", "unknown segment"),
        (
            {"any": [SUBSCRIBERS, {"computed": "orders_30d", "op": "gte", "value": 2}]},
            "condition.any[1].computed",
            "unknown computed trait 'orders_30d'",
        ),
        (
            {"event": "Feature Used", "where": [{"property": "feature", "op": "like"}]},
            "condition.where[0].op",
            "unknown operator 'like'",
        ),
        ({"consent": "marketing_email", "status": "maybe"}, "condition.status", "status is one of"),
        ({"trait": "plan", "op": "eq", "value": "x", "extra": 1}, "condition.extra", "unknown key"),
        ({"all": []}, "condition.all", "needs a non-empty list"),
        ({"loop": {"segment": "loop"}}, "condition", "a condition has exactly one of"),
    ],
)
def test_an_invalid_condition_is_422_naming_the_faulty_node(
    api: Api, client: TestClient, condition: dict[str, Any], field: str, says: str
) -> None:
    api.create("kept", SUBSCRIBERS)
    created = client.post(
        "/api/segments", json={"name": "bad", "condition": condition}, headers=api.admin
    )
    replaced = client.put(
        "/api/segments/kept", json={"name": "kept", "condition": condition}, headers=api.admin
    )
    for response in (created, replaced):
        assert response.status_code == 422, response.text
        body = response.json()
        assert (body["code"], body["field"]) == ("invalid_definition", field)
        assert says in body["message"]
    # Nothing was saved, nor changed.
    [kept] = api.get("/api/segments")["segments"]
    assert (kept["name"], kept["condition"]) == ("kept", SUBSCRIBERS)


def test_a_cycle_between_segments_is_refused(api: Api, client: TestClient) -> None:
    itself = client.post(
        "/api/segments",
        json={"name": "loop", "condition": {"not": {"segment": "loop"}}},
        headers=api.admin,
    )
    assert itself.status_code == 422
    assert itself.json()["field"] == "condition"
    assert "cycle: loop → loop" in itself.json()["message"]

    api.create("a", SUBSCRIBERS)
    api.create("b", {"all": [{"segment": "a"}, {"trait": "plan", "op": "exists"}]})
    api.create("c", {"segment": "b"})
    closing = client.put(
        "/api/segments/a",
        json={"name": "a", "condition": {"any": [SUBSCRIBERS, {"segment": "c"}]}},
        headers=api.admin,
    )
    assert closing.status_code == 422
    assert closing.json()["field"] == "condition"
    assert "cycle: a → c → b → a" in closing.json()["message"]
    assert api.get("/api/segments/a")["condition"] == SUBSCRIBERS


def test_the_conditions_of_the_issue_are_accepted_as_written(
    api: Api, clock: FakeClock, container: Container
) -> None:
    api.trait("orders_30d", ORDERS_30D)
    api.create("subscribers", SUBSCRIBERS)
    saved = {
        name: api.create(name, condition)
        for name, condition in (
            ("engaged_trial", ENGAGED_TRIAL),
            ("browsing", BROWSING),
            ("dormant", DORMANT),
        )
    }
    assert saved["engaged_trial"]["condition"] == ENGAGED_TRIAL
    assert saved["browsing"]["condition"] == BROWSING
    assert saved["dormant"]["condition"] == DORMANT

    # And they mean what they say.
    ada = api.send("ada", plan="trial", trial_started_at=clock().isoformat())
    for feature in ("alerts", "map", "search", "map"):
        api.send("ada", "Feature Used", feature=feature)
    api.send("ada", "Page Viewed")
    assert api.members("engaged_trial") == set()
    assert api.members("browsing") == api.members("dormant") == {ada}
    api.send("ada", "Order Completed")
    api.send("ada", "Order Completed")
    api.send("ada", "App Opened")
    assert api.members("engaged_trial") == {ada}
    assert api.members("dormant") == set()
    clock.advance(seconds=3)
    container.segments.fire_due()
    assert api.members("browsing") == set()


def test_members_come_in_pages(api: Api, client: TestClient) -> None:
    people = {api.send(f"user-{n}", "App Opened") for n in range(7)}
    api.send("idle", plan="trial")
    segment = api.create("openers", {"event": "App Opened"})
    assert segment["members"] == 7

    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.get(f"/api/segments/{segment['id']}/members", params=params)
        pages += 1
        assert page["total"] == 7 and page["segment_id"] == segment["id"]
        seen += page["members"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["members"]) == 3
    assert pages == 3
    assert [m["profile_id"] for m in seen] == sorted(people)
    assert all(datetime.fromisoformat(m["entered_at"]) for m in seen)

    exact = api.get("/api/segments/openers/members", params={"limit": 7})
    assert len(exact["members"]) == 7 and exact["next_cursor"] is None
    for limit in (0, 1001):
        wrong = client.get(
            "/api/segments/openers/members", params={"limit": limit}, headers=api.admin
        )
        assert wrong.status_code == 422 and wrong.json()["field"] == "limit"


def test_history_of_entries_and_exits_comes_in_pages(
    api: Api, client: TestClient, clock: FakeClock, container: Container
) -> None:
    api.create("browsing", BROWSING)
    trial = api.create("trial", {"trait": "plan", "op": "eq", "value": "trial"})
    ada = api.send("ada", plan="trial")
    bob = api.send("bob", plan="trial")
    cy = api.send("cy", plan="trial")
    api.send("ada", plan="paid")
    api.send("bob", plan="paid")
    api.send("ada", plan="trial")

    changes: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.get(f"/api/segments/{trial['id']}/history", params=params)
        changes += page["changes"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(c["profile_id"], c["change"]) for c in reversed(changes)] == [
        (ada, "entered"),
        (bob, "entered"),
        (cy, "entered"),
        (ada, "exited"),
        (bob, "exited"),
        (ada, "entered"),
    ]
    assert {c["cause"] for c in changes} == {"event"}
    ids = [c["id"] for c in changes]
    assert ids == sorted(ids, reverse=True)
    assert all(datetime.fromisoformat(c["at"]) == clock() for c in changes)

    # Time alone: the browsing window empties.
    api.send("cy", "Page Viewed")
    clock.advance(seconds=3)
    container.segments.fire_due()
    browsing = api.get("/api/segments/browsing/history")["changes"]
    assert [(c["profile_id"], c["change"], c["cause"]) for c in browsing] == [
        (cy, "exited", "time"),
        (cy, "entered", "event"),
    ]
    for cursor_value in ("garbage", "0"):
        wrong = client.get(
            "/api/segments/trial/history", params={"cursor": cursor_value}, headers=api.admin
        )
        assert wrong.status_code == 422 and wrong.json()["field"] == "cursor"


def test_the_360_view_lists_segments_with_their_entry_time_and_computed_traits(
    api: Api, clock: FakeClock
) -> None:
    api.trait("orders", {"kind": "count", "event": "Order Completed"})
    api.trait("basket", {"kind": "average", "event": "Order Completed", "property": "total"})
    api.trait(
        "favourite", {"kind": "most_frequent", "event": "Order Completed", "property": "shop"}
    )
    buyers = api.create("buyers", {"computed": "orders", "op": "gte", "value": 1})
    api.create("big_buyers", {"computed": "orders", "op": "gte", "value": 2})
    ada = api.send("ada", "Order Completed", total=10, shop="web")
    entered = clock()
    clock.advance(minutes=5)
    api.send("ada", "Order Completed", total=30, shop="web")

    profile = api.get(f"/api/profiles/{ada}")
    assert profile["computed_traits"] == {"basket": 20, "favourite": "web", "orders": 2}
    assert [(s["name"], s["id"]) for s in profile["segments"]] == [
        ("big_buyers", api.get("/api/segments/big_buyers")["id"]),
        ("buyers", buyers["id"]),
    ]
    times = {s["name"]: datetime.fromisoformat(s["entered_at"]) for s in profile["segments"]}
    assert times == {"buyers": entered, "big_buyers": clock()}
    # The engine's own bookkeeping stays out of the view.
    assert set(profile["computed"]) == {"event_counts", "type_counts", "first_seen", "last_seen"}

    bob = api.send("bob", plan="trial")
    assert api.get(f"/api/profiles/{bob}")["segments"] == []
    assert api.get(f"/api/profiles/{bob}")["computed_traits"] == {
        "basket": None,
        "favourite": None,
        "orders": 0,
    }


def test_preview_counts_and_samples_without_saving(api: Api, client: TestClient) -> None:
    people = {api.send(f"trial-{n}", plan="trial") for n in range(4)}
    api.send("paid", plan="paid")
    condition = {"trait": "plan", "op": "eq", "value": "trial"}

    preview = client.post(
        "/api/segments/preview", json={"condition": condition, "sample": 2}, headers=api.admin
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["count"] == 4
    assert len(body["sample"]) == 2 and set(body["sample"]) <= people
    assert body["condition"] == condition
    everyone = client.post(
        "/api/segments/preview", json={"condition": condition}, headers=api.admin
    ).json()
    assert set(everyone["sample"]) == people
    assert api.get("/api/segments") == {"segments": []}

    invalid = client.post(
        "/api/segments/preview",
        json={"condition": {"all": [condition, {"trait": "plan", "op": "is"}]}},
        headers=api.admin,
    )
    assert invalid.status_code == 422
    assert invalid.json()["field"] == "condition.all[1].op"
    too_many = client.post(
        "/api/segments/preview", json={"condition": condition, "sample": 101}, headers=api.admin
    )
    assert too_many.status_code == 422 and too_many.json()["field"] == "sample"


def test_analysts_read_segments_and_admins_change_them(
    api: Api, client: TestClient, analyst_token: dict[str, str]
) -> None:
    api.trait("orders", {"kind": "count", "event": "Order Completed"})
    api.create("trial", {"trait": "plan", "op": "eq", "value": "trial"})
    for path in (
        "/api/segments",
        "/api/segments/trial",
        "/api/segments/trial/members",
        "/api/segments/trial/history",
        "/api/computed-traits",
    ):
        assert client.get(path, headers=analyst_token).status_code == 200, path
    refused = client.post(
        "/api/segments", json={"name": "x", "condition": SUBSCRIBERS}, headers=analyst_token
    )
    assert refused.status_code == 403
    assert client.delete("/api/computed-traits/orders", headers=analyst_token).status_code == 403


def test_computed_traits_crud(
    api: Api, client: TestClient, admin_token: dict[str, str], clock: FakeClock
) -> None:
    ada = api.send("ada", "Order Completed", total=12.5)
    api.send("ada", "Order Completed", total=7.5)

    created = api.trait("revenue", {"kind": "sum", "event": "Order Completed", "property": "total"})
    assert created == {
        "name": "revenue",
        "description": "",
        "kind": "sum",
        "event": "Order Completed",
        "property": "total",
        "created_at": created["created_at"],
        "updated_at": created["created_at"],
    }
    first_week = api.trait(
        "first_week",
        {
            "description": "Orders in the first week",
            "kind": "count",
            "event": "Order Completed",
            "within": "P7D",
            "from": "first_seen",
        },
    )
    assert (first_week["within"], first_week["from"]) == ("P7D", "first_seen")
    assert api.get(f"/api/profiles/{ada}")["computed_traits"] == {"first_week": 2, "revenue": 20}

    taken = client.post(
        "/api/computed-traits",
        json={"name": "revenue", "kind": "count", "event": "E"},
        headers=admin_token,
    )
    assert taken.status_code == 409 and taken.json()["field"] == "name"

    clock.advance(minutes=1)
    replaced = client.put(
        "/api/computed-traits/revenue",
        json={
            "kind": "max",
            "event": "Order Completed",
            "property": "total",
            "where": [{"property": "total", "op": "lt", "value": 10}],
        },
        headers=admin_token,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["kind"] == "max"
    assert datetime.fromisoformat(replaced.json()["updated_at"]) == clock()
    assert api.get(f"/api/profiles/{ada}")["computed_traits"]["revenue"] == 7.5
    listed = api.get("/api/computed-traits")["computed_traits"]
    assert [t["name"] for t in listed] == ["first_week", "revenue"]

    unknown = client.put(
        "/api/computed-traits/nope", json={"kind": "count", "event": "E"}, headers=admin_token
    )
    assert unknown.status_code == 404 and unknown.json()["field"] == "name"
    renamed = client.put(
        "/api/computed-traits/revenue",
        json={"name": "income", "kind": "count", "event": "E"},
        headers=admin_token,
    )
    assert renamed.status_code == 409 and renamed.json()["field"] == "name"

    api.create("buyers", {"computed": "revenue", "op": "gt", "value": 0})
    in_use = client.delete("/api/computed-traits/revenue", headers=admin_token)
    assert in_use.status_code == 409 and "used by buyers" in in_use.json()["message"]
    deleted = client.delete("/api/computed-traits/first_week", headers=admin_token)
    assert deleted.status_code == 204 and deleted.content == b""
    assert client.delete("/api/computed-traits/first_week", headers=admin_token).status_code == 404
    assert [t["name"] for t in api.get("/api/computed-traits")["computed_traits"]] == ["revenue"]


@pytest.mark.parametrize(
    ("definition", "field", "says"),
    [
        ({"kind": "median", "event": "E"}, "kind", "unknown kind 'median'"),
        ({"kind": "count", "event": "E", "within": "P3X"}, "within", "not an ISO-8601 duration"),
        ({"kind": "count", "event": "E", "within": "PT0S"}, "within", "longer than zero"),
        ({"kind": "sum", "event": "E"}, "property", "needs a name"),
        ({"kind": "count", "event": "E", "property": "total"}, "property", "takes no property"),
        ({"kind": "count", "event": "E", "from": "first_seen"}, "from", "needs within"),
        (
            {"kind": "count", "event": "E", "where": [{"property": "x", "op": "near", "value": 1}]},
            "where[0].op",
            "unknown operator 'near'",
        ),
        (
            {"kind": "count", "event": "E", "between": ["2024-02-01", "2024-01-01"]},
            "between",
            "the start must come before the end",
        ),
        ({"kind": "count", "event": " "}, "event", "needs the name of a track event"),
        ({"kind": "count"}, "event", "Field required"),
        ({"kind": "count", "event": "E", "window": "P1D"}, "window", "Extra inputs"),
    ],
)
def test_an_invalid_computed_trait_is_422_naming_the_key(
    client: TestClient,
    admin_token: dict[str, str],
    definition: dict[str, Any],
    field: str,
    says: str,
) -> None:
    response = client.post(
        "/api/computed-traits", json={"name": "bad", **definition}, headers=admin_token
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert says in response.json()["message"]
    listed = client.get("/api/computed-traits", headers=admin_token).json()
    assert listed == {"computed_traits": []}
