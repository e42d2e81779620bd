"""Backfill: bringing every live profile to new definitions, in the transaction that
saves them. A computed trait new to the catalogue is folded from the events history, and
the segments changed (and those that refer to them) are evaluated again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from ariane.domain import computed as comp
from ariane.domain.computed import Feature
from ariane.domain.conditions import segment_references
from ariane.domain.profiles import ProfileState
from ariane.domain.segments import Catalogue, Touch, Transition, due_at
from ariane.services.segment_catalogue import latest_consents
from ariane.storage import events as event_store
from ariane.storage import profiles as profile_store
from ariane.storage import segments as store
from ariane.storage.database import Connection, Database

_CHUNK = 500


def backfill(
    db: Database,
    conn: Connection,
    old: Catalogue,
    new: Catalogue,
    changed: Sequence[str],
    now: datetime,
) -> None:
    """Bring every live profile from the `old` catalogue to the `new`, where the segments
    `changed` were saved. Profiles are locked chunk by chunk, in id order, as ingestion
    does."""
    fresh = {k: f for k, f in new.features.items() if k not in old.features}
    reach = _dependents(new, set(changed))
    which = [s for s in new.order if s.name in reach]
    after: str | None = None
    while True:
        ids = profile_store.live_ids(conn, after=after, limit=_CHUNK)
        if not ids:
            break
        after = ids[-1]
        states = profile_store.lock_profiles(conn, ids)
        for state in states.values():
            features = state.computed.setdefault("features", {})
            # A feature no definition uses any more goes, and so does what is left of
            # one being computed afresh (a definition deleted, then made again).
            for key in [k for k in features if k not in new.features or k in fresh]:
                del features[key]
        if fresh:
            _fold_history(conn, states, fresh, now)
        touched = {pid: (states[pid], Touch()) for pid in sorted(states)}
        transitions: list[Transition] = []
        consents = latest_consents(conn, new, touched)
        dues: dict[str, datetime | None] = {}
        for pid, (state, _) in touched.items():
            before = due_at(state)
            changes, due = new.settle(state, which, now, consents.get(pid))
            transitions += changes
            if due != before:
                dues[pid] = due
        store.record_transitions(conn, store.transition_rows(db, transitions, now, "backfill"))
        profile_store.update_profiles(conn, list(states.values()), now, dues)


def _fold_history(
    conn: Connection,
    states: Mapping[str, ProfileState],
    fresh: Mapping[str, Feature],
    now: datetime,
) -> None:
    by_event: dict[str, list[tuple[str, Feature]]] = {}
    for key, feature in fresh.items():
        by_event.setdefault(feature.event, []).append((key, feature))
    history = event_store.tracks_of(conn, sorted(states), sorted(by_event))
    for profile_id, name, message_id, at, payload in history:
        state = states[profile_id]
        comp.fold_event(
            state.computed.setdefault("features", {}),
            by_event[name],
            at,
            message_id,
            payload.get("properties") or {},
            now,
            state.first_seen,
        )


def _dependents(catalogue: Catalogue, names: set[str]) -> set[str]:
    """The segments named, and those that refer to them, however indirectly."""
    reach = set(names)
    for segment in catalogue.order:
        if segment_references(segment.condition) & reach:
            reach.add(segment.name)
    return reach
