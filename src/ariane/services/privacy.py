"""The rights of the person: a copy of everything held, and erasure with a PII-free receipt."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ariane.domain.events import ProfileErased
from ariane.services.profiles import live_profile_id
from ariane.storage import bus as bus_store
from ariane.storage import personal_data
from ariane.storage.database import Connection, Database


class PrivacyService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def export(self, profile_id: str) -> dict[str, Any]:
        """Every row held about the person, by table."""
        with self.db.read() as conn:
            live = live_profile_id(conn, profile_id)
            person = personal_data.find_person(conn, live)
            data = personal_data.export(conn, person)
        return {"profile_id": live, "exported_at": self.clock(), "data": data}

    def erase(self, profile_id: str, *, requested_by: str) -> dict[str, Any]:
        """Delete the person everywhere, in one transaction, and keep a receipt.

        The receipt holds when, who asked and how many rows went from each table: no
        profile id and no identifier, so it is not personal data itself.
        """

        def work(conn: Connection) -> dict[str, Any]:
            live = live_profile_id(conn, profile_id)
            person = personal_data.find_person(conn, live, lock=True)
            now = self.clock()
            receipt = {
                "id": uuid.uuid4().hex,
                "erased_at": now,
                "requested_by": requested_by,
                "counts": personal_data.erase(conn, person),
            }
            personal_data.keep_receipt(conn, receipt)
            # Named by its receipt, as the receipt is: nothing of the person is kept.
            erased = ProfileErased(
                event_id=f"erasure-{receipt['id']}",
                profile_id=None,
                at=now,
                requested_by=requested_by,
            )
            bus_store.record(conn, [erased])
            return receipt

        return self.db.write(work)
