"""Ingestion: validate a batch, resolve each event to a person, fold it into the profile.

Everything a batch changes is written in one transaction, and the caller acknowledges
only after it commits. The batch is processed in bulk: one query finds every known
identifier, one locks every profile concerned, one statement writes each kind of row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ariane.domain.clock import iso
from ariane.domain.consent import ConsentDecision, consents_from_message
from ariane.domain.errors import InvalidEvent
from ariane.domain.events import DomainEvent, consent_changed, profiles_merged
from ariane.domain.identity import (
    Identifier,
    IdentityIndex,
    Merge,
    Resolver,
    extract_identifiers,
    identifiers_of_rejected,
    no_identifier,
    previous_identifiers,
)
from ariane.domain.messages import Message, check_batch, parse_message
from ariane.domain.profiles import ProfileState, apply_message, merge_profiles
from ariane.domain.segments import Catalogue, Touch
from ariane.services.segments import SegmentService, Settlement
from ariane.settings import Settings
from ariane.storage import bus as bus_store
from ariane.storage import consents as consent_store
from ariane.storage import events as event_store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Connection, Database, RetryTransaction


class ProfileGone(Exception):
    """An event was given for a profile that is no more: erased, or merged by another
    transaction since the caller looked (look again, and follow the merge)."""


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    merges: int = 0
    problems: list[InvalidEvent] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Planned:
    message: Message
    identifiers: list[Identifier]
    previous: list[Identifier]
    row: tuple[Any, ...] = ()
    # The person it is about, when Ariane knows them already (its own events): no
    # identity resolution then.
    profile_id: str | None = None


@dataclass(slots=True)
class Envelope:
    """What a request says about all of its events."""

    received_at: datetime
    type_hint: str | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sent_at: datetime | None = None


class IngestService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Callable[[], datetime],
        segments: SegmentService,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.segments = segments
        self.limited_types = frozenset(settings.identity.limits)

    def ingest(
        self,
        source_id: str,
        raw_events: Sequence[Any],
        envelope: Envelope,
        *,
        profiles: Sequence[str] | None = None,
    ) -> IngestResult:
        """Store the events and fold them into their people's profiles, in one
        transaction. With `profiles` (one per event), each event is about that profile,
        which must exist: what Ariane records about a person it knows (its loyalty
        movements) is not sent through identity resolution again."""
        result = IngestResult()
        planned: list[_Planned] = []
        rejected: list[dict[str, Any]] = []
        named: list[list[Identifier]] = []
        batch_ids: set[str] = set()
        identity_settings = self.settings.identity
        try:
            check_batch(envelope.context, envelope.integrations)
            batch_problem: InvalidEvent | None = None
        except InvalidEvent as problem:
            batch_problem = problem
        for position, raw in enumerate(raw_events):
            known = None if profiles is None else profiles[position]
            try:
                if batch_problem is not None:
                    # What the batch merges into each event cannot be stored.
                    raise batch_problem
                message = parse_message(
                    raw,
                    received_at=envelope.received_at,
                    type_hint=envelope.type_hint,
                    batch_context=envelope.context,
                    batch_integrations=envelope.integrations,
                    batch_sent_at=envelope.sent_at,
                    max_bytes=self.settings.max_event_bytes,
                )
                identifiers = [] if known else extract_identifiers(message, identity_settings)
                previous = [] if known else previous_identifiers(message)
                if not identifiers and not previous and not known:
                    # An event that names no one would make a profile of its own.
                    raise no_identifier(message)
            except InvalidEvent as error:
                # Kept without its traceback, whose frames hold this batch and the
                # result that holds the error: a cycle only the collector would free.
                error.__traceback__ = error.__context__ = None
                result.problems.append(error)
                rejected.append(
                    event_store.quarantine_row(
                        source_id, raw, error.message, error.field, envelope.received_at
                    )
                )
                named.append(identifiers_of_rejected(raw, identity_settings))
                continue
            if message.message_id in batch_ids:
                result.duplicates += 1
                continue
            batch_ids.add(message.message_id)
            planned.append(_Planned(message, identifiers, previous, profile_id=known))
        result.quarantined = len(rejected)
        rows = event_store.event_rows(self.db, source_id, [p.message for p in planned])
        for item, row in zip(planned, rows, strict=True):
            item.row = row

        # Where worker processes take turns to write (SQLite), the batch is first worked
        # out from a snapshot, outside the turn; the turn then checks that what it read
        # still holds and only writes. A batch that cannot be worked out beforehand, or
        # that another writer made stale meanwhile, is worked out in the turn.
        prepared = (
            self._prepare(source_id, planned)
            if self.db.serialises_writes and self.settings.workers > 1
            else None
        )
        attempts = 0

        def work(conn: Connection) -> IngestResult:
            nonlocal attempts
            attempts += 1
            outcome = IngestResult(
                duplicates=result.duplicates,
                quarantined=result.quarantined,
                problems=result.problems,
            )
            event_store.insert_quarantine(conn, rejected, named)
            if prepared is not None and attempts == 1:
                # One moment for the check and for what is worked out again: what the
                # check kept holds at it.
                now = self.clock()
                stale = self._stale(conn, prepared, now)
                if stale is not None and len(stale) < len(planned):
                    mended = self._mend(conn, prepared, stale, now)
                    self._write(conn, source_id, mended, outcome)
                    return outcome
            # Resent events are the exception: the first attempt does not look for them,
            # and the event insert, which counts what it stored, sends a batch holding one
            # back here for a second attempt that does.
            self._apply(conn, source_id, planned, outcome, find_resent=attempts > 1)
            return outcome

        return self.db.write(work)

    def _prepare(self, source_id: str, planned: list[_Planned]) -> _Batch | None:
        """The batch worked out from a snapshot, when it merges no stored profiles and
        records no consent: what it writes then depends on nothing but what it read."""
        if not planned or any(_consents(p.message, source_id) for p in planned):
            return None
        with self.db.read() as conn:
            catalogue = self.segments.catalogue(conn)
            batch = self._work_out(
                conn, source_id, planned, self.clock(), catalogue, fingerprint=True
            )
            if batch.merge_log:
                return None
            batch.settlement = self._settle(conn, batch)
            batch.consent_histories = self._consent_histories(conn, batch, batch.existing)
        if batch.settlement is not None:
            self.segments.prepare(batch.settlement, batch.now, "event")
        return batch

    def _stale(self, conn: Connection, batch: _Batch, now: datetime) -> set[int] | None:
        """The positions of the events of `batch` that were worked out from something that
        has changed since: an owner of an identifier, a profile, the identifiers it holds,
        its consent history, or a segment that time alone changed between when it was
        worked out and `now`. With them, every event of the same people (those linked to
        them by an identifier or a profile, as read then or now). None when the
        definitions changed, or a profile the identifiers lead to vanished between reading
        its owner and locking it: everything is stale.
        """
        if self.segments.catalogue(conn, hold=True).version != batch.catalogue.version:
            return None
        found = profile_store.find_owners(conn, batch.keys)
        try:
            existing = profile_store.lock_profiles(conn, {p for _, _, p in found})
        except RetryTransaction:
            return None
        owners = {(t, v): p for t, v, p in found}
        held = _by_profile(profile_store.held_identifiers(conn, existing, self.limited_types))
        histories = self._consent_histories(conn, batch, existing)
        changed: set[Any] = {key for key in batch.keys if owners.get(key) != batch.owners.get(key)}
        prints = _fingerprints(existing)
        for profile_id in existing.keys() | batch.existing:
            if (
                prints.get(profile_id) != batch.fingerprints.get(profile_id)
                or held.get(profile_id) != batch.held.get(profile_id)
                or histories.get(profile_id) != batch.consent_histories.get(profile_id)
            ):
                changed.add(profile_id)
        if batch.settlement is not None:
            # Dues are canonical text (`iso`), whose order is time order.
            moment = iso(now)
            for owner in {batch.final(p) for p in batch.touches}:
                due = batch.live[owner].computed.get("due")
                if isinstance(due, str) and due <= moment:
                    changed.add(owner)
        if not changed:
            return set()
        # People: events joined by the identifiers they name and the profiles that own
        # them, before and now.
        people = _Links()
        for position, item in enumerate(batch.planned):
            people.join(position, batch.final(batch.assigned[position]))
            for ident in (*item.identifiers, *item.previous):
                people.join(position, ident.key)
        for key in batch.keys:
            people.join(key, batch.owners.get(key), owners.get(key))
        touched = {people.find(node) for node in changed}
        return {
            position for position in range(len(batch.planned)) if people.find(position) in touched
        }

    def _mend(self, conn: Connection, batch: _Batch, stale: set[int], now: datetime) -> _Batch:
        """`batch` with the events at `stale` worked out again at `now`, in the turn.

        The result holds what `_write` reads, nothing more: it is not checked again.
        """
        if not stale:
            return batch
        planned = [batch.planned[i] for i in sorted(stale)]
        again = self._redo(conn, batch.source_id, planned, now)
        kept = {batch.final(p) for i, p in enumerate(batch.assigned) if i not in stale}
        mended = _Batch(
            source_id=batch.source_id,
            planned=batch.planned,
            now=again.now,
            catalogue=again.catalogue,
            keys=batch.keys,
            existing=batch.existing,
        )
        redone = iter(again.assigned)
        mended.assigned = [next(redone) if i in stale else p for i, p in enumerate(batch.assigned)]
        mended.absorbed_into = {**batch.absorbed_into, **again.absorbed_into}
        mended.live = {p: s for p, s in batch.live.items() if p in kept} | again.live
        mended.created = {p: s for p, s in batch.created.items() if p in kept} | again.created
        mended.touches = again.touches
        mended.new_identities = [
            (ident, p) for ident, p in batch.new_identities if batch.final(p) in kept
        ] + again.new_identities
        mended.dropped = [d for d in batch.dropped if batch.final(d[0]) in kept] + again.dropped
        mended.merge_log = again.merge_log
        mended.consent_updates = again.consent_updates
        mended.settlement = again.settlement
        if batch.settlement is not None:
            # Recorded at the time the kept people were worked out, which their profiles
            # hold as when they entered.
            mended.earlier = (
                Settlement(
                    [t for t in batch.settlement.transitions if t.profile_id in kept],
                    {p: due for p, due in batch.settlement.dues.items() if p in kept},
                ),
                batch.now,
            )
        return mended

    def _consent_histories(
        self, conn: Connection, batch: _Batch, profile_ids: Collection[str]
    ) -> dict[str, Any]:
        if batch.settlement is None or not batch.catalogue.uses_consent:
            return {}
        return {p: consent_store.history(conn, p) for p in sorted(profile_ids)}

    def _apply(
        self,
        conn: Connection,
        source_id: str,
        planned: list[_Planned],
        result: IngestResult,
        *,
        find_resent: bool,
    ) -> None:
        if not planned:
            return
        seen = (
            event_store.seen_message_ids(conn, source_id, [p.message.message_id for p in planned])
            if find_resent
            else set()
        )
        if seen:
            result.duplicates += sum(1 for p in planned if p.message.message_id in seen)
            planned = [p for p in planned if p.message.message_id not in seen]
            if not planned:
                return

        self._write(conn, source_id, self._redo(conn, source_id, planned, self.clock()), result)

    def _redo(
        self, conn: Connection, source_id: str, planned: list[_Planned], now: datetime
    ) -> _Batch:
        """`planned` worked out in the turn at `now`, its merges and consents recorded."""
        # Before any profile is locked: held until commit, so that a change of definitions
        # either waits for this batch or is wholly seen by it, new profiles included.
        catalogue = self.segments.catalogue(conn, hold=True)
        batch = self._work_out(conn, source_id, planned, now, catalogue)
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
        batch.settlement = self._settle(conn, batch)
        return batch

    def _work_out(
        self,
        conn: Connection,
        source_id: str,
        planned: list[_Planned],
        now: datetime,
        catalogue: Catalogue,
        *,
        fingerprint: bool = False,
    ) -> _Batch:
        """Resolve each event to its person and fold it into their profile, in memory.

        With `fingerprint`, what it was worked out from is also kept, for `_stale`.
        """
        keys = {i.key for p in planned for i in (*p.identifiers, *p.previous)}
        index = IdentityIndex()
        owners = profile_store.find_owners(conn, keys)
        known = {p.profile_id for p in planned if p.profile_id is not None}
        existing = profile_store.lock_profiles(conn, {p for _, _, p in owners} | known)
        held = profile_store.held_identifiers(conn, existing, self.limited_types)
        batch = _Batch(
            source_id=source_id,
            planned=planned,
            now=now,
            catalogue=catalogue,
            keys=keys,
            existing=set(existing),
        )
        if fingerprint:
            batch.owners = {(t, v): p for t, v, p in owners}
            batch.held = _by_profile(held)
            batch.fingerprints = _fingerprints(existing)
        index.load(owners)
        index.load(held)

        live_segments = bool(catalogue.order or catalogue.features)
        merge_features = catalogue.merge_features(now)
        touches = batch.touches
        resolver = Resolver(self.settings.identity, index)
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
                self._fold(batch, item, profile_id, live_segments)
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
            self._fold(batch, item, profile_id, live_segments)

        for item, profile_id in zip(planned, batch.assigned, strict=True):
            message = item.message
            for decision in _consents(message, source_id):
                batch.consent_updates.append((batch.final(profile_id), decision))
        return batch

    @staticmethod
    def _fold(batch: _Batch, item: _Planned, profile_id: str, live_segments: bool) -> None:
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

    def _write(self, conn: Connection, source_id: str, batch: _Batch, result: IngestResult) -> None:
        """Everything the batch changes, worked out already, written."""
        now, final = batch.now, batch.final
        result.merges = len(batch.merge_log)
        dues = batch.dues()
        profile_store.insert_profiles(conn, batch.created.values(), now, dues)
        profile_store.insert_identities(
            conn, [(i, final(p), source_id) for i, p in batch.new_identities], now
        )

        holders = [final(profile_id) for profile_id in batch.assigned]
        rows = [(*item.row, owner) for item, owner in zip(batch.planned, holders, strict=True)]
        # In arrival order: ids break timestamp ties on the timeline. Two writers storing
        # the same resent events in different orders may deadlock; PostgreSQL detects it
        # and the transaction is retried.
        event_store.insert_events(conn, rows)
        # The segment changes the events caused, each also an Audience event.
        if batch.earlier is not None:
            self.segments.record(conn, *batch.earlier, "event")
        if batch.settlement is not None:
            self.segments.record(conn, batch.settlement, now, "event")
        profile_store.record_decisions(
            conn, [(final(p), ident, reason, mid) for p, ident, reason, mid in batch.dropped], now
        )
        # Only the profiles this batch changed: an owner found for an identifier that was
        # then dropped is left as it was.
        changed = set(holders) | dues.keys()
        profile_store.update_profiles(
            conn,
            [s for pid, s in batch.live.items() if pid in changed and pid not in batch.created],
            now,
            dues,
        )
        result.accepted = len(rows)
        result.profile_ids = holders

    def _settle(self, conn: Connection, batch: _Batch) -> Settlement | None:
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


@dataclass(slots=True)
class _Batch:
    """What a batch does, worked out in memory before it is written."""

    source_id: str
    planned: list[_Planned]
    now: datetime
    catalogue: Catalogue
    # The identifiers it names and the profiles that owned them.
    keys: set[tuple[str, str]]
    existing: set[str]
    # Worked out before its turn: what it was worked out from, for `_stale`. The owner of
    # each identifier, the identifiers of limited types each profile held, each profile
    # as read, and its consent history.
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


def _consents(message: Message, source_id: str) -> list[ConsentDecision]:
    return consents_from_message(
        message.context, message.timestamp, source_id, received_at=message.received_at
    )


def _fingerprints(states: Mapping[str, ProfileState]) -> dict[str, bytes]:
    """Each profile as read, to tell whether it was written meanwhile."""
    return {
        s.id: orjson.dumps(
            (s.traits, s.computed, s.first_seen, s.last_seen), option=orjson.OPT_NON_STR_KEYS
        )
        for s in states.values()
    }


def _by_profile(rows: Iterable[tuple[str, str, str]]) -> dict[str, list[tuple[str, str]]]:
    held: dict[str, list[tuple[str, str]]] = {}
    for id_type, value, profile_id in rows:
        held.setdefault(profile_id, []).append((id_type, value))
    for values in held.values():
        values.sort()
    return held


class _Links:
    """Which of a batch's events, identifiers and profiles belong to one person: joined
    sets, each led by one of its members (union-find)."""

    def __init__(self) -> None:
        self._leader: dict[Hashable, Hashable] = {}

    def find(self, node: Hashable) -> Hashable:
        leader = self._leader
        leader.setdefault(node, node)
        while leader[node] != node:
            # Halving the path: each node visited points two steps on.
            leader[node] = leader[leader[node]]
            node = leader[node]
        return node

    def join(self, *nodes: Hashable | None) -> None:
        first = None
        for node in nodes:
            if node is None:
                continue
            leader = self.find(node)
            if first is None:
                first = leader
            elif leader != first:
                self._leader[leader] = first
