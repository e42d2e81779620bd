"""Tests on one value: the operators of the condition language and what each one means.

The same meaning is compiled to SQL in `storage/segment_sql.py`; the two must agree on
every value, so the rules are strict and typed rather than forgiving:

- a value is compared only with a literal of its own kind: a string with a string, a
  number with a number (booleans are not numbers), a boolean with a boolean;
- number literals are finite and within ±2**53, where JSON integers are exact on every
  system (RFC 7493); values and literals compare exactly, whatever their size;
- strings order by code point;
- a missing value and a JSON null fail every test except `not_exists`, `ne` and
  `not_in`, which are the negations of `exists`, `eq` and `in`;
- `older_than` and `newer_than` read the value as an ISO-8601 timestamp, exactly
  `YYYY-MM-DD`, optionally `THH:MM[:SS[.f]]` (`T` or a space, 1 to 6 fractional digits,
  ASCII digits only) and `Z` or `±HH:MM` (at most 23:59), a valid date from year 1 to
  9999 in UTC; compared to the microsecond, and a value that is not such a text fails.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import isfinite
from typing import Any

from ariane.domain.clock import parse_duration
from ariane.domain.errors import DomainError


class InvalidDefinition(DomainError):
    """A segment or computed-trait definition that cannot be used; `field` is the path."""

    code = "invalid_definition"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
OPERATORS = (
    *COMPARISONS,
    "between",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "ends_with",
    "exists",
    "not_exists",
    "older_than",
    "newer_than",
)
_UNARY = frozenset({"exists", "not_exists"})
_TEXT_ONLY = frozenset({"starts_with", "ends_with"})
_AGES = frozenset({"older_than", "newer_than"})

_PATH_PART = re.compile(r'^[^."\\\[\]$*]+$')
# Matched whole (`fullmatch`): `$` would also accept a trailing newline, and `\d` any
# Unicode digit, neither of which the SQL side can mirror.
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
# The largest number literal: every integer up to it is exact in a double.
MAX_LITERAL = 2**53
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch: instants compared as integers never overflow."""
    return (moment - EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Test:
    op: str
    value: Any = None
    age: timedelta | None = None

    def to_json(self) -> dict[str, Any]:
        if self.op in _UNARY:
            return {"op": self.op}
        return {"op": self.op, "value": self.value}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def same(value: Any, literal: Any) -> bool:
    """Equality of a value with a literal of the same kind."""
    if isinstance(literal, bool):
        return isinstance(value, bool) and value is literal
    if is_number(literal):
        return is_number(value) and value == literal
    return isinstance(value, str) and value == literal


def _ordered(value: Any, literal: Any) -> bool:
    if is_number(literal):
        return is_number(value)
    return isinstance(literal, str) and isinstance(value, str)


def parse_moment(value: Any) -> datetime | None:
    """The timestamp a trait or property holds, or None when it holds none."""
    if not isinstance(value, str):
        return None
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "").ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        try:
            moment -= sign * offset
        except OverflowError:
            return None
    return moment


def check(test: Test, value: Any, now: datetime) -> bool:
    op, literal = test.op, test.value
    present = value is not MISSING and value is not None
    if op == "exists":
        return present
    if op == "not_exists":
        return not present
    if op == "ne":
        return not (present and same(value, literal))
    if op == "not_in":
        return not (present and any(same(value, item) for item in literal))
    if not present:
        return False
    if op == "eq":
        return same(value, literal)
    if op == "in":
        return any(same(value, item) for item in literal)
    if op in ("gt", "gte", "lt", "lte"):
        if not _ordered(value, literal):
            return False
        if op == "gt":
            return bool(value > literal)
        if op == "gte":
            return bool(value >= literal)
        if op == "lt":
            return bool(value < literal)
        return bool(value <= literal)
    if op == "between":
        low, high = literal
        return _ordered(value, low) and bool(low <= value <= high)
    if op == "contains":
        if isinstance(value, list):
            return any(same(item, literal) for item in value)
        return isinstance(value, str) and isinstance(literal, str) and literal in value
    if op == "starts_with":
        return isinstance(value, str) and value.startswith(literal)
    if op == "ends_with":
        return isinstance(value, str) and value.endswith(literal)
    moment = parse_moment(value)
    if moment is None or test.age is None:
        return False
    # In microseconds: `now - age` may fall before year 1, where datetime overflows.
    bound = micros(now) - test.age // _MICROSECOND
    if op == "older_than":
        return micros(moment) <= bound
    return micros(moment) > bound


TestFunction = Callable[[Any, datetime], bool]

_ORDERS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def compile_test(test: Test) -> TestFunction:
    """`check` for one test, as a function of the value and the moment.

    The comparisons segments make most, of a number or a string with a literal of its
    own kind, are decided here at once, and so is their answer for a value that is
    missing (no); every other case goes to `check`.
    """
    op, literal = test.op, test.value
    if op in _ORDERS and is_number(literal):
        order = _ORDERS[op]

        def against_number(value: Any, now: datetime) -> bool:
            kind = type(value)
            if kind is int or kind is float:
                return order(value, literal)
            if value is MISSING or value is None:
                return False
            return check(test, value, now)

        return against_number
    if op == "eq" and isinstance(literal, str):

        def equals_text(value: Any, now: datetime) -> bool:
            if type(value) is str:
                return bool(value == literal)
            if value is MISSING or value is None:
                return False
            return check(test, value, now)

        return equals_text
    if op == "eq" and is_number(literal):

        def equals_number(value: Any, now: datetime) -> bool:
            kind = type(value)
            if kind is int or kind is float:
                return bool(value == literal)
            if value is MISSING or value is None:
                return False
            return check(test, value, now)

        return equals_number
    return lambda value, now: check(test, value, now)


def age_boundary(test: Test, value: Any) -> datetime | None:
    """When an `older_than`/`newer_than` test on this value changes its answer."""
    if test.op not in _AGES or test.age is None:
        return None
    moment = parse_moment(value)
    if moment is None:
        return None
    try:
        return moment + test.age
    except OverflowError:
        # After year 9999: never.
        return None


def _literal_number(value: Any) -> bool:
    return is_number(value) and isfinite(value) and -MAX_LITERAL <= value <= MAX_LITERAL


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _literal_number(value)


def _same_kind(value: Any, literal: Any) -> bool:
    """Two literals that order against each other: two numbers or two strings."""
    if _literal_number(literal):
        return _literal_number(value)
    return isinstance(literal, str) and isinstance(value, str)


def parse_test(node: Mapping[str, Any], path: str) -> Test:
    op = node.get("op")
    if op not in OPERATORS:
        raise InvalidDefinition(
            f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}", field=f"{path}.op"
        )
    where = f"{path}.value"
    if op in _UNARY:
        if "value" in node:
            raise InvalidDefinition(f"{op} takes no value", field=where)
        return Test(op)
    if "value" not in node:
        raise InvalidDefinition(f"{op} needs a value", field=where)
    value = node["value"]
    if op in _AGES:
        if not isinstance(value, str):
            raise InvalidDefinition(f"{op} needs an ISO-8601 duration such as P25D", field=where)
        try:
            age = parse_duration(value)
        except ValueError as error:
            raise InvalidDefinition(str(error), field=where) from None
        except OverflowError:
            raise InvalidDefinition(f"{value!r} is too long a duration", field=where) from None
        return Test(op, value, age)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or not all(_scalar(v) for v in value):
            raise InvalidDefinition(
                f"{op} needs a non-empty list of strings, numbers or booleans"
                f" (numbers within ±{MAX_LITERAL})",
                field=where,
            )
        return Test(op, list(value))
    if op == "between":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(_same_kind(v, value[0]) for v in value)
        ):
            raise InvalidDefinition(
                f"between needs [low, high], two numbers (within ±{MAX_LITERAL}) or two strings",
                field=where,
            )
        return Test(op, list(value))
    if op in _TEXT_ONLY:
        if not isinstance(value, str):
            raise InvalidDefinition(f"{op} needs a string", field=where)
        return Test(op, value)
    if op in ("gt", "gte", "lt", "lte") and not (isinstance(value, str) or is_number(value)):
        raise InvalidDefinition(f"{op} needs a number or a string", field=where)
    if is_number(value) and not _literal_number(value):
        raise InvalidDefinition(
            f"numbers in conditions are finite and within ±{MAX_LITERAL}", field=where
        )
    if not _scalar(value):
        raise InvalidDefinition(
            f"{op} needs a string, a number or a boolean; test null with exists/not_exists",
            field=where,
        )
    return Test(op, value)


def parse_path(name: Any, path: str) -> tuple[str, ...]:
    """`address.city` → ("address", "city"): a key, then keys into nested objects."""
    if not isinstance(name, str) or not name:
        raise InvalidDefinition("needs a name such as plan or address.city", field=path)
    parts = tuple(name.split("."))
    for part in parts:
        if not _PATH_PART.match(part) or part != part.strip():
            raise InvalidDefinition(
                f"{name!r} is not a usable name: parts are separated by '.', and may not be"
                " empty or hold quotes, backslashes, brackets, $ or *",
                field=path,
            )
    return parts


def lookup(document: Mapping[str, Any], parts: Sequence[str]) -> Any:
    value: Any = document
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def parse_age(text: Any, path: str) -> timedelta:
    if not isinstance(text, str):
        raise InvalidDefinition("needs an ISO-8601 duration such as P7D or PT3S", field=path)
    try:
        length = parse_duration(text)
    except ValueError as error:
        raise InvalidDefinition(str(error), field=path) from None
    except OverflowError:
        raise InvalidDefinition(f"{text!r} is too long a duration", field=path) from None
    if length <= timedelta(0):
        raise InvalidDefinition("needs a duration longer than zero", field=path)
    return length
