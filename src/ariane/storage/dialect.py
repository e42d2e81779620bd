"""What differs between the databases Ariane runs on, as one interface.

`Dialect` is subclassed once per backend (`storage.sqlite`, `storage.postgres`); storage
modules get the one of a connection with `database.dialect_of`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")


def json_dumps(value: Any) -> str:
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
        return json_dumps(value)

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

    def log_held_back(
        self, table: sa.Table, after: tuple[int, int], horizon: int
    ) -> sa.ColumnElement[bool] | None:
        """The rows of a log after `after` that `log_after` leaves for later, behind a
        transaction still running; None where there can be none."""
        return None

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


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
