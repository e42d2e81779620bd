"""Sources with write keys, and admin tokens with roles."""

from __future__ import annotations

import secrets
import unicodedata
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.storage import access as store
from ariane.storage.access import MAX_NAME_LENGTH, Source, Token
from ariane.storage.database import Database

ROLES = ("admin", "analyst")


def _checked_name(name: str, kind: str) -> str:
    name = name.strip()
    if not name:
        raise DomainError(f"a {kind} needs a name", field="name")
    if len(name) > MAX_NAME_LENGTH:
        raise DomainError(
            f"name is {len(name)} characters long; a {kind} name holds at most"
            f" {MAX_NAME_LENGTH}: choose a shorter one",
            field="name",
        )
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise DomainError(
            f"name holds a control character (a tab, a line break, NUL...);"
            f" give the {kind} a name of plain text",
            field="name",
        )
    return name


def _new_write_key() -> str:
    return "wk_" + secrets.token_urlsafe(32)


class AccessService:
    """Sources, tokens and the lookups that authenticate requests.

    Write keys found are kept for `key_cache_seconds`: another process that rotates a
    key cannot tell this one, so a rotated key works here at most that long after.
    Tokens are looked up on every request, so a revoked one stops at once.
    """

    def __init__(
        self, db: Database, clock: Callable[[], datetime], key_cache_seconds: float = 10.0
    ) -> None:
        self.db = db
        self.clock = clock
        self.key_cache = timedelta(seconds=key_cache_seconds)
        self._sources_by_key: dict[str, tuple[Source, datetime]] = {}

    def create_source(self, name: str) -> tuple[Source, str]:
        name = _checked_name(name, "source")
        write_key = _new_write_key()
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

    def rotate_key(self, name: str) -> tuple[Source, str]:
        """Give the source a new write key; the old one stops working."""
        name = name.strip()
        write_key = _new_write_key()

        def work(conn: store.Connection) -> Source:
            source = store.source_by_name(conn, name)
            if source is None:
                raise NotFound(
                    f"no source named {name!r}; `ariane sources list` shows them", field="name"
                )
            store.replace_write_key(conn, source.id, write_key)
            return source

        source = self.db.write(work)
        for key, (cached, _) in list(self._sources_by_key.items()):
            if cached.id == source.id:
                self._sources_by_key.pop(key, None)
        return source, write_key

    def cached_source_for_key(self, write_key: str) -> Source | None:
        """The source of a write key found lately, without asking the database."""
        entry = self._sources_by_key.get(write_key)
        if entry is None:
            return None
        source, found_at = entry
        # A clock that went back counts as expired too.
        if not found_at <= self.clock() < found_at + self.key_cache:
            self._sources_by_key.pop(write_key, None)
            return None
        return source

    def source_for_key(self, write_key: str) -> Source | None:
        source = self.cached_source_for_key(write_key)
        if source is None:
            with self.db.read() as conn:
                source = store.source_by_key(conn, write_key)
            if source is not None and self.key_cache:
                self._sources_by_key[write_key] = (source, self.clock())
        return source

    def create_token(self, role: str, name: str = "") -> tuple[Token, str]:
        if role not in ROLES:
            raise DomainError(f"role must be one of {', '.join(ROLES)}", field="role")
        name = _checked_name(name, "token") if name.strip() else role
        secret = "at_" + secrets.token_urlsafe(32)
        token = Token(uuid.uuid4().hex, name, role, self.clock())
        self.db.write(lambda conn: store.insert_token(conn, token, secret))
        return token, secret

    def list_tokens(self) -> list[Token]:
        with self.db.read() as conn:
            return store.list_tokens(conn)

    def revoke_token(self, token_id: str) -> Token:
        """Delete a token: the next request that sends it is refused."""
        token_id = token_id.strip()

        def work(conn: store.Connection) -> Token:
            token = store.delete_token(conn, token_id)
            if token is None:
                raise NotFound(
                    f"no token with id {token_id!r}; `ariane tokens list` shows them", field="id"
                )
            return token

        return self.db.write(work)

    def token_for_secret(self, secret: str) -> Token | None:
        # Read afresh on every request, so that a deleted token is refused at once.
        with self.db.lookup() as conn:
            return store.token_by_secret(conn, secret)
