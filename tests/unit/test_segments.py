"""Which segments a change can reach: only those are evaluated again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ariane.domain.computed import parse_feature
from ariane.domain.conditions import Names, parse_condition
from ariane.domain.messages import parse_message
from ariane.domain.profiles import ProfileState
from ariane.domain.segments import Catalogue, SegmentDefinition, Touch

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)

COMPUTED = {"orders_30d": parse_feature({"kind": "count", "event": "Order", "within": "P30D"}, "t")}
DEFINITIONS: dict[str, dict[str, Any]] = {
    "buyers": {"computed": "orders_30d", "op": "gte", "value": 1},
    "browsers": {"event": "Page Viewed", "count": {"gte": 3}},
    "pro": {"trait": "plan", "op": "eq", "value": "pro"},
    "pro_buyers": {"all": [{"segment": "pro"}, {"segment": "buyers"}]},
    "reachable": {"consent": "email"},
    "first_week": {"event": "Order", "within": "P7D", "from": "first_seen"},
    "dormant": {"event": "App Opened", "count": {"eq": 0}, "within": "P3D"},
    "big_spenders": {
        "event": "Order",
        "where": [{"property": "total", "op": "gte", "value": 100}],
        "count": {"gte": 1},
    },
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


def folded(event: str, properties: dict[str, Any] | None = None) -> Touch:
    """What folding one event of a new person changes."""
    raw = {"type": "track", "event": event, "userId": "ada", "timestamp": NOW.isoformat()}
    message = parse_message({**raw, "properties": properties or {}}, received_at=NOW)
    touch = Touch()
    catalogue().fold(ProfileState("p1"), message, NOW, touch)
    return touch


def test_an_event_reaches_the_segments_that_read_what_it_changed() -> None:
    assert reached(folded("Page Viewed")) == ["browsers"]
    assert reached(folded("Order", {"total": 20})) == ["buyers", "first_week", "pro_buyers"]
    assert reached(folded("Order", {"total": 120})) == [
        "big_spenders",
        "buyers",
        "first_week",
        "pro_buyers",
    ]
    assert reached(folded("Something Else")) == []


def test_traits_consents_and_first_seen_reach_their_readers() -> None:
    assert reached(Touch(traits={"plan"})) == ["pro", "pro_buyers"]
    assert reached(Touch(traits={"email"})) == []
    assert reached(Touch(consent=True)) == ["reachable"]
    assert reached(Touch(first_seen=True)) == ["first_week"]


def test_a_new_person_is_also_evaluated_where_a_blank_person_belongs() -> None:
    assert reached(Touch(created=True)) == ["dormant"]
    page = folded("Page Viewed").features
    assert reached(Touch(created=True, features=page)) == ["browsers", "dormant"]
    assert reached(Touch(everything=True)) == sorted(DEFINITIONS)


def test_segments_come_after_those_they_refer_to() -> None:
    order = [s.name for s in catalogue().order]
    assert order.index("pro_buyers") > max(order.index("pro"), order.index("buyers"))
