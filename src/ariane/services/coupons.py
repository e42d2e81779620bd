"""Coupons burned from any channel, a till or the web: once, under an idempotency key
whose replay answers what the first request was answered; a second burn is refused
naming when and where the first one happened; a rollback puts the coupon back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ariane.domain.clock import iso
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.loyalty import track
from ariane.domain.programmes import is_code
from ariane.storage import loyalty as loyalty_store
from ariane.storage import rewards as store
from ariane.storage.database import Connection, Database

_KEY_WIDTH = 200
_CHANNEL_WIDTH = 32
_TEXT_WIDTH = 200


class CouponUnusable(Conflict):
    """A coupon that cannot be burned now: not issued, expired, or burned already."""

    code = "coupon_unusable"


def _check_key(key: str | None) -> str:
    if not key or len(key) > _KEY_WIDTH:
        raise DomainError(
            f"send an Idempotency-Key header of 1 to {_KEY_WIDTH} characters, the same for"
            " every retry of one request",
            field="Idempotency-Key",
        )
    return key


def _check_text(value: str | None, field: str, width: int) -> str | None:
    if value is not None and (not value.strip() or len(value) > width):
        raise DomainError(f"{field} must be 1 to {width} characters when given", field=field)
    return value


def _code(code: str) -> str:
    """The code as stored; one that could never be a code is no coupon either."""
    if not is_code(code):
        raise NotFound(f"no coupon {code!r}", field="code")
    return code.upper()


class CouponService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def show(self, code: str) -> dict[str, Any]:
        code = _code(code)
        with self.db.read() as conn:
            found = self._coupon(conn, code, lock=False)
            burn = None if found["burn_id"] is None else store.use(conn, found["burn_id"])
        return _public(found, burn, self.clock())

    def burn(
        self,
        code: str,
        key: str | None,
        *,
        channel: str,
        location: str | None = None,
        reference: str | None = None,
    ) -> dict[str, Any]:
        """Burn the coupon, or refuse naming when and where it was burned."""
        code = _code(code)
        key = _check_key(key)
        _check_text(channel, "channel", _CHANNEL_WIDTH)
        _check_text(location, "location", _TEXT_WIDTH)
        _check_text(reference, "reference", _TEXT_WIDTH)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            coupon = self._coupon(conn, code, lock=True)
            replayed = self._replay(conn, key, coupon, "burn")
            if replayed is not None:
                return replayed
            if coupon["issued_at"] is None:
                raise CouponUnusable(f"coupon {code!r} has not been issued to anyone", field="code")
            if coupon["burn_id"] is not None:
                first = store.use(conn, coupon["burn_id"])
                raise CouponUnusable(f"coupon {code!r} was {_where(first)}", field="code")
            if coupon["expires_at"] is not None and coupon["expires_at"] <= now:
                raise CouponUnusable(
                    f"coupon {code!r} expired at {iso(coupon['expires_at'])}", field="code"
                )
            use = {
                "coupon_id": coupon["id"],
                "profile_id": coupon["profile_id"],
                "kind": "burn",
                "idempotency_key": key,
                "channel": channel,
                "location": location,
                "reference": reference,
                "at": now,
            }
            use_id = self._record(conn, use, coupon)
            if not store.set_burn(conn, coupon["id"], None, use_id):
                raise AssertionError("a locked coupon changed under its lock")
            self._tell(conn, use_id, "Coupon Burned", coupon, use)
            return _public({**coupon, "burn_id": use_id}, {"id": use_id, **use}, now)

        return self.db.write(work)

    def rollback(
        self, code: str, key: str | None, *, reference: str | None = None
    ) -> dict[str, Any]:
        """Undo the burn in force: the coupon can be burned again."""
        code = _code(code)
        key = _check_key(key)
        _check_text(reference, "reference", _TEXT_WIDTH)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            coupon = self._coupon(conn, code, lock=True)
            replayed = self._replay(conn, key, coupon, "rollback")
            if replayed is not None:
                return replayed
            if coupon["burn_id"] is None:
                raise CouponUnusable(
                    f"coupon {code!r} is not burned: there is nothing to roll back",
                    field="code",
                )
            use = {
                "coupon_id": coupon["id"],
                "profile_id": coupon["profile_id"],
                "kind": "rollback",
                "idempotency_key": key,
                "burn_id": coupon["burn_id"],
                "reference": reference,
                "at": now,
            }
            use_id = self._record(conn, use, coupon)
            if not store.set_burn(conn, coupon["id"], coupon["burn_id"], None):
                raise AssertionError("a locked coupon changed under its lock")
            self._tell(conn, use_id, "Coupon Burn Rolled Back", coupon, use)
            return {**_public({**coupon, "burn_id": None}, None, now), "rolled_back_at": now}

        return self.db.write(work)

    # --- inside the transaction ----------------------------------------------------------

    def _coupon(self, conn: Connection, code: str, *, lock: bool) -> dict[str, Any]:
        found = store.coupon(conn, code, lock=lock)
        if found is None:
            raise NotFound(f"no coupon {code!r}", field="code")
        return found

    def _replay(
        self, conn: Connection, key: str, coupon: dict[str, Any], kind: str
    ) -> dict[str, Any] | None:
        """The first answer to a request under `key`, if there was one. Looked up once
        the coupon is locked, so that a retry racing its first attempt sees it done."""
        found = store.use_by_key(conn, key)
        if found is None:
            return None
        if (found["coupon_id"], found["kind"]) != (coupon["id"], kind):
            raise Conflict(
                f"Idempotency-Key {key!r} was used at {iso(found['at'])} for another request"
                f" (a {found['kind']}); use a new key for a new request",
                field="Idempotency-Key",
            )
        if kind == "burn":
            return _public({**coupon, "burn_id": found["id"]}, found, found["at"])
        answer = _public({**coupon, "burn_id": None}, None, found["at"])
        return {**answer, "rolled_back_at": found["at"]}

    @staticmethod
    def _tell(
        conn: Connection, use_id: int, name: str, coupon: dict[str, Any], use: dict[str, Any]
    ) -> None:
        """Put the burn or rollback on the holder's timeline, once it commits."""
        message_id = f"loyalty-coupon-use-{use_id}"
        properties = {
            "programme": coupon["programme"],
            "reward": coupon["reward"],
            "coupon_code": coupon["code"],
            "channel": use.get("channel"),
            "location": use.get("location"),
            "reference": use["reference"],
        }
        message = track(name, message_id, use["at"], properties)
        loyalty_store.add_event(conn, message_id, coupon["profile_id"], message, use["at"])

    def _record(self, conn: Connection, use: dict[str, Any], coupon: dict[str, Any]) -> int:
        use_id = store.insert_use(conn, use)
        if use_id is None:
            # Taken meanwhile by a request about another coupon (one about this coupon
            # would have waited for its lock and been found by `_replay`).
            found = store.use_by_key(conn, use["idempotency_key"])
            assert found is not None
            raise Conflict(
                f"Idempotency-Key {use['idempotency_key']!r} was used at {iso(found['at'])} for"
                " another request; use a new key for a new request",
                field="Idempotency-Key",
            )
        return use_id


def _where(burn: dict[str, Any]) -> str:
    place = f" at {burn['location']}" if burn["location"] else ""
    reference = f" (reference {burn['reference']})" if burn["reference"] else ""
    return f"burned at {iso(burn['at'])} on {burn['channel']}{place}{reference}"


def status(coupon: dict[str, Any], now: datetime) -> str:
    """free (not issued), burned, expired (issued, not burned, past `expires_at`) or
    issued."""
    if coupon["issued_at"] is None:
        return "free"
    if coupon["burn_id"] is not None:
        return "burned"
    if coupon["expires_at"] is not None and coupon["expires_at"] <= now:
        return "expired"
    return "issued"


def _public(coupon: dict[str, Any], burn: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    return {
        "code": coupon["code"],
        "programme": coupon["programme"],
        "pool": coupon["pool"],
        "reward": coupon["reward"],
        "profile_id": coupon["profile_id"],
        "status": status(coupon, now),
        "issued_at": coupon["issued_at"],
        "expires_at": coupon["expires_at"],
        "burn": None
        if burn is None
        else {
            "at": burn["at"],
            "channel": burn["channel"],
            "location": burn["location"],
            "reference": burn["reference"],
        },
    }
