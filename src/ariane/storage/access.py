"""Sources (write keys) and admin API tokens, stored as SHA-256 hashes only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["Connection", "Source", "Token"]

from ariane.storage.tables import api_tokens, sources


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


def insert_token(conn: Connection, token: Token, secret: str, now: datetime) -> None:
    conn.execute(
        api_tokens.insert().values(
            id=token.id,
            name=token.name,
            role=token.role,
            token_hash=hash_secret(secret),
            created_at=now,
        )
    )


def token_by_secret(conn: Connection, secret: str) -> Token | None:
    row = conn.execute(
        sa.select(api_tokens).where(api_tokens.c.token_hash == hash_secret(secret))
    ).first()
    return Token(row.id, row.name, row.role) if row else None
