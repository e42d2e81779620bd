"""Where worker processes take turns to write (SQLite), a batch is worked out from a
snapshot before its turn and only written in it. Whatever another writer changed in
between, or a time boundary passed meanwhile, must have the people it concerns worked
out again in the turn: nothing read may be written back stale. The others' work stands."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ariane.bootstrap import Container, build
from ariane.domain.clock import iso
from ariane.services.batch_plan import BatchPlanner
from ariane.services.ingest import Envelope, IngestService
from ariane.services.ingest_turns import Turns
from ariane.settings import IdentitySettings, Settings
from ariane.storage.tables import (
    events,
    identity_decisions,
    profiles,
    segment_history,
    segment_members,
)
from tests.conftest import FakeClock
from tests.integration.test_segments import World

PRO_BUYERS = {
    "all": [
        {"trait": "plan", "op": "eq", "value": "pro"},
        {"event": "Order Completed", "count": {"gte": 1}},
    ]
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Batches are worked out before their turn only where processes share the writer.
    return settings.model_copy(update={"workers": 2})


@pytest.fixture
def world(container: Container, clock: FakeClock) -> Iterator[World]:
    if not container.db.serialises_writes:
        pytest.skip(
            "PostgreSQL works each batch out in its own transaction, under row locks: there"
            " is no snapshot to go stale"
        )
    yield World(container, clock)


def meanwhile(
    monkeypatch: pytest.MonkeyPatch,
    container: Container,
    interfere: Callable[[], Any],
    times: int = 1,
) -> list[set[int] | None]:
    """Run `interfere` between the next batch's snapshot and its turn to write, for the
    next `times` snapshots (those `interfere` itself takes excepted).

    Returns what each turn found: the positions of the batch's events found stale, or
    None when all were.
    """
    prepare, stale = Turns.prepare, Turns.stale
    pending = [interfere] * times
    found: list[set[int] | None] = []

    interfering = False

    def prepared_then_interfere(self: Turns, *args: Any) -> Any:
        nonlocal interfering
        batch = prepare(self, *args)
        if pending and batch is not None and not interfering:
            interfering = True
            try:
                pending.pop()()
            finally:
                interfering = False
        return batch

    def checked(self: Turns, *args: Any) -> set[int] | None:
        positions = stale(self, *args)
        found.append(positions)
        return positions

    monkeypatch.setattr(Turns, "prepare", prepared_then_interfere)
    monkeypatch.setattr(Turns, "stale", checked)
    return found


def test_a_batch_is_written_as_worked_out_when_nothing_changed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = meanwhile(monkeypatch, world.container, lambda: None)
    world.send("ada", "Order Completed")
    assert found == [set()]


def test_a_profile_written_meanwhile_is_not_overwritten_with_what_was_read_before(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("pro_buyers", PRO_BUYERS)
    ada = world.send("ada", traits={"plan": "free"})
    found = meanwhile(
        monkeypatch, world.container, lambda: world.send("ada", traits={"plan": "pro"})
    )

    assert world.send("ada", "Order Completed") == ada

    # The identify sent meanwhile was written as worked out; the order, found stale in
    # its turn, was worked out again there, from the profile the identify left.
    assert found == [set(), {0}]
    view = world.view(ada)
    assert view["traits"]["plan"] == "pro"
    assert view["computed"]["event_counts"] == {"Order Completed": 1}
    assert world.members("pro_buyers") == {ada}


def test_an_identifier_claimed_meanwhile_makes_no_second_person(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed: list[str] = []
    found = meanwhile(
        monkeypatch,
        world.container,
        lambda: claimed.append(world.send("bob", traits={"email": "bob@example.com"})),
    )

    bob = world.send("bob", "Order Completed")

    assert found == [set(), {0}]
    assert bob == claimed[0]
    assert world.container.profiles.lookup("user_id", "bob") == bob
    assert world.view(bob)["computed"]["event_counts"] == {"Order Completed": 1}


def test_a_segment_defined_meanwhile_is_evaluated_for_the_batch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = meanwhile(
        monkeypatch,
        world.container,
        lambda: world.segment("buyers", {"event": "Order Completed", "count": {"gte": 1}}),
    )

    cleo = world.send("cleo", "Order Completed")

    assert found == [None]
    assert world.members("buyers") == {cleo}


def ada_about_to_lose_an_order(world: World) -> str:
    """Ada, with two orders in the segment's window, the first leaving it in one second."""
    world.segment("regulars", {"event": "Order", "count": {"gte": 3}, "within": "P7D"})
    ada = world.send("ada", "Order")
    world.clock.advance(days=6, hours=23, minutes=59, seconds=59)
    world.send("ada", "Order")
    return ada


def test_a_time_boundary_passed_before_the_turn_has_the_batch_worked_out_in_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = ada_about_to_lose_an_order(world)
    # Worked out one second before the first order leaves the window, written after.
    found = meanwhile(monkeypatch, world.container, lambda: world.clock.advance(seconds=2))

    world.send("ada", "Order")

    assert found == [{0}]
    assert world.members("regulars") == set()
    assert world.changes("regulars") == []
    assert world.view(ada)["computed"]["event_counts"] == {"Order": 3}


def test_one_worker_works_batches_out_in_its_turn(
    container: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one process there is nothing to overlap: each batch is worked out once.
    settings = container.settings.model_copy(update={"workers": 1})
    one = IngestService(container.db, settings, clock, container.segments)
    found = meanwhile(monkeypatch, container, lambda: None)
    source = container.access.create_source("one")[0]
    message = {"type": "track", "event": "Order", "userId": "ada", "timestamp": iso(clock())}
    result = one.ingest(source.id, [message], Envelope(received_at=clock()))
    assert result.accepted == 1
    assert found == []


def send_batch(world: World, messages: list[dict[str, Any]]) -> list[str]:
    for message in messages:
        message.setdefault("messageId", uuid.uuid4().hex)
        message.setdefault("timestamp", iso(world.clock()))
        message.setdefault("type", "track")
    result = world.container.ingest.ingest(
        world.source.id, messages, Envelope(received_at=world.clock())
    )
    assert result.accepted == len(messages), result.problems
    return result.profile_ids


def redone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events each turn worked out again."""
    redo = BatchPlanner.plan_in_turn
    counts: list[int] = []

    def counted(self: BatchPlanner, conn: Any, source_id: str, planned: list[Any], now: Any) -> Any:
        counts.append(len(planned))
        return redo(self, conn, source_id, planned, now)

    monkeypatch.setattr(BatchPlanner, "plan_in_turn", counted)
    return counts


def test_only_the_person_written_meanwhile_is_worked_out_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("pro_buyers", PRO_BUYERS)
    world.segment("regulars", {"event": "Order Completed", "count": {"gte": 2}})
    ada = world.send("ada", traits={"plan": "free"})
    bob = world.send("bob", traits={"plan": "pro"})
    found = meanwhile(
        monkeypatch, world.container, lambda: world.send("ada", traits={"plan": "pro"})
    )
    counts = redone(monkeypatch)

    holders = send_batch(
        world,
        [
            {"userId": "bob", "event": "Order Completed"},
            {"userId": "ada", "event": "Order Completed"},
            {"userId": "bob", "event": "Order Completed"},
            {"userId": "cleo", "event": "Order Completed"},
        ],
    )

    # Ada's order was worked out again from the profile the identify left; Bob's and
    # Cleo's were written as worked out before the turn.
    assert found == [set(), {1}]
    assert counts == [1]
    cleo = holders[3]
    assert holders == [bob, ada, bob, cleo]
    assert world.view(ada)["traits"]["plan"] == "pro"
    assert world.view(ada)["computed"]["event_counts"] == {"Order Completed": 1}
    assert world.view(bob)["computed"]["event_counts"] == {"Order Completed": 2}
    assert world.members("pro_buyers") == {ada, bob}
    assert world.members("regulars") == {bob}
    assert sorted(world.changes("pro_buyers")) == sorted(
        [(ada, "entered", "event"), (bob, "entered", "event")]
    )
    # The batch's events are stored in the order they came, each under its person.
    with world.container.db.read() as conn:
        stored = conn.execute(
            sa.select(events.c.profile_id)
            .where(events.c.event == "Order Completed")
            .order_by(events.c.id)
        ).scalars()
        assert list(stored) == holders


def test_events_linked_to_an_identifier_claimed_meanwhile_are_worked_out_again_together(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("browsers", {"event": "Page Viewed", "count": {"gte": 2}})
    claimed: list[str] = []
    found = meanwhile(
        monkeypatch,
        world.container,
        lambda: claimed.append(world.send("fay", traits={"email": "fay@example.com"})),
    )
    counts = redone(monkeypatch)

    holders = send_batch(
        world,
        [
            {"anonymousId": "visit-1", "event": "Page Viewed"},
            {"userId": "erin", "event": "Page Viewed"},
            # Names visit-1 and fay: the first event is Fay's too.
            {"anonymousId": "visit-1", "userId": "fay", "event": "Page Viewed"},
            {"userId": "erin", "event": "Page Viewed"},
        ],
    )

    assert found == [set(), {0, 2}]
    assert counts == [2]
    fay, erin = claimed[0], holders[1]
    assert holders == [fay, erin, fay, erin]
    assert world.container.profiles.lookup("anonymous_id", "visit-1") == fay
    assert world.container.profiles.lookup("user_id", "erin") == erin
    assert world.view(fay)["computed"]["event_counts"] == {"Page Viewed": 2}
    assert world.members("browsers") == {fay, erin}


def test_a_person_whose_segment_time_changed_before_the_turn_is_worked_out_again_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = ada_about_to_lose_an_order(world)
    bob = world.send("bob", "Order")
    world.send("bob", "Order")
    # Worked out one second before Ada's first order leaves the window, written after.
    found = meanwhile(monkeypatch, world.container, lambda: world.clock.advance(seconds=2))
    counts = redone(monkeypatch)

    send_batch(world, [{"userId": "bob", "event": "Order"}, {"userId": "ada", "event": "Order"}])

    assert found == [{1}]
    assert counts == [1]
    assert world.members("regulars") == {bob}
    assert world.changes("regulars") == [(bob, "entered", "event")]
    assert world.view(ada)["computed"]["event_counts"] == {"Order": 3}


def test_a_new_person_whose_segment_time_changed_before_the_turn_is_worked_out_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("recent", {"event": "Order", "count": {"gte": 1}, "within": "P1D"})
    bob = world.send("bob", "Order")
    late = world.clock() - timedelta(days=1) + timedelta(seconds=1)
    # Worked out one second before Gus's order, sent late, leaves the window.
    found = meanwhile(monkeypatch, world.container, lambda: world.clock.advance(seconds=2))

    holders = send_batch(
        world,
        [
            {"userId": "bob", "event": "Search"},
            {"userId": "gus", "event": "Order", "timestamp": iso(late)},
        ],
    )

    assert found == [{1}]
    gus = holders[1]
    assert world.members("recent") == {bob}
    assert world.changes("recent") == [(bob, "entered", "event")]
    assert world.view(gus)["computed"]["event_counts"] == {"Order": 1}


def test_a_refused_merge_is_worked_out_again_when_the_other_profile_changed_meanwhile(
    container: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events are linked to every profile that owns an identifier they name, not only to
    # the one they land on: here the profile that was not merged.
    if not container.db.serialises_writes:
        pytest.skip("PostgreSQL works each batch out in its own transaction: nothing goes stale")
    identity = IdentitySettings(limits={"user_id": 1, "email": 2})
    settings = container.settings.model_copy(update={"identity": identity})
    limited = build(settings, clock=clock)
    try:
        world = World(limited, clock)
        quin = world.send("quin", traits={"email": "q1@example.com"})
        world.send("quin", traits={"email": "q2@example.com"})
        pia = send_batch(
            world,
            [{"type": "identify", "anonymousId": "visit-p", "traits": {"email": "p1@example.com"}}],
        )[0]
        found = meanwhile(
            monkeypatch,
            limited,
            lambda: send_batch(
                world,
                [
                    {
                        "type": "identify",
                        "anonymousId": "visit-p",
                        "traits": {"email": "p2@example.com"},
                    }
                ],
            ),
        )

        holders = send_batch(
            world, [{"userId": "quin", "anonymousId": "visit-p", "event": "Signed In"}]
        )

        assert found == [set(), {0}]
        assert holders == [quin]
        assert limited.profiles.lookup("anonymous_id", "visit-p") == pia
        with limited.db.read() as conn:
            reasons = conn.execute(sa.select(identity_decisions.c.reason)).scalars().all()
        # Merging Pia's two emails into Quin's two would give four.
        assert reasons == [
            "it belongs to another profile; merging the two would give one profile 4 email"
            " values, the limit is 2 (identity.limits)"
        ]
    finally:
        limited.close()


def test_the_people_kept_are_checked_at_the_moment_the_others_are_worked_out_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("recent", {"event": "Order", "count": {"gte": 1}, "within": "P1D"})
    world.send("ada", traits={"plan": "free"})
    # Bob's order leaves the window 1 ms after the batch is worked out; Ada is written
    # meanwhile, and the clock moves on while her event is worked out again.
    late = world.clock() - timedelta(days=1) + timedelta(milliseconds=1)
    found = meanwhile(
        monkeypatch, world.container, lambda: world.send("ada", traits={"plan": "pro"})
    )
    redo = BatchPlanner.plan_in_turn

    def slow(self: BatchPlanner, *args: Any) -> Any:
        world.clock.advance(milliseconds=2)
        return redo(self, *args)

    monkeypatch.setattr(BatchPlanner, "plan_in_turn", slow)

    send_batch(
        world,
        [
            {"userId": "bob", "event": "Order", "timestamp": iso(late)},
            {"userId": "ada", "event": "Search"},
        ],
    )

    # Bob was kept: at the moment of the check his order was in the window. His entry is
    # recorded at a moment it held, not when Ada's event was worked out again.
    assert found == [set(), {1}]
    bob = world.container.profiles.lookup("user_id", "bob")
    assert world.changes("recent") == [(bob, "entered", "event")]
    with world.container.db.read() as conn:
        entered = conn.execute(
            sa.select(segment_history.c.at).where(segment_history.c.profile_id == bob)
        ).scalar_one()
    assert entered < late + timedelta(days=1)
    world.clock.advance(seconds=1)
    world.segments.fire_due()
    assert world.changes("recent") == [(bob, "entered", "event"), (bob, "exited", "time")]


def test_the_people_kept_enter_their_segments_when_they_were_worked_out(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    buyers = world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.send("ada", traits={"plan": "free"})
    worked_out = world.clock()

    def interfere() -> None:
        world.send("ada", traits={"plan": "pro"})
        world.clock.advance(seconds=5)  # the wait for the writer's turn

    found = meanwhile(monkeypatch, world.container, interfere)
    holders = send_batch(
        world, [{"userId": "bob", "event": "Order"}, {"userId": "ada", "event": "Search"}]
    )

    assert found == [set(), {1}]
    bob = holders[0]
    # The membership row, the history and the profile agree on when Bob entered.
    world.segments.catch_up()
    with world.container.db.read() as conn:
        member_at = conn.execute(
            sa.select(segment_members.c.entered_at).where(segment_members.c.profile_id == bob)
        ).scalar_one()
        history_at = conn.execute(
            sa.select(segment_history.c.at).where(segment_history.c.profile_id == bob)
        ).scalar_one()
        computed = conn.execute(
            sa.select(profiles.c.computed).where(profiles.c.id == bob)
        ).scalar_one()
    assert member_at == history_at == worked_out
    assert computed["segments"] == {buyers["id"]: iso(worked_out)}


def test_a_resent_event_in_a_partly_stale_batch_is_found_on_the_second_attempt(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("buyers", {"event": "Order", "count": {"gte": 1}})
    world.send("ada", traits={"plan": "free"})
    resent = {"userId": "bob", "event": "Order", "messageId": uuid.uuid4().hex}
    send_batch(world, [dict(resent)])
    found = meanwhile(
        monkeypatch, world.container, lambda: world.send("ada", traits={"plan": "pro"})
    )
    counts = redone(monkeypatch)

    messages = [dict(resent), {"userId": "cleo", "event": "Order"}]
    messages.append({"userId": "ada", "event": "Order"})
    for message in messages:
        message.setdefault("messageId", uuid.uuid4().hex)
        message.update(type="track", timestamp=iso(world.clock()))
    result = world.container.ingest.ingest(
        world.source.id, messages, Envelope(received_at=world.clock())
    )

    # The first attempt worked Ada's event out again and its write met the resent one;
    # the second looked for resent events and worked the other two out in the turn.
    assert found == [set(), {2}]
    assert counts == [1, 2]
    assert (result.accepted, result.duplicates) == (2, 1)
    bob = world.container.profiles.lookup("user_id", "bob")
    assert world.view(bob)["computed"]["event_counts"] == {"Order": 1}
    assert world.changes("buyers").count((bob, "entered", "event")) == 1


def test_a_profile_merged_away_meanwhile_makes_only_the_events_it_owned_stale(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vic = world.send("vic", "Page Viewed")
    anonymous = send_batch(world, [{"anonymousId": "anon-9", "event": "Page Viewed"}])[0]
    found = meanwhile(
        monkeypatch,
        world.container,
        lambda: send_batch(world, [{"userId": "vic", "anonymousId": "anon-9", "event": "Login"}]),
    )

    holders = send_batch(
        world, [{"anonymousId": "anon-9", "event": "Order"}, {"userId": "zed", "event": "Order"}]
    )

    # The merge (worked out in its own turn: it merges stored profiles) moved anon-9 to
    # Vic: only the event naming it was worked out again.
    assert found == [{0}]
    assert holders[0] == vic
    assert world.container.profiles.lookup("anonymous_id", "anon-9") == vic
    assert world.view(anonymous)["id"] == vic
