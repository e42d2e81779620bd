"""Reading profiles: the 360° view, lookups by identifier, the timeline, consents."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ariane.domain.consent import ConsentDecision, check_status, current_consents
from ariane.domain.errors import DomainError, NotFound
from ariane.domain.identity import normalise, normalise_type
from ariane.settings import Settings
from ariane.storage import consents as consent_store
from ariane.storage import events as event_store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Database
from ariane.storage.tables import identities, profiles


class ProfileService:
    def __init__(self, db: Database, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock

    def _live_id(self, conn: Any, profile_id: str) -> str:
        live = profile_store.resolve_profile_id(conn, profile_id)
        if live is None:
            raise NotFound(f"no profile {profile_id!r}", field="id")
        return live

    def view(self, profile_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            live = self._live_id(conn, profile_id)
            row = conn.execute(sa.select(profiles).where(profiles.c.id == live)).one()
            idents = conn.execute(
                sa.select(identities.c.type, identities.c.value, identities.c.created_at)
                .where(identities.c.profile_id == live)
                .order_by(identities.c.type, identities.c.created_at)
            ).all()
            merged = (
                conn.execute(sa.select(profiles.c.id).where(profiles.c.merged_into == live))
                .scalars()
                .all()
            )
            history = consent_store.history(conn, live)
        computed = dict(row.computed)
        computed["first_seen"] = row.first_seen
        computed["last_seen"] = row.last_seen
        return {
            "id": live,
            "identities": [{"type": t, "value": v, "first_seen": at} for t, v, at in idents],
            "traits": {k: cell["value"] for k, cell in sorted(row.traits.items())},
            "trait_sources": row.traits,
            "computed": computed,
            "segments": [],
            "consents": current_consents(history, self.clock()),
            "merged_ids": sorted(merged),
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }

    def lookup(self, id_type: str, value: str) -> str:
        id_type = normalise_type(id_type)
        ident = normalise(
            id_type, value, default_phone_region=self.settings.identity.default_phone_region
        )
        if ident is None:
            raise DomainError(f"{value!r} is not a usable {id_type}", field="value")
        with self.db.read() as conn:
            owner = conn.execute(
                sa.select(identities.c.profile_id).where(
                    identities.c.type == ident.type, identities.c.value == ident.value
                )
            ).scalar()
        if owner is None:
            raise NotFound(f"no profile holds {id_type} {ident.value!r}", field="value")
        return str(owner)

    def events(
        self, profile_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise DomainError("limit must be between 1 and 1000", field="limit")
        before = None
        if cursor:
            try:
                at_text, id_text = cursor.split("_", 1)
                before = (datetime.fromisoformat(at_text), int(id_text))
            except ValueError:
                raise DomainError("cursor is not one this API returned", field="cursor") from None
        with self.db.read() as conn:
            live = self._live_id(conn, profile_id)
            rows = event_store.timeline(conn, live, limit=limit + 1, before=before)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = None
        if more:
            last = page[-1]
            next_cursor = f"{last['timestamp'].isoformat()}_{last['id']}"
        return {
            "profile_id": live,
            "events": [row["payload"] for row in page],
            "next_cursor": next_cursor,
        }

    def set_consent(
        self,
        profile_id: str,
        purpose: str,
        status: str,
        *,
        source: str,
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        check_status(status)
        purpose = purpose.strip()
        if not purpose:
            raise DomainError("purpose must not be empty", field="purpose")
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            raise DomainError("expires_at must be in the future", field="expires_at")
        decision = ConsentDecision(purpose, status, now, source, expires_at)

        def work(conn: Any) -> str:
            live = self._live_id(conn, profile_id)
            consent_store.insert(conn, live, decision)
            return live

        live = self.db.write(work)
        with self.db.read() as conn:
            history = consent_store.history(conn, live)
        return current_consents(history, self.clock())[purpose]

    def consent_history(self, profile_id: str) -> list[ConsentDecision]:
        with self.db.read() as conn:
            return consent_store.history(conn, self._live_id(conn, profile_id))
