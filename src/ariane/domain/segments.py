"""Live segmentation: which segments an event can change, and what they now say.

A `Catalogue` is every segment and computed trait in force, compiled once per version:
which event names feed which features, which segments read which features, traits,
consents or other segments, and in which order segments are evaluated (each after the
segments it refers to). For a person touched by a batch, only the segments the change
can reach are evaluated again; membership is kept in the profile itself
(`computed["segments"]`: segment id → entered at), next to the feature states, so that
evaluating needs no read beyond the profile the batch already holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ariane.domain import computed as comp
from ariane.domain.clock import iso, parse_timestamp
from ariane.domain.computed import Feature
from ariane.domain.conditions import (
    ComputedIs,
    ConsentIs,
    EventCount,
    Facts,
    Node,
    TraitIs,
    compile_condition,
    computed_references,
    evaluation_order,
    features,
    segment_references,
    walk,
)
from ariane.domain.consent import ConsentDecision
from ariane.domain.messages import Message
from ariane.domain.predicates import MISSING, age_boundary
from ariane.domain.profiles import FeatureMerge, ProfileState


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    id: str
    name: str
    description: str
    condition: Node


@dataclass(slots=True)
class Touch:
    """What a batch changed about one person."""

    # Keys of the features whose state an event changed.
    features: set[str] = field(default_factory=set)
    # Top-level keys of the traits whose value changed.
    traits: set[str] = field(default_factory=set)
    consent: bool = False
    first_seen: bool = False
    # New in this batch: before it, the person was blank.
    created: bool = False
    everything: bool = False


@dataclass(frozen=True, slots=True)
class _Reads:
    features: frozenset[str]
    traits: frozenset[str]
    consent: bool
    first_seen: bool
    segments: frozenset[str]


@dataclass(frozen=True, slots=True)
class Transition:
    segment: SegmentDefinition
    profile_id: str
    entered: bool


# Sets of changes whose reach is remembered; beyond that, the memory starts again.
_AFFECTED_CACHE = 4096


class Catalogue:
    def __init__(
        self,
        version: int,
        segments: Sequence[SegmentDefinition],
        computed: Mapping[str, Feature],
    ) -> None:
        self.version = version
        self.computed = dict(computed)
        self.segments = {s.name: s for s in segments}
        self.by_id = {s.id: s for s in segments}
        graph = {s.name: segment_references(s.condition) for s in segments}
        self.order = [self.segments[name] for name in evaluation_order(graph)]
        self.features: dict[str, Feature] = {f.key: f for f in computed.values()}
        reads: dict[str, _Reads] = {}
        for segment in segments:
            used = list(features(segment.condition))
            used += [computed[name] for name in computed_references(segment.condition)]
            self.features.update((f.key, f) for f in used)
            nodes = list(walk(segment.condition))
            reads[segment.name] = _Reads(
                features=frozenset(f.key for f in used),
                traits=frozenset(n.path[0] for n in nodes if isinstance(n, TraitIs)),
                consent=any(isinstance(n, ConsentIs) for n in nodes),
                first_seen=any(f.window.kind == "first" for f in used),
                segments=frozenset(graph[segment.name]),
            )
        self._reads = reads
        self.uses_consent = any(r.consent for r in reads.values())
        self.by_event: dict[str, list[tuple[str, Feature]]] = {}
        for key, feature in self.features.items():
            self.by_event.setdefault(feature.event, []).append((key, feature))
        self._predicates = {s.name: compile_condition(s.condition, self.computed) for s in segments}
        # Names some condition refers to: the only memberships evaluation needs to know.
        self._referred = sorted({name for refs in graph.values() for name in refs})
        # What each segment says of someone Ariane knows nothing about: for a new person,
        # only the segments their events reach, and those a blank person is in, can say
        # anything but no.
        blank = Facts(ProfileState(""), datetime(2000, 1, 1, tzinfo=UTC), self.computed)
        for segment in self.order:
            blank.segments[segment.name] = self._predicates[segment.name](blank)
        self._blank_members = frozenset(name for name, inside in blank.segments.items() if inside)
        self._clocks = _Clocks(segments, self.computed)
        self._affected: dict[tuple[Any, ...], list[SegmentDefinition]] = {}

    def computed_values(self, profile: ProfileState, now: datetime) -> dict[str, Any]:
        """The value of each named computed trait for the profile at `now` (None where
        undefined), as the 360° view shows them."""
        states = profile.computed.get("features", {})
        values = {}
        for name, feature in self.computed.items():
            value = comp.value(feature, states.get(feature.key), now, profile.first_seen)
            values[name] = None if value is MISSING else value
        return values

    # --- folding events ---------------------------------------------------------------------

    def fold(self, profile: ProfileState, message: Message, now: datetime, touch: Touch) -> None:
        """Fold one event, already applied to the profile, into the features it feeds."""
        if message.type != "track" or message.event is None:
            return
        fed = self.by_event.get(message.event)
        if not fed:
            return
        states = profile.computed.setdefault("features", {})
        changed = comp.fold_event(
            states,
            fed,
            message.timestamp,
            message.message_id,
            message.properties,
            now,
            profile.first_seen,
        )
        touch.features.update(changed)

    def merge_features(self, now: datetime) -> FeatureMerge:
        def merge(
            survivor: dict[str, Any], absorbed: Mapping[str, Any], first_seen: datetime | None
        ) -> None:
            comp.merge_states(self.features, survivor, absorbed, now, first_seen)

        return merge

    # --- evaluating -------------------------------------------------------------------------

    def affected(self, touch: Touch) -> list[SegmentDefinition]:
        """The segments a change can reach, in evaluation order."""
        if touch.everything:
            return self.order
        key = (
            frozenset(touch.features),
            frozenset(touch.traits),
            touch.consent,
            touch.first_seen,
            touch.created,
        )
        known = self._affected.get(key)
        if known is not None:
            return known
        reached: set[str] = set(self._blank_members) if touch.created else set()
        for segment in self.order:
            reads = self._reads[segment.name]
            if (
                reads.features & touch.features
                or reads.traits & touch.traits
                or (reads.consent and touch.consent)
                or (reads.first_seen and touch.first_seen)
                or reads.segments & reached
            ):
                reached.add(segment.name)
        result = [s for s in self.order if s.name in reached]
        if len(self._affected) >= _AFFECTED_CACHE:
            self._affected.clear()
        self._affected[key] = result
        return result

    def timed(self) -> list[SegmentDefinition]:
        """Segments whose answer time alone may change, and those that refer to them."""
        reached: set[str] = set()
        for segment in self.order:
            reads = self._reads[segment.name]
            if reads.segments & reached or any(
                _may_change_with_time(n, self.computed) for n in walk(segment.condition)
            ):
                reached.add(segment.name)
        return [s for s in self.order if s.name in reached]

    def facts(
        self,
        profile: ProfileState,
        now: datetime,
        consents: Mapping[str, ConsentDecision] | None = None,
    ) -> Facts:
        members = memberships(profile)
        referred = {name: self.segments[name].id in members for name in self._referred}
        return Facts(profile, now, self.computed, referred, consents or {})

    def settle(
        self,
        profile: ProfileState,
        which: Iterable[SegmentDefinition],
        now: datetime,
        consents: Mapping[str, ConsentDecision] | None = None,
        stamp: str | None = None,
    ) -> tuple[list[Transition], datetime | None]:
        """Evaluate `which` for one person, update their memberships; what changed, and
        when time alone may next change their segments (also kept in the profile).
        `stamp` is `iso(now)`, when the caller has it already."""
        facts = self.facts(profile, now, consents)
        members = profile.computed.setdefault("segments", {})
        if not members.keys() <= self.by_id.keys():
            for stale in [sid for sid in members if sid not in self.by_id]:
                del members[stale]
        changes = []
        predicates, answers = self._predicates, facts.segments
        for segment in which:
            name, segment_id = segment.name, segment.id
            inside = answers[name] = predicates[name](facts)
            if inside:
                if segment_id not in members:
                    stamp = stamp or iso(now)
                    members[segment_id] = stamp
                    changes.append(Transition(segment, profile.id, True))
            elif segment_id in members:
                del members[segment_id]
                changes.append(Transition(segment, profile.id, False))
        due = self._clocks.next_due(facts)
        if due is None:
            profile.computed.pop("due", None)
        else:
            profile.computed["due"] = iso(due)
        return changes, due

    def next_due(self, facts: Facts) -> datetime | None:
        return self._clocks.next_due(facts)


class _Clocks:
    """Everything in the catalogue that time alone moves, each feature and test once."""

    def __init__(
        self, segments: Sequence[SegmentDefinition], computed: Mapping[str, Feature]
    ) -> None:
        windows: dict[str, Feature] = {}
        trait_ages: dict[str, TraitIs] = {}
        value_ages: dict[str, tuple[str, Feature, ComputedIs]] = {}
        purposes: set[str] = set()
        for segment in segments:
            for node in walk(segment.condition):
                if isinstance(node, TraitIs) and node.test.age is not None:
                    trait_ages.setdefault(repr(node), node)
                elif isinstance(node, ComputedIs):
                    feature = computed[node.name]
                    if feature.window.kind == "recent":
                        windows[feature.key] = feature
                    if node.test.age is not None:
                        value_ages.setdefault(repr(node), (feature.key, feature, node))
                elif isinstance(node, EventCount) and node.feature.window.kind == "recent":
                    windows[node.feature.key] = node.feature
                elif isinstance(node, ConsentIs):
                    purposes.add(node.purpose)
        self.windows = windows
        self.trait_ages = list(trait_ages.values())
        self.value_ages = list(value_ages.values())
        self.purposes = sorted(purposes)

    def next_due(self, facts: Facts) -> datetime | None:
        now, now_us, states = facts.now, facts.now_us, facts.states
        # The windows this person has entries in: most people have few of them.
        leaving = None
        for key, state in states.items():
            feature = self.windows.get(key)
            if feature is not None:
                due = comp.next_change_at(feature, state, now_us)
                if due is not None and (leaving is None or due < leaving):
                    leaving = due
        moments = [None if leaving is None else comp.from_micros(leaving)]
        moments += [age_boundary(n.test, facts.trait(n.path)) for n in self.trait_ages]
        moments += [age_boundary(n.test, facts.value_of(k, f)) for k, f, n in self.value_ages]
        for purpose in self.purposes:
            decision = facts.consents.get(purpose)
            if decision is not None:
                moments.append(decision.expires_at)
        later = [m for m in moments if m is not None and m > now]
        return min(later) if later else None


def memberships(profile: ProfileState) -> dict[str, str]:
    """Segment id → when the person entered it."""
    members: dict[str, str] = profile.computed.get("segments", {})
    return members


def due_at(profile: ProfileState) -> datetime | None:
    due = profile.computed.get("due")
    return parse_timestamp(due) if isinstance(due, str) else None


def _may_change_with_time(node: Node, computed: Mapping[str, Feature]) -> bool:
    if isinstance(node, TraitIs):
        return node.test.age is not None
    if isinstance(node, ComputedIs):
        return computed[node.name].window.kind == "recent" or node.test.age is not None
    if isinstance(node, EventCount):
        return node.feature.window.kind == "recent"
    return isinstance(node, ConsentIs)
