"""Loyalty programmes as declared, the stock of rewards, their purchases, and coupon codes
with every burn and rollback of them.

Each statement that hands something out checks, in itself, that it is still there to
hand out: a stock is raised only below its limit, a code is issued only while free, a
coupon burned only while unburned. So two buyers never share the last reward or a code,
and two tills never burn one coupon, whatever the isolation level.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.programmes import CODE_ALPHABET, Generate
from ariane.storage.database import dialect_of
from ariane.storage.dialect import Dialect, chunked
from ariane.storage.tables import (
    loyalty_coupon_uses,
    loyalty_coupons,
    loyalty_programmes,
    loyalty_redemptions,
    loyalty_reward_stock,
)

_CHUNK = 1_000


# --- programmes ---------------------------------------------------------------------------


def programme_rows(conn: Connection) -> list[dict[str, Any]]:
    query = sa.select(loyalty_programmes).order_by(loyalty_programmes.c.id)
    return [dict(row._mapping) for row in conn.execute(query)]


def programme_row(conn: Connection, programme: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(loyalty_programmes).where(loyalty_programmes.c.id == programme)
    ).first()
    return None if row is None else dict(row._mapping)


# The statements every movement or burn runs are built once, their values bound as they
# run (`Dialect.kept`); the module's others are built as they are needed.
_VERSION = sa.select(loyalty_programmes.c.version).where(
    loyalty_programmes.c.id == sa.bindparam("programme")
)


def programme_version(conn: Connection, programme: str) -> int | None:
    found: int | None = conn.execute(_VERSION, {"programme": programme}).scalar()
    return found


def save_programme(
    conn: Connection, programme: str, definition: dict[str, Any], now: datetime
) -> tuple[str, int]:
    """Insert the programme, or replace its definition if it differs: `created`,
    `updated` or `unchanged`, and its version. One statement decides, so that two
    applying the same definition at once make one version, not two."""
    dialect = dialect_of(conn)
    c = loyalty_programmes.c
    insert = dialect.insert_statement(loyalty_programmes).values(
        id=programme, definition=definition, version=1, created_at=now, updated_at=now
    )
    statement = insert.on_conflict_do_update(
        index_elements=[c.id],
        set_={"definition": definition, "version": c.version + 1, "updated_at": now},
        # jsonb values on PostgreSQL; on SQLite, texts of one serialiser from the
        # canonical form (`Programme.to_json`), whose keys always come in one order.
        where=c.definition != insert.excluded.definition,
    ).returning(c.version)
    version: int | None = conn.execute(statement).scalar()
    if version is None:
        held = programme_version(conn, programme)
        assert held is not None
        return "unchanged", held
    return ("created" if version == 1 else "updated"), version


# --- coupon codes -------------------------------------------------------------------------


def pool_counts(conn: Connection, programme: str, pool: str) -> dict[str, int]:
    """How many codes the pool holds: free, issued and not burned, burned."""
    c = loyalty_coupons.c
    free, issued, burned = conn.execute(
        sa.select(
            sa.func.count().filter(c.issued_at.is_(None)),
            sa.func.count().filter(c.issued_at.is_not(None), c.burn_id.is_(None)),
            sa.func.count().filter(c.burn_id.is_not(None)),
        ).where(c.programme == programme, c.pool == pool)
    ).one()
    return {"free": int(free), "issued": int(issued), "burned": int(burned)}


def add_codes(
    conn: Connection,
    programme: str,
    pool: str,
    codes: Sequence[str],
    now: datetime,
) -> tuple[int, list[str]]:
    """Add codes to a pool: how many were new, and those that another pool holds (a code
    is unique across every programme). A code the pool holds already is left alone."""
    dialect = dialect_of(conn)
    added = 0
    for part in chunked(list(dict.fromkeys(codes)), _CHUNK):
        added += dialect.insert_ignoring_conflicts(
            conn,
            loyalty_coupons,
            [
                {"code": code, "programme": programme, "pool": pool, "created_at": now}
                for code in part
            ],
        )
    c = loyalty_coupons.c
    elsewhere: list[str] = []
    for part in chunked(list(codes), _CHUNK):
        elsewhere.extend(
            conn.execute(
                sa.select(c.code).where(
                    c.code.in_(part), sa.or_(c.programme != programme, c.pool != pool)
                )
            ).scalars()
        )
    return added, sorted(set(elsewhere))


def generate_codes(
    conn: Connection, programme: str, pool: str, plan: Generate, now: datetime
) -> int:
    """Bring a generated pool up to `plan.count` codes, random and unguessable; how many
    were made. Codes issued or burned count: a pool is never topped up past its size."""
    dialect = dialect_of(conn)
    c = loyalty_coupons.c
    held = conn.execute(
        sa.select(sa.func.count()).where(c.programme == programme, c.pool == pool)
    ).scalar_one()
    made = 0
    while held + made < plan.count:
        wanted = min(plan.count - held - made, _CHUNK)
        codes = [
            plan.prefix + "".join(secrets.choice(CODE_ALPHABET) for _ in range(plan.length))
            for _ in range(wanted)
        ]
        # A clash with a code anywhere is skipped and made again on the next turn.
        made += dialect.insert_ignoring_conflicts(
            conn,
            loyalty_coupons,
            [
                {"code": code, "programme": programme, "pool": pool, "created_at": now}
                for code in codes
            ],
        )
    return made


def issue_code(
    conn: Connection,
    programme: str,
    pool: str,
    *,
    profile_id: str,
    reward: str,
    now: datetime,
    expires_at: datetime | None,
) -> dict[str, Any] | None:
    """Hand the pool's oldest free code to the member; None when none is left.

    Concurrent buyers each claim a different free row (on PostgreSQL, skipping those
    another holds), and the update takes a code only while it is still free. When every
    free row is held (by other buyers, or by a till trying a code not issued yet), the
    second look waits for them rather than answer that none is left.
    """
    dialect = dialect_of(conn)
    values = {
        "in_programme": programme,
        "in_pool": pool,
        "member": profile_id,
        "for_reward": reward,
        "now": now,
        "until": expires_at,
    }
    for statement in dialect.kept(_issue_code):
        row = conn.execute(statement, values).first()
        if row is not None:
            return dict(row._mapping)
    return None


def _issue_code(dialect: Dialect) -> tuple[Any, ...]:
    """`issue_code`'s update, skipping the free rows others hold, then waiting for them
    (a value bound in an update may not bear the name of a column)."""
    c = loyalty_coupons.c
    return tuple(
        loyalty_coupons.update()
        .where(
            c.id
            == claim(
                sa.select(c.id)
                .where(
                    c.programme == sa.bindparam("in_programme"),
                    c.pool == sa.bindparam("in_pool"),
                    c.issued_at.is_(None),
                )
                .order_by(c.id)
                .limit(1)
            ).scalar_subquery(),
            c.issued_at.is_(None),
        )
        .values(
            profile_id=sa.bindparam("member", type_=c.profile_id.type),
            reward=sa.bindparam("for_reward", type_=c.reward.type),
            issued_at=sa.bindparam("now", type_=c.issued_at.type),
            expires_at=sa.bindparam("until", type_=c.expires_at.type),
        )
        .returning(c.id, c.code, c.expires_at)
        for claim in (dialect.claim_rows, dialect.lock_rows)
    )


_COUPON = sa.select(loyalty_coupons).where(loyalty_coupons.c.code == sa.bindparam("code"))


def _locked_coupon(dialect: Dialect) -> sa.Select[Any]:
    return dialect.lock_rows(_COUPON)


def coupon(conn: Connection, code: str, *, lock: bool) -> dict[str, Any] | None:
    """The coupon of a code, locked until commit when asked (on PostgreSQL)."""
    dialect = dialect_of(conn)
    query = dialect.kept(_locked_coupon) if lock else _COUPON
    row = conn.execute(query, {"code": code}).first()
    return None if row is None else dict(row._mapping)


def coupon_by_id(conn: Connection, coupon_id: int) -> dict[str, Any]:
    row = conn.execute(sa.select(loyalty_coupons).where(loyalty_coupons.c.id == coupon_id)).one()
    return dict(row._mapping)


def member_coupons(conn: Connection, programme: str, profile_id: str) -> list[dict[str, Any]]:
    c = loyalty_coupons.c
    query = (
        sa.select(loyalty_coupons)
        .where(c.programme == programme, c.profile_id == profile_id)
        .order_by(c.issued_at.desc(), c.id.desc())
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def use(conn: Connection, use_id: int) -> dict[str, Any]:
    row = conn.execute(
        sa.select(loyalty_coupon_uses).where(loyalty_coupon_uses.c.id == use_id)
    ).one()
    return dict(row._mapping)


_USE_BY_KEY = sa.select(loyalty_coupon_uses).where(
    loyalty_coupon_uses.c.idempotency_key == sa.bindparam("key")
)


def use_by_key(conn: Connection, key: str) -> dict[str, Any] | None:
    row = conn.execute(_USE_BY_KEY, {"key": key}).first()
    return None if row is None else dict(row._mapping)


def _new_use(dialect: Dialect) -> Any:
    return (
        dialect.insert_statement(loyalty_coupon_uses)
        .on_conflict_do_nothing()
        .returning(loyalty_coupon_uses.c.id)
    )


def insert_use(conn: Connection, row: dict[str, Any]) -> int | None:
    """The new use's id, or None when its idempotency key is taken already."""
    dialect = dialect_of(conn)
    found: int | None = conn.execute(dialect.kept(_new_use), row).scalar()
    return found


def _set_burn(held: sa.ColumnElement[bool]) -> Any:
    c = loyalty_coupons.c
    return (
        loyalty_coupons.update()
        .where(c.id == sa.bindparam("coupon"), held)
        .values(burn_id=sa.bindparam("burn", type_=c.burn_id.type))
    )


# Pointing a coupon at its burn when it had none; and at another (or none) when it had.
_FIRST_BURN = _set_burn(loyalty_coupons.c.burn_id.is_(None))
_NEXT_BURN = _set_burn(loyalty_coupons.c.burn_id == sa.bindparam("was"))


def set_burn(conn: Connection, coupon_id: int, was: int | None, now: int | None) -> bool:
    """Point the coupon at the burn in force (None: none), only if it still points at
    `was`: whether it did."""
    values = {"coupon": coupon_id, "burn": now}
    if was is None:
        done = conn.execute(_FIRST_BURN, values)
    else:
        done = conn.execute(_NEXT_BURN, {**values, "was": was})
    return done.rowcount == 1


# --- rewards ------------------------------------------------------------------------------


def take_stock(conn: Connection, programme: str, reward: str, stock: int) -> bool:
    """Count one more of the reward bought, if that stays within `stock`: whether it did."""
    dialect = dialect_of(conn)
    dialect.insert_ignoring_conflicts(
        conn, loyalty_reward_stock, [{"programme": programme, "reward": reward, "issued": 0}]
    )
    c = loyalty_reward_stock.c
    done = conn.execute(
        loyalty_reward_stock.update()
        .where(c.programme == programme, c.reward == reward, c.issued < stock)
        .values(issued=c.issued + 1)
    )
    return done.rowcount == 1


def stock_issued(conn: Connection, programme: str) -> dict[str, int]:
    c = loyalty_reward_stock.c
    query = sa.select(c.reward, c.issued).where(c.programme == programme)
    return {str(reward): int(issued) for reward, issued in conn.execute(query)}


def redemptions_of(conn: Connection, programme: str, reward: str, profile_id: str) -> int:
    c = loyalty_redemptions.c
    count: int = conn.execute(
        sa.select(sa.func.count()).where(
            c.programme == programme, c.reward == reward, c.profile_id == profile_id
        )
    ).scalar_one()
    return count


_NEW_REDEMPTION = loyalty_redemptions.insert().returning(loyalty_redemptions.c.id)


def insert_redemption(conn: Connection, row: dict[str, Any]) -> int:
    found: int = conn.execute(_NEW_REDEMPTION, row).scalar_one()
    return found


def redemption_by_entry(conn: Connection, entry_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(loyalty_redemptions).where(loyalty_redemptions.c.entry_id == entry_id)
    ).first()
    return None if row is None else dict(row._mapping)
