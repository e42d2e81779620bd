"""Tiers from points earned in a rolling window: promotion at once, demotion by policy,
and the moment to look again when points leave the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ariane.domain.predicates import InvalidDefinition
from ariane.domain.tiers import Level, Standing, Tiers, earned, falls_below, parse_tiers, stand

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
WINDOW = timedelta(days=365)
LEVELS = (Level("silver", 0), Level("gold", 1000), Level("platinum", 5000))
NONE = Standing(None, None, None, None, 0)


def tiers(demotion: str | timedelta = "immediate") -> Tiers:
    return Tiers(WINDOW, LEVELS, demotion)


def test_points_earned_count_within_the_window_only() -> None:
    entries = [(T0, 600), (T0 + 10 * DAY, 500), (T0 + 20 * DAY, -100)]
    assert earned(entries, T0 + 30 * DAY, WINDOW) == 1000
    assert earned(entries, T0 + 365 * DAY, WINDOW) == 400
    # Gold needs 1,000: the first entry leaving the window takes it below.
    assert falls_below(entries, T0 + 30 * DAY, WINDOW, 1000) == T0 + 365 * DAY
    assert falls_below(entries, T0 + 30 * DAY, WINDOW, 0) is None


def test_a_promotion_is_immediate_and_a_demotion_follows_the_points_out_of_the_window() -> None:
    entries = [(T0, 600), (T0 + 10 * DAY, 500)]
    gold = stand(tiers(), NONE, entries, T0 + 10 * DAY)
    assert (gold.tier, gold.since, gold.points) == ("gold", T0 + 10 * DAY, 1100)
    assert gold.review_at == T0 + 365 * DAY
    # Nothing changes before then; at that moment, silver.
    assert stand(tiers(), gold, entries, T0 + 364 * DAY).tier == "gold"
    silver = stand(tiers(), gold, entries, T0 + 365 * DAY)
    assert (silver.tier, silver.since, silver.points) == ("silver", T0 + 365 * DAY, 500)
    assert silver.review_at is None


def test_a_grace_period_keeps_the_tier_a_while_and_a_recovery_ends_it() -> None:
    policy = tiers(timedelta(days=30))
    entries = [(T0, 1000)]
    gold = stand(policy, NONE, entries, T0)
    fell = T0 + 365 * DAY
    waiting = stand(policy, gold, entries, fell)
    assert (waiting.tier, waiting.below_since, waiting.review_at) == ("gold", fell, fell + 30 * DAY)
    assert stand(policy, waiting, entries, fell + 30 * DAY).tier == "silver"
    # Earning enough again within the grace period keeps gold, with no end in sight.
    again = [*entries, (fell + 5 * DAY, 1000)]
    kept = stand(policy, waiting, again, fell + 5 * DAY)
    assert (kept.tier, kept.below_since, kept.since) == ("gold", None, T0)


def test_never_demoting_keeps_the_highest_tier_reached() -> None:
    entries = [(T0, 6000)]
    platinum = stand(tiers("never"), NONE, entries, T0)
    assert platinum.review_at is None
    assert stand(tiers("never"), platinum, entries, T0 + 400 * DAY).tier == "platinum"


def test_a_tier_no_longer_declared_gives_way_to_the_points() -> None:
    gone = Standing("diamond", T0, None, None, 0)
    assert stand(tiers("never"), gone, [(T0, 10)], T0).tier == "silver"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"levels": [{"id": "a", "points": 0}]}, "tiers.window"),
        ({"window": "P1Y", "levels": [{"id": "a", "points": 0}]}, "tiers.window"),
        ({"window": "P365D", "levels": []}, "tiers.levels"),
        ({"window": "P365D", "levels": [{"id": "a"}]}, "tiers.levels[0]"),
        ({"window": "P365D", "levels": [{"id": "a", "points": -1}]}, "tiers.levels[0].points"),
        (
            {"window": "P365D", "levels": [{"id": "a", "points": 5}, {"id": "b", "points": 5}]},
            "tiers.levels[1].points",
        ),
        (
            {"window": "P365D", "levels": [{"id": "a", "points": 0}, {"id": "a", "points": 5}]},
            "tiers.levels[1].id",
        ),
        (
            {"window": "P365D", "demotion": "soon", "levels": [{"id": "a", "points": 0}]},
            "tiers.demotion",
        ),
        ({"window": "P365D", "levels": [{"id": "a", "points": 0}], "x": 1}, "tiers.x"),
    ],
)
def test_each_fault_of_the_tiers_is_named(value: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidDefinition) as refused:
        parse_tiers(value, "tiers")
    assert refused.value.field == field


def test_tiers_are_written_back_the_same() -> None:
    for demotion in ("immediate", "never", "P30D"):
        value = {"window": "P365D", "demotion": demotion, "levels": [{"id": "a", "points": 0}]}
        parsed = parse_tiers(value, "tiers")
        assert parse_tiers(parsed.to_json(), "tiers") == parsed
