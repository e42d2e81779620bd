"""The background loops of a server: segment timers, earn rules and loyalty events.

Each is a thread that wakes up every so often, takes what is due and claims it in the
database, so that any number of processes may run them. What they write is made again
from what is durable (a timer still due, an outbox row not yet marked sent), so their
transactions do not wait for the disk (`Database.background`).

`ariane serve` with one worker runs them in that worker; with several, once, in the
process that supervises the workers (`ariane.web.serving`): a round of loyalty events
sends a batch through ingestion, tens of milliseconds of Python, and in a worker the
requests would wait for the interpreter meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ariane.bootstrap import Container


@contextmanager
def running_loops(container: Container) -> Iterator[None]:
    """The loops the settings turn on, running until the block ends."""
    settings = container.settings
    stop = threading.Event()
    threads = []
    if settings.segment_timer_interval > 0:
        threads.append(
            threading.Thread(
                target=_in_background,
                args=(
                    container,
                    container.segments.run_timers,
                    stop,
                    settings.segment_timer_interval,
                    settings.segment_apply_interval,
                ),
                name="segment-timers",
                daemon=True,
            )
        )
    if settings.loyalty_event_interval > 0:
        threads.extend(
            threading.Thread(
                target=_in_background,
                args=(container, run, stop, settings.loyalty_event_interval),
                name=name,
                daemon=True,
            )
            for name, run in (
                ("earn-rules", container.earning.run),
                ("loyalty-events", container.loyalty_events.run),
            )
        )
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def _in_background(container: Container, loop: Callable[..., None], *args: object) -> None:
    with container.db.background():
        loop(*args)
