"""Find, export and erase every row about one person, table by table, from `PERSONAL_DATA`.

A person is their live profile, the stubs of the profiles it absorbed, and the
identifiers it holds. A row belongs to them when any column that holds a profile id
names one of their profiles, or, in tables linked by identifiers (quarantined events
never reached a profile; identity decisions name an identifier), when it carries one
of their identifiers. A quarantined event is also theirs when its text holds one of
their identifier values: a line that was not JSON names no identifier Ariane could read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage import profiles as profile_store
from ariane.storage.database import RetryTransaction, dialect_of
from ariane.storage.tables import (
    PERSONAL_DATA,
    erasure_receipts,
    identities,
    metadata,
    profiles,
    quarantine,
)

T = TypeVar("T")

# Columns of a table that may hold a profile id, besides the one PERSONAL_DATA names.
_ALSO_PROFILE_IDS = ("absorbed_id", "merged_into")


@dataclass(frozen=True, slots=True)
class Person:
    profile_ids: list[str]
    identifiers: list[tuple[str, str]]


def profile_id_columns(table: sa.Table) -> list[sa.Column[Any]]:
    """Every column of `table` that holds a profile id."""
    named = PERSONAL_DATA.get(table.name, {}).get("profile_column")
    return [
        column
        for column in table.columns
        if column.name == named or "profile" in column.name or column.name in _ALSO_PROFILE_IDS
    ]


def find_person(conn: Connection, profile_id: str, *, lock: bool = False) -> Person:
    """The profiles and identifiers that make up one person.

    To erase, pass `lock`: the profile row is locked against concurrent ingestion, and a
    profile merged away since it was resolved means a concurrent merge won the race, so
    the transaction starts again.
    """
    if lock:
        query = sa.select(profiles.c.merged_into).where(profiles.c.id == profile_id)
        row = conn.execute(dialect_of(conn).lock_rows(query)).first()
        if row is None or row.merged_into is not None:
            raise RetryTransaction(f"profile {profile_id} was merged or erased meanwhile")
    absorbed = profile_store.absorbed_by(conn, profile_id)
    held = conn.execute(
        sa.select(identities.c.type, identities.c.value)
        .where(identities.c.profile_id == profile_id)
        .order_by(identities.c.type, identities.c.value)
    )
    return Person([profile_id, *absorbed], [(t, v) for t, v in held])


# Values bound in one statement: a person may be named by many quarantined events or hold
# many anonymous ids, and PostgreSQL takes at most 65,535 parameters a statement.
_CHUNK = 2000


def _chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[start : start + _CHUNK] for start in range(0, len(items), _CHUNK)]


def _named_in(conn: Connection, links: sa.Table, owner: str, person: Person) -> list[int]:
    """Ids of the `owner` rows whose links name one of the person's identifiers."""
    found: set[int] = set()
    pair = sa.tuple_(links.c.type, links.c.value)
    for chunk in _chunks(person.identifiers):
        query = sa.select(links.c[f"{owner}_id"]).where(pair.in_(chunk))
        found.update(conn.execute(query).scalars())
    return sorted(found)


# Values looked for at once in quarantined events' text: each is a LIKE of its own, and
# SQLite parses at most 1,000 levels of OR.
_SEARCHED_AT_ONCE = 100


def _as_in_json(value: str) -> str:
    # As the value stands in JSON text: a quote or a backslash is escaped.
    return orjson.dumps(value).decode()[1:-1]


def _mention(identifiers: Sequence[tuple[str, str]]) -> re.Pattern[str]:
    """A value standing on its own in text: not part of a longer id or word (`ada-1` is
    not in `ada-10`, nor `42` in `12:00:42.5`), though a full stop may end it. Emails in
    any case, as they are compared; other values as held."""
    either = "|".join(
        f"(?i:{re.escape(value)})" if id_type == "email" else re.escape(value)
        for id_type, value in identifiers
    )
    return re.compile(rf"(?<![\w@+-])(?<!\w\.)(?:{either})(?![\w@+-])(?!\.\w)")


def _mentioned_in_quarantine(conn: Connection, person: Person) -> list[int]:
    """Ids of the quarantined events whose text holds one of the person's identifiers."""
    text = quarantine.c.payload
    found: set[int] = set()
    for start in range(0, len(person.identifiers), _SEARCHED_AT_ONCE):
        chunk = [
            (id_type, _as_in_json(value))
            for id_type, value in person.identifiers[start : start + _SEARCHED_AT_ONCE]
        ]
        # LIKE narrows down the rows in the database (a whole scan, as erasures are
        # rare); the pattern decides.
        near = sa.or_(
            *(sa.func.lower(text).contains(value.lower(), autoescape=True) for _, value in chunk)
        )
        mention = _mention(chunk)
        for row_id, payload in conn.execute(sa.select(quarantine.c.id, text).where(near)):
            if mention.search(payload):
                found.add(row_id)
    return sorted(found)


def _conditions(
    conn: Connection, person: Person, *, erasing: bool
) -> dict[str, list[sa.ColumnElement[bool]]]:
    """For each table of personal data, conditions that together select the person's rows.

    Rows found through the identifiers they name are listed before anything is deleted,
    so that erasing the links cannot hide the rows they lead to, whatever the order.
    """
    named_in = {
        name: _named_in(conn, metadata.tables[link["identified_by"]], name, person)
        for name, link in PERSONAL_DATA.items()
        if "identified_by" in link
    }
    named_in[quarantine.name] = sorted(
        set(named_in[quarantine.name]).union(_mentioned_in_quarantine(conn, person))
    )
    conditions: dict[str, list[sa.ColumnElement[bool]]] = {}
    for name, link in PERSONAL_DATA.items():
        table = metadata.tables[name]
        found: list[sa.ColumnElement[bool]] = []
        if "identified_by" in link:
            found += [table.c.id.in_(chunk) for chunk in _chunks(named_in[name])]
        if "part_of" in link and erasing:
            # Erasing a row takes all of its links, whoever else they name.
            owner_id = table.c[f"{link['part_of']}_id"]
            found += [owner_id.in_(chunk) for chunk in _chunks(named_in[link["part_of"]])]
        elif "part_of" in link:
            # An export shows the person's own links, not the others a shared row names.
            pair = sa.tuple_(table.c.type, table.c.value)
            found += [pair.in_(chunk) for chunk in _chunks(person.identifiers)]
        if "profile_column" in link:
            found += [
                sa.or_(*(column.in_(chunk) for column in profile_id_columns(table)))
                for chunk in _chunks(person.profile_ids)
            ]
        if {"identifier_type", "identifier_value"} <= set(table.c.keys()):
            pair = sa.tuple_(table.c.identifier_type, table.c.identifier_value)
            found += [pair.in_(chunk) for chunk in _chunks(person.identifiers)]
        conditions[name] = found
    return conditions


def _decoded(item: dict[str, Any]) -> dict[str, Any]:
    # Quarantined payloads are kept as JSON text (whatever was received, even if it is
    # not a valid event); the export shows them as JSON.
    if isinstance(item.get("payload"), str):
        item["payload"] = orjson.loads(item["payload"])
    return item


def export(conn: Connection, person: Person) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for name, conditions in _conditions(conn, person, erasing=False).items():
        table = metadata.tables[name]
        key = table.primary_key.columns
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for condition in conditions:
            for row in conn.execute(sa.select(table).where(condition)):
                rows[tuple(row._mapping[c.name] for c in key)] = _decoded(dict(row._mapping))
        found[name] = [rows[k] for k in sorted(rows)]
    return found


def erase(conn: Connection, person: Person) -> dict[str, int]:
    """Delete every row about the person; the number deleted per table."""
    # No segment change of theirs may be applied meanwhile: it would write back the
    # memberships and history this deletes (`storage.segments.catch_up`).
    dialect_of(conn).hold_projection(conn)
    counts: dict[str, int] = {}
    for name, conditions in _conditions(conn, person, erasing=True).items():
        table = metadata.tables[name]
        counts[name] = sum(
            conn.execute(table.delete().where(condition)).rowcount for condition in conditions
        )
    return counts


def keep_receipt(conn: Connection, receipt: dict[str, Any]) -> None:
    """Keep the receipt of an erasure (no profile id, no identifier)."""
    conn.execute(erasure_receipts.insert().values(**receipt))
