"""Engines, transactions and every difference between SQLite and PostgreSQL.

Writes go through `Database.write()`: on SQLite a `BEGIN IMMEDIATE` transaction guarded
by a process-wide lock (one writer at a time, no busy-wait), on PostgreSQL a READ
COMMITTED transaction retried on deadlock or on a lost race (`RetryTransaction`), after
a short random pause. Reads go through `Database.read()`: a read-only snapshot, so that
a read of several queries never sees a write half-way.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection as Connection
from sqlalchemy.exc import DBAPIError

from ariane.storage.commits import CommitSignal
from ariane.storage.dialect import Dialect, json_dumps
from ariane.storage.postgres import PostgresDialect
from ariane.storage.sqlite import SQLiteDialect, SQLiteWriter, configure_sqlite

T = TypeVar("T")

# Pauses between attempts of a write, in seconds (see `backoff`).
_BACKOFF_START = 0.001
_BACKOFF_CAP = 0.1

# One of each: a dialect holds no state of a database, only statements it made once.
_DIALECTS: dict[str, Dialect] = {"sqlite": SQLiteDialect(), "postgresql": PostgresDialect()}


def dialect_of(conn: Connection) -> Dialect:
    """The dialect of the database `conn` is connected to."""
    return _DIALECTS[conn.dialect.name]


def insert_new(
    conn: Connection,
    table: sa.Table,
    row: Mapping[str, Any],
    conflict: tuple[str, ...] | None = None,
) -> Any:
    """Insert `row` unless it conflicts (on `conflict`'s columns if given, else on any
    unique constraint); the new row's id, or None. The statement is built once per
    database and table, its values bound at execution: built with its values, a
    statement costs more than it takes to run."""
    key = (conn.dialect.name, table.name, conflict)
    statement = _INSERT_NEW.get(key)
    if statement is None:
        statement = _INSERT_NEW[key] = (
            dialect_of(conn)
            .insert_statement(table)
            .on_conflict_do_nothing(index_elements=list(conflict) if conflict else None)
            .returning(table.c.id)
        )
    return conn.execute(statement, dict(row)).scalar()


_INSERT_NEW: dict[tuple[str, str, tuple[str, ...] | None], Any] = {}


class RetryTransaction(Exception):
    """Another transaction changed what this one read; run it again from the start."""


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (from 0): doubling from 1 ms up to
    100 ms, and random in the upper half of that, so that writers that collided once do
    not collide again in step."""
    ceiling = min(_BACKOFF_CAP, _BACKOFF_START * 2.0 ** min(attempt, 16))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalise_url(url)
        # Commits the bus's handlers are waiting for (`storage.commits`).
        self.commits = CommitSignal(self.url)
        # Transactions run again after a lost race or a deadlock, for /metrics.
        self.retries = 0
        self._retries_lock = threading.Lock()
        self._thread = threading.local()
        # This process's holders of `alone`'s names.
        self._alone: dict[str, threading.Lock] = {}
        self._alone_guard = threading.Lock()
        common: dict[str, Any] = {
            "json_serializer": json_dumps,
            "json_deserializer": orjson.loads,
            # Errors end up in logs, and statement parameters hold identifiers, traits and
            # key hashes: an error shows the SQL alone.
            "hide_parameters": True,
        }
        if self.url.startswith("sqlite"):
            self.dialect: Dialect = _DIALECTS["sqlite"]
            self.engine = sa.create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 60}, **common
            )
            configure_sqlite(self.engine)
            self._writer: SQLiteWriter | None = SQLiteWriter(sa.make_url(self.url).database)
        else:
            self.dialect = _DIALECTS["postgresql"]
            self.engine = sa.create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, **common
            )
            self._writer = None

    def is_unavailable(self, error: BaseException) -> bool:
        """Whether `error` says the database cannot serve now (so: answer 503, retry later)."""
        if isinstance(error, sa.exc.TimeoutError):
            # Every connection of the pool in use, for longer than the pool waits.
            return True
        return isinstance(error, DBAPIError) and self.dialect.is_unavailable(error)

    def unreachable(self) -> str | None:
        """Why a read of the database fails now, or None when it succeeds."""
        try:
            with self.read() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as exc:
            return str(exc)
        return None

    @property
    def serialises_writes(self) -> bool:
        """Whether writers take turns, one transaction at a time (SQLite)."""
        return self._writer is not None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a transaction that sees one state of the database throughout
        (and may not write, on PostgreSQL)."""
        with self.engine.connect() as conn, self.dialect.snapshot(conn):
            yield conn

    @contextmanager
    def lookup(self) -> Iterator[Connection]:
        """A connection for one read statement, sent outside any transaction of ours: a
        statement sees one state of the database by itself, and on PostgreSQL this saves
        the two round trips of a BEGIN and a COMMIT around it. For reads on every
        request (the token check); more than one statement wants `read`."""
        with self.engine.connect() as conn:
            if self._writer is None:
                # SQLite's connections already leave a statement alone unless told BEGIN.
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._writer is not None:
            with self._writer.hold(), self.engine.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
        else:
            with self.engine.begin() as conn:
                if getattr(self._thread, "background", False):
                    self.dialect.commit_without_waiting(conn)
                yield conn

    @contextmanager
    def background(self) -> Iterator[None]:
        """Within the block, this thread's write transactions commit without waiting for
        their changes to reach the disk (on PostgreSQL, `synchronous_commit` off).

        For the background loops, whose work is made again from what is durable: a crash
        may lose the last of it, never a part of a transaction, and never one that a
        later transaction that waited for the disk could see (the log is flushed in
        order). Their commits then no longer hold the log's flush while the requests'
        commits queue behind them."""
        before = getattr(self._thread, "background", False)
        self._thread.background = True
        try:
            yield
        finally:
            self._thread.background = before

    @contextmanager
    def alone(self, name: str) -> Iterator[bool]:
        """Whether the block is the only one under `name` now, among every process on the
        database: if another holds the name, the block runs at once with False.

        On PostgreSQL a session advisory lock, on a connection held for the block: a
        process that dies lets go at once, with its connection. On SQLite an flock on a
        file beside the database, let go with the process too. Nothing is written."""
        with self._alone_guard:
            held = self._alone.setdefault(name, threading.Lock())
        if not held.acquire(blocking=False):
            yield False
            return
        try:
            if self._writer is not None:
                with self._writer.alone(name) as first:
                    yield first
                return
            # A stable 64-bit key for the name, apart from the fixed keys above.
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                first = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar())
                try:
                    yield first
                finally:
                    if first:
                        try:
                            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                        except Exception:
                            # Closed rather than handed back to the pool still holding it.
                            conn.invalidate()
                            raise
        finally:
            held.release()

    def write(self, work: Callable[[Connection], T], *, attempts: int = 20) -> T:
        """Run `work` in one write transaction, again from the start if it lost a race.

        Each retry is counted in `retries` and waits a little longer than the last.
        """
        for attempt in range(attempts):
            try:
                with self._transaction() as conn:
                    CommitSignal.take_mark(conn)
                    done = work(conn)
                    logs = CommitSignal.take_mark(conn)
                if logs:
                    self.commits.committed(logs)
                return done
            except RetryTransaction:
                if attempt == attempts - 1:
                    raise
            except DBAPIError as error:
                if not self.dialect.is_retryable(error) or attempt == attempts - 1:
                    raise
            with self._retries_lock:
                self.retries += 1
            time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()
        if self._writer is not None:
            self._writer.close()
