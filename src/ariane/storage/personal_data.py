"""Find, export and erase every row about one person, table by table, from `PERSONAL_DATA`.

A person is their live profile, the stubs of the profiles it absorbed, and the
identifiers it holds. A row belongs to them when any column that holds a profile id
names one of their profiles, or, in tables linked by identifiers (quarantined events
never reached a profile; identity decisions name an identifier), when it carries one
of their identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage.database import Dialect, RetryTransaction
from ariane.storage.tables import PERSONAL_DATA, identities, metadata, profiles

# Columns of a table that may hold a profile id, besides the one PERSONAL_DATA names.
_ALSO_PROFILE_IDS = ("absorbed_id", "merged_into")


@dataclass(frozen=True, slots=True)
class Person:
    profile_ids: list[str]
    identifiers: list[tuple[str, str]]

    def values_of(self, id_type: str) -> list[str]:
        return [value for kind, value in self.identifiers if kind == id_type]


def profile_id_columns(table: sa.Table) -> list[sa.Column[Any]]:
    """Every column of `table` that holds a profile id."""
    named = PERSONAL_DATA.get(table.name, {}).get("profile_column")
    return [
        column
        for column in table.columns
        if column.name == named or "profile" in column.name or column.name in _ALSO_PROFILE_IDS
    ]


def find_person(conn: Connection, profile_id: str, *, lock: Dialect | None = None) -> Person:
    """The profiles and identifiers that make up one person.

    To erase, pass the dialect as `lock`: the profile row is locked against concurrent
    ingestion, and a profile merged away since it was resolved means a concurrent merge
    won the race, so the transaction starts again.
    """
    if lock is not None:
        row = conn.execute(
            lock.lock_rows(sa.select(profiles.c.merged_into).where(profiles.c.id == profile_id))
        ).first()
        if row is None or row.merged_into is not None:
            raise RetryTransaction(f"profile {profile_id} was merged or erased meanwhile")
    absorbed = conn.execute(
        sa.select(profiles.c.id).where(profiles.c.merged_into == profile_id).order_by(profiles.c.id)
    ).scalars()
    held = conn.execute(
        sa.select(identities.c.type, identities.c.value)
        .where(identities.c.profile_id == profile_id)
        .order_by(identities.c.type, identities.c.value)
    )
    return Person([profile_id, *absorbed], [(t, v) for t, v in held])


def _condition(
    table: sa.Table, link: dict[str, str], person: Person, named_in: dict[str, list[int]]
) -> sa.ColumnElement[bool]:
    clauses: list[sa.ColumnElement[bool]] = []
    if "identified_by" in link:
        clauses.append(table.c.id.in_(named_in[table.name]))
    if "part_of" in link:
        clauses.append(table.c[f"{link['part_of']}_id"].in_(named_in[link["part_of"]]))
    if "profile_column" in link:
        clauses.extend(column.in_(person.profile_ids) for column in profile_id_columns(table))
    for pair in filter(None, link.get("identifier_columns", "").split(",")):
        column_name, id_type = pair.split(":")
        if values := person.values_of(id_type):
            clauses.append(table.c[column_name].in_(values))
    if {"identifier_type", "identifier_value"} <= set(table.c.keys()) and person.identifiers:
        pair_column = sa.tuple_(table.c.identifier_type, table.c.identifier_value)
        clauses.append(pair_column.in_(person.identifiers))
    return sa.or_(*clauses) if clauses else sa.false()


def _conditions(conn: Connection, person: Person) -> dict[str, sa.ColumnElement[bool]]:
    # Rows found through the identifiers they name are listed before anything is deleted,
    # so that erasing the links cannot hide the rows they lead to, whatever the order.
    named_in: dict[str, list[int]] = {}
    for name, link in PERSONAL_DATA.items():
        if "identified_by" in link:
            names = metadata.tables[link["identified_by"]]
            named_in[name] = (
                list(
                    conn.execute(
                        sa.select(names.c[f"{name}_id"])
                        .where(sa.tuple_(names.c.type, names.c.value).in_(person.identifiers))
                        .distinct()
                    ).scalars()
                )
                if person.identifiers
                else []
            )
    return {
        name: _condition(metadata.tables[name], link, person, named_in)
        for name, link in PERSONAL_DATA.items()
    }


def _decoded(item: dict[str, Any]) -> dict[str, Any]:
    # Quarantined payloads are kept as JSON text (whatever was received, even if it is
    # not a valid event); the export shows them as JSON.
    if isinstance(item.get("payload"), str):
        item["payload"] = orjson.loads(item["payload"])
    return item


def export(conn: Connection, person: Person) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for name, condition in _conditions(conn, person).items():
        table = metadata.tables[name]
        query = sa.select(table).where(condition).order_by(*table.primary_key.columns)
        found[name] = [_decoded(dict(row._mapping)) for row in conn.execute(query)]
    return found


def erase(conn: Connection, person: Person) -> dict[str, int]:
    """Delete every row about the person; the number deleted per table."""
    counts: dict[str, int] = {}
    for name, condition in _conditions(conn, person).items():
        table = metadata.tables[name]
        counts[name] = conn.execute(table.delete().where(condition)).rowcount
    return counts
