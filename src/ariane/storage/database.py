"""Engines, transactions and every difference between SQLite and PostgreSQL.

Writes go through `Database.write()`: on SQLite a `BEGIN IMMEDIATE` transaction guarded
by a process-wide lock (one writer at a time, no busy-wait), on PostgreSQL a READ
COMMITTED transaction retried on deadlock or on a lost race (`RetryTransaction`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

T = TypeVar("T")


class RetryTransaction(Exception):
    """Another transaction changed what this one read; run it again from the start."""


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Dialect:
    """What differs between databases. Subclassed once per backend."""

    name = "base"

    def insert(self, table: sa.Table) -> Any:
        raise NotImplementedError

    def lock_rows(self, select: sa.Select[Any]) -> sa.Select[Any]:
        return select

    def is_retryable(self, error: DBAPIError) -> bool:
        return False


class SQLiteDialect(Dialect):
    name = "sqlite"

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)


class PostgresDialect(Dialect):
    name = "postgresql"

    def insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    def lock_rows(self, select: sa.Select[Any]) -> sa.Select[Any]:
        return select.with_for_update()

    def is_retryable(self, error: DBAPIError) -> bool:
        # 40P01 deadlock_detected, 40001 serialization_failure
        return getattr(error.orig, "sqlstate", None) in ("40P01", "40001")


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalise_url(url)
        common: dict[str, Any] = {
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
        }
        if self.url.startswith("sqlite"):
            self.dialect: Dialect = SQLiteDialect()
            self.engine = sa.create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 60}, **common
            )
            _configure_sqlite(self.engine)
            self._write_lock: threading.Lock | None = threading.Lock()
        else:
            self.dialect = PostgresDialect()
            self.engine = sa.create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, **common
            )
            self._write_lock = None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.exec_driver_sql("BEGIN")
            yield conn
            if self.is_sqlite:
                conn.exec_driver_sql("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._write_lock is not None:
            with self._write_lock, self.engine.connect() as conn:
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
        """Run `work` in one write transaction, again from the start if it lost a race."""
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
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


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


__all__ = ["Database", "NullPool", "OperationalError", "RetryTransaction", "chunked"]
