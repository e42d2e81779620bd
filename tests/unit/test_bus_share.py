"""`handlers.share`: which bus process runs which handler when the bus runs in several."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from ariane.handlers import share
from ariane.services.bus import Handler

NAMES = [
    "earn-rules",
    "loyalty-timeline",
    "journeys",
    "journeys:audiences",
    "destination:crm:events",
    "destination:crm:outbox",
    *(f"channel:{name}" for name in ("email", "sms", "push", "inbox", "hook", "slack")),
]


def handlers() -> list[Handler]:
    return [Handler(name, "outbox", lambda entries: None) for name in NAMES]


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_every_handler_runs_in_exactly_one_process(count: int) -> None:
    runs = [share(index, count) for index in range(count)]
    for handler in handlers():
        assert sum(run(handler) for run in runs) == 1, handler.name


@pytest.mark.parametrize("count", [2, 3, 4])
def test_the_channels_run_beside_the_first_process_and_the_rest_in_it(count: int) -> None:
    first = share(0, count)
    for handler in handlers():
        assert first(handler) is not handler.name.startswith("channel:"), handler.name


def placements(seed: str) -> str:
    """Where each channel runs with four processes, in an interpreter of its own: every
    process of a server must agree, whatever its hash seed."""
    code = (
        "from ariane.handlers import share\n"
        "from ariane.services.bus import Handler\n"
        f"names = {NAMES!r}\n"
        "print([[i for i in range(4) if share(i, 4)(Handler(n, 'outbox', print))]"
        " for n in names])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_with_several_senders_every_process_places_the_channels_alike() -> None:
    placed = ast.literal_eval(placements("1"))
    channels = [where for name, where in zip(NAMES, placed, strict=True) if "channel:" in name]
    assert len({tuple(where) for where in channels}) > 1
    assert placements("2") == placements("3") == placements("1")
