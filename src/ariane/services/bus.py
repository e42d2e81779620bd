"""The dispatcher: runs the handler table (`ariane.handlers`) over the two logs.

Each handler reads its log (the outbox, or the events table) from its own position, so a
slow or failing handler holds up no other. In any number of processes: one at a time
runs a given handler (`Database.alone`), and the others leave it be. A handler that
fails is tried again after a growing pause, then its entry is parked, where an admin
sees it with its error and can replay it, and the handler goes on with the next.

A handler is given the entries after its position, and its position moves past them
once it returns: a crash in between gives it the same entries again, so every handler is
idempotent by event id (an idempotency key, a message id, a delivery id).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ariane.storage import bus as store
from ariane.storage.bus import Entry, Position, Stream
from ariane.storage.database import Database

log = logging.getLogger(__name__)

# Rounds of handlers run at once in one process, in `Dispatcher.run`. A round holds up to
# two of the database pool's connections (its turn, then a read or a write): with one
# thread per handler and two handlers per destination, unbounded rounds would take the
# connections the requests need as soon as there are a few destinations.
CONCURRENT_ROUNDS = 4
# A handler that only went past entries it has nothing to do with keeps its new position
# in memory, and writes it at most this often: a commit wakes every handler of its log,
# and each writing that it read nothing would queue them all for the database's writer.
SKIPPED_SAVE_EVERY = 1.0
# How soon a handler looks again when entries wait behind a transaction still running
# (`storage.bus.held_back`), rather than at its next wake-up, which that transaction may
# never send.
HELD_BACK_PAUSE = 0.005


class RetryLater(Exception):
    """The handler cannot do it now but will later (a destination down or throttling):
    tried again, as long as it takes, never parked."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GiveUp(Exception):
    """The handler can never do it (a destination refused the request as wrong): parked
    at once."""


class Partial(Exception):
    """The handler dealt with the first `done` entries it was given, then failed with
    `cause` on the next: those are not given to it again."""

    def __init__(self, done: int, cause: Exception) -> None:
        super().__init__(str(cause))
        self.done = done
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    stream: Stream
    handle: Callable[[Sequence[Entry]], None]
    # The outbox kinds it reacts to; None: all (the events log has one kind).
    kinds: frozenset[str] | None = None
    batch: int = 200
    # A handler seen for the first time starts after what the log holds then, rather
    # than from its beginning.
    from_head: bool = False
    # Whether the handler has nothing to do whatever the log holds (earn rules while no
    # programme has any): its position then moves to the log's head, unread.
    asleep: Callable[[], bool] | None = None
    # Which of the entries of its kinds it has something to do with (a channel's
    # messages among every channel's); the others are gone past as other kinds are.
    wants: Callable[[Entry], bool] | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first: float = 0.05
    ceiling: float = 60.0
    # Failures of one entry, other than RetryLater, before it is parked.
    attempts: int = 8

    def pause(self, failures: int) -> float:
        """Seconds before try number `failures` + 1: doubling, in the upper half at random
        so that processes that failed together do not come back together."""
        ceiling = min(self.ceiling, self.first * 2.0 ** min(failures - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(slots=True)
class _Failing:
    position: Position
    # Tries that failed, for the pause; those that count towards parking (not RetryLater).
    failures: int = 0
    counted: int = 0
    not_before: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    """Work that time, not a commit, makes due (timers, expiries): run every `interval`
    seconds, and again at once while it finds something to do."""

    name: str
    run: Callable[[], int]
    interval: float


@dataclass(slots=True)
class Replayed:
    replayed: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        handlers: Callable[[], Sequence[Handler]],
        policy: RetryPolicy | None = None,
        *,
        concurrent: int = CONCURRENT_ROUNDS,
    ) -> None:
        self.db = db
        self.clock = clock
        self.handlers = handlers
        self.policy = policy or RetryPolicy()
        self._failing: dict[str, _Failing] = {}
        # The handlers found asleep at their last round (`Handler.asleep`).
        self._asleep: set[str] = set()
        self._rounds = threading.BoundedSemaphore(concurrent)
        # Positions gone past but not written yet (`SKIPPED_SAVE_EVERY`), and when each
        # handler's position was last written.
        self._unsaved: dict[str, Position] = {}
        self._saved_at: dict[str, float] = {}
        # The handlers whose last round found entries not readable yet.
        self._held_back: set[str] = set()

    # --- one round ------------------------------------------------------------------------

    def run_once(self, handler: Handler) -> int:
        """Give `handler` the entries after its position, once; how many it dealt with
        or went past unwanted (0 when there were none, it is waiting to retry, or another
        process has it)."""
        with self.db.alone(f"bus-{handler.name}") as mine:
            if not mine:
                return 0
            failing = self._failing.get(handler.name)
            if failing is not None and time.monotonic() < failing.not_before:
                return 0
            with self.db.lookup() as conn:
                horizon = store.horizon(conn)
            asleep = handler.asleep is not None and handler.asleep()
            if asleep:
                self._asleep.add(handler.name)
            else:
                self._asleep.discard(handler.name)
            entries: list[Entry] = []
            with self.db.read() as conn:
                position, known = self._position(conn, handler, horizon)
                if asleep:
                    head = store.head(conn, handler.stream, horizon)
                else:
                    entries, read_to = self._read(conn, handler, position, horizon)
            if asleep and handler.asleep is not None and not handler.asleep():
                # Woken between its look and the head's read (a journey declared in
                # another process): what followed is read, not gone past.
                asleep = False
                self._asleep.discard(handler.name)
                with self.db.read() as conn:
                    entries, read_to = self._read(conn, handler, position, horizon)
            if asleep:
                # Nothing to read: it moves to the head of the log, never back.
                read_to = max(position, head)
            read = len(entries)
            if entries and handler.wants is not None:
                entries = [entry for entry in entries if handler.wants(entry)]
            if not entries:
                if read_to != position or not known or handler.name in self._unsaved:
                    self._skip_to(handler, read_to, known)
                # Gone past a batch it wants none of: more may follow at once.
                return read
            trying = entries if failing is None else entries[:1]
            try:
                handler.handle(trying)
            except Partial as partial:
                done = partial.done
                if done:
                    self._save(handler, trying[done - 1].position)
                if done < len(trying) and self._failed(handler, trying[done], partial.cause):
                    done += 1
                return done
            except Exception as error:
                if len(trying) == 1:
                    return int(self._failed(handler, trying[0], error))
                log.info("bus: %s failed on a batch (%s); one at a time", handler.name, error)
                return self._one_at_a_time(handler, entries, read_to)
            self._failing.pop(handler.name, None)
            self._save(handler, read_to if failing is None else trying[0].position)
            return len(trying)

    def _read(
        self, conn: Any, handler: Handler, position: Position, horizon: int
    ) -> tuple[list[Entry], Position]:
        """The handler's next entries, and the position they take it to."""
        entries, read_to = store.read(
            conn, handler.stream, position, handler.batch, horizon, handler.kinds
        )
        if not entries and store.held_back(conn, handler.stream, read_to, horizon, handler.kinds):
            self._held_back.add(handler.name)
        else:
            self._held_back.discard(handler.name)
        return entries, read_to

    def _one_at_a_time(self, handler: Handler, entries: Sequence[Entry], read_to: Position) -> int:
        """Each entry on its own, to find which one the handler fails on."""
        for done, entry in enumerate(entries):
            try:
                handler.handle([entry])
            except Exception as error:
                cause = error.cause if isinstance(error, Partial) else error
                if not self._failed(handler, entry, cause):
                    return done
                continue
            self._failing.pop(handler.name, None)
            self._save(handler, entry.position)
        self._save(handler, read_to)
        return len(entries)

    def _failed(self, handler: Handler, entry: Entry, error: BaseException) -> bool:
        """What the retry policy makes of `error` on `entry`: True when the entry is
        parked (and the handler goes past it), False when it is to be tried again."""
        if isinstance(error, GiveUp):
            failing = self._failing.get(handler.name)
            tries = 1 + (failing.counted if failing and failing.position == entry.position else 0)
            self._park(handler, entry, error, attempts=tries)
        else:
            wait = error.retry_after if isinstance(error, RetryLater) else None
            later = isinstance(error, RetryLater)
            failing = self._retry(handler, entry, error, wait, counts=not later)
            if later or failing.counted < self.policy.attempts:
                return False
            self._park(handler, entry, error, attempts=failing.counted)
        self._failing.pop(handler.name, None)
        self._save(handler, entry.position)
        return True

    def _retry(
        self,
        handler: Handler,
        entry: Entry,
        error: BaseException,
        retry_after: float | None,
        *,
        counts: bool,
    ) -> _Failing:
        failing = self._failing.get(handler.name)
        if failing is None or failing.position != entry.position:
            failing = self._failing[handler.name] = _Failing(entry.position)
        failing.failures += 1
        failing.counted += counts
        pause = self.policy.pause(failing.failures)
        if retry_after is not None:
            pause = max(retry_after, 0.0)
        failing.not_before = time.monotonic() + pause
        failing.error = str(error) or type(error).__name__
        level = logging.INFO if not counts else logging.WARNING
        log.log(
            level,
            "bus: %s failed on %s (%s, try %d); again in %.2f s",
            handler.name,
            entry.event_id,
            failing.error,
            failing.failures,
            pause,
            exc_info=counts and not isinstance(error, RetryLater | GiveUp),
        )
        return failing

    def _park(self, handler: Handler, entry: Entry, error: BaseException, attempts: int) -> None:
        why = str(error) or type(error).__name__
        log.error(
            "bus: %s parked %s after %d tries: %s", handler.name, entry.event_id, attempts, why
        )
        self.db.write(
            lambda conn: store.park(conn, handler.name, entry, why, attempts, self.clock())
        )

    def _position(self, conn: Any, handler: Handler, horizon: int) -> tuple[Position, bool]:
        """Where the handler is, and whether it was saved (else it is where it starts)."""
        found = store.positions(conn, [handler.name]).get(handler.name)
        if found is not None:
            # Another process may have moved it further since this one went past.
            return max(found, self._unsaved.get(handler.name, found)), True
        if handler.from_head:
            return store.head(conn, handler.stream, horizon), False
        return store.START, False

    def _save(self, handler: Handler, position: Position) -> None:
        self.db.write(lambda conn: store.save_position(conn, handler.name, position, self.clock()))
        self._unsaved.pop(handler.name, None)
        self._saved_at[handler.name] = time.monotonic()

    def _skip_to(self, handler: Handler, position: Position, known: bool) -> None:
        """Go past entries the handler has nothing to do with: at once in memory, in the
        database at most every `SKIPPED_SAVE_EVERY` seconds. Lost in a crash, they are
        read again and gone past again."""
        recently = time.monotonic() - self._saved_at.get(handler.name, -SKIPPED_SAVE_EVERY)
        if known and recently < SKIPPED_SAVE_EVERY:
            self._unsaved[handler.name] = position
            return
        self._save(handler, position)

    # --- until there is nothing left ------------------------------------------------------

    def drain(self, rounds: int = 1000) -> int:
        """Run every handler until none finds anything to do; how many entries they dealt
        with. For tests and commands; a server runs `run`."""
        total = 0
        for _ in range(rounds):
            done = sum(self.run_once(handler) for handler in self.handlers())
            total += done
            if not done:
                return total
        return total

    # --- parked entries -------------------------------------------------------------------

    def parked(
        self, *, handler: str | None = None, after: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            found = store.parked(conn, handler=handler, after=after, limit=limit)
        return [parked.shown() for parked in found]

    def replay(self, ids: Sequence[int] | None = None, handler: str | None = None) -> Replayed:
        """Give parked entries to their handlers again; those handled are unparked."""
        table = {known.name: known for known in self.handlers()}
        outcome = Replayed()
        with self.db.read() as conn:
            found = store.parked(conn, handler=handler, ids=ids, limit=10_000)
        for parked in found:
            target = table.get(parked.handler)
            try:
                if target is None:
                    raise GiveUp(f"no handler {parked.handler!r} now")
                target.handle([parked.entry])
            except Exception as error:
                why = str(error) or type(error).__name__
                self._failed_again(parked.id, why)
                outcome.failed.append({"id": parked.id, "error": why})
                continue
            self._unpark(parked.id)
            outcome.replayed.append(parked.id)
        return outcome

    def _failed_again(self, parked_id: int, why: str) -> None:
        self.db.write(lambda conn: store.failed_again(conn, parked_id, why))

    def _unpark(self, parked_id: int) -> None:
        self.db.write(lambda conn: store.unpark(conn, parked_id))

    # --- in a server ----------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        idle: float = 1.0,
        runs: Callable[[Handler], bool] | None = None,
    ) -> None:
        """Run each handler (those `runs` keeps, if given: this process's share) in a
        thread of its own until `stop` is set, waking them when a commit is heard of
        (`storage.commits`), and at least every `idle` seconds."""
        running: dict[str, threading.Thread] = {}
        with self.db.commits.listening():
            while not stop.is_set():
                for handler in self._current():
                    if runs is not None and not runs(handler):
                        continue
                    if handler.name not in running or not running[handler.name].is_alive():
                        thread = threading.Thread(
                            target=self._serve,
                            args=(handler, stop, idle),
                            name=f"bus-{handler.name}",
                            daemon=True,
                        )
                        running[handler.name] = thread
                        thread.start()
                stop.wait(idle)
            # Handlers waiting for a commit look at `stop` now, not at their next look.
            self.db.commits.committed()
            for thread in running.values():
                thread.join(timeout=10)

    def _current(self) -> Sequence[Handler]:
        """The handler table now; none while it cannot be read (the database away)."""
        try:
            return self.handlers()
        except Exception:
            log.exception("bus: cannot read the handler table now; looking again")
            return ()

    def run_jobs(self, jobs: Sequence[Job], stop: threading.Event) -> None:
        """Run `jobs` in threads of their own until `stop` is set."""
        threads = [
            threading.Thread(target=self._run_job, args=(job, stop), name=job.name, daemon=True)
            for job in jobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _run_job(self, job: Job, stop: threading.Event) -> None:
        with self.db.background():
            while not stop.is_set():
                try:
                    while job.run() and not stop.is_set():
                        pass
                except Exception:
                    log.exception("%s: a round failed; trying again", job.name)
                stop.wait(job.interval)

    def _serve(self, handler: Handler, stop: threading.Event, idle: float) -> None:
        with self.db.background():
            self._serve_until(handler, stop, idle)

    def _serve_until(self, handler: Handler, stop: threading.Event, idle: float) -> None:
        commits = self.db.commits
        while not stop.is_set():
            current = self._current()
            if current and handler.name not in {known.name for known in current}:
                return
            seen = commits.generation(handler.stream, handler.kinds)
            try:
                with self._rounds:
                    done = self.run_once(handler)
            except Exception:
                log.exception("bus: a round of %s failed; trying again", handler.name)
                done = 0
                stop.wait(idle)
            if done:
                continue
            failing = self._failing.get(handler.name)
            wait = HELD_BACK_PAUSE if handler.name in self._held_back else idle
            if failing is not None:
                wait = min(wait, max(0.0, failing.not_before - time.monotonic()))
            if handler.name in self._asleep:
                # Asleep, it has nothing to do whatever commits: it looks again at its
                # next idle round, rather than costing every batch stored a round of
                # queries and a write of its position. Woken, it starts from where it was
                # then, at most `idle` seconds behind the log's head.
                stop.wait(wait)
            else:
                commits.wait(handler.stream, seen, wait, handler.kinds)
            if stop.is_set():
                return
