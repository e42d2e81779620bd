"""Entries and exits are recorded in the transaction that decides them (`segment_changes`)
and applied to memberships and their history, and their messages put in the outbox, in
bulk (`catch_up`): whatever reads those sees every change recorded before it, in the
order they were decided."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from ariane.bootstrap import Container
from ariane.services.bus import Job
from ariane.settings import Settings
from ariane.storage import segments as store
from ariane.storage.tables import (
    outbox,
    segment_changes,
    segment_history,
    segment_members,
)
from tests.conftest import FakeClock
from tests.integration.test_segments import World, audience_changes


@pytest.fixture
def world(container: Container, clock: FakeClock) -> World:
    return World(container, clock)


def rows(world: World, table: sa.Table) -> list[Any]:
    with world.container.db.read() as conn:
        return list(conn.execute(sa.select(table).order_by(*table.primary_key.columns)))


def test_changes_wait_in_order_and_are_applied_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("plans", {"trait": "plan", "op": "eq", "value": "pro"})
    ada = world.send("ada", traits={"plan": "pro"})
    world.clock.advance(seconds=1)
    world.send("ada", traits={"plan": "free"})
    world.clock.advance(seconds=1)
    entered_again = world.clock()
    world.send("ada", traits={"plan": "pro"})
    bob = world.send("bob", traits={"plan": "pro"})
    world.clock.advance(seconds=1)
    world.send("bob", traits={"plan": "free"})

    # Recorded, not yet applied.
    assert [(r.profile_id, r.change) for r in rows(world, segment_changes)] == [
        (ada, "entered"),
        (ada, "exited"),
        (ada, "entered"),
        (bob, "entered"),
        (bob, "exited"),
    ]
    assert rows(world, segment_members) == []
    assert rows(world, segment_history) == []

    # The Audience events are on the timelines already, read from the changes; their
    # messages wait with them.
    def audience(profile_id: str) -> list[dict[str, Any]]:
        page = world.container.profiles.events(profile_id, limit=100)["events"]
        return [e for e in reversed(page) if e.get("event", "").startswith("Audience ")]

    waiting = audience(ada) + audience(bob)
    timeline = [e["messageId"] for e in waiting]
    assert [r.message_id for r in rows(world, segment_changes)] == timeline
    assert [e["event"] for e in waiting] == [
        "Audience Entered",
        "Audience Exited",
        "Audience Entered",
        "Audience Entered",
        "Audience Exited",
    ]
    assert rows(world, outbox) == []

    # Two changes a round: the last change of a person decides, across rounds too.
    monkeypatch.setattr(store, "_APPLY_CHUNK", 2)
    assert world.segments.catch_up() == 5
    assert world.segments.catch_up() == 0
    assert rows(world, segment_changes) == []
    # Each recorded once for the bus, in the order decided.
    queued = rows(world, outbox)
    assert [(r.topic, r.message_id) for r in queued] == [
        (kind, m)
        for kind, m in zip(
            [
                "SegmentEntered",
                "SegmentExited",
                "SegmentEntered",
                "SegmentEntered",
                "SegmentExited",
            ],
            timeline,
            strict=True,
        )
    ]
    assert [r.profile_id for r in queued] == [ada, ada, ada, bob, bob]
    assert [(r.profile_id, r.entered_at) for r in rows(world, segment_members)] == [
        (ada, entered_again)
    ]
    assert world.changes("plans") == [
        (ada, "entered", "event"),
        (ada, "exited", "event"),
        (ada, "entered", "event"),
        (bob, "entered", "event"),
        (bob, "exited", "event"),
    ]
    # Read from the history now, the same events; and they are what the outbox sends.
    assert audience(ada) + audience(bob) == waiting
    recorded = audience_changes(world.container)
    assert [(c.event_id, c.track_name, c.segment) for c in recorded] == [
        (m["messageId"], m["event"], m["properties"]["audience_name"]) for m in waiting
    ]
    assert [r.message_id for r in rows(world, segment_history)] == timeline
    assert {r.segment_name for r in rows(world, segment_history)} == {"plans"}


def test_an_exit_and_a_new_entry_applied_together_leave_the_member_entered_anew(
    world: World,
) -> None:
    world.segment("plans", {"trait": "plan", "op": "eq", "value": "pro"})
    ada = world.send("ada", traits={"plan": "pro"})
    bob = world.send("bob", traits={"plan": "pro"})
    assert world.segments.catch_up() == 2
    world.clock.advance(seconds=1)
    world.send("ada", traits={"plan": "free"})
    world.send("bob", traits={"plan": "free"})
    world.clock.advance(seconds=1)
    entered_again = world.clock()
    world.send("ada", traits={"plan": "pro"})
    # One round: ada's membership is there when her entry is applied; bob's goes.
    assert world.segments.catch_up() == 3
    assert [(r.profile_id, r.entered_at) for r in rows(world, segment_members)] == [
        (ada, entered_again)
    ]
    assert [c[1] for c in world.changes("plans") if c[0] == ada] == [
        "entered",
        "exited",
        "entered",
    ]
    assert bob not in world.members("plans")


def test_a_change_recorded_with_its_message_already_queued_queues_nothing(
    world: World,
) -> None:
    """Changes recorded before migration 0007 put their message in the outbox themselves:
    they have no message id, and applying them adds none."""
    world.segment("plans", {"trait": "plan", "op": "eq", "value": "pro"})
    ada = world.send("ada", traits={"plan": "pro"})
    world.container.db.write(
        lambda conn: conn.execute(segment_changes.update().values(message_id=None))
    )
    assert world.segments.catch_up() == 1
    assert world.members("plans") == {ada}
    assert rows(world, outbox) == []


def test_reads_apply_what_was_recorded_before_them(world: World) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    ada = world.send("ada", "Order")
    assert len(rows(world, segment_changes)) == 1

    # Members, history, counts and previews each see the entry.
    assert world.members("buyers") == {ada}
    world.send("bob", "Order")
    assert [c[1] for c in world.changes("buyers")] == ["entered", "entered"]
    world.send("cleo", "Order")
    assert world.segments.get_segment("buyers")["members"] == 3
    world.send("dan", "Order")
    assert [s["members"] for s in world.segments.list_segments()] == [4]
    world.send("eve", "Order")
    preview = world.segments.preview({"segment": "buyers"})
    assert preview["count"] == 5
    assert rows(world, segment_changes) == []


def test_the_360_view_shows_segments_before_they_are_applied(world: World) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    ada = world.send("ada", "Order")
    view = world.view(ada)
    assert [(s["name"], s["entered_at"]) for s in view["segments"]] == [("buyers", world.clock())]
    assert len(rows(world, segment_changes)) == 1


def test_a_merge_applies_the_changes_of_both_profiles_first(world: World) -> None:
    world.segment("browsers", {"event": "Page Viewed", "count": {"gte": 1}})
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    ada = world.send("ada", "Order")
    visitor = world.send("ada-phone", "Page Viewed", anonymousId="phone-1", userId=None)
    world.clock.advance(seconds=1)

    # The phone's visitor signs in as Ada: the visitor is merged into Ada.
    world.send("ada", "Signed In", anonymousId="phone-1")

    assert world.container.profiles.lookup("anonymous_id", "phone-1") == ada
    assert world.members("browsers") == {ada}
    assert world.members("buyers") == {ada}
    assert world.changes("browsers") == [(ada, "entered", "event")]
    assert visitor not in {r.profile_id for r in rows(world, segment_members)}


def test_a_deleted_segment_does_not_come_back_with_changes_still_to_apply(
    world: World,
) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.send("ada", "Order")
    world.segments.delete_segment("buyers")
    assert rows(world, segment_members) == []
    assert rows(world, segment_changes) == []
    world.segments.catch_up()
    assert rows(world, segment_members) == []


def test_the_timer_loop_applies_the_changes(world: World) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.send("ada", "Order")
    stop = threading.Event()
    applied = threading.Event()
    catch_up = world.segments.catch_up

    def once(*, waited: float = 0) -> int:
        count = catch_up(waited=waited)
        applied.set()
        stop.set()
        return count

    world.segments.catch_up = once  # type: ignore[method-assign]
    loop = threading.Thread(target=timers(world, stop, 0.01, 0))
    loop.start()
    assert applied.wait(10)
    loop.join(10)
    assert rows(world, segment_changes) == []
    assert len(rows(world, segment_members)) == 1


def test_processes_applying_at_once_apply_each_change_once(world: World) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    for person in range(30):
        world.send(f"person-{person}", "Order")
    start = threading.Barrier(4)
    counts: list[int] = []

    def apply() -> None:
        start.wait()
        counts.append(world.segments.catch_up())

    threads = [threading.Thread(target=apply) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 30
    assert len(rows(world, segment_history)) == 30
    assert len(rows(world, segment_members)) == 30


def test_a_merge_applies_the_changes_of_its_two_profiles_only(world: World) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.segments.catch_up()
    bob = world.send("bob", "Order")
    world.send("ada", "Order")
    world.send("ada-phone", "Order", anonymousId="phone-1", userId=None)

    world.send("ada", "Signed In", anonymousId="phone-1")

    # Bob's entry waits for the next round; Ada's two profiles' were applied.
    assert [r.profile_id for r in rows(world, segment_changes)] == [bob]


@pytest.fixture
def postgres_world(world: World, db_url: str) -> World:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite's single writer runs one transaction at a time: nothing races")
    return world


@pytest.mark.parametrize("when", ["after_read", "after_apply"])
def test_an_erasure_during_a_round_leaves_nothing_behind(
    postgres_world: World, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    world = postgres_world
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    ada = world.send("ada", "Order")
    apply = store._apply_changes
    erased: list[Any] = []
    waiting: list[threading.Thread] = []

    def erase() -> None:
        erased.append(world.container.privacy.erase(ada, requested_by="test"))

    def racing(conn: Any, changes: Any) -> None:
        if erased or waiting:
            return apply(conn, changes)
        eraser = threading.Thread(target=erase)
        eraser.start()
        if when == "after_read":
            # Read, not applied yet: the erasure waits for the round to end.
            eraser.join(1)
            waiting.append(eraser)
            return apply(conn, changes)
        # Applied, not committed yet: the erasure waits too.
        apply(conn, changes)
        eraser.join(1)
        waiting.append(eraser)
        return None

    monkeypatch.setattr(store, "_apply_changes", racing)
    world.segments.catch_up()
    for eraser in waiting:
        eraser.join(20)
        assert not eraser.is_alive()
    assert erased
    for table in (segment_members, segment_history, segment_changes):
        assert [r for r in rows(world, table) if r.profile_id == ada] == [], table.name


def test_a_smaller_id_committed_during_a_round_is_applied_by_the_next(
    postgres_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = postgres_world.container.db
    at = postgres_world.clock()
    change = {"segment_id": "s", "change": "entered", "cause": "event", "at": at}
    late = db.engine.connect()
    open_transaction = late.begin()
    late.execute(segment_changes.insert().values(profile_id="ada", **change))
    db.write(lambda conn: conn.execute(segment_changes.insert().values(profile_id="bob", **change)))
    apply = store._apply_changes

    def committing(conn: Any, changes: Any) -> None:
        if open_transaction.is_active:
            open_transaction.commit()  # Ada's smaller id commits after the round read
        apply(conn, changes)

    monkeypatch.setattr(store, "_apply_changes", committing)
    first = postgres_world.segments.catch_up()
    late.close()
    assert (first, postgres_world.segments.catch_up()) == (1, 1)
    assert sorted(r.profile_id for r in rows(postgres_world, segment_members)) == ["ada", "bob"]
    assert len(rows(postgres_world, segment_history)) == 2


def test_the_timer_loop_applies_changes_once_the_oldest_has_waited_the_interval(
    world: World,
) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.send("ada", "Order")
    world.clock.advance(seconds=3599)
    world.send("bob", "Order")
    applied: list[int] = []
    catch_up = world.segments.catch_up

    def counted_catch_up(*, waited: float = 0) -> int:
        applied.append(catch_up(waited=waited))
        return applied[-1]

    world.segments.catch_up = counted_catch_up  # type: ignore[method-assign]

    def five_rounds() -> None:
        rounds = 0
        fire_due = world.segments.fire_due
        stop = threading.Event()

        def counted(limit: int = 500) -> int:
            nonlocal rounds
            rounds += 1
            if rounds == 5:
                stop.set()
            return fire_due(limit)

        world.segments.fire_due = counted  # type: ignore[method-assign]
        try:
            timers(world, stop, 0.001, 3600)()
        finally:
            del world.segments.fire_due
        assert rounds == 5

    # Ada's entry has waited 3599 s of the hour: nothing is applied yet.
    five_rounds()
    assert applied == [0] * 5
    assert len(rows(world, segment_changes)) == 2
    # Then it has waited the hour: the round applies it with Bob's, younger, and the
    # next rounds find nothing.
    world.clock.advance(seconds=1)
    applied.clear()
    five_rounds()
    assert applied == [2, 0, 0, 0, 0]
    assert len(rows(world, segment_members)) == 2


def test_a_read_applies_changes_however_young(world: World) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.send("ada", "Order")
    assert world.segments.catch_up(waited=3600) == 0
    assert world.segments.get_segment("buyers")["members"] == 1
    assert rows(world, segment_changes) == []


def test_the_timer_loop_applies_again_when_the_interval_has_passed(world: World) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.segments.catch_up()
    stop = threading.Event()
    loop = threading.Thread(target=timers(world, stop, 0.005, 0.05))
    loop.start()
    try:
        world.send("ada", "Order")
        world.clock.advance(seconds=0.05)
        deadline = time.monotonic() + 10
        while rows(world, segment_changes) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rows(world, segment_changes) == []
    finally:
        stop.set()
        loop.join(10)
    assert len(rows(world, segment_members)) == 1


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_the_apply_interval_is_a_finite_number_of_seconds(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARIANE_SEGMENT_APPLY_INTERVAL", value)
    with pytest.raises(ValidationError, match="segment_apply_interval"):
        Settings()


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_the_timeline_pages_through_events_and_audience_events_once_each(
    world: World, size: int
) -> None:
    """Audience events are read from the changes, then from the history, beside the
    person's own events: at one time they come first, and paging from any point, with
    the changes applied between two pages, gives each event once."""
    world.segment("plans", {"trait": "plan", "op": "eq", "value": "pro"})
    world.segment("pinged", {"event": "Ping", "count": {"gte": 1}})
    world.segment("both", {"all": [{"segment": "plans"}, {"segment": "pinged"}]})
    ada = world.send("ada", traits={"plan": "pro"})
    for message in ("Ping", {"plan": "free"}, "Ping", {"plan": "pro"}):
        world.clock.advance(seconds=1)
        if isinstance(message, str):
            world.send("ada", message)
        else:
            world.send("ada", traits=message)

    def label(event: dict[str, Any]) -> str:
        if event.get("event", "").startswith("Audience "):
            return f"{event['event']} {event['properties']['audience_name']}"
        return str(event.get("event") or event["type"])

    def paged(apply_after: int | None = None) -> list[str]:
        labels: list[str] = []
        cursor = None
        for number in itertools.count():
            page = world.container.profiles.events(ada, limit=size, cursor=cursor)
            labels += [label(e) for e in page["events"]]
            if number == apply_after:
                assert world.segments.catch_up() == 7
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return labels

    # Newest first; at one time the Audience events (the last decided first) before the
    # event that caused them.
    whole = [
        "Audience Entered both",
        "Audience Entered plans",
        "identify",
        "Ping",
        "Audience Exited both",
        "Audience Exited plans",
        "identify",
        "Audience Entered both",
        "Audience Entered pinged",
        "Ping",
        "Audience Entered plans",
        "identify",
    ]
    assert paged() == whole
    assert paged(apply_after=1) == whole
    assert rows(world, segment_changes) == []
    assert paged() == whole


def timers(world: World, stop: threading.Event, interval: float, apply_every: float) -> Any:
    """The segment timers' job, as `ariane serve` runs it, until `stop` is set."""
    job = Job("segment-timers", lambda: world.segments.fire_and_apply(apply_every), interval)
    return lambda: world.container.bus.run_jobs([job], stop)
