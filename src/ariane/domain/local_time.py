"""The time math of sending policies, done in the person's time zone.

Every datetime given and returned is timezone-aware; those returned are in UTC. Local
times are wall-clock times in an IANA zone (`zoneinfo`), so 10:00 stays 10:00 across
daylight-saving changes.

A local time a zone skips (02:30 in Paris on the night clocks go forward) stands for
the first instant after the gap (03:00). A local time a zone has twice (02:30 on the
night clocks go back) stands for its first occurrence, unless that is already past,
then its second.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ariane.domain.errors import DomainError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
_TIME_OF_DAY = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def zone_of(name: object, fallback: str) -> ZoneInfo:
    """The zone `name` if it is a valid IANA name, else the zone `fallback`."""
    if isinstance(name, str) and name.strip():
        try:
            return ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    return ZoneInfo(fallback)


@dataclass(frozen=True)
class QuietHours:
    """Local hours in which nothing is sent: from `start` (included) to `end` (not
    included), wrapping past midnight when `end` is earlier (21:00 to 08:00)."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise DomainError(
                "quiet hours start and end at the same time; give two different times",
                field="quiet_hours",
            )

    def quiet(self, at: datetime, zone: ZoneInfo) -> bool:
        return self._covers(_local(at, zone).time())

    def next_allowed(self, at: datetime, zone: ZoneInfo) -> datetime:
        """`at` if it is outside quiet hours, else the instant they end."""
        allowed = _utc(at)
        # Three rounds at most: when the zone skips the end time, the first instant
        # after the gap can be quiet again; the next day's end is not skipped.
        for _ in range(3):
            local = _local(allowed, zone)
            if not self._covers(local.time()):
                return allowed
            ends_tomorrow = self.start > self.end and local.time() >= self.start
            day = local.date() + timedelta(days=1 if ends_tomorrow else 0)
            allowed = _at_or_after(allowed, day, self.end, zone)
        raise AssertionError("quiet hours never end")  # pragma: no cover

    def _covers(self, wall: time) -> bool:
        wall = wall.replace(tzinfo=None, fold=0)
        if self.start < self.end:
            return self.start <= wall < self.end
        return wall >= self.start or wall < self.end


def next_time_of_day(
    after: datetime, zone: ZoneInfo, at: time, weekdays: frozenset[int] | None = None
) -> datetime:
    """The first instant at or after `after` that is local time `at` on one of the
    `weekdays` (0 is Monday; None is every day)."""
    if weekdays is not None and not weekdays:
        raise ValueError("weekdays is empty: no day would ever do")
    start = _local(after, zone).date()
    # Today may be past; a week on is the same weekday again.
    for offset in range(8):
        day = start + timedelta(days=offset)
        if weekdays is None or day.weekday() in weekdays:
            found = _at_or_after(after, day, at, zone)
            if found >= after:
                return found
    raise AssertionError("no day in the week found")  # pragma: no cover


def before_date(day: date, days_before: int, at: time, zone: ZoneInfo) -> datetime:
    """Local time `at`, `days_before` calendar days before `day`."""
    return _first_instant(day - timedelta(days=days_before), at, zone)


def next_anniversary(
    birthday: date, now: datetime, zone: ZoneInfo, days_before: int, at: time
) -> datetime:
    """The first instant at or after `now` that is local time `at`, `days_before` days
    before a yearly return of `birthday` (a 29 February falls on 28 February in other
    years)."""
    if days_before < 0:
        raise ValueError("days_before must be 0 or more")
    for year in count(_local(now, zone).year):
        found = before_date(_in_year(birthday, year), days_before, at, zone)
        if found >= _utc(now):
            return found
    raise AssertionError("count() ended")  # pragma: no cover


def day_start(at: datetime, zone: ZoneInfo, days_back: int = 0) -> datetime:
    """The first instant of the local calendar day `days_back` days before `at`'s.

    Frequency caps count in the person's calendar days: "at most N in D days" counts
    what was sent since `day_start(now, zone, D - 1)`; for one day, since local
    midnight today; for seven, since local midnight six days ago. A day a zone starts
    at 01:00 (clocks forward at midnight) starts at 01:00.
    """
    return _first_instant(_local(at, zone).date() - timedelta(days=days_back), time(0), zone)


def parse_time_of_day(text: object, field: str) -> time:
    """A local time written HH:MM, 24-hour: "10:00", "21:30"."""
    found = _TIME_OF_DAY.fullmatch(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise DomainError(
            f"{text!r} is not a time of day; write it HH:MM in 24 hours, like 21:30",
            field=field,
        )
    return time(int(found[1]), int(found[2]))


def parse_weekdays(value: Any, field: str) -> frozenset[int]:
    """Days of the week as names ("mon", "tuesday") or numbers (0 is Monday)."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
        raise DomainError('weekdays are a list of days, like ["mon", "tue"] or [0, 1]', field=field)
    days = frozenset(_weekday(item, field) for item in value)
    if not days:
        raise DomainError("weekdays is empty; list at least one day", field=field)
    return days


def _weekday(item: object, field: str) -> int:
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 6:
        return item
    if isinstance(item, str):
        name = item.strip().lower()
        for names in (WEEKDAYS, _FULL_WEEKDAYS):
            if name in names:
                return names.index(name)
    raise DomainError(
        f"{item!r} is not a day of the week; use mon ... sun, or 0 (Monday) ... 6 (Sunday)",
        field=field,
    )


def _in_year(yearly: date, year: int) -> date:
    if yearly.month == 2 and yearly.day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return yearly.replace(year=year)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} has no time zone; pass an aware datetime")
    return at.astimezone(UTC)


def _local(at: datetime, zone: ZoneInfo) -> datetime:
    return _utc(at).astimezone(zone)


def _instants(day: date, at: time, zone: ZoneInfo) -> Iterator[datetime]:
    """The instants that are local time `at` on `day`, in order: one, or two when the
    clocks go back over it, or none when they go forward over it."""
    seen: set[datetime] = set()
    for fold in (0, 1):
        wall = datetime.combine(day, at.replace(tzinfo=None), tzinfo=zone).replace(fold=fold)
        instant = wall.astimezone(UTC)
        round_trip = instant.astimezone(zone).replace(tzinfo=None, fold=0)
        if round_trip == wall.replace(tzinfo=None, fold=0) and instant not in seen:
            seen.add(instant)
            yield instant


def _first_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The first instant that is local time `at` on `day`, or the end of the gap the
    zone skips it in."""
    for instant in _instants(day, at, zone):
        return instant
    return _gap_end(day, at, zone)


def _at_or_after(after: datetime, day: date, at: time, zone: ZoneInfo) -> datetime:
    """Like `_first_instant`, but the second occurrence of a repeated local time when
    the first is before `after`."""
    instants = list(_instants(day, at, zone))
    if not instants:
        return _gap_end(day, at, zone)
    return next((i for i in instants if i >= after), instants[-1])


def _gap_end(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The instant clocks jumped forward over local time `at` on `day`."""
    wall = datetime.combine(day, at.replace(tzinfo=None), tzinfo=zone)
    # Read with the offset before the jump (fold 0) the wall time is after it; with the
    # offset after (fold 1), before it.
    late, early = wall.astimezone(UTC), wall.replace(fold=1).astimezone(UTC)
    before = early.astimezone(zone).utcoffset()
    while late - early > timedelta(seconds=1):
        middle = early + (late - early) / 2
        if middle.astimezone(zone).utcoffset() == before:
            early = middle
        else:
            late = middle
    return late.replace(microsecond=0)
