"""Word that something the bus carries has committed, so that its handlers react in
milliseconds rather than at their next look.

A transaction that writes to the outbox or the events table marks its connection
(`mark`); once it commits, `Database.write` tells the waiting handlers of this process
at once. Other processes hear of it from PostgreSQL's NOTIFY, which is delivered when
the transaction commits and not at all if it rolls back, or, on SQLite, from
`PRAGMA data_version`, which changes whenever another connection commits: a thread
reads it every few milliseconds, a call into the SQLite library that costs microseconds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

CHANNEL = "ariane_bus"
# The logs the bus's handlers read (`storage.bus`).
LOGS = ("events", "outbox")
# How often a SQLite database is asked whether another connection committed.
SQLITE_LOOK_EVERY = 0.005
# How long a listener waits for news before it checks whether it should stop.
LISTEN_TIMEOUT = 0.5
_MARK = "ariane.bus.wakes"


def wake_on_commit(conn: Connection, log: str) -> None:
    """Have the bus's handlers of `log` ("events" or "outbox") woken once `conn`'s
    transaction commits."""
    marked: set[str] = conn.info.setdefault(_MARK, set())
    if log in marked:
        return
    marked.add(log)
    if conn.dialect.name == "postgresql":
        # Notifications of one transaction with the same payload are delivered once.
        conn.exec_driver_sql(f"NOTIFY {CHANNEL}, '{log}'")


class CommitSignal:
    def __init__(self, url: str) -> None:
        self.url = sa.make_url(url)
        self._changed = threading.Condition()
        self._generations: dict[str, int] = {}

    @property
    def postgres(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    @staticmethod
    def take_mark(conn: Connection) -> set[str]:
        """The logs `conn`'s transaction wrote to; the mark is taken off."""
        found: set[str] = conn.info.pop(_MARK, set())
        return found

    def committed(self, logs: Iterable[str] = LOGS) -> None:
        """Wake those waiting for a commit to `logs` (all of them, when a change of some
        other process is all that is known)."""
        with self._changed:
            for log in logs:
                self._generations[log] = self._generations.get(log, 0) + 1
            self._changed.notify_all()

    def generation(self, log: str) -> int:
        """A number that changes with every commit to `log` heard of."""
        return self._generations.get(log, 0)

    def wait(self, log: str, seen: int, timeout: float) -> int:
        """Wait until a commit to `log` after `seen` (a `generation`) is heard of, or
        `timeout` seconds; the generation then."""
        with self._changed:
            self._changed.wait_for(lambda: self.generation(log) != seen, timeout)
            return self.generation(log)

    @contextmanager
    def listening(self) -> Iterator[None]:
        """Within the block, commits of other processes are heard of too."""
        stop = threading.Event()
        listen = self._listen_postgres if self.postgres else self._listen_sqlite
        thread = threading.Thread(target=listen, args=(stop,), name="bus-commits", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def _listen_postgres(self, stop: threading.Event) -> None:
        conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Anything committed while no one listened is read at the next look.
                    self.committed()
                    while not stop.is_set():
                        # Every notice to the end: those that arrive together (a
                        # transaction that wrote to both logs) come in one read, and a
                        # `break` after the first would drop the others.
                        for notice in conn.notifies(timeout=LISTEN_TIMEOUT):
                            self.committed([notice.payload] if notice.payload in LOGS else LOGS)
            except psycopg.Error as error:
                log.warning("bus: lost the commit notifications (%s); listening again", error)
                stop.wait(1.0)

    def _listen_sqlite(self, stop: threading.Event) -> None:
        path = self.url.database
        if not path or path == ":memory:":
            return
        seen = None
        while not stop.is_set():
            try:
                with closing(sqlite3.connect(path, check_same_thread=False)) as conn:
                    while not stop.wait(SQLITE_LOOK_EVERY):
                        version = conn.execute("PRAGMA data_version").fetchone()[0]
                        if version != seen:
                            seen = version
                            self.committed()
            except sqlite3.Error as error:
                log.warning("bus: cannot watch the database for commits (%s); again", error)
                seen = None
                stop.wait(1.0)
