"""The SQL a segment condition compiles to agrees with the live evaluator, on both databases.

Each example is a world of profiles (traits of every JSON kind, timestamps as texts),
track events around `NOW` (on window boundaries to the microsecond, with equal timestamps
and message ids), consents (some expiring right now), memberships and five computed
traits of different kinds, then random conditions using every node, operator and window.
The live side folds each profile's events in a random order, at moments up to `NOW`, into
two states merged at the end, as ingestion and identity merges do; the SQL side reads the
same rows from the tables. Every part of every condition must get the same answer for
every profile.

Hypothesis seeds a `Random` that builds the world and the conditions: its own draws lean
on the first and smallest choices, which would rarely make a literal meet a value.
Literals are mostly taken from the values the world holds, and events and timestamps are
moved onto the boundaries that the conditions draw, so that the answers often differ
between profiles and land on the edges where engines disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from random import Random
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from ariane.domain import computed as comp
from ariane.domain.computed import KINDS, Feature, parse_feature
from ariane.domain.conditions import (
    BOUNDS,
    CONSENT_STATUSES,
    ComputedIs,
    Facts,
    Names,
    Node,
    TraitIs,
    evaluate,
    features,
    parse_condition,
    to_json,
    walk,
)
from ariane.domain.consent import ConsentDecision, latest_decisions
from ariane.domain.predicates import MISSING, OPERATORS, micros, parse_moment
from ariane.domain.profiles import ProfileState
from ariane.storage.database import Database
from ariane.storage.segment_sql import condition_sql, members_query, preview
from ariane.storage.tables import consents, events, profiles, segment_members, segments
from tests.integration.test_segments import TRIAL_CONDITION

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXAMPLES = 250

NOW = datetime(2026, 3, 10, 12, 0, 0, 500_000, tzinfo=UTC)
MICRO = timedelta(microseconds=1)
LENGTHS = {
    "PT3S": timedelta(seconds=3),
    "PT1.5S": timedelta(seconds=1.5),
    "P1D": timedelta(days=1),
    "P7D": timedelta(days=7),
}
AGES = [*LENGTHS, "PT0S"]
FIRST_SEEN = [NOW - timedelta(days=10), NOW - timedelta(days=1, microseconds=250), NOW - MICRO]
RANGES = [
    (NOW - timedelta(days=2), NOW - timedelta(days=1)),
    (NOW - timedelta(days=7), NOW + timedelta(seconds=1)),
]
EVENT_NAMES = ["Feature Used", "Order"]
SEGMENT_NAMES = ["subscribers", "vip"]
PURPOSES = ["email", "sms"]
COMPUTED_NAMES = ["c0", "c1", "c2", "c3", "c4"]


def _marks() -> list[datetime]:
    marks = [NOW, *(NOW - length for length in LENGTHS.values()), *FIRST_SEEN]
    marks += [seen + length for seen in FIRST_SEEN for length in LENGTHS.values()]
    marks += [bound for pair in RANGES for bound in pair]
    return sorted({mark + step * MICRO for mark in marks for step in (-1, 0, 1)})


# Instants on every boundary a condition may draw, and either side of it.
MARKS = _marks()

STRINGS = ["trial", "pro", "", "a", "ab", "b", "é", "z", "𝄞", "Map", "a b", 'say "hi"', "a\\b"]
NUMBERS: list[int | float] = [0, 1, -1, 2, 3, 2.5, 0.1, 0.2, 0.3, 0.30000000000000004, -0.0]
NUMBERS += [7.0, 19.99, 5.01, 25, 10**15, 2**53, -(2**53), 1e15, 2**60, 1e18]
# Decimals whose binary sums are not exact: sums and averages land between doubles.
AMOUNTS = [0.1, 0.2, 0.3, 19.99, 5.01, 1, 2.5, 0.7]
BAD_MOMENTS = [
    "2026-02-30",
    "2026-03-10T24:00:00Z",
    "2026-03-10T12:00:00+24:00",
    "2026-03-10T12:00:00+01:60",
    "٢٠٢٦-03-10",
    "2026-03-10\n",
    "2026-03-10T12:00:00.1234567Z",
    "2026-03-10T12Z",
    "0000-01-01",
    "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59.999999-00:01",
    "2026-03-10t12:00:00Z",
]
TRAIT_PATHS = ["plan", "score", "when", "tags", "flag", "address", "address.city"]
TRAIT_PATHS += ["address.inner.x", "address.0", "tags.0", "first name", "missing"]
PROPERTY_PATHS = ["feature", "amount", "sku", "when", "tags", "nested.x", "nested.0", "é t"]
PROPERTY_PATHS += ["gone"]


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def render(moment: datetime, style: int) -> str:
    """A timestamp as a trait or a property may hold it; styles 0 to 3 keep microseconds."""
    if style == 0:
        return iso_z(moment)
    if style == 1:
        return moment.astimezone(timezone(timedelta(hours=2))).isoformat()
    if style == 2:
        return moment.astimezone(timezone(-timedelta(hours=5, minutes=30))).isoformat()
    if style == 3:
        return moment.replace(tzinfo=None).isoformat(" ")
    if style == 4:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    if style == 5:
        return moment.strftime("%Y-%m-%dT%H:%MZ")
    return moment.date().isoformat()


def usable(value: Any) -> bool:
    """Whether a condition may hold the value as a literal."""
    if isinstance(value, str | bool):
        return True
    return isinstance(value, int | float) and abs(value) <= 2**53


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


# --- random values --------------------------------------------------------------------------


class Maker:
    """JSON values, instants and literals from a Random, with a few values Hypothesis drew."""

    def __init__(self, rnd: Random, strings: Sequence[str], numbers: Sequence[int | float]):
        self.rnd = rnd
        self.strings = [*STRINGS, *strings]
        self.numbers = [*NUMBERS, *numbers]

    def chance(self, probability: float) -> bool:
        return self.rnd.random() < probability

    def instant(self) -> datetime:
        if self.chance(0.75):
            return self.rnd.choice(MARKS)
        return NOW + self.rnd.randint(-40 * 86_400_000_000, 2 * 86_400_000_000) * MICRO

    def moment_text(self) -> str:
        if self.chance(0.2):
            return self.rnd.choice(BAD_MOMENTS)
        return render(self.instant(), self.rnd.randrange(7))

    def string(self) -> str:
        return self.rnd.choice(self.strings)

    def number(self) -> int | float:
        return self.rnd.choice(self.numbers)

    def scalar(self) -> Any:
        pick = self.rnd.randrange(8)
        if pick < 3:
            return self.string()
        if pick < 6:
            return self.number()
        return self.chance(0.5) if pick == 6 else self.moment_text()

    def value(self, depth: int = 0) -> Any:
        pick = self.rnd.random()
        if pick < 0.1:
            return None
        if pick < 0.22 and depth < 2:
            return [self.value(depth + 1) for _ in range(self.rnd.randint(0, 3))]
        if pick < 0.34 and depth < 2:
            keys = self.rnd.sample(["city", "x", "0", "inner"], self.rnd.randint(0, 3))
            return {key: self.value(depth + 1) for key in keys}
        return self.scalar()

    def shaped(self, usual: Callable[[], Any]) -> Any:
        """Mostly the usual kind of value for a key, sometimes any value."""
        return usual() if self.chance(0.75) else self.value()

    def literal(self, kind: str | None = None) -> Any:
        kind = kind or self.rnd.choice(["string", "number", "boolean"])
        if kind == "boolean":
            return self.chance(0.5)
        if kind == "string":
            return self.string()
        return self.rnd.choice([n for n in self.numbers if usable(n)])


def make_traits(m: Maker) -> dict[str, Any]:
    usual: dict[str, Callable[[], Any]] = {
        "plan": m.string,
        "score": m.number,
        "when": m.moment_text,
        "tags": lambda: [m.scalar() for _ in range(m.rnd.randint(0, 3))],
        "address": lambda: {
            "city": m.string(),
            "inner": {"x": m.scalar()},
            **({"0": m.scalar()} if m.chance(0.5) else {}),
        },
        "flag": lambda: m.chance(0.5),
        "first name": m.string,
    }
    return {key: m.shaped(make) for key, make in usual.items() if m.chance(0.7)}


def make_properties(m: Maker) -> dict[str, Any]:
    usual: dict[str, Callable[[], Any]] = {
        "feature": lambda: m.rnd.choice(["alerts", "map", "other"]),
        "amount": lambda: m.rnd.choice(AMOUNTS) if m.chance(0.6) else m.number(),
        # Few strings, so that most frequent values and first/last ties are contested.
        "sku": lambda: m.rnd.choice(["a", "b", "ab"]) if m.chance(0.7) else m.string(),
        "when": m.moment_text,
        "tags": lambda: [m.scalar() for _ in range(m.rnd.randint(0, 3))],
        "nested": lambda: m.value(1) if m.chance(0.3) else {"x": m.scalar(), "0": m.scalar()},
        "é t": m.scalar,
    }
    return {key: m.shaped(make) for key, make in usual.items() if m.chance(0.7)}


# --- the world ------------------------------------------------------------------------------


@dataclass
class Happening:
    profile_id: str
    source: str
    message_id: str
    type: str
    name: str | None
    at: datetime
    payload: dict[str, Any]
    # How the live side folds it: in which order, at what moment, into which of two
    # states merged at the end.
    rank: int = 0
    folded_at: datetime = NOW
    absorbed: bool = False

    @property
    def properties(self) -> Any:
        found = self.payload.get("properties")
        return found if isinstance(found, dict) else {}

    @property
    def behaviour(self) -> bool:
        return self.type == "track" and self.source != "ariane" and self.name is not None


@dataclass
class Decision:
    profile_id: str
    purpose: str
    status: str
    at: datetime
    expires_at: datetime | None


@dataclass
class Person:
    id: str
    traits: dict[str, Any]
    first_seen: datetime | None
    memberships: frozenset[str]
    merged: bool = False


@dataclass
class World:
    people: list[Person]
    happenings: list[Happening]
    decisions: list[Decision]
    computed: dict[str, Feature] = field(default_factory=dict)
    merged_at: datetime = NOW

    def person(self, profile_id: str) -> Person:
        return next(p for p in self.people if p.id == profile_id)


def make_happening(m: Maker, profile_id: str) -> Happening:
    payload: dict[str, Any] = {"type": "track"}
    shape = m.rnd.randrange(12)
    if shape < 10:
        payload["properties"] = make_properties(m)
    elif shape == 10:
        payload["properties"] = [make_properties(m)]
    return Happening(
        profile_id=profile_id,
        source=m.rnd.choice(["web"] * 5 + ["app"] * 4 + ["ariane"]),
        # Few ids: two sources may send one id, at one time.
        message_id=f"m{m.rnd.randrange(30)}",
        type=m.rnd.choice(["track"] * 9 + ["page"]),
        name=m.rnd.choice([*EVENT_NAMES * 4, "Other", None]),
        at=m.instant(),
        payload=payload,
    )


def make_world(m: Maker) -> World:
    rnd = m.rnd
    people: list[Person] = []
    found: list[Happening] = []
    decisions: list[Decision] = []
    for index in range(rnd.randint(1, 5)):
        pid = f"p{index}"
        people.append(
            Person(
                id=pid,
                traits=make_traits(m),
                first_seen=rnd.choice([*FIRST_SEEN, None]),
                memberships=frozenset(n for n in SEGMENT_NAMES if m.chance(0.5)),
                merged=index > 0 and m.chance(0.1),
            )
        )
        found += [make_happening(m, pid) for _ in range(rnd.randint(0, 12))]
        for _ in range(rnd.randint(0, 3)):
            decisions.append(
                Decision(
                    pid,
                    rnd.choice(PURPOSES),
                    rnd.choice(["granted", "denied", "withdrawn"]),
                    # Few moments: decisions made at once, expiring right now.
                    rnd.choice([NOW - timedelta(days=1), NOW - MICRO, NOW]),
                    rnd.choice([None, NOW - MICRO, NOW, NOW + MICRO]),
                )
            )
    # One message id per source, as the events table demands.
    unique: dict[tuple[str, str], Happening] = {}
    for item in found:
        unique.setdefault((item.message_id, item.source), item)
    kept = list(unique.values())
    order = list(range(len(kept)))
    rnd.shuffle(order)
    lags = sorted(rnd.choice([0, 1, 1_500_000, 3_000_000, 86_400_000_000]) for _ in kept)
    for item, rank in zip(kept, order, strict=True):
        item.rank = rank
        # Folded later as the rank grows, never after NOW.
        item.folded_at = NOW - lags[-1 - rank] * MICRO
        item.absorbed = m.chance(0.5)
    merged_at = NOW - rnd.choice([0, 1, 3_000_000]) * MICRO
    return World(people, kept, decisions, merged_at=merged_at)


# --- conditions -----------------------------------------------------------------------------


def harvest(value: Any, into: list[Any]) -> None:
    """The scalars inside a JSON value that a condition may hold as literals."""
    if isinstance(value, dict):
        for item in value.values():
            harvest(item, into)
    elif isinstance(value, list):
        for item in value:
            harvest(item, into)
    elif usable(value):
        into.append(value)


@dataclass(frozen=True)
class Vocabulary:
    """The scalars one value holds somewhere in the world: tests aimed at them often pass,
    and land on boundaries."""

    found: tuple[Any, ...] = ()

    @classmethod
    def of(cls, values: Sequence[Any]) -> Vocabulary:
        found: list[Any] = []
        for value in values:
            harvest(value, found)
        unique = {(type(v).__name__, repr(v)): v for v in found}
        return cls(tuple(unique[key] for key in sorted(unique)))


# Literals for the tests on each trait path, property path or computed trait.
Words = Mapping[str, Vocabulary]
ORDERING = ["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between"]
TEXT_ONLY = ["contains", "starts_with", "ends_with"]
AGE_OPS = ["older_than", "newer_than"]


def aimed_test(m: Maker, value: Any, words: Vocabulary) -> dict[str, Any]:
    """A test whose literal comes from `value`: equal to it, next to it, a part of it."""
    rnd = m.rnd
    same = [v for v in words.found if kind_of(v) == kind_of(value)]
    if isinstance(value, str) and m.chance(0.25):
        # A near miss: another case, or one more character in front.
        value = rnd.choice([value.swapcase(), m.string()[:1] + value])
    presence = ["exists", "not_exists"]
    if isinstance(value, bool):
        op = rnd.choice(["eq", "ne", "in", "not_in", *presence])
    elif isinstance(value, str):
        ages = AGE_OPS * 4 if parse_moment(value) is not None else []
        op = rnd.choice([*ORDERING, *TEXT_ONLY, *ages, *presence])
    else:
        op = rnd.choice([*ORDERING, *presence])
    if op in presence:
        return {"op": op}
    if op in AGE_OPS:
        return {"op": op, "value": rnd.choice(AGES)}
    if op in ("in", "not_in"):
        others = rnd.sample(words.found, min(len(words.found), rnd.randint(0, 2)))
        return {"op": op, "value": [value, *others]}
    if op == "between":
        return {"op": op, "value": sorted([value, rnd.choice(same)])}
    if op in ("gt", "gte", "lt", "lte"):
        return {"op": op, "value": rnd.choice([value, rnd.choice(same)])}
    if op in TEXT_ONLY:
        start = rnd.randint(0, len(value))
        end = rnd.randint(start, len(value))
        part = {"contains": value[start:end], "starts_with": value[:end]}
        return {"op": op, "value": part.get(op, value[start:])}
    return {"op": op, "value": value}


def random_test(m: Maker) -> dict[str, Any]:
    rnd = m.rnd
    op = rnd.choice([*OPERATORS, *AGE_OPS])
    if op in ("exists", "not_exists"):
        return {"op": op}
    if op in AGE_OPS:
        return {"op": op, "value": rnd.choice(AGES)}
    if op in ("in", "not_in"):
        return {"op": op, "value": [m.literal() for _ in range(rnd.randint(1, 3))]}
    if op == "between":
        kind = rnd.choice(["number", "string"])
        return {"op": op, "value": sorted([m.literal(kind), m.literal(kind)])}
    if op in ("gt", "gte", "lt", "lte"):
        return {"op": op, "value": m.literal(rnd.choice(["number", "string"]))}
    if op in TEXT_ONLY:
        return {"op": op, "value": m.literal("string")}
    return {"op": op, "value": m.literal()}


def make_test(m: Maker, words: Vocabulary) -> dict[str, Any]:
    if words.found and m.chance(0.75):
        return aimed_test(m, m.rnd.choice(words.found), words)
    return random_test(m)


def make_where(m: Maker, properties: Words) -> list[dict[str, Any]]:
    if m.chance(0.6):
        return []
    paths = [m.rnd.choice(PROPERTY_PATHS) for _ in range(m.rnd.randint(1, 2))]
    return [{"property": path, **make_test(m, properties[path])} for path in paths]


def make_window(m: Maker) -> dict[str, Any]:
    shape = m.rnd.randrange(4)
    if shape == 0:
        return {}
    if shape == 3:
        start, end = m.rnd.choice(RANGES)
        return {"between": [iso_z(start), iso_z(end)]}
    length = m.rnd.choice(list(LENGTHS))
    return {"within": length, "from": "first_seen"} if shape == 2 else {"within": length}


def make_definition(m: Maker, properties: Words, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": kind, "event": m.rnd.choice(EVENT_NAMES), **make_window(m)}
    where = make_where(m, properties)
    if where:
        doc["where"] = where
    if kind != "count":
        usual = "amount" if kind in comp.NUMERIC_KINDS else m.rnd.choice(["sku", "when"])
        doc["property"] = usual if m.chance(0.75) else m.rnd.choice(PROPERTY_PATHS)
    return doc


def make_event_condition(m: Maker, properties: Words) -> dict[str, Any]:
    doc: dict[str, Any] = {"event": m.rnd.choice(EVENT_NAMES), **make_window(m)}
    where = make_where(m, properties)
    if where:
        doc["where"] = where
    if m.chance(0.5):
        ops = m.rnd.sample(BOUNDS, m.rnd.randint(1, 2))
        doc["count"] = {op: m.rnd.randint(0, 4) for op in ops}
    return doc


def make_behaviour(m: Maker) -> dict[str, Any]:
    rnd = m.rnd
    size = rnd.randint(1, 2)
    used = [
        {"event": rnd.choice(EVENT_NAMES), "within": rnd.choice(list(LENGTHS))} for _ in range(size)
    ]
    # Few coordinates, so that two centroids are often as near as each other.
    coordinates = [0.0, 0.5, 1.0, 2.0, -1.0, 0.1]
    centroids = {
        f"g{j}": [rnd.choice(coordinates) for _ in range(size)] for j in range(rnd.randint(2, 3))
    }
    model = {
        "features": used,
        "center": [rnd.choice([0.0, 0.5, 1.0, 0.3]) for _ in range(size)],
        "scale": [rnd.choice([1.0, 0.5, 2.0, 3.0, 0.7]) for _ in range(size)],
        "centroids": centroids,
    }
    return {"behaviour": model, "group": rnd.choice(sorted(centroids))}


@dataclass(frozen=True)
class Vocabularies:
    traits: Words
    computed: Words
    properties: Words


def make_condition(m: Maker, words: Vocabularies, depth: int = 0) -> dict[str, Any]:
    rnd = m.rnd
    if depth < 3 and m.chance(0.4 if depth == 0 else 0.25):
        shape = rnd.choice(["all", "any", "not"])
        if shape == "not":
            return {"not": make_condition(m, words, depth + 1)}
        return {shape: [make_condition(m, words, depth + 1) for _ in range(rnd.randint(1, 3))]}
    leaf = rnd.choice(["trait"] * 2 + ["computed"] * 3 + ["event"] * 2 + ["other"])
    if leaf == "trait":
        path = rnd.choice(TRAIT_PATHS)
        return {"trait": path, **make_test(m, words.traits[path])}
    if leaf == "computed":
        name = rnd.choice(COMPUTED_NAMES)
        return {"computed": name, **make_test(m, words.computed[name])}
    if leaf == "event":
        return make_event_condition(m, words.properties)
    other = rnd.randrange(3)
    if other == 0:
        return {"segment": rnd.choice(SEGMENT_NAMES)}
    if other == 1:
        return {"consent": rnd.choice(PURPOSES), "status": rnd.choice(CONSENT_STATUSES)}
    return make_behaviour(m)


def loose_lookup(document: Any, parts: Sequence[str]) -> Any:
    """`lookup`, except that a key of digits also indexes an array, as `#>` would on
    PostgreSQL: literals found there catch an engine that reads paths so."""
    value = document
    for part in parts:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return MISSING
    return value


def words_at(documents: Sequence[Mapping[str, Any]], paths: Sequence[str]) -> Words:
    """For each path, the literals that the documents hold there."""
    return {
        path: Vocabulary.of([loose_lookup(doc, path.split(".")) for doc in documents])
        for path in paths
    }


def edges(window: comp.Window, first_seen: datetime | None) -> list[tuple[datetime, datetime]]:
    """The boundaries of a window, each with a moment inside the window beyond it."""
    if window.kind == "recent":
        assert window.length is not None
        return [(NOW - window.length, NOW)]
    if window.kind == "first" and first_seen is not None:
        assert window.length is not None
        return [(first_seen + window.length, first_seen)]
    if window.kind == "range":
        assert window.start is not None and window.end is not None
        return [(window.start, window.end), (window.end, window.start)]
    return []


def on_the_edge(m: Maker, world: World, nodes: Sequence[Node]) -> None:
    """Move half the events, and the timestamps that traits and properties hold, onto
    the boundaries the conditions' windows and ages draw, or a microsecond either side."""

    def near(moment: datetime) -> datetime:
        return moment + m.rnd.choice([-1, 0, 1]) * MICRO

    def text(moment: datetime) -> str:
        return render(near(moment), m.rnd.randrange(4))

    used = [*world.computed.values(), *(f for node in nodes for f in features(node))]
    by_event: dict[str, list[Feature]] = {}
    for feature in used:
        by_event.setdefault(feature.event, []).append(feature)
    for part in (part for node in nodes for part in walk(node)):
        if isinstance(part, TraitIs) and part.test.age is not None and len(part.path) == 1:
            for person in world.people:
                if m.chance(0.5):
                    person.traits[part.path[0]] = text(NOW - part.test.age)
        if isinstance(part, ComputedIs) and part.test.age is not None:
            # The texts that a first, last or most frequent value is read from.
            feature = world.computed[part.name]
            path = feature.property_path or ()
            for happening in world.happenings:
                props = happening.payload.get("properties")
                if happening.name != feature.event or not isinstance(props, dict):
                    continue
                if len(path) == 1 and m.chance(0.5):
                    props[path[0]] = text(NOW - part.test.age)
    for happening in world.happenings:
        person = world.person(happening.profile_id)
        chosen = by_event.get(happening.name or "")
        if not chosen or m.chance(0.5):
            continue
        feature = m.rnd.choice(chosen)
        found = edges(feature.window, person.first_seen)
        if found:
            edge, inside = m.rnd.choice(found)
            # On the edge, or anywhere between it and the inside moment.
            happening.at = near(edge) if m.chance(0.6) else edge + m.rnd.random() * (inside - edge)
        props = happening.payload.get("properties")
        for path, test in feature.where:
            if test.age is not None and len(path) == 1 and isinstance(props, dict):
                props[path[0]] = text(happening.at - test.age)


@dataclass
class Scenario:
    world: World
    definitions: list[dict[str, Any]]
    conditions: list[dict[str, Any]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A world, then computed traits and conditions whose literals are mostly values that
    the world's traits, properties and computed traits hold."""
    m = Maker(
        draw(st.randoms(use_true_random=True)),
        draw(
            st.lists(
                st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=4),
                max_size=3,
            )
        ),
        draw(
            st.lists(
                st.one_of(
                    st.integers(-(2**53), 2**53),
                    st.floats(-1e18, 1e18, allow_nan=False, allow_subnormal=False),
                ),
                max_size=3,
            )
        ),
    )
    world = make_world(m)
    properties = words_at([h.properties for h in world.happenings], PROPERTY_PATHS)
    # Half the kinds in each example, in turn.
    kinds = m.rnd.sample(KINDS, len(COMPUTED_NAMES))
    definitions = [make_definition(m, properties, kind) for kind in kinds]
    world.computed = {
        name: parse_feature(doc, name)
        for name, doc in zip(COMPUTED_NAMES, definitions, strict=True)
    }
    used = {feature.key: feature for feature in world.computed.values()}
    values: dict[str, list[Any]] = {name: [] for name in COMPUTED_NAMES}
    for person in world.people:
        states = folded(world, person, used)
        for name, feature in world.computed.items():
            found = comp.value(feature, states.get(feature.key), NOW, person.first_seen)
            if found is not MISSING:
                values[name].append(found)
    words = Vocabularies(
        words_at([p.traits for p in world.people], TRAIT_PATHS),
        {name: Vocabulary.of(found) for name, found in values.items()},
        properties,
    )
    raw = [make_condition(m, words) for _ in range(m.rnd.randint(2, 5))]
    # And tests of every computed trait, each of another kind, and of every consent.
    raw += [
        {"computed": name, **make_test(m, words.computed[name])}
        for name in COMPUTED_NAMES
        for _ in range(3)
    ]
    raw += [{"consent": p, "status": m.rnd.choice(CONSENT_STATUSES)} for p in PURPOSES]
    names = Names(segments=SEGMENT_NAMES, computed=COMPUTED_NAMES)
    on_the_edge(m, world, [parse_condition(doc, names) for doc in raw])
    return Scenario(world, definitions, raw)


# --- both engines -----------------------------------------------------------------------------


def cells(traits: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        key: {"value": value, "at": iso_z(NOW), "source": "web"} for key, value in traits.items()
    }


def store(db: Database, world: World) -> None:
    """The world in the tables, written straight (no ingestion), after the last one."""

    def work(conn: Connection) -> None:
        for table in (segment_members, segments, consents, events, profiles):
            conn.execute(table.delete())
        conn.execute(
            segments.insert(),
            [
                {
                    "id": f"s{i}",
                    "name": name,
                    "description": "",
                    "condition": {},
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for i, name in enumerate(SEGMENT_NAMES)
            ],
        )
        conn.execute(
            profiles.insert(),
            [
                {
                    "id": person.id,
                    "merged_into": "p0" if person.merged else None,
                    "traits": cells(person.traits),
                    "computed": {},
                    "first_seen": person.first_seen,
                    "last_seen": person.first_seen,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for person in world.people
            ],
        )
        members = [
            {"segment_id": f"s{SEGMENT_NAMES.index(name)}", "profile_id": p.id, "entered_at": NOW}
            for p in world.people
            for name in sorted(p.memberships)
        ]
        if members:
            conn.execute(segment_members.insert(), members)
        if world.happenings:
            conn.execute(
                events.insert(),
                [
                    {
                        "source_id": h.source,
                        "message_id": h.message_id,
                        "profile_id": h.profile_id,
                        "type": h.type,
                        "event": h.name,
                        "timestamp": h.at,
                        "received_at": NOW,
                        "payload": h.payload,
                    }
                    for h in world.happenings
                ],
            )
        # One at a time: ids in the order of the decisions break ties of `at`.
        for d in world.decisions:
            conn.execute(
                consents.insert().values(
                    profile_id=d.profile_id,
                    purpose=d.purpose,
                    status=d.status,
                    at=d.at,
                    source="test",
                    expires_at=d.expires_at,
                )
            )

    db.write(work)


def folded(world: World, person: Person, used: Mapping[str, Feature]) -> dict[str, Any]:
    """The person's feature states, folded event by event into two profiles then merged,
    as ingestion and identity merges build them."""
    by_event: dict[str, list[tuple[str, Feature]]] = {}
    for key, feature in used.items():
        by_event.setdefault(feature.event, []).append((key, feature))
    halves: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    mine = [h for h in world.happenings if h.profile_id == person.id and h.behaviour]
    for h in sorted(mine, key=lambda h: h.rank):
        assert h.name is not None
        comp.fold_event(
            halves[h.absorbed],
            by_event.get(h.name, []),
            h.at,
            h.message_id,
            h.properties,
            h.folded_at,
            person.first_seen,
        )
    states, absorbed = halves
    comp.merge_states(dict(used), states, absorbed, world.merged_at, person.first_seen)
    return states


def live_members(world: World, nodes: Sequence[Node]) -> list[set[str]]:
    """What the live evaluator says, from feature states folded event by event."""
    used: dict[str, Feature] = {f.key: f for f in world.computed.values()}
    for node in nodes:
        used.update((f.key, f) for f in features(node))
    answers: list[set[str]] = [set() for _ in nodes]
    for person in world.people:
        if person.merged:
            continue
        history = [
            ConsentDecision(d.purpose, d.status, d.at, "test", d.expires_at)
            for d in world.decisions
            if d.profile_id == person.id
        ]
        facts = Facts(
            profile=ProfileState(
                person.id,
                traits=cells(person.traits),
                computed={"features": folded(world, person, used)},
                first_seen=person.first_seen,
            ),
            now=NOW,
            computed=world.computed,
            segments={name: name in person.memberships for name in SEGMENT_NAMES},
            consents=latest_decisions(history),
        )
        for answer, node in zip(answers, nodes, strict=True):
            if evaluate(node, facts):
                answer.add(person.id)
    return answers


def sql_members(
    db: Database, nodes: Sequence[Node], computed: Mapping[str, Feature]
) -> list[set[str]]:
    """What the SQL says, through `members_query`."""
    with db.read() as conn:
        return [
            set(conn.execute(members_query(node, db.dialect, now=NOW, computed=computed)).scalars())
            for node in nodes
        ]


def sql_answers(
    db: Database, nodes: Sequence[Node], computed: Mapping[str, Feature]
) -> list[set[str]]:
    """What the SQL says, every node in one query, each answer checked to be TRUE or FALSE."""
    columns = [
        condition_sql(node, db.dialect, now=NOW, computed=computed).label(f"c{i}")
        for i, node in enumerate(nodes)
    ]
    query = sa.select(profiles.c.id, *columns).where(profiles.c.merged_into.is_(None))
    answers: list[set[str]] = [set() for _ in nodes]
    with db.read() as conn:
        for profile_id, *values in conn.execute(query):
            for answer, value in zip(answers, values, strict=True):
                assert value is not None, "a condition compiled to NULL"
                if value:
                    answer.add(profile_id)
    return answers


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def _explain(world: World, condition: Any, differ: set[str]) -> str:
    lines = [f"condition: {condition}", f"computed: {world.computed}"]
    for pid in sorted(differ):
        person = world.person(pid)
        lines.append(f"{pid}: traits={person.traits} first_seen={person.first_seen}")
        lines += [f"  {h}" for h in world.happenings if h.profile_id == pid]
        lines += [f"  {d}" for d in world.decisions if d.profile_id == pid]
    return "\n".join(lines)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=IN_CI,
    # No shrinking: the world comes from one seed, which does not shrink into a smaller
    # world. The message names the part of the condition that differs and shows the
    # profiles it differs on.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_sql_agrees_with_the_live_evaluator(db: Database, scenario: Scenario) -> None:
    world = scenario.world
    names = Names(segments=SEGMENT_NAMES, computed=COMPUTED_NAMES)
    # Every part of every condition, so that a wrong leaf cannot hide inside an `any`.
    nodes = [part for doc in scenario.conditions for part in walk(parse_condition(doc, names))]
    store(db, world)
    live = live_members(world, nodes)
    found = sql_answers(db, nodes, world.computed)
    for node, expected, got in zip(nodes, live, found, strict=True):
        assert got == expected, _explain(world, to_json(node), got ^ expected)
    # The public query agrees with the expression.
    assert sql_members(db, nodes[:1], world.computed) == found[:1]


# --- the conditions -------------------------------------------------------------------

TRIAL = TRIAL_CONDITION
ORDERS_30D = {"kind": "count", "event": "Order Completed", "within": "P30D"}


class Scene:
    """A handful of profiles written straight to the tables, for the examples."""

    def __init__(self) -> None:
        self.world = World([], [], [])
        self.count = 0

    def person(
        self, pid: str, traits: dict[str, Any] | None = None, *, member_of: Sequence[str] = ()
    ) -> None:
        self.world.people.append(
            Person(pid, traits or {}, NOW - timedelta(days=20), frozenset(member_of))
        )

    def event(self, pid: str, name: str, at: datetime, **props: Any) -> None:
        self.count += 1
        payload = {"type": "track", "properties": props}
        self.world.happenings.append(
            Happening(pid, "web", f"e{self.count}", "track", name, at, payload, rank=self.count)
        )

    def members(self, db: Database, condition: dict[str, Any]) -> set[str]:
        """The SQL's answer, after checking that the live evaluator gives the same."""
        self.world.computed = {"orders_30d": parse_feature(ORDERS_30D, "orders_30d")}
        node = parse_condition(condition, Names(segments=SEGMENT_NAMES, computed=["orders_30d"]))
        store(db, self.world)
        (got,) = sql_members(db, [node], self.world.computed)
        (expected,) = live_members(self.world, [node])
        assert got == expected
        with db.read() as conn:
            for size in (0, 2):
                found = preview(conn, node, now=NOW, computed=self.world.computed, sample=size)
                assert found == (len(got), sorted(got)[:size])
        return got


def test_the_trial_segment(db: Database) -> None:
    scene = Scene()
    day = timedelta(days=1)
    for pid in ("eager", "two_features", "subscriber", "old_trial", "boundary", "too_new", "pro"):
        scene.person(
            pid,
            {"plan": "pro" if pid == "pro" else "trial"},
            member_of=["subscribers"] if pid == "subscriber" else [],
        )
        features_used = ["alerts", "map", "alerts"]
        if pid == "two_features":
            features_used[2] = "settings"
        for n, feature in enumerate(features_used):
            scene.event(pid, "Feature Used", NOW - n * day, feature=feature)
    for pid in ("eager", "two_features", "subscriber", "pro"):
        scene.event(pid, "Order Completed", NOW - 3 * day)
        scene.event(pid, "Order Completed", NOW - 29 * day)
    started = {"old_trial": 26 * day, "boundary": 25 * day, "too_new": 25 * day - MICRO}
    for pid, age in started.items():
        scene.world.person(pid).traits["trial_started_at"] = iso_z(NOW - age)
    assert scene.members(db, TRIAL) == {"eager", "old_trial", "boundary"}


def test_a_page_viewed_in_the_last_three_seconds(db: Database) -> None:
    scene = Scene()
    for pid, ago in (("on_the_edge", 3_000_000), ("just_inside", 2_999_999), ("now", 0)):
        scene.person(pid)
        scene.event(pid, "Page Viewed", NOW - ago * MICRO)
    scene.person("never")
    condition = {"event": "Page Viewed", "count": {"gte": 1}, "within": "PT3S"}
    assert scene.members(db, condition) == {"just_inside", "now"}


def test_no_app_opened_in_three_days(db: Database) -> None:
    scene = Scene()
    three_days = timedelta(days=3)
    for pid, at in (("on_the_edge", NOW - three_days), ("just_inside", NOW - three_days + MICRO)):
        scene.person(pid)
        scene.event(pid, "App Opened", at)
    scene.person("never")
    condition = {"event": "App Opened", "count": {"eq": 0}, "within": "P3D"}
    assert scene.members(db, condition) == {"on_the_edge", "never"}


def test_moments_read_in_sql_as_in_python(db: Database) -> None:
    """ariane_moment (a PostgreSQL function, a Python one on SQLite) reads what
    parse_moment reads, to the microsecond."""
    texts = [*BAD_MOMENTS, *(render(m, s) for m in MARKS[:8] for s in range(7))]
    texts += ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2024-02-29T23:59:59.9-23:59"]
    texts += ["2023-02-29", "2000-02-29", "1900-02-29", "2026-03-10T12:00:00.5+00:00"]
    texts += [" 2026-03-10", "2026-03-10T12:00:00.000001+23:59", "2026-03-10 12:00"]
    with db.read() as conn:
        for text in texts:
            found = conn.execute(sa.select(db.dialect.moment_micros(sa.literal(text)))).scalar()
            moment = parse_moment(text)
            assert found == (None if moment is None else micros(moment)), text


def test_the_expression_is_never_null(db: Database) -> None:
    """On a profile with nothing at all, each leaf and its negation split the profiles."""
    scene = Scene()
    scene.person("empty")
    scene.world.people[0].first_seen = None
    leaves: list[dict[str, Any]] = [
        {"trait": "plan", "op": "eq", "value": "trial"},
        {"trait": "plan", "op": "older_than", "value": "P1D"},
        {"computed": "orders_30d", "op": "gt", "value": 0},
        {"consent": "email", "status": "granted"},
        {"segment": "vip"},
        {"event": "Order", "count": {"eq": 0}},
    ]
    for leaf in leaves:
        assert scene.members(db, leaf) | scene.members(db, {"not": leaf}) == {"empty"}
