"""Where worker processes take turns to write (SQLite), a batch is worked out from a
snapshot before its turn and only written in it. Whatever another writer changed in
between, or a time boundary passed meanwhile, must have the batch worked out again in
the turn: nothing it read may be written back stale."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ariane.bootstrap import Container
from ariane.domain.clock import iso
from ariane.services.ingest import Envelope, IngestService
from ariane.settings import Settings
from tests.conftest import FakeClock
from tests.integration.test_segments import World


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
) -> list[bool]:
    """Run `interfere` between the next batch's snapshot and its turn to write, for the
    next `times` snapshots (those `interfere` itself takes excepted).

    Returns what each turn found: whether the batch still held as worked out.
    """
    prepare, still_holds = IngestService._prepare, IngestService._still_holds
    pending = [interfere] * times
    found: list[bool] = []

    interfering = False

    def prepared_then_interfere(self: IngestService, *args: Any) -> Any:
        nonlocal interfering
        batch = prepare(self, *args)
        if pending and batch is not None and not interfering:
            interfering = True
            try:
                pending.pop()()
            finally:
                interfering = False
        return batch

    def checked(self: IngestService, *args: Any) -> bool:
        holds = still_holds(self, *args)
        found.append(holds)
        return holds

    monkeypatch.setattr(IngestService, "_prepare", prepared_then_interfere)
    monkeypatch.setattr(IngestService, "_still_holds", checked)
    return found


def test_a_batch_is_written_as_worked_out_when_nothing_changed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = meanwhile(monkeypatch, world.container, lambda: None)
    world.send("ada", "Order Completed")
    assert found == [True]


def test_a_profile_written_meanwhile_is_not_overwritten_with_what_was_read_before(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment(
        "pro_buyers",
        {
            "all": [
                {"trait": "plan", "op": "eq", "value": "pro"},
                {"event": "Order Completed", "count": {"gte": 1}},
            ]
        },
    )
    ada = world.send("ada", traits={"plan": "free"})
    found = meanwhile(
        monkeypatch, world.container, lambda: world.send("ada", traits={"plan": "pro"})
    )

    assert world.send("ada", "Order Completed") == ada

    # The identify sent meanwhile was written as worked out; the order, found stale in
    # its turn, was worked out again there, from the profile the identify left.
    assert found == [True, False]
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

    assert found == [True, False]
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

    assert found == [False]
    assert world.members("buyers") == {cleo}


def test_a_time_boundary_passed_before_the_turn_has_the_batch_worked_out_in_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.segment("regulars", {"event": "Order", "count": {"gte": 3}, "within": "P7D"})
    start = world.clock()
    ada = world.send("ada", "Order", at=start)
    world.clock.advance(days=6, hours=23, minutes=59, seconds=59)
    world.send("ada", "Order")
    # Worked out one second before the first order leaves the window, written after.
    found = meanwhile(monkeypatch, world.container, lambda: world.clock.advance(seconds=2))

    world.send("ada", "Order")

    assert found == [False]
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
