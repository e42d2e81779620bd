"""Find, export and erase every row about one person, table by table, from `PERSONAL_DATA`."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage.tables import PERSONAL_DATA, identities, metadata, profiles


def _conditions(conn: Connection, profile_id: str) -> dict[str, sa.ColumnElement[bool]]:
    absorbed = list(
        conn.execute(sa.select(profiles.c.id).where(profiles.c.merged_into == profile_id)).scalars()
    )
    held: dict[str, list[str]] = {}
    for id_type, value in conn.execute(
        sa.select(identities.c.type, identities.c.value).where(
            identities.c.profile_id == profile_id
        )
    ):
        held.setdefault(id_type, []).append(value)

    conditions: dict[str, sa.ColumnElement[bool]] = {}
    for name, link in PERSONAL_DATA.items():
        table = metadata.tables[name]
        if "profile_column" in link:
            column = table.c[link["profile_column"]]
            conditions[name] = (
                column.in_([profile_id, *absorbed]) if name == "profiles" else column == profile_id
            )
        else:
            clauses = []
            for pair in link["identifier_columns"].split(","):
                column_name, id_type = pair.split(":")
                if held.get(id_type):
                    clauses.append(table.c[column_name].in_(held[id_type]))
            conditions[name] = sa.or_(*clauses) if clauses else sa.false()
    return conditions


def export(conn: Connection, profile_id: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for name, condition in _conditions(conn, profile_id).items():
        table = metadata.tables[name]
        rows = []
        for row in conn.execute(sa.select(table).where(condition)):
            item = dict(row._mapping)
            if name == "quarantine":
                item["payload"] = orjson.loads(item["payload"])
            rows.append(item)
        found[name] = rows
    return found


def erase(conn: Connection, profile_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    # Identities last: quarantined rows are found through them.
    conditions = _conditions(conn, profile_id)
    for name in sorted(conditions, key=lambda n: n == "identities"):
        table = metadata.tables[name]
        counts[name] = conn.execute(table.delete().where(conditions[name])).rowcount
    return counts
