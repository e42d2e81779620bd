"""The condition language of segments: a JSON (or YAML) tree, checked, then evaluated.

    {"all": [...]}  {"any": [...]}  {"not": {...}}
    {"trait": "plan", "op": "eq", "value": "trial"}
    {"computed": "orders_30d", "op": "gte", "value": 2}
    {"event": "Feature Used", "where": [{"property": "feature", "op": "in", "value": [...]}],
     "count": {"gte": 3}, "within": "P7D"}          # or "within" + "from": "first_seen",
                                                   # or "between": [start, end], or none
    {"segment": "subscribers"}
    {"consent": "marketing_email", "status": "granted"}
    {"behaviour": {...model...}, "group": "explorers"}   # nearest centroid, see discovery

The evaluator here is the meaning; `storage/segment_sql.py` compiles the same tree to SQL
and a property-based test holds the two to the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ariane.domain import computed as comp
from ariane.domain.computed import Feature, Window
from ariane.domain.consent import ConsentDecision
from ariane.domain.predicates import (
    MISSING,
    InvalidDefinition,
    Test,
    compile_test,
    is_number,
    lookup,
    micros,
    parse_path,
    parse_test,
)
from ariane.domain.profiles import ProfileState

BOUNDS = ("eq", "ne", "gt", "gte", "lt", "lte")
CONSENT_STATUSES = ("granted", "denied", "withdrawn", "expired", "unknown")


@dataclass(frozen=True, slots=True)
class AllOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class TraitIs:
    path: tuple[str, ...]
    test: Test


@dataclass(frozen=True, slots=True)
class ComputedIs:
    name: str
    test: Test


@dataclass(frozen=True, slots=True)
class EventCount:
    feature: Feature
    bounds: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class InSegment:
    name: str


@dataclass(frozen=True, slots=True)
class ConsentIs:
    purpose: str
    status: str


@dataclass(frozen=True, slots=True)
class Behaviour:
    features: tuple[Feature, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    centroids: tuple[tuple[str, tuple[float, ...]], ...]
    group: str

    def nearest(self, counts: Sequence[float]) -> str:
        point = [(x - c) / s for x, c, s in zip(counts, self.center, self.scale, strict=True)]
        best, best_distance = "", float("inf")
        for name, centroid in self.centroids:
            distance = 0.0
            for p, q in zip(point, centroid, strict=True):
                # Multiplied, not squared with **: the SQL engine multiplies, and the two
                # differ in the last bit now and then, enough to tip a near tie.
                gap = p - q
                distance += gap * gap
            # Strictly closer: on a tie the first centroid keeps it.
            if distance < best_distance:
                best, best_distance = name, distance
        return best


Node = AllOf | AnyOf | Not | TraitIs | ComputedIs | EventCount | InSegment | ConsentIs | Behaviour


# --- parsing -----------------------------------------------------------------------------

_KINDS = ("all", "any", "not", "trait", "computed", "event", "segment", "consent", "behaviour")
_ALLOWED = {
    "all": {"all"},
    "any": {"any"},
    "not": {"not"},
    "trait": {"trait", "op", "value"},
    "computed": {"computed", "op", "value"},
    "event": {"event", "where", "count", "within", "from", "between"},
    "segment": {"segment"},
    "consent": {"consent", "status"},
    "behaviour": {"behaviour", "group"},
}


@dataclass(frozen=True, slots=True)
class Names:
    """What a condition may refer to: the segments and computed traits that exist."""

    segments: Collection[str] = ()
    computed: Collection[str] = ()


# Deeper than any condition a person writes, and shallow enough to compile
# (`compile_condition`) and to render as SQL.
MAX_DEPTH = 32


def parse_condition(node: Any, names: Names, path: str = "condition", depth: int = 1) -> Node:
    if depth > MAX_DEPTH:
        raise InvalidDefinition(
            f"conditions nest at most {MAX_DEPTH} levels deep; flatten this one, or name a"
            " part of it as a segment of its own",
            field=path,
        )
    if not isinstance(node, dict):
        raise InvalidDefinition(
            'a condition is an object such as {"trait": "plan", "op": "eq", ...}',
            field=path,
        )
    kinds = [k for k in _KINDS if k in node]
    if len(kinds) != 1:
        raise InvalidDefinition(
            f"a condition has exactly one of {', '.join(_KINDS)}"
            + (f"; found {', '.join(kinds)}" if kinds else ""),
            field=path,
        )
    kind = kinds[0]
    unknown = sorted(set(node) - _ALLOWED[kind])
    if unknown:
        raise InvalidDefinition(
            f"unknown key {unknown[0]!r} in a {kind} condition", field=f"{path}.{unknown[0]}"
        )
    if kind in ("all", "any"):
        items = node[kind]
        if not isinstance(items, list) or not items:
            raise InvalidDefinition(f"{kind} needs a non-empty list", field=f"{path}.{kind}")
        children = tuple(
            parse_condition(child, names, f"{path}.{kind}[{i}]", depth + 1)
            for i, child in enumerate(items)
        )
        return AllOf(children) if kind == "all" else AnyOf(children)
    if kind == "not":
        return Not(parse_condition(node["not"], names, f"{path}.not", depth + 1))
    if kind == "trait":
        return TraitIs(parse_path(node["trait"], f"{path}.trait"), parse_test(node, path))
    if kind == "computed":
        name = node["computed"]
        if not isinstance(name, str) or name not in names.computed:
            raise InvalidDefinition(
                f"unknown computed trait {name!r}; define it first", field=f"{path}.computed"
            )
        return ComputedIs(name, parse_test(node, path))
    if kind == "event":
        return _parse_event(node, path)
    if kind == "segment":
        name = node["segment"]
        if not isinstance(name, str) or name not in names.segments:
            raise InvalidDefinition(
                f"unknown segment {name!r}; create it first", field=f"{path}.segment"
            )
        return InSegment(name)
    if kind == "consent":
        return _parse_consent(node, path)
    return _parse_behaviour(node, path)


def _parse_event(node: Mapping[str, Any], path: str) -> EventCount:
    event, where = comp.parse_filter(node, path)
    window = comp.parse_window(node, path)
    count = node.get("count", {"gte": 1})
    where_count = f"{path}.count"
    if not isinstance(count, dict) or not count:
        raise InvalidDefinition('count needs bounds such as {"gte": 3}', field=where_count)
    bounds = []
    for op, limit in sorted(count.items()):
        if op not in BOUNDS:
            raise InvalidDefinition(
                f"unknown bound {op!r}; use {', '.join(BOUNDS)}", field=f"{where_count}.{op}"
            )
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise InvalidDefinition(
                "a count bound is a whole number, 0 or more", field=f"{where_count}.{op}"
            )
        bounds.append((op, limit))
    return EventCount(Feature("count", event, where, None, window), tuple(bounds))


def _parse_consent(node: Mapping[str, Any], path: str) -> ConsentIs:
    purpose = node["consent"]
    if not isinstance(purpose, str) or not purpose.strip():
        raise InvalidDefinition("needs a purpose such as marketing_email", field=f"{path}.consent")
    status = node.get("status", "granted")
    if status not in CONSENT_STATUSES:
        raise InvalidDefinition(
            f"status is one of {', '.join(CONSENT_STATUSES)}", field=f"{path}.status"
        )
    return ConsentIs(purpose.strip(), status)


_MODEL_LIMIT = 1e15


def _numbers(value: Any, size: int | None, where: str) -> tuple[float, ...]:
    # Finite and bounded: PostgreSQL raises on a float overflow where Python gives inf.
    if (
        not isinstance(value, list)
        or not value
        or not all(is_number(v) and math.isfinite(v) and abs(v) <= _MODEL_LIMIT for v in value)
        or (size is not None and len(value) != size)
    ):
        wanted = f"{size} numbers" if size is not None else "a list of numbers"
        wanted += f" of at most {_MODEL_LIMIT:g} in size"
        raise InvalidDefinition(f"needs {wanted}", field=where)
    return tuple(float(v) for v in value)


def _parse_behaviour(node: Mapping[str, Any], path: str) -> Behaviour:
    model = node["behaviour"]
    where = f"{path}.behaviour"
    if not isinstance(model, dict):
        raise InvalidDefinition(
            "needs the model saved by `ariane segments discover`: features, center, scale,"
            " centroids",
            field=where,
        )
    raw_features = model.get("features")
    if not isinstance(raw_features, list) or not raw_features:
        raise InvalidDefinition("needs a list of features", field=f"{where}.features")
    features = []
    for index, item in enumerate(raw_features):
        item_path = f"{where}.features[{index}]"
        if not isinstance(item, dict) or set(item) != {"event", "within"}:
            raise InvalidDefinition("a feature is {event, within}", field=item_path)
        event, _ = comp.parse_filter(item, item_path)
        length = comp.parse_window(item, item_path).length
        features.append(Feature("count", event, (), None, Window("first", length)))
    size = len(features)
    center = _numbers(model.get("center"), size, f"{where}.center")
    scale = _numbers(model.get("scale"), size, f"{where}.scale")
    if any(s < 1e-9 for s in scale):
        raise InvalidDefinition("scales must be 1e-9 or more", field=f"{where}.scale")
    centroids = model.get("centroids")
    if not isinstance(centroids, dict) or not centroids:
        raise InvalidDefinition("needs {group: [numbers]}", field=f"{where}.centroids")
    parsed = tuple(
        (str(name), _numbers(vector, size, f"{where}.centroids.{name}"))
        for name, vector in centroids.items()
    )
    group = node.get("group")
    if not isinstance(group, str) or group not in centroids:
        raise InvalidDefinition(
            f"group {group!r} is not one of the model's: {', '.join(map(str, centroids))}",
            field=f"{path}.group",
        )
    return Behaviour(tuple(features), center, scale, parsed, str(group))


def to_json(node: Node) -> dict[str, Any]:
    """The canonical form of a parsed condition."""
    if isinstance(node, AllOf):
        return {"all": [to_json(c) for c in node.children]}
    if isinstance(node, AnyOf):
        return {"any": [to_json(c) for c in node.children]}
    if isinstance(node, Not):
        return {"not": to_json(node.child)}
    if isinstance(node, TraitIs):
        return {"trait": ".".join(node.path), **node.test.to_json()}
    if isinstance(node, ComputedIs):
        return {"computed": node.name, **node.test.to_json()}
    if isinstance(node, EventCount):
        doc = node.feature.to_json()
        del doc["kind"]
        return {**doc, "count": dict(node.bounds)}
    if isinstance(node, InSegment):
        return {"segment": node.name}
    if isinstance(node, ConsentIs):
        return {"consent": node.purpose, "status": node.status}
    return {
        "behaviour": {
            "features": [
                {"event": f.event, "within": f.window.to_json()["within"]} for f in node.features
            ],
            "center": list(node.center),
            "scale": list(node.scale),
            "centroids": {name: list(vector) for name, vector in node.centroids},
        },
        "group": node.group,
    }


# --- what a condition depends on -----------------------------------------------------------


def walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, AllOf | AnyOf):
        for child in node.children:
            yield from walk(child)
    elif isinstance(node, Not):
        yield from walk(node.child)


def features(node: Node) -> Iterator[Feature]:
    """The event features the condition reads directly (computed traits aside)."""
    for item in walk(node):
        if isinstance(item, EventCount):
            yield item.feature
        elif isinstance(item, Behaviour):
            yield from item.features


def segment_references(node: Node) -> set[str]:
    return {item.name for item in walk(node) if isinstance(item, InSegment)}


def computed_references(node: Node) -> set[str]:
    return {item.name for item in walk(node) if isinstance(item, ComputedIs)}


# More tests than a person writes (a long list of values is one `in` test), and few enough
# for one SQL statement: each test is a few bound parameters, and PostgreSQL takes 65,535 at
# most in a statement. Checked where a condition is given (`check_size`), not where one
# stored is read: a stored one stays in force.
MAX_TESTS = 1_000


def size(node: Node) -> int:
    """How many tests the condition makes: one per trait, computed trait, event, segment
    and consent condition, one per property test of an event's `where`, and for a
    behaviour model one per feature and group, and one more per feature."""
    found = 0
    for item in walk(node):
        if isinstance(item, EventCount):
            found += 1 + len(item.feature.where)
        elif isinstance(item, Behaviour):
            found += len(item.features) * (len(item.centroids) + 1)
        elif not isinstance(item, AllOf | AnyOf | Not):
            found += 1
    return found


def check_size(node: Node, path: str = "condition") -> Node:
    """The condition, if it makes at most `MAX_TESTS` tests."""
    tests = size(node)
    if tests > MAX_TESTS:
        raise InvalidDefinition(
            f"a condition makes at most {MAX_TESTS:,} tests, and this one {tests:,}: test a"
            " value against a list with one `in` (of any length), or split the condition"
            " into segments of their own",
            field=path,
        )
    return node


def find_cycle(graph: Mapping[str, Collection[str]]) -> list[str] | None:
    """A cycle of segments referring to each other, as the names along it, if any."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        trail.append(name)
        for child in sorted(graph.get(name, ())):
            if state.get(child) == 1:
                return [*trail[trail.index(child) :], child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        trail.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def evaluation_order(graph: Mapping[str, Collection[str]]) -> list[str]:
    """Segment names, each after the segments it refers to."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for child in sorted(graph.get(name, ())):
            visit(child)
        order.append(name)

    for name in sorted(graph):
        visit(name)
    return order


# --- evaluation -----------------------------------------------------------------------------


@dataclass(slots=True)
class Facts:
    """What the evaluator may know of one person at one moment."""

    profile: ProfileState
    now: datetime
    computed: Mapping[str, Feature] = field(default_factory=dict)
    segments: dict[str, bool] = field(default_factory=dict)
    consents: Mapping[str, ConsentDecision] = field(default_factory=dict)
    # Segments share features: each value is worked out once per person and moment.
    values: dict[str, Any] = field(default_factory=dict)
    # `now` and first seen in microseconds, and the feature states, looked up once.
    now_us: int = field(init=False)
    first_us: int | None = field(init=False)
    states: Mapping[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.now_us = micros(self.now)
        first_seen = self.profile.first_seen
        self.first_us = None if first_seen is None else micros(first_seen)
        self.states = self.profile.computed.get("features", {})

    def value_of(self, key: str, feature: Feature) -> Any:
        values = self.values
        if key in values:
            return values[key]
        value = feature.read(self.states.get(key), self.now_us, self.first_us)
        values[key] = value
        return value

    def trait(self, path: Sequence[str]) -> Any:
        cell = self.profile.traits.get(path[0])
        if cell is None:
            return MISSING
        if len(path) == 1:
            return cell["value"]
        return lookup(cell["value"], path[1:])

    def consent(self, purpose: str) -> str:
        decision = self.consents.get(purpose)
        return "unknown" if decision is None else decision.status_at(self.now)


Predicate = Callable[[Facts], bool]

# A feature value not worked out yet (MISSING is a value: no events).
_UNKNOWN = object()


def evaluate(node: Node, facts: Facts) -> bool:
    """Whether the person meets the condition at `facts.now`."""
    return compile_condition(node, facts.computed)(facts)


def compile_condition(node: Node, computed: Mapping[str, Feature]) -> Predicate:
    """The condition as one Python function of the facts, every key and test worked out
    once: this is what runs for each person touched by each batch.

    The function is generated source, one expression of `and`, `or` and `not` over the
    tests, rather than a closure per node: a call per node cost more than the tests do.
    Only names the generator makes go into the source; every value of the definition
    (names, keys, literals) reaches the function as a variable.
    """
    source = _Source(computed)
    body = source.expression(node)
    prologue = "".join(f"    {line}\n" for line in source.prologue())
    text = f"def predicate(facts):\n{prologue}    return bool({body})\n"
    namespace = dict(source.values)
    exec(compile(text, "<segment condition>", "exec"), namespace)
    predicate: Predicate = namespace["predicate"]
    return predicate


_SOURCE_ORDERS = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
# Tests of a value against a number literal that go into the source as comparisons: they
# hold only for an int or a float (not a bool), as `predicates.check` says. Not `ne`,
# which holds for every other value.
_NUMBER_ORDERS = frozenset({"eq", "gt", "gte", "lt", "lte"})


class _Source:
    """The expression of one condition, and the values it refers to by name."""

    def __init__(self, computed: Mapping[str, Feature]) -> None:
        self.computed = computed
        self.values: dict[str, Any] = {"MISSING": MISSING, "UNKNOWN": _UNKNOWN}
        self.uses: set[str] = set()
        self._temps = 0

    def value(self, value: Any) -> str:
        name = f"c{len(self.values)}"
        self.values[name] = value
        return name

    def temp(self) -> str:
        self._temps += 1
        return f"t{self._temps}"

    def prologue(self) -> list[str]:
        lines = []
        if "traits" in self.uses:
            lines.append("traits = facts.profile.traits")
        if "values" in self.uses:
            lines.append("values = facts.values")
        if "now" in self.uses:
            lines.append("now = facts.now")
        if "segments" in self.uses:
            lines.append("segments = facts.segments")
        return lines

    def expression(self, node: Node) -> str:
        if isinstance(node, AllOf | AnyOf):
            joint = " and " if isinstance(node, AllOf) else " or "
            return "(" + joint.join(self.expression(c) for c in node.children) + ")"
        if isinstance(node, Not):
            return f"(not {self.expression(node.child)})"
        if isinstance(node, TraitIs):
            return self.test(node.test, self.trait(node.path))
        if isinstance(node, ComputedIs):
            return self.test(node.test, self.feature(self.computed[node.name]))
        if isinstance(node, EventCount):
            count = self.feature(node.feature)
            if len(node.bounds) == 1:
                op, limit = node.bounds[0]
                return f"({count} {_SOURCE_ORDERS[op]} {self.value(limit)})"
            # The count worked out in the first test, and read again in the others.
            held = self.temp()
            reads = [f"({held} := {count})"] + [held] * (len(node.bounds) - 1)
            tests = [
                f"{read} {_SOURCE_ORDERS[op]} {self.value(n)}"
                for read, (op, n) in zip(reads, node.bounds, strict=True)
            ]
            return "(" + " and ".join(tests) + ")"
        if isinstance(node, InSegment):
            self.uses.add("segments")
            return f"segments.get({self.value(node.name)}, False)"
        if isinstance(node, ConsentIs):
            return f"(facts.consent({self.value(node.purpose)}) == {self.value(node.status)})"
        return f"{self.value(_behaviour(node))}(facts)"

    def trait(self, path: tuple[str, ...]) -> str:
        if len(path) > 1:
            return f"facts.trait({self.value(path)})"
        self.uses.add("traits")
        cell, key = self.temp(), self.value(path[0])
        return f'(MISSING if ({cell} := traits.get({key})) is None else {cell}["value"])'

    def feature(self, feature: Feature) -> str:
        """The feature's value, worked out once per person and moment (`Facts.value_of`)."""
        self.uses.add("values")
        known, key = self.temp(), self.value(feature.key)
        return (
            f"({known} if ({known} := values.get({key}, UNKNOWN)) is not UNKNOWN"
            f" else facts.value_of({key}, {self.value(feature)}))"
        )

    def test(self, test: Test, value: str) -> str:
        literal = test.value
        if test.op in _NUMBER_ORDERS and is_number(literal):
            held = self.temp()
            return (
                f"((type({held} := {value}) is int or type({held}) is float)"
                f" and {held} {_SOURCE_ORDERS[test.op]} {self.value(literal)})"
            )
        if test.op == "eq" and isinstance(literal, str | bool):
            # A str equals only a str; True and False are one object each.
            relation = "is" if isinstance(literal, bool) else "=="
            return f"({value} {relation} {self.value(literal)})"
        self.uses.add("now")
        return f"{self.value(compile_test(test))}({value}, now)"


def _behaviour(node: Behaviour) -> Predicate:
    keyed = [(f.key, f) for f in node.features]
    nearest, group = node.nearest, node.group
    return lambda facts: nearest([float(facts.value_of(k, f)) for k, f in keyed]) == group
