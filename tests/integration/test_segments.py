"""Live segmentation on both databases: entries and exits as events arrive and as time
passes, timers that survive a restart and fire once, backfills equal to live values."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ariane.bootstrap import Container, build
from ariane.domain.clock import iso
from ariane.domain.events import AudienceChange
from ariane.services import segment_backfill
from ariane.services.ingest import Envelope
from ariane.settings import Settings
from ariane.storage import bus as bus_store
from ariane.storage.tables import events, profiles, segment_history
from tests.conftest import FakeClock


def audience_changes(container: Container) -> list[AudienceChange]:
    """The audience changes recorded in the outbox for the bus's handlers, in order."""
    db = container.db
    with db.read() as conn:
        found, _ = bus_store.read(
            conn,
            "outbox",
            bus_store.START,
            100_000,
            bus_store.LATEST,
            {"SegmentEntered", "SegmentExited"},
        )
    return [entry.event for entry in found if isinstance(entry.event, AudienceChange)]


TRIAL_CONDITION: dict[str, Any] = {
    "all": [
        {"trait": "plan", "op": "eq", "value": "trial"},
        {
            "event": "Feature Used",
            "where": [{"property": "feature", "op": "in", "value": ["alerts", "map"]}],
            "count": {"gte": 3},
            "within": "P7D",
        },
        {"not": {"segment": "subscribers"}},
        {
            "any": [
                {"computed": "orders_30d", "op": "gte", "value": 2},
                {"trait": "trial_started_at", "op": "older_than", "value": "P25D"},
            ]
        },
    ]
}


class World:
    """Sends events through the real pipeline and reads what segmentation made of them."""

    def __init__(self, container: Container, clock: FakeClock) -> None:
        self.container = container
        self.clock = clock
        self.source = container.access.create_source(f"app-{uuid.uuid4().hex[:6]}")[0]
        self.segments = container.segments

    def send(self, user: str, event: str | None = None, **fields: Any) -> str:
        message: dict[str, Any] = {
            "userId": user,
            "messageId": uuid.uuid4().hex,
            "timestamp": iso(fields.pop("at", self.clock())),
        }
        if event is None:
            message["type"] = "identify"
            message["traits"] = fields.pop("traits", {})
        else:
            message["type"] = "track"
            message["event"] = event
            message["properties"] = fields.pop("properties", {})
        message.update(fields)
        result = self.container.ingest.ingest(
            self.source.id, [message], Envelope(received_at=self.clock())
        )
        assert result.accepted == 1, result.problems
        return result.profile_ids[0]

    def segment(self, name: str, condition: dict[str, Any]) -> dict[str, Any]:
        return self.segments.save_segment(name, f"{name} for the test", condition)

    def members(self, name: str) -> set[str]:
        page = self.segments.members(name, limit=1000)
        return {m["profile_id"] for m in page["members"]}

    def changes(self, name: str) -> list[tuple[str, str, str]]:
        history = self.segments.history(name, limit=1000)["changes"]
        return [(c["profile_id"], c["change"], c["cause"]) for c in reversed(history)]

    def audience_events(self, profile_id: str) -> list[tuple[str, str]]:
        """The person's Audience events on their timeline, oldest first."""
        timeline = self.container.profiles.events(profile_id, limit=1000)["events"]
        return [
            (e["event"], e["properties"]["audience_name"])
            for e in reversed(timeline)
            if e.get("event", "").startswith("Audience ")
        ]

    def outbox(self) -> list[AudienceChange]:
        """The audience changes recorded for the bus, in order."""
        return audience_changes(self.container)

    def view(self, profile_id: str) -> dict[str, Any]:
        return self.container.profiles.view(profile_id)


@pytest.fixture
def world(container: Container, clock: FakeClock) -> World:
    return World(container, clock)


def test_the_trial_user_of_seed_000_enters_and_leaves_without_being_asked(world: World) -> None:
    world.segments.save_computed(
        "orders_30d", {"kind": "count", "event": "Order Completed", "within": "P30D"}
    )
    world.segment("subscribers", {"trait": "plan", "op": "eq", "value": "paid"})
    world.segment("engaged_trial", TRIAL_CONDITION)
    start = world.clock()
    ada = world.send("ada", traits={"plan": "trial", "trial_started_at": iso(start)})
    for feature in ("alerts", "map", "search", "alerts"):
        world.send("ada", "Feature Used", properties={"feature": feature})
    world.send("ada", "Order Completed")
    assert world.members("engaged_trial") == set()

    world.send("ada", "Order Completed")
    assert world.members("engaged_trial") == {ada}
    # Already a member: more of the same behaviour records nothing more.
    world.send("ada", "Feature Used", properties={"feature": "map"})
    world.send("ada", "Order Completed")
    assert world.changes("engaged_trial") == [(ada, "entered", "event")]

    view = world.view(ada)
    assert [s["name"] for s in view["segments"]] == ["engaged_trial"]
    assert view["computed_traits"] == {"orders_30d": 3}

    world.send("ada", traits={"plan": "paid"})
    assert world.members("engaged_trial") == set()
    assert world.members("subscribers") == {ada}
    assert world.changes("engaged_trial") == [
        (ada, "entered", "event"),
        (ada, "exited", "event"),
    ]
    # Segments are evaluated after those they refer to.
    assert world.audience_events(ada) == [
        ("Audience Entered", "engaged_trial"),
        ("Audience Entered", "subscribers"),
        ("Audience Exited", "engaged_trial"),
    ]
    sent = [(change.track_name, change.segment) for change in world.outbox()]
    assert sent == world.audience_events(ada)
    # No copy is written among the person's own events.
    with world.container.db.read() as conn:
        internal = sa.select(sa.func.count()).where(events.c.source_id == "ariane")
        assert conn.execute(internal).scalar() == 0


def test_a_window_that_empties_ends_membership_with_no_new_event(world: World) -> None:
    world.segment("browsing", {"event": "Page Viewed", "count": {"gte": 1}, "within": "PT3S"})
    seen = world.clock()
    ada = world.send("ada", "Page Viewed")
    assert world.members("browsing") == {ada}
    with world.container.db.read() as conn:
        due = conn.execute(sa.select(profiles.c.due_at)).scalar_one()
    assert due == seen + timedelta(seconds=3)

    world.clock.advance(seconds=2.999)
    assert world.segments.fire_due() == 0
    assert world.members("browsing") == {ada}
    world.clock.advance(seconds=0.001)
    assert world.segments.fire_due() == 1
    assert world.members("browsing") == set()
    assert world.changes("browsing") == [(ada, "entered", "event"), (ada, "exited", "time")]
    # Nothing left to wait for.
    with world.container.db.read() as conn:
        assert conn.execute(sa.select(profiles.c.due_at)).scalar_one() is None


def test_no_event_in_three_days_is_reached_by_time_alone(world: World) -> None:
    world.segment("dormant", {"event": "App Opened", "count": {"eq": 0}, "within": "P3D"})
    ada = world.send("ada", traits={"plan": "trial"})
    # Never opened the app: dormant from the start.
    assert world.members("dormant") == {ada}
    world.clock.advance(hours=1)
    world.send("ada", "App Opened")
    assert world.members("dormant") == set()
    world.clock.advance(days=2, hours=23)
    world.segments.fire_due()
    assert world.members("dormant") == set()
    world.clock.advance(hours=1)
    assert world.segments.fire_due() == 1
    assert world.members("dormant") == {ada}
    assert [c[1:] for c in world.changes("dormant")] == [
        ("entered", "event"),
        ("exited", "event"),
        ("entered", "time"),
    ]


def test_a_trial_older_than_25_days(world: World) -> None:
    world.segment(
        "late_trial",
        {
            "all": [
                {"trait": "plan", "op": "eq", "value": "trial"},
                {"trait": "trial_started_at", "op": "older_than", "value": "P25D"},
            ]
        },
    )
    started = world.clock()
    ada = world.send("ada", traits={"plan": "trial", "trial_started_at": iso(started)})
    world.clock.advance(days=25, seconds=-1)
    world.segments.fire_due()
    assert world.members("late_trial") == set()
    world.clock.advance(seconds=1)
    world.segments.fire_due()
    assert world.members("late_trial") == {ada}


def test_timers_survive_a_restart_and_fire_once_across_processes(
    settings: Settings, clock: FakeClock, world: World
) -> None:
    world.segment("browsing", {"event": "Page Viewed", "count": {"gte": 1}, "within": "PT3S"})
    people = {world.send(f"user-{i}", "Page Viewed") for i in range(30)}
    assert world.members("browsing") == people
    world.container.close()

    clock.advance(seconds=5)
    restarted = [build(settings, clock=clock) for _ in range(3)]
    try:
        fired: list[int] = []
        barrier = threading.Barrier(len(restarted))

        def fire(container: Container) -> None:
            barrier.wait()
            while True:
                count = container.segments.fire_due(limit=7)
                if not count:
                    return
                fired.append(count)

        threads = [threading.Thread(target=fire, args=(c,)) for c in restarted]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(fired) == len(people)
        again = World(restarted[0], clock)
        assert again.members("browsing") == set()
        exits = [c for c in again.changes("browsing") if c[1] == "exited"]
        assert sorted(c[0] for c in exits) == sorted(people)
        # Each exit once on its person's timeline.
        assert sorted(again.audience_events(p)[-1] for p in people) == [
            ("Audience Exited", "browsing")
        ] * len(people)
        assert [len(again.audience_events(p)) for p in people] == [2] * len(people)
    finally:
        for container in restarted:
            container.close()


def test_a_new_segment_is_backfilled_from_history(world: World) -> None:
    ada = world.send("ada", "Feature Used", properties={"feature": "map"})
    for _ in range(3):
        world.send("bob", "Feature Used", properties={"feature": "map"})
    world.send("cy", "Feature Used", properties={"feature": "search"})
    bob = world.send("bob", traits={"plan": "trial"})

    condition = {"event": "Feature Used", "count": {"gte": 3}, "within": "P7D"}
    saved = world.segment("busy", condition)
    assert saved["members"] == 1
    assert world.members("busy") == {bob}
    assert world.changes("busy") == [(bob, "entered", "backfill")]

    # Editing the definition evaluates everyone again.
    world.segments.save_segment("busy", "", {**condition, "count": {"gte": 1}}, key=saved["id"])
    assert ada in world.members("busy")
    assert len(world.members("busy")) == 3
    # And the live state picks up from the backfilled one.
    world.clock.advance(days=7)
    world.segments.fire_due()
    assert world.members("busy") == set()


COMPUTED = {
    "orders": {"kind": "count", "event": "Order Completed"},
    "revenue": {"kind": "sum", "event": "Order Completed", "property": "total"},
    "basket": {"kind": "average", "event": "Order Completed", "property": "total"},
    "smallest": {"kind": "min", "event": "Order Completed", "property": "total"},
    "largest_7d": {
        "kind": "max",
        "event": "Order Completed",
        "property": "total",
        "within": "P7D",
    },
    "favourite": {"kind": "most_frequent", "event": "Order Completed", "property": "category"},
    "first_category": {"kind": "first", "event": "Order Completed", "property": "category"},
    "last_category": {"kind": "last", "event": "Order Completed", "property": "category"},
    "categories": {"kind": "unique_list", "event": "Order Completed", "property": "category"},
    "category_count": {
        "kind": "unique_count",
        "event": "Order Completed",
        "property": "category",
    },
    "first_week_orders": {
        "kind": "count",
        "event": "Order Completed",
        "within": "P7D",
        "from": "first_seen",
    },
    "spring_orders": {
        "kind": "count",
        "event": "Order Completed",
        "between": ["2020-03-01T00:00:00Z", "2020-06-01T00:00:00Z"],
    },
}


def _orders(world: World, user: str, start: datetime) -> None:
    plan = [(0, 30, "rings"), (2, 12.5, "watches"), (3, 30, "rings"), (9, 4, "pearls")]
    for day, total, category in plan:
        world.send(
            user,
            "Order Completed",
            at=start + timedelta(days=day),
            properties={"total": total, "category": category},
        )


def test_computed_traits_live_equal_their_backfill(world: World) -> None:
    start = world.clock() - timedelta(days=10)
    for name, definition in COMPUTED.items():
        world.segments.save_computed(name, definition)
    live = world.view(_send_orders(world, "ada", start))["computed_traits"]
    assert live == {
        "orders": 4,
        "revenue": 76.5,
        "basket": 76.5 / 4,
        "smallest": 4,
        "largest_7d": 4,
        "favourite": "rings",
        "first_category": "rings",
        "last_category": "pearls",
        "categories": ["pearls", "rings", "watches"],
        "category_count": 3,
        "first_week_orders": 3,
        "spring_orders": 0,
    }
    bob = _send_orders(world, "bob", start)
    # Defined again under new names after the events: computed from history.
    for name, definition in COMPUTED.items():
        world.segments.save_computed(f"{name}_again", definition)
    values = world.view(bob)["computed_traits"]
    for name in COMPUTED:
        assert values[f"{name}_again"] == values[name] == live[name], name

    # Windowed values fall as time passes.
    world.clock.advance(days=7)
    assert world.view(bob)["computed_traits"]["largest_7d"] is None
    assert world.view(bob)["computed_traits"]["first_week_orders"] == 3


def _send_orders(world: World, user: str, start: datetime) -> str:
    _orders(world, user, start)
    return world.send(user, traits={"name": user})


def test_a_merge_brings_two_halves_of_a_behaviour_together(world: World) -> None:
    world.segment("busy", {"event": "Feature Used", "count": {"gte": 4}, "within": "P7D"})
    for _ in range(2):
        world.send("ada", "Feature Used")
        world.send("ada-phone", "Feature Used", anonymousId="phone-1", userId=None)
    assert world.members("busy") == set()
    ada = world.send("ada", traits={"email": "ada@example.com"}, anonymousId="phone-1")
    assert world.members("busy") == {ada}
    assert world.changes("busy") == [(ada, "entered", "event")]


def test_a_person_in_a_segment_on_both_devices_enters_it_once(world: World) -> None:
    world.segment("openers", {"event": "App Opened", "count": {"gte": 1}})
    ada = world.send("ada", "App Opened")
    world.send("phone", "App Opened", anonymousId="phone-1", userId=None)
    assert len(world.members("openers")) == 2
    assert world.send("ada", traits={}, anonymousId="phone-1") == ada
    assert world.members("openers") == {ada}
    assert [c[1] for c in world.changes("openers")] == ["entered", "entered"]
    assert world.audience_events(ada) == [("Audience Entered", "openers")] * 2
    assert world.view(ada)["segments"][0]["name"] == "openers"


def test_consent_counts_in_segments(world: World) -> None:
    world.segment("reachable", {"consent": "marketing_email", "status": "granted"})
    ada = world.send(
        "ada", traits={}, context={"consent": {"categoryPreferences": {"marketing_email": True}}}
    )
    assert world.members("reachable") == {ada}
    world.container.profiles.set_consent(ada, "marketing_email", "withdrawn", source="centre")
    assert world.members("reachable") == set()
    world.container.profiles.set_consent(
        ada,
        "marketing_email",
        "granted",
        source="centre",
        expires_at=world.clock() + timedelta(days=30),
    )
    assert world.members("reachable") == {ada}
    world.clock.advance(days=30)
    world.segments.fire_due()
    assert world.members("reachable") == set()


def test_history_and_timelines_hold_internal_events_apart(world: World) -> None:
    world.segment("anyone", {"event": "Ping", "count": {"gte": 1}})
    ada = world.send("ada", "Ping")
    view = world.view(ada)
    # The Audience event is on the timeline but not counted as the person's own.
    assert view["computed"]["event_counts"] == {"Ping": 1}
    timeline = world.container.profiles.events(ada)["events"]
    assert [e["event"] for e in timeline] == ["Audience Entered", "Ping"]
    # The entry reaches the history by segment when the recorded changes are applied.
    assert world.segments.catch_up() == 1
    with world.container.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(segment_history)).scalar() == 1


def test_each_entry_leaving_a_window_sets_the_next_timer(world: World) -> None:
    world.segment("browsing", {"event": "Page Viewed", "count": {"gte": 1}, "within": "PT3S"})
    ada = world.send("ada", "Page Viewed")
    world.clock.advance(seconds=1)
    world.send("ada", "Page Viewed")
    world.clock.advance(seconds=2)
    assert world.segments.fire_due() == 1
    # The first view has left the window, the second has not: still in, one more timer.
    assert world.members("browsing") == {ada}
    world.clock.advance(seconds=1)
    assert world.segments.fire_due() == 1
    assert world.members("browsing") == set()


def test_a_definition_deleted_then_made_again_counts_history_once(world: World) -> None:
    condition = {"event": "Order Completed", "count": {"gte": 3}}
    world.segment("buyers", condition)
    world.send("ada", "Order Completed")
    ada = world.send("ada", "Order Completed")
    world.segments.delete_segment("buyers")
    world.segments.save_computed("orders", {"kind": "count", "event": "Order Completed"})
    world.segments.delete_computed("orders")
    world.segment("buyers", condition)
    world.segments.save_computed("orders", {"kind": "count", "event": "Order Completed"})
    assert world.members("buyers") == set()
    assert world.view(ada)["computed_traits"] == {"orders": 2}


def test_a_trait_that_turns_from_a_number_to_a_boolean_is_a_change(world: World) -> None:
    world.segment("beta", {"trait": "beta", "op": "eq", "value": True})
    world.send("ada", traits={"beta": 1})
    assert world.members("beta") == set()
    ada = world.send("ada", traits={"beta": True})
    assert world.members("beta") == {ada}


def test_a_batch_for_a_new_person_waits_for_a_change_of_definitions(
    world: World, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite runs one write transaction at a time: there is no race to lose")
    paused, release = threading.Event(), threading.Event()
    backfill = segment_backfill.backfill

    def held_open(*args: Any) -> None:
        backfill(*args)
        paused.set()
        release.wait(10)

    monkeypatch.setattr(segment_backfill, "backfill", held_open)
    saver = threading.Thread(
        target=world.segment, args=("buyers", {"event": "Order Completed", "count": {"gte": 1}})
    )
    saver.start()
    assert paused.wait(10)
    sent: list[str] = []
    sender = threading.Thread(target=lambda: sent.append(world.send("ada", "Order Completed")))
    sender.start()
    sender.join(0.5)
    # The batch waits for the definitions to commit, then applies them.
    assert not sent
    release.set()
    saver.join()
    sender.join()
    assert world.members("buyers") == set(sent)
