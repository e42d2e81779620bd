"""Behaviour discovery on a population of known kinds of users, sent through ingestion."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sklearn.metrics import adjusted_rand_score

from ariane.analytics.discovery import Discovery, nearest_group
from ariane.bootstrap import Container
from ariane.domain.clock import iso
from ariane.domain.errors import DomainError
from ariane.services.discovery import discover
from ariane.services.ingest import Envelope
from ariane.storage import behaviour
from ariane.storage.tables import INTERNAL_SOURCE, merges

EXPLORING = ["Feature Used", "Map Opened", "Alert Created"]
LEARNING = ["Help Viewed", "Tutorial Opened"]
WORKING = [*EXPLORING, "Report Exported"]
EVERY_EVENT = {"Trial Started", *WORKING, *LEARNING}
PER_KIND = 60


@dataclass
class User:
    """A generated user: what kind they are and what they did, in days from their start."""

    user_id: str
    kind: str
    start: datetime
    did: list[tuple[str, float]] = field(default_factory=list)

    def count(self, event: str, days: float) -> int:
        return sum(1 for name, day in self.did if name == event and 0 <= day < days)


def curious_tester(rng: random.Random) -> list[tuple[str, float]]:
    """Tries everything in the first two or three days, then leaves."""
    until = rng.uniform(1.5, 3.0)
    did = [(rng.choice(EXPLORING), rng.uniform(0, until)) for _ in range(rng.randint(12, 30))]
    if rng.random() < 0.3:
        did.append((rng.choice(LEARNING), rng.uniform(0, until)))
    if rng.random() < 0.2:
        did.append((rng.choice(EXPLORING), rng.uniform(3, 20)))
    return did


def methodical_user(rng: random.Random) -> list[tuple[str, float]]:
    """Starts slowly and keeps coming back to the help, for two or three weeks."""
    did = [(rng.choice(EXPLORING + LEARNING), rng.uniform(0, 3)) for _ in range(rng.randint(1, 5))]
    day, until = 0.0, rng.uniform(14, 21)
    while day < until:
        day += rng.uniform(0.7, 3.0)
        for _ in range(rng.randint(1, 3)):
            names = LEARNING if rng.random() < 0.75 else EXPLORING
            did.append((rng.choice(names), day + rng.uniform(0, 0.5)))
    return did


def power_user(rng: random.Random) -> list[tuple[str, float]]:
    """Works in the app nearly every day, for two or three weeks."""
    did: list[tuple[str, float]] = []
    for day in range(rng.randint(14, 21)):
        if rng.random() < 0.15:
            continue
        did.extend(
            (rng.choice(WORKING), day + rng.uniform(0, 1)) for _ in range(rng.randint(4, 12))
        )
    if rng.random() < 0.3:
        did.append((rng.choice(LEARNING), rng.uniform(0, 14)))
    return did


KINDS: dict[str, Callable[[random.Random], list[tuple[str, float]]]] = {
    "curious": curious_tester,
    "methodical": methodical_user,
    "power": power_user,
}


def population(now: datetime, seed: int = 7) -> list[User]:
    rng = random.Random(seed)
    users = []
    for number in range(PER_KIND * len(KINDS)):
        kind = list(KINDS)[number % len(KINDS)]
        start = now - timedelta(days=40 - rng.uniform(0, 10))
        user = User(f"user-{number}", kind, start, [("Trial Started", 0.0)])
        user.did.extend(KINDS[kind](rng))
        if number % 10 == 0:
            # On the edges of the windows: counted in the first 14 days, not in the first 3;
            # then in neither.
            user.did.extend([("Help Viewed", 3.0), ("Help Viewed", 14.0)])
        user.did.sort(key=lambda item: item[1])
        users.append(user)
    return users


def send(container: Container, users: list[User]) -> None:
    source = container.access.create_source(f"app-{uuid.uuid4().hex[:6]}")[0].id
    on_device: list[dict[str, Any]] = []
    signed_in: list[dict[str, Any]] = []
    for number, user in enumerate(users):
        # Some users start on a device before they sign in: a profile of its own, sent
        # first, merged later when the device's id and the user's id are seen together.
        anonymous = number % 7 == 0
        for index, (event, day) in enumerate(user.did):
            track = {
                "type": "track",
                "event": event,
                "timestamp": iso(user.start + timedelta(days=day)),
                "messageId": uuid.uuid4().hex,
            }
            if anonymous and 0 < index <= 3:
                on_device.append({**track, "anonymousId": f"device-{number}"})
            else:
                signed_in.append({**track, "userId": user.user_id})
        if anonymous:
            signed_in.append(
                {
                    "type": "identify",
                    "userId": user.user_id,
                    "anonymousId": f"device-{number}",
                    "timestamp": iso(user.start + timedelta(days=user.did[-1][1])),
                    "messageId": uuid.uuid4().hex,
                }
            )
    envelope = Envelope(received_at=container.clock())
    batches = [on_device] + [signed_in[i : i + 1000] for i in range(0, len(signed_in), 1000)]
    for batch in batches:
        assert not container.ingest.ingest(source, batch, envelope).problems
    # Events Ariane records itself are not behaviour, however many there are.
    internal = [
        {
            "type": "track",
            "userId": user.user_id,
            "event": "Audience Entered",
            "timestamp": iso(user.start + timedelta(days=1, minutes=n)),
            "messageId": uuid.uuid4().hex,
        }
        for user in users
        if user.kind == "curious"
        for n in range(30)
    ]
    container.ingest.ingest(INTERNAL_SOURCE, internal, envelope)


@pytest.fixture
def users(container: Container) -> list[User]:
    generated = population(container.clock())
    send(container, generated)
    return generated


def test_discovery_finds_the_three_kinds_of_users(container: Container, users: list[User]) -> None:
    found = discover(container.db)

    assert {f.event for f in found.features} == EVERY_EVENT
    assert [f.within for f in found.features[:2]] == ["P3D", "P14D"]
    assert max(found.k_scores, key=lambda k: found.k_scores[k]) == 3
    assert len(found.groups) == 3
    owners = {user.user_id: container.profiles.lookup("user_id", user.user_id) for user in users}
    # One label per live profile: the device profiles merged away have none.
    with container.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(merges)).scalar() == 26
    assert set(found.labels) == set(owners.values())
    truth = [user.kind for user in users]
    labels = [found.labels[owners[user.user_id]] for user in users]
    assert adjusted_rand_score(truth, labels) >= 0.8
    for group in found.groups:
        assert any(f"'{event}' " in group.description for event in EVERY_EVENT)
        assert "in the first" in group.description
        assert sum(name == group.name for name in labels) == group.size
    assert_kinds_named(found, users, owners)


def assert_kinds_named(found: Discovery, users: list[User], owners: dict[str, str]) -> None:
    """Each group's name says what its users do more than the others."""
    names = {}
    for kind in KINDS:
        in_kind = [found.labels[owners[u.user_id]] for u in users if u.kind == kind]
        names[kind] = max(set(in_kind), key=in_kind.count)
    assert names["methodical"].startswith(("many-help-viewed-", "many-tutorial-opened-"))
    assert names["curious"].endswith("-3d")
    assert names["power"].endswith("-14d")


def test_counts_follow_the_feature_definition_and_the_model_places_profiles_as_found(
    container: Container, users: list[User]
) -> None:
    found = discover(container.db, events=["Help Viewed", "Feature Used"], days=["P3D", "P14D"])
    windows = [timedelta(days=3), timedelta(days=14)]
    with container.db.read() as conn:
        counts = behaviour.first_days_counts(
            conn, [(event, span) for event in ("Help Viewed", "Feature Used") for span in windows]
        )
    # Through JSON, as a saved segment holds it.
    model = orjson.loads(orjson.dumps(found.condition(found.groups[0].name)))["behaviour"]
    for user in users:
        expected = [
            user.count(event, days) for event in ("Help Viewed", "Feature Used") for days in (3, 14)
        ]
        profile_id = container.profiles.lookup("user_id", user.user_id)
        assert counts[profile_id] == expected, user
        assert nearest_group(model, counts[profile_id]) == found.labels[profile_id]


def test_internal_events_are_never_candidates(container: Container, users: list[User]) -> None:
    with container.db.read() as conn:
        shared = behaviour.most_shared_events(conn, 20)
    assert shared[0] == "Trial Started"
    assert set(shared) == EVERY_EVENT


def test_discovery_needs_profiles(container: Container) -> None:
    with pytest.raises(DomainError) as error:
        discover(container.db)
    assert error.value.field == "events"
    with pytest.raises(DomainError) as error:
        discover(container.db, events=["Feature Used"])
    assert "at least 3 profiles" in error.value.message
