"""Entries and exits are recorded in the transaction that decides them (`segment_changes`)
and applied to memberships and their history in bulk (`catch_up`): whatever reads those
sees every change recorded before it, in the order they were decided."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from ariane.bootstrap import Container
from ariane.storage import segments as store
from ariane.storage.tables import segment_changes, segment_history, segment_members
from tests.conftest import FakeClock
from tests.integration.test_segments import World


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

    # Two changes a round: the last change of a person decides, across rounds too.
    monkeypatch.setattr(store, "_APPLY_CHUNK", 2)
    assert world.segments.catch_up() == 5
    assert world.segments.catch_up() == 0
    assert rows(world, segment_changes) == []
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

    def once() -> int:
        count = catch_up()
        applied.set()
        stop.set()
        return count

    world.segments.catch_up = once  # type: ignore[method-assign]
    loop = threading.Thread(target=world.segments.run_timers, args=(stop, 0.01))
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
