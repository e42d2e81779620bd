"""Batches worked out ahead of their turn to write.

Where worker processes take turns to write (SQLite), a batch is first worked out from a
snapshot, outside the turn; the turn then checks that what it read still holds, works
out again only the people whose data changed meanwhile, and writes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from datetime import datetime
from typing import Any

from ariane.domain.clock import iso
from ariane.services.batch_plan import (
    BatchPlan,
    BatchPlanner,
    PlannedEvent,
    by_profile,
    consents_of,
    fingerprints,
)
from ariane.services.segments import SegmentService, Settlement
from ariane.storage import consents as consent_store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Connection, Database, RetryTransaction


class Turns:
    """Works a batch out ahead of its turn to write; in the turn, checks and mends it."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        segments: SegmentService,
        planner: BatchPlanner,
    ) -> None:
        self.db = db
        self.clock = clock
        self.segments = segments
        self.planner = planner

    def prepare(self, source_id: str, planned: list[PlannedEvent]) -> BatchPlan | None:
        """The batch worked out from a snapshot, when it merges no stored profiles and
        records no consent: what it writes then depends on nothing but what it read."""
        if not planned or any(consents_of(p.message, source_id) for p in planned):
            return None
        with self.db.read() as conn:
            catalogue = self.segments.catalogue(conn)
            batch = self.planner.plan(
                conn, source_id, planned, self.clock(), catalogue, fingerprint=True
            )
            if batch.merge_log:
                return None
            batch.settlement = self.planner.settle(conn, batch)
            batch.consent_histories = self._consent_histories(conn, batch, batch.existing)
        if batch.settlement is not None:
            self.segments.prepare(batch.settlement, batch.now, "event")
        return batch

    def stale(self, conn: Connection, batch: BatchPlan, now: datetime) -> set[int] | None:
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
        held = by_profile(
            profile_store.held_identifiers(conn, existing, self.planner.limited_types)
        )
        histories = self._consent_histories(conn, batch, existing)
        changed: set[Any] = {key for key in batch.keys if owners.get(key) != batch.owners.get(key)}
        prints = fingerprints(existing)
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

    def mend(self, conn: Connection, batch: BatchPlan, stale: set[int], now: datetime) -> BatchPlan:
        """`batch` with the events at `stale` worked out again at `now`, in the turn.

        The result holds what the write reads, nothing more: it is not checked again.
        """
        if not stale:
            return batch
        planned = [batch.planned[i] for i in sorted(stale)]
        again = self.planner.plan_in_turn(conn, batch.source_id, planned, now)
        kept = {batch.final(p) for i, p in enumerate(batch.assigned) if i not in stale}
        mended = BatchPlan(
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
        mended.computed_changed = [
            c for c in batch.computed_changed if c.profile_id in kept
        ] + again.computed_changed
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
        self, conn: Connection, batch: BatchPlan, profile_ids: Collection[str]
    ) -> dict[str, Any]:
        if batch.settlement is None or not batch.catalogue.uses_consent:
            return {}
        return {p: consent_store.history(conn, p) for p in sorted(profile_ids)}


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
