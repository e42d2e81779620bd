"""The plan of a batch: each event resolved to its person and folded into their profile,
in memory, with the merges, identities, consents and segment changes that follow.

`BatchPlanner` works a batch out into a `BatchPlan`; ingestion then writes the plan as
it stands (`services.ingest`), or first checks it in its turn to write when it was
worked out ahead of that turn (`services.ingest_turns`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ariane.domain.consent import ConsentDecision, consents_from_message
from ariane.domain.events import (
    ComputedValueChanged,
    DomainEvent,
    computed_changes,
    consent_changed,
    profiles_merged,
)
from ariane.domain.identity import Identifier, IdentityIndex, Merge, Resolver
from ariane.domain.messages import Message
from ariane.domain.profiles import ProfileState, apply_message, merge_profiles
from ariane.domain.segments import Catalogue, Touch
from ariane.services.segments import SegmentService, Settlement
from ariane.settings import IdentitySettings
from ariane.storage import bus as bus_store
from ariane.storage import consents as consent_store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Connection


class ProfileGone(Exception):
    """An event was given for a profile that is no more: erased, or merged by another
    transaction since the caller looked (look again, and follow the merge)."""


@dataclass(slots=True)
class PlannedEvent:
    """An event of the batch, read and valid, with the identifiers it names."""

    message: Message
    identifiers: list[Identifier]
    previous: list[Identifier]
    row: tuple[Any, ...] = ()
    # The person it is about, when Ariane knows them already (its own events): no
    # identity resolution then.
    profile_id: str | None = None


@dataclass(slots=True)
class BatchPlan:
    """What a batch does, worked out in memory before it is written."""

    source_id: str
    planned: list[PlannedEvent]
    now: datetime
    catalogue: Catalogue
    # The identifiers it names and the profiles that owned them.
    keys: set[tuple[str, str]]
    existing: set[str]
    # Worked out before its turn: what it was worked out from, for `Turns.stale`. The
    # owner of each identifier, the identifiers of limited types each profile held, each
    # profile as read, and its consent history.
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    held: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    fingerprints: dict[str, bytes] = field(default_factory=dict)
    consent_histories: dict[str, Any] = field(default_factory=dict)
    live: dict[str, ProfileState] = field(default_factory=dict)
    created: dict[str, ProfileState] = field(default_factory=dict)
    touches: dict[str, Touch] = field(default_factory=dict)
    # Every profile id handed out in this batch leads, through these links, to the
    # profile that holds it at the end; ids are finalised only when rows are written.
    absorbed_into: dict[str, str] = field(default_factory=dict)
    new_identities: list[tuple[Identifier, str]] = field(default_factory=list)
    dropped: list[tuple[str, Identifier, str, str]] = field(default_factory=list)
    merge_log: list[tuple[Merge, str, str]] = field(default_factory=list)
    consent_updates: list[tuple[str, ConsentDecision]] = field(default_factory=list)
    assigned: list[str] = field(default_factory=list)
    # The named computed traits of each stored profile before the batch, and what the
    # batch changed of them, for each person at the end (`ComputedValueChanged`).
    computed_before: dict[str, dict[str, Any]] = field(default_factory=dict)
    computed_changed: list[ComputedValueChanged] = field(default_factory=list)
    settlement: Settlement | None = None
    # Mended in the turn: what the people kept as worked out before it settled, and when.
    earlier: tuple[Settlement, datetime] | None = None

    def final(self, profile_id: str) -> str:
        while profile_id in self.absorbed_into:
            profile_id = self.absorbed_into[profile_id]
        return profile_id

    def dues(self) -> dict[str, datetime | None]:
        """The timers the batch moves, written with the profiles."""
        dues = {} if self.earlier is None else dict(self.earlier[0].dues)
        if self.settlement is not None:
            dues.update(self.settlement.dues)
        return dues


class BatchPlanner:
    def __init__(self, identity: IdentitySettings, segments: SegmentService) -> None:
        self.identity = identity
        self.segments = segments
        self.limited_types = frozenset(identity.limits)

    def plan(
        self,
        conn: Connection,
        source_id: str,
        planned: list[PlannedEvent],
        now: datetime,
        catalogue: Catalogue,
        *,
        fingerprint: bool = False,
    ) -> BatchPlan:
        """Resolve each event to its person and fold it into their profile, in memory.

        With `fingerprint`, what it was worked out from is also kept, for `Turns.stale`.
        """
        keys = {i.key for p in planned for i in (*p.identifiers, *p.previous)}
        index = IdentityIndex()
        owners = profile_store.find_owners(conn, keys)
        known = {p.profile_id for p in planned if p.profile_id is not None}
        existing = profile_store.lock_profiles(conn, {p for _, _, p in owners} | known)
        held = profile_store.held_identifiers(conn, existing, self.limited_types)
        batch = BatchPlan(
            source_id=source_id,
            planned=planned,
            now=now,
            catalogue=catalogue,
            keys=keys,
            existing=set(existing),
        )
        if catalogue.computed:
            batch.computed_before = {
                pid: catalogue.computed_values(state, now) for pid, state in existing.items()
            }
        if fingerprint:
            batch.owners = {(t, v): p for t, v, p in owners}
            batch.held = by_profile(held)
            batch.fingerprints = fingerprints(existing)
        index.load(owners)
        index.load(held)

        live_segments = bool(catalogue.order or catalogue.features)
        merge_features = catalogue.merge_features(now)
        touches = batch.touches
        resolver = Resolver(self.identity, index)
        created = batch.created
        live = batch.live
        live.update(existing)
        absorbed_into = batch.absorbed_into

        for item in planned:
            message = item.message
            if item.profile_id is not None:
                profile_id = absorbed_into.get(item.profile_id, item.profile_id)
                if profile_id not in live:
                    raise ProfileGone(item.profile_id)
                _fold(batch, item, profile_id, live_segments)
                continue
            resolution = resolver.resolve(item.identifiers, item.previous)
            profile_id = resolution.profile_id
            if resolution.created:
                state = ProfileState(profile_id)
                created[profile_id] = state
                live[profile_id] = state
            for merge in resolution.merges:
                merge_profiles(live[merge.survivor], live.pop(merge.absorbed), merge_features)
                absorbed_into[merge.absorbed] = merge.survivor
                # A profile created earlier in this batch was never written: nothing to
                # move and no merge to record, its rows are written under the survivor.
                # What its events touched is passed on to the survivor below.
                if created.pop(merge.absorbed, None) is None:
                    touches.setdefault(merge.survivor, Touch()).everything = True
                    linked = ", ".join(sorted({i.type for i in merge.linked_by}))
                    reason = f"{message.type} event linked it by {linked}"
                    batch.merge_log.append((merge, reason, message.message_id))
            batch.new_identities.extend((ident, profile_id) for ident in resolution.attached)
            batch.dropped.extend(
                (profile_id, d.identifier, d.reason, message.message_id) for d in resolution.dropped
            )
            _fold(batch, item, profile_id, live_segments)

        for item, profile_id in zip(planned, batch.assigned, strict=True):
            message = item.message
            for decision in consents_of(message, source_id):
                batch.consent_updates.append((batch.final(profile_id), decision))
        if catalogue.computed:
            batch.computed_changed = _computed_changed(batch)
        return batch

    def plan_in_turn(
        self, conn: Connection, source_id: str, planned: list[PlannedEvent], now: datetime
    ) -> BatchPlan:
        """`planned` worked out in the turn at `now`, its merges and consents recorded."""
        # Before any profile is locked: held until commit, so that a change of definitions
        # either waits for this batch or is wholly seen by it, new profiles included.
        catalogue = self.segments.catalogue(conn, hold=True)
        batch = self.plan(conn, source_id, planned, now, catalogue)
        happened: list[DomainEvent] = []
        for merge, reason, message_id in batch.merge_log:
            merge.survivor = batch.final(merge.survivor)
            profile_store.record_merge(conn, merge, reason, message_id, now)
            happened.append(profiles_merged(merge.survivor, merge.absorbed, now))
        if batch.consent_updates:
            changes = consent_store.record_changes(conn, batch.consent_updates)
            happened.extend(
                consent_changed(row, p, d.purpose, d.status, d.at, before)
                for p, d, before, row in changes
            )
        bus_store.record(conn, happened)
        batch.settlement = self.settle(conn, batch)
        return batch

    def settle(self, conn: Connection, batch: BatchPlan) -> Settlement | None:
        """Segments: each person the batch touched, once, under the id they end with."""
        catalogue = batch.catalogue
        if not (catalogue.order or catalogue.features):
            return None
        settling: dict[str, tuple[ProfileState, Touch]] = {}
        for profile_id, touch in batch.touches.items():
            owner = batch.final(profile_id)
            _, into = settling.setdefault(
                owner, (batch.live[owner], Touch(created=owner in batch.created))
            )
            into.features |= touch.features
            into.traits |= touch.traits
            into.first_seen |= touch.first_seen
            into.everything |= touch.everything
        for owner, _ in batch.consent_updates:
            settling[owner][1].consent = True
        consents = self.segments.consents(conn, catalogue, settling)
        return self.segments.settle(catalogue, settling, batch.now, consents)


def _computed_changed(batch: BatchPlan) -> list[ComputedValueChanged]:
    """What the batch changed of each person's named computed traits, read at its `now`
    before and after (someone new had the values of no one: counts of 0, ...)."""
    catalogue, now = batch.catalogue, batch.now
    blank = catalogue.computed_values(ProfileState(""), now)
    changed = []
    for owner in dict.fromkeys(batch.final(p) for p in batch.assigned):
        after = catalogue.computed_values(batch.live[owner], now)
        before = batch.computed_before.get(owner, blank)
        changed += computed_changes(owner, before, after, now, lambda: uuid.uuid4().hex)
    return changed


def _fold(batch: BatchPlan, item: PlannedEvent, profile_id: str, live_segments: bool) -> None:
    """Fold the event into the profile it was resolved to."""
    state = batch.live[profile_id]
    first_seen = state.first_seen
    changed_traits = apply_message(state, item.message, batch.source_id)
    if live_segments:
        touch = batch.touches.setdefault(profile_id, Touch())
        touch.traits |= changed_traits
        touch.first_seen |= state.first_seen != first_seen
        batch.catalogue.fold(state, item.message, batch.now, touch)
    batch.assigned.append(profile_id)


def consents_of(message: Message, source_id: str) -> list[ConsentDecision]:
    """The consents the event records."""
    return consents_from_message(
        message.context, message.timestamp, source_id, received_at=message.received_at
    )


def fingerprints(states: Mapping[str, ProfileState]) -> dict[str, bytes]:
    """Each profile as read, to tell whether it was written meanwhile."""
    return {
        s.id: orjson.dumps(
            (s.traits, s.computed, s.first_seen, s.last_seen), option=orjson.OPT_NON_STR_KEYS
        )
        for s in states.values()
    }


def by_profile(rows: Iterable[tuple[str, str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The identifiers each profile holds, in order, from (type, value, profile) rows."""
    held: dict[str, list[tuple[str, str]]] = {}
    for id_type, value, profile_id in rows:
        held.setdefault(profile_id, []).append((id_type, value))
    for values in held.values():
        values.sort()
    return held
