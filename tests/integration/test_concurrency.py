"""Concurrent writers on the same people, with real threads and separate connections.

Each test runs on SQLite and PostgreSQL, once with every thread going through one
container (one engine, pooled connections) and once split over two containers built on
the same database, as two processes would be.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ariane.bootstrap import Container, build
from ariane.domain.clock import iso
from ariane.services.ingest import Envelope
from ariane.settings import Settings
from ariane.storage.tables import merges, profiles
from tests.conftest import FakeClock
from tests.integration.test_identity import assert_consistent, rows

THREADS = 8
T0 = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture(params=["one container", "two containers"])
def containers(
    request: pytest.FixtureRequest, container: Container, settings: Settings, clock: FakeClock
) -> Iterator[list[Container]]:
    if request.param == "one container":
        yield [container]
        return
    other = build(settings, clock=clock)
    yield [container, other]
    other.close()


def run_together(
    containers: list[Container], source: str, batches_per_thread: list[list[list[dict[str, Any]]]]
) -> None:
    """Every thread sends its batches in order; all threads start at the same moment."""
    start = threading.Barrier(len(batches_per_thread))

    def worker(number: int) -> None:
        app = containers[number % len(containers)]
        start.wait()
        for batch in batches_per_thread[number]:
            app.ingest.ingest(source, batch, Envelope(received_at=app.clock()))

    with ThreadPoolExecutor(len(batches_per_thread)) as pool:
        futures = [pool.submit(worker, n) for n in range(len(batches_per_thread))]
        for future in futures:
            future.result()


def track(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": f"m-{n}",
        "timestamp": iso(T0 + timedelta(seconds=n)),
        **fields,
    }


def test_racing_merges_end_in_one_consistent_profile(containers: list[Container]) -> None:
    app = containers[0]
    source = app.access.create_source("web")[0].id
    counter = iter(range(1_000_000))
    setup = [track(next(counter), anonymousId="shared", event="Browsed") for _ in range(3)]
    setup += [track(next(counter), userId="xavier", event="Browsed") for _ in range(2)]
    setup += [track(next(counter), anonymousId=f"own-{t}", event="Browsed") for t in range(THREADS)]
    app.ingest.ingest(source, setup, Envelope(received_at=app.clock()))
    before = {row["id"] for row in rows(app.db, profiles)}
    assert len(before) == 2 + THREADS

    # Every thread links the shared anonymous profile to the user (the same merge, raced)
    # and its own anonymous profile too (different merges into the same survivor), with
    # events on each side in the same batches.
    plans = []
    for thread in range(THREADS):
        batches = []
        for round_ in range(4):
            batches.append(
                [
                    track(next(counter), anonymousId="shared", event="Clicked"),
                    {
                        "type": "identify",
                        "messageId": f"link-{thread}-{round_}",
                        "userId": "xavier",
                        "anonymousId": "shared" if round_ % 2 == 0 else f"own-{thread}",
                        "traits": {"round": round_},
                    },
                    track(next(counter), userId="xavier", event="Clicked"),
                    track(next(counter), anonymousId=f"own-{thread}", event="Clicked"),
                ]
            )
        plans.append(batches)
    run_together(containers, source, plans)

    xavier = app.profiles.lookup("user_id", "xavier")
    for value in ["shared", *(f"own-{t}" for t in range(THREADS))]:
        assert app.profiles.lookup("anonymous_id", value) == xavier
    for pid in before:
        assert app.profiles.view(pid)["id"] == xavier
    live = [row["id"] for row in rows(app.db, profiles) if row["merged_into"] is None]
    assert live == [xavier]

    sent_clicks = THREADS * 4 * 3
    view = app.profiles.view(xavier)
    assert view["computed"]["event_counts"] == {"Browsed": len(setup), "Clicked": sent_clicks}
    assert view["computed"]["type_counts"] == {
        "track": len(setup) + sent_clicks,
        "identify": THREADS * 4,
    }
    recorded = rows(app.db, merges)
    assert sorted(m["absorbed_id"] for m in recorded) == sorted(before - {xavier})
    assert {m["profile_id"] for m in recorded} == {xavier}
    assert_consistent(app.db)


def test_concurrent_clients_lose_no_update(containers: list[Container]) -> None:
    app = containers[0]
    source = app.access.create_source("web")[0].id
    rng = random.Random(21)
    users = [f"user-{n}" for n in range(20)]
    names = ["Viewed", "Added", "Paid"]
    moments = rng.sample(range(100_000), THREADS * 6 * 25)
    sent: list[dict[str, Any]] = []
    for number, second in enumerate(moments):
        sent.append(
            {
                "type": "track" if number % 5 else "identify",
                "messageId": f"e-{number}",
                "userId": rng.choice(users),
                "event": rng.choice(names),
                "timestamp": iso(T0 + timedelta(seconds=second)),
                "context": {"traits": {"score": second, "writer": number % THREADS}},
            }
        )
    # Arrival order is not event order: older events keep arriving after newer ones.
    rng.shuffle(sent)
    plans = [
        [sent[start : start + 25] for start in range(thread * 150, thread * 150 + 150, 25)]
        for thread in range(THREADS)
    ]
    run_together(containers, source, plans)

    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in sent:
        by_user[event["userId"]].append(event)
    assert set(by_user) == set(users)
    for user, theirs in by_user.items():
        view = app.profiles.view(app.profiles.lookup("user_id", user))
        tracks = Counter(e["event"] for e in theirs if e["type"] == "track")
        kinds = Counter(e["type"] for e in theirs)
        latest = max(theirs, key=lambda e: str(e["timestamp"]))
        assert view["computed"]["event_counts"] == dict(tracks), user
        assert view["computed"]["type_counts"] == dict(kinds), user
        assert view["traits"]["score"] == latest["context"]["traits"]["score"], user
        assert view["trait_sources"]["score"]["at"] == latest["timestamp"]
        assert iso(view["computed"]["last_seen"]) == latest["timestamp"]
    assert len(rows(app.db, profiles)) == len(users)
    assert_consistent(app.db)
