"""Loyalty points, earned and spent in real time: every movement an entry of an
append-only ledger with an idempotency key, each member's movements one at a time under
the lock of their account, so that nothing is given or taken twice.

The movements a member, a till or an earn rule asks for (earn, spend, return, adjust,
transfer) and what an account holds. How each writes the ledger is `services.ledger`; a
reward bought, `services.redemptions`; tiers and expiry, `services.loyalty_upkeep`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ariane.domain.clock import iso
from ariane.domain.earn_rules import Limit
from ariane.domain.errors import DomainError, NotFound
from ariane.domain.loyalty import balance, points_to_reverse, take, take_back
from ariane.domain.tiers import earned
from ariane.services import ledger, paging
from ariane.services.coupons import status as coupon_status

# Raised by `earn` and `redeem` past an earn rule's limit; the earn rules catch it here.
from ariane.services.ledger import LimitReached as LimitReached
from ariane.services.loyalty_upkeep import LoyaltyUpkeep, review_tier
from ariane.services.programmes import ProgrammeService
from ariane.services.redemptions import Redemptions
from ariane.storage import loyalty as store
from ariane.storage import rewards as reward_store
from ariane.storage.database import Connection, Database


class LoyaltyService:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], programmes: ProgrammeService
    ) -> None:
        self.db = db
        self.clock = clock
        self.programmes = programmes
        self.redemptions = Redemptions(db, clock, programmes)
        self.upkeep = LoyaltyUpkeep(db, clock, programmes)

    def earn(
        self,
        programme: str,
        profile_id: str,
        points: int,
        key: str,
        *,
        reference: str | None = None,
        rule: str | None = None,
        limit: Limit | None = None,
        eligible: int | None = None,
    ) -> dict[str, Any]:
        """Add a lot of `points`, pending through the programme's return window and
        expiring after its validity. Replayed with the same key, the first answer.

        Given by the earn rule `rule`, whose `limit` (so many entries per member, ever
        or per period) is checked under the member's lock: `LimitReached` beyond it.
        For a purchase (`reference` its order id), `eligible` is the amount that earned
        the points, in ten-thousandths, kept for its returns.
        """
        ledger.check_movement(programme, key, points)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            member, standing, found = ledger.begin_movement(
                conn, self.clock, programme, profile_id, key
            )
            if found is not None:
                if rule is not None and (found["profile_id"], found["kind"], found["rule"]) == (
                    member,
                    "earn",
                    rule,
                ):
                    # What the rule gave the first time, though it would give otherwise
                    # now (the first earn promoted the member, say).
                    return found
                return ledger.replay(conn, found, member, "earn", points)
            if rule is not None and limit is not None:
                ledger.check_limit(conn, programme, member, rule, limit, now)
            entry = ledger.record(
                conn, programme, member, "earn", points, key, reference, now, rule=rule
            )
            available, expires = ledger.give_lot(conn, declared, member, entry, now, pending=True)
            ledger.put_on_timeline(
                conn,
                entry,
                "Points Earned",
                available_at=iso(available),
                expires_at=None if expires is None else iso(expires),
            )
            if eligible is not None and reference is not None and rule is not None:
                store.record_purchase(
                    conn,
                    {
                        "entry_id": entry["id"],
                        "programme": programme,
                        "profile_id": member,
                        "order_id": reference,
                        "rule": rule,
                        "points": points,
                        "eligible": eligible,
                        "returned": 0,
                        "at": now,
                    },
                )
            review_tier(conn, declared, member, standing, now, "earned", f"entry-{entry['id']}")
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
        ledger.check_movement(programme, key, points)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            self.programmes.load(conn, programme)
            member, _, found = ledger.begin_movement(conn, self.clock, programme, profile_id, key)
            if found is not None:
                return ledger.replay(conn, found, member, "spend", -points)
            return ledger.spend(conn, programme, member, points, key, reference, now)

        return self.db.write(work)

    def redeem(
        self,
        programme: str,
        profile_id: str,
        reward_id: str,
        key: str,
        *,
        rule: str | None = None,
        limit: Limit | None = None,
    ) -> dict[str, Any]:
        """Buy a reward with points: `Redemptions.redeem`."""
        return self.redemptions.redeem(
            programme, profile_id, reward_id, key, rule=rule, limit=limit
        )

    def balance(self, programme: str, profile_id: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.read() as conn:
            declared = self.programmes.load(conn, programme)
            member = ledger.live_member(conn, profile_id)
            held = store.lots(conn, programme, member)
            coupons = reward_store.member_coupons(conn, programme, member)
            standing = store.standing(conn, programme, member)
            window = None if declared.tiers is None else declared.tiers.window
            entries = (
                []
                if window is None
                else store.earned_entries(conn, programme, member, now - window)
            )
        current = balance(held, now)
        return {
            "profile_id": member,
            "programme": programme,
            "tier": standing.tier,
            "tier_since": standing.since,
            "points_in_tier_window": None if window is None else earned(entries, now, window),
            "available": current.available,
            "pending": current.pending,
            "next_expiry": current.next_expiry,
            "expiring": current.expiring,
            "coupons": [
                {
                    "code": coupon["code"],
                    "reward": coupon["reward"],
                    "status": coupon_status(coupon, now),
                    "issued_at": coupon["issued_at"],
                    "expires_at": coupon["expires_at"],
                }
                for coupon in coupons
            ],
        }

    def reverse(
        self,
        programme: str,
        profile_id: str,
        order_id: str,
        returning: Callable[[dict[str, Any]], int | None],
        key: str,
    ) -> dict[str, Any]:
        """Take back the points of returned items, in proportion: for each purchase of
        the order that earned points, `returning(purchase)` says how much of its
        eligible amount comes back (None: all that has not yet). Taken from the
        purchase's own lot first, then the oldest, never below zero: what cannot be
        taken (spent meanwhile) is the shortfall. Replayed with the same key, nothing
        more is taken."""
        ledger.check_movement(programme, key, 1)
        # Each purchase's entry is keyed "<key>/<its entry id>": up to 20 digits.
        ledger.check_key_room(key, "a return", 21)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            member, standing = ledger.lock_member(conn, self.clock, programme, profile_id)
            bought = store.purchases(conn, programme, member, order_id)
            if not bought:
                raise NotFound(
                    f"no purchase {order_id!r} of this member earned points", field="order_id"
                )
            moved: list[dict[str, Any]] = []
            shortfall = 0
            for purchase in bought:
                part = f"{key}/{purchase['entry_id']}"
                found = store.entry_by_key(conn, programme, part)
                if found is not None:
                    if (found["profile_id"], found["kind"]) != (member, "reverse"):
                        raise ledger.entry_reused(found)
                    moved.append(found)
                    continue
                left = purchase["eligible"] - purchase["returned"]
                wanted = returning(purchase)
                back = left if wanted is None else min(max(wanted, 0), left)
                if back <= 0:
                    continue
                points = points_to_reverse(
                    purchase["points"], purchase["eligible"], purchase["returned"], back
                )
                taken, short = take_back(
                    store.lots(conn, programme, member), purchase["entry_id"], points, now
                )
                shortfall += short
                entry = ledger.record(
                    conn,
                    programme,
                    member,
                    "reverse",
                    -sum(p for _, p in taken),
                    part,
                    order_id,
                    now,
                    rule=purchase["rule"],
                )
                store.take_from_lots(conn, entry["id"], member, taken)
                store.add_returned(conn, purchase["entry_id"], back)
                ledger.put_on_timeline(conn, entry, "Points Reversed", shortfall=short)
                moved.append(entry)
            if moved:
                review_tier(
                    conn, declared, member, standing, now, "returned", f"return-{moved[-1]['id']}"
                )
            return {
                "programme": programme,
                "profile_id": member,
                "order_id": order_id,
                "points": -sum(entry["points"] for entry in moved),
                "shortfall": shortfall,
                "entries": moved,
            }

        return self.db.write(work)

    def adjust(
        self,
        programme: str,
        profile_id: str,
        points: int,
        key: str,
        *,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Points given or taken by hand (a goodwill gesture, a correction): given, a lot
        spendable at once, expiring after the programme's validity; taken, from the
        oldest spendable lots, or nothing (`NotEnoughPoints`). Replayed with the same
        key, the first answer."""
        if isinstance(points, bool) or not isinstance(points, int) or points == 0:
            raise DomainError("points must be a whole number other than 0", field="points")
        ledger.check_movement(programme, key, abs(points))

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            member, _, found = ledger.begin_movement(conn, self.clock, programme, profile_id, key)
            if found is not None:
                return ledger.replay(conn, found, member, "adjust", points)
            taken = take(store.lots(conn, programme, member), -points, now) if points < 0 else []
            entry = ledger.record(conn, programme, member, "adjust", points, key, reason, now)
            if points > 0:
                ledger.give_lot(conn, declared, member, entry, now, pending=False)
            else:
                store.take_from_lots(conn, entry["id"], member, taken)
            ledger.put_on_timeline(conn, entry, "Points Adjusted", signed=points)
            return entry

        return self.db.write(work)

    def transfer(
        self,
        programme: str,
        profile_id: str,
        to_profile_id: str,
        points: int,
        key: str,
        *,
        reference: str | None = None,
    ) -> dict[str, Any]:
        """Points moved from one member to another: taken from the giver's oldest
        spendable lots (or nothing, `NotEnoughPoints`), a lot for the receiver, spendable
        at once and expiring after the programme's validity. Both accounts are locked,
        in a fixed order. Replayed with the same key, the first answer."""
        ledger.check_movement(programme, key, points)
        # The giver's entry is keyed "<key>:out", the receiver's "<key>:in".
        ledger.check_key_room(key, "a transfer", 4)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            giver = ledger.live_member(conn, profile_id)
            receiver = ledger.live_member(conn, to_profile_id)
            if giver == receiver:
                raise DomainError("a member cannot transfer points to themselves", field="to")
            for member in sorted((giver, receiver)):
                ledger.lock_member(conn, self.clock, programme, member)
            out_key, in_key = f"{key}:out", f"{key}:in"
            sent = store.entry_by_key(conn, programme, out_key)
            if sent is not None:
                ledger.replay(conn, sent, giver, "transfer", -points)
                received = store.entry_by_key(conn, programme, in_key)
                assert received is not None
                return {"from": sent, "to": received}
            taken = take(store.lots(conn, programme, giver), points, now)
            sent = ledger.record(
                conn, programme, giver, "transfer", -points, out_key, reference, now
            )
            store.take_from_lots(conn, sent["id"], giver, taken)
            received = ledger.record(
                conn, programme, receiver, "transfer", points, in_key, reference, now
            )
            ledger.give_lot(conn, declared, receiver, received, now, pending=False)
            ledger.put_on_timeline(conn, sent, "Points Transferred", to=receiver)
            ledger.put_on_timeline(conn, received, "Points Transferred", **{"from": giver})
            return {"from": sent, "to": received}

        return self.db.write(work)

    def expire_due(self, limit: int = 200) -> int:
        """Write expired points off: `LoyaltyUpkeep.expire_due`."""
        return self.upkeep.expire_due(limit)

    def review_tiers(self, limit: int = 200) -> int:
        """Look again at the tiers due for it: `LoyaltyUpkeep.review_tiers`."""
        return self.upkeep.review_tiers(limit)

    def history(
        self, programme: str, profile_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """The member's ledger, newest first, a page at a time."""
        before = None if cursor is None else paging.decode_id(paging.LOYALTY_HISTORY, cursor)
        with self.db.read() as conn:
            self.programmes.load(conn, programme)
            member = ledger.live_member(conn, profile_id)
            found = store.entries(conn, programme, member, limit=limit + 1, before=before)
        page, more = found[:limit], len(found) > limit
        return {
            "profile_id": member,
            "programme": programme,
            "entries": page,
            "next_cursor": paging.encode(paging.LOYALTY_HISTORY, page[-1]["id"]) if more else None,
        }

    def discrepancies(
        self, programme: str | None = None, profile_id: str | None = None
    ) -> list[tuple[str, str, str]]:
        """Where lots disagree with the ledger (none, if all is well): (programme,
        member, what), for every member, or those of `programme` and `profile_id`."""
        with self.db.read() as conn:
            member = None if profile_id is None else ledger.live_member(conn, profile_id)
            return store.discrepancies(conn, programme, member)
