"""Members' accounts, the ledger of their points, their lots and what each entry took."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.events import loyalty_event
from ariane.domain.loyalty import Lot
from ariane.domain.tiers import Standing
from ariane.storage import bus as bus_store
from ariane.storage.database import RetryTransaction, dialect_of
from ariane.storage.dialect import Dialect
from ariane.storage.tables import (
    loyalty_accounts,
    loyalty_entries,
    loyalty_lots,
    loyalty_movements,
    loyalty_purchases,
    profiles,
)

# The statements every movement runs are built once, their values bound as they run
# (`Dialect.kept`); the module's others are built as they are needed.


def _locked_account(dialect: Dialect) -> sa.Select[Any]:
    c = loyalty_accounts.c
    return dialect.lock_rows(
        sa.select(c.tier, c.tier_since, c.tier_below_since, c.tier_review_at).where(
            c.programme == sa.bindparam("programme"), c.profile_id == sa.bindparam("profile_id")
        )
    )


def lock_account(conn: Connection, programme: str, profile_id: str, now: datetime) -> Standing:
    """Lock the member's account until commit, making it if need be: the movements of
    one member's points happen one at a time (on SQLite the one writer does that). The
    account's tier as it stands."""
    dialect = dialect_of(conn)
    locked = dialect.kept(_locked_account)
    member = {"programme": programme, "profile_id": profile_id}
    row = conn.execute(locked, member).first()
    if row is None:
        # A new member; or one whose account a merge dropped while this waited for it,
        # whose movement runs again under the survivor (`ledger.begin_movement`).
        dialect.insert_ignoring_conflicts(
            conn,
            loyalty_accounts,
            [{"programme": programme, "profile_id": profile_id, "created_at": now}],
        )
        row = conn.execute(locked, member).first()
        if row is None:
            raise RetryTransaction(f"the account of {profile_id} went with a merge")
    return Standing(row.tier, row.tier_since, row.tier_below_since, row.tier_review_at, 0)


_LIVE = sa.select(profiles.c.merged_into).where(profiles.c.id == sa.bindparam("profile_id"))
_LIVE_AND_ENTRY = (
    sa.select(profiles.c.merged_into, *loyalty_entries.c)
    .select_from(
        profiles.outerjoin(
            loyalty_entries,
            sa.and_(
                loyalty_entries.c.idempotency_key == sa.bindparam("key"),
                loyalty_entries.c.programme == sa.bindparam("programme"),
            ),
        )
    )
    .where(profiles.c.id == sa.bindparam("profile_id"))
)


def still_live(
    conn: Connection, programme: str, profile_id: str, key: str | None
) -> tuple[bool, dict[str, Any] | None]:
    """Whether profile `profile_id` is still one of its own (not merged away nor gone),
    and the entry recorded under `key` if there is one: read in one statement, once the
    member's account is locked."""
    if key is None:
        row = conn.execute(_LIVE, {"profile_id": profile_id}).first()
        return row is not None and row.merged_into is None, None
    entries = loyalty_entries.c
    row = conn.execute(
        _LIVE_AND_ENTRY, {"profile_id": profile_id, "key": key, "programme": programme}
    ).first()
    if row is None or row.merged_into is not None:
        return False, None
    if row.id is None:
        return True, None
    return True, {column.name: row._mapping[column] for column in entries}


def entry_by_key(conn: Connection, programme: str, key: str) -> dict[str, Any] | None:
    entries = loyalty_entries.c
    row = conn.execute(
        sa.select(loyalty_entries).where(
            entries.idempotency_key == key, entries.programme == programme
        )
    ).first()
    return None if row is None else dict(row._mapping)


def entry(conn: Connection, entry_id: int) -> dict[str, Any]:
    row = conn.execute(sa.select(loyalty_entries).where(loyalty_entries.c.id == entry_id)).one()
    return dict(row._mapping)


def entries(
    conn: Connection, programme: str, profile_id: str, *, limit: int, before: int | None
) -> list[dict[str, Any]]:
    """The member's ledger, newest first, from before the entry `before` if given."""
    c = loyalty_entries.c
    query = (
        sa.select(c.id, c.kind, c.points, c.idempotency_key, c.reference, c.rule, c.at)
        .where(c.programme == programme, c.profile_id == profile_id)
        .order_by(c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(c.id < before)
    return [dict(row._mapping) for row in conn.execute(query)]


def _new_entry(dialect: Dialect) -> Any:
    return (
        dialect.insert_statement(loyalty_entries)
        .on_conflict_do_nothing()
        .returning(loyalty_entries.c.id)
    )


def insert_entry(conn: Connection, row: dict[str, Any]) -> int | None:
    """The new entry's id, or None when its idempotency key is taken already (by a
    concurrent movement of another member)."""
    dialect = dialect_of(conn)
    found: int | None = conn.execute(dialect.kept(_new_entry), row).scalar()
    return found


_LOTS = sa.select(
    loyalty_lots.c.id,
    loyalty_lots.c.points,
    loyalty_lots.c.remaining,
    loyalty_lots.c.earned_at,
    loyalty_lots.c.available_at,
    loyalty_lots.c.expires_at,
).where(
    loyalty_lots.c.programme == sa.bindparam("programme"),
    loyalty_lots.c.profile_id == sa.bindparam("profile_id"),
    loyalty_lots.c.remaining > 0,
)
_NEW_LOT = loyalty_lots.insert()
_NEW_MOVEMENT = loyalty_movements.insert()
_TAKE = (
    loyalty_lots.update()
    .where(loyalty_lots.c.id == sa.bindparam("lot"))
    .values(remaining=loyalty_lots.c.remaining - sa.bindparam("taken"))
)


def lots(conn: Connection, programme: str, profile_id: str) -> list[Lot]:
    """The member's lots with points left in them."""
    rows = conn.execute(_LOTS, {"programme": programme, "profile_id": profile_id})
    return [Lot(*row) for row in rows]


def insert_lot(conn: Connection, programme: str, profile_id: str, lot: Lot) -> None:
    conn.execute(
        _NEW_LOT,
        {
            "id": lot.id,
            "programme": programme,
            "profile_id": profile_id,
            "points": lot.points,
            "remaining": lot.remaining,
            "earned_at": lot.earned_at,
            "available_at": lot.available_at,
            "expires_at": lot.expires_at,
        },
    )


def take_from_lots(
    conn: Connection, entry_id: int, profile_id: str, taken: Sequence[tuple[int, int]]
) -> None:
    """Record what the entry takes from each lot, and take it."""
    if not taken:
        return
    conn.execute(
        _NEW_MOVEMENT,
        [
            {"entry_id": entry_id, "lot_id": lot_id, "profile_id": profile_id, "points": points}
            for lot_id, points in taken
        ],
    )
    conn.execute(_TAKE, [{"lot": lot_id, "taken": points} for lot_id, points in taken])


def discrepancies(
    conn: Connection, programme: str | None = None, profile_id: str | None = None
) -> list[tuple[str, str, str]]:
    """Where lots disagree with the ledger, as (programme, member, what): each lot's
    remainder must be its points less what entries took from it, and each member's
    ledger must sum to what their lots hold. Every member, or those of `programme` and
    `profile_id` when given."""
    lot, entry = loyalty_lots.c, loyalty_entries.c

    def scope(columns: Any) -> list[sa.ColumnElement[bool]]:
        found = []
        if programme is not None:
            found.append(columns.programme == programme)
        if profile_id is not None:
            found.append(columns.profile_id == profile_id)
        return found

    taken = (
        sa.select(
            loyalty_movements.c.lot_id, sa.func.sum(loyalty_movements.c.points).label("points")
        )
        .group_by(loyalty_movements.c.lot_id)
        .subquery()
    )
    moved = sa.func.coalesce(taken.c.points, 0)
    found = [
        (
            str(prog),
            str(member),
            f"lot {lot_id}: {left} left, but {points} earned less {took} taken",
        )
        for prog, member, lot_id, points, left, took in conn.execute(
            sa.select(lot.programme, lot.profile_id, lot.id, lot.points, lot.remaining, moved)
            .select_from(loyalty_lots.outerjoin(taken, taken.c.lot_id == lot.id))
            .where(lot.remaining != lot.points - moved, *scope(lot))
            .order_by(lot.programme, lot.profile_id, lot.id)
        )
    ]
    ledger = {
        (str(prog), str(member)): int(points)
        for prog, member, points in conn.execute(
            sa.select(entry.programme, entry.profile_id, sa.func.sum(entry.points))
            .where(*scope(entry))
            .group_by(entry.programme, entry.profile_id)
        )
    }
    held = {
        (str(prog), str(member)): int(points)
        for prog, member, points in conn.execute(
            sa.select(lot.programme, lot.profile_id, sa.func.sum(lot.remaining))
            .where(*scope(lot))
            .group_by(lot.programme, lot.profile_id)
        )
    }
    for key in sorted(ledger.keys() | held.keys()):
        if ledger.get(key, 0) != held.get(key, 0):
            found.append(
                (
                    *key,
                    f"the ledger sums to {ledger.get(key, 0)} points, the lots hold"
                    f" {held.get(key, 0)}",
                )
            )
    return found


# --- what movements did, for the bus ------------------------------------------------------


def add_event(
    conn: Connection, message_id: str, profile_id: str, message: dict[str, Any], now: datetime
) -> None:
    """Record what a movement did (a loyalty track message about the member), in the
    movement's transaction, for the bus to put on their timeline once it commits."""
    add_events(conn, [(message_id, profile_id, message, now)])


def add_events(
    conn: Connection, events: Sequence[tuple[str, str, dict[str, Any], datetime]]
) -> None:
    """`add_event` for each (message id, profile id, message, time), in their order."""
    bus_store.record(
        conn, [loyalty_event(message, profile_id) for _, profile_id, message, _ in events]
    )


def rule_uses(
    conn: Connection, programme: str, profile_id: str, rule: str, since: datetime | None
) -> int:
    """How many entries the earn rule gave the member, since `since` if given."""
    c = loyalty_entries.c
    query = sa.select(sa.func.count()).where(
        c.profile_id == profile_id,
        c.programme == programme,
        c.rule == rule,
        # What the rule gave (points earned, a reward granted); not a return's reversal.
        c.kind.in_(("earn", "spend")),
    )
    if since is not None:
        query = query.where(c.at > since)
    count: int = conn.execute(query).scalar_one()
    return count


# --- tiers ---------------------------------------------------------------------------------


def programmes_of(conn: Connection, profile_id: str) -> list[str]:
    """The programmes the person is a member of, by name."""
    query = (
        sa.select(loyalty_accounts.c.programme)
        .where(loyalty_accounts.c.profile_id == profile_id)
        .order_by(loyalty_accounts.c.programme)
    )
    return list(conn.execute(query).scalars())


def standing(conn: Connection, programme: str, profile_id: str) -> Standing:
    c = loyalty_accounts.c
    row = conn.execute(
        sa.select(c.tier, c.tier_since, c.tier_below_since, c.tier_review_at).where(
            c.programme == programme, c.profile_id == profile_id
        )
    ).first()
    if row is None:
        return Standing(None, None, None, None, 0)
    return Standing(row.tier, row.tier_since, row.tier_below_since, row.tier_review_at, 0)


def save_standing(conn: Connection, programme: str, profile_id: str, found: Standing) -> None:
    c = loyalty_accounts.c
    conn.execute(
        loyalty_accounts.update()
        .where(c.programme == programme, c.profile_id == profile_id)
        .values(
            tier=found.tier,
            tier_since=found.since,
            tier_below_since=found.below_since,
            tier_review_at=found.review_at,
        )
    )


def earned_entries(
    conn: Connection, programme: str, profile_id: str, since: datetime
) -> list[tuple[datetime, int]]:
    """What earns gave and returns took back since `since`: (time, signed points)."""
    c = loyalty_entries.c
    query = sa.select(c.at, c.points).where(
        c.profile_id == profile_id,
        c.programme == programme,
        c.kind.in_(("earn", "reverse")),
        c.at > since,
    )
    return [(at, int(points)) for at, points in conn.execute(query)]


def tiers_due(conn: Connection, now: datetime, limit: int) -> list[tuple[str, str]]:
    """Accounts whose tier is to be looked at again by `now`: (programme, member)."""
    c = loyalty_accounts.c
    query = (
        sa.select(c.programme, c.profile_id)
        .where(c.tier_review_at <= now)
        .order_by(c.tier_review_at)
        .limit(limit)
    )
    return [(str(programme), str(member)) for programme, member in conn.execute(query)]


# --- purchases and their returns -------------------------------------------------------------


def record_purchase(conn: Connection, row: dict[str, Any]) -> None:
    """What a purchase rule's earn entry was for (once: a replay records nothing more)."""
    dialect = dialect_of(conn)
    dialect.insert_ignoring_conflicts(conn, loyalty_purchases, [row])


def purchases(
    conn: Connection, programme: str, profile_id: str, order_id: str
) -> list[dict[str, Any]]:
    c = loyalty_purchases.c
    query = (
        sa.select(loyalty_purchases)
        .where(c.programme == programme, c.order_id == order_id, c.profile_id == profile_id)
        .order_by(c.entry_id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def add_returned(conn: Connection, entry_id: int, amount: int) -> None:
    c = loyalty_purchases.c
    conn.execute(
        loyalty_purchases.update()
        .where(c.entry_id == entry_id)
        .values(returned=c.returned + amount)
    )


# --- merges --------------------------------------------------------------------------------


def merge_accounts(conn: Connection, absorbed: str, survivor: str, now: datetime) -> None:
    """Before a merge moves the absorbed member's points to the survivor: lock both
    members' accounts (a movement under way on either finishes first, and one waiting
    finds the merge done), give the survivor an account in each programme of the
    absorbed, and have its tier looked at again at once."""
    dialect = dialect_of(conn)
    c = loyalty_accounts.c
    held = conn.execute(
        dialect.lock_rows(
            sa.select(c.programme, c.profile_id)
            .where(c.profile_id.in_((absorbed, survivor)))
            .order_by(c.programme, c.profile_id)
        )
    ).all()
    programmes = sorted({str(programme) for programme, member in held if member == absorbed})
    if not programmes:
        return
    dialect.insert_ignoring_conflicts(
        conn,
        loyalty_accounts,
        [{"programme": p, "profile_id": survivor, "created_at": now} for p in programmes],
    )
    conn.execute(
        loyalty_accounts.update()
        .where(c.profile_id == survivor, c.programme.in_(programmes))
        .values(tier_review_at=now)
    )


def expired_members(conn: Connection, now: datetime, limit: int) -> list[tuple[str, str]]:
    """Members with points past their expiry still in a lot: (programme, member)."""
    c = loyalty_lots.c
    query = (
        sa.select(c.programme, c.profile_id)
        .where(c.remaining > 0, c.expires_at <= now)
        .group_by(c.programme, c.profile_id)
        .order_by(sa.func.min(c.expires_at))
        .limit(limit)
    )
    return [(str(programme), str(member)) for programme, member in conn.execute(query)]
