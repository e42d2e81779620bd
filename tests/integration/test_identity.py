"""Identity resolution and merges end to end, on both databases."""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container, build
from ariane.domain.clock import iso
from ariane.services.ingest import Envelope, IngestResult
from ariane.settings import Settings
from ariane.storage.database import Database
from ariane.storage.tables import events, identities, identity_decisions, merges, profiles
from tests.conftest import FakeClock

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return iso(T0 + timedelta(minutes=minutes))


class Tracker:
    """Sends events as an SDK would and reads profiles as an operator would."""

    def __init__(self, client: TestClient, write_key: str, admin: dict[str, str]) -> None:
        self.client = client
        self.admin = admin
        token = base64.b64encode(f"{write_key}:".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}

    def send(self, *batch: dict[str, Any]) -> None:
        for event in batch:
            event.setdefault("messageId", uuid.uuid4().hex)
        response = self.client.post("/v1/batch", json={"batch": list(batch)}, headers=self.auth)
        assert response.status_code == 200, response.text

    def lookup(self, id_type: str, value: str) -> dict[str, Any]:
        response = self.client.get(
            "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=self.admin
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def lookup_missing(self, id_type: str, value: str) -> int:
        return self.client.get(
            "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=self.admin
        ).status_code

    def profile(self, profile_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/profiles/{profile_id}", headers=self.admin)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def timeline(self, profile_id: str) -> list[dict[str, Any]]:
        response = self.client.get(
            f"/api/profiles/{profile_id}/events", params={"limit": 1000}, headers=self.admin
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["events"]
        return found


@pytest.fixture
def tracker(client: TestClient, write_key: str, admin_token: dict[str, str]) -> Tracker:
    return Tracker(client, write_key, admin_token)


def identity_set(profile: dict[str, Any]) -> set[tuple[str, str]]:
    return {(i["type"], i["value"]) for i in profile["identities"]}


def rows(db: Database, table: sa.Table) -> list[dict[str, Any]]:
    with db.read() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(table))]


def assert_consistent(db: Database) -> None:
    """Every row points at a live profile, and every live profile's counters match its
    stored events: nothing lost, nothing counted twice."""
    by_id = {row["id"]: row for row in rows(db, profiles)}
    live = {pid for pid, row in by_id.items() if row["merged_into"] is None}
    for pid, row in by_id.items():
        if row["merged_into"] is not None:
            assert row["merged_into"] in live, f"{pid} leads to a profile that is not live"
            assert (row["traits"], row["computed"]) == ({}, {})
    for table in (events, identities, identity_decisions, merges):
        for row in rows(db, table):
            assert row["profile_id"] in live, f"{table.name} row on {row['profile_id']}"
    stored = rows(db, events)
    per_type = Counter((e["profile_id"], e["type"]) for e in stored)
    per_name = Counter((e["profile_id"], e["event"]) for e in stored if e["type"] == "track")
    for pid in live:
        computed = by_id[pid]["computed"]
        assert computed.get("type_counts", {}) == {
            kind: n for (p, kind), n in per_type.items() if p == pid
        }
        assert computed.get("event_counts", {}) == {
            name: n for (p, name), n in per_name.items() if p == pid
        }
        times = [e["timestamp"] for e in stored if e["profile_id"] == pid]
        if times:
            assert (by_id[pid]["first_seen"], by_id[pid]["last_seen"]) == (min(times), max(times))


def test_no_match_creates_one_match_attaches_several_merge(
    tracker: Tracker, container: Container
) -> None:
    tracker.send({"type": "page", "anonymousId": "cookie-1", "name": "Home", "timestamp": at(0)})
    first = tracker.lookup("anonymous_id", "cookie-1")
    assert identity_set(first) == {("anonymous_id", "cookie-1")}

    tracker.send(
        {
            "type": "identify",
            "anonymousId": "cookie-1",
            "userId": "ada",
            "traits": {"email": " Ada@Example.com"},
            "timestamp": at(1),
        }
    )
    attached = tracker.lookup("user_id", "ada")
    assert attached["id"] == first["id"]
    assert identity_set(attached) == {
        ("anonymous_id", "cookie-1"),
        ("user_id", "ada"),
        ("email", "ada@example.com"),
    }

    tracker.send({"type": "page", "anonymousId": "cookie-2", "name": "Home", "timestamp": at(2)})
    other = tracker.lookup("anonymous_id", "cookie-2")
    assert other["id"] != first["id"]
    tracker.send(
        {
            "type": "identify",
            "anonymousId": "cookie-2",
            "traits": {"email": "ADA@example.com"},
            "timestamp": at(3),
        }
    )
    merged = tracker.lookup("anonymous_id", "cookie-2")
    assert merged["id"] == first["id"]
    assert merged["merged_ids"] == [other["id"]]
    assert tracker.profile(other["id"])["id"] == first["id"]
    assert merged["computed"]["type_counts"] == {"page": 2, "identify": 2}
    assert_consistent(container.db)


def test_two_people_with_user_ids_are_never_merged(
    tracker: Tracker, container: Container, clock: FakeClock
) -> None:
    tracker.send(
        {
            "type": "identify",
            "userId": "alice",
            "anonymousId": "family-tablet",
            "traits": {"email": "alice@example.com"},
            "context": {"device": {"id": "tablet-1"}},
            "timestamp": at(0),
        }
    )
    alice_before = tracker.lookup("user_id", "alice")
    clock.advance(minutes=5)
    tracker.send(
        {
            "type": "identify",
            "userId": "bob",
            "anonymousId": "family-tablet",
            "traits": {"email": "alice@example.com", "name": "Bob"},
            "context": {"device": {"id": "tablet-1"}},
            "timestamp": at(1),
        },
        {"type": "track", "userId": "bob", "event": "Played", "timestamp": at(2)},
    )
    alice = tracker.lookup("user_id", "alice")
    bob = tracker.lookup("user_id", "bob")
    assert alice["id"] != bob["id"]
    assert identity_set(alice) == {
        ("user_id", "alice"),
        ("anonymous_id", "family-tablet"),
        ("email", "alice@example.com"),
        ("device_id", "tablet-1"),
    }
    assert identity_set(bob) == {("user_id", "bob")}
    assert bob["computed"]["type_counts"] == {"identify": 1, "track": 1}
    assert alice["computed"]["type_counts"] == {"identify": 1}
    # Bob's traits are his, even when his event carried Alice's email.
    assert bob["traits"]["name"] == "Bob"
    assert "name" not in alice["traits"]
    # Alice's profile was only looked at: it is not rewritten.
    assert alice["updated_at"] == alice_before["updated_at"]

    decisions = rows(container.db, identity_decisions)
    assert {(d["identifier_type"], d["identifier_value"]) for d in decisions} == {
        ("anonymous_id", "family-tablet"),
        ("email", "alice@example.com"),
        ("device_id", "tablet-1"),
    }
    assert {d["profile_id"] for d in decisions} == {bob["id"]}
    assert all(d["decision"] == "dropped" and "user_id" in d["reason"] for d in decisions)
    assert rows(container.db, merges) == []
    assert_consistent(container.db)


def test_alias_links_previous_id_under_the_same_rules(
    tracker: Tracker, container: Container
) -> None:
    tracker.send(
        {"type": "track", "anonymousId": "anon-7", "event": "Viewed", "timestamp": at(0)},
        {"type": "track", "userId": "carol", "event": "Bought", "timestamp": at(1)},
    )
    anonymous = tracker.lookup("anonymous_id", "anon-7")
    tracker.send({"type": "alias", "previousId": "anon-7", "userId": "carol", "timestamp": at(2)})
    carol = tracker.lookup("user_id", "carol")
    assert tracker.lookup("anonymous_id", "anon-7")["id"] == carol["id"]
    assert carol["merged_ids"] == [anonymous["id"]]
    assert carol["computed"]["event_counts"] == {"Viewed": 1, "Bought": 1}

    # An alias between two user ids would merge two people: refused and recorded.
    tracker.send({"type": "identify", "userId": "dave", "timestamp": at(3)})
    tracker.send({"type": "alias", "previousId": "dave", "userId": "carol", "timestamp": at(4)})
    dave = tracker.lookup("user_id", "dave")
    assert dave["id"] != carol["id"]
    assert tracker.lookup_missing("anonymous_id", "dave") == 404
    decision = rows(container.db, identity_decisions)
    assert [(d["identifier_type"], d["identifier_value"], d["profile_id"]) for d in decision] == [
        ("user_id", "dave", carol["id"])
    ]
    assert_consistent(container.db)


def test_a_merge_loses_nothing_and_doubles_nothing(tracker: Tracker, container: Container) -> None:
    tracker.send(
        {
            "type": "identify",
            "anonymousId": "anon-1",
            "traits": {"plan": "free", "city": "Paris"},
            "timestamp": at(10),
        },
        {"type": "track", "anonymousId": "anon-1", "event": "Viewed", "timestamp": at(2)},
        {"type": "track", "anonymousId": "anon-1", "event": "Viewed", "timestamp": at(11)},
    )
    tracker.send(
        {
            "type": "identify",
            "userId": "erin",
            "traits": {"plan": "pro", "name": "Erin"},
            "context": {"traits": {"city": "Lyon"}},
            "timestamp": at(8),
        },
        {"type": "track", "userId": "erin", "event": "Viewed", "timestamp": at(5)},
        {"type": "track", "userId": "erin", "event": "Bought", "timestamp": at(9)},
    )
    anonymous = tracker.lookup("anonymous_id", "anon-1")
    user = tracker.lookup("user_id", "erin")
    link = {
        "type": "track",
        "userId": "erin",
        "anonymousId": "anon-1",
        "event": "Signed In",
        "messageId": "link-1",
        "timestamp": at(7),
    }
    tracker.send(dict(link))
    tracker.send(dict(link))  # a resent event is not counted twice

    survivor = tracker.lookup("anonymous_id", "anon-1")
    assert survivor["id"] == user["id"], "the profile with the user id survives"
    assert tracker.profile(anonymous["id"])["id"] == user["id"]
    assert survivor["merged_ids"] == [anonymous["id"]]
    # Each trait keeps its most recent value by event time, whichever side held it.
    assert survivor["traits"] == {"plan": "free", "city": "Paris", "name": "Erin"}
    assert survivor["trait_sources"]["name"]["at"] == at(8)
    assert survivor["computed"]["event_counts"] == {"Viewed": 3, "Bought": 1, "Signed In": 1}
    assert survivor["computed"]["type_counts"] == {"identify": 2, "track": 5}
    assert survivor["computed"]["first_seen"].startswith(at(2)[:19])
    assert survivor["computed"]["last_seen"].startswith(at(11)[:19])
    timeline = tracker.timeline(anonymous["id"])
    assert len(timeline) == 7
    assert {e["messageId"] for e in timeline} >= {"link-1"}

    [merge] = rows(container.db, merges)
    assert (merge["profile_id"], merge["absorbed_id"], merge["message_id"]) == (
        user["id"],
        anonymous["id"],
        "link-1",
    )
    assert merge["reason"] == "track event linked it by anonymous_id"
    assert merge["identifiers"] == [{"type": "anonymous_id", "value": "anon-1"}]
    assert merge["at"] == container.clock()
    assert_consistent(container.db)


def test_an_absorbed_id_of_an_absorbed_profile_still_leads_to_the_survivor(
    tracker: Tracker, container: Container
) -> None:
    tracker.send({"type": "track", "anonymousId": "a", "event": "E", "timestamp": at(0)})
    tracker.send({"type": "track", "anonymousId": "b", "event": "E", "timestamp": at(1)})
    tracker.send({"type": "track", "userId": "frank", "event": "E", "timestamp": at(2)})
    first = tracker.lookup("anonymous_id", "a")["id"]
    second = tracker.lookup("anonymous_id", "b")["id"]
    tracker.send(
        {
            "type": "identify",
            "anonymousId": "a",
            "traits": {"phone": "+33 6 12 34 56 78"},
            "timestamp": at(3),
        },
        {
            "type": "identify",
            "anonymousId": "b",
            "traits": {"phone": "+33612345678"},
            "timestamp": at(4),
        },
    )
    tracker.send(
        {
            "type": "identify",
            "userId": "frank",
            "traits": {"phone": "+33 (0)6 12 34 56 78"},
            "timestamp": at(5),
        }
    )
    frank = tracker.lookup("user_id", "frank")
    assert {first, second} == set(frank["merged_ids"])
    assert tracker.profile(first)["id"] == tracker.profile(second)["id"] == frank["id"]
    assert frank["computed"]["event_counts"] == {"E": 3}
    assert len(tracker.timeline(first)) == 6
    assert len(rows(container.db, merges)) == 2
    assert_consistent(container.db)


@pytest.fixture
def phone_limited(db_url: str, clock: FakeClock) -> Iterator[Container]:
    settings = Settings(
        database_url=db_url,
        identity={"limits": {"user_id": 1, "phone": 1}, "default_phone_region": "FR"},
    )
    built = build(settings, clock=clock)
    yield built
    built.close()


def ingest(container: Container, source: str, *batch: dict[str, Any]) -> IngestResult:
    for number, event in enumerate(batch):
        event.setdefault("messageId", f"{uuid.uuid4().hex}-{number}")
        event.setdefault("timestamp", at(number))
    return container.ingest.ingest(source, batch, Envelope(received_at=container.clock()))


def test_merges_inside_one_batch_are_written_under_the_final_profile(
    phone_limited: Container,
) -> None:
    app = phone_limited
    source = app.access.create_source("web")[0].id
    ingest(app, source, {"type": "track", "anonymousId": "q", "event": "Old"})
    ingest(app, source, {"type": "track", "userId": "rita", "event": "Old"})
    q = app.profiles.lookup("anonymous_id", "q")
    rita = app.profiles.lookup("user_id", "rita")

    result = ingest(
        app,
        source,
        # A new person, then one merging an existing profile into it.
        {"type": "track", "anonymousId": "b", "event": "New"},
        {"type": "identify", "anonymousId": "b", "traits": {"email": "r@example.com"}},
        {"type": "track", "anonymousId": "q", "event": "New", "properties": {"email": "r@x.io"}},
        {"type": "page", "anonymousId": "q", "context": {"traits": {"email": "r@example.com"}}},
        # Another new person with a refused second phone, absorbed by the first.
        {
            "type": "identify",
            "anonymousId": "c",
            "traits": {"phone": "06 12 34 56 78"},
            "context": {"traits": {"phone": "06 99 99 99 99"}},
        },
        {"type": "identify", "anonymousId": "c", "traits": {"email": "r@example.com"}},
        # And all of them absorbed by the existing user.
        {
            "type": "identify",
            "userId": "rita",
            "traits": {"email": "r@example.com"},
            "context": {"device": {"id": "d-1"}},
        },
        {"type": "track", "anonymousId": "c", "event": "New"},
    )
    assert result.accepted == 8
    assert result.profile_ids == [rita] * 8
    assert result.merges == 1, "only the profile that existed before the batch was merged"

    view = app.profiles.view(q)
    assert view["id"] == rita
    assert {(i["type"], i["value"]) for i in view["identities"]} == {
        ("user_id", "rita"),
        ("anonymous_id", "q"),
        ("anonymous_id", "b"),
        ("anonymous_id", "c"),
        ("email", "r@example.com"),
        ("email", "r@x.io"),
        ("phone", "+33612345678"),
        ("device_id", "d-1"),
    }
    assert view["computed"]["event_counts"] == {"Old": 2, "New": 3}
    assert view["merged_ids"] == [q]

    [merge] = rows(app.db, merges)
    assert (merge["profile_id"], merge["absorbed_id"]) == (rita, q)
    assert merge["reason"] == "page event linked it by anonymous_id"
    assert {"type": "anonymous_id", "value": "q"} in merge["identifiers"]
    [decision] = rows(app.db, identity_decisions)
    assert (decision["profile_id"], decision["identifier_type"]) == (rita, "phone")
    assert decision["identifier_value"] == "+33699999999"
    assert "2 phone values" in decision["reason"]
    assert {row["id"] for row in rows(app.db, profiles)} == {q, rita}
    assert_consistent(app.db)


def test_a_profile_created_in_a_batch_can_absorb_an_existing_one(
    container: Container,
) -> None:
    source = container.access.create_source("web")[0].id
    ingest(container, source, {"type": "track", "anonymousId": "old", "event": "E"})
    old = container.profiles.lookup("anonymous_id", "old")
    result = ingest(
        container,
        source,
        {"type": "identify", "userId": "gina", "traits": {"email": "g@example.com"}},
        {"type": "identify", "anonymousId": "old", "traits": {"email": "g@example.com"}},
    )
    gina = container.profiles.lookup("user_id", "gina")
    assert result.profile_ids == [gina, gina] and result.merges == 1
    assert container.profiles.view(old)["id"] == gina
    assert container.profiles.view(gina)["computed"]["type_counts"] == {
        "track": 1,
        "identify": 2,
    }
    assert_consistent(container.db)


def test_identifier_types_and_normalisation(tracker: Tracker, container: Container) -> None:
    container.settings.identity.default_phone_region = "FR"
    tracker.send(
        {
            "type": "identify",
            "userId": " hana ",
            "traits": {
                "email": "Hana@Example.COM",
                "phone": "06 12 34 56 78",
                "loyalty_card": "LC-42",
                "instagram": "@hana",
            },
            "context": {
                "device": {"id": "tv-9"},
                "externalIds": [{"id": "ga-77", "type": "gaClientId", "collection": "users"}],
            },
        }
    )
    hana = tracker.lookup("user_id", "hana")
    assert identity_set(hana) == {
        ("user_id", "hana"),
        ("email", "hana@example.com"),
        ("phone", "+33612345678"),
        ("loyalty_card", "LC-42"),
        ("device_id", "tv-9"),
        ("ga_client_id", "ga-77"),
    }
    for id_type, value in [
        ("email", " HANA@example.com"),
        ("phone", "+33 6 12 34 56 78"),
        ("ga_client_id", "ga-77"),
    ]:
        assert tracker.lookup(id_type, value)["id"] == hana["id"]
    # `instagram` is not a declared custom type here: a trait, not an identifier.
    assert hana["traits"]["instagram"] == "@hana"


def test_placeholder_values_never_become_identifiers(
    tracker: Tracker, container: Container
) -> None:
    placeholders = ["undefined", "null", "0", "-1", "anonymous", "[object Object]", "guest"]
    tracker.send(
        *[
            {
                "type": "identify",
                "userId": value,
                "anonymousId": f"visitor-{n}",
                "traits": {"email": value},
                "context": {"device": {"id": value}},
            }
            for n, value in enumerate(placeholders)
        ]
    )
    visitors = {tracker.lookup("anonymous_id", f"visitor-{n}")["id"] for n in range(7)}
    assert len(visitors) == 7, "people sharing a placeholder are not merged"
    assert {i["type"] for i in rows(container.db, identities)} == {"anonymous_id"}


def test_an_event_naming_no_one_is_quarantined_not_made_a_profile(
    tracker: Tracker, container: Container
) -> None:
    tracker.send(
        {"type": "track", "userId": "undefined", "event": "E"},
        {"type": "track", "anonymousId": "00000000-0000-0000-0000-000000000000", "event": "E"},
        {"type": "alias", "userId": "null", "previousId": "none"},
        {"type": "track", "userId": "ivan", "event": "E"},
    )
    assert len(rows(container.db, profiles)) == 1
    quarantined = tracker.client.get("/api/quarantine", headers=tracker.admin).json()["events"]
    assert len(quarantined) == 3
    assert {q["field"] for q in quarantined} == {"userId/anonymousId"}
    assert all("no usable identifier" in q["reason"] for q in quarantined)


def test_an_overlong_identifier_does_not_sink_the_batch(
    tracker: Tracker, container: Container
) -> None:
    tracker.send(
        {"type": "track", "userId": "judy", "anonymousId": "a" * 600, "event": "E"},
        {"type": "track", "userId": "judy", "event": "E", "context": {"device": {"id": "d" * 513}}},
    )
    judy = tracker.lookup("user_id", "judy")
    assert identity_set(judy) == {("user_id", "judy")}
    assert judy["computed"]["event_counts"] == {"E": 2}


def test_an_older_event_arriving_late_never_overwrites_a_newer_trait(
    tracker: Tracker, container: Container
) -> None:
    tracker.send(
        {"type": "identify", "userId": "kim", "traits": {"plan": "pro"}, "timestamp": at(10)}
    )
    tracker.send(
        {"type": "identify", "userId": "kim", "traits": {"plan": "free"}, "timestamp": at(5)},
        {
            "type": "page",
            "userId": "kim",
            "context": {"traits": {"plan": "trial", "lang": "fr"}},
            "timestamp": at(1),
        },
    )
    kim = tracker.lookup("user_id", "kim")
    assert kim["traits"] == {"plan": "pro", "lang": "fr"}
    assert kim["trait_sources"]["plan"]["at"] == at(10)
    assert kim["trait_sources"]["lang"]["source"] == rows(container.db, events)[0]["source_id"]
    assert kim["computed"]["first_seen"].startswith(at(1)[:19])
    assert kim["computed"]["last_seen"].startswith(at(10)[:19])


def test_the_same_person_on_phone_pc_tablet_and_tv_is_one_profile(
    tracker: Tracker, container: Container
) -> None:
    container.settings.identity.default_phone_region = "FR"
    sent = 0

    def send(*batch: dict[str, Any]) -> None:
        nonlocal sent
        sent += len(batch)
        tracker.send(*batch)

    phone = {"anonymousId": "anon-phone", "context": {"device": {"id": "phone-1"}}}
    send(
        {**phone, "type": "screen", "name": "Catalogue", "timestamp": at(0)},
        {**phone, "type": "track", "event": "Product Viewed", "timestamp": at(1)},
    )
    pc = {"anonymousId": "anon-pc", "context": {"device": {"id": "pc-1"}}}
    send(
        {**pc, "type": "page", "name": "Login", "timestamp": at(60)},
        {
            **pc,
            "type": "identify",
            "userId": "lea-42",
            "traits": {"email": "Lea@Example.fr", "firstName": "Léa"},
            "timestamp": at(61),
        },
        {
            **pc,
            "type": "track",
            "userId": "lea-42",
            "event": "Order Completed",
            "timestamp": at(62),
        },
    )
    tablet = {"anonymousId": "anon-tablet", "context": {"device": {"id": "tablet-1"}}}
    send({**tablet, "type": "page", "name": "Series", "timestamp": at(120)})
    send(
        {
            **tablet,
            "type": "identify",
            "traits": {"email": " lea@example.fr", "phone": "06 12 34 56 78"},
            "timestamp": at(121),
        },
        {**tablet, "type": "track", "event": "Video Played", "timestamp": at(122)},
    )
    tv = {"anonymousId": "anon-tv", "context": {"device": {"id": "tv-1"}}}
    send({**tv, "type": "screen", "name": "Home", "timestamp": at(180)})
    send(
        {
            "type": "track",
            "anonymousId": "anon-tv",
            "event": "Video Played",
            "context": {
                "device": {"id": "tv-1"},
                "externalIds": [{"id": "lea-42", "type": "user_id", "collection": "users"}],
            },
            "timestamp": at(181),
        }
    )
    # Back on the phone, she signs in: the phone's anonymous history joins too.
    send({**phone, "type": "identify", "userId": "lea-42", "timestamp": at(240)})

    lea = tracker.lookup("email", "LEA@example.fr")
    devices = {value for kind, value in identity_set(lea) if kind == "device_id"}
    assert devices == {"phone-1", "pc-1", "tablet-1", "tv-1"}
    for id_type, value in [
        ("user_id", "lea-42"),
        ("phone", "+33612345678"),
        ("anonymous_id", "anon-phone"),
        ("anonymous_id", "anon-pc"),
        ("anonymous_id", "anon-tablet"),
        ("anonymous_id", "anon-tv"),
        ("device_id", "tv-1"),
    ]:
        assert tracker.lookup(id_type, value)["id"] == lea["id"]
    timeline = tracker.timeline(lea["id"])
    assert len(timeline) == sent
    assert sum(lea["computed"]["type_counts"].values()) == sent
    assert lea["computed"]["event_counts"] == {
        "Product Viewed": 1,
        "Order Completed": 1,
        "Video Played": 2,
    }
    assert lea["traits"]["firstName"] == "Léa"
    assert len(lea["merged_ids"]) == 3
    live = [row for row in rows(container.db, profiles) if row["merged_into"] is None]
    assert [row["id"] for row in live] == [lea["id"]]
    assert_consistent(container.db)
