"""The checks every declared definition shares (programmes, earn rules, tiers): each
refuses a value naming its path, and says what is wanted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from ariane.domain.clock import parse_duration
from ariane.domain.predicates import (
    InvalidDefinition,
    TestFunction,
    compile_test,
    parse_path,
    parse_test,
)

# Beyond a hundred years, a duration is a mistake (and past the year 9999, no time).
MAX_DURATION = timedelta(days=36_500)


def keyed(value: Any, path: str, keys: Sequence[str]) -> Mapping[str, Any]:
    """An object holding only `keys`; an unknown key is named by its path."""
    if not isinstance(value, Mapping):
        raise InvalidDefinition(f"needs an object with {', '.join(keys)}", field=path)
    unknown = sorted(str(key) for key in value if key not in keys)
    if unknown:
        raise InvalidDefinition(
            f"unknown key {unknown[0]!r}; the keys here are {', '.join(keys)}",
            field=f"{path}.{unknown[0]}",
        )
    return value


def listed(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidDefinition("needs a list", field=path)
    return value


def whole(value: Any, path: str, *, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise InvalidDefinition(f"needs a whole number from {least} to {most:,}", field=path)
    return value


def duration(value: Any, path: str, *, zero: bool = False) -> timedelta:
    """An ISO-8601 duration of at most 36,500 days, above zero unless `zero`."""
    try:
        length = parse_duration(value) if isinstance(value, str) else None
    except (ValueError, OverflowError):
        length = None
    if length is None or length > MAX_DURATION or length < timedelta(0):
        raise InvalidDefinition(
            "needs an ISO-8601 duration of at most 36,500 days, such as P30D", field=path
        )
    if not zero and length == timedelta(0):
        raise InvalidDefinition("needs a duration above zero, such as P30D", field=path)
    return length


# Tests of properties: (the path of a property, its test).
PropertyTests = tuple[tuple[tuple[str, ...], TestFunction], ...]


def property_tests(value: Any, path: str) -> PropertyTests:
    """`where: [{property, op, value}, ...]`: tests an event's properties must all pass."""
    tests = []
    for index, item in enumerate(listed(value, path)):
        where = f"{path}[{index}]"
        item = keyed(item, where, ("property", "op", "value"))
        tests.append(
            (
                parse_path(item.get("property"), f"{where}.property"),
                compile_test(parse_test(item, where)),
            )
        )
    return tuple(tests)
