"""Tiers: a member's level, from the points they earned in a rolling window (not what
they can spend). Promotion is immediate; demotion follows the programme's policy.

    tiers:
      window: P365D                 # points earned in the last year
      demotion: immediate           # or never, or a grace period such as P30D
      levels:
        - {id: silver, points: 0}
        - {id: gold, points: 1000}
        - {id: platinum, points: 5000}

Points earned are what earns gave less what returns took back; spends and expiries do
not lower them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ariane.domain.clock import format_duration
from ariane.domain.definitions import duration, keyed
from ariane.domain.predicates import InvalidDefinition

DEMOTIONS = ("immediate", "never")


@dataclass(frozen=True, slots=True)
class Level:
    id: str
    points: int


@dataclass(frozen=True, slots=True)
class Tiers:
    window: timedelta
    levels: tuple[Level, ...]
    # "immediate", "never", or how long a member keeps a tier after falling below it.
    demotion: str | timedelta = "immediate"

    def rank(self, tier: str | None) -> int:
        """0 for no tier, then 1, 2... up the levels; -1 for a tier no longer declared."""
        if tier is None:
            return 0
        for index, level in enumerate(self.levels):
            if level.id == tier:
                return index + 1
        return -1

    def level_for(self, points: int) -> Level | None:
        found = None
        for level in self.levels:
            if points >= level.points:
                found = level
        return found

    def threshold(self, tier: str | None) -> int:
        for level in self.levels:
            if level.id == tier:
                return level.points
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "window": format_duration(self.window),
            "demotion": self.demotion
            if isinstance(self.demotion, str)
            else format_duration(self.demotion),
            "levels": [{"id": level.id, "points": level.points} for level in self.levels],
        }


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a member stands: their tier, since when, since when their points are below
    it (in a grace period), and when to look again without any movement."""

    tier: str | None
    since: datetime | None
    below_since: datetime | None
    review_at: datetime | None
    points: int


def earned(entries: Sequence[tuple[datetime, int]], now: datetime, window: timedelta) -> int:
    """The points earned in the window that ends at `now`: (time, signed points) each."""
    start = now - window
    # A return counted in the window after the earn it undid left it: never below zero.
    return max(0, sum(points for at, points in entries if start < at <= now))


def falls_below(
    entries: Sequence[tuple[datetime, int]], now: datetime, window: timedelta, threshold: int
) -> datetime | None:
    """The first moment after `now` at which, with no new entry, the points in the
    window would be below `threshold` (as entries leave it); None if never."""
    total = sum(points for at, points in entries if now - window < at <= now)
    for at, points in sorted(e for e in entries if now - window < e[0] <= now):
        total -= points
        if max(total, 0) < threshold:
            return at + window
    return None


def stand(
    tiers: Tiers,
    current: Standing,
    entries: Sequence[tuple[datetime, int]],
    now: datetime,
) -> Standing:
    """The member's standing at `now`, from the one recorded and their entries."""
    points = earned(entries, now, tiers.window)
    reached = tiers.level_for(points)
    reached_id = None if reached is None else reached.id
    rank_now, rank_reached = tiers.rank(current.tier), tiers.rank(reached_id)
    if rank_now == -1 or rank_reached >= rank_now:
        # Promoted (or a tier no longer declared, or the same): the tier of the points.
        tier = reached_id
        since = current.since if tier == current.tier else now
        below_since = None
    elif tiers.demotion == "never":
        tier, since, below_since = current.tier, current.since, None
    else:
        below_since = current.below_since or now
        grace = timedelta(0) if tiers.demotion == "immediate" else tiers.demotion
        assert isinstance(grace, timedelta)
        if now >= below_since + grace:
            tier, since, below_since = reached_id, now, None
        else:
            tier, since = current.tier, current.since
    review = None
    if below_since is not None:
        grace = tiers.demotion
        assert isinstance(grace, timedelta)
        review = below_since + grace
    elif tier is not None and tiers.demotion != "never":
        review = falls_below(entries, now, tiers.window, tiers.threshold(tier))
    return Standing(tier, since, below_since, review, points)


def parse_tiers(value: Any, path: str) -> Tiers:
    value = keyed(value, path, ("window", "demotion", "levels"))
    window = duration(value.get("window"), f"{path}.window")
    demotion_value = value.get("demotion", "immediate")
    demotion: str | timedelta
    if demotion_value in DEMOTIONS:
        demotion = demotion_value
    else:
        try:
            demotion = duration(demotion_value, f"{path}.demotion")
        except InvalidDefinition:
            raise InvalidDefinition(
                "needs immediate, never, or a grace period such as P30D",
                field=f"{path}.demotion",
            ) from None
    levels_value = value.get("levels")
    if not isinstance(levels_value, list) or not levels_value:
        raise InvalidDefinition("needs a list of levels", field=f"{path}.levels")
    levels: list[Level] = []
    for index, item in enumerate(levels_value):
        where = f"{path}.levels[{index}]"
        if not isinstance(item, Mapping) or set(item) != {"id", "points"}:
            raise InvalidDefinition("needs {id: gold, points: 1000}", field=where)
        tier_id, points = item["id"], item["points"]
        if not isinstance(tier_id, str) or not tier_id.strip() or len(tier_id) > 64:
            raise InvalidDefinition("needs an id of 1 to 64 characters", field=f"{where}.id")
        if isinstance(points, bool) or not isinstance(points, int) or not 0 <= points <= 10**12:
            raise InvalidDefinition(
                "needs a whole number of points, 0 or more", field=f"{where}.points"
            )
        if levels and points <= levels[-1].points:
            raise InvalidDefinition(
                "levels go up: each needs more points than the one before", field=f"{where}.points"
            )
        if any(level.id == tier_id for level in levels):
            raise InvalidDefinition(f"{tier_id!r} is declared twice", field=f"{where}.id")
        levels.append(Level(tier_id, points))
    return Tiers(window, tuple(levels), demotion)
