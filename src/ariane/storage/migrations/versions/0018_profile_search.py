"""profiles: name and email search keys; identifiers in code order

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-26

`GET /api/profiles?q=` finds the profiles holding an identifier that starts with `q`, or
whose name or email starts with it, without case. The name and email traits get columns
of their own as a search compares them, filled here from the traits, each with an index
where set. On PostgreSQL, these columns and the identifier values are in code order
(COLLATE "C"), as on SQLite: the texts that start with a prefix are then one range of an
index, whatever the database's locale. Going down drops the columns and gives the
identifier values the database's collation again.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_KEY_LENGTH = 200
_CHUNK = 2000


def _search_key(text: Any) -> str | None:
    """`domain.profiles.search_key` as it was written for this revision."""
    if not isinstance(text, str):
        return None
    if text.isascii():
        key = text.lower().strip()
    else:
        key = unicodedata.normalize("NFKC", text).casefold().strip()
    return key[:_KEY_LENGTH] or None


def _value(traits: Any, name: str) -> Any:
    cell = traits.get(name) if isinstance(traits, dict) else None
    return cell.get("value") if isinstance(cell, dict) else None


def _code_ordered(length: int, postgres: bool) -> sa.String:
    return sa.String(length, collation="C") if postgres else sa.String(length)


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.alter_column(
            "identities",
            "value",
            type_=sa.String(512, collation="C"),
            existing_type=sa.String(512),
            existing_nullable=False,
        )
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        for name in ("search_name", "search_email"):
            batch_op.add_column(
                sa.Column(name, _code_ordered(_KEY_LENGTH, postgres), nullable=True)
            )
    _fill_search_keys(bind)
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        for name in ("search_name", "search_email"):
            batch_op.create_index(
                f"ix_profiles_{name}",
                [name],
                unique=False,
                sqlite_where=sa.text(f"{name} IS NOT NULL"),
                postgresql_where=sa.text(f"{name} IS NOT NULL"),
            )


def _fill_search_keys(bind: sa.Connection) -> None:
    profiles = sa.table(
        "profiles",
        sa.column("id", sa.String),
        sa.column("merged_into", sa.String),
        sa.column("traits", sa.JSON),
        sa.column("search_name", sa.String),
        sa.column("search_email", sa.String),
    )
    update = (
        profiles.update()
        .where(profiles.c.id == sa.bindparam("profile_id"))
        .values(search_name=sa.bindparam("name"), search_email=sa.bindparam("email"))
    )
    after = ""
    while True:
        rows = bind.execute(
            sa.select(profiles.c.id, profiles.c.traits)
            .where(profiles.c.id > after, profiles.c.merged_into.is_(None))
            .order_by(profiles.c.id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            return
        keys = [
            {
                "profile_id": profile_id,
                "name": _search_key(_value(traits, "name")),
                "email": _search_key(_value(traits, "email")),
            }
            for profile_id, traits in rows
        ]
        found = [row for row in keys if row["name"] is not None or row["email"] is not None]
        if found:
            bind.execute(update, found)
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        for name in ("search_name", "search_email"):
            batch_op.drop_index(f"ix_profiles_{name}")
            batch_op.drop_column(name)
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "identities",
            "value",
            type_=sa.String(512),
            existing_type=sa.String(512, collation="C"),
            existing_nullable=False,
        )
