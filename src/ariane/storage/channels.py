"""Channels, templates and the workspace's sending rules, as declared: each a named
definition with a version that moves when it changes (`storage.definitions`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage.database import dialect_of
from ariane.storage.definitions import delete, every, get, save
from ariane.storage.tables import channels, messaging_policies, templates

POLICIES = "policies"
LINK_SECRET = "link-secret"


def save_channel(
    conn: Connection, name: str, kind: str, definition: Mapping[str, Any], now: datetime
) -> tuple[str, int]:
    return save(conn, channels, name, definition, now, type=kind)


def every_channel(conn: Connection) -> list[dict[str, Any]]:
    return every(conn, channels)


def get_channel(conn: Connection, name: str) -> dict[str, Any] | None:
    return get(conn, channels, name)


def delete_channel(conn: Connection, name: str) -> bool:
    return delete(conn, channels, name)


def save_template(
    conn: Connection, name: str, definition: Mapping[str, Any], now: datetime
) -> tuple[str, int]:
    return save(conn, templates, name, definition, now)


def every_template(conn: Connection) -> list[dict[str, Any]]:
    return every(conn, templates)


def get_template(conn: Connection, name: str) -> dict[str, Any] | None:
    return get(conn, templates, name)


def delete_template(conn: Connection, name: str) -> bool:
    return delete(conn, templates, name)


def policies(conn: Connection) -> dict[str, Any]:
    row = conn.execute(
        sa.select(messaging_policies.c.definition).where(messaging_policies.c.name == POLICIES)
    ).first()
    return {} if row is None else dict(row.definition)


def save_policies(conn: Connection, definition: Mapping[str, Any], now: datetime) -> None:
    table = messaging_policies
    updated = conn.execute(
        table.update()
        .where(table.c.name == POLICIES)
        .values(definition=dict(definition), updated_at=now)
    ).rowcount
    if not updated:
        conn.execute(
            table.insert().values(name=POLICIES, definition=dict(definition), updated_at=now)
        )


def link_secret(conn: Connection, made: str, now: datetime) -> str:
    """The secret that signs the links in messages: `made` if none was kept before."""
    table = messaging_policies
    query = sa.select(table.c.definition).where(table.c.name == LINK_SECRET)
    row = conn.execute(query).first()
    if row is None:
        dialect_of(conn).insert_ignoring_conflicts(
            conn, table, [{"name": LINK_SECRET, "definition": {"secret": made}, "updated_at": now}]
        )
        row = conn.execute(query).one()
    return str(row.definition["secret"])
