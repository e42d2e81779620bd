"""Time for the domain: parsing ISO-8601 of any precision and a canonical UTC text form."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_ISO = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<time>\d{2}:\d{2}(?::\d{2})?)(?:[.,](?P<frac>\d+))?)?"
    r"\s*(?P<tz>Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def parse_timestamp(text: str) -> datetime:
    """Parse ISO-8601 with any fractional precision (nanoseconds are truncated).

    A value without an offset is taken as UTC, as Segment does.
    """
    match = _ISO.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an ISO-8601 timestamp")
    time = match["time"] or "00:00:00"
    if len(time) == 5:
        time += ":00"
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    tz = match["tz"] or "Z"
    if tz in ("Z", "z"):
        tz = "+00:00"
    elif len(tz) == 3:
        tz += ":00"
    elif ":" not in tz:
        tz = f"{tz[:3]}:{tz[3:]}"
    try:
        return datetime.fromisoformat(f"{match['date']}T{time}.{frac}{tz}").astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is a valid text but before datetime.min in UTC.
        raise ValueError(f"{text!r} is out of the range of dates") from None


def iso(moment: datetime) -> str:
    """Canonical UTC text, fixed width, so that text order is time order."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat is several times faster than strftime, and this is on the ingestion path.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utcnow() -> datetime:
    return datetime.now(UTC)


_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """ISO-8601 durations of fixed length (weeks, days, hours, minutes, seconds)."""
    match = _DURATION.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO-8601 duration such as P30D or PT6H")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return timedelta(**parts)


def format_duration(length: timedelta) -> str:
    """The ISO-8601 text of a duration, such as P30D or P1DT6H: `parse_duration` reads
    it back to the same length."""
    days = length.days
    seconds = length.seconds
    micro = length.microseconds
    hours, rest = divmod(seconds, 3600)
    minutes, whole = divmod(rest, 60)
    clock = ""
    if hours:
        clock += f"{hours}H"
    if minutes:
        clock += f"{minutes}M"
    if whole or micro:
        clock += f"{whole}.{micro:06d}".rstrip("0").rstrip(".") + "S"
    if not clock:
        return f"P{days}D"
    return (f"P{days}D" if days else "P") + "T" + clock
