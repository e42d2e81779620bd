"""The bus on both databases: each handler reads the outbox or the events table as a log
from its own position, never passes an entry committed late, retries, parks what keeps
failing, and wakes on commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ariane.bootstrap import Container, build
from ariane.domain.events import (
    ComputedValueChanged,
    ConsentChanged,
    PointsEarned,
    ProfileErased,
    ProfilesMerged,
    SegmentEntered,
)
from ariane.services.bus import Dispatcher, GiveUp, Handler, RetryLater, RetryPolicy
from ariane.services.ingest import Envelope
from ariane.storage import bus as store
from ariane.storage.bus import Entry
from ariane.storage.commits import wake_on_commit
from ariane.storage.database import Database
from ariane.storage.tables import events, outbox
from tests.conftest import FakeClock
from tests.integration.test_tracking import basic

FAST = RetryPolicy(first=0.001, ceiling=0.002, attempts=3)


def earned(n: int, clock: FakeClock, profile: str = "p1") -> PointsEarned:
    return PointsEarned(
        event_id=f"earned-{n}",
        profile_id=profile,
        at=clock(),
        programme="club",
        properties={"points": n},
    )


def recorder(name: str, stream: str = "outbox", **options: object) -> tuple[Handler, list[str]]:
    seen: list[str] = []

    def handle(entries: Sequence[Entry]) -> None:
        seen.extend(entry.event_id for entry in entries)

    return Handler(name, stream, handle, **options), seen  # type: ignore[arg-type]


def record(container: Container, *happened: PointsEarned | SegmentEntered) -> None:
    container.db.write(lambda conn: store.record(conn, list(happened)))


def dispatcher(container: Container, *handlers: Handler) -> Dispatcher:
    return Dispatcher(container.db, container.clock, lambda: handlers, FAST)


def test_each_handler_reads_from_its_own_position_the_kinds_it_reacts_to(
    container: Container, clock: FakeClock
) -> None:
    everything, all_seen = recorder("everything")
    points, points_seen = recorder("points", kinds=frozenset({"PointsEarned"}))
    bus = dispatcher(container, everything, points)
    entered = SegmentEntered(
        event_id="audience-1",
        profile_id="p1",
        at=clock(),
        segment_id="s",
        segment="S",
        cause="event",
    )
    record(container, earned(1, clock), entered, earned(2, clock))
    assert bus.drain() == 5
    assert all_seen == ["earned-1", "audience-1", "earned-2"]
    assert points_seen == ["earned-1", "earned-2"]
    record(container, earned(3, clock))
    bus.drain()
    assert all_seen[-1] == points_seen[-1] == "earned-3"
    assert len(all_seen) == 4
    with container.db.read() as conn:
        positions = store.positions(conn, ["everything", "points"])
    assert positions["everything"] == positions["points"]


def test_a_handler_of_the_events_log_reads_stored_events_once(container: Container) -> None:
    handler, seen = recorder("log", "events")
    bus = dispatcher(container, handler)
    batch = [
        {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m{i}"} for i in range(5)
    ]
    container.ingest.ingest("src", batch, Envelope(received_at=container.clock()))
    bus.drain()
    container.ingest.ingest("src", batch, Envelope(received_at=container.clock()))
    bus.drain()
    assert seen == [f"src:m{i}" for i in range(5)]


def test_a_new_handler_may_start_after_what_the_log_holds(
    container: Container, clock: FakeClock
) -> None:
    record(container, earned(1, clock))
    late, seen = recorder("late", from_head=True)
    bus = dispatcher(container, late)
    bus.drain()
    record(container, earned(2, clock))
    bus.drain()
    assert seen == ["earned-2"]


def test_a_failing_handler_retries_then_parks_and_holds_up_no_other(
    container: Container, clock: FakeClock
) -> None:
    calls: list[str] = []

    def flaky(entries: Sequence[Entry]) -> None:
        for entry in entries:
            calls.append(entry.event_id)
            if entry.event_id == "earned-2":
                raise ValueError("the receiver's schema has no field 'points'")

    healthy, healthy_seen = recorder("healthy")
    bus = dispatcher(container, Handler("flaky", "outbox", flaky), healthy)
    record(container, earned(1, clock), earned(2, clock), earned(3, clock))
    deadline = time.monotonic() + 10
    while True:
        bus.drain()
        with container.db.read() as conn:
            parked = store.parked(conn)
        if parked or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    assert healthy_seen == ["earned-1", "earned-2", "earned-3"]
    assert [(p.handler, p.entry.event_id, p.attempts) for p in parked] == [
        ("flaky", "earned-2", FAST.attempts)
    ]
    assert "no field 'points'" in parked[0].error
    # Parked, it no longer holds the handler up: the entry after it was handled.
    assert calls[-1] == "earned-3"
    assert calls.count("earned-3") >= 1

    replay = bus.replay()
    assert replay.replayed == [] and replay.failed[0]["id"] == parked[0].id
    with container.db.read() as conn:
        assert store.parked(conn)[0].attempts == FAST.attempts + 1

    fixed, fixed_seen = recorder("flaky")
    assert dispatcher(container, fixed).replay().replayed == [parked[0].id]
    assert fixed_seen == ["earned-2"]
    with container.db.read() as conn:
        assert store.parked(conn) == []


def test_retry_later_is_never_parked_and_give_up_is_parked_at_once(
    container: Container, clock: FakeClock
) -> None:
    down = {"until": 5}
    delivered: list[str] = []

    def destination(entries: Sequence[Entry]) -> None:
        for entry in entries:
            if entry.event_id == "earned-1" and down["until"] > 0:
                down["until"] -= 1
                raise RetryLater("503 from the receiver", retry_after=0)
            if entry.event_id == "earned-2":
                raise GiveUp("400 from the receiver: bad request")
            delivered.append(entry.event_id)

    bus = dispatcher(container, Handler("dest", "outbox", destination))
    record(container, earned(1, clock), earned(2, clock), earned(3, clock))
    deadline = time.monotonic() + 10
    while delivered != ["earned-1", "earned-3"] and time.monotonic() < deadline:
        bus.drain()
    assert delivered == ["earned-1", "earned-3"]
    with container.db.read() as conn:
        assert [(p.entry.event_id, p.attempts) for p in store.parked(conn)] == [("earned-2", 1)]


def test_a_handler_never_skips_an_entry_committed_late_with_a_lower_id(
    container: Container, clock: FakeClock
) -> None:
    """A transaction that took its ids first but commits last: its rows are read once it
    commits, before what came after (on SQLite the writers take turns)."""
    handler, seen = recorder("careful")
    log_reader, log_seen = recorder("careful-log", "events")
    bus = dispatcher(container, handler, log_reader)
    early_taken = threading.Event()
    release = threading.Event()

    def slow_writer(conn: sa.Connection) -> None:
        store.record(conn, [earned(1, clock)])
        conn.execute(events.insert().values(_event_row("late")))
        early_taken.set()
        release.wait(10)

    def quick_writer(conn: sa.Connection) -> None:
        store.record(conn, [earned(2, clock)])
        conn.execute(events.insert().values(_event_row("early")))

    slow = threading.Thread(target=container.db.write, args=(slow_writer,))
    slow.start()
    assert early_taken.wait(10)
    quick = threading.Thread(target=container.db.write, args=(quick_writer,))
    quick.start()
    if container.db.serialises_writes:
        # On SQLite the quick one waits for its turn (and so would the handlers' own
        # writes): the ids are in the order of the commits.
        quick.join(0.5)
        assert quick.is_alive()
    else:
        quick.join(10)
        assert not quick.is_alive()
        bus.drain()
        # Nothing is read while an older transaction may still add entries before it.
        assert seen == [] and log_seen == []
    release.set()
    slow.join()
    quick.join()
    with container.db.read() as conn:
        ids = dict(conn.execute(sa.select(outbox.c.message_id, outbox.c.id)).all())
    assert ids["earned-1"] < ids["earned-2"]
    bus.drain()
    assert seen == ["earned-1", "earned-2"]
    assert log_seen == ["src:late", "src:early"]


def _event_row(message_id: str) -> dict[str, object]:
    now = FakeClock()()
    return {
        "source_id": "src",
        "message_id": message_id,
        "profile_id": "p1",
        "type": "track",
        "event": "E",
        "timestamp": now,
        "received_at": now,
        "payload": {},
    }


def test_processes_take_turns_and_each_entry_is_handled_once(
    container: Container, clock: FakeClock
) -> None:
    others = [build(container.settings, clock=clock) for _ in range(3)]
    try:
        seen: list[str] = []
        lock = threading.Lock()

        def handle(entries: Sequence[Entry]) -> None:
            with lock:
                seen.extend(entry.event_id for entry in entries)

        handler = Handler("shared", "outbox", handle, batch=7)
        record(container, *(earned(n, clock) for n in range(100)))
        buses = [Dispatcher(c.db, c.clock, lambda: [handler], FAST) for c in [container, *others]]
        threads = [threading.Thread(target=bus.drain) for bus in buses]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        buses[0].drain()
        assert sorted(seen) == sorted(f"earned-{n}" for n in range(100))
    finally:
        for other in others:
            other.close()


def test_a_commit_wakes_the_running_handlers_at_once(
    container: Container, clock: FakeClock
) -> None:
    arrived = threading.Event()

    def handle(entries: Sequence[Entry]) -> None:
        if any(entry.event_id == "earned-9" for entry in entries):
            arrived.set()

    bus = dispatcher(container, Handler("awake", "outbox", handle))
    stop = threading.Event()
    runner = threading.Thread(target=bus.run, args=(stop,), kwargs={"idle": 60})
    runner.start()
    try:
        time.sleep(0.3)
        record(container, earned(9, clock))
        # Without the wake-up it would wait for its next look, a minute away.
        assert arrived.wait(20)
    finally:
        stop.set()
        runner.join()


def test_a_commit_of_another_process_to_both_logs_wakes_the_outbox_handlers(
    container: Container, clock: FakeClock, db_url: str
) -> None:
    # Another process's transaction that writes to the events log and then the outbox
    # sends two notifications, which arrive together: neither may be dropped.
    arrived = threading.Event()

    def handle(entries: Sequence[Entry]) -> None:
        if any(entry.event_id == "earned-7" for entry in entries):
            arrived.set()

    bus = dispatcher(container, Handler("awake", "outbox", handle))
    stop = threading.Event()
    runner = threading.Thread(target=bus.run, args=(stop,), kwargs={"idle": 60})
    runner.start()
    other = Database(db_url)
    try:
        time.sleep(0.3)

        def both(conn: sa.Connection) -> None:
            wake_on_commit(conn, "events")
            store.record(conn, [earned(7, clock)])

        other.write(both)
        assert arrived.wait(20)
    finally:
        stop.set()
        runner.join()
        other.dispose()


def test_entries_behind_a_transaction_that_writes_no_log_are_read_when_it_ends(
    container: Container, clock: FakeClock, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's writers commit one after the other: nothing is held back")
    # An older transaction still running holds the entry back from the handler that
    # its commit woke; that transaction's own commit writes to no log and wakes no one.
    arrived = threading.Event()

    def handle(entries: Sequence[Entry]) -> None:
        if any(entry.event_id == "earned-5" for entry in entries):
            arrived.set()

    bus = dispatcher(container, Handler("held", "outbox", handle))
    stop = threading.Event()
    runner = threading.Thread(target=bus.run, args=(stop,), kwargs={"idle": 60})
    engine = sa.create_engine(db_url)
    older = engine.connect()
    runner.start()
    try:
        time.sleep(0.3)
        transaction = older.begin()
        older.execute(sa.text("SELECT pg_current_xact_id()"))
        record(container, earned(5, clock))
        time.sleep(0.3)
        assert not arrived.is_set()
        transaction.commit()
        # Without a look soon after, it would wait for its next look, a minute away.
        assert arrived.wait(20)
    finally:
        stop.set()
        runner.join()
        older.close()
        engine.dispose()


def test_a_handler_goes_past_batches_it_wants_none_of_without_waiting(
    container: Container, clock: FakeClock
) -> None:
    arrived = threading.Event()

    def handle(entries: Sequence[Entry]) -> None:
        if any(entry.event_id == "earned-35" for entry in entries):
            arrived.set()

    picky = Handler(
        "picky", "outbox", handle, batch=10, wants=lambda entry: entry.event_id == "earned-35"
    )
    bus = dispatcher(container, picky)
    stop = threading.Event()
    runner = threading.Thread(target=bus.run, args=(stop,), kwargs={"idle": 60})
    runner.start()
    try:
        time.sleep(0.3)
        record(container, *(earned(n, clock) for n in range(36)))
        # Three batches of ten it wants none of, then its entry: not three looks later.
        assert arrived.wait(20)
    finally:
        stop.set()
        runner.join()


def test_a_process_runs_a_bounded_number_of_rounds_at_once(
    container: Container, clock: FakeClock
) -> None:
    # Each round holds database connections: ten destinations must not take them all.
    lock = threading.Lock()
    running, most = [0], [0]
    handled: set[str] = set()

    def handle(entries: Sequence[Entry]) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
            handled.add(threading.current_thread().name)

    handlers = [Handler(f"slow-{n}", "outbox", handle) for n in range(10)]
    bus = Dispatcher(container.db, container.clock, lambda: handlers, FAST, concurrent=3)
    record(container, *(earned(n, clock) for n in range(5)))
    stop = threading.Event()
    runner = threading.Thread(target=bus.run, args=(stop,), kwargs={"idle": 60})
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while len(handled) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        runner.join()
    assert len(handled) == 10
    assert most[0] == 3


def test_the_outbox_is_emptied_up_to_where_every_handler_has_read(
    container: Container, clock: FakeClock
) -> None:
    first, _ = recorder("first")
    bus = dispatcher(container, first)
    record(container, earned(1, clock), earned(2, clock))
    bus.drain()
    with container.db.read() as conn:
        upto = store.positions(conn, ["first"])["first"]
    container.db.write(lambda conn: store.collect_garbage(conn, upto))
    record(container, earned(3, clock))
    with container.db.read() as conn:
        left = conn.execute(sa.select(outbox.c.message_id)).scalars().all()
    assert left == ["earned-3"]


def test_merges_consents_and_erasures_are_recorded_for_the_handlers(
    container: Container, client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    kinds = frozenset({"ProfilesMerged", "ConsentChanged", "ProfileErased"})
    kept: list[Entry] = []

    def keep(entries: Sequence[Entry]) -> None:
        kept.extend(entries)

    bus = dispatcher(container, Handler("profiles", "outbox", keep, kinds=kinds))
    auth = basic(write_key)
    client.post("/v1/identify", json={"anonymousId": "a-1", "traits": {"plan": "x"}}, headers=auth)
    client.post("/v1/identify", json={"userId": "ada"}, headers=auth)
    consented = {
        "userId": "ada",
        "anonymousId": "a-1",
        "context": {"consent": {"categoryPreferences": {"marketing": True}}},
    }
    assert client.post("/v1/identify", json=consented, headers=auth).status_code == 200
    ada = container.profiles.lookup("user_id", "ada")
    withdrawn = client.put(
        f"/api/profiles/{ada}/consents/marketing",
        json={"status": "withdrawn"},
        headers=admin_token,
    )
    assert withdrawn.status_code == 200
    bus.drain()
    # An erasure takes the person's entries still in the outbox with them.
    assert client.delete(f"/api/profiles/{ada}", headers=admin_token).status_code == 200
    bus.drain()
    found = [entry.event for entry in kept]
    assert [type(event).__name__ for event in found] == [
        "ProfilesMerged",
        "ConsentChanged",
        "ConsentChanged",
        "ProfileErased",
    ]
    merged, granted, taken_back, erased = found
    assert isinstance(merged, ProfilesMerged) and merged.profile_id == ada
    assert isinstance(granted, ConsentChanged)
    assert (granted.purpose, granted.status, granted.previous) == ("marketing", "granted", None)
    assert isinstance(taken_back, ConsentChanged)
    assert (taken_back.status, taken_back.previous) == ("withdrawn", "granted")
    assert isinstance(erased, ProfileErased) and erased.profile_id is None


def test_computed_trait_changes_are_recorded_once_per_person_and_batch(
    container: Container, client: TestClient, write_key: str, admin_token: dict[str, str]
) -> None:
    for name, definition in {
        "orders": {"kind": "count", "event": "Order Completed"},
        "spent": {"kind": "sum", "event": "Order Completed", "property": "total"},
        "pages": {"kind": "count", "event": "Page Viewed"},
    }.items():
        made = client.post(
            "/api/computed-traits", json={"name": name, **definition}, headers=admin_token
        )
        assert made.status_code == 201, made.text
    kept: list[Entry] = []
    bus = dispatcher(
        container,
        Handler("computed", "outbox", kept.extend, kinds=frozenset({"ComputedValueChanged"})),
    )
    auth = basic(write_key)

    def order(user: str, total: int) -> dict[str, object]:
        return {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "properties": {"total": total},
        }

    # Two orders in one batch: one change per trait, from before the batch to after.
    batch = {"batch": [order("ada", 10), order("ada", 5), order("bob", 7)]}
    assert client.post("/v1/batch", json=batch, headers=auth).status_code == 200
    # An event no computed trait reads changes nothing.
    client.post("/v1/track", json={"userId": "ada", "event": "Signed In"}, headers=auth)
    again = {"batch": [order("ada", 1)]}
    assert client.post("/v1/batch", json=again, headers=auth).status_code == 200
    bus.drain()
    ada = container.profiles.lookup("user_id", "ada")
    bob = container.profiles.lookup("user_id", "bob")
    found = [entry.event for entry in kept]
    assert all(isinstance(event, ComputedValueChanged) for event in found)
    changes = [
        (e.profile_id, e.name, e.previous, e.value)
        for e in found
        if isinstance(e, ComputedValueChanged)
    ]
    assert sorted(changes[:4]) == [
        (ada, "orders", 0, 2),
        (ada, "spent", 0, 15),
        (bob, "orders", 0, 1),
        (bob, "spent", 0, 7),
    ]
    assert sorted(changes[4:]) == [(ada, "orders", 2, 3), (ada, "spent", 15, 16)]
    assert len({e.event_id for e in kept}) == len(kept) == 6
    # What the 360° view shows is what the last change said.
    view = client.get(f"/api/profiles/{ada}", headers=admin_token).json()
    assert view["computed_traits"] == {"orders": 3, "pages": 0, "spent": 16}


def test_a_handler_asleep_skips_to_the_head_of_its_log_unread(
    container: Container, clock: FakeClock
) -> None:
    awake = {"now": False}
    sleeper, seen = recorder("sleeper", asleep=lambda: not awake["now"])
    bus = dispatcher(container, sleeper)
    record(container, earned(1, clock), earned(2, clock))
    assert bus.drain() == 0
    assert seen == []
    awake["now"] = True
    record(container, earned(3, clock))
    bus.drain()
    assert seen == ["earned-3"]


def test_a_handler_asleep_is_not_woken_by_every_commit(
    container: Container, clock: FakeClock
) -> None:
    """Asleep, a handler has nothing to do whatever commits: it looks again at its idle
    round, and a busy log's commits cost it no round each (earn rules with no programme,
    while events pour in)."""
    looks: list[float] = []
    awake = {"now": False}

    def asleep() -> bool:
        looks.append(time.monotonic())
        return not awake["now"]

    sleeper, seen = recorder("sleeper", asleep=asleep)
    bus = dispatcher(container, sleeper)
    stop = threading.Event()
    runner = threading.Thread(target=bus.run, args=(stop,), kwargs={"idle": 60})
    runner.start()
    try:
        deadline = time.monotonic() + 20
        # A round asks twice: before reading, and again once the log's head is read.
        while len(looks) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(looks) == 2
        for n in range(5):
            record(container, earned(n, clock))
        time.sleep(0.5)
        assert len(looks) == 2
        assert seen == []
    finally:
        stop.set()
        runner.join()
    # Woken, it reads from where it was at its last look.
    awake["now"] = True
    record(container, earned(9, clock))
    bus.drain()
    assert seen[-1] == "earned-9"
