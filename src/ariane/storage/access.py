"""Sources (write keys) and admin API tokens, stored as SHA-256 hashes only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["Connection", "Source", "Token"]

from ariane.storage.tables import api_tokens, sources

# The width of the name columns of both tables.
MAX_NAME_LENGTH = 200


def hash_secret(secret: str) -> str:
    # Keys are 256-bit random values, so a plain hash is enough: no dictionary to fear.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    name: str
    role: str
    created_at: datetime


def insert_source(conn: Connection, source: Source, write_key: str) -> None:
    conn.execute(
        sources.insert().values(
            id=source.id,
            name=source.name,
            write_key_hash=hash_secret(write_key),
            created_at=source.created_at,
        )
    )


def source_by_name(conn: Connection, name: str) -> Source | None:
    row = conn.execute(sa.select(sources).where(sources.c.name == name)).first()
    return Source(row.id, row.name, row.created_at) if row else None


def source_by_key(conn: Connection, write_key: str) -> Source | None:
    row = conn.execute(
        sa.select(sources).where(sources.c.write_key_hash == hash_secret(write_key))
    ).first()
    return Source(row.id, row.name, row.created_at) if row else None


def list_sources(conn: Connection) -> list[Source]:
    rows = conn.execute(sa.select(sources).order_by(sources.c.created_at))
    return [Source(r.id, r.name, r.created_at) for r in rows]


def replace_write_key(conn: Connection, source_id: str, write_key: str) -> None:
    conn.execute(
        sources.update()
        .where(sources.c.id == source_id)
        .values(write_key_hash=hash_secret(write_key))
    )


def insert_token(conn: Connection, token: Token, secret: str) -> None:
    conn.execute(
        api_tokens.insert().values(
            id=token.id,
            name=token.name,
            role=token.role,
            token_hash=hash_secret(secret),
            created_at=token.created_at,
        )
    )


# Run on every /api request: built once, the hash bound as it runs.
_TOKEN_BY_HASH = sa.select(api_tokens).where(api_tokens.c.token_hash == sa.bindparam("hash"))


def token_by_secret(conn: Connection, secret: str) -> Token | None:
    row = conn.execute(_TOKEN_BY_HASH, {"hash": hash_secret(secret)}).first()
    return Token(row.id, row.name, row.role, row.created_at) if row else None


def list_tokens(conn: Connection) -> list[Token]:
    rows = conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id))
    return [Token(r.id, r.name, r.role, r.created_at) for r in rows]


def delete_token(conn: Connection, token_id: str) -> Token | None:
    """Delete a token; the token deleted, or None when there was none with that id."""
    row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
    if row is None:
        return None
    conn.execute(api_tokens.delete().where(api_tokens.c.id == token_id))
    return Token(row.id, row.name, row.role, row.created_at)
