"""Segment conditions compiled to SQL: preview counts and backfills over every profile.

`condition_sql` turns a parsed condition (`domain/conditions.py`) into a boolean over the
`profiles` table that is TRUE exactly when `conditions.evaluate` says True, and never
NULL, so that `not` negates it. It is a second engine, not a reading of the first: event
features and computed traits are computed from the `events` table, not from the states
folded into `profiles.computed`; traits come from `profiles.traits`, consent from
`consents`, segment membership from `segment_members`. A property-based test holds the
two engines to the same answers on both databases.

Each feature is a subquery correlated to the profile, walking the events timeline index
`(profile_id, timestamp, id)`: one probe per profile and feature, never a join of every
event with every profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.computed import NUMERIC_KINDS, Feature, from_micros, length_micros
from ariane.domain.conditions import (
    AllOf,
    AnyOf,
    Behaviour,
    ComputedIs,
    ConsentIs,
    EventCount,
    InSegment,
    Node,
    Not,
    TraitIs,
)
from ariane.domain.predicates import Test, is_number, micros
from ariane.storage.database import dialect_of
from ariane.storage.dialect import Dialect
from ariane.storage.tables import (
    INTERNAL_SOURCE,
    consents,
    events,
    profiles,
    segment_members,
    segments,
)

_EARLIEST = micros(datetime.min.replace(tzinfo=UTC))
# Longer than the distance between any two instants a datetime holds, in microseconds.
_FOREVER = 2**60
# Above any count a table can hold: a larger bound compares the same way.
_MAX_COUNT = 2**62

Bool = sa.ColumnElement[bool]
Expr = sa.ColumnElement[Any]


def condition_sql(
    node: Node, dialect: Dialect, *, now: datetime, computed: Mapping[str, Feature]
) -> Bool:
    """A boolean over `profiles`, TRUE exactly when `evaluate(node, ...)` is, never NULL."""
    return _Compiler(dialect, now, computed).condition(node)


def holds(
    conn: Connection,
    node: Node,
    profile_id: str,
    *,
    now: datetime,
    computed: Mapping[str, Feature],
) -> bool:
    """Whether the live profile meets the condition now, from what is stored."""
    query = members_query(node, dialect_of(conn), now=now, computed=computed)
    return conn.execute(query.where(profiles.c.id == profile_id)).first() is not None


def members_query(
    node: Node, dialect: Dialect, *, now: datetime, computed: Mapping[str, Feature]
) -> sa.Select[Any]:
    """The ids of the live profiles that meet the condition, in id order."""
    return (
        sa.select(profiles.c.id)
        .where(
            profiles.c.merged_into.is_(None),
            condition_sql(node, dialect, now=now, computed=computed),
        )
        .order_by(profiles.c.id)
    )


def preview(
    conn: Connection,
    node: Node,
    *,
    now: datetime,
    computed: Mapping[str, Feature],
    sample: int = 20,
) -> tuple[int, list[str]]:
    """How many live profiles meet the condition, and the first `sample` of their ids.

    Read inside `Database.read()`, so that the count and the sample agree.
    """
    dialect = dialect_of(conn)
    query = members_query(node, dialect, now=now, computed=computed)
    if sample <= 0:
        total = conn.execute(
            sa.select(sa.func.count()).select_from(query.order_by(None).subquery())
        )
        return int(total.scalar_one()), []
    # One pass over the profiles: the count of every match rides along the first rows.
    rows = conn.execute(query.add_columns(sa.func.count().over()).limit(sample)).all()
    return (int(rows[0][1]) if rows else 0), [str(row[0]) for row in rows]


@dataclass(frozen=True, slots=True)
class _Value:
    """A value under test, as SQL. Each accessor is NULL where the value is not of its
    kind, and None when the value can never be of it."""

    present: Bool
    number: Expr | None = None
    text: sa.ColumnElement[str] | None = None
    flag: Callable[[bool], Bool] | None = None
    has: Callable[[Any], Bool] | None = None
    # Sums and averages are doubles: literals are compared as doubles too.
    double: bool = False


def _yes(condition: Bool) -> Bool:
    """TRUE when `condition` is, FALSE when it is FALSE or NULL."""
    return sa.func.coalesce(condition, sa.false(), type_=sa.Boolean)


def _divide(dividend: Expr, divisor: Expr) -> Expr:
    # Both are doubles: a plain `/` (not the casts SQLAlchemy adds for a true division),
    # binding tighter than anything around it so that its operands are parenthesised.
    return dividend.op("/", precedence=100, return_type=sa.Double)(divisor)


# Terms joined in one chain: `a AND b AND c` is nested one level per term in SQLite, which
# refuses an expression nested 1,000 deep. Longer lists are joined in halves.
_CHAIN = 8


def _joined(join: Callable[..., Bool], clauses: Sequence[Bool]) -> Bool:
    """`join(*clauses)` (`sa.and_` or `sa.or_`), nested as deep as the log of their number."""
    if len(clauses) <= _CHAIN:
        return join(*clauses)
    half = len(clauses) // 2
    # type_coerce keeps SQLAlchemy from flattening the halves back into one chain.
    return join(
        *(
            sa.type_coerce(_joined(join, part), sa.Boolean).self_group()
            for part in (clauses[:half], clauses[half:])
        )
    )


def _compare(op: str, left: Expr, right: Expr) -> Bool:
    if op == "eq":
        return left == right
    if op == "ne":
        return left != right
    if op == "gt":
        return left > right
    if op == "gte":
        return left >= right
    if op == "lt":
        return left < right
    return left <= right


class _Compiler:
    def __init__(self, dialect: Dialect, now: datetime, computed: Mapping[str, Feature]) -> None:
        self.dialect = dialect
        self.now = now
        self.computed = computed
        self.now_micros = sa.literal(micros(now), sa.BigInteger)

    # --- the tree -------------------------------------------------------------------------

    def condition(self, node: Node) -> Bool:
        if isinstance(node, AllOf):
            return _joined(sa.and_, [self.condition(child) for child in node.children])
        if isinstance(node, AnyOf):
            return _joined(sa.or_, [self.condition(child) for child in node.children])
        if isinstance(node, Not):
            return sa.not_(self.condition(node.child))
        if isinstance(node, TraitIs):
            parts = (node.path[0], "value", *node.path[1:])
            return self.test(node.test, self.json_value(profiles.c.traits, parts), self.now_micros)
        if isinstance(node, ComputedIs):
            return self.test(
                node.test, self.feature_value(self.computed[node.name]), self.now_micros
            )
        if isinstance(node, EventCount):
            count = self.aggregate(node.feature, sa.func.count())
            return sa.and_(
                *(
                    _compare(op, count, sa.literal(min(limit, _MAX_COUNT), sa.BigInteger))
                    for op, limit in node.bounds
                )
            )
        if isinstance(node, InSegment):
            named = sa.select(segments.c.id).where(segments.c.name == node.name)
            return sa.exists().where(
                segment_members.c.profile_id == profiles.c.id,
                segment_members.c.segment_id.in_(named.scalar_subquery()),
            )
        if isinstance(node, ConsentIs):
            return self.consent(node)
        return self.behaviour(node)

    def consent(self, node: ConsentIs) -> Bool:
        expired = sa.and_(consents.c.expires_at.is_not(None), consents.c.expires_at <= self.now)
        latest = (
            sa.select(sa.case((expired, "expired"), else_=consents.c.status))
            .where(consents.c.profile_id == profiles.c.id, consents.c.purpose == node.purpose)
            .order_by(consents.c.at.desc(), consents.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        return sa.func.coalesce(latest, "unknown") == node.status

    def behaviour(self, node: Behaviour) -> Bool:
        # The same double arithmetic as `Behaviour.nearest`, in the same order.
        dialect = self.dialect
        names = sorted({feature.event for feature in node.features})
        counts = [
            dialect.double(sa.func.count(sa.case((self.in_feature(feature), 1), else_=sa.null())))
            for feature in node.features
        ]
        point = [
            _divide(count - sa.literal(center, sa.Double), sa.literal(scale, sa.Double))
            for count, center, scale in zip(counts, node.center, node.scale, strict=True)
        ]
        distances = []
        for index, (_, centroid) in enumerate(node.centroids):
            terms = []
            for p, q in zip(point, centroid, strict=True):
                gap = p - sa.literal(q, sa.Double)
                terms.append(gap * gap)
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            distances.append(total.label(f"d{index}"))
        rows = (
            sa.select(*distances)
            .where(*self.timeline(), events.c.event.in_(names))
            .correlate(profiles)
            .subquery()
        )
        chosen = next(i for i, (name, _) in enumerate(node.centroids) if name == node.group)
        mine = rows.c[f"d{chosen}"]
        # Strictly closer than every centroid before it, no farther than any after it.
        nearest = sa.and_(
            mine < sa.literal(float("inf"), sa.Double),
            *(
                mine < rows.c[f"d{i}"] if i < chosen else mine <= rows.c[f"d{i}"]
                for i in range(len(node.centroids))
                if i != chosen
            ),
        )
        return _yes(sa.select(nearest).scalar_subquery())

    # --- tests on one value -----------------------------------------------------------------

    def json_value(self, doc: Expr, parts: Sequence[str]) -> _Value:
        dialect = self.dialect
        return _Value(
            present=sa.not_(dialect.json_is(doc, parts, "null")),
            number=dialect.json_number(doc, parts),
            text=dialect.json_text(doc, parts),
            flag=lambda flag: dialect.json_flag(doc, parts, flag),
            has=lambda item: dialect.json_array_has(doc, parts, item),
        )

    def literal(self, value: _Value, number: int | float) -> Expr:
        return self.dialect.number(number, double=value.double)

    def same(self, value: _Value, literal: Any) -> Bool:
        """`predicates.same`: equal, and of the same kind."""
        if isinstance(literal, bool):
            return _yes(value.flag(literal)) if value.flag is not None else sa.false()
        if is_number(literal):
            if value.number is None:
                return sa.false()
            return _yes(value.number == self.literal(value, literal))
        if value.text is None:
            return sa.false()
        return _yes(value.text == literal)

    def one_of(self, value: _Value, items: Sequence[Any]) -> Bool:
        """`predicates.same` with any of `items`: the texts in one test and the numbers in
        another, each list bound as one parameter however long (`Dialect.text_in`)."""
        texts = [item for item in items if isinstance(item, str)]
        numbers = [item for item in items if is_number(item)]
        flags = sorted({item for item in items if isinstance(item, bool)})
        found = [self.same(value, flag) for flag in flags]
        if texts and value.text is not None:
            found.append(_yes(self.dialect.text_in(value.text, texts)))
        if numbers and value.number is not None:
            number_in = self.dialect.number_in(value.number, numbers, double=value.double)
            found.append(_yes(number_in))
        return sa.or_(sa.false(), *found)

    def ordered(self, value: _Value, op: str, literal: Any) -> Bool:
        if is_number(literal):
            if value.number is None:
                return sa.false()
            return _compare(op, value.number, self.literal(value, literal))
        if value.text is None:
            return sa.false()
        return _compare(op, self.dialect.ordered(value.text), literal)

    def test(self, test: Test, value: _Value, now_micros: Expr) -> Bool:
        """`predicates.check`, where `now_micros` is the moment ages count back from."""
        op, literal = test.op, test.value
        dialect = self.dialect
        if op == "exists":
            return _yes(value.present)
        if op == "not_exists":
            return sa.not_(_yes(value.present))
        if op in ("eq", "ne"):
            equal = self.same(value, literal)
            return equal if op == "eq" else sa.not_(equal)
        if op in ("in", "not_in"):
            found = self.one_of(value, literal)
            return found if op == "in" else sa.not_(found)
        if op in ("gt", "gte", "lt", "lte"):
            return _yes(self.ordered(value, op, literal))
        if op == "between":
            low, high = literal
            return _yes(sa.and_(self.ordered(value, "gte", low), self.ordered(value, "lte", high)))
        text = value.text
        if op == "contains":
            options = []
            if value.has is not None:
                options.append(_yes(value.has(literal)))
            if text is not None and isinstance(literal, str):
                options.append(_yes(dialect.text_contains(text, literal)))
            return sa.or_(sa.false(), *options)
        if text is None:
            return sa.false()
        if op == "starts_with":
            return _yes(dialect.text_starts_with(text, literal))
        if op == "ends_with":
            if not literal:
                return _yes(text.is_not(None))
            return _yes(dialect.text_ends_with(text, literal))
        assert test.age is not None
        moment = dialect.moment_micros(text)
        bound = now_micros - sa.literal(length_micros(test.age), sa.BigInteger)
        return _yes(moment <= bound if op == "older_than" else moment > bound)

    # --- features, from the events table ----------------------------------------------------

    def timeline(self) -> list[Bool]:
        """The profile's behaviour: its track events, Ariane's own left out."""
        return [
            events.c.profile_id == profiles.c.id,
            events.c.type == "track",
            events.c.source_id != INTERNAL_SOURCE,
        ]

    def in_window(self, feature: Feature) -> list[Bool]:
        window = feature.window
        stamp = events.c.timestamp
        if window.kind == "range":
            assert window.start is not None and window.end is not None
            return [stamp >= window.start, stamp < window.end]
        if window.kind == "recent":
            assert window.length is not None
            # After now - length; before year 1 that is every event.
            since = micros(self.now) - length_micros(window.length)
            return [stamp > from_micros(since)] if since >= _EARLIEST else []
        if window.kind == "first":
            assert window.length is not None
            length = length_micros(window.length)
            if length >= _FOREVER:
                return []
            first_seen = profiles.c.first_seen
            limit = self.dialect.micros(first_seen) + sa.literal(length, sa.BigInteger)
            return [sa.or_(first_seen.is_(None), self.dialect.micros(stamp) < limit)]
        return []

    def in_feature(self, feature: Feature) -> Bool:
        """Whether an event of the timeline counts for the feature: its name, its window,
        its filter and, when the feature reads a property, a value of the right kind."""
        clauses = [events.c.event == feature.event, *self.in_window(feature)]
        at = self.dialect.micros(events.c.timestamp)
        for path, test in feature.where:
            # Ages in a filter count back from the event's own time.
            clauses.append(self.test(test, self.json_value(*self.property(path)), at))
        if feature.property_path is not None:
            kind = "number" if feature.kind in NUMERIC_KINDS else "string"
            clauses.append(self.dialect.json_is(*self.property(feature.property_path), kind))
        return _joined(sa.and_, clauses)

    def property(self, path: Sequence[str]) -> tuple[Expr, tuple[str, ...]]:
        return events.c.payload, ("properties", *path)

    def aggregate(self, feature: Feature, *columns: Expr) -> Expr:
        return (
            sa.select(*columns).where(*self.timeline(), self.in_feature(feature)).scalar_subquery()
        )

    def rows(self, feature: Feature, column: Expr) -> sa.Select[Any]:
        return sa.select(column).where(*self.timeline(), self.in_feature(feature))

    def feature_value(self, feature: Feature) -> _Value:
        """`computed.value` of the feature at now, as SQL."""
        kind = feature.kind
        dialect = self.dialect
        if kind == "count":
            count = self.aggregate(feature, sa.func.count())
            return _Value(present=sa.true(), number=count)
        assert feature.property_path is not None
        number = dialect.json_number(*self.property(feature.property_path))
        text = dialect.json_text(*self.property(feature.property_path))
        if kind == "sum":
            total = self.aggregate(feature, dialect.exact_sum(number))
            zero = sa.literal(0.0, sa.Double)
            return _Value(present=sa.true(), number=sa.func.coalesce(total, zero), double=True)
        if kind == "average":
            count = sa.func.nullif(dialect.double(sa.func.count()), sa.literal(0.0, sa.Double))
            mean = _divide(dialect.exact_sum(number), count)
            average = self.aggregate(feature, mean)
            return _Value(present=average.is_not(None), number=average, double=True)
        if kind in ("min", "max"):
            pick = sa.func.min if kind == "min" else sa.func.max
            extreme = self.aggregate(feature, pick(number))
            return _Value(present=extreme.is_not(None), number=extreme)
        if kind == "unique_count":
            unique = self.aggregate(feature, sa.func.count(sa.distinct(text)))
            return _Value(present=sa.true(), number=unique)
        if kind == "unique_list":

            def has(item: Any) -> Bool:
                if not isinstance(item, str):
                    return sa.false()
                return sa.exists(self.rows(feature, sa.literal(1)).where(text == item))

            return _Value(present=sa.true(), has=has)
        ordered = dialect.ordered(text)
        if kind == "most_frequent":
            query = (
                self.rows(feature, text)
                .group_by(text)
                .order_by(sa.func.count().desc(), ordered)
                .limit(1)
            )
        else:
            keys = [events.c.timestamp, dialect.ordered(events.c.message_id), ordered]
            if kind == "last":
                keys = [key.desc() for key in keys]
            query = self.rows(feature, text).order_by(*keys).limit(1)
        chosen = query.scalar_subquery()
        return _Value(present=chosen.is_not(None), text=chosen)
