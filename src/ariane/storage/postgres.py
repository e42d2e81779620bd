"""PostgreSQL: its dialect."""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ariane.storage.dialect import Dialect, chunked, json_dumps

# Rows in one statement of `Dialect.insert_bulk` on PostgreSQL.
_BULK_CHUNK = 5000

# The oldest transaction that may still write to this database: of those running in it
# now (pg_stat_activity), or, if none, the next to start. Transactions of the cluster's
# other databases do not hold it back, as the snapshot's own xmin would.
_LOG_HORIZON = sa.text(
    "SELECT least(pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
    " min(backend_xid::text::bigint)) FROM pg_stat_activity"
    " WHERE datname = current_database()"
)


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

    def log_held_back(
        self, table: sa.Table, after: tuple[int, int], horizon: int
    ) -> sa.ColumnElement[bool] | None:
        return sa.and_(table.c.tx >= horizon, sa.tuple_(table.c.tx, table.c.id) > sa.tuple_(*after))

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
        wanted = sa.cast(sa.literal(json_dumps([item])), postgresql.JSONB)
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
