"""The condition language: what is accepted, what is refused and where, what it means."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ariane.domain import computed as comp
from ariane.domain.clock import iso
from ariane.domain.computed import parse_feature
from ariane.domain.conditions import (
    MAX_TESTS,
    Facts,
    Names,
    check_size,
    evaluate,
    find_cycle,
    parse_condition,
    size,
    to_json,
)
from ariane.domain.predicates import (
    MISSING,
    InvalidDefinition,
    check,
    compile_test,
    parse_test,
)
from ariane.domain.profiles import ProfileState
from ariane.domain.segments import Catalogue, SegmentDefinition

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NAMES = Names(segments={"subscribers"}, computed={"orders_30d"})

ISSUE_EXAMPLES: list[dict[str, Any]] = [
    {
        "all": [
            {"trait": "plan", "op": "eq", "value": "trial"},
            {
                "event": "Feature Used",
                "where": [{"property": "feature", "op": "in", "value": ["alerts", "map"]}],
                "count": {"gte": 3},
                "within": "P7D",
            },
            {"not": {"segment": "subscribers"}},
            {
                "any": [
                    {"computed": "orders_30d", "op": "gte", "value": 2},
                    {"trait": "trial_started_at", "op": "older_than", "value": "P25D"},
                ]
            },
        ]
    },
    {"event": "Page Viewed", "count": {"gte": 1}, "within": "PT3S"},
    {"event": "App Opened", "count": {"eq": 0}, "within": "P3D"},
]


@pytest.mark.parametrize("condition", ISSUE_EXAMPLES)
def test_the_issue_examples_are_accepted_as_written(condition: dict[str, Any]) -> None:
    node = parse_condition(condition, NAMES)
    assert to_json(parse_condition(to_json(node), NAMES)) == to_json(node)


@pytest.mark.parametrize(
    ("condition", "path", "words"),
    [
        ({"trait": "plan", "op": "equals", "value": "x"}, "condition.op", "unknown operator"),
        (
            {"all": [{"trait": "a", "op": "exists"}, {"event": "E", "within": "7 days"}]},
            "condition.all[1].within",
            "ISO-8601",
        ),
        ({"segment": "nobody"}, "condition.segment", "unknown segment"),
        ({"computed": "nothing", "op": "exists"}, "condition.computed", "unknown computed"),
        ({"segment": ["subscribers"]}, "condition.segment", "unknown segment"),
        (
            {
                "behaviour": {
                    "features": [{"event": "E", "within": "P3D"}],
                    "center": [0],
                    "scale": [1],
                    "centroids": {"a": [0]},
                },
                "group": ["a"],
            },
            "condition.group",
            "not one of the model's",
        ),
        ({"computed": {"name": "orders_30d"}, "op": "exists"}, "condition.computed", "unknown"),
        ({"event": "E", "count": {"atleast": 3}}, "condition.count.atleast", "unknown bound"),
        ({"event": "E", "count": {"gte": -1}}, "condition.count.gte", "whole number"),
        ({"event": "E", "withn": "P1D"}, "condition.withn", "unknown key"),
        ({"any": []}, "condition.any", "non-empty"),
        ({"trait": "plan", "op": "in", "value": "x"}, "condition.value", "list"),
        ({"trait": "plan", "op": "eq"}, "condition.value", "needs a value"),
        ({"trait": "a..b", "op": "exists"}, "condition.trait", "usable name"),
        ({"trait": "x", "event": "E"}, "condition", "exactly one"),
        ({"consent": "email", "status": "maybe"}, "condition.status", "granted"),
        (
            {"not": {"event": "E", "where": [{"property": "p", "op": "between", "value": [1]}]}},
            "condition.not.where[0].value",
            "between",
        ),
        ({"event": "E", "within": "P0D"}, "condition.within", "longer than zero"),
        (
            {"event": "E", "between": ["2026-02-01", "2026-01-01"]},
            "condition.between",
            "before the end",
        ),
    ],
)
def test_invalid_definitions_name_the_faulty_node(
    condition: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(InvalidDefinition) as raised:
        parse_condition(condition, NAMES)
    assert raised.value.field == path
    assert words in raised.value.message


def test_conditions_nest_at_most_32_levels() -> None:
    node: dict[str, Any] = {"trait": "plan", "op": "eq", "value": "trial"}
    for _ in range(31):
        node = {"not": node}
    assert evaluate(parse_condition(node, NAMES), Facts(_profile(plan="pro"), NOW))
    deeper = {"all": [{"segment": "subscribers"}, node]}
    with pytest.raises(InvalidDefinition) as refused:
        parse_condition(deeper, NAMES)
    assert refused.value.field == "condition.all[1]" + ".not" * 31


def test_a_condition_makes_at_most_a_thousand_tests_and_a_list_is_one() -> None:
    where = [{"property": "stars", "op": "in", "value": list(range(5000))}] * 3
    leaves: list[dict[str, Any]] = [
        {"trait": "plan", "op": "in", "value": [f"plan-{n}" for n in range(5000)]},
        {"not": {"event": "Review Posted", "where": where}},
        {"segment": "subscribers"},
        {"consent": "email"},
        {"computed": "orders_30d", "op": "gte", "value": 2},
    ]
    model = {
        "features": [{"event": f"E{n}", "within": "P3D"} for n in range(10)],
        "center": [0] * 10,
        "scale": [1] * 10,
        "centroids": {"a": [0] * 10, "b": [1] * 10},
    }
    condition = {"any": [*leaves, {"behaviour": model, "group": "a"}]}
    assert size(parse_condition(condition, NAMES)) == 1 + 4 + 3 + 30
    largest = {"all": [leaves[0]] * MAX_TESTS}
    assert check_size(parse_condition(largest, NAMES)) is not None
    with pytest.raises(InvalidDefinition) as refused:
        check_size(parse_condition({"all": [*largest["all"], leaves[0]]}, NAMES), "rule.when")
    assert refused.value.field == "rule.when"
    assert "1,001" in refused.value.message


def test_a_cycle_between_segments_is_named() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def next_change(node: Any, facts: Facts) -> datetime | None:
    """When time alone may next change the answer, as the catalogue's timers see it."""
    catalogue = Catalogue(1, [SegmentDefinition("s", "s", "", node)], {})
    return catalogue.next_due(facts)


def _profile(**traits: Any) -> ProfileState:
    return ProfileState(
        "p1", {k: {"value": v, "at": iso(NOW), "source": "s"} for k, v in traits.items()}
    )


def _fold(profile: ProfileState, feature: comp.Feature, moments: list[datetime]) -> None:
    states = profile.computed.setdefault("features", {})
    for number, at in enumerate(moments):
        comp.fold_event(states, [(feature.key, feature)], at, f"m{number}", {}, NOW, None)


def test_a_window_that_moves_gives_the_moment_it_changes() -> None:
    node = parse_condition(ISSUE_EXAMPLES[1], NAMES)
    profile = _profile()
    seen = NOW - timedelta(seconds=1)
    _fold(
        profile,
        comp.Feature("count", "Page Viewed", window=comp.Window("recent", timedelta(seconds=3))),
        [seen],
    )
    facts = Facts(profile, NOW)
    assert evaluate(node, facts)
    assert next_change(node, facts) == seen + timedelta(seconds=3)
    later = Facts(profile, seen + timedelta(seconds=3))
    assert not evaluate(node, later)
    assert next_change(node, later) is None


def test_ages_of_traits() -> None:
    node = parse_condition({"trait": "started", "op": "older_than", "value": "P25D"}, NAMES)
    started = NOW - timedelta(days=25)
    assert evaluate(node, Facts(_profile(started=iso(started)), NOW))
    assert not evaluate(
        node, Facts(_profile(started=iso(started + timedelta(microseconds=1))), NOW)
    )
    assert not evaluate(node, Facts(_profile(started="last tuesday"), NOW))
    assert next_change(node, Facts(_profile(started=iso(NOW)), NOW)) == NOW + timedelta(days=25)


def test_computed_states_fold_in_any_order_and_merge_to_the_same_value() -> None:
    rng = random.Random(5)
    definitions = (
        [
            {"kind": kind, "event": "Order", "property": "category"}
            for kind in ("most_frequent", "first", "last", "unique_list", "unique_count")
        ]
        + [
            {"kind": kind, "event": "Order", "property": "total", "within": "P30D"}
            for kind in ("sum", "average", "min", "max")
        ]
        + [{"kind": "count", "event": "Order", "within": "P7D", "from": "first_seen"}]
    )
    orders = [
        (
            NOW - timedelta(days=rng.randrange(40), minutes=rng.randrange(1000)),
            f"m{n}",
            {"category": rng.choice(["rings", "pearls", "watches"]), "total": rng.randrange(90)},
        )
        for n in range(40)
    ]
    first_seen = min(at for at, _, _ in orders)
    for definition in definitions:
        feature = parse_feature(definition, "t")
        whole: dict[str, Any] = {}
        for at, mid, props in orders:
            comp.fold_event(whole, [("k", feature)], at, mid, props, NOW, first_seen)
        shuffled = orders[:]
        rng.shuffle(shuffled)
        halves: list[dict[str, Any]] = [{}, {}]
        for number, (at, mid, props) in enumerate(shuffled):
            comp.fold_event(halves[number % 2], [("k", feature)], at, mid, props, NOW, first_seen)
        comp.merge_states({"k": feature}, halves[0], halves[1], NOW, first_seen)
        assert comp.value(feature, halves[0].get("k"), NOW, first_seen) == comp.value(
            feature, whole.get("k"), NOW, first_seen
        ), definition


@given(
    op=st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]),
    literal=st.one_of(
        st.integers(-5, 5), st.floats(-5, 5), st.sampled_from(["a", "b", "10", ""]), st.booleans()
    ),
    value=st.one_of(
        st.integers(-5, 5),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["a", "b", "10", "", None, MISSING, True, False, [1], {"a": 1}]),
        st.decimals(-5, 5, places=2, allow_nan=False),
    ),
)
@settings(max_examples=3000, deadline=None)
def test_compiled_tests_mean_what_check_means(op: str, literal: Any, value: Any) -> None:
    try:
        test = parse_test({"op": op, "value": literal}, "test")
    except InvalidDefinition:
        return
    now = datetime(2026, 1, 1, tzinfo=UTC)
    expected = check(test, value, now)
    assert compile_test(test)(value, now) == expected
    # The same test inside a condition, which compiles to Python source of its own: on a
    # trait, and on a key inside one.
    for name, profile in (
        ("x", ProfileState("p") if value is MISSING else _profile(x=value)),
        ("x.y", ProfileState("p") if value is MISSING else _profile(x={"y": value})),
    ):
        node = parse_condition({"trait": name, "op": op, "value": literal}, NAMES)
        assert evaluate(node, Facts(profile, now)) == expected, name
