"""The rows of a segment's export: its members with their traits, a page at a time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.storage.database import dialect_of
from ariane.storage.tables import profiles, segment_members

# The kinds `trait_kinds` tells apart; a null or a missing value is none of them.
KINDS = ("string", "boolean", "whole", "real", "nested")
_INT64 = (-(2**63), 2**63 - 1)


def members_page(
    conn: Connection, segment_id: str, keys: Sequence[str], *, limit: int, after: str | None
) -> list[tuple[str, datetime, list[Any]]]:
    """Members in profile id order after `after`, each with the cell (value, time and
    source) of each trait of `keys`, None where the profile has none."""
    cells = [profiles.c.traits[key] for key in keys]
    query = (
        sa.select(segment_members.c.profile_id, segment_members.c.entered_at, *cells)
        .join(profiles, profiles.c.id == segment_members.c.profile_id)
        .where(segment_members.c.segment_id == segment_id)
    )
    if after is not None:
        query = query.where(segment_members.c.profile_id > after)
    query = query.order_by(segment_members.c.profile_id).limit(limit)
    return [(str(row[0]), row[1], list(row[2:])) for row in conn.execute(query)]


def trait_kinds(
    conn: Connection, segment_id: str, paths: Sequence[Sequence[str]]
) -> list[set[str]]:
    """For each trait path (`address.city` is ("address", "city")), the kinds of value
    the members hold there: text (`string`), booleans, whole numbers within 64 bits
    (`whole`), other numbers (`real`), objects or arrays (`nested`)."""
    dialect = dialect_of(conn)
    if not paths:
        return []
    doc = profiles.c.traits
    columns: list[sa.ColumnElement[Any]] = []
    for path in paths:
        parts = (path[0], "value", *path[1:])
        number = dialect.json_number(doc, parts)
        # Range first: PostgreSQL refuses to cast a number beyond 64 bits.
        whole = sa.case(
            (
                number.between(dialect.number(_INT64[0]), dialect.number(_INT64[1])),
                sa.cast(number, sa.BigInteger) == number,
            ),
            else_=sa.false(),
        )
        tests = {
            "string": dialect.json_is(doc, parts, "string"),
            "boolean": dialect.json_is(doc, parts, "boolean"),
            "whole": whole,
            "real": sa.and_(dialect.json_is(doc, parts, "number"), sa.not_(whole)),
            "nested": sa.or_(
                dialect.json_is(doc, parts, "object"), dialect.json_is(doc, parts, "array")
            ),
        }
        columns += [sa.func.max(sa.case((tests[kind], 1), else_=0)) for kind in KINDS]
    query = (
        sa.select(*columns)
        .select_from(segment_members)
        .join(profiles, profiles.c.id == segment_members.c.profile_id)
        .where(segment_members.c.segment_id == segment_id)
    )
    found = conn.execute(query).one()
    width = len(KINDS)
    return [
        {kind for kind, seen in zip(KINDS, found[i * width : (i + 1) * width], strict=True) if seen}
        for i in range(len(paths))
    ]
