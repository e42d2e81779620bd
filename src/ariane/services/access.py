"""Sources with write keys, and admin tokens with roles."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime

from ariane.domain.errors import Conflict, DomainError
from ariane.storage import access as store
from ariane.storage.access import Source, Token
from ariane.storage.database import Database

ROLES = ("admin", "analyst")


class AccessService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock
        self._sources_by_key: dict[str, Source] = {}

    def create_source(self, name: str) -> tuple[Source, str]:
        name = name.strip()
        if not name:
            raise DomainError("a source needs a name", field="name")
        write_key = "wk_" + secrets.token_urlsafe(32)
        source = Source(uuid.uuid4().hex, name, self.clock())

        def work(conn: store.Connection) -> None:
            if store.source_by_name(conn, name) is not None:
                raise Conflict(f"a source named {name!r} exists already", field="name")
            store.insert_source(conn, source, write_key)

        self.db.write(work)
        return source, write_key

    def list_sources(self) -> list[Source]:
        with self.db.read() as conn:
            return store.list_sources(conn)

    def source_for_key(self, write_key: str) -> Source | None:
        # Sources are never deleted, so a key once found stays valid for the process.
        source = self._sources_by_key.get(write_key)
        if source is None:
            with self.db.read() as conn:
                source = store.source_by_key(conn, write_key)
            if source is not None:
                self._sources_by_key[write_key] = source
        return source

    def create_token(self, role: str, name: str = "") -> tuple[Token, str]:
        if role not in ROLES:
            raise DomainError(f"role must be one of {', '.join(ROLES)}", field="role")
        secret = "at_" + secrets.token_urlsafe(32)
        token = Token(uuid.uuid4().hex, name or role, role)
        self.db.write(lambda conn: store.insert_token(conn, token, secret, self.clock()))
        return token, secret

    def token_for_secret(self, secret: str) -> Token | None:
        with self.db.read() as conn:
            return store.token_by_secret(conn, secret)
