"""SQLite: its dialect, its one writer at a time, and the functions Ariane adds to it."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ariane.domain.computed import add_exactly, decimal_of
from ariane.domain.predicates import micros, parse_moment
from ariane.storage.dialect import Dialect, json_dumps

# The kinds of JSON value segment conditions tell apart, as SQLite's json_type names them.
_SQLITE_JSON_TYPES = {
    "string": ("text",),
    "number": ("integer", "real"),
    "boolean": ("true", "false"),
    "array": ("array",),
    "object": ("object",),
    "null": ("null",),
}


class SQLiteDialect(Dialect):
    # What SQLite says when another process holds the database past the busy timeout, or
    # when the file cannot be reached.
    _UNAVAILABLE = ("database is locked", "unable to open database file", "disk i/o error")
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

    def json_is(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], kind: str
    ) -> sa.ColumnElement[bool]:
        return sa.func.json_type(doc, _sqlite_path(parts)).in_(_SQLITE_JSON_TYPES[kind])

    def _of_kind(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], kind: str, type_: Any
    ) -> sa.ColumnElement[Any]:
        value = sa.func.json_extract(doc, _sqlite_path(parts), type_=type_)
        return sa.case((self.json_is(doc, parts, kind), value), else_=sa.null())

    def json_text(self, doc: sa.ColumnElement[Any], parts: Sequence[str]) -> sa.ColumnElement[str]:
        return self._of_kind(doc, parts, "string", sa.Text())

    def json_number(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str]
    ) -> sa.ColumnElement[Any]:
        # json_extract reads true as 1: json_type tells them apart.
        return self._of_kind(doc, parts, "number", sa.Numeric())

    def json_flag(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], flag: bool
    ) -> sa.ColumnElement[bool]:
        return sa.func.json_type(doc, _sqlite_path(parts)) == ("true" if flag else "false")

    def json_array_has(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], item: str | int | float | bool
    ) -> sa.ColumnElement[bool]:
        path = _sqlite_path(parts)
        elements = sa.func.json_each(doc, path).table_valued("type", "value").alias()
        if isinstance(item, bool):
            same = elements.c.type == ("true" if item else "false")
        elif isinstance(item, str):
            same = sa.and_(elements.c.type == "text", elements.c.value == item)
        else:
            same = sa.and_(
                elements.c.type.in_(_SQLITE_JSON_TYPES["number"]),
                elements.c.value == self.number(item),
            )
        return sa.and_(
            sa.func.json_type(doc, path) == "array",
            sa.exists(sa.select(1).select_from(elements).where(same)),
        )

    def number(self, value: int | float, *, double: bool = False) -> sa.ColumnElement[Any]:
        # Numbers are doubles and 64-bit integers here, compared exactly with each other.
        if double or isinstance(value, float):
            return sa.literal(float(value), sa.Double())
        return sa.literal(value, sa.BigInteger())

    def text_in(self, text: sa.ColumnElement[str], values: Sequence[str]) -> sa.ColumnElement[bool]:
        return text.in_(_json_elements(values))

    def number_in(
        self, number: sa.ColumnElement[Any], values: Sequence[int | float], *, double: bool = False
    ) -> sa.ColumnElement[bool]:
        # json_each reads an integer as an integer and a decimal as a double, as `number`
        # binds them.
        return number.in_(_json_elements([float(v) for v in values] if double else values))

    def text_contains(self, text: sa.ColumnElement[str], part: str) -> sa.ColumnElement[bool]:
        return sa.func.instr(text, part) > 0

    def text_ends_with(self, text: sa.ColumnElement[str], suffix: str) -> sa.ColumnElement[bool]:
        return sa.func.substr(text, -len(suffix), type_=sa.Text) == suffix

    def insert_statement(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def is_unavailable(self, error: DBAPIError) -> bool:
        said = str(error.orig).lower()
        return super().is_unavailable(error) or any(what in said for what in self._UNAVAILABLE)

    def among(self, column: sa.ColumnElement[int], values: Sequence[int]) -> sa.ColumnElement[bool]:
        return column.in_(_json_elements(values))

    def micros(self, column: sa.ColumnElement[datetime]) -> sa.ColumnElement[int]:
        # Stored as `YYYY-MM-DD HH:MM:SS.ffffff`, always six digits (`datetime_param`). The
        # fraction is cut before strftime, which would round it to the millisecond and so
        # carry .9999995 into the next second.
        seconds = sa.cast(sa.func.strftime("%s", sa.func.substr(column, 1, 19)), sa.BigInteger)
        fraction = sa.cast(sa.func.substr(column, 21, 6), sa.BigInteger)
        return seconds * 1_000_000 + fraction

    def exact_sum(self, numbers: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
        return sa.func.ariane_sum(numbers, type_=sa.Double)


class SQLiteWriter:
    """One SQLite writer at a time, handed over without waiting.

    SQLite's own busy handler makes a second writer sleep and poll, in steps growing to
    100 ms; here threads queue on a lock and processes on an flock'd file beside the
    database, and the next writer wakes the moment the previous one commits.
    """

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        in_memory = not database or database == ":memory:" or database.startswith("file::memory")
        self._database = None if in_memory else database
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

    @contextmanager
    def alone(self, name: str) -> Iterator[bool]:
        """`Database.alone`: an flock on a file beside the database named after `name`
        (`name` is then part of a file name). A database in memory is this process's
        alone, and the caller's lock suffices."""
        if self._database is None:
            yield True
            return
        fd = os.open(f"{self._database}-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                first = True
            except BlockingIOError:
                first = False
            # Closing the file lets the lock go.
            yield first
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def configure_sqlite(engine: Engine) -> None:
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
        # For segment conditions compiled to SQL; PostgreSQL has ariane_moment from a
        # migration, and sum() of numeric is exact there.
        dbapi_connection.create_function("ariane_moment", 1, _moment_micros, deterministic=True)
        dbapi_connection.create_aggregate("ariane_sum", 1, _ExactSum)


def _json_elements(values: Sequence[Any]) -> sa.Select[Any]:
    """The values, as the rows of SQLite's json_each over one JSON parameter."""
    listed = sa.func.json_each(json_dumps(list(values))).table_valued("value")
    return sa.select(listed.c.value)


def _sqlite_path(parts: Sequence[str]) -> str:
    # Keys are quoted: a condition's names hold no quote (`predicates.parse_path`).
    return "$" + "".join(f'."{part}"' for part in parts)


def _moment_micros(value: Any) -> int | None:
    moment = parse_moment(value)
    return None if moment is None else micros(moment)


class _ExactSum:
    """SQLite's `ariane_sum`: the double nearest the exact sum of decimal numbers."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: int | float | None) -> None:
        if value is not None:
            self.total = add_exactly(self.total or Decimal(0), decimal_of(value))

    def finalize(self) -> float | None:
        return None if self.total is None else float(self.total)
