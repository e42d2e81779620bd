"""Earn rules: what an event earns a member, declared in a programme.

    earn_rules:
      - id: purchases
        event: Order Completed
        points_per_unit: 1             # per unit of currency spent on eligible items
        exclude: {skus: [GIFT-CARD], categories: [gift-cards]}
        multipliers:                   # the largest matching item multiplier per
          - {category: rings, factor: 2}      # item, and the largest matching member
          - {sku: RING-42, factor: 3}         # multiplier (segment or tier) for the
          - {segment: vip, factor: 1.5}       # whole purchase
      - id: newsletter
        event: Newsletter Subscribed
        points: 50
        limit: {count: 1, per: P30D}   # per member; without per, ever
      - id: social-voucher             # commented on Facebook AND on Instagram
        event: Comment Posted
        when: {all: [{event: Comment Posted, where: [{property: network, op: eq,
                      value: facebook}], count: {gte: 1}}, {...instagram...}]}
        reward: voucher-10             # a code of the reward's pool, at no cost
        limit: {count: 1}
      - id: referral
        event: Referral Completed
        referral: {referrer: 100, referred: 50}   # the referrer's user id in referrer_id
        stop: true                     # later rules do not apply to the event

Rules apply in their order; one with `stop` that gives something ends the event's rules.
The amount of a purchase is the sum of its products' `price` times `quantity` (Segment's
e-commerce spec), less the excluded ones; shipping and tax are never items. Without
products, `revenue`, else `total` less `shipping` and `tax`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, localcontext
from typing import Any

from ariane.domain.clock import format_duration
from ariane.domain.conditions import Names, Node, parse_condition, to_json
from ariane.domain.definitions import duration, keyed, listed, whole
from ariane.domain.predicates import InvalidDefinition

MAX_FACTOR = 100
# More than any purchase earns.
MAX_POINTS = 10**12
MULTIPLIER_KINDS = ("category", "sku", "segment", "tier")
# Amounts are worked out where an overflow gives Infinity rather than an error, then held
# to `_MOST`: more than any sale is worth, yet a number. A sale of "1e9999999" is then
# refused as earning too much, and its return takes back all the sale earned.
_AMOUNTS = Context(traps=[InvalidOperation, DivisionByZero])
_MOST = Decimal("1e100")
_ITEM_KINDS = ("category", "sku")


@dataclass(frozen=True, slots=True)
class Multiplier:
    on: str
    value: str
    factor: Decimal


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    # None: ever.
    per: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Referral:
    referrer: int
    referred: int
    # The property holding the referrer's user id.
    property: str = "referrer_id"


@dataclass(frozen=True, slots=True)
class EarnRule:
    id: str
    event: str
    points: int | None = None
    points_per_unit: Decimal | None = None
    exclude_skus: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    multipliers: tuple[Multiplier, ...] = ()
    referral: Referral | None = None
    reward: str | None = None
    when: Node | None = None
    limit: Limit | None = None
    stop: bool = False

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"id": self.id, "event": self.event}
        if self.points is not None:
            found["points"] = self.points
        if self.points_per_unit is not None:
            found["points_per_unit"] = _number(self.points_per_unit)
        if self.exclude_skus or self.exclude_categories:
            found["exclude"] = {
                "skus": sorted(self.exclude_skus),
                "categories": sorted(self.exclude_categories),
            }
        if self.multipliers:
            found["multipliers"] = [
                {m.on: m.value, "factor": _number(m.factor)} for m in self.multipliers
            ]
        if self.referral is not None:
            found["referral"] = {
                "referrer": self.referral.referrer,
                "referred": self.referral.referred,
                "property": self.referral.property,
            }
        if self.reward is not None:
            found["reward"] = self.reward
        if self.when is not None:
            found["when"] = to_json(self.when)
        if self.limit is not None:
            found["limit"] = {"count": self.limit.count}
            if self.limit.per is not None:
                found["limit"]["per"] = format_duration(self.limit.per)
        found["stop"] = self.stop
        return found


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


@dataclass(frozen=True, slots=True)
class Award:
    """What a rule gives for one event: points to the member (or to the referrer named by
    the event), or a reward's code."""

    rule: str
    points: int = 0
    to_referrer: bool = False
    reward: str | None = None
    # The amount that earned the points (purchases), and the same with each item's
    # multiplier applied: returns take back points in proportion to the latter.
    eligible: Decimal = Decimal(0)
    weighted: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class Member:
    """What member-wide multipliers read."""

    segments: Collection[str] = field(default_factory=frozenset)
    tier: str | None = None


def awards(
    rules: Sequence[EarnRule],
    event: str,
    properties: Mapping[str, Any],
    member: Member,
    applies: Callable[[EarnRule], bool] = lambda _: True,
) -> list[Award]:
    """What an event earns under `rules`, in their order. `applies` says whether a rule
    may give anything now (its limit and its condition, which the caller reads from
    storage); it is asked only of rules of the event that would give something."""
    found: list[Award] = []
    for rule in rules:
        if rule.event != event:
            continue
        given = award(rule, properties, member)
        if not given or not applies(rule):
            continue
        found.extend(given)
        if rule.stop:
            break
    return found


def award(rule: EarnRule, properties: Mapping[str, Any], member: Member) -> list[Award]:
    """What one rule gives for an event's properties, limits and conditions aside."""
    if rule.reward is not None:
        return [Award(rule.id, reward=rule.reward)]
    if rule.referral is not None:
        given = [Award(rule.id, points=rule.referral.referred)] if rule.referral.referred else []
        if rule.referral.referrer:
            given.append(Award(rule.id, points=rule.referral.referrer, to_referrer=True))
        return given
    if rule.points is not None:
        return [Award(rule.id, points=rule.points)] if rule.points else []
    assert rule.points_per_unit is not None
    eligible, weighted = purchase_amount(rule, properties)
    factor = _largest(rule, member)
    exact = weighted * rule.points_per_unit * factor
    if exact > MAX_POINTS:
        # An amount no sale reaches: a mistake of the sender's, not points to give.
        raise InvalidDefinition(
            f"the purchase would earn {exact:.0f} points, more than {MAX_POINTS:,}",
            field="properties",
        )
    points = math.floor(exact)
    if points <= 0:
        return []
    return [Award(rule.id, points=points, eligible=eligible, weighted=weighted)]


def purchase_amount(rule: EarnRule, properties: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    """The amount that earns points, and the same with each item's multiplier applied."""
    with localcontext(_AMOUNTS):
        eligible, weighted = _amounts(rule, properties)
    return min(eligible, _MOST), min(weighted, _MOST)


def _amounts(rule: EarnRule, properties: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    products = properties.get("products")
    if isinstance(products, list) and products:
        eligible = weighted = Decimal(0)
        for item in products:
            if not isinstance(item, Mapping) or _excluded(rule, item):
                continue
            price, quantity = _decimal(item.get("price")), _decimal(item.get("quantity", 1))
            if price is None or quantity is None or price <= 0 or quantity <= 0:
                continue
            amount = price * quantity
            eligible += amount
            weighted += amount * _item_factor(rule, item)
        return eligible, weighted
    revenue = _decimal(properties.get("revenue"))
    if revenue is None:
        total = _decimal(properties.get("total"))
        if total is None:
            return Decimal(0), Decimal(0)
        revenue = total - sum(
            (_decimal(properties.get(key)) or Decimal(0) for key in ("shipping", "tax")),
            Decimal(0),
        )
    revenue = max(revenue, Decimal(0))
    return revenue, revenue


def _excluded(rule: EarnRule, item: Mapping[str, Any]) -> bool:
    return (
        str(item.get("sku")) in rule.exclude_skus
        or str(item.get("category")) in rule.exclude_categories
    )


def _item_factor(rule: EarnRule, item: Mapping[str, Any]) -> Decimal:
    matching = [
        m.factor
        for m in rule.multipliers
        if m.on in _ITEM_KINDS and item.get(m.on) is not None and str(item.get(m.on)) == m.value
    ]
    return max(matching, default=Decimal(1))


def _largest(rule: EarnRule, member: Member) -> Decimal:
    matching = [
        m.factor
        for m in rule.multipliers
        if (m.on == "segment" and m.value in member.segments)
        or (m.on == "tier" and m.value == member.tier)
    ]
    return max(matching, default=Decimal(1))


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        found = Decimal(str(value))
    except InvalidOperation:
        return None
    return found if found.is_finite() else None


# --- parsing ------------------------------------------------------------------------------

_GIVES = ("points", "points_per_unit", "referral", "reward")
_KEYS = ("id", "event", *_GIVES, "exclude", "multipliers", "when", "limit", "stop")


def parse_rule(node: Any, path: str, names: Names, rewards: Collection[str]) -> EarnRule:
    """One rule of `earn_rules`; `names` are the segments and computed traits a `when`
    or a multiplier may name, `rewards` the ids of the programme's rewards."""
    node = keyed(node, path, _KEYS)
    gives = [key for key in _GIVES if node.get(key) is not None]
    if len(gives) != 1:
        raise InvalidDefinition(
            f"a rule gives exactly one of {', '.join(_GIVES)}"
            + (f"; found {', '.join(gives)}" if gives else ""),
            field=path,
        )
    event = node.get("event")
    if not isinstance(event, str) or not event.strip() or len(event) > 200:
        raise InvalidDefinition("needs the name of the track event it reads", field=f"{path}.event")
    if gives[0] != "points_per_unit":
        for key in ("exclude", "multipliers"):
            if key in node:
                raise InvalidDefinition(
                    f"{key} goes with points_per_unit only", field=f"{path}.{key}"
                )
    reward = node.get("reward")
    if reward is not None and (not isinstance(reward, str) or reward not in rewards):
        raise InvalidDefinition(
            f"no reward {reward!r}; declare it under rewards", field=f"{path}.reward"
        )
    stop = node.get("stop", False)
    if not isinstance(stop, bool):
        raise InvalidDefinition("needs true or false", field=f"{path}.stop")
    exclude = _exclude(node.get("exclude", {}), f"{path}.exclude")
    return EarnRule(
        id=_id(node.get("id"), f"{path}.id"),
        event=event.strip(),
        points=_whole(node["points"], f"{path}.points", 0) if "points" in node else None,
        points_per_unit=_factor(node["points_per_unit"], f"{path}.points_per_unit", MAX_FACTOR)
        if "points_per_unit" in node
        else None,
        exclude_skus=exclude[0],
        exclude_categories=exclude[1],
        multipliers=tuple(
            _multiplier(item, f"{path}.multipliers[{index}]", names)
            for index, item in enumerate(listed(node.get("multipliers", []), f"{path}.multipliers"))
        ),
        referral=_referral(node["referral"], f"{path}.referral") if "referral" in node else None,
        reward=reward,
        when=parse_condition(node["when"], names, f"{path}.when") if "when" in node else None,
        limit=_limit(node["limit"], f"{path}.limit") if "limit" in node else None,
        stop=stop,
    )


def _id(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise InvalidDefinition("needs an id of 1 to 64 characters", field=path)
    return value.strip()


def _whole(value: Any, path: str, least: int) -> int:
    return whole(value, path, least=least, most=10**9)


def _factor(value: Any, path: str, most: int) -> Decimal:
    found = _decimal(value) if not isinstance(value, str) else None
    if found is None or not 0 < found <= most:
        raise InvalidDefinition(f"needs a number above 0 and at most {most}", field=path)
    return found


def _exclude(value: Any, path: str) -> tuple[frozenset[str], frozenset[str]]:
    if not isinstance(value, Mapping) or not set(value) <= {"skus", "categories"}:
        raise InvalidDefinition("needs an object with skus and categories lists", field=path)
    found = []
    for key in ("skus", "categories"):
        items = listed(value.get(key, []), f"{path}.{key}")
        if not all(isinstance(item, str) and item for item in items):
            raise InvalidDefinition("needs a list of texts", field=f"{path}.{key}")
        found.append(frozenset(items))
    return found[0], found[1]


def _multiplier(value: Any, path: str, names: Names) -> Multiplier:
    kinds = [k for k in MULTIPLIER_KINDS if isinstance(value, Mapping) and k in value]
    if not isinstance(value, Mapping) or len(kinds) != 1 or not set(value) <= {kinds[0], "factor"}:
        raise InvalidDefinition(
            f"needs one of {', '.join(MULTIPLIER_KINDS)} and a factor, such as"
            " {category: rings, factor: 2}",
            field=path,
        )
    on = kinds[0]
    target = value[on]
    if not isinstance(target, str) or not target:
        raise InvalidDefinition("needs a text", field=f"{path}.{on}")
    if on == "segment" and target not in names.segments:
        raise InvalidDefinition(
            f"unknown segment {target!r}; create it first", field=f"{path}.segment"
        )
    return Multiplier(on, target, _factor(value.get("factor"), f"{path}.factor", MAX_FACTOR))


def _referral(value: Any, path: str) -> Referral:
    if not isinstance(value, Mapping) or not set(value) <= {"referrer", "referred", "property"}:
        raise InvalidDefinition(
            "needs {referrer: points, referred: points}, and optionally the property that"
            " holds the referrer's user id",
            field=path,
        )
    referrer = _whole(value.get("referrer", 0), f"{path}.referrer", 0)
    referred = _whole(value.get("referred", 0), f"{path}.referred", 0)
    if not referrer and not referred:
        raise InvalidDefinition("gives the referrer, the referred or both points", field=path)
    prop = value.get("property", "referrer_id")
    if not isinstance(prop, str) or not prop:
        raise InvalidDefinition("needs a property name", field=f"{path}.property")
    return Referral(referrer, referred, prop)


def _limit(value: Any, path: str) -> Limit:
    if not isinstance(value, Mapping) or not set(value) <= {"count", "per"}:
        raise InvalidDefinition("needs {count: N} and optionally per: P30D", field=path)
    per = value.get("per")
    length = None if per is None else duration(per, f"{path}.per")
    return Limit(_whole(value.get("count"), f"{path}.count", 1), length)
