"""Definitions kept by name with a version that moves when they change: channels,
templates, destinations. Each table has a key column (`name` or `id`), `definition`,
`version`, `created_at` and `updated_at`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def _key(table: sa.Table) -> sa.Column[Any]:
    return table.c.name if "name" in table.c else table.c.id


def every(conn: Connection, table: sa.Table) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(table).order_by(_key(table)))
    return [dict(row._mapping) for row in rows]


def get(conn: Connection, table: sa.Table, name: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(table).where(_key(table) == name)).first()
    return None if row is None else dict(row._mapping)


def save(
    conn: Connection,
    table: sa.Table,
    name: str,
    definition: Mapping[str, Any],
    now: datetime,
    **columns: Any,
) -> tuple[str, int]:
    """Create or replace; ("created" | "updated" | "unchanged", version)."""
    key = _key(table)
    found = conn.execute(
        sa.select(table.c.definition, table.c.version).where(key == name).with_for_update()
    ).first()
    if found is None:
        conn.execute(
            table.insert().values(
                {
                    key.name: name,
                    "definition": dict(definition),
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    **columns,
                }
            )
        )
        return "created", 1
    if found.definition == definition:
        return "unchanged", found.version
    conn.execute(
        table.update()
        .where(key == name)
        .values(definition=dict(definition), version=found.version + 1, updated_at=now, **columns)
    )
    return "updated", found.version + 1


def delete(conn: Connection, table: sa.Table, name: str) -> bool:
    return bool(conn.execute(table.delete().where(_key(table) == name)).rowcount)
