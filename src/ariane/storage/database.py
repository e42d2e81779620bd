"""Engines, transactions and every difference between SQLite and PostgreSQL.

Writes go through `Database.write()`: on SQLite a `BEGIN IMMEDIATE` transaction guarded
by a process-wide lock (one writer at a time, no busy-wait), on PostgreSQL a READ
COMMITTED transaction retried on deadlock or on a lost race (`RetryTransaction`), after
a short random pause. Reads go through `Database.read()`: a read-only snapshot, so that
a read of several queries never sees a write half-way.
"""

from __future__ import annotations

import fcntl
import operator
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")

# Pauses between attempts of a write, in seconds (see `backoff`).
_BACKOFF_START = 0.001
_BACKOFF_CAP = 0.1


class RetryTransaction(Exception):
    """Another transaction changed what this one read; run it again from the start."""


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Dialect:
    """What differs between databases. Subclassed once per backend."""

    name = "base"
    placeholder = "?"

    def datetime_param(self, moment: datetime) -> Any:
        raise NotImplementedError

    def insert_ignoring_conflicts(
        self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> int:
        """Insert rows with the driver's executemany, skipping those that hit a unique key.

        Returns how many went in. This is the path every event takes: SQLAlchemy's
        batched insert reports no row count on PostgreSQL, and RETURNING costs more
        than the insert itself, so values are converted here and handed to the driver.
        Column names come from the code, never from input.
        """
        if not rows:
            return 0
        columns = list(rows[0])
        return self.insert_driver_rows(conn, table, columns, self.driver_rows(table, columns, rows))

    def insert_driver_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        params: Sequence[tuple[Any, ...]],
    ) -> int:
        """`insert_ignoring_conflicts` for rows already in the driver's form (`driver_rows`)."""
        if not params:
            return 0
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join([self.placeholder] * len(columns))
        sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING'
        return int(conn.exec_driver_sql(sql, list(params)).rowcount)

    def update_many(
        self, conn: Connection, table: sa.Table, key: str, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """`UPDATE table SET ... WHERE key = ...` for each row, through the driver's executemany."""
        if not rows:
            return
        columns = [c for c in rows[0] if c != key]
        assignments = ", ".join(f'"{c}" = {self.placeholder}' for c in columns)
        sql = f'UPDATE "{table.name}" SET {assignments} WHERE "{key}" = {self.placeholder}'
        conn.exec_driver_sql(sql, self.driver_rows(table, [*columns, key], rows))

    def driver_rows(
        self, table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...]]:
        """The values of `columns` of each row, converted as the driver takes them."""
        pick = operator.itemgetter(*columns)
        converters = [(i, self._converter(table.c[c].type)) for i, c in enumerate(columns)]
        to_convert = [(i, f) for i, f in converters if f is not None]
        # A batch repeats some values in every row (its receipt time, `now`): each column
        # remembers its last conversion.
        last: dict[int, tuple[Any, Any]] = {}
        params = []
        for row in rows:
            values = list(pick(row)) if len(columns) > 1 else [pick(row)]
            for i, convert in to_convert:
                value = values[i]
                if value is None:
                    continue
                seen = last.get(i)
                if seen is not None and seen[0] is value:
                    values[i] = seen[1]
                else:
                    values[i] = converted = convert(value)
                    last[i] = (value, converted)
            params.append(tuple(values))
        return params

    def _converter(self, column_type: Any) -> Callable[[Any], Any] | None:
        if isinstance(column_type, sa.JSON):
            return _json_dumps
        if isinstance(column_type, sa.TypeDecorator) and isinstance(column_type.impl, sa.DateTime):
            return self.datetime_param
        return None

    def snapshot(self, conn: Connection) -> AbstractContextManager[Any]:
        """A read-only transaction that sees one state of the database from start to end."""
        raise NotImplementedError

    def lock_rows(self, select: sa.Select[Any]) -> sa.Select[Any]:
        return select

    def probe(
        self,
        columns: Sequence[sa.ColumnElement[Any]],
        key: sa.ColumnElement[Any],
        values: Sequence[Any],
        *conditions: sa.ColumnElement[bool],
    ) -> sa.Select[Any]:
        """Rows whose indexed `key` is one of `values`, looked up value by value."""
        return sa.select(*columns).where(key.in_(values), *conditions)

    def is_retryable(self, error: DBAPIError) -> bool:
        return False


class SQLiteDialect(Dialect):
    name = "sqlite"

    def datetime_param(self, moment: datetime) -> Any:
        # The text form SQLAlchemy's SQLite DateTime type reads back.
        if moment.tzinfo is not UTC:
            moment = moment.astimezone(UTC)
        return moment.replace(tzinfo=None).isoformat(" ", "microseconds")

    @contextmanager
    def snapshot(self, conn: Connection) -> Iterator[None]:
        # A deferred transaction reads from one WAL snapshot, taken at its first read.
        # On an error the pool's rollback on check-in ends it.
        conn.exec_driver_sql("BEGIN")
        yield
        conn.exec_driver_sql("COMMIT")


class PostgresDialect(Dialect):
    name = "postgresql"
    placeholder = "%s"

    def datetime_param(self, moment: datetime) -> Any:
        if moment.tzinfo is not UTC:
            moment = moment.astimezone(UTC)
        return moment.replace(tzinfo=None)

    def snapshot(self, conn: Connection) -> AbstractContextManager[Any]:
        # READ COMMITTED would let each query of the read see a merge or an erasure
        # committed between two of them. The connection's pool resets both options.
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        return conn.begin()

    def lock_rows(self, select: sa.Select[Any]) -> sa.Select[Any]:
        return select.with_for_update()

    def probe(
        self,
        columns: Sequence[sa.ColumnElement[Any]],
        key: sa.ColumnElement[Any],
        values: Sequence[Any],
        *conditions: sa.ColumnElement[bool],
    ) -> sa.Select[Any]:
        # `key IN (...)` is planned from table statistics, and a table filling faster than
        # autovacuum analyses it looks small: PostgreSQL then scans all of it for every
        # batch. One index probe per value, through LATERAL, is the plan at any size;
        # OFFSET 0 keeps the planner from flattening it back into a join it may hash.
        # Each value once: a value given twice would return its rows twice, unlike IN.
        distinct = list(dict.fromkeys(values))
        wanted = (
            sa.func.unnest(sa.bindparam(None, distinct, type_=postgresql.ARRAY(key.type)))
            .table_valued("value")
            .render_derived(name="wanted")
        )
        found = (
            sa.select(*columns).where(key == wanted.c.value, *conditions).offset(0).lateral("found")
        )
        return sa.select(*found.c).select_from(wanted).join(found, sa.true())

    def is_retryable(self, error: DBAPIError) -> bool:
        # 40P01 deadlock_detected, 40001 serialization_failure
        return getattr(error.orig, "sqlstate", None) in ("40P01", "40001")


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
        # Transactions run again after a lost race or a deadlock, for /metrics.
        self.retries = 0
        self._retries_lock = threading.Lock()
        common: dict[str, Any] = {
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
            # Errors end up in logs, and statement parameters hold identifiers, traits and
            # key hashes: an error shows the SQL alone.
            "hide_parameters": True,
        }
        if self.url.startswith("sqlite"):
            self.dialect: Dialect = SQLiteDialect()
            self.engine = sa.create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 60}, **common
            )
            _configure_sqlite(self.engine)
            self._writer: SQLiteWriter | None = SQLiteWriter(sa.make_url(self.url).database)
        else:
            self.dialect = PostgresDialect()
            self.engine = sa.create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, **common
            )
            self._writer = None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a transaction that sees one state of the database throughout
        (and may not write, on PostgreSQL)."""
        with self.engine.connect() as conn, self.dialect.snapshot(conn):
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
                yield conn

    def write(self, work: Callable[[Connection], T], *, attempts: int = 20) -> T:
        """Run `work` in one write transaction, again from the start if it lost a race.

        Each retry is counted in `retries` and waits a little longer than the last.
        """
        for attempt in range(attempts):
            try:
                with self._transaction() as conn:
                    return work(conn)
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


class SQLiteWriter:
    """One SQLite writer at a time, handed over without waiting.

    SQLite's own busy handler makes a second writer sleep and poll, in steps growing to
    100 ms; here threads queue on a lock and processes on an flock'd file beside the
    database, and the next writer wakes the moment the previous one commits.
    """

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        in_memory = not database or database == ":memory:" or database.startswith("file::memory")
        self._path = None if in_memory else f"{database}-writer.lock"
        self._fd: int | None = None
        self._pid = os.getpid()

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self._pid != os.getpid():
            # A forked child must not share its parent's lock: an flock belongs to the
            # open file, which fork shares, and a thread lock may have been held.
            self._threads, self._fd, self._pid = threading.Lock(), None, os.getpid()
        with self._threads:
            if self._path is None:
                yield
                return
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _configure_sqlite(engine: Engine) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun explicitly (BEGIN / BEGIN IMMEDIATE), not by pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss too, not only a crash of the process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
