"""Loyalty points held in lots: what a member earns arrives as a lot, pending through the
return window, then spendable until it expires; a spend takes the oldest lots first; a
return takes back the points of the returned items, in proportion.

Pure functions over one member's lots. Storage keeps the lots and the append-only ledger
entries that move them, and calls these under the member's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ariane.domain.clock import iso
from ariane.domain.errors import Conflict, DomainError


class NotEnoughPoints(Conflict):
    """A spend larger than what the member can spend now: refused whole, never partly."""

    code = "not_enough_points"


@dataclass(frozen=True, slots=True)
class Lot:
    """Points earned together. `remaining` is what no spend, expiry or return took yet."""

    id: int
    points: int
    remaining: int
    earned_at: datetime
    # The end of the return window: pending until then.
    available_at: datetime
    expires_at: datetime | None = None

    def state(self, now: datetime) -> str:
        """`used` when nothing remains, else `expired`, `pending` or `available`."""
        if self.remaining <= 0:
            return "used"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if now < self.available_at:
            return "pending"
        return "available"


@dataclass(frozen=True, slots=True)
class Balance:
    available: int
    pending: int
    # The earliest moment some available points expire, and how many then.
    next_expiry: datetime | None
    expiring: int


def _oldest_first(lots: Iterable[Lot]) -> list[Lot]:
    return sorted(lots, key=lambda lot: (lot.earned_at, lot.id))


def spendable(lots: Iterable[Lot], now: datetime) -> list[Lot]:
    """The lots a spend may take from at `now`, oldest first."""
    return [lot for lot in _oldest_first(lots) if lot.state(now) == "available"]


def balance(lots: Sequence[Lot], now: datetime) -> Balance:
    available = spendable(lots, now)
    pending = sum(lot.remaining for lot in lots if lot.state(now) == "pending")
    expiries = [lot.expires_at for lot in available if lot.expires_at is not None]
    soonest = min(expiries, default=None)
    expiring = sum(lot.remaining for lot in available if lot.expires_at == soonest)
    return Balance(
        available=sum(lot.remaining for lot in available),
        pending=pending,
        next_expiry=soonest,
        expiring=expiring if soonest is not None else 0,
    )


def take(lots: Iterable[Lot], points: int, now: datetime) -> list[tuple[int, int]]:
    """What a spend of `points` takes from each lot, oldest first: (lot id, points).
    Refused whole (`NotEnoughPoints`) when the member cannot spend that many now."""
    if points <= 0:
        raise DomainError("points must be a whole number above 0", field="points")
    taken: list[tuple[int, int]] = []
    wanted = points
    for lot in spendable(lots, now):
        part = min(lot.remaining, wanted)
        taken.append((lot.id, part))
        wanted -= part
        if wanted == 0:
            return taken
    raise NotEnoughPoints(
        f"the member can spend {points - wanted} points now, not {points}", field="points"
    )


def expired(lots: Iterable[Lot], now: datetime) -> list[tuple[int, int]]:
    """The points that have expired by `now` and are still counted in their lot:
    (lot id, points), oldest first, for the ledger's `expire` entries."""
    return [(lot.id, lot.remaining) for lot in _oldest_first(lots) if lot.state(now) == "expired"]


def points_to_reverse(earned: int, eligible: int, returned_before: int, returning: int) -> int:
    """The points a return takes back from an order that earned `earned` points on
    `eligible` (its amount that counted, in minor units), when `returned_before` of that
    amount came back already and `returning` comes back now.

    In proportion, rounded down at each return on the running total: returns never take
    back more than the order earned, and returning everything, in any number of parts,
    takes back exactly what it earned.
    """
    if earned < 0 or eligible < 0 or returned_before < 0 or returning < 0:
        raise DomainError("points and amounts cannot be negative", field="items")
    if returned_before + returning > eligible:
        raise DomainError(
            f"the return brings back {returned_before + returning} in all, more than the"
            f" {eligible} that earned points",
            field="items",
        )
    if eligible == 0:
        return 0
    total = returned_before + returning
    return earned * total // eligible - earned * returned_before // eligible


def take_back(
    lots: Iterable[Lot], lot_id: int, points: int, now: datetime
) -> tuple[list[tuple[int, int]], int]:
    """What taking back `points` of the lot `lot_id` (a return of what earned it) takes
    from each lot, and the part it cannot take.

    From that lot first, whether pending or available (not once expired); what was spent
    of it meanwhile comes from the member's other spendable lots, oldest first. A balance
    never goes below zero: what is left over is the shortfall, for the ledger to record,
    not to take.
    """
    if points < 0:
        raise DomainError("points cannot be negative", field="points")
    ordered = _oldest_first(lots)
    taken: list[tuple[int, int]] = []
    wanted = points
    own = next((lot for lot in ordered if lot.id == lot_id), None)
    if own is not None and own.state(now) in ("pending", "available"):
        part = min(own.remaining, wanted)
        if part:
            taken.append((own.id, part))
            wanted -= part
    for lot in ordered:
        if wanted == 0:
            break
        if lot.id == lot_id or lot.state(now) != "available":
            continue
        part = min(lot.remaining, wanted)
        taken.append((lot.id, part))
        wanted -= part
    return taken, wanted


# --- what members' timelines show -----------------------------------------------------------


def track(name: str, message_id: str, at: datetime, properties: dict[str, Any]) -> dict[str, Any]:
    """A loyalty movement as a track message (Segment spec): `Points Earned`, `Points
    Spent`, `Reward Redeemed`, `Coupon Burned`..."""
    return {
        "type": "track",
        "event": name,
        "messageId": message_id,
        "timestamp": iso(at),
        "properties": properties,
    }
