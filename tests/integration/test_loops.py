"""The background work: an app runs the bus's handlers and the jobs its settings turn
on, unless told they run elsewhere (the supervisor of several workers runs them, once)."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import Container, build
from ariane.loops import running_loops
from ariane.settings import Settings
from ariane.web.app import create_app
from tests.conftest import FakeClock

HANDLERS = {"bus-earn-rules", "bus-loyalty-timeline"}
JOBS = {"segment-timers", "loyalty-review", "outbox-garbage"}
LOOPS = {"bus", "jobs"} | HANDLERS | JOBS


def running(settings: Settings, expected: set[str]) -> set[str]:
    """The threads of the background work alive while an app over `settings` serves,
    once `expected` are (the dispatcher and the jobs' runner start theirs as they start)."""
    container = build(settings, clock=FakeClock())
    try:
        with TestClient(create_app(container)):
            deadline = time.monotonic() + 10
            found: set[str] = set()
            while time.monotonic() < deadline:
                found = {thread.name for thread in threading.enumerate()} & LOOPS
                if found >= expected:
                    break
                time.sleep(0.01)
            time.sleep(0.05)
            return {thread.name for thread in threading.enumerate()} & LOOPS
    finally:
        container.close()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, LOOPS),
        ({"run_loops": False}, set()),
        ({"segment_timer_interval": 0}, LOOPS - {"segment-timers"}),
        ({"loyalty_review_interval": 0}, LOOPS - {"loyalty-review"}),
        ({"bus_idle_interval": 0}, {"jobs", "segment-timers", "loyalty-review"}),
    ],
)
def test_an_app_runs_the_loops_its_settings_turn_on(
    db_url: str, overrides: dict[str, object], expected: set[str]
) -> None:
    settings = Settings(database_url=db_url, **overrides)  # type: ignore[arg-type]
    assert running(settings, expected) == expected
    # Stopped with the app.
    assert not {thread.name for thread in threading.enumerate()} & LOOPS


def synchronous_commit(container: Container) -> str:
    """What a write transaction of this thread runs with."""
    return str(
        container.db.write(lambda conn: conn.exec_driver_sql("SHOW synchronous_commit").scalar())
    )


def test_the_loops_transactions_do_not_wait_for_the_disk(container: Container) -> None:
    """Their work is made again from what is durable; the requests' commits, in other
    threads, still wait for it."""
    if container.db.dialect.name != "postgresql":
        pytest.skip("SQLite's writes wait for the disk (synchronous=FULL) in every thread")
    assert synchronous_commit(container) == "on"
    seen: dict[str, str] = {}
    done = threading.Event()

    def job() -> int:
        if not done.is_set():
            seen["loop"] = synchronous_commit(container)
            other = threading.Thread(
                target=lambda: seen.update(request=synchronous_commit(container))
            )
            other.start()
            other.join()
            done.set()
        return 0

    container.settings.loyalty_review_interval = 1
    container.earning.write_off_and_review = job  # type: ignore[method-assign]
    with running_loops(container):
        assert done.wait(10)
    assert seen == {"loop": "off", "request": "on"}
    assert synchronous_commit(container) == "on"
