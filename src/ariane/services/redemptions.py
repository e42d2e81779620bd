"""Rewards bought with points: the spend, one of the reward's stock and a code from its
pool, all or nothing, under the member's lock; refused while the reward is off offer,
out of stock or out of codes, or bought as often as one member may."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ariane.domain.clock import iso
from ariane.domain.earn_rules import Limit
from ariane.domain.errors import Conflict
from ariane.domain.loyalty import track
from ariane.domain.programmes import Reward
from ariane.services import ledger
from ariane.services.programmes import ProgrammeService
from ariane.storage import loyalty as store
from ariane.storage import rewards as reward_store
from ariane.storage.database import Connection, Database


class RewardUnavailable(Conflict):
    """A reward that cannot be bought now: off offer, out of stock, out of codes, or
    bought as often as one member may."""

    code = "reward_unavailable"


class Redemptions:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], programmes: ProgrammeService
    ) -> None:
        self.db = db
        self.clock = clock
        self.programmes = programmes

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
        ledger.check_movement(programme, key, 1)

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            member, _, found = ledger.begin_movement(conn, self.clock, programme, profile_id, key)
            if found is not None:
                # Answered from what was recorded, whatever the programme says now.
                return _replay(conn, found, member, reward_id)
            reward = self.programmes.load(conn, programme).reward(reward_id)
            _check_offer(conn, programme, reward, member, now)
            if rule is not None and limit is not None:
                ledger.check_limit(conn, programme, member, rule, limit, now)
            cost = 0 if rule is not None else reward.cost
            entry = ledger.spend(
                conn,
                programme,
                member,
                cost,
                key,
                f"reward:{reward.id}",
                now,
                rule=rule,
                on_timeline=False,
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
            events = [ledger.timeline_event(entry, "Points Spent")] if cost else []
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


def _replay(conn: Connection, found: dict[str, Any], member: str, reward_id: str) -> dict[str, Any]:
    """The first answer to a purchase under the key of the entry `found`, if it was this
    same purchase."""
    bought = ledger.purchase_paid_by(conn, found)
    if bought is None:
        raise ledger.entry_reused(found)
    if (bought["profile_id"], bought["reward"]) != (member, reward_id):
        raise ledger.key_reused(found, f"the purchase of reward {bought['reward']!r}")
    return _answer(conn, bought)


def _answer(conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The answer to a purchase, from its recorded redemption `row`."""
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
