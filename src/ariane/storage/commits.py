"""Word that something the bus carries has committed, so that its handlers react in
milliseconds rather than at their next look.

Word names the log, and for the outbox the kinds written (`outbox:MessageQueued`): a
commit wakes only the handlers of what it wrote, not every handler of its log, which
would each spend a round of queries finding nothing to do. Word that names no kind (a
commit of another process seen on SQLite) wakes every handler of the log.

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
from collections.abc import Collection, Iterable, Iterator
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


def wake_on_commit(conn: Connection, log: str, kinds: Iterable[str] = ()) -> None:
    """Have the bus's handlers of `log` ("events" or "outbox"), of `kinds` if given,
    woken once `conn`'s transaction commits."""
    marked: set[str] = conn.info.setdefault(_MARK, set())
    for word in [f"{log}:{kind}" for kind in kinds] or [log]:
        if word in marked:
            continue
        marked.add(word)
        if conn.dialect.name == "postgresql":
            # Kinds are class names; notifications of one transaction with the same
            # payload are delivered once.
            conn.exec_driver_sql(f"NOTIFY {CHANNEL}, '{word}'")


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

    def committed(self, words: Iterable[str] = LOGS) -> None:
        """Wake those waiting for what `words` name: a log, or a log and a kind
        (`outbox:MessageQueued`); every handler of both logs when a change of some other
        process is all that is known."""
        with self._changed:
            for word in words:
                log, _, kind = word.partition(":")
                if log not in LOGS:
                    continue
                # The log's count moves with each word; a word with no kind moves every
                # kind's (`log:*`).
                self._bump(log)
                self._bump(f"{log}:{kind or '*'}")
            self._changed.notify_all()

    def _bump(self, key: str) -> None:
        self._generations[key] = self._generations.get(key, 0) + 1

    def generation(self, log: str, kinds: Iterable[str] | None = None) -> int:
        """A number that changes with every commit to `log` heard of (of one of
        `kinds`, if given)."""
        if kinds is None:
            return self._generations.get(log, 0)
        keys = [f"{log}:*", *(f"{log}:{kind}" for kind in kinds)]
        return sum(self._generations.get(key, 0) for key in keys)

    def wait(
        self, log: str, seen: int, timeout: float, kinds: Collection[str] | None = None
    ) -> int:
        """Wait until a commit to `log` (of one of `kinds`) after `seen` (a
        `generation`) is heard of, or `timeout` seconds; the generation then."""
        with self._changed:
            self._changed.wait_for(lambda: self.generation(log, kinds) != seen, timeout)
            return self.generation(log, kinds)

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
                            self.committed([notice.payload])
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
