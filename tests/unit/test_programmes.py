"""A programme as declared: parsed strictly, each fault named by its path, and written
back in a canonical form that parses to the same programme."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ariane.domain.clock import format_duration, parse_duration
from ariane.domain.errors import NotFound
from ariane.domain.predicates import InvalidDefinition
from ariane.domain.programmes import Expiry, Reward, check_code, parse_programme

FULL: dict[str, Any] = {
    "id": "club",
    "name": " Club Bijoux ",
    "currency": "étoiles",
    "expiry": {"return_window": "P30D", "validity": "P365D"},
    "rewards": [
        {
            "id": "voucher-10",
            "name": "10 € off",
            "cost": 500,
            "stock": 1000,
            "per_member": 1,
            "valid_from": "2026-01-01",
            "valid_until": datetime(2026, 12, 31, 23, 59, 59),
            "pool": "vouchers",
            "coupon_validity": "P90D",
        },
        {"id": "gift", "cost": 0},
    ],
    "coupon_pools": [
        {"id": "vouchers", "generate": {"count": 1000, "prefix": "BJX-", "length": 8}},
        {"id": "imported", "name": "From the agency"},
    ],
}


def test_a_full_programme_is_read_and_written_back_to_the_same_programme() -> None:
    programme = parse_programme(FULL)
    assert programme.name == "Club Bijoux"
    assert programme.expiry == Expiry(timedelta(days=30), timedelta(days=365))
    voucher = programme.reward("voucher-10")
    assert voucher.valid_from == datetime(2026, 1, 1, tzinfo=UTC)
    assert voucher.valid_until == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert programme.pool("vouchers").generate is not None
    assert parse_programme(programme.to_json()) == programme
    assert parse_programme(programme.to_json()).to_json() == programme.to_json()


def test_a_bare_programme_takes_the_defaults() -> None:
    programme = parse_programme({"id": "staff"})
    assert (programme.name, programme.currency) == ("staff", "points")
    assert programme.expiry == Expiry(timedelta(0), None)
    assert programme.to_json()["expiry"] == {"return_window": "P0D"}


def test_a_reward_is_on_offer_between_its_dates_only() -> None:
    start, end = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 25, tzinfo=UTC)
    reward = Reward("xmas", "xmas", 10, valid_from=start, valid_until=end)
    assert not reward.on_offer(start - timedelta(microseconds=1))
    assert reward.on_offer(start)
    assert not reward.on_offer(end)


def changed(path: list[Any], value: Any) -> dict[str, Any]:
    """FULL with the value at `path` replaced."""
    document = copy.deepcopy(FULL)
    node = document
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["id"], "Club", "programme.id"),
        (["id"], "a" * 65, "programme.id"),
        (["colour"], "gold", "programme.colour"),
        (["name"], "", "programme.name"),
        (["expiry", "return_window"], "30 days", "programme.expiry.return_window"),
        (["expiry", "validity"], "P0D", "programme.expiry.validity"),
        (["expiry", "validity"], "P40000D", "programme.expiry.validity"),
        (["rewards", 0, "cost"], -1, "programme.rewards[0].cost"),
        (["rewards", 0, "cost"], 1.5, "programme.rewards[0].cost"),
        (["rewards", 0, "cost"], True, "programme.rewards[0].cost"),
        (["rewards", 0, "stock"], -1, "programme.rewards[0].stock"),
        (["rewards", 0, "per_member"], 0, "programme.rewards[0].per_member"),
        (["rewards", 0, "pool"], "nowhere", "programme.rewards[0].pool"),
        (["rewards", 0, "valid_until"], "2025-01-01", "programme.rewards[0].valid_until"),
        (["rewards", 0, "valid_from"], "soon", "programme.rewards[0].valid_from"),
        (["rewards", 1, "coupon_validity"], "P30D", "programme.rewards[1].coupon_validity"),
        (["rewards", 1, "id"], "voucher-10", "programme.rewards[1].id"),
        (["coupon_pools", 0, "generate", "length"], 4, "programme.coupon_pools[0].generate.length"),
        (["coupon_pools", 0, "generate", "count"], 0, "programme.coupon_pools[0].generate.count"),
        (
            ["coupon_pools", 0, "generate", "prefix"],
            "BJX/",
            "programme.coupon_pools[0].generate.prefix",
        ),
        (["coupon_pools", 1, "id"], "vouchers", "programme.coupon_pools[1].id"),
        (["rewards"], {"id": "x"}, "programme.rewards"),
        (["rewards", 0, "pool"], ["vouchers"], "programme.rewards[0].pool"),
        (["expiry", "validity"], "P1000000000D", "programme.expiry.validity"),
        (["expiry", "validity"], "PT99999999999999999999S", "programme.expiry.validity"),
        (["expiry", "validity"], "P30D", "programme.expiry.validity"),
        (["expiry", "validity"], "PT1S", "programme.expiry.validity"),
    ],
)
def test_each_fault_is_named_by_its_path(path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(InvalidDefinition) as refused:
        parse_programme(changed(path, value))
    assert refused.value.field == field


def test_a_missing_reward_or_pool_is_named() -> None:
    programme = parse_programme(FULL)
    with pytest.raises(NotFound, match="no reward 'yacht'"):
        programme.reward("yacht")
    with pytest.raises(NotFound, match="no coupon pool 'x'"):
        programme.pool("x")


@pytest.mark.parametrize(
    "length",
    [
        timedelta(0),
        timedelta(days=30),
        timedelta(days=1, hours=6),
        timedelta(seconds=3.5),
        timedelta(minutes=90),
        timedelta(days=2, microseconds=7),
    ],
)
def test_a_duration_written_out_reads_back_the_same(length: timedelta) -> None:
    assert parse_duration(format_duration(length)) == length


def test_codes_and_prefixes_are_kept_in_capitals() -> None:
    programme = parse_programme(
        {"id": "club", "coupon_pools": [{"id": "p", "generate": {"count": 1, "prefix": "bjx-"}}]}
    )
    generate = programme.pool("p").generate
    assert generate is not None and generate.prefix == "BJX-"
    assert check_code("summer-2026", "code") == "SUMMER-2026"
