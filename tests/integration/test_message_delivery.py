"""Handing messages over, on both databases: a channel type of one's own registered like
the built-in ones; a hand-over cut short by a crash handed again under the same key where
the provider drops duplicates, marked `unknown` where it cannot; a provider that asks to
wait is waited for, and a message it refuses ends `failed` with its answer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container
from ariane.channels import TYPES, Context, Message, Sent, register
from ariane.services.bus import RetryPolicy
from ariane.services.messaging import MAX_ATTEMPTS
from tests.integration.test_journey_use_cases import (
    apply,
    event,
    person,
    send,
    settle,
    timeline,
)
from tests.receiver import Receiver, receiving


class Crash(BaseException):
    """The process dies in the middle of a hand-over."""


@dataclass
class Pigeon:
    """A channel of the test's own: it records what it is handed, and can die doing it."""

    carries_key: bool
    handed: list[Message] = field(default_factory=list)
    crash_once: bool = False
    # Addresses it fails for, every time, as a provider that errs.
    failing: set[str] = field(default_factory=set)

    def send(self, message: Message) -> Sent:
        self.handed.append(message)
        if self.crash_once:
            self.crash_once = False
            raise Crash
        if message.address in self.failing:
            raise RuntimeError(f"the pigeon lost its way to {message.address}")
        return Sent(provider_id=f"p-{len(self.handed)}")

    def close(self) -> None:
        pass


@pytest.fixture
def pigeons() -> Iterator[dict[str, Pigeon]]:
    made: dict[str, Pigeon] = {}

    def make(settings: Mapping[str, Any], context: Context) -> Pigeon:
        # One flock for every thread that hands messages over: what one was handed, all
        # were.
        return made.setdefault(settings["flock"], Pigeon(carries_key=settings["carries_key"]))

    register("pigeon", make, settings=("flock", "carries_key"), default_address="user_id")
    try:
        yield made
    finally:
        TYPES.pop("pigeon", None)


def campaign(
    client: TestClient,
    admin: dict[str, str],
    container: Container,
    carries_key: bool,
    concurrency: int = 4,
) -> None:
    container.channels.types["pigeon"] = TYPES["pigeon"]
    apply(
        client,
        admin,
        {
            "channels": [
                {"name": "pigeon", "type": "pigeon", "purpose": "marketing_pigeon",
                 "concurrency": concurrency,
                 "settings": {"flock": "f", "carries_key": carries_key}}
            ],
            "templates": [{"name": "note", "subject": "Note", "text": "Hello"}],
            "journeys": [
                {"id": "notes", "entry": {"event": "Go"},
                 "steps": [{"send": {"channel": "pigeon", "template": "note",
                                     "category": "transactional"}}]}
            ],
        },
    )  # fmt: skip


def crash_during_hand_over(container: Container) -> None:
    with pytest.raises(Crash):
        settle(container)


def statuses(client: TestClient, admin: dict[str, str]) -> dict[str, int]:
    steps = client.get("/api/journeys/notes/steps", headers=admin).json()["steps"]
    found: dict[str, int] = steps[0]["messages"]
    return found


def test_a_hand_over_cut_short_is_handed_again_under_the_same_key_where_it_is_carried(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    pigeons: dict[str, Pigeon],
) -> None:
    campaign(client, admin_token, container, carries_key=True)
    pigeon = container.channels.built(container.channels.configs()["pigeon"])
    assert isinstance(pigeon, Pigeon)
    pigeon.crash_once = True
    send(client, write_key, person("ada"), event("ada", "Go"))
    crash_during_hand_over(container)
    settle(container)
    assert [m.send_key for m in pigeon.handed] == [pigeon.handed[0].send_key] * 2
    assert statuses(client, admin_token) == {"sent": 1}


def test_a_hand_over_cut_short_is_unknown_where_the_key_is_not_carried(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    pigeons: dict[str, Pigeon],
) -> None:
    campaign(client, admin_token, container, carries_key=False, concurrency=1)
    pigeon = container.channels.built(container.channels.configs()["pigeon"])
    assert isinstance(pigeon, Pigeon)
    pigeon.crash_once = True
    send(client, write_key, person("ada"), person("bob"), event("ada", "Go"), event("bob", "Go"))
    crash_during_hand_over(container)
    settle(container)
    # Never sent blindly a second time: shown as unknown, on the timeline too. Bob's,
    # which was not being handed over when the process died, is sent.
    assert [m.address for m in pigeon.handed] == ["ada", "bob"]
    assert statuses(client, admin_token) == {"unknown": 1, "sent": 1}
    assert [e.get("event") for e in timeline(client, admin_token)].count("Message Unknown") == 1


def test_handed_over_four_at_once_a_crash_leaves_unknown_only_those_four(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    pigeons: dict[str, Pigeon],
) -> None:
    campaign(client, admin_token, container, carries_key=False, concurrency=4)
    pigeon = container.channels.built(container.channels.configs()["pigeon"])
    assert isinstance(pigeon, Pigeon)
    pigeon.crash_once = True
    people = [f"p{n}" for n in range(10)]
    send(client, write_key, *(person(p) for p in people), *(event(p, "Go") for p in people))
    crash_during_hand_over(container)
    settle(container)
    # Only the four marked `sending` together, those being handed over when the process
    # died, are unknown; none is handed over twice; the others are sent.
    assert statuses(client, admin_token) == {"unknown": 4, "sent": 6}
    handed = [m.address for m in pigeon.handed]
    assert len(handed) == len(set(handed))


def test_a_message_that_keeps_failing_ends_failed_and_the_others_go(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    pigeons: dict[str, Pigeon],
) -> None:
    container.bus.policy = RetryPolicy(first=0.001, ceiling=0.01, attempts=8)
    campaign(client, admin_token, container, carries_key=True)
    pigeon = container.channels.built(container.channels.configs()["pigeon"])
    assert isinstance(pigeon, Pigeon)
    pigeon.failing = {"ada"}
    people = ("ada", "bob", "eve")
    send(client, write_key, *(person(p) for p in people), *(event(p, "Go") for p in people))
    for _ in range(100):
        settle(container)
        if statuses(client, admin_token) == {"failed": 1, "sent": 2}:
            break
    assert statuses(client, admin_token) == {"failed": 1, "sent": 2}
    assert [m.address for m in pigeon.handed].count("ada") == MAX_ATTEMPTS
    assert container.bus.parked() == []


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def webhook_campaign(
    client: TestClient, admin: dict[str, str], receiver: Receiver, **limits: Any
) -> None:
    apply(
        client,
        admin,
        {
            "channels": [
                {"name": "hook", "type": "webhook", "purpose": "marketing_app", **limits,
                 "settings": {"url": f"{receiver.url}/messages", "secret": "s3cret"}}
            ],
            "templates": [{"name": "note", "subject": "Note", "text": "Hello {{ traits.name }}"}],
            "journeys": [
                {"id": "notes", "entry": {"event": "Go"},
                 "steps": [{"send": {"channel": "hook", "template": "note"}}]}
            ],
        },
    )  # fmt: skip


def test_a_provider_that_asks_to_wait_is_waited_for_and_sent_once(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    receiver: Receiver,
) -> None:
    container.bus.policy = RetryPolicy(first=0.001, ceiling=0.01, attempts=3)
    webhook_campaign(client, admin_token, receiver)
    receiver.script.extend([(429, {"Retry-After": "0"}, b"slow down"), (503, {}, b"busy")])
    send(client, write_key, person("ada", name="Ada"), event("ada", "Go"))
    for _ in range(50):
        settle(container)
        if receiver.delivered():
            break
    answered = [r.headers["x-answered"] for r in receiver.received]
    assert answered == ["429", "503", "200"]
    keys = {r.headers["idempotency-key"] for r in receiver.received}
    assert len(keys) == 1
    assert receiver.delivered()[0].json["text"] == "Hello Ada"
    assert statuses(client, admin_token) == {"sent": 1}


def test_messages_are_handed_over_as_many_at_once_as_the_channel_says(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    receiver: Receiver,
) -> None:
    webhook_campaign(client, admin_token, receiver, concurrency=3)
    receiver.delay = 0.1
    people = [f"p{n}" for n in range(9)]
    send(client, write_key, *(person(p, name=p) for p in people))
    send(client, write_key, *(event(p, "Go") for p in people))
    settle(container)
    # Three at once, over three connections: a slow provider is not waited for alone.
    assert receiver.most_in_flight == 3
    assert sorted(r.json["address"] for r in receiver.delivered()) == people
    assert statuses(client, admin_token) == {"sent": 9}


def test_the_rate_limit_holds_across_the_messages_handed_over_at_once(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    receiver: Receiver,
) -> None:
    webhook_campaign(client, admin_token, receiver, concurrency=4, rate_limit=20)
    people = [f"p{n}" for n in range(9)]
    send(client, write_key, *(person(p, name=p) for p in people))
    send(client, write_key, *(event(p, "Go") for p in people))
    settle(container)
    assert statuses(client, admin_token) == {"sent": 9}
    # Twenty a second, spread evenly: nine messages take at least 8/20 s from the first,
    # however many connections carry them.
    arrived = sorted(receiver.arrived)
    assert arrived[-1] - arrived[0] >= 8 / 20 * 0.95


def test_a_message_the_provider_refuses_ends_failed_with_its_answer(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    receiver: Receiver,
) -> None:
    webhook_campaign(client, admin_token, receiver)
    receiver.always = (400, {}, b"no such user")
    send(client, write_key, person("ada", name="Ada"), event("ada", "Go"))
    settle(container)
    assert statuses(client, admin_token) == {"failed": 1}
    failed = [e for e in timeline(client, admin_token) if e.get("event") == "Message Failed"]
    assert len(failed) == 1 and "no such user" in failed[0]["properties"]["reason"]


def member(user: str, *, pigeon_consent: bool, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "traits": traits,
        "context": {"consent": {"categoryPreferences": {"marketing_pigeon": pigeon_consent}}},
        "messageId": f"identify-{user}",
    }


def test_each_message_of_a_batch_is_made_from_its_own_person(
    client: TestClient,
    admin_token: dict[str, str],
    write_key: str,
    container: Container,
    pigeons: dict[str, Pigeon],
) -> None:
    container.channels.types["pigeon"] = TYPES["pigeon"]
    apply(
        client,
        admin_token,
        {
            "channels": [
                {"name": "pigeon", "type": "pigeon", "purpose": "marketing_pigeon",
                 "address": "traits.handle", "settings": {"flock": "f", "carries_key": True}}
            ],
            # Loyalty shown in a data part only, and in brackets: it is read all the same.
            "templates": [{"name": "note", "subject": "{{ traits.name }}", "text": "Hello",
                           "data": {"points": "{{ ['loyalty'].balance | default: 'none' }}"}}],
            "journeys": [
                {"id": "notes", "entry": {"event": "Go"},
                 "steps": [{"send": {"channel": "pigeon", "template": "note"}}]}
            ],
        },
    )  # fmt: skip
    send(
        client,
        write_key,
        member("ada", pigeon_consent=True, name="Ada", handle="@ada"),
        member("bob", pigeon_consent=False, name="Bob", handle="@bob"),
        member("eve", pigeon_consent=True, name="Eve"),
        member("dan", pigeon_consent=True, name="Dan", handle="@dan"),
    )
    club = {"earn_rules": [{"id": "buy", "event": "Order Completed", "points_per_unit": 1}]}
    assert client.put("/api/loyalty/programmes/club", json=club, headers=admin_token).is_success
    ada = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "ada"}, headers=admin_token
    ).json()["id"]
    earned = client.post(
        f"/api/loyalty/programmes/club/members/{ada}/earn",
        json={"points": 120},
        headers={**admin_token, "Idempotency-Key": "gift-1"},
    )
    assert earned.status_code == 200, earned.text
    people = ("ada", "bob", "eve", "dan")
    send(client, write_key, *(event(p, "Go") for p in people))
    settle(container)
    pigeon = pigeons["f"]
    handed = [(m.address, m.subject, m.data["points"]) for m in pigeon.handed]
    assert handed == [("@ada", "Ada", "120"), ("@dan", "Dan", "none")]
    assert statuses(client, admin_token) == {"sent": 2, "skipped": 2}
    skipped = {
        user: [
            e["properties"]["reason"]
            for e in timeline(client, admin_token, user)
            if e.get("event") == "Message Skipped"
        ]
        for user in people
    }
    assert skipped == {
        "ada": [],
        "bob": ["consent marketing_pigeon is denied"],
        "eve": ["no address at traits.handle"],
        "dan": [],
    }
