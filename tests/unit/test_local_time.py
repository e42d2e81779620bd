"""Sending policies in the person's time zone: quiet hours, times of day, anniversaries
and calendar days, right across daylight-saving changes.

Europe/Paris goes forward on 2026-03-29 (02:00 -> 03:00, UTC+1 -> UTC+2) and back on
2026-10-25 (03:00 -> 02:00); America/New_York forward on 2026-03-08 (02:00 -> 03:00,
UTC-5 -> UTC-4) and back on 2026-11-01 (02:00 -> 01:00)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ariane.domain.errors import DomainError
from ariane.domain.local_time import (
    QuietHours,
    before_date,
    day_start,
    next_anniversary,
    next_time_of_day,
    parse_time_of_day,
    parse_weekdays,
    zone_of,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = QuietHours(time(21), time(8))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone).astimezone(UTC)


@pytest.mark.parametrize("name", ["Nowhere/Land", "", "  ", None, 42, "../../etc/passwd", "a\0b"])
def test_a_bad_zone_name_gives_the_fallback(name: object) -> None:
    assert zone_of(name, "Europe/Paris") == PARIS


def test_a_good_zone_name_gives_its_zone() -> None:
    assert zone_of("America/New_York", "UTC") == NEW_YORK
    assert zone_of(" America/New_York ", "UTC") == NEW_YORK


# Quiet hours


def test_outside_quiet_hours_the_time_is_allowed_as_it_is() -> None:
    at = local(PARIS, 2026, 6, 1, 12, 0)
    assert not NIGHT.quiet(at, PARIS)
    assert NIGHT.next_allowed(at, PARIS) == at


def test_quiet_hours_wrap_midnight_and_end_at_the_local_end_time() -> None:
    evening = local(PARIS, 2026, 6, 1, 22, 30)
    early = local(PARIS, 2026, 6, 2, 3, 0)
    assert NIGHT.quiet(evening, PARIS) and NIGHT.quiet(early, PARIS)
    assert NIGHT.next_allowed(evening, PARIS) == local(PARIS, 2026, 6, 2, 8, 0)
    assert NIGHT.next_allowed(early, PARIS) == local(PARIS, 2026, 6, 2, 8, 0)


def test_quiet_hours_include_their_start_and_not_their_end() -> None:
    assert NIGHT.quiet(local(PARIS, 2026, 6, 1, 21, 0), PARIS)
    assert not NIGHT.quiet(local(PARIS, 2026, 6, 1, 20, 59), PARIS)
    assert not NIGHT.quiet(local(PARIS, 2026, 6, 2, 8, 0), PARIS)
    assert NIGHT.quiet(local(PARIS, 2026, 6, 2, 7, 59), PARIS)


def test_quiet_hours_within_one_day() -> None:
    lunch = QuietHours(time(12), time(14))
    assert lunch.next_allowed(local(PARIS, 2026, 6, 1, 13, 0), PARIS) == local(
        PARIS, 2026, 6, 1, 14, 0
    )
    assert not lunch.quiet(local(PARIS, 2026, 6, 1, 23, 0), PARIS)


def test_quiet_hours_are_the_persons_not_utc() -> None:
    # 23:00 UTC is midnight in Paris (quiet) and 19:00 in New York (not).
    at = utc(2026, 6, 1, 23, 0)
    assert NIGHT.next_allowed(at, PARIS) == utc(2026, 6, 2, 6, 0)
    assert NIGHT.next_allowed(at, NEW_YORK) == at


def test_a_deferral_across_the_spring_forward_night_ends_at_8_local() -> None:
    # Paris: 22:00 CET on the 28th; 08:00 CEST on the 29th is 06:00 UTC, not 07:00.
    assert NIGHT.next_allowed(utc(2026, 3, 28, 21, 0), PARIS) == utc(2026, 3, 29, 6, 0)
    # New York: 22:00 EST on the 7th; 08:00 EDT on the 8th is 12:00 UTC, not 13:00.
    assert NIGHT.next_allowed(utc(2026, 3, 8, 3, 0), NEW_YORK) == utc(2026, 3, 8, 12, 0)


def test_a_deferral_across_the_fall_back_night_ends_at_8_local() -> None:
    # Paris: 08:00 CET on the 25th is 07:00 UTC.
    assert NIGHT.next_allowed(utc(2026, 10, 24, 20, 0), PARIS) == utc(2026, 10, 25, 7, 0)
    # New York: 08:00 EST on 1 November is 13:00 UTC.
    assert NIGHT.next_allowed(utc(2026, 11, 1, 2, 0), NEW_YORK) == utc(2026, 11, 1, 13, 0)


def test_quiet_hours_ending_in_the_skipped_hour_end_when_the_clocks_jump() -> None:
    until_half_past_two = QuietHours(time(21), time(2, 30))
    # 02:30 does not exist in Paris on 29 March: quiet hours end at 03:00 CEST.
    assert until_half_past_two.next_allowed(utc(2026, 3, 28, 22, 0), PARIS) == utc(
        2026, 3, 29, 1, 0
    )
    assert until_half_past_two.next_allowed(utc(2026, 3, 8, 4, 0), NEW_YORK) == utc(
        2026, 3, 8, 7, 0
    )


def test_quiet_hours_ending_in_the_repeated_hour_end_at_its_first_occurrence() -> None:
    until_half_past_one = QuietHours(time(21), time(1, 30))
    # 01:30 happens twice in New York on 1 November: 05:30 UTC (EDT) then 06:30 (EST).
    assert until_half_past_one.next_allowed(utc(2026, 11, 1, 2, 0), NEW_YORK) == utc(
        2026, 11, 1, 5, 30
    )
    # At 01:15 EST, the second time round, the first 01:30 is past: the second.
    assert until_half_past_one.next_allowed(utc(2026, 11, 1, 6, 15), NEW_YORK) == utc(
        2026, 11, 1, 6, 30
    )


def test_quiet_hours_cannot_start_and_end_at_once() -> None:
    with pytest.raises(DomainError, match="same time"):
        QuietHours(time(8), time(8))


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        NIGHT.next_allowed(datetime(2026, 6, 1, 12), PARIS)


ZONES = st.sampled_from(
    [
        PARIS,
        NEW_YORK,
        ZoneInfo("Australia/Lord_Howe"),
        ZoneInfo("America/Santiago"),
        ZoneInfo("UTC"),
    ]
)
INSTANTS = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1)).map(
    lambda naive: naive.replace(tzinfo=UTC)
)
TIMES = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@settings(max_examples=300, deadline=None)
@given(INSTANTS, ZONES, TIMES, TIMES)
def test_the_allowed_time_is_never_quiet_nor_earlier(
    at: datetime, zone: ZoneInfo, start: time, end: time
) -> None:
    if start == end:
        return
    hours = QuietHours(start, end)
    allowed = hours.next_allowed(at, zone)
    assert allowed >= at and allowed.tzinfo is UTC
    assert not hours.quiet(allowed, zone)
    # And it is the first such instant, to the minute.
    if allowed > at:
        assert hours.quiet(max(at, allowed - timedelta(minutes=1)), zone)


# Time of day


def test_the_next_time_of_day_is_today_if_not_past_else_tomorrow() -> None:
    ten = time(10)
    assert next_time_of_day(local(PARIS, 2026, 6, 1, 9, 0), PARIS, ten) == local(
        PARIS, 2026, 6, 1, 10, 0
    )
    assert next_time_of_day(local(PARIS, 2026, 6, 1, 11, 0), PARIS, ten) == local(
        PARIS, 2026, 6, 2, 10, 0
    )


def test_the_time_of_day_itself_is_the_next_one() -> None:
    # At or after: a timer set for 10:00 that asks again at 10:00 gets 10:00.
    at = local(PARIS, 2026, 6, 1, 10, 0)
    assert next_time_of_day(at, PARIS, time(10)) == at


def test_the_time_of_day_only_on_allowed_weekdays() -> None:
    # 2026-06-05 is a Friday; the next Monday or Wednesday at 10:00 is Monday the 8th.
    friday = local(PARIS, 2026, 6, 5, 9, 0)
    assert next_time_of_day(friday, PARIS, time(10), frozenset({0, 2})) == local(
        PARIS, 2026, 6, 8, 10, 0
    )
    assert next_time_of_day(friday, PARIS, time(10), frozenset({4})) == local(
        PARIS, 2026, 6, 5, 10, 0
    )
    # Friday 11:00, Fridays only: a week later.
    assert next_time_of_day(friday + timedelta(hours=2), PARIS, time(10), frozenset({4})) == (
        local(PARIS, 2026, 6, 12, 10, 0)
    )


def test_no_weekday_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        next_time_of_day(utc(2026, 6, 1), PARIS, time(10), frozenset())


def test_the_time_of_day_keeps_local_time_across_dst() -> None:
    # 10:00 Paris is 09:00 UTC before 29 March and 08:00 UTC after.
    assert next_time_of_day(utc(2026, 3, 28, 12), PARIS, time(10)) == utc(2026, 3, 29, 8)
    assert next_time_of_day(utc(2026, 10, 24, 12), PARIS, time(10)) == utc(2026, 10, 25, 9)
    assert next_time_of_day(utc(2026, 3, 7, 18), NEW_YORK, time(10)) == utc(2026, 3, 8, 14)
    assert next_time_of_day(utc(2026, 10, 31, 18), NEW_YORK, time(10)) == utc(2026, 11, 1, 15)


def test_a_time_of_day_the_clocks_skip_is_the_instant_they_jump() -> None:
    # 02:30 does not exist on the spring-forward day: 03:00 local, the first instant after.
    assert next_time_of_day(utc(2026, 3, 28, 12), PARIS, time(2, 30)) == utc(2026, 3, 29, 1, 0)
    assert next_time_of_day(utc(2026, 3, 7, 18), NEW_YORK, time(2, 30)) == utc(2026, 3, 8, 7, 0)
    # The day after, 02:30 exists again.
    assert next_time_of_day(utc(2026, 3, 29, 2), PARIS, time(2, 30)) == utc(2026, 3, 30, 0, 30)


def test_a_time_of_day_the_clocks_repeat_is_its_first_occurrence_unless_past() -> None:
    assert next_time_of_day(utc(2026, 10, 24, 12), PARIS, time(2, 30)) == utc(2026, 10, 25, 0, 30)
    # Between the two 02:30s, the second.
    assert next_time_of_day(utc(2026, 10, 25, 0, 45), PARIS, time(2, 30)) == utc(
        2026, 10, 25, 1, 30
    )
    assert next_time_of_day(utc(2026, 11, 1, 5, 45), NEW_YORK, time(1, 30)) == utc(
        2026, 11, 1, 6, 30
    )


@settings(max_examples=300, deadline=None)
@given(INSTANTS, ZONES, TIMES, st.frozensets(st.integers(0, 6), min_size=1))
def test_the_next_time_of_day_is_that_local_time_on_an_allowed_day(
    after: datetime, zone: ZoneInfo, at: time, weekdays: frozenset[int]
) -> None:
    found = next_time_of_day(after, zone, at, weekdays)
    assert after <= found < after + timedelta(days=8)
    assert found.tzinfo is UTC
    wall = found.astimezone(zone)
    assert wall.weekday() in weekdays
    # The local time itself, or the first instant after the gap that skipped it.
    assert wall.time() == at or (
        wall.time() > at and (found - timedelta(seconds=1)).astimezone(zone).time() < at
    )


# Dates and anniversaries


def test_days_before_a_date_at_a_local_time() -> None:
    assert before_date(date(2026, 7, 14), 3, time(10), PARIS) == utc(2026, 7, 11, 8)
    assert before_date(date(2026, 1, 2), 3, time(10), NEW_YORK) == utc(2025, 12, 30, 15)
    assert before_date(date(2026, 3, 29), 0, time(2, 30), PARIS) == utc(2026, 3, 29, 1)


def test_the_next_birthday_this_year_or_next() -> None:
    birthday = date(1990, 7, 14)
    # 3 days before, at 10:00 Paris (08:00 UTC in summer).
    assert next_anniversary(birthday, utc(2026, 6, 1), PARIS, 3, time(10)) == utc(2026, 7, 11, 8)
    assert next_anniversary(birthday, utc(2026, 7, 11, 8), PARIS, 3, time(10)) == utc(
        2026, 7, 11, 8
    )
    assert next_anniversary(birthday, utc(2026, 7, 11, 9), PARIS, 3, time(10)) == utc(
        2027, 7, 11, 8
    )


def test_days_before_a_birthday_early_in_january_fall_in_december() -> None:
    birthday = date(1990, 1, 2)
    assert next_anniversary(birthday, utc(2026, 12, 1), PARIS, 3, time(10)) == utc(2026, 12, 30, 9)
    assert next_anniversary(birthday, utc(2026, 12, 31), PARIS, 3, time(10)) == utc(2027, 12, 30, 9)


def test_a_29_february_birthday_falls_on_28_february_in_other_years() -> None:
    birthday = date(2000, 2, 29)
    assert next_anniversary(birthday, utc(2026, 1, 1), PARIS, 0, time(10)) == utc(2026, 2, 28, 9)
    assert next_anniversary(birthday, utc(2027, 3, 1), PARIS, 0, time(10)) == utc(2028, 2, 29, 9)
    assert next_anniversary(birthday, utc(2028, 1, 1), PARIS, 1, time(10)) == utc(2028, 2, 28, 9)


def test_the_birthday_is_the_persons_local_day() -> None:
    # 31 December 23:30 UTC is already 1 January in Paris: next year's is past.
    assert next_anniversary(date(1990, 1, 1), utc(2026, 12, 31, 23, 30), PARIS, 0, time(0)) == (
        utc(2027, 12, 31, 23, 0)
    )


def test_negative_days_before_are_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        next_anniversary(date(1990, 1, 1), utc(2026, 1, 1), PARIS, -1, time(10))


# Calendar days for frequency caps


def test_a_day_starts_at_local_midnight() -> None:
    at = utc(2026, 6, 10, 12)
    assert day_start(at, PARIS) == utc(2026, 6, 9, 22)
    assert day_start(at, PARIS, days_back=6) == utc(2026, 6, 3, 22)
    assert day_start(at, NEW_YORK) == utc(2026, 6, 10, 4)


def test_a_day_is_the_persons_calendar_day_not_utcs() -> None:
    # 23:30 UTC on the 10th is the 11th in Paris and still the 10th in New York.
    at = utc(2026, 6, 10, 23, 30)
    assert day_start(at, PARIS) == utc(2026, 6, 10, 22)
    assert day_start(at, NEW_YORK) == utc(2026, 6, 10, 4)


def test_calendar_days_across_dst_are_23_or_25_hours() -> None:
    assert day_start(utc(2026, 3, 30, 12), PARIS) - day_start(utc(2026, 3, 30, 12), PARIS, 1) == (
        timedelta(hours=23)
    )
    assert day_start(utc(2026, 10, 26, 12), PARIS) - day_start(
        utc(2026, 10, 26, 12), PARIS, 1
    ) == timedelta(hours=25)
    # Seven days back over the New York spring change.
    assert day_start(utc(2026, 3, 10, 12), NEW_YORK, 6) == utc(2026, 3, 4, 5)


def test_a_day_that_starts_at_1_starts_at_1() -> None:
    # Santiago goes forward at midnight on 6 September 2026: the day starts at 01:00.
    santiago = ZoneInfo("America/Santiago")
    assert day_start(utc(2026, 9, 6, 12), santiago) == utc(2026, 9, 6, 4)


# Parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10:00", time(10)), ("21:30", time(21, 30)), ("7:05", time(7, 5)), ("00:00", time(0))],
)
def test_times_of_day_are_read(text: str, expected: time) -> None:
    assert parse_time_of_day(text, "quiet_hours.start") == expected


@pytest.mark.parametrize("text", ["24:00", "10:60", "10", "10h00", "", "10:00:00", None, 10])
def test_a_bad_time_of_day_is_refused_naming_the_field(text: Any) -> None:
    with pytest.raises(DomainError, match="HH:MM") as raised:
        parse_time_of_day(text, "quiet_hours.start")
    assert raised.value.field == "quiet_hours.start"


def test_weekdays_are_read_by_name_or_number() -> None:
    assert parse_weekdays(["mon", "Tue", "sunday"], "send.weekdays") == frozenset({0, 1, 6})
    assert parse_weekdays([0, 4, 4], "send.weekdays") == frozenset({0, 4})


@pytest.mark.parametrize("value", [[], "mon", ["funday"], [7], [-1], [True], None, {"mon": 1}])
def test_bad_weekdays_are_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(DomainError) as raised:
        parse_weekdays(value, "send.weekdays")
    assert raised.value.field == "send.weekdays"
