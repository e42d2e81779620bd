"""Which segments a change can reach: only those are evaluated again."""

from __future__ import annotations

from typing import Any

from ariane.domain.computed import parse_feature
from ariane.domain.conditions import Names, parse_condition
from ariane.domain.segments import Catalogue, SegmentDefinition, Touch

COMPUTED = {"orders_30d": parse_feature({"kind": "count", "event": "Order", "within": "P30D"}, "t")}
DEFINITIONS: dict[str, dict[str, Any]] = {
    "buyers": {"computed": "orders_30d", "op": "gte", "value": 1},
    "browsers": {"event": "Page Viewed", "count": {"gte": 3}},
    "pro": {"trait": "plan", "op": "eq", "value": "pro"},
    "pro_buyers": {"all": [{"segment": "pro"}, {"segment": "buyers"}]},
    "reachable": {"consent": "email"},
    "first_week": {"event": "Order", "within": "P7D", "from": "first_seen"},
    "dormant": {"event": "App Opened", "count": {"eq": 0}, "within": "P3D"},
}


def catalogue() -> Catalogue:
    names = Names(set(DEFINITIONS), set(COMPUTED))
    segments = [
        SegmentDefinition(name, name, "", parse_condition(condition, names))
        for name, condition in DEFINITIONS.items()
    ]
    return Catalogue(1, segments, COMPUTED)


def reached(touch: Touch) -> list[str]:
    return sorted(s.name for s in catalogue().affected(touch))


def test_an_event_reaches_the_segments_that_read_it_and_those_that_refer_to_them() -> None:
    assert reached(Touch(events={"Page Viewed"})) == ["browsers"]
    assert reached(Touch(events={"Order"})) == ["buyers", "first_week", "pro_buyers"]
    assert reached(Touch(events={"Something Else"})) == []


def test_traits_consents_and_first_seen_reach_their_readers() -> None:
    assert reached(Touch(traits={"plan"})) == ["pro", "pro_buyers"]
    assert reached(Touch(traits={"email"})) == []
    assert reached(Touch(consent=True)) == ["reachable"]
    assert reached(Touch(first_seen=True)) == ["first_week"]


def test_a_new_person_is_also_evaluated_where_a_blank_person_belongs() -> None:
    assert reached(Touch(created=True)) == ["dormant"]
    assert reached(Touch(created=True, events={"Page Viewed"})) == ["browsers", "dormant"]
    assert reached(Touch(everything=True)) == sorted(DEFINITIONS)


def test_segments_come_after_those_they_refer_to() -> None:
    order = [s.name for s in catalogue().order]
    assert order.index("pro_buyers") > max(order.index("pro"), order.index("buyers"))
