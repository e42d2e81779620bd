"""Computed traits: aggregates of a person's events, kept up to date event by event.

A *feature* is one aggregate (a kind) of the `track` events of one name that pass a
filter, over a window. Computed traits are named features; every event condition of a
segment is a counting feature too. Each profile keeps, per feature, a small state in
`computed["features"]`, folded one event at a time and never rebuilt from history on the
hot path:

- with no window or a date range, a running aggregate (a count, a sum, a set...);
- with a window that moves (`within` the last P7D) or that starts when the person was
  first seen (`within` P7D `from` first_seen), the entries inside it, pruned as they
  leave it, so that the value falls as time passes.

Folding the same events in any order, or merging two profiles, gives the same state, so
a backfill from history equals the value kept live. For that, and so that SQL computes
the same values from the events table (`storage/segment_sql.py`):

- a number is the decimal its JSON text says (a float is its shortest repr); `sum` adds
  them exactly, and its value is the double nearest that exact sum (an integer when it
  is one, up to 2**53); `average` is that double divided by the count, in double
  precision;
- `first` and `last` order events by (timestamp, message id, value), so that two events
  with one timestamp and one message id (from two sources) still give one answer;
- `most_frequent` breaks a tie by the smallest string in code-point order, and
  `unique_list` is sorted in code-point order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact
from typing import Any

from ariane.domain.clock import parse_timestamp
from ariane.domain.predicates import (
    EPOCH,
    MAX_LITERAL,
    MISSING,
    InvalidDefinition,
    Test,
    TestFunction,
    compile_test,
    is_number,
    lookup,
    micros,
    parse_age,
    parse_path,
    parse_test,
)

KINDS = (
    "count",
    "sum",
    "average",
    "min",
    "max",
    "most_frequent",
    "first",
    "last",
    "unique_list",
    "unique_count",
)
NUMERIC_KINDS = frozenset({"sum", "average", "min", "max"})
TEXT_KINDS = frozenset({"most_frequent", "first", "last", "unique_list", "unique_count"})
_MAX_NAME = 200
# Beyond every instant a datetime can hold, in microseconds.
_FAR = 2**62
# Sums are exact: no digit is ever rounded away (and if one were, Inexact would say so).
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact])
_LATEST = micros(datetime.max.replace(tzinfo=UTC))


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def length_micros(length: timedelta) -> int:
    return length // timedelta(microseconds=1)


def decimal_of(number: int | float) -> Decimal:
    """The decimal a JSON number says: an integer exactly, a float as its shortest repr."""
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


def add_exactly(one: Decimal, other: Decimal) -> Decimal:
    return _EXACT.add(one, other)


def sum_value(total: Decimal) -> int | float:
    """The double nearest an exact sum; an integer when it is one that a double holds."""
    if total == total.to_integral_value() and abs(total) <= MAX_LITERAL:
        return int(total)
    return float(total)


@dataclass(frozen=True, slots=True)
class Window:
    """`all` of history, the `recent` past, the `first` days after first seen, or a `range`."""

    kind: str = "all"
    length: timedelta | None = None
    start: datetime | None = None
    end: datetime | None = None

    @property
    def moves(self) -> bool:
        return self.kind in ("recent", "first")

    def to_json(self) -> dict[str, Any]:
        if self.kind == "recent":
            return {"within": _duration_text(self.length)}
        if self.kind == "first":
            return {"within": _duration_text(self.length), "from": "first_seen"}
        if self.kind == "range":
            assert self.start is not None and self.end is not None
            return {"between": [_iso(self.start), _iso(self.end)]}
        return {}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _duration_text(length: timedelta | None) -> str:
    assert length is not None
    seconds = length.total_seconds()
    days, rest = divmod(seconds, 86400)
    text = f"P{int(days)}D" if days else "P"
    if rest:
        text += f"T{rest:g}S"
    return text


# Folds one event into a feature's state: (state, event micros, message id, properties,
# now micros, first-seen micros) → the new state, or None when the event leaves it as it
# was. Made once per feature by `_folder`.
Folder = Callable[
    [dict[str, Any] | None, int, str, Mapping[str, Any], int, int | None], dict[str, Any] | None
]


@dataclass(frozen=True, slots=True)
class Feature:
    kind: str
    event: str
    where: tuple[tuple[tuple[str, ...], Test], ...] = ()
    property_path: tuple[str, ...] | None = None
    window: Window = field(default_factory=Window)
    # Worked out once: evaluation looks features up by key for every person it touches,
    # and folds and reads windows in microseconds.
    key: str = field(init=False, repr=False, compare=False)
    span: int = field(init=False, repr=False, compare=False)
    bounds: tuple[int, int] = field(init=False, repr=False, compare=False)
    # The filter's tests compiled (`compile_test`), each with the property it reads.
    filters: tuple[tuple[tuple[str, ...], TestFunction], ...] = field(
        init=False, repr=False, compare=False
    )
    # `value_at` for this feature (`_reader`).
    read: Callable[[Mapping[str, Any] | None, int, int | None], Any] = field(
        init=False, repr=False, compare=False
    )
    # How an event of its name changes its state (`_folder`).
    fold: Folder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "key", hashlib.sha1(canonical.encode()).hexdigest()[:16])
        window = self.window
        length = window.length
        object.__setattr__(self, "span", 0 if length is None else length_micros(length))
        if window.start is not None and window.end is not None:
            bounds = (micros(window.start), micros(window.end))
        else:
            bounds = (-_FAR, _FAR)
        object.__setattr__(self, "bounds", bounds)
        filters = tuple((path, compile_test(test)) for path, test in self.where)
        object.__setattr__(self, "filters", filters)
        object.__setattr__(self, "read", _reader(self))
        object.__setattr__(self, "fold", _folder(self))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "event": self.event}
        if self.where:
            doc["where"] = [
                {"property": ".".join(path), **test.to_json()} for path, test in self.where
            ]
        if self.property_path is not None:
            doc["property"] = ".".join(self.property_path)
        doc.update(self.window.to_json())
        return doc

    def matches(self, properties: Mapping[str, Any], at: datetime) -> bool:
        # Ages in a filter are measured from the event's own time, so that whether an
        # event counts never depends on when it was folded.
        plain = type(properties) is dict
        for path, test in self.filters:
            if plain and len(path) == 1:
                value = properties.get(path[0], MISSING)
            else:
                value = lookup(properties, path)
            if not test(value, at):
                return False
        return True


def parse_window(node: Mapping[str, Any], path: str) -> Window:
    anchor = node.get("from")
    if "between" in node:
        if "within" in node or anchor is not None:
            raise InvalidDefinition("give either within or between, not both", field=path)
        bounds = node["between"]
        where = f"{path}.between"
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise InvalidDefinition("between needs [start, end] as ISO-8601 times", field=where)
        try:
            start, end = (parse_timestamp(str(b)) for b in bounds)
        except ValueError as error:
            raise InvalidDefinition(str(error), field=where) from None
        if not start < end:
            raise InvalidDefinition("the start must come before the end", field=where)
        return Window("range", start=start, end=end)
    if "within" in node:
        length = parse_age(node["within"], f"{path}.within")
        if anchor is None:
            return Window("recent", length)
        if anchor != "first_seen":
            raise InvalidDefinition("from can only be first_seen", field=f"{path}.from")
        return Window("first", length)
    if anchor is not None:
        raise InvalidDefinition("from first_seen needs within, such as P7D", field=f"{path}.from")
    return Window()


def parse_filter(node: Mapping[str, Any], path: str) -> tuple[str, tuple[Any, ...]]:
    event = node.get("event")
    if not isinstance(event, str) or not event.strip() or len(event) > _MAX_NAME:
        raise InvalidDefinition(
            f"needs the name of a track event (1 to {_MAX_NAME} characters)",
            field=f"{path}.event",
        )
    where = node.get("where", [])
    if not isinstance(where, list):
        raise InvalidDefinition(
            'where is a list such as [{"property": "plan", "op": "eq", "value": "pro"}]',
            field=f"{path}.where",
        )
    tests = []
    for index, item in enumerate(where):
        item_path = f"{path}.where[{index}]"
        if not isinstance(item, dict):
            raise InvalidDefinition("needs {property, op, value}", field=item_path)
        unknown = set(item) - {"property", "op", "value"}
        if unknown:
            raise InvalidDefinition(
                f"unknown key {sorted(unknown)[0]!r}", field=f"{item_path}.{sorted(unknown)[0]}"
            )
        parts = parse_path(item.get("property"), f"{item_path}.property")
        tests.append((parts, parse_test(item, item_path)))
    return event, tuple(tests)


_TRAIT_KEYS = frozenset({"name", "description", "kind", "event", "where", "property"}) | {
    "within",
    "from",
    "between",
}


def parse_feature(node: Any, path: str) -> Feature:
    """A computed trait's definition: {kind, event, where, property, within|between}."""
    if not isinstance(node, dict):
        raise InvalidDefinition("needs an object with kind and event", field=path)
    unknown = set(node) - _TRAIT_KEYS
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidDefinition(f"unknown key {name!r}", field=f"{path}.{name}")
    kind = node.get("kind")
    if kind not in KINDS:
        raise InvalidDefinition(
            f"unknown kind {kind!r}; use one of {', '.join(KINDS)}", field=f"{path}.kind"
        )
    event, where = parse_filter(node, path)
    prop: tuple[str, ...] | None = None
    if kind == "count":
        if "property" in node:
            raise InvalidDefinition("count takes no property", field=f"{path}.property")
    else:
        prop = parse_path(node.get("property"), f"{path}.property")
    return Feature(kind, event, where, prop, parse_window(node, path))


# --- state ------------------------------------------------------------------------------
#
# Entries (moving windows): {"e": [entry, ...]}, each entry what its kind reads: [micros]
# for a count, [micros, value, message_id] for first and last (ties broken by message id),
# [micros, value] for the others. (States written before 2026-11-24 hold all three in
# every entry: they read the same.)
# Aggregates: count {"n"}, sum/average {"s": exact decimal text, "n"}, min/max {"m"},
# first/last {"t", "i", "v"}, most_frequent {"c": {value: n}}, unique_* {"u": {value: 1}}.


def _horizon(feature: Feature, now_us: int, first_us: int | None) -> tuple[int, int]:
    """The micros range [low, high) of entries still inside a moving window."""
    # In microseconds: `now - length` may fall before year 1, where datetime overflows.
    if feature.window.kind == "recent":
        return now_us - feature.span + 1, _FAR
    base = first_us if first_us is not None else _FAR
    return -_FAR, base + feature.span


def _micros_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else micros(moment)


def _folder(feature: Feature) -> Folder:
    """The fold of one feature, with its kind, window and property worked out once: it
    runs for every event of its name and every feature that name feeds."""
    kind, path, window = feature.kind, feature.property_path, feature.window.kind
    single = path[0] if path is not None and len(path) == 1 else None
    numeric, text = kind in NUMERIC_KINDS, kind in TEXT_KINDS
    aggregate = _AGGREGATES[kind]
    span = feature.span
    start, end = feature.bounds
    recent = window == "recent"

    def fold(
        state: dict[str, Any] | None,
        stamp: int,
        message_id: str,
        properties: Mapping[str, Any],
        now_us: int,
        first_us: int | None,
    ) -> dict[str, Any] | None:
        value: Any = None
        if path is not None:
            if single is not None:
                value = properties.get(single, MISSING)
            else:
                value = lookup(properties, path)
            if value is MISSING:
                return None
            if numeric:
                if not is_number(value):
                    return None
            elif text and not isinstance(value, str):
                return None
        if window == "all":
            return aggregate(dict(state) if state else {}, stamp, message_id, value)
        if window == "range":
            if not start <= stamp < end:
                return None
            return aggregate(dict(state) if state else {}, stamp, message_id, value)
        # A moving window: the entries still inside it, and this one.
        if recent:
            low, high = now_us - span + 1, _FAR
        else:
            low, high = -_FAR, (first_us if first_us is not None else _FAR) + span
        if not low <= stamp < high:
            return None
        entries = [e for e in state["e"] if low <= e[0] < high] if state else []
        if kind == "count":
            entries.append([stamp])
        elif kind == "first" or kind == "last":
            entries.append([stamp, value, message_id])
        else:
            entries.append([stamp, value])
        return {"e": entries}

    return fold


def _add_count(state: dict[str, Any], stamp: int, message_id: str, value: Any) -> dict[str, Any]:
    state["n"] = state.get("n", 0) + 1
    return state


def _add_sum(state: dict[str, Any], stamp: int, message_id: str, value: Any) -> dict[str, Any]:
    state["s"] = str(add_exactly(Decimal(state.get("s", 0)), decimal_of(value)))
    state["n"] = state.get("n", 0) + 1
    return state


def _add_min(state: dict[str, Any], stamp: int, message_id: str, value: Any) -> dict[str, Any]:
    state["m"] = value if "m" not in state else min(state["m"], value)
    return state


def _add_max(state: dict[str, Any], stamp: int, message_id: str, value: Any) -> dict[str, Any]:
    state["m"] = value if "m" not in state else max(state["m"], value)
    return state


def _add_first(state: dict[str, Any], stamp: int, message_id: str, value: Any) -> dict[str, Any]:
    if "t" not in state or (stamp, message_id, value) < _order(state):
        state.update(t=stamp, i=message_id, v=value)
    return state


def _add_last(state: dict[str, Any], stamp: int, message_id: str, value: Any) -> dict[str, Any]:
    if "t" not in state or (stamp, message_id, value) > _order(state):
        state.update(t=stamp, i=message_id, v=value)
    return state


def _add_most_frequent(
    state: dict[str, Any], stamp: int, message_id: str, value: Any
) -> dict[str, Any]:
    counts = dict(state.get("c", {}))
    counts[value] = counts.get(value, 0) + 1
    state["c"] = counts
    return state


def _add_unique(state: dict[str, Any], stamp: int, message_id: str, value: Any) -> dict[str, Any]:
    state["u"] = {**state.get("u", {}), value: 1}
    return state


# How an event adds to the aggregate of each kind (windows `all` and `range`); the
# aggregate is a copy of the state, which the caller may still hold.
_AGGREGATES: dict[str, Callable[[dict[str, Any], int, str, Any], dict[str, Any]]] = {
    "count": _add_count,
    "sum": _add_sum,
    "average": _add_sum,
    "min": _add_min,
    "max": _add_max,
    "first": _add_first,
    "last": _add_last,
    "most_frequent": _add_most_frequent,
    "unique_list": _add_unique,
    "unique_count": _add_unique,
}


def _order(state: Mapping[str, Any]) -> tuple[int, str, str]:
    return state["t"], state["i"], state["v"]


def merge(
    feature: Feature,
    one: dict[str, Any] | None,
    other: dict[str, Any] | None,
    now: datetime,
    first_seen: datetime | None,
) -> dict[str, Any] | None:
    if one is None or other is None:
        return one if other is None else other
    if feature.window.moves:
        low, high = _horizon(feature, micros(now), _micros_or_none(first_seen))
        return {"e": [e for e in (*one["e"], *other["e"]) if low <= e[0] < high]}
    kind = feature.kind
    if kind == "count":
        return {"n": one["n"] + other["n"]}
    if kind in ("sum", "average"):
        total = add_exactly(Decimal(one["s"]), Decimal(other["s"]))
        return {"s": str(total), "n": one["n"] + other["n"]}
    if kind in ("min", "max"):
        pick = min if kind == "min" else max
        return {"m": pick(one["m"], other["m"])}
    if kind in ("first", "last"):
        pair = sorted((one, other), key=_order)
        return pair[0] if kind == "first" else pair[1]
    if kind == "most_frequent":
        counts = dict(one["c"])
        for value, n in other["c"].items():
            counts[value] = counts.get(value, 0) + n
        return {"c": counts}
    return {"u": {**one["u"], **other["u"]}}


def value(
    feature: Feature, state: Mapping[str, Any] | None, now: datetime, first_seen: datetime | None
) -> Any:
    """The feature's value at `now`: 0 or [] when nothing counts, MISSING when undefined."""
    return value_at(feature, state, micros(now), _micros_or_none(first_seen))


def value_at(
    feature: Feature, state: Mapping[str, Any] | None, now_us: int, first_us: int | None
) -> Any:
    """`value`, with `now` and first seen in microseconds."""
    return feature.read(state, now_us, first_us)


def _reader(feature: Feature) -> Callable[[Mapping[str, Any] | None, int, int | None], Any]:
    """`value_at` for one feature. Segments read counts of events in a window that moves
    more than anything else, for every person of every batch: those are counted here
    without going through the general case."""
    if feature.kind == "count" and feature.window.kind == "recent":
        span = feature.span

        def recent_count(state: Mapping[str, Any] | None, now_us: int, _: int | None) -> int:
            if not state:
                return 0
            low = now_us - span + 1
            inside = 0
            for entry in state["e"]:
                if entry[0] >= low:
                    inside += 1
            return inside

        return recent_count
    if feature.kind == "count" and not feature.window.moves:

        def count(state: Mapping[str, Any] | None, _: int, __: int | None) -> int:
            return state.get("n", 0) if state else 0

        return count
    return lambda state, now_us, first_us: _value(feature, state, now_us, first_us)


def _value(
    feature: Feature, state: Mapping[str, Any] | None, now_us: int, first_us: int | None
) -> Any:
    state = state or {}
    kind = feature.kind
    if feature.window.moves:
        low, high = _horizon(feature, now_us, first_us)
        if kind == "count":
            inside = 0
            for entry in state.get("e", ()):
                if low <= entry[0] < high:
                    inside += 1
            return inside
        entries = [e for e in state.get("e", []) if low <= e[0] < high]
        return _from_entries(kind, entries)
    if kind == "count":
        return state.get("n", 0)
    if kind == "sum":
        return sum_value(Decimal(state.get("s", 0)))
    if kind == "average":
        return float(Decimal(state["s"])) / state["n"] if state.get("n") else MISSING
    if kind in ("min", "max", "first", "last"):
        key = "m" if kind in ("min", "max") else "v"
        return state.get(key, MISSING)
    if kind == "most_frequent":
        return _most_frequent(state.get("c", {}))
    unique = sorted(state.get("u", {}))
    return unique if kind == "unique_list" else len(unique)


def _most_frequent(counts: Mapping[str, int]) -> Any:
    if not counts:
        return MISSING
    # The highest count; among equals the value first in code-point order.
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def _from_entries(kind: str, entries: Sequence[Sequence[Any]]) -> Any:
    if kind == "count":
        return len(entries)
    values = [e[1] for e in entries]
    if kind in ("sum", "average"):
        total = Decimal(0)
        for item in values:
            total = add_exactly(total, decimal_of(item))
        if kind == "sum":
            return sum_value(total)
        return float(total) / len(values) if values else MISSING
    if kind in ("min", "max"):
        return (min if kind == "min" else max)(values) if values else MISSING
    if kind in ("first", "last"):
        if not entries:
            return MISSING
        pick = min if kind == "first" else max
        return pick(entries, key=lambda e: (e[0], e[2], e[1]))[1]
    if kind == "most_frequent":
        counts: dict[str, int] = {}
        for item in values:
            counts[item] = counts.get(item, 0) + 1
        return _most_frequent(counts)
    unique = sorted(set(values))
    return unique if kind == "unique_list" else len(unique)


def next_change_at(feature: Feature, state: Mapping[str, Any] | None, now_us: int) -> int | None:
    """When (in microseconds) the oldest entry still inside a window that moves with time
    leaves it.

    Entries that have left already are skipped: a timer does not prune the state, and the
    next one is due when the next entry leaves.
    """
    if feature.window.kind != "recent" or not state:
        return None
    span = feature.span
    due = None
    for entry in state.get("e", ()):
        leaves = entry[0] + span
        if leaves > now_us and (due is None or leaves < due):
            due = leaves
    return None if due is None or due > _LATEST else due


def fold_event(
    states: dict[str, Any],
    fed: Iterable[tuple[str, Feature]],
    at: datetime,
    message_id: str,
    properties: Mapping[str, Any],
    now: datetime,
    first_seen: datetime | None,
) -> list[str]:
    """Fold one track event into every feature its name feeds; the keys that changed."""
    changed = []
    stamp, now_us, first_us = micros(at), micros(now), _micros_or_none(first_seen)
    for key, feature in fed:
        if feature.where and not feature.matches(properties, at):
            continue
        state = feature.fold(states.get(key), stamp, message_id, properties, now_us, first_us)
        if state is not None:
            states[key] = state
            changed.append(key)
    return changed


def merge_states(
    catalogue: Mapping[str, Feature],
    survivor: dict[str, Any],
    absorbed: Mapping[str, Any],
    now: datetime,
    first_seen: datetime | None,
) -> None:
    for key in {*survivor, *absorbed}:
        feature = catalogue.get(key)
        if feature is None:
            # A feature no segment or trait uses any more.
            survivor.pop(key, None)
            continue
        merged = merge(feature, survivor.get(key), absorbed.get(key), now, first_seen)
        if merged is not None:
            survivor[key] = merged
