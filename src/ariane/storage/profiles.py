"""Profiles, identities and merges: the rows behind identity resolution."""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.conditions import Node
from ariane.domain.identity import Identifier, Merge
from ariane.domain.profiles import ProfileState, search_key
from ariane.storage import journeys as journey_store
from ariane.storage import loyalty as loyalty_store
from ariane.storage import segment_sql
from ariane.storage import segments as segment_store
from ariane.storage.database import RetryTransaction, dialect_of
from ariane.storage.dialect import chunked
from ariane.storage.tables import (
    PERSONAL_DATA,
    identities,
    identity_decisions,
    merges,
    metadata,
    profiles,
    segment_members,
)

_CHUNK = 400


def find_owners(conn: Connection, keys: Collection[tuple[str, str]]) -> list[tuple[str, str, str]]:
    dialect = dialect_of(conn)
    wanted = set(keys)
    columns = (identities.c.type, identities.c.value, identities.c.profile_id)
    rows: list[tuple[str, str, str]] = []
    for chunk in chunked(sorted({value for _, value in wanted}), _CHUNK):
        query = dialect.probe(columns, identities.c.value, chunk)
        rows.extend((t, v, p) for t, v, p in conn.execute(query) if (t, v) in wanted)
    return rows


def held_identifiers(
    conn: Connection, profile_ids: Collection[str], types: Collection[str]
) -> list[tuple[str, str, str]]:
    dialect = dialect_of(conn)
    if not types or not profile_ids:
        return []
    columns = (identities.c.type, identities.c.value, identities.c.profile_id)
    rows: list[tuple[str, str, str]] = []
    for chunk in chunked(sorted(profile_ids), _CHUNK):
        query = dialect.probe(
            columns, identities.c.profile_id, chunk, identities.c.type.in_(sorted(types))
        )
        rows.extend((t, v, p) for t, v, p in conn.execute(query))
    return rows


def lock_profiles(conn: Connection, profile_ids: Collection[str]) -> dict[str, ProfileState]:
    """Load live profiles for update, in id order so that concurrent writers never deadlock.

    A profile merged away since its identifiers were read means another transaction won
    the race: start again.
    """
    dialect = dialect_of(conn)
    states: dict[str, ProfileState] = {}
    for chunk in chunked(sorted(profile_ids), _CHUNK):
        query = dialect.lock_rows(
            sa.select(
                profiles.c.id,
                profiles.c.merged_into,
                profiles.c.traits,
                profiles.c.computed,
                profiles.c.first_seen,
                profiles.c.last_seen,
            )
            .where(profiles.c.id.in_(chunk))
            .order_by(profiles.c.id)
        )
        for row in conn.execute(query):
            if row.merged_into is not None:
                raise RetryTransaction(f"profile {row.id} was merged meanwhile")
            states[row.id] = ProfileState(
                row.id, row.traits, row.computed, row.first_seen, row.last_seen
            )
    if len(states) != len(profile_ids):
        raise RetryTransaction("a profile disappeared meanwhile")
    return states


def _profile_row(state: ProfileState, now: datetime) -> dict[str, Any]:
    search_name, search_email = state.search_keys()
    return {
        "id": state.id,
        "traits": state.traits,
        "computed": state.computed,
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "search_name": search_name,
        "search_email": search_email,
        "updated_at": now,
    }


def insert_profiles(
    conn: Connection,
    states: Iterable[ProfileState],
    now: datetime,
    dues: Mapping[str, datetime | None] | None = None,
) -> None:
    """New profiles, each with its timer from `dues` (see `update_profiles`), if any."""
    dialect = dialect_of(conn)
    dues = dues or {}
    rows = [{**_profile_row(s, now), "created_at": now, "due_at": dues.get(s.id)} for s in states]
    if dialect.insert_ignoring_conflicts(conn, profiles, rows) != len(rows):
        raise RetryTransaction("a new profile id was taken meanwhile")


def update_profiles(
    conn: Connection,
    states: Iterable[ProfileState],
    now: datetime,
    dues: Mapping[str, datetime | None] | None = None,
) -> None:
    """Write `states`. `dues` holds the profiles whose timer moved: when time alone may
    next change their segments, or None for never. The others keep theirs, and their
    rows leave it out: written unchanged, SQLite would still rewrite its index entry."""
    dialect = dialect_of(conn)
    dues = dues or {}
    kept, moved = [], []
    for state in states:
        row = _profile_row(state, now)
        if state.id in dues:
            row["due_at"] = dues[state.id]
            moved.append(row)
        else:
            kept.append(row)
    dialect.update_many(conn, profiles, "id", kept)
    dialect.update_many(conn, profiles, "id", moved)


def claim_due(conn: Connection, now: datetime, limit: int) -> list[str]:
    """Profiles whose timer is due, locked; on PostgreSQL rows another transaction holds
    are skipped, so that a timer is never waited for and fires once. SQLite renders no
    FOR UPDATE: its single writer already serialises this."""
    query = (
        sa.select(profiles.c.id)
        .where(profiles.c.due_at <= now)
        .order_by(profiles.c.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(conn.execute(query).scalars())


def insert_identities(
    conn: Connection,
    rows: Sequence[tuple[Identifier, str, str]],
    now: datetime,
) -> None:
    """Claim new identifiers. One already claimed by a concurrent writer means a lost race."""
    dialect = dialect_of(conn)
    if not rows:
        return
    params = [
        {
            "type": ident.type,
            "value": ident.value,
            "profile_id": profile_id,
            "source_id": source_id,
            "created_at": now,
        }
        # In key order, so that concurrent writers wait for each other instead of deadlocking.
        for ident, profile_id, source_id in sorted(rows, key=lambda r: (r[0].value, r[0].type))
    ]
    if dialect.insert_ignoring_conflicts(conn, identities, params) != len(params):
        raise RetryTransaction("an identifier was claimed by another writer meanwhile")


def _profile_tables(on_merge: str) -> list[sa.Column[Any]]:
    columns = []
    for name, link in PERSONAL_DATA.items():
        column = link.get("profile_column")
        if column and name != "profiles" and link.get("on_merge", "move") == on_merge:
            columns.append(metadata.tables[name].c[column])
    return columns


def record_merge(
    conn: Connection,
    merge: Merge,
    reason: str,
    message_id: str | None,
    now: datetime,
) -> None:
    """Move everything of the absorbed profile to the survivor, keeping the old id alive.

    The absorbed profile keeps no traits or counters of its own, so that nothing it held
    can be counted twice; its id leads to the survivor (`merged_into`), also for the ids
    it had absorbed before.
    """
    # Memberships move as they stand: the changes recorded for either are applied first.
    segment_store.catch_up(conn, {merge.absorbed, merge.survivor})
    loyalty_store.merge_accounts(conn, merge.absorbed, merge.survivor, now)
    journey_store.merge_enrollments(conn, merge.absorbed, merge.survivor, now)
    moved = conn.execute(
        identities.update()
        .where(identities.c.profile_id == merge.absorbed)
        .values(profile_id=merge.survivor)
        .returning(identities.c.type, identities.c.value)
    ).all()
    for column in _profile_tables("move"):
        if column.table is not identities:
            conn.execute(
                column.table.update()
                .where(column == merge.absorbed)
                .values({column.name: merge.survivor})
            )
    segment_store.inherit_memberships(conn, merge.absorbed, merge.survivor)
    for column in _profile_tables("drop"):
        conn.execute(column.table.delete().where(column == merge.absorbed))
    conn.execute(
        profiles.update()
        .where(profiles.c.merged_into == merge.absorbed)
        .values(merged_into=merge.survivor)
    )
    conn.execute(
        profiles.update()
        .where(profiles.c.id == merge.absorbed)
        .values(
            merged_into=merge.survivor,
            traits={},
            computed={},
            due_at=None,
            search_name=None,
            search_email=None,
            updated_at=now,
        )
    )
    known = {(t, v) for t, v in moved} | {i.key for i in merge.identifiers}
    conn.execute(
        merges.insert().values(
            profile_id=merge.survivor,
            absorbed_id=merge.absorbed,
            reason=reason,
            identifiers=[{"type": t, "value": v} for t, v in sorted(known)],
            message_id=message_id,
            at=now,
        )
    )


def record_decisions(
    conn: Connection,
    dropped: Iterable[tuple[str, Identifier, str, str | None]],
    now: datetime,
) -> None:
    """Record identifiers left out of the identity graph, once per batch for each profile,
    identifier and reason (a shared device repeats the same refusal on every event)."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for profile_id, ident, reason, message_id in dropped:
        rows.setdefault(
            (profile_id, ident.type, ident.value, reason),
            {
                "profile_id": profile_id,
                "identifier_type": ident.type,
                "identifier_value": ident.value,
                "decision": "dropped",
                "reason": reason,
                "message_id": message_id,
                "at": now,
            },
        )
    if rows:
        conn.execute(identity_decisions.insert(), list(rows.values()))


def resolve_profile_ids(conn: Connection, profile_ids: Iterable[str]) -> dict[str, str | None]:
    """`resolve_profile_id` of each, in one statement."""
    wanted = sorted(set(profile_ids))
    c = profiles.c
    found = {
        str(row.id): str(row.merged_into or row.id)
        for row in conn.execute(sa.select(c.id, c.merged_into).where(c.id.in_(wanted)))
    }
    return {profile_id: found.get(profile_id) for profile_id in wanted}


# Run by every movement of points: built once, the id bound as it runs.
_PROFILE = sa.select(profiles.c.id, profiles.c.merged_into).where(
    profiles.c.id == sa.bindparam("profile_id")
)


def resolve_profile_id(conn: Connection, profile_id: str) -> str | None:
    """Follow an absorbed id to the profile that absorbed it."""
    row = conn.execute(_PROFILE, {"profile_id": profile_id}).first()
    if row is None:
        return None
    return str(row.merged_into or row.id)


def search(
    conn: Connection,
    *,
    limit: int,
    after: str | None = None,
    segment_id: str | None = None,
    condition: Node | None = None,
    prefix: str | None = None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Live profiles in id order, from after the id `after`: the members of a segment,
    those meeting a condition on traits, and those holding an identifier that starts
    with `prefix` or whose name or email search key (`ProfileState.search_keys`) starts
    with its key, as asked; all of them, when nothing is."""
    dialect = dialect_of(conn)
    c = profiles.c
    query = sa.select(c.id, c.traits, c.first_seen, c.last_seen, c.created_at).where(
        c.merged_into.is_(None)
    )
    order: sa.ColumnElement[str] = c.id
    if after is not None:
        query = query.where(c.id > after)
    if segment_id is not None:
        member = segment_members.c
        query = query.join(
            segment_members, sa.and_(member.profile_id == c.id, member.segment_id == segment_id)
        )
        # In the key of the memberships (segment, profile): SQLite otherwise reads every
        # member to sort them.
        order = member.profile_id
        if after is not None:
            query = query.where(member.profile_id > after)
    if condition is not None:
        query = query.where(segment_sql.condition_sql(condition, dialect, now=now, computed={}))
    if prefix is not None:
        if _held_by_many(conn, prefix):
            query = query.where(_starts_with(c, prefix))
        else:
            query = query.where(c.id.in_(_starting_with(prefix)))
    query = query.order_by(order).limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]


# Past this many texts starting with a prefix, walking the profiles in id order finds a
# page sooner than gathering every profile that holds one and sorting them: with each
# candidate at least 1 in 100 profiles of a million, a page of 50 comes within about
# 5,000 of them, while a thousand times that many candidates would each be looked up.
_MANY = 10_000


def _held_by_many(conn: Connection, prefix: str) -> bool:
    """Whether identifiers, names and emails start with `prefix` by the thousand."""
    named = profiles.alias("named")
    key = search_key(prefix)
    ranges: list[tuple[sa.FromClause, list[sa.ColumnElement[bool]]]] = [
        (identities, _in_range(identities.c.value, prefix))
    ]
    if key is not None:
        ranges += [
            (named, _in_range(named.c.search_name, key)),
            (named, _in_range(named.c.search_email, key)),
        ]
    found = 0
    for table, bounds in ranges:
        some = sa.select(sa.literal(1)).select_from(table).where(*bounds).limit(_MANY - found)
        found += conn.execute(sa.select(sa.func.count()).select_from(some.subquery())).scalar_one()
        if found >= _MANY:
            return True
    return False


def _starting_with(prefix: str) -> sa.CompoundSelect[str]:
    """The ids of the profiles holding an identifier that starts with `prefix`, or whose
    name or email starts with it, without case: each a range of an index."""
    named = profiles.alias("named")
    key = search_key(prefix)
    found = [sa.select(identities.c.profile_id).where(*_in_range(identities.c.value, prefix))]
    if key is not None:
        found += [
            sa.select(named.c.id).where(*_in_range(named.c.search_name, key)),
            sa.select(named.c.id).where(*_in_range(named.c.search_email, key)),
        ]
    return sa.union(*found)


def _starts_with(row: Any, prefix: str) -> sa.ColumnElement[bool]:
    """`_starting_with` as a test of one profile: its identifiers, name and email."""
    key = search_key(prefix)
    held = sa.exists().where(
        identities.c.profile_id == row.id, *_in_range(identities.c.value, prefix)
    )
    if key is None:
        return held
    return sa.or_(
        sa.and_(*_in_range(row.search_name, key)),
        sa.and_(*_in_range(row.search_email, key)),
        held,
    )


def _in_range(column: sa.ColumnElement[str], prefix: str) -> list[sa.ColumnElement[bool]]:
    """`column` starts with `prefix`, as a range: the column is in code order on both
    databases (`tables.code_ordered`), where the texts that start with a prefix are those
    from the prefix itself up to, not including, the first text after all of them."""
    bounds = [column >= prefix]
    beyond = _after_all_starting_with(prefix)
    if beyond is not None:
        bounds.append(column < beyond)
    return bounds


def _after_all_starting_with(prefix: str) -> str | None:
    """The least text greater than every text that starts with `prefix`, in code order:
    its last character moved one code up (past the surrogates, which no stored text
    holds); None when every character is the last one."""
    codes = [ord(char) for char in prefix]
    while codes:
        last = codes.pop() + 1
        if 0xD800 <= last <= 0xDFFF:
            last = 0xE000
        if last <= sys.maxunicode:
            return "".join(map(chr, codes)) + chr(last)
    return None


def identifiers_of(
    conn: Connection,
    profile_ids: Collection[str],
    *,
    per_type: int,
    types: Collection[str] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """For each profile, its identifiers by type (of `types` only, if given): the first
    `per_type` it held of each."""
    dialect = dialect_of(conn)
    columns = (
        identities.c.profile_id,
        identities.c.type,
        identities.c.value,
        identities.c.created_at,
    )
    wanted = [] if types is None else [identities.c.type.in_(sorted(types))]
    rows: list[tuple[str, str, str, datetime]] = []
    for chunk in chunked(sorted(profile_ids), _CHUNK):
        query = dialect.probe(columns, identities.c.profile_id, chunk, *wanted)
        rows.extend((p, t, v, at) for p, t, v, at in conn.execute(query))
    held: dict[str, dict[str, list[str]]] = {profile_id: {} for profile_id in profile_ids}
    for profile_id, id_type, value, _ in sorted(rows, key=lambda r: (r[0], r[1], r[3], r[2])):
        values = held[profile_id].setdefault(id_type, [])
        if len(values) < per_type:
            values.append(value)
    return held


def read_profiles(conn: Connection, profile_ids: Collection[str]) -> dict[str, ProfileState]:
    """The live profiles among `profile_ids`, as they are, unlocked."""
    states: dict[str, ProfileState] = {}
    for chunk in chunked(sorted(profile_ids), _CHUNK):
        query = sa.select(
            profiles.c.id,
            profiles.c.traits,
            profiles.c.computed,
            profiles.c.first_seen,
            profiles.c.last_seen,
        ).where(profiles.c.id.in_(chunk), profiles.c.merged_into.is_(None))
        for row in conn.execute(query):
            states[row.id] = ProfileState(
                row.id, row.traits, row.computed, row.first_seen, row.last_seen
            )
    return states


def computed_of(conn: Connection, profile_id: str) -> dict[str, Any] | None:
    """The computed values of a profile, or None if there is no such profile."""
    found: dict[str, Any] | None = conn.execute(
        sa.select(profiles.c.computed).where(profiles.c.id == profile_id)
    ).scalar()
    return found


def profile_row(conn: Connection, profile_id: str) -> Any:
    """The row of a profile that exists."""
    return conn.execute(sa.select(profiles).where(profiles.c.id == profile_id)).one()


def identities_listed(conn: Connection, profile_id: str) -> list[tuple[str, str, datetime]]:
    """Every identifier a profile holds, as (type, value, first seen), by type then age."""
    c = identities.c
    rows = conn.execute(
        sa.select(c.type, c.value, c.created_at)
        .where(c.profile_id == profile_id)
        .order_by(c.type, c.created_at, c.value)
    )
    return [(t, v, at) for t, v, at in rows]


def absorbed_by(conn: Connection, profile_id: str) -> list[str]:
    """The profiles merged straight into this one, in id order."""
    query = sa.select(profiles.c.id).where(profiles.c.merged_into == profile_id)
    query = query.order_by(profiles.c.id)
    return list(conn.execute(query).scalars())


def live_ids(conn: Connection, *, after: str | None, limit: int) -> list[str]:
    """Up to `limit` ids of profiles not merged away, in id order, after `after`."""
    query = sa.select(profiles.c.id).where(profiles.c.merged_into.is_(None))
    if after is not None:
        query = query.where(profiles.c.id > after)
    return list(conn.execute(query.order_by(profiles.c.id).limit(limit)).scalars())


def type_in_use(conn: Connection, id_type: str) -> bool:
    """Whether any profile holds an identifier of the type. No index leads with the type:
    where none does, every identifier is read."""
    query = sa.select(identities.c.profile_id).where(identities.c.type == id_type).limit(1)
    return conn.execute(query).first() is not None
