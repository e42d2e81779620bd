"""Loyalty points, earned and spent in real time: every movement an entry of an
append-only ledger with an idempotency key, each member's movements one at a time under
the lock of their account, so that nothing is given or taken twice."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.loyalty import Lot, balance, take
from ariane.storage import loyalty as store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Database

_KEY_WIDTH = 200
_NAME_WIDTH = 64
# A return window or a validity beyond a hundred years is a mistake (and past the year
# 9999, not a time at all).
_MAX_DAYS = 36_500


def _check(programme: str, key: str, points: int) -> None:
    if not programme or len(programme) > _NAME_WIDTH:
        raise DomainError(
            f"programme needs a name of 1 to {_NAME_WIDTH} characters", field="programme"
        )
    if not key or len(key) > _KEY_WIDTH:
        raise DomainError(
            f"an idempotency key of 1 to {_KEY_WIDTH} characters is needed, the same for"
            " every retry of one movement",
            field="idempotency_key",
        )
    if isinstance(points, bool) or not isinstance(points, int) or points <= 0:
        raise DomainError("points must be a whole number above 0", field="points")


def _check_days(days: int, field: str, *, least: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not least <= days <= _MAX_DAYS:
        raise DomainError(
            f"{field} must be a whole number of days from {least} to {_MAX_DAYS}", field=field
        )


class LoyaltyService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def earn(
        self,
        programme: str,
        profile_id: str,
        points: int,
        key: str,
        *,
        reference: str | None = None,
        pending_days: int = 0,
        expires_days: int | None = None,
    ) -> dict[str, Any]:
        """Add a lot of `points`, pending for `pending_days`, expiring `expires_days`
        after it was earned. Replayed with the same key, the first answer."""
        _check(programme, key, points)
        _check_days(pending_days, "pending_days", least=0)
        if expires_days is not None:
            _check_days(expires_days, "expires_days", least=1)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            member, replayed = self._begin(conn, programme, profile_id, key, "earn", points)
            if replayed is not None:
                return replayed
            entry = self._record(conn, programme, member, "earn", points, key, reference, now)
            available = now + timedelta(days=pending_days)
            expires = None if expires_days is None else now + timedelta(days=expires_days)
            store.insert_lot(
                conn, programme, member, Lot(entry["id"], points, points, now, available, expires)
            )
            return entry

        return self.db.write(work)

    def spend(
        self,
        programme: str,
        profile_id: str,
        points: int,
        key: str,
        *,
        reference: str | None = None,
    ) -> dict[str, Any]:
        """Take `points` from the member's oldest spendable lots, or nothing at all
        (`NotEnoughPoints`). Replayed with the same key, the first answer."""
        _check(programme, key, points)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            member, replayed = self._begin(conn, programme, profile_id, key, "spend", -points)
            if replayed is not None:
                return replayed
            taken = take(store.lots(conn, programme, member), points, now)
            entry = self._record(conn, programme, member, "spend", -points, key, reference, now)
            store.take_from_lots(conn, entry["id"], member, taken)
            return entry

        return self.db.write(work)

    def balance(self, programme: str, profile_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            member = self._member(conn, profile_id)
            held = store.lots(conn, programme, member)
        now = self.clock()
        current = balance(held, now)
        return {
            "profile_id": member,
            "programme": programme,
            "available": current.available,
            "pending": current.pending,
            "next_expiry": current.next_expiry,
            "expiring": current.expiring,
        }

    def discrepancies(
        self, programme: str | None = None, profile_id: str | None = None
    ) -> list[tuple[str, str, str]]:
        """Where lots disagree with the ledger (none, if all is well): (programme,
        member, what), for every member, or those of `programme` and `profile_id`."""
        with self.db.read() as conn:
            member = None if profile_id is None else self._member(conn, profile_id)
            return store.discrepancies(conn, programme, member)

    # --- inside a movement's transaction ---------------------------------------------------

    def _member(self, conn: Connection, profile_id: str) -> str:
        live = profile_store.resolve_profile_id(conn, profile_id)
        if live is None:
            raise NotFound(f"no profile {profile_id!r}", field="profile_id")
        return live

    def _begin(
        self, conn: Connection, programme: str, profile_id: str, key: str, kind: str, points: int
    ) -> tuple[str, dict[str, Any] | None]:
        """The member, locked; and the entry already recorded under `key`, if any."""
        member = self._member(conn, profile_id)
        store.lock_account(conn, self.db.dialect, programme, member, self.clock())
        found = store.entry_by_key(conn, programme, key)
        if found is None:
            return member, None
        return member, self._replay(found, member, kind, points)

    @staticmethod
    def _replay(found: dict[str, Any], member: str, kind: str, points: int) -> dict[str, Any]:
        if (found["profile_id"], found["kind"], found["points"]) != (member, kind, points):
            raise Conflict(
                f"idempotency key {found['idempotency_key']!r} was used at {found['at']} for"
                f" another movement ({found['kind']} of {abs(found['points'])} points);"
                " use a new key for a new movement",
                field="idempotency_key",
            )
        return found

    def _record(
        self,
        conn: Connection,
        programme: str,
        member: str,
        kind: str,
        points: int,
        key: str,
        reference: str | None,
        now: datetime,
    ) -> dict[str, Any]:
        row = {
            "programme": programme,
            "profile_id": member,
            "kind": kind,
            "points": points,
            "idempotency_key": key,
            "reference": reference,
            "at": now,
        }
        entry_id = store.insert_entry(conn, self.db.dialect, row)
        if entry_id is None:
            # Taken meanwhile by a movement of another member (one of this member's would
            # have waited for the lock and been found above).
            found = store.entry_by_key(conn, programme, key)
            assert found is not None
            return self._replay(found, member, kind, points)
        return {"id": entry_id, **row}
