"""Journeys as declared: checked with errors naming the faulty node's path, and the
stable draws that assign arms and variants."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ariane.domain.conditions import Names
from ariane.domain.errors import DomainError
from ariane.domain.journeys import (
    EXIT,
    in_holdout,
    last_moment,
    parse_journey,
    send_key,
    variant_of,
)

NAMES = Names(segments={"trial-users", "subscribers"}, computed={"orders"})


def journey(**changes: Any) -> dict[str, Any]:
    return {
        "id": "cart",
        "entry": {"event": "Cart Abandoned", "key": "properties.cartId"},
        "steps": [
            {"id": "wait", "wait": {"event": "Order Completed", "keyed": True, "timeout": "PT1H"},
             "on_event": "exit"},
            {"id": "remind", "send": {"channel": "email", "template": "cart"}},
        ],
        **changes,
    }  # fmt: skip


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(DomainError) as caught:
        parse_journey(raw, NAMES, "journeys[0]")
    assert caught.value.field is not None
    return caught.value.field


def test_a_journey_parses_with_its_steps_in_order() -> None:
    parsed = parse_journey(journey(), NAMES)
    assert [step.id for step in parsed.steps] == ["wait", "remind"]
    wait, remind = parsed.steps
    assert parsed.target(wait, wait.on_event) == EXIT
    assert parsed.target(wait, wait.on_timeout) == "remind"
    assert parsed.target(remind, remind.next) == EXIT
    assert parsed.events() == {"Cart Abandoned", "Order Completed"}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"entry": {"segment": "nope"}}, "journeys[0].entry.segment"),
        ({"reentry": "sometimes"}, "journeys[0].reentry"),
        ({"holdout": 1.5}, "journeys[0].holdout"),
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "journeys[0].quiet_hours.start"),
        ({"goal": {"event": "Order Completed"}}, "journeys[0].goal.within"),
    ],
)
def test_a_wrong_journey_is_refused_naming_the_path(change: dict[str, Any], path: str) -> None:
    assert refused(journey(**change)) == path


def test_a_step_pointing_nowhere_is_refused_naming_it() -> None:
    raw = journey()
    raw["steps"][0]["on_timeout"] = "nowhere"
    assert refused(raw) == "journeys[0].steps[0].on_timeout"


def test_a_wait_without_a_timeout_is_refused() -> None:
    raw = journey()
    del raw["steps"][0]["wait"]["timeout"]
    assert refused(raw) == "journeys[0].steps[0].wait.timeout"


def test_a_keyed_wait_needs_a_keyed_entry() -> None:
    raw = journey(entry={"event": "Cart Abandoned"})
    assert refused(raw) == "journeys[0].steps[0].wait"


def test_a_split_that_counts_events_is_refused() -> None:
    raw = journey()
    raw["steps"].insert(
        0, {"id": "big", "split": {"event": "Order Completed", "count": {"gte": 2}}}
    )
    assert refused(raw) == "journeys[0].steps[0].split"


def test_variants_are_stable_per_person_and_follow_their_weights() -> None:
    raw = journey()
    raw["steps"].insert(
        0,
        {
            "id": "ab",
            "random": {
                "variants": [
                    {"name": "a", "weight": 3, "then": "wait"},
                    {"name": "b", "weight": 1, "then": "remind"},
                ]
            },
        },
    )
    step = parse_journey(raw, NAMES).steps[0]
    drawn = [variant_of(f"p{n}", "cart", step)[0] for n in range(4000)]
    assert drawn == [variant_of(f"p{n}", "cart", step)[0] for n in range(4000)]
    assert 0.72 < drawn.count("a") / len(drawn) < 0.78


def test_the_holdout_is_a_stable_share() -> None:
    held = [in_holdout(f"p{n}", "cart", 0.1) for n in range(10_000)]
    assert held == [in_holdout(f"p{n}", "cart", 0.1) for n in range(10_000)]
    assert 0.09 < sum(held) / len(held) < 0.11
    assert not any(in_holdout(f"p{n}", "cart", 0.0) for n in range(100))


def test_a_send_key_names_the_step_and_its_occurrence() -> None:
    assert send_key("cart", 2, 17, "remind", 0) != send_key("cart", 2, 17, "remind", 1)
    assert send_key("cart", 2, 17, "remind", 0) == send_key("cart", 2, 17, "remind", 0)


PARIS = ZoneInfo("Europe/Paris")


def test_a_daily_schedule_keeps_its_local_time_across_a_change_of_clocks() -> None:
    since = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    # 09:00 in Paris is 08:00 UTC before the 29th, 07:00 UTC from it.
    before = last_moment(since, datetime(2026, 3, 28, 12, 0, tzinfo=UTC), timedelta(days=1),
                         time(9), PARIS)  # fmt: skip
    after = last_moment(since, datetime(2026, 3, 29, 12, 0, tzinfo=UTC), timedelta(days=1),
                        time(9), PARIS)  # fmt: skip
    assert before == datetime(2026, 3, 28, 8, 0, tzinfo=UTC)
    assert after == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    # Nothing before the first moment after the journey was declared.
    assert last_moment(since, since, timedelta(days=1), time(9), PARIS) is None


def test_a_weekly_schedule_and_an_hourly_one() -> None:
    since = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 11:00 in Paris
    weekly = last_moment(since, datetime(2026, 3, 20, 12, 0, tzinfo=UTC), timedelta(days=7),
                         time(9), PARIS)  # fmt: skip
    assert weekly == datetime(2026, 3, 17, 8, 0, tzinfo=UTC)  # Tuesday 3rd + 2 weeks
    hourly = last_moment(since, datetime(2026, 3, 2, 13, 30, tzinfo=UTC), timedelta(hours=1),
                         None, PARIS)  # fmt: skip
    assert hourly == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
