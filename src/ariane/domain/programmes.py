"""A loyalty programme as declared: its points, how long they wait and last, the rewards
members can buy with them and the pools of coupon codes those rewards hand out.

    id: club                       # 1 to 64 of a-z, 0-9, - and _
    name: Club Bijoux
    currency: points               # what the points are called
    expiry:
      return_window: P30D          # earned points are pending this long (default: none)
      validity: P365D              # and expire this long after they were earned (default: never)
    rewards:
      - id: voucher-10
        name: 10 € off
        cost: 500                  # in points
        stock: 1000                # how many can ever be bought (default: no limit)
        per_member: 1              # how many one member can buy (default: no limit)
        valid_from: 2026-01-01T00:00:00Z
        valid_until: 2026-12-31T23:59:59Z
        pool: voucher-10           # the coupon pool its code comes from (default: no code)
        coupon_validity: P90D      # a code bought can be burned this long (default: always)
    coupon_pools:
      - id: voucher-10
        generate: {count: 1000, prefix: BJX-, length: 8}   # or import codes by the API

Parsed strictly: an error names the path of the faulty key (`rewards[0].cost`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ariane.domain.clock import format_duration, iso, parse_timestamp
from ariane.domain.conditions import Names
from ariane.domain.definitions import duration, keyed, listed, whole
from ariane.domain.earn_rules import EarnRule, parse_rule
from ariane.domain.errors import NotFound
from ariane.domain.predicates import InvalidDefinition
from ariane.domain.tiers import Tiers, parse_tiers

# Letters and digits that cannot be mistaken for one another when read out at a till.
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
MAX_CODE = 64
# A generated code must be hard to guess: at least 8 characters of a 32-letter alphabet
# (2**40 codes), whatever the size of the pool.
MIN_GENERATED_LENGTH = 8
MAX_POOL = 1_000_000
MAX_POINTS = 10**12

_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_KEYS = ("id", "name", "currency", "expiry", "earn_rules", "tiers", "rewards", "coupon_pools")


@dataclass(frozen=True, slots=True)
class Expiry:
    return_window: timedelta = timedelta(0)
    validity: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Generate:
    count: int
    prefix: str
    length: int


@dataclass(frozen=True, slots=True)
class CouponPool:
    id: str
    name: str
    generate: Generate | None = None


@dataclass(frozen=True, slots=True)
class Reward:
    id: str
    name: str
    cost: int
    stock: int | None = None
    per_member: int | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    pool: str | None = None
    coupon_validity: timedelta | None = None

    def on_offer(self, now: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= now) and (
            self.valid_until is None or now < self.valid_until
        )


@dataclass(frozen=True, slots=True)
class Programme:
    id: str
    name: str
    currency: str = "points"
    expiry: Expiry = Expiry()
    earn_rules: tuple[EarnRule, ...] = ()
    tiers: Tiers | None = None
    rewards: tuple[Reward, ...] = ()
    coupon_pools: tuple[CouponPool, ...] = ()

    def reward(self, reward_id: str) -> Reward:
        for reward in self.rewards:
            if reward.id == reward_id:
                return reward
        raise NotFound(f"programme {self.id!r} has no reward {reward_id!r}", field="reward")

    def pool(self, pool_id: str) -> CouponPool:
        for pool in self.coupon_pools:
            if pool.id == pool_id:
                return pool
        raise NotFound(f"programme {self.id!r} has no coupon pool {pool_id!r}", field="pool")

    def to_json(self) -> dict[str, Any]:
        """The canonical form: parsing it gives the same programme."""
        expiry: dict[str, Any] = {"return_window": format_duration(self.expiry.return_window)}
        if self.expiry.validity is not None:
            expiry["validity"] = format_duration(self.expiry.validity)
        return {
            "id": self.id,
            "name": self.name,
            "currency": self.currency,
            "expiry": expiry,
            "earn_rules": [rule.to_json() for rule in self.earn_rules],
            **({} if self.tiers is None else {"tiers": self.tiers.to_json()}),
            "rewards": [_reward_json(reward) for reward in self.rewards],
            "coupon_pools": [_pool_json(pool) for pool in self.coupon_pools],
        }


def _reward_json(reward: Reward) -> dict[str, Any]:
    found: dict[str, Any] = {"id": reward.id, "name": reward.name, "cost": reward.cost}
    for key in ("stock", "per_member", "pool"):
        if getattr(reward, key) is not None:
            found[key] = getattr(reward, key)
    for key in ("valid_from", "valid_until"):
        moment = getattr(reward, key)
        if moment is not None:
            found[key] = iso(moment)
    if reward.coupon_validity is not None:
        found["coupon_validity"] = format_duration(reward.coupon_validity)
    return found


def _pool_json(pool: CouponPool) -> dict[str, Any]:
    found: dict[str, Any] = {"id": pool.id, "name": pool.name}
    if pool.generate is not None:
        found["generate"] = {
            "count": pool.generate.count,
            "prefix": pool.generate.prefix,
            "length": pool.generate.length,
        }
    return found


def check_id(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidDefinition(
            "needs an id of 1 to 64 characters: lower-case letters, digits, - and _,"
            " starting with a letter or digit",
            field=path,
        )
    return value


def is_code(value: Any) -> bool:
    return isinstance(value, str) and _CODE.fullmatch(value) is not None


def check_code(value: Any, path: str) -> str:
    """A coupon code as typed at a till: letters, digits, - and _; in capitals, since
    codes are compared without regard to case."""
    if not is_code(value):
        raise InvalidDefinition(
            f"a coupon code is 1 to {MAX_CODE} letters, digits, - or _, starting with a"
            " letter or digit",
            field=path,
        )
    return str(value).upper()


class _Anything:
    """Every name: a programme stored already is read without checking the segments its
    rules name, which may have gone since (a rule naming a segment that is gone finds
    no one in it)."""

    def __contains__(self, item: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def parse_programme(
    document: Any, path: str = "programme", names: Names | None = None
) -> Programme:
    """The programme a document declares; `names` are the segments and computed traits
    its rules may name (any, when not given)."""
    names = names if names is not None else Names(_Anything(), _Anything())
    node = keyed(document, path, _KEYS)
    programme_id = check_id(node.get("id"), f"{path}.id")
    pools = tuple(
        _parse_pool(item, f"{path}.coupon_pools[{index}]")
        for index, item in enumerate(_list(node, "coupon_pools", path))
    )
    _unique([pool.id for pool in pools], f"{path}.coupon_pools")
    known = {pool.id for pool in pools}
    rewards = tuple(
        _parse_reward(item, f"{path}.rewards[{index}]", known)
        for index, item in enumerate(_list(node, "rewards", path))
    )
    _unique([reward.id for reward in rewards], f"{path}.rewards")
    rules = tuple(
        parse_rule(item, f"{path}.earn_rules[{index}]", names, {r.id for r in rewards})
        for index, item in enumerate(_list(node, "earn_rules", path))
    )
    _unique([rule.id for rule in rules], f"{path}.earn_rules")
    tiers = None if node.get("tiers") is None else parse_tiers(node["tiers"], f"{path}.tiers")
    declared = set() if tiers is None else {level.id for level in tiers.levels}
    for index, rule in enumerate(rules):
        for place, multiplier in enumerate(rule.multipliers):
            if multiplier.on == "tier" and multiplier.value not in declared:
                raise InvalidDefinition(
                    f"no tier {multiplier.value!r}; declare it under tiers.levels",
                    field=f"{path}.earn_rules[{index}].multipliers[{place}].tier",
                )
    return Programme(
        id=programme_id,
        name=_text(node.get("name", programme_id), f"{path}.name"),
        currency=_text(node.get("currency", "points"), f"{path}.currency"),
        expiry=_parse_expiry(node.get("expiry", {}), f"{path}.expiry"),
        earn_rules=rules,
        tiers=tiers,
        rewards=rewards,
        coupon_pools=pools,
    )


def _parse_expiry(value: Any, path: str) -> Expiry:
    node = keyed(value, path, ("return_window", "validity"))
    window = node.get("return_window")
    validity = node.get("validity")
    expiry = Expiry(
        return_window=timedelta(0)
        if window is None
        else duration(window, f"{path}.return_window", zero=True),
        validity=None if validity is None else duration(validity, f"{path}.validity"),
    )
    # Points must be spendable for a day at least between the two.
    if expiry.validity is not None and expiry.validity < expiry.return_window + timedelta(days=1):
        raise InvalidDefinition(
            "validity must be at least a day longer than the return window, or points"
            " would expire before they could be spent",
            field=f"{path}.validity",
        )
    return expiry


def _parse_pool(value: Any, path: str) -> CouponPool:
    node = keyed(value, path, ("id", "name", "generate"))
    pool_id = check_id(node.get("id"), f"{path}.id")
    generate = node.get("generate")
    return CouponPool(
        id=pool_id,
        name=_text(node.get("name", pool_id), f"{path}.name"),
        generate=None if generate is None else _parse_generate(generate, f"{path}.generate"),
    )


def _parse_generate(value: Any, path: str) -> Generate:
    node = keyed(value, path, ("count", "prefix", "length"))
    count = _whole(node.get("count"), f"{path}.count", least=1, most=MAX_POOL)
    prefix = node.get("prefix", "")
    if prefix != "":
        prefix = check_code(prefix, f"{path}.prefix")
    length = _whole(node.get("length", 10), f"{path}.length", least=MIN_GENERATED_LENGTH, most=32)
    if len(prefix) + length > MAX_CODE:
        raise InvalidDefinition(
            f"prefix and length together make codes longer than {MAX_CODE}", field=path
        )
    return Generate(count=count, prefix=prefix, length=length)


def _parse_reward(value: Any, path: str, pools: set[str]) -> Reward:
    node = keyed(
        value,
        path,
        (
            "id",
            "name",
            "cost",
            "stock",
            "per_member",
            "valid_from",
            "valid_until",
            "pool",
            "coupon_validity",
        ),
    )
    reward_id = check_id(node.get("id"), f"{path}.id")
    pool = node.get("pool")
    if pool is not None and check_id(pool, f"{path}.pool") not in pools:
        raise InvalidDefinition(
            f"no coupon pool {pool!r}; declare it under coupon_pools", field=f"{path}.pool"
        )
    valid_from = _moment(node.get("valid_from"), f"{path}.valid_from")
    valid_until = _moment(node.get("valid_until"), f"{path}.valid_until")
    if valid_from is not None and valid_until is not None and not valid_from < valid_until:
        raise InvalidDefinition(
            "valid_until must come after valid_from", field=f"{path}.valid_until"
        )
    validity = node.get("coupon_validity")
    if validity is not None and pool is None:
        raise InvalidDefinition(
            "coupon_validity needs a pool the codes come from", field=f"{path}.coupon_validity"
        )
    return Reward(
        id=reward_id,
        name=_text(node.get("name", reward_id), f"{path}.name"),
        cost=_whole(node.get("cost"), f"{path}.cost", least=0, most=MAX_POINTS),
        stock=_optional_whole(node.get("stock"), f"{path}.stock", least=0),
        per_member=_optional_whole(node.get("per_member"), f"{path}.per_member", least=1),
        valid_from=valid_from,
        valid_until=valid_until,
        pool=pool,
        coupon_validity=None if validity is None else duration(validity, f"{path}.coupon_validity"),
    )


# --- the pieces -------------------------------------------------------------------------


def _list(node: Mapping[str, Any], key: str, path: str) -> list[Any]:
    return listed(node.get(key, []), f"{path}.{key}")


def _unique(ids: list[str], path: str) -> None:
    seen: set[str] = set()
    for index, item in enumerate(ids):
        if item in seen:
            raise InvalidDefinition(f"{item!r} is declared twice", field=f"{path}[{index}].id")
        seen.add(item)


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidDefinition("needs a text of 1 to 200 characters", field=path)
    return value.strip()


def _whole(value: Any, path: str, *, least: int, most: int = MAX_POINTS) -> int:
    return whole(value, path, least=least, most=most)


def _optional_whole(value: Any, path: str, *, least: int) -> int | None:
    return None if value is None else _whole(value, path, least=least)


def _moment(value: Any, path: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        # YAML reads an unquoted timestamp as one; without an offset it is UTC.
        return parse_timestamp(value.isoformat())
    try:
        return parse_timestamp(str(value))
    except ValueError:
        raise InvalidDefinition(
            "needs an ISO-8601 time such as 2026-12-31T23:59:59Z", field=path
        ) from None
