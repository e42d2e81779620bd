"""The background work of a server: the bus's dispatcher, and the jobs time makes due.

The dispatcher (`services.bus`) runs each handler of `ariane.handlers` in a thread of its
own, woken by the commits it reacts to; the jobs (segment timers, points to write off
and tiers to review, the outbox's clean-up) each run in a thread every so often. Either
takes its turn in the database, so any number of processes may run them. What they write
is made again from what is durable (a position not yet moved, a timer still due), so
their transactions do not wait for the disk (`Database.background`).

`ariane serve` with one worker runs them in that worker; with several, once, in the
process that supervises the workers (`ariane.web.serving`): a round of loyalty events
sends a batch through ingestion, tens of milliseconds of Python, and in a worker the
requests would wait for the interpreter meanwhile. There, on Linux, their threads also
run at a lower CPU priority than the workers (`LOOP_NICENESS`): when the machine's cores
are all busy, a request's answer comes first and the timeline catches up after.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ariane.bootstrap import Container
from ariane.handlers import jobs, share

log = logging.getLogger(__name__)

# How much lower than the process's the loops' CPU priority is, beside worker processes:
# the scheduler then gives them about a tenth of what a worker gets when both want a core.
LOOP_NICENESS = 10


@contextmanager
def running_loops(
    container: Container, *, give_way: bool = False, part: tuple[int, int] = (0, 1)
) -> Iterator[None]:
    """The loops the settings turn on, running until the block ends; with `give_way`, at
    a lower CPU priority than the rest of the process, on Linux (elsewhere a priority
    is the whole process's, and the workers it starts would inherit it). `part` is
    (index, count) when the bus runs in several processes: this one runs the handlers
    `handlers.share` gives it, and the jobs if it is the first."""
    settings = container.settings
    niceness = LOOP_NICENESS if give_way and sys.platform.startswith("linux") else 0
    index, count = part
    stop = threading.Event()
    threads = []
    if settings.bus_idle_interval > 0:
        threads.append(
            threading.Thread(
                target=_in_background,
                args=(
                    container,
                    niceness,
                    container.bus.run,
                    stop,
                    settings.bus_idle_interval,
                    share(index, count),
                ),
                name="bus",
                daemon=True,
            )
        )
    found = jobs(container) if index == 0 else []
    if found:
        threads.append(
            threading.Thread(
                target=_in_background,
                args=(container, niceness, container.bus.run_jobs, found, stop),
                name="jobs",
                daemon=True,
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
