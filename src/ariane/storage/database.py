"""Engines, transactions and every difference between SQLite and PostgreSQL.

Writes go through `Database.write()`: on SQLite a `BEGIN IMMEDIATE` transaction guarded
by a process-wide lock (one writer at a time, no busy-wait), on PostgreSQL a READ
COMMITTED transaction retried on deadlock or on a lost race (`RetryTransaction`), after
a short random pause. Reads go through `Database.read()`: a read-only snapshot, so that
a read of several queries never sees a write half-way.
"""

from __future__ import annotations

import fcntl
import hashlib
import operator
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ariane.domain.computed import add_exactly, decimal_of
from ariane.domain.predicates import micros, parse_moment
from ariane.storage.commits import CommitSignal

T = TypeVar("T")

# Rows in one statement of `Dialect.insert_bulk` on PostgreSQL.
_BULK_CHUNK = 5000

# Pauses between attempts of a write, in seconds (see `backoff`).
_BACKOFF_START = 0.001
_BACKOFF_CAP = 0.1

# The kinds of JSON value segment conditions tell apart, as SQLite's json_type names them.
_SQLITE_JSON_TYPES = {
    "string": ("text",),
    "number": ("integer", "real"),
    "boolean": ("true", "false"),
    "array": ("array",),
    "object": ("object",),
    "null": ("null",),
}


# The oldest transaction that may still write to this database: of those running in it
# now (pg_stat_activity), or, if none, the next to start. Transactions of the cluster's
# other databases do not hold it back, as the snapshot's own xmin would.
_LOG_HORIZON = sa.text(
    "SELECT least(pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
    " min(backend_xid::text::bigint)) FROM pg_stat_activity"
    " WHERE datname = current_database()"
)


class RetryTransaction(Exception):
    """Another transaction changed what this one read; run it again from the start."""


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Dialect:
    """What differs between databases. Subclassed once per backend."""

    name = "base"
    placeholder = "?"

    def __init__(self) -> None:
        self._kept: dict[Callable[[Any], Any], Any] = {}

    def kept(self, make: Callable[[Dialect], T]) -> T:
        """`make(self)`, made once for this dialect: a statement the requests run every
        time, its values bound as it runs (`sa.bindparam`), which SQLAlchemy then neither
        builds nor works out the cache key of again (20 µs a simple statement, more for a
        join or a subquery)."""
        found = self._kept.get(make)
        if found is None:
            # Two threads may both make it: the same statement, kept once.
            found = self._kept.setdefault(make, make(self))
        made: T = found
        return made

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
        return self._execute_many(conn, table, columns, params, "ON CONFLICT DO NOTHING")

    def insert_bulk(
        self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> int:
        """`insert_ignoring_conflicts` for writes of many rows at once: on PostgreSQL, one
        statement per few thousand rows instead of one per row."""
        if not rows:
            return 0
        columns = list(rows[0])
        return self.insert_bulk_driver_rows(
            conn, table, columns, self.driver_rows(table, columns, rows)
        )

    def insert_bulk_driver_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        params: Sequence[tuple[Any, ...]],
    ) -> int:
        """`insert_bulk` for rows already in the driver's form (`driver_rows`)."""
        # SQLite's executemany costs little more than a single statement.
        if not params:
            return 0
        return self._execute_many(conn, table, columns, params, "ON CONFLICT DO NOTHING")

    def _execute_many(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        params: Sequence[tuple[Any, ...]],
        on_conflict: str,
    ) -> int:
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join([self.placeholder] * len(columns))
        sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) {on_conflict}'
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

    def json_param(self, value: Any) -> str:
        return _json_dumps(value)

    def _converter(self, column_type: Any) -> Callable[[Any], Any] | None:
        if isinstance(column_type, sa.JSON):
            return self.json_param
        if isinstance(column_type, sa.TypeDecorator) and isinstance(column_type.impl, sa.DateTime):
            return self.datetime_param
        return None

    def snapshot(self, conn: Connection) -> AbstractContextManager[Any]:
        """A read-only transaction that sees one state of the database from start to end."""
        raise NotImplementedError

    def lock_rows(self, select: sa.Select[Any]) -> sa.Select[Any]:
        return select

    def claim_rows(self, select: sa.Select[Any]) -> sa.Select[Any]:
        """Rows locked until commit, skipping those another transaction holds: for
        handing out one of many interchangeable rows (a free coupon code)."""
        return select

    def among(self, column: sa.ColumnElement[int], values: Sequence[int]) -> sa.ColumnElement[bool]:
        """`column IN values` with the values as one parameter, however many there are."""
        raise NotImplementedError

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

    def is_unavailable(self, error: DBAPIError) -> bool:
        """Whether the database could not serve now (busy, unreachable), so that the same
        request may succeed later, rather than the request being at fault."""
        return error.connection_invalidated

    def log_horizon(self, conn: Connection) -> int:
        """Read before a snapshot that reads a log (`storage.bus`): no transaction that
        commits after that snapshot wrote below this mark. SQLite's writers commit one
        after the other, in id order: there is none."""
        return 0

    def log_after(
        self, table: sa.Table, after: tuple[int, int], horizon: int
    ) -> sa.ColumnElement[bool]:
        """The rows of a log after `after` that no row committed later can come before."""
        return table.c.id > after[1]

    def log_order(self, table: sa.Table) -> list[sa.ColumnElement[Any]]:
        return [table.c.id]

    def log_through(self, table: sa.Table, upto: tuple[int, int]) -> sa.ColumnElement[bool]:
        """The rows of a log up to `upto`, included."""
        return table.c.id <= upto[1]

    def commit_without_waiting(self, conn: Connection) -> None:
        """Let the transaction's commit return before its changes reach the disk, where
        the database can (see `Database.background`)."""

    def insert_statement(self, table: sa.Table) -> Any:
        """An INSERT of this database's own, which takes `on_conflict_do_update`."""
        raise NotImplementedError

    def hold_projection(self, conn: Connection) -> None:
        """Apply recorded segment changes one transaction at a time, until it ends.
        SQLite's single writer already does."""

    def hold_catalogue(self, conn: Connection, *, exclusive: bool) -> None:
        """Hold segment definitions in force until the transaction ends: writers share the
        hold, a change of definitions takes it alone. SQLite's single writer already
        serialises them."""

    # --- for segment conditions compiled to SQL (storage/segment_sql.py) --------------------
    #
    # `parts` is a path of object keys into the JSON document `doc`: a key never indexes an
    # array. An accessor is NULL where the value is missing or of another kind.

    def json_is(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], kind: str
    ) -> sa.ColumnElement[bool]:
        """Whether the value is a JSON string, number, boolean, array, object or null."""
        raise NotImplementedError

    def json_text(self, doc: sa.ColumnElement[Any], parts: Sequence[str]) -> sa.ColumnElement[str]:
        raise NotImplementedError

    def json_number(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str]
    ) -> sa.ColumnElement[Any]:
        """The number, exactly as stored (booleans are not numbers)."""
        raise NotImplementedError

    def json_flag(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], flag: bool
    ) -> sa.ColumnElement[bool]:
        """Whether the value is the JSON boolean `flag`."""
        raise NotImplementedError

    def json_array_has(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], item: str | int | float | bool
    ) -> sa.ColumnElement[bool]:
        """Whether the value is an array holding `item`, of the same kind and equal."""
        raise NotImplementedError

    def number(self, value: int | float, *, double: bool = False) -> sa.ColumnElement[Any]:
        """A number literal compared exactly with `json_number`, or with a double."""
        raise NotImplementedError

    # A test of a value against a list (`in`) binds the list as one parameter, however
    # long: SQLite refuses an expression nested 1,000 deep, as `a = 1 OR a = 2 OR ...` is
    # for a thousand values, and PostgreSQL a statement of more than 65,535 parameters.

    def text_in(self, text: sa.ColumnElement[str], values: Sequence[str]) -> sa.ColumnElement[bool]:
        """Whether `text` is one of `values`."""
        raise NotImplementedError

    def number_in(
        self, number: sa.ColumnElement[Any], values: Sequence[int | float], *, double: bool = False
    ) -> sa.ColumnElement[bool]:
        """Whether `number` equals one of `values`, each compared as `number(value,
        double=double)` is."""
        raise NotImplementedError

    def ordered(self, text: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """Text that sorts and compares by code point."""
        return text

    def text_contains(self, text: sa.ColumnElement[str], part: str) -> sa.ColumnElement[bool]:
        raise NotImplementedError

    def text_starts_with(self, text: sa.ColumnElement[str], prefix: str) -> sa.ColumnElement[bool]:
        # Lengths count characters on both databases (PostgreSQL databases are UTF-8).
        return sa.func.substr(text, 1, len(prefix), type_=sa.Text) == prefix

    def text_ends_with(self, text: sa.ColumnElement[str], suffix: str) -> sa.ColumnElement[bool]:
        """Whether `text` ends with the non-empty `suffix`."""
        raise NotImplementedError

    def micros(self, column: sa.ColumnElement[datetime]) -> sa.ColumnElement[int]:
        """A UTC datetime column as exact microseconds since the Unix epoch."""
        raise NotImplementedError

    def moment_micros(self, text: sa.ColumnElement[str]) -> sa.ColumnElement[int]:
        """`predicates.parse_moment` of a text, in microseconds since the epoch, or NULL."""
        return sa.func.ariane_moment(text, type_=sa.BigInteger)

    def exact_sum(self, numbers: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
        """The double nearest the exact sum of `json_number` values (NULL over no rows)."""
        raise NotImplementedError

    def double(self, value: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
        return sa.cast(value, sa.Double())


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


# The advisory lock key of segment definitions ("ARIANE" in ASCII, then 1).
CATALOGUE_LOCK = 0x41524941_4E450001
PROJECTION_LOCK = 0x41524941_4E450002


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

    def commit_without_waiting(self, conn: Connection) -> None:
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    def claim_rows(self, select: sa.Select[Any]) -> sa.Select[Any]:
        return select.with_for_update(skip_locked=True)

    def insert_statement(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    def among(self, column: sa.ColumnElement[int], values: Sequence[int]) -> sa.ColumnElement[bool]:
        return column == sa.func.any(
            sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.BigInteger))
        )

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

    def insert_bulk_driver_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        params: Sequence[tuple[Any, ...]],
    ) -> int:
        # The driver's executemany runs the statement once per row: here one statement
        # takes a chunk of rows, as an array per column. Arrays go in binary (%b): their
        # text form has psycopg escape every quote of every JSON document, slowly. They
        # are cast to the columns' types without their lengths: a cast to varchar(n)
        # would cut a longer value, which the insert itself refuses. unnest yields the
        # rows in order, and ids follow it.
        if not params:
            return 0
        names = ", ".join(f'"{c}"' for c in columns)
        arrays = ", ".join(f"%b::{_unsized(table.c[c].type, conn)}[]" for c in columns)
        sql = (
            f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({arrays})'
            " ON CONFLICT DO NOTHING"
        )
        inserted = 0
        for chunk in chunked(params, _BULK_CHUNK):
            by_column = tuple(list(values) for values in zip(*chunk, strict=True))
            inserted += int(conn.exec_driver_sql(sql, by_column).rowcount)
        return inserted

    def hold_catalogue(self, conn: Connection, *, exclusive: bool) -> None:
        # An advisory lock rather than a row lock: a shared row lock writes to the row
        # for every batch, and every batch takes one.
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.exec_driver_sql(f"SELECT {function}({CATALOGUE_LOCK})")

    def hold_projection(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PROJECTION_LOCK})")

    def is_retryable(self, error: DBAPIError) -> bool:
        # 40P01 deadlock_detected, 40001 serialization_failure
        return getattr(error.orig, "sqlstate", None) in ("40P01", "40001")

    def log_horizon(self, conn: Connection) -> int:
        return int(conn.execute(_LOG_HORIZON).scalar_one())

    def log_after(
        self, table: sa.Table, after: tuple[int, int], horizon: int
    ) -> sa.ColumnElement[bool]:
        # Transactions commit in any order, whatever ids they took: only the rows of
        # transactions older than any that was running before the snapshot are read,
        # in (transaction, id) order; one still running takes a later place than them.
        return sa.and_(table.c.tx < horizon, sa.tuple_(table.c.tx, table.c.id) > sa.tuple_(*after))

    def log_order(self, table: sa.Table) -> list[sa.ColumnElement[Any]]:
        return [table.c.tx, table.c.id]

    def log_through(self, table: sa.Table, upto: tuple[int, int]) -> sa.ColumnElement[bool]:
        return sa.tuple_(table.c.tx, table.c.id) <= sa.tuple_(*upto)

    def is_unavailable(self, error: DBAPIError) -> bool:
        # Classes 08 connection exception, 53 insufficient resources, 57P0x the server
        # shutting down or starting; 55P03 lock_not_available.
        state = getattr(error.orig, "sqlstate", None) or ""
        return (
            super().is_unavailable(error)
            or state[:2] in ("08", "53")
            or state.startswith("57P0")
            or state == "55P03"
            # psycopg's own failures to connect carry no state.
            or (isinstance(error, sa.exc.OperationalError) and not state)
        )

    def _node(self, doc: sa.ColumnElement[Any], parts: Sequence[str]) -> sa.ColumnElement[Any]:
        # `->` with a text key reads objects only, where `#>` would index arrays by "0".
        node = doc
        for part in parts:
            node = node.op("->", return_type=postgresql.JSONB)(sa.literal(part, sa.Text))
        return node

    def json_is(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], kind: str
    ) -> sa.ColumnElement[bool]:
        return sa.func.jsonb_typeof(self._node(doc, parts)) == kind

    def json_text(self, doc: sa.ColumnElement[Any], parts: Sequence[str]) -> sa.ColumnElement[str]:
        parent = self._node(doc, parts[:-1])
        text = parent.op("->>", return_type=sa.Text)(sa.literal(parts[-1], sa.Text))
        return sa.case((self.json_is(doc, parts, "string"), text), else_=sa.null())

    def json_number(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str]
    ) -> sa.ColumnElement[Any]:
        # jsonb keeps the decimal written, and numeric compares it exactly.
        number = sa.cast(self._node(doc, parts), sa.Numeric())
        return sa.case((self.json_is(doc, parts, "number"), number), else_=sa.null())

    def json_flag(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], flag: bool
    ) -> sa.ColumnElement[bool]:
        literal = sa.cast(sa.literal("true" if flag else "false"), postgresql.JSONB)
        return self._node(doc, parts).op("=", return_type=sa.Boolean)(literal)

    def json_array_has(
        self, doc: sa.ColumnElement[Any], parts: Sequence[str], item: str | int | float | bool
    ) -> sa.ColumnElement[bool]:
        # Containment compares scalars by kind and value (numbers as numeric), and an
        # array nested in the array is not searched.
        wanted = sa.cast(sa.literal(_json_dumps([item])), postgresql.JSONB)
        return sa.and_(
            self.json_is(doc, parts, "array"),
            self._node(doc, parts).op("@>", return_type=sa.Boolean)(wanted),
        )

    def number(self, value: int | float, *, double: bool = False) -> sa.ColumnElement[Any]:
        if double:
            return sa.literal(float(value), sa.Double())
        if isinstance(value, float):
            # The decimal the float's JSON text says, as jsonb holds it.
            return sa.literal(Decimal(repr(value)), sa.Numeric())
        return sa.literal(value, sa.BigInteger())

    def text_in(self, text: sa.ColumnElement[str], values: Sequence[str]) -> sa.ColumnElement[bool]:
        return text == sa.func.any(
            sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.Text))
        )

    def number_in(
        self, number: sa.ColumnElement[Any], values: Sequence[int | float], *, double: bool = False
    ) -> sa.ColumnElement[bool]:
        # An array holds one type: every value as a double, or as the decimal `number`
        # makes of it.
        if double:
            listed = sa.bindparam(
                None, [float(v) for v in values], type_=postgresql.ARRAY(sa.Double)
            )
        else:
            exact = [Decimal(repr(v)) if isinstance(v, float) else Decimal(v) for v in values]
            listed = sa.bindparam(None, exact, type_=postgresql.ARRAY(sa.Numeric))
        return number == sa.func.any(listed)

    def ordered(self, text: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        # Byte order of UTF-8 is code-point order.
        return text.collate("C")

    def text_contains(self, text: sa.ColumnElement[str], part: str) -> sa.ColumnElement[bool]:
        return sa.func.strpos(text, part) > 0

    def text_ends_with(self, text: sa.ColumnElement[str], suffix: str) -> sa.ColumnElement[bool]:
        return sa.func.right(text, len(suffix), type_=sa.Text) == suffix

    def micros(self, column: sa.ColumnElement[datetime]) -> sa.ColumnElement[int]:
        # extract() is an exact numeric since PostgreSQL 14.
        return sa.cast(sa.extract("epoch", column) * 1_000_000, sa.BigInteger)

    def exact_sum(self, numbers: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
        # sum() of numeric is exact; the cast rounds once, to the nearest double.
        return sa.cast(sa.func.sum(numbers), sa.Double())


def _unsized(column_type: Any, conn: Connection) -> str:
    """A column type as PostgreSQL names it, without length or precision."""
    return re.sub(r"\(\d+(, *\d+)?\)", "", str(column_type.compile(dialect=conn.dialect)))


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

    def is_unavailable(self, error: BaseException) -> bool:
        """Whether `error` says the database cannot serve now (so: answer 503, retry later)."""
        if isinstance(error, sa.exc.TimeoutError):
            # Every connection of the pool in use, for longer than the pool waits.
            return True
        return isinstance(error, DBAPIError) and self.dialect.is_unavailable(error)

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
        # For segment conditions compiled to SQL; PostgreSQL has ariane_moment from a
        # migration, and sum() of numeric is exact there.
        dbapi_connection.create_function("ariane_moment", 1, _moment_micros, deterministic=True)
        dbapi_connection.create_aggregate("ariane_sum", 1, _ExactSum)


def _json_elements(values: Sequence[Any]) -> sa.Select[Any]:
    """The values, as the rows of SQLite's json_each over one JSON parameter."""
    listed = sa.func.json_each(_json_dumps(list(values))).table_valued("value")
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


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
