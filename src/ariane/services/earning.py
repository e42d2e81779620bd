"""Earn rules applied to the events that flow through the pipeline, and to the sales a
till or the web sends directly; and a simulation of what an event would earn.

The rules read the events log as a handler of the bus (`handle`): once an event commits,
the rules of every programme in force are applied to it. Each award is a ledger
movement under a key made from the rule and the event (its `order_id` when it has one),
so an event read twice, or a sale sent both by a till and as an `Order Completed` event,
earns once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from ariane.domain.conditions import Node
from ariane.domain.earn_rules import Award, EarnRule, Member, award, purchase_amount
from ariane.domain.errors import DomainError, NotFound
from ariane.domain.events import SaleRecorded, StoredEvent
from ariane.domain.messages import LOYALTY_SOURCE, check_storable
from ariane.domain.programmes import Programme
from ariane.services.loyalty import LimitReached, LoyaltyService
from ariane.services.profiles import ProfileService
from ariane.services.programmes import ProgrammeService
from ariane.services.segments import SegmentService
from ariane.storage import bus as bus_store
from ariane.storage import loyalty as store
from ariane.storage import profiles as profile_store
from ariane.storage import segment_sql
from ariane.storage import segments as segment_store
from ariane.storage.bus import Entry
from ariane.storage.database import Database

log = logging.getLogger(__name__)

# Segment's e-commerce event for a refund, whole or of some products: its points go back.
REFUND_EVENT = "Order Refunded"
_KEY_PART = 100


@dataclass(frozen=True, slots=True)
class Event:
    """A track event as earn rules read it."""

    name: str
    properties: Mapping[str, Any]
    # What makes its awards' keys: its order id, or its source and message id.
    key: str
    reference: str
    # What makes a refund's key: this event itself (an order may be refunded in parts).
    message_key: str = ""

    @property
    def order_id(self) -> str | None:
        return self.reference if self.key.startswith("order:") else None


def event_key(properties: Mapping[str, Any], source_id: str, message_id: str) -> tuple[str, str]:
    """The key part and the reference of an event's awards: a purchase is known by its
    `order_id`, whichever channel sent it; any other event by its message id."""
    order = properties.get("order_id")
    if isinstance(order, str | int) and not isinstance(order, bool) and str(order).strip():
        text = str(order).strip()
        part = text if len(text) <= _KEY_PART else _digest(text)
        return f"order:{part}", text[:200]
    return "event:" + _digest(source_id + "\x00" + message_id), message_id[:200]


def _award_key(rule: str, member: str, event: str) -> str:
    """The ledger key of what a rule gave a member for an event (200 characters at
    most: a long one is digested)."""
    key = f"rule:{rule}:{member}:{event}"
    return key if len(key) <= 200 else f"rule:{rule}:{_digest(key)}"


def units(amount: Decimal) -> int:
    """An amount in ten-thousandths of its currency unit, as purchases keep it."""
    return int((amount * 10_000).to_integral_value(rounding=ROUND_HALF_EVEN))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class EarnService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        programmes: ProgrammeService,
        loyalty: LoyaltyService,
        segments: SegmentService,
        profiles: ProfileService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.programmes = programmes
        self.loyalty = loyalty
        self.segments = segments
        self.profiles = profiles

    # --- events from the pipeline -----------------------------------------------------------

    def handle(self, entries: Sequence[Entry]) -> None:
        """A handler of the bus, over the events log: apply the earn rules of every
        programme in force to the track events they read. What loyalty itself records (its
        movements, the sales tills send it, read when they arrive) is not read again."""
        with self.db.read() as conn:
            version = segment_store.version(conn)
            in_force = self.programmes.in_force(conn, version)
            listened = self.programmes.listened(conn, version)
            read = [
                stored
                for entry in entries
                if isinstance(stored := entry.event, StoredEvent)
                and stored.type == "track"
                and stored.event in listened
                and stored.source_id != LOYALTY_SOURCE
            ]
            if not read:
                return
            owners = profile_store.resolve_profile_ids(conn, (stored.profile_id for stored in read))
        for stored in read:
            member = owners[stored.profile_id]
            # An erased member's events went with them.
            if member is None:
                continue
            properties = stored.payload.get("properties")
            properties = properties if isinstance(properties, dict) else {}
            key, reference = event_key(properties, stored.source_id, stored.message_id)
            message_key = _digest(stored.source_id + "\x00" + stored.message_id)
            read_as = Event(stored.event or "", properties, key, reference, message_key)
            for programme in in_force:
                try:
                    self.apply(programme, member, read_as)
                except DomainError as error:
                    log.warning(
                        "earn rules of %s: event %s of %s: %s",
                        programme.id,
                        stored.message_id,
                        member,
                        error.message,
                    )

    def asleep(self) -> bool:
        """Whether no earn rule reads any event now: the rules' handler then skips the
        events log rather than reading it."""
        with self.db.read() as conn:
            return not self.programmes.listened(conn, segment_store.version(conn))

    def write_off_and_review(self) -> int:
        """A job: write expired points off, then look again at the tiers due for it; how
        many members that concerned."""
        return self.loyalty.expire_due() + self.loyalty.review_tiers()

    # --- one event ------------------------------------------------------------------------

    def apply(self, programme: Programme, member: str, event: Event) -> list[dict[str, Any]]:
        """Apply the programme's rules to the member's event, in their order: what each
        award moved. A rule past its limit gives nothing; one with `stop` that gave
        something ends the event's rules."""
        done: list[dict[str, Any]] = []
        if event.name == REFUND_EVENT:
            refunded = self._refund(programme, member, event)
            return [] if refunded is None else [refunded]
        facts: Member | None = None
        for rule in programme.earn_rules:
            if rule.event != event.name:
                continue
            if facts is None:
                facts = self._member(programme.id, member)
            given = award(rule, event.properties, facts)
            if not given or (rule.when is not None and not self._holds(rule.when, member)):
                continue
            moved = []
            for one in given:
                try:
                    moved.append(self._give(programme, member, rule, one, event))
                except LimitReached:
                    continue
                except NotFound as error:
                    # A referrer no profile holds.
                    log.info("earn rule %s of %s: %s", rule.id, programme.id, error.message)
            done.extend(moved)
            if moved and rule.stop:
                break
        return done

    def _give(
        self, programme: Programme, member: str, rule: EarnRule, one: Award, event: Event
    ) -> dict[str, Any]:
        # Per member: two shops' customers may share an order number.
        key = _award_key(rule.id, member, event.key)
        if one.reward is not None:
            return self.loyalty.redeem(
                programme.id, member, one.reward, key, rule=rule.id, limit=rule.limit
            )
        to = member
        if one.to_referrer:
            assert rule.referral is not None
            referrer = event.properties.get(rule.referral.property)
            if not isinstance(referrer, str | int) or isinstance(referrer, bool):
                raise NotFound(f"no referrer in {rule.referral.property}", field="referrer")
            to = self.profiles.lookup("user_id", str(referrer))
            if to == member:
                raise NotFound("a member cannot refer themselves", field="referrer")
            key = _award_key(rule.id, member, event.key + ":referrer")
        purchase = rule.points_per_unit is not None and event.order_id is not None
        return self.loyalty.earn(
            programme.id,
            to,
            one.points,
            key,
            reference=event.reference,
            rule=rule.id,
            limit=rule.limit,
            eligible=units(one.weighted) if purchase else None,
        )

    # --- returns ----------------------------------------------------------------------------

    def _refund(self, programme: Programme, member: str, event: Event) -> dict[str, Any] | None:
        """An `Order Refunded` event: the points of the order's purchases taken back, for
        its `products` if it names them, else all."""
        if event.order_id is None or not any(
            rule.points_per_unit is not None for rule in programme.earn_rules
        ):
            return None
        products = event.properties.get("products")
        try:
            return self.return_items(
                programme.id,
                member,
                event.order_id,
                products if isinstance(products, list) and products else None,
                f"refund:{event.message_key}",
            )
        except NotFound:
            return None

    def return_items(
        self,
        programme_id: str,
        profile_id: str,
        order_id: str,
        products: list[Any] | None,
        key: str,
    ) -> dict[str, Any]:
        """Items of a purchase returned (all, without `products`): the points they
        earned taken back in proportion, under `key`."""
        if not isinstance(order_id, str) or not order_id.strip() or len(order_id) > 200:
            raise DomainError("order_id needs the id of the order", field="order_id")
        with self.db.read() as conn:
            rules = {rule.id: rule for rule in self.programmes.load(conn, programme_id).earn_rules}

        def returning(purchase: dict[str, Any]) -> int | None:
            if products is None:
                return None
            rule = rules.get(purchase["rule"])
            if rule is None or rule.points_per_unit is None:
                rule = EarnRule(purchase["rule"], "", points_per_unit=Decimal(1))
            # In proportion to what the items earned: each with its multiplier.
            _, weighted = purchase_amount(rule, {"products": products})
            return units(weighted)

        return self.loyalty.reverse(programme_id, profile_id, order_id.strip(), returning, key)

    # --- from a till or the web ------------------------------------------------------------

    def record(
        self,
        programme_id: str,
        profile_id: str,
        event: str,
        properties: Mapping[str, Any],
        key: str,
    ) -> dict[str, Any]:
        """A sale (or any event the rules read) sent straight by a till or the web: the
        programme's rules applied now, and the event put on the member's timeline. Sent
        again with the same key, it earns nothing more; a sale with an `order_id` also
        sent as an `Order Completed` event through /v1 earns once."""
        if not isinstance(event, str) or not event.strip() or len(event) > 200:
            raise DomainError("event needs the name of a track event", field="event")
        if not isinstance(properties, Mapping):
            raise DomainError("properties must be an object", field="properties")
        # Stored as an event, as any other: what no database stores is refused here.
        check_storable({"event": event, "properties": properties})
        if not key or len(key) > 200:
            raise DomainError(
                "send an Idempotency-Key header, the same for every retry of one sale",
                field="Idempotency-Key",
            )
        with self.db.read() as conn:
            programme = self.programmes.load(conn, programme_id)
            member = profile_store.resolve_profile_id(conn, profile_id)
        if member is None:
            raise NotFound(f"no profile {profile_id!r}", field="profile_id")
        part, reference = event_key(properties, "api", key)
        moved = self.apply(
            programme, member, Event(event, properties, part, reference, _digest(key))
        )
        sale = SaleRecorded(
            event_id="loyalty-sale-" + _digest(f"{programme.id}\x00{key}"),
            profile_id=member,
            at=self.clock(),
            name=event,
            properties=dict(properties),
        )
        # Sent again with the same key, it is recorded once.
        self.db.write(lambda conn: bus_store.record_once(conn, [sale]))
        return {
            "programme": programme.id,
            "profile_id": member,
            "event": event,
            "points": sum(
                m["points"] for m in moved if m.get("kind") == "earn" and m["profile_id"] == member
            ),
            "movements": moved,
        }

    # --- what rules read ------------------------------------------------------------------

    def _member(self, programme: str, member: str) -> Member:
        with self.db.read() as conn:
            catalogue = self.segments.catalogue(conn)
            computed = profile_store.computed_of(conn, member)
            tier = store.standing(conn, programme, member).tier
        held: Mapping[str, Any] = (computed or {}).get("segments", {})
        return Member(
            segments=frozenset(catalogue.by_id[sid].name for sid in held if sid in catalogue.by_id),
            tier=tier,
        )

    def _holds(self, condition: Node, member: str) -> bool:
        """Whether the member meets the condition now, from what is stored."""
        # Conditions on membership of other segments read their members.
        self.segments.catch_up()
        with self.db.read() as conn:
            catalogue = self.segments.catalogue(conn)
            return segment_sql.holds(
                conn, condition, member, now=self.clock(), computed=catalogue.computed
            )

    # --- what an event would earn ----------------------------------------------------------

    def simulate(
        self,
        programme_id: str,
        event: str,
        properties: Mapping[str, Any],
        profile_id: str | None = None,
    ) -> dict[str, Any]:
        """What the event would earn, changing nothing: each rule's award, and whether
        its limit or condition would hold it back (when a member is given)."""
        if not isinstance(properties, Mapping):
            raise DomainError("properties must be an object", field="properties")
        with self.db.read() as conn:
            programme = self.programmes.load(conn, programme_id)
            member = (
                None if profile_id is None else profile_store.resolve_profile_id(conn, profile_id)
            )
        if profile_id is not None and member is None:
            raise NotFound(f"no profile {profile_id!r}", field="profile_id")
        facts = Member() if member is None else self._member(programme.id, member)
        found: list[dict[str, Any]] = []
        points = 0
        for rule in programme.earn_rules:
            if rule.event != event:
                continue
            given = award(rule, properties, facts)
            if not given:
                continue
            held_back = None if member is None else self._held_back(programme, rule, member)
            for one in given:
                found.append(
                    {
                        "rule": rule.id,
                        "points": one.points,
                        "to": "referrer" if one.to_referrer else "member",
                        "reward": one.reward,
                        "eligible_amount": float(one.eligible),
                        "held_back": held_back,
                    }
                )
                if held_back is None and not one.to_referrer:
                    points += one.points
            if held_back is None and rule.stop:
                break
        return {
            "programme": programme.id,
            "profile_id": member,
            "event": event,
            "points": points,
            "awards": found,
        }

    def _held_back(self, programme: Programme, rule: EarnRule, member: str) -> str | None:
        if rule.when is not None and not self._holds(rule.when, member):
            return "condition"
        if rule.limit is not None:
            now = self.clock()
            since = None if rule.limit.per is None else now - rule.limit.per
            with self.db.read() as conn:
                used = store.rule_uses(conn, programme.id, member, rule.id, since)
            if used >= rule.limit.count:
                return "limit"
        return None
