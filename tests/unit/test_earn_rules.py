"""Earn rules: what an event earns, computed exactly, and each fault of a rule named."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from ariane.domain.conditions import Names
from ariane.domain.earn_rules import Award, Member, award, awards, parse_rule
from ariane.domain.predicates import InvalidDefinition
from ariane.domain.programmes import parse_programme

NAMES = Names(segments={"vip"}, computed=set())
PURCHASES: dict[str, Any] = {
    "id": "purchases",
    "event": "Order Completed",
    "points_per_unit": 1,
    "exclude": {"skus": ["GIFT-CARD"], "categories": ["services"]},
    "multipliers": [
        {"category": "rings", "factor": 2},
        {"sku": "RING-42", "factor": 3},
        {"segment": "vip", "factor": 1.5},
        {"tier": "gold", "factor": 2},
    ],
}
ORDER: dict[str, Any] = {
    "order_id": "R-1",
    "products": [
        {"sku": "RING-42", "category": "rings", "price": 100, "quantity": 1},
        {"sku": "RING-7", "category": "rings", "price": 19.99, "quantity": 2},
        {"sku": "CHAIN-1", "category": "chains", "price": 30.5, "quantity": 1},
        {"sku": "GIFT-CARD", "category": "cards", "price": 50, "quantity": 1},
        {"sku": "ENGRAVING", "category": "services", "price": 15, "quantity": 1},
    ],
    "shipping": 9.9,
    "tax": 20,
}


def rule(document: dict[str, Any] | None = None, **changes: Any) -> Any:
    return parse_rule({**(document or PURCHASES), **changes}, "rule", NAMES, {"voucher"})


def test_a_purchase_earns_per_unit_on_its_eligible_items_with_the_largest_multiplier() -> None:
    # RING-42: 100 x 3 (its sku beats its category); RING-7: 39.98 x 2; CHAIN-1: 30.5;
    # the gift card and the service excluded; shipping and tax are not items.
    [given] = award(rule(), ORDER, Member())
    assert given == Award(
        "purchases", points=410, eligible=Decimal("170.48"), weighted=Decimal("410.46")
    )
    # A member in vip earns 1.5 times that; in vip and gold, twice (the largest).
    assert award(rule(), ORDER, Member(segments={"vip"}))[0].points == 615
    assert award(rule(), ORDER, Member(segments={"vip"}, tier="gold"))[0].points == 820


def test_without_products_revenue_else_total_less_shipping_and_tax_earns() -> None:
    assert award(rule(), {"revenue": 80.7}, Member())[0].points == 80
    assert award(rule(), {"total": 100, "shipping": 9.9, "tax": 20}, Member())[0].points == 70
    assert award(rule(), {"total": 5, "shipping": 9.9}, Member()) == []
    assert award(rule(), {"note": "nothing to count"}, Member()) == []
    odd = {"products": [{"price": "12.5"}, {"price": -3}, {"price": "x"}, "junk", {"price": True}]}
    assert award(rule(), odd, Member())[0].points == 12


def test_fixed_points_referrals_and_rewards() -> None:
    fixed = rule({"id": "news", "event": "Newsletter Subscribed", "points": 50})
    assert award(fixed, {}, Member()) == [Award("news", points=50)]
    referral = rule(
        {"id": "ref", "event": "Referral Completed", "referral": {"referrer": 100, "referred": 50}}
    )
    assert award(referral, {}, Member()) == [
        Award("ref", points=50),
        Award("ref", points=100, to_referrer=True),
    ]
    voucher = rule({"id": "social", "event": "Comment Posted", "reward": "voucher"})
    assert award(voucher, {}, Member()) == [Award("social", reward="voucher")]


def test_rules_apply_in_order_and_a_stop_that_gave_ends_them() -> None:
    first = rule({"id": "first", "event": "E", "points": 10, "stop": True})
    second = rule({"id": "second", "event": "E", "points": 5})
    other = rule({"id": "other", "event": "F", "points": 7})
    assert [a.rule for a in awards([first, second, other], "E", {}, Member())] == ["first"]
    # A stop rule held back (its limit, its condition) does not stop the others.
    held = awards([first, second], "E", {}, Member(), applies=lambda r: r.id != "first")
    assert [a.rule for a in held] == ["second"]


def test_a_programme_with_rules_is_written_back_to_the_same_programme() -> None:
    document = {
        "id": "club",
        "tiers": {"window": "P365D", "levels": [{"id": "gold", "points": 1000}]},
        "rewards": [{"id": "voucher", "cost": 0}],
        "earn_rules": [
            PURCHASES,
            {
                "id": "news",
                "event": "Newsletter Subscribed",
                "points": 50,
                "limit": {"count": 1, "per": "P30D"},
            },
            {
                "id": "social",
                "event": "Comment Posted",
                "when": {"all": [{"event": "Comment Posted", "count": {"gte": 1}}]},
                "reward": "voucher",
                "limit": {"count": 1},
                "stop": True,
            },
            {"id": "ref", "event": "Referral Completed", "referral": {"referrer": 100}},
        ],
    }
    programme = parse_programme(document)
    assert parse_programme(programme.to_json()) == programme


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"points": 5}, "rule"),
        ({"points_per_unit": None}, "rule"),
        ({"points_per_unit": 0}, "rule.points_per_unit"),
        ({"points_per_unit": "1"}, "rule.points_per_unit"),
        ({"event": ""}, "rule.event"),
        ({"id": ""}, "rule.id"),
        ({"bonus": 1}, "rule.bonus"),
        ({"exclude": {"skus": [1]}}, "rule.exclude.skus"),
        ({"exclude": {"brands": []}}, "rule.exclude"),
        ({"multipliers": [{"category": "rings"}]}, "rule.multipliers[0].factor"),
        ({"multipliers": [{"colour": "red", "factor": 2}]}, "rule.multipliers[0]"),
        ({"multipliers": [{"segment": "nobody", "factor": 2}]}, "rule.multipliers[0].segment"),
        ({"multipliers": [{"sku": "X", "factor": 1000}]}, "rule.multipliers[0].factor"),
        ({"limit": {"count": 0}}, "rule.limit.count"),
        ({"limit": {"count": 1, "per": "monthly"}}, "rule.limit.per"),
        ({"stop": "yes"}, "rule.stop"),
        ({"when": {"segment": "nobody"}}, "rule.when.segment"),
    ],
)
def test_each_fault_of_a_purchase_rule_is_named(changes: dict[str, Any], field: str) -> None:
    document = copy.deepcopy(PURCHASES)
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    with pytest.raises(InvalidDefinition) as refused:
        parse_rule(document, "rule", NAMES, {"voucher"})
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"id": "x", "event": "E", "points": 5, "multipliers": []}, "rule.multipliers"),
        ({"id": "x", "event": "E", "reward": "yacht"}, "rule.reward"),
        ({"id": "x", "event": "E", "reward": ["voucher"]}, "rule.reward"),
        ({"id": "x", "event": "E", "referral": {"referrer": 0}}, "rule.referral"),
        ({"id": "x", "event": "E", "referral": {"referrer": 5, "bonus": 1}}, "rule.referral"),
        ({"id": "x", "event": "E", "points": -1}, "rule.points"),
    ],
)
def test_each_fault_of_another_rule_is_named(document: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidDefinition) as refused:
        parse_rule(document, "rule", NAMES, {"voucher"})
    assert refused.value.field == field


def test_a_tier_multiplier_names_a_declared_tier() -> None:
    with pytest.raises(InvalidDefinition) as refused:
        parse_programme({"id": "club", "earn_rules": [PURCHASES]})
    assert refused.value.field == "programme.earn_rules[0].multipliers[3].tier"
