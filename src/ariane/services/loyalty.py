"""Loyalty points, earned and spent in real time: every movement an entry of an
append-only ledger with an idempotency key, each member's movements one at a time under
the lock of their account, so that nothing is given or taken twice."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ariane.domain.clock import format_duration, iso
from ariane.domain.earn_rules import Limit
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.loyalty import (
    Lot,
    balance,
    expired,
    points_to_reverse,
    take,
    take_back,
    track,
)
from ariane.domain.programmes import Programme, Reward
from ariane.domain.tiers import Standing, earned, stand
from ariane.services import paging
from ariane.services.coupons import status as coupon_status
from ariane.services.programmes import ProgrammeService
from ariane.storage import loyalty as store
from ariane.storage import profiles as profile_store
from ariane.storage import rewards as reward_store
from ariane.storage.database import Connection, Database, RetryTransaction

_KEY_WIDTH = 200
_NAME_WIDTH = 64
# How errors name the idempotency key: as the header of the API that carries it.
IDEMPOTENCY_KEY = "Idempotency-Key"


class LimitReached(Conflict):
    """An earn rule that gave a member as often as its limit allows."""

    code = "limit_reached"


class RewardUnavailable(Conflict):
    """A reward that cannot be bought now: off offer, out of stock, out of codes, or
    bought as often as one member may."""

    code = "reward_unavailable"


def _check(programme: str, key: str, points: int) -> None:
    if not programme or len(programme) > _NAME_WIDTH:
        raise DomainError(
            f"programme needs a name of 1 to {_NAME_WIDTH} characters", field="programme"
        )
    if not key or len(key) > _KEY_WIDTH:
        raise DomainError(
            f"an Idempotency-Key of 1 to {_KEY_WIDTH} characters is needed, the same for"
            " every retry of one movement",
            field=IDEMPOTENCY_KEY,
        )
    if isinstance(points, bool) or not isinstance(points, int) or points <= 0:
        raise DomainError("points must be a whole number above 0", field="points")


def _lot(
    conn: Connection,
    declared: Programme,
    member: str,
    entry: dict[str, Any],
    now: datetime,
    *,
    pending: bool,
) -> tuple[datetime, datetime | None]:
    """The lot of points an entry brings: spendable after the programme's return window
    (`pending`, for what a sale earned) or at once, until its validity runs out. When it
    becomes spendable, and when it expires."""
    expiry = declared.expiry
    available = now + expiry.return_window if pending else now
    expires = None if expiry.validity is None else now + expiry.validity
    points = entry["points"]
    store.insert_lot(
        conn, declared.id, member, Lot(entry["id"], points, points, now, available, expires)
    )
    return available, expires


class LoyaltyService:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], programmes: ProgrammeService
    ) -> None:
        self.db = db
        self.clock = clock
        self.programmes = programmes

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
        _check(programme, key, points)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            member, standing, found = self._begin(conn, programme, profile_id, key)
            if found is not None:
                if rule is not None and (found["profile_id"], found["kind"], found["rule"]) == (
                    member,
                    "earn",
                    rule,
                ):
                    # What the rule gave the first time, though it would give otherwise
                    # now (the first earn promoted the member, say).
                    return found
                return self._replay(conn, found, member, "earn", points)
            if rule is not None and limit is not None:
                self._check_limit(conn, programme, member, rule, limit, now)
            entry = self._record(
                conn, programme, member, "earn", points, key, reference, now, rule=rule
            )
            available, expires = _lot(conn, declared, member, entry, now, pending=True)
            self._tell(
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
            self._review_tier(
                conn, declared, member, standing, now, "earned", f"entry-{entry['id']}"
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
            self.programmes.load(conn, programme)
            member, _, found = self._begin(conn, programme, profile_id, key)
            if found is not None:
                return self._replay(conn, found, member, "spend", -points)
            return self._spend(conn, programme, member, points, key, reference, now)

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
        """Buy a reward with points: the spend, one of its stock, and a code from its pool,
        all or nothing. Replayed with the same key, the first answer.

        Given by the earn rule `rule` (an instant reward), it costs nothing, and the
        rule's `limit` holds as for `earn`.
        """
        _check(programme, key, 1)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            member, _, found = self._begin(conn, programme, profile_id, key)
            if found is not None:
                # Answered from what was recorded, whatever the programme says now.
                return self._replay_redemption(conn, found, member, reward_id)
            reward = self.programmes.load(conn, programme).reward(reward_id)
            self._check_offer(conn, programme, reward, member, now)
            if rule is not None and limit is not None:
                self._check_limit(conn, programme, member, rule, limit, now)
            cost = 0 if rule is not None else reward.cost
            entry = self._spend(
                conn,
                programme,
                member,
                cost,
                key,
                f"reward:{reward.id}",
                now,
                rule=rule,
                tell=False,
            )
            if reward.stock is not None and not reward_store.take_stock(
                conn, programme, reward.id, reward.stock
            ):
                raise RewardUnavailable(f"reward {reward.id!r} is out of stock", field="reward")
            coupon = None
            if reward.pool is not None:
                coupon = reward_store.issue_code(
                    conn,
                    programme,
                    reward.pool,
                    profile_id=member,
                    reward=reward.id,
                    now=now,
                    expires_at=None
                    if reward.coupon_validity is None
                    else now + reward.coupon_validity,
                )
                if coupon is None:
                    raise RewardUnavailable(
                        f"reward {reward.id!r} has no codes left in pool {reward.pool!r};"
                        " generate or import more",
                        field="reward",
                    )
            redemption = {
                "programme": programme,
                "reward": reward.id,
                "profile_id": member,
                "entry_id": entry["id"],
                "coupon_id": None if coupon is None else coupon["id"],
                "at": now,
            }
            redemption_id = reward_store.insert_redemption(conn, redemption)
            message_id = f"loyalty-redemption-{redemption_id}"
            properties = {
                "programme": programme,
                "reward": reward.id,
                "points": cost,
                "coupon_code": None if coupon is None else coupon["code"],
            }
            # The spend's event and the purchase's, in one statement.
            events = [self._event(entry, "Points Spent")] if cost else []
            events.append(
                (message_id, member, track("Reward Redeemed", message_id, now, properties), now)
            )
            store.add_events(conn, events)
            return {
                "id": redemption_id,
                "programme": programme,
                "reward": reward.id,
                "profile_id": member,
                "points": cost,
                "entry_id": entry["id"],
                "coupon": None
                if coupon is None
                else {"code": coupon["code"], "expires_at": coupon["expires_at"]},
                "at": now,
            }

        return self.db.write(work)

    def balance(self, programme: str, profile_id: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.read() as conn:
            declared = self.programmes.load(conn, programme)
            member = self._member(conn, profile_id)
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
        _check(programme, key, 1)
        if len(key) > _KEY_WIDTH - 21:
            raise DomainError(
                f"a return's Idempotency-Key has at most {_KEY_WIDTH - 21} characters",
                field=IDEMPOTENCY_KEY,
            )

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            member, standing = self._lock(conn, programme, profile_id)
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
                        raise self._reused(
                            found, f"{found['kind']} of {abs(found['points'])} points"
                        )
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
                entry = self._record(
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
                self._tell(conn, entry, "Points Reversed", shortfall=short)
                moved.append(entry)
            if moved:
                self._review_tier(
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
        _check(programme, key, abs(points))

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            member, _, found = self._begin(conn, programme, profile_id, key)
            if found is not None:
                return self._replay(conn, found, member, "adjust", points)
            taken = take(store.lots(conn, programme, member), -points, now) if points < 0 else []
            entry = self._record(conn, programme, member, "adjust", points, key, reason, now)
            if points > 0:
                _lot(conn, declared, member, entry, now, pending=False)
            else:
                store.take_from_lots(conn, entry["id"], member, taken)
            self._tell(conn, entry, "Points Adjusted", signed=points)
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
        _check(programme, key, points)
        if len(key) > _KEY_WIDTH - 4:
            raise DomainError(
                f"a transfer's Idempotency-Key has at most {_KEY_WIDTH - 4} characters",
                field=IDEMPOTENCY_KEY,
            )

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            declared = self.programmes.load(conn, programme)
            giver, receiver = self._member(conn, profile_id), self._member(conn, to_profile_id)
            if giver == receiver:
                raise DomainError("a member cannot transfer points to themselves", field="to")
            for member in sorted((giver, receiver)):
                self._lock(conn, programme, member)
            out_key, in_key = f"{key}:out", f"{key}:in"
            sent = store.entry_by_key(conn, programme, out_key)
            if sent is not None:
                self._replay(conn, sent, giver, "transfer", -points)
                received = store.entry_by_key(conn, programme, in_key)
                assert received is not None
                return {"from": sent, "to": received}
            taken = take(store.lots(conn, programme, giver), points, now)
            sent = self._record(
                conn, programme, giver, "transfer", -points, out_key, reference, now
            )
            store.take_from_lots(conn, sent["id"], giver, taken)
            received = self._record(
                conn, programme, receiver, "transfer", points, in_key, reference, now
            )
            _lot(conn, declared, receiver, received, now, pending=False)
            self._tell(conn, sent, "Points Transferred", to=receiver)
            self._tell(conn, received, "Points Transferred", **{"from": giver})
            return {"from": sent, "to": received}

        return self.db.write(work)

    def expire_due(self, limit: int = 200) -> int:
        """Write off the ledger the points past their expiry still in a lot, as an
        `expire` entry per member (a `Points Expired` event); how many members."""
        now = self.clock()
        with self.db.read() as conn:
            due = store.expired_members(conn, now, limit)
        for programme_id, member in due:

            def work(
                conn: Connection, programme_id: str = programme_id, member: str = member
            ) -> None:
                live, _ = self._lock(conn, programme_id, member)
                gone = expired(store.lots(conn, programme_id, live), now)
                if not gone:
                    return
                key = f"expire:{live}:{iso(now)}"
                total = sum(points for _, points in gone)
                entry = self._record(conn, programme_id, live, "expire", -total, key, None, now)
                store.take_from_lots(conn, entry["id"], live, gone)
                self._tell(conn, entry, "Points Expired")

            self.db.write(work)
        return len(due)

    def review_tiers(self, limit: int = 200) -> int:
        """Look again at the tiers due for it (points leaving the window, a grace period
        ending); how many there were."""
        now = self.clock()
        with self.db.read() as conn:
            due = store.tiers_due(conn, now, limit)
        for programme_id, member in due:

            def work(
                conn: Connection, programme_id: str = programme_id, member: str = member
            ) -> None:
                live, current = self._lock(conn, programme_id, member)
                if live != member:
                    return
                if current.review_at is None or current.review_at > now:
                    return  # Looked at meanwhile by another process.
                declared = self.programmes.load(conn, programme_id)
                key = f"{programme_id}-{member}-{iso(now)}"
                self._review_tier(conn, declared, member, current, now, "window", key)

            self.db.write(work)
        return len(due)

    def history(
        self, programme: str, profile_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """The member's ledger, newest first, a page at a time."""
        before = None if cursor is None else paging.decode_id(paging.LOYALTY_HISTORY, cursor)
        with self.db.read() as conn:
            self.programmes.load(conn, programme)
            member = self._member(conn, profile_id)
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
            member = None if profile_id is None else self._member(conn, profile_id)
            return store.discrepancies(conn, programme, member)

    # --- inside a movement's transaction ---------------------------------------------------

    def _spend(
        self,
        conn: Connection,
        programme: str,
        member: str,
        points: int,
        key: str,
        reference: str | None,
        now: datetime,
        *,
        rule: str | None = None,
        tell: bool = True,
    ) -> dict[str, Any]:
        """Take `points` from the member's oldest lots; with `tell`, put the spend on
        their timeline (else the caller does, with its own event)."""
        taken = take(store.lots(conn, programme, member), points, now) if points else []
        entry = self._record(
            conn, programme, member, "spend", -points, key, reference, now, rule=rule
        )
        store.take_from_lots(conn, entry["id"], member, taken)
        if points and tell:
            self._tell(conn, entry, "Points Spent")
        return entry

    @classmethod
    def _tell(cls, conn: Connection, entry: dict[str, Any], name: str, **more: Any) -> None:
        """Put the entry on the member's timeline, once it commits."""
        store.add_events(conn, [cls._event(entry, name, **more)])

    @staticmethod
    def _event(
        entry: dict[str, Any], name: str, **more: Any
    ) -> tuple[str, str, dict[str, Any], datetime]:
        """The timeline event `name` of the entry, for `store.add_events`."""
        message_id = f"loyalty-entry-{entry['id']}"
        properties = {
            "programme": entry["programme"],
            "points": abs(entry["points"]),
            "reference": entry["reference"],
            **more,
        }
        message = track(name, message_id, entry["at"], properties)
        return message_id, entry["profile_id"], message, entry["at"]

    @staticmethod
    def _review_tier(
        conn: Connection,
        declared: Programme,
        member: str,
        current: Standing,
        now: datetime,
        cause: str,
        key: str,
    ) -> None:
        """Bring the member's tier from `current` to where their points earned put it,
        under their lock; a change is a `Tier Changed` event on their timeline."""
        tiers = declared.tiers
        if tiers is None:
            if current != Standing(None, None, None, None, 0):
                store.save_standing(conn, declared.id, member, Standing(None, None, None, None, 0))
            return
        entries = store.earned_entries(conn, declared.id, member, now - tiers.window)
        found = stand(tiers, current, entries, now)
        store.save_standing(conn, declared.id, member, found)
        if found.tier != current.tier:
            message_id = f"loyalty-tier-{key}"
            properties = {
                "programme": declared.id,
                "from": current.tier,
                "to": found.tier,
                "points": found.points,
                "cause": cause,
            }
            message = track("Tier Changed", message_id, now, properties)
            store.add_event(conn, message_id, member, message, now)

    @staticmethod
    def _check_limit(
        conn: Connection, programme: str, member: str, rule: str, limit: Limit, now: datetime
    ) -> None:
        since = None if limit.per is None else now - limit.per
        used = store.rule_uses(conn, programme, member, rule, since)
        if used >= limit.count:
            period = "" if limit.per is None else f" in {format_duration(limit.per)}"
            raise LimitReached(
                f"rule {rule!r} gave the member {used} time(s){period}, as often as it may",
                field="rule",
            )

    @staticmethod
    def _check_offer(
        conn: Connection, programme: str, reward: Reward, member: str, now: datetime
    ) -> None:
        if not reward.on_offer(now):
            raise RewardUnavailable(
                f"reward {reward.id!r} is on offer from"
                f" {iso(reward.valid_from) if reward.valid_from else 'the start'} until"
                f" {iso(reward.valid_until) if reward.valid_until else 'further notice'},"
                " not now",
                field="reward",
            )
        if reward.per_member is not None:
            bought = reward_store.redemptions_of(conn, programme, reward.id, member)
            if bought >= reward.per_member:
                raise RewardUnavailable(
                    f"the member has bought reward {reward.id!r} {bought} time(s), as often"
                    " as one member may",
                    field="reward",
                )

    def _redemption(self, conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
        coupon = None
        if row["coupon_id"] is not None:
            found = reward_store.coupon_by_id(conn, row["coupon_id"])
            coupon = {"code": found["code"], "expires_at": found["expires_at"]}
        entry = store.entry(conn, row["entry_id"])
        return {
            "id": row["id"],
            "programme": row["programme"],
            "reward": row["reward"],
            "profile_id": row["profile_id"],
            "points": -entry["points"],
            "entry_id": row["entry_id"],
            "coupon": coupon,
            "at": row["at"],
        }

    def _member(self, conn: Connection, profile_id: str) -> str:
        live = profile_store.resolve_profile_id(conn, profile_id)
        if live is None:
            raise NotFound(f"no profile {profile_id!r}", field="profile_id")
        return live

    def _begin(
        self, conn: Connection, programme: str, profile_id: str, key: str | None
    ) -> tuple[str, Standing, dict[str, Any] | None]:
        """The member's live profile id, their account locked until commit, and their
        tier as it stands; and the entry already recorded under `key`, if any. A merge
        locks the accounts too: a member merged away while this waited is a race lost,
        run again (and found under the survivor)."""
        member = self._member(conn, profile_id)
        standing = store.lock_account(conn, programme, member, self.clock())
        live, found = store.still_live(conn, programme, member, key)
        if not live:
            raise RetryTransaction(f"member {member} was merged meanwhile")
        return member, standing, found

    def _lock(self, conn: Connection, programme: str, profile_id: str) -> tuple[str, Standing]:
        """`_begin` with no key to look up."""
        member, standing, _ = self._begin(conn, programme, profile_id, None)
        return member, standing

    @staticmethod
    def _reused(found: dict[str, Any], what: str) -> Conflict:
        return Conflict(
            f"Idempotency-Key {found['idempotency_key']!r} was used at {iso(found['at'])} for"
            f" another movement ({what}); use a new key for a new movement",
            field=IDEMPOTENCY_KEY,
        )

    def _replay(
        self, conn: Connection, found: dict[str, Any], member: str, kind: str, points: int
    ) -> dict[str, Any]:
        """The first answer to a movement under the key of `found`: the entry, if it was
        this same movement (a reward bought is not a plain spend)."""
        bought = (
            reward_store.redemption_by_entry(conn, found["id"])
            if found["kind"] == "spend"
            else None
        )
        if bought is not None:
            raise self._reused(found, f"the purchase of reward {bought['reward']!r}")
        if (found["profile_id"], found["kind"], found["points"]) != (member, kind, points):
            raise self._reused(found, f"{found['kind']} of {abs(found['points'])} points")
        return found

    def _replay_redemption(
        self, conn: Connection, found: dict[str, Any], member: str, reward_id: str
    ) -> dict[str, Any]:
        bought = (
            reward_store.redemption_by_entry(conn, found["id"])
            if found["kind"] == "spend"
            else None
        )
        if bought is None:
            raise self._reused(found, f"{found['kind']} of {abs(found['points'])} points")
        if (bought["profile_id"], bought["reward"]) != (member, reward_id):
            raise self._reused(found, f"the purchase of reward {bought['reward']!r}")
        return self._redemption(conn, bought)

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
        *,
        rule: str | None = None,
    ) -> dict[str, Any]:
        row = {
            "programme": programme,
            "profile_id": member,
            "kind": kind,
            "points": points,
            "idempotency_key": key,
            "reference": reference,
            "at": now,
            "rule": rule,
        }
        entry_id = store.insert_entry(conn, row)
        if entry_id is None:
            # Taken meanwhile by a movement of another member (one of this member's would
            # have waited for the lock and been found above).
            found = store.entry_by_key(conn, programme, key)
            assert found is not None
            raise self._reused(found, f"{found['kind']} of {abs(found['points'])} points")
        return {"id": entry_id, **row}
