"""The background loops: an app runs those its settings turn on, unless told they run
elsewhere (the supervisor of several workers runs them, once)."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from ariane.bootstrap import build
from ariane.settings import Settings
from ariane.web.app import create_app
from tests.conftest import FakeClock

LOOPS = {"segment-timers", "earn-rules", "loyalty-events"}


def running(settings: Settings) -> set[str]:
    """The loop threads alive while an app over `settings` serves."""
    container = build(settings, clock=FakeClock())
    try:
        with TestClient(create_app(container)):
            return {thread.name for thread in threading.enumerate()} & LOOPS
    finally:
        container.close()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, LOOPS),
        ({"run_loops": False}, set()),
        ({"segment_timer_interval": 0}, {"earn-rules", "loyalty-events"}),
        ({"loyalty_event_interval": 0}, {"segment-timers"}),
    ],
)
def test_an_app_runs_the_loops_its_settings_turn_on(
    db_url: str, overrides: dict[str, object], expected: set[str]
) -> None:
    settings = Settings(database_url=db_url, **overrides)  # type: ignore[arg-type]
    assert running(settings) == expected
    # Stopped with the app.
    assert not {thread.name for thread in threading.enumerate()} & LOOPS
