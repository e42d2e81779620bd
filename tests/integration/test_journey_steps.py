"""The steps and the admin's hands on a journey, on both databases, through the API:
splits on a condition, weighted variants, a wait for a segment, an exit on leaving one,
re-entry after a cool-down, and who waits where, moved on, taken out, or migrated to a
new version."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from tests.conftest import FakeClock
from tests.integration.test_journey_use_cases import apply, event, person, send, settle

INBOX = {"name": "in-app", "type": "inbox", "purpose": "marketing_app"}
TEMPLATES = [
    {"name": name, "subject": name, "text": name} for name in ("vip", "regular", "a", "b", "done")
]


def segment(client: TestClient, admin: dict[str, str], name: str, condition: Any) -> None:
    made = client.post("/api/segments", json={"name": name, "condition": condition}, headers=admin)
    assert made.status_code == 201, made.text


def sent(client: TestClient, admin: dict[str, str], journey: str) -> dict[str, dict[str, int]]:
    steps = client.get(f"/api/journeys/{journey}/steps", headers=admin).json()["steps"]
    return {step["id"]: step["messages"] for step in steps if step["kind"] == "send"}


def send_step(ident: str, template: str, then: str | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"id": ident, "send": {"channel": "in-app", "template": template}}
    if then is not None:
        step["next"] = then
    return step


def test_a_split_sends_each_person_down_their_branch(
    client: TestClient, admin_token: dict[str, str], write_key: str, container: Container
) -> None:
    segment(client, admin_token, "vips", {"trait": "vip", "op": "eq", "value": True})
    steps = [
        {"id": "is-vip", "split": {"segment": "vips"}, "then": "to-vip", "else": "to-regular"},
        send_step("to-vip", "vip", then="exit"),
        send_step("to-regular", "regular"),
    ]
    journey = {"id": "split", "entry": {"event": "Go"}, "steps": steps}
    apply(client, admin_token, {"channels": [INBOX], "templates": TEMPLATES, "journeys": [journey]})
    send(
        client,
        write_key,
        person("ada", vip=True),
        person("bob", vip=False),
        event("ada", "Go"),
        event("bob", "Go"),
    )
    settle(container)
    assert sent(client, admin_token, "split") == {"to-vip": {"sent": 1}, "to-regular": {"sent": 1}}
    report = client.get("/api/journeys/split/steps", headers=admin_token).json()
    assert report["steps"][0]["moved_on"] == 2
    assert report["ended"] == {"done": 2}


def test_variants_split_people_by_weight_and_each_keeps_theirs(
    client: TestClient, admin_token: dict[str, str], write_key: str, container: Container
) -> None:
    variants = [
        {"name": "a", "weight": 1, "then": "send-a"},
        {"name": "b", "weight": 1, "then": "send-b"},
    ]
    steps = [
        {"id": "ab", "random": {"variants": variants}},
        send_step("send-a", "a", then="exit"),
        send_step("send-b", "b"),
    ]
    journey = {"id": "ab", "entry": {"event": "Go"}, "reentry": "always", "steps": steps}
    apply(client, admin_token, {"channels": [INBOX], "templates": TEMPLATES, "journeys": [journey]})
    people = [f"p{n}" for n in range(60)]
    send(client, write_key, *(person(p) for p in people), *(event(p, "Go") for p in people))
    settle(container)
    first = sent(client, admin_token, "ab")
    a, b = first["send-a"]["sent"], first["send-b"]["sent"]
    assert a + b == 60 and 15 <= a <= 45
    # Everyone enters again: each gets the same variant as before.
    send(client, write_key, *(event(p, "Go", 1) for p in people))
    settle(container)
    again = sent(client, admin_token, "ab")
    assert again == {"send-a": {"sent": 2 * a}, "send-b": {"sent": 2 * b}}


def test_a_wait_for_a_segment_and_an_exit_on_leaving_one(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
) -> None:
    segment(client, admin_token, "trial", {"trait": "plan", "op": "eq", "value": "trial"})
    segment(client, admin_token, "active", {"event": "Feature Used", "count": {"gte": 2}})
    steps = [
        {"id": "until-active", "wait": {"segment": "active", "timeout": "P7D"},
         "on_event": "praise", "on_timeout": "exit"},
        send_step("praise", "done"),
    ]  # fmt: skip
    journey = {
        "id": "onboarding",
        "entry": {"segment": "trial"},
        "exit": [{"left": "trial"}],
        "steps": steps,
    }
    apply(client, admin_token, {"channels": [INBOX], "templates": TEMPLATES, "journeys": [journey]})
    send(client, write_key, person("ada", plan="trial"), person("bob", plan="trial"))
    settle(container)
    waiting = client.get("/api/journeys/onboarding/enrollments", headers=admin_token).json()
    assert [e["waiting_for"] for e in waiting["enrollments"]] == ["segment:active"] * 2
    # Ada becomes active: her wait ends. Bob subscribes: he leaves the trial, and the journey.
    send(client, write_key, event("ada", "Feature Used", 1), event("ada", "Feature Used", 2))
    send(client, write_key, {**person("bob", plan="paid"), "messageId": "bob-paid"})
    settle(container)
    assert sent(client, admin_token, "onboarding") == {"praise": {"sent": 1}}
    report = client.get("/api/journeys/onboarding/steps", headers=admin_token).json()
    assert report["steps"][0]["exited"] == 1
    assert report["ended"] == {"done": 1, "exited": 1}


def test_reentry_after_a_cool_down(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    clock: FakeClock,
) -> None:
    journey = {
        "id": "nudge",
        "entry": {"event": "Go"},
        "reentry": "P7D",
        "steps": [send_step("s", "a")],
    }
    apply(client, admin_token, {"channels": [INBOX], "templates": TEMPLATES, "journeys": [journey]})
    send(client, write_key, person("ada"), event("ada", "Go", 1))
    settle(container)
    clock.advance(days=6)
    send(client, write_key, event("ada", "Go", 2))
    settle(container)
    clock.advance(days=1, seconds=1)
    send(client, write_key, event("ada", "Go", 3))
    settle(container)
    assert sent(client, admin_token, "nudge") == {"s": {"sent": 2}}


def test_entries_in_one_batch_meet_the_reentry_rule_as_if_one_by_one(
    client: TestClient, admin_token: dict[str, str], write_key: str, container: Container
) -> None:
    # The engine reads the batch's last entries at once: those made earlier in the same
    # batch must count, whether the person is still in (a delay) or already out.
    waits = {
        "id": "waits",
        "entry": {"event": "Go", "key": "properties.cart"},
        "reentry": "always",
        "steps": [{"id": "pause", "delay": {"for": "P1D"}}, send_step("s", "a")],
    }
    once = {"id": "once", "entry": {"event": "Go"}, "steps": [send_step("s", "b")]}
    again = {
        "id": "again",
        "entry": {"event": "Go"},
        "reentry": "always",
        "steps": [send_step("s", "done")],
    }
    apply(
        client,
        admin_token,
        {"channels": [INBOX], "templates": TEMPLATES, "journeys": [waits, once, again]},
    )
    send(
        client,
        write_key,
        person("ada"),
        *(event("ada", "Go", n, cart=cart) for n, cart in enumerate(["c1", "c1", "c2", "c1"])),
    )
    settle(container)
    # One open enrollment per cart while the first waits; one entry ever; four in a row.
    assert (
        client.get("/api/journeys/waits/steps", headers=admin_token).json()["steps"][0]["waiting"]
        == 2
    )
    assert sent(client, admin_token, "once") == {"s": {"sent": 1}}
    assert sent(client, admin_token, "again") == {"s": {"sent": 4}}


def test_an_admin_sees_who_waits_where_moves_them_on_takes_them_out_and_migrates(
    client: TestClient, admin_token: dict[str, str], write_key: str, container: Container
) -> None:
    def journey(timeout: str) -> dict[str, Any]:
        steps = [
            {"id": "pause", "wait": {"event": "Never", "timeout": timeout}},
            send_step("after", "done"),
        ]
        return {"id": "slow", "entry": {"event": "Go"}, "steps": steps}

    apply(
        client,
        admin_token,
        {"channels": [INBOX], "templates": TEMPLATES, "journeys": [journey("P30D")]},
    )
    send(
        client,
        write_key,
        *(person(p) for p in ("ada", "bob", "eve")),
        *(event(p, "Go") for p in ("ada", "bob", "eve")),
    )
    settle(container)
    listed = client.get("/api/journeys/slow/enrollments?step=pause", headers=admin_token).json()
    ids = [e["id"] for e in listed["enrollments"]]
    assert len(ids) == 3 and {e["version"] for e in listed["enrollments"]} == {1}
    moved = client.post(f"/api/enrollments/{ids[0]}/move-on", headers=admin_token)
    assert moved.status_code == 200, moved.text
    out = client.post(f"/api/enrollments/{ids[1]}/take-out", headers=admin_token)
    assert out.status_code == 200
    assert (
        client.post(f"/api/enrollments/{ids[1]}/take-out", headers=admin_token).status_code == 404
    )
    settle(container)
    assert sent(client, admin_token, "slow") == {"after": {"sent": 1}}
    # Version 2 waits a day: Eve stays on version 1 until an admin migrates her.
    apply(client, admin_token, {"journeys": [journey("P1D")]})
    [eve] = client.get("/api/journeys/slow/enrollments", headers=admin_token).json()["enrollments"]
    assert eve["version"] == 1
    migrated = client.post(
        "/api/journeys/slow/migrate", json={"from_version": 1}, headers=admin_token
    )
    assert migrated.json() == {"journey": "slow", "moved": 1}
    [eve] = client.get("/api/journeys/slow/enrollments", headers=admin_token).json()["enrollments"]
    assert (eve["version"], eve["step"]) == (2, "pause")
    report = client.get("/api/journeys/slow/steps", headers=admin_token).json()
    assert report["steps"][0]["waiting"] == 1
    assert report["ended"] == {"done": 1, "exited": 1}
