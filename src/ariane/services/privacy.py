"""The rights of the person: a copy of everything held, and erasure with a PII-free receipt."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ariane.domain.errors import NotFound
from ariane.storage import personal_data
from ariane.storage import profiles as profile_store
from ariane.storage.database import Database
from ariane.storage.tables import erasure_receipts


class PrivacyService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def _live(self, conn: Connection, profile_id: str) -> str:
        live = profile_store.resolve_profile_id(conn, profile_id)
        if live is None:
            raise NotFound(f"no profile {profile_id!r}", field="id")
        return live

    def export(self, profile_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            live = self._live(conn, profile_id)
            data = personal_data.export(conn, live)
        return {"profile_id": live, "exported_at": self.clock(), "data": data}

    def erase(self, profile_id: str, *, requested_by: str) -> dict[str, Any]:
        def work(conn: Connection) -> dict[str, Any]:
            live = self._live(conn, profile_id)
            counts = personal_data.erase(conn, live)
            receipt = {
                "id": uuid.uuid4().hex,
                "erased_at": self.clock(),
                "requested_by": requested_by,
                "counts": counts,
            }
            conn.execute(erasure_receipts.insert().values(**receipt))
            return receipt

        return self.db.write(work)
