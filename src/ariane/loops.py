"""The background loops of a server: segment timers, earn rules and loyalty events.

Each is a thread that wakes up every so often and takes what is due, claiming it in the
database (timers) or taking its turn (the outbox's topics, `services.outbox`), so that
any number of processes may run them. What they write is made again from what is
durable (a timer still due, an outbox row not yet deleted), so their transactions do
not wait for the disk (`Database.background`).

`ariane serve` with one worker runs them in that worker; with several, once, in the
process that supervises the workers (`ariane.web.serving`): a round of loyalty events
sends a batch through ingestion, tens of milliseconds of Python, and in a worker the
requests would wait for the interpreter meanwhile. There, on Linux, the loops' threads
also run at a lower CPU priority than the workers (`LOOP_NICENESS`): when the machine's
cores are all busy, a request's answer comes first and the timeline catches up after.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ariane.bootstrap import Container

log = logging.getLogger(__name__)

# How much lower than the process's the loops' CPU priority is, beside worker processes:
# the scheduler then gives them about a tenth of what a worker gets when both want a core.
LOOP_NICENESS = 10


@contextmanager
def running_loops(container: Container, *, give_way: bool = False) -> Iterator[None]:
    """The loops the settings turn on, running until the block ends; with `give_way`, at
    a lower CPU priority than the rest of the process, on Linux (elsewhere a priority
    is the whole process's, and the workers it starts would inherit it)."""
    settings = container.settings
    niceness = LOOP_NICENESS if give_way and sys.platform.startswith("linux") else 0
    stop = threading.Event()
    threads = []
    if settings.segment_timer_interval > 0:
        threads.append(
            threading.Thread(
                target=_in_background,
                args=(
                    container,
                    niceness,
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
                args=(container, niceness, run, stop, settings.loyalty_event_interval),
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


def _in_background(
    container: Container, niceness: int, loop: Callable[..., None], *args: object
) -> None:
    if niceness:
        _lower_priority(niceness)
    with container.db.background():
        loop(*args)


def _lower_priority(niceness: int) -> None:
    """Lower the calling thread's CPU priority by `niceness` (Linux gives each thread its
    own); a failure leaves it as it was, and says so."""
    thread = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
        )
    except OSError as error:
        log.warning("the background loops keep the server's CPU priority: %s", error)
