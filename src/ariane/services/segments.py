"""Segments and computed traits: the service the rest of Ariane calls, which evaluates
memberships live, inside ingestion, and fires the timers of time-based conditions.

Ingestion calls the catalogue's `fold` for each event and `settle` once per batch,
inside its write transaction; timers fire through `fire_due`, also one transaction per
round. Every membership change is recorded (in the profile, and as a row of
`segment_changes`, which is also its `Audience Entered/Exited` event) in the transaction
that decides it, under the lock of the profile, so that a change is recorded once even
with several processes at work. `catch_up` applies the recorded changes to the
memberships and history by segment, and puts their messages in the outbox, in bulk,
before anything reads them.

The rest is in modules of its own, which this service composes: the catalogue in force
(`segment_catalogue`), the definitions and their backfill (`segment_definitions`,
`segment_backfill`), definitions as code (`segments_as_code`), and the reads of members,
history and previews (`segment_members`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ariane.domain.clock import iso
from ariane.domain.consent import ConsentDecision
from ariane.domain.profiles import ProfileState
from ariane.domain.segments import Catalogue, Touch, Transition
from ariane.services.segment_catalogue import Catalogues, latest_consents
from ariane.services.segment_definitions import SegmentDefinitions
from ariane.services.segment_members import SegmentMembers
from ariane.services.segments_as_code import SegmentsAsCode
from ariane.storage import profiles as profile_store
from ariane.storage import segments as store
from ariane.storage.database import Connection, Database


@dataclass(slots=True)
class Settlement:
    transitions: list[Transition] = field(default_factory=list)
    # The profiles whose timer moved, and to when: written with them
    # (`profile_store.update_profiles`).
    dues: dict[str, datetime | None] = field(default_factory=dict)
    # The transitions' rows, when built before the write transaction (`prepare`).
    rows: store.TransitionRows | None = None


class SegmentService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock
        self.catalogues = Catalogues()
        self.memberships = SegmentMembers(db, clock, self.catalogues)
        self.definitions = SegmentDefinitions(db, clock, self.memberships)
        self.as_code = SegmentsAsCode(db, self.catalogues, self.definitions)
        # The segments whose entries and exits the bus is told of as they are decided,
        # in the transaction that decides them: those a journey or a destination reacts
        # to. The others' are told when they are applied (`catch_up`).
        self.told_at_once: Callable[[], Collection[str]] = frozenset

    def catalogue(self, conn: Connection, *, hold: bool = False) -> Catalogue:
        """The definitions in force for this transaction (`Catalogues.current`)."""
        return self.catalogues.current(conn, hold=hold)

    # --- live evaluation, inside ingestion's transaction ------------------------------------

    def settle(
        self,
        catalogue: Catalogue,
        touched: Mapping[str, tuple[ProfileState, Touch]],
        now: datetime,
        consents: Mapping[str, Mapping[str, ConsentDecision]],
    ) -> Settlement:
        """Evaluate what changed for each person; `record` writes the outcome."""
        settlement = Settlement()
        if not catalogue.order:
            for state, _ in touched.values():
                state.computed.pop("segments", None)
            return settlement
        stamp = iso(now)
        for profile_id, (state, touch) in touched.items():
            before = state.computed.get("due")
            which = catalogue.affected(touch)
            changes, due = catalogue.settle(state, which, now, consents.get(profile_id), stamp)
            settlement.transitions += changes
            if state.computed.get("due") != before:
                settlement.dues[profile_id] = due
        return settlement

    def prepare(self, settlement: Settlement, now: datetime, cause: str) -> None:
        """Build the rows `record` will write at `now`, before the write transaction."""
        settlement.rows = store.transition_rows(
            self.db, settlement.transitions, now, cause, self.told_at_once()
        )

    def record(self, conn: Connection, settlement: Settlement, now: datetime, cause: str) -> None:
        """Write the transitions; the timers go with the profiles (`Settlement.dues`)."""
        rows = settlement.rows
        if rows is None or (rows.at, rows.cause) != (now, cause):
            rows = store.transition_rows(
                self.db, settlement.transitions, now, cause, self.told_at_once()
            )
        store.record_transitions(conn, rows)

    def reevaluate(
        self,
        conn: Connection,
        states: Mapping[str, ProfileState],
        touch: Touch,
        now: datetime,
        cause: str,
    ) -> list[Transition]:
        """After a change outside ingestion, to profiles the caller has locked."""
        catalogue = self.catalogue(conn)
        if not catalogue.order:
            return []
        touched = {pid: (state, touch) for pid, state in states.items()}
        settlement = self.settle(catalogue, touched, now, self.consents(conn, catalogue, touched))
        self.record(conn, settlement, now, cause)
        profile_store.update_profiles(conn, list(states.values()), now, settlement.dues)
        return settlement.transitions

    def consents(
        self,
        conn: Connection,
        catalogue: Catalogue,
        touched: Mapping[str, Any],
    ) -> dict[str, dict[str, ConsentDecision]]:
        return latest_consents(conn, catalogue, touched)

    # --- timers ---------------------------------------------------------------------------

    def fire_due(self, limit: int = 500) -> int:
        """Evaluate the profiles whose timer is due; how many were."""

        def work(conn: Connection) -> int:
            now = self.clock()
            catalogue = self.catalogue(conn, hold=True)
            claimed = profile_store.claim_due(conn, now, limit)
            if not claimed:
                return 0
            states = profile_store.lock_profiles(conn, claimed)
            timed = catalogue.timed()
            touched = {pid: (states[pid], Touch()) for pid in sorted(states)}
            consents = self.consents(conn, catalogue, touched)
            transitions: list[Transition] = []
            dues: dict[str, datetime | None] = {}
            for profile_id, (state, _) in touched.items():
                changes, dues[profile_id] = catalogue.settle(
                    state, timed, now, consents.get(profile_id)
                )
                transitions += changes
            rows = store.transition_rows(self.db, transitions, now, "time", self.told_at_once())
            store.record_transitions(conn, rows)
            profile_store.update_profiles(conn, list(states.values()), now, dues)
            return len(claimed)

        return self.db.write(work)

    def fire_and_apply(self, apply_every: float = 0) -> int:
        """A round of the segment timers' job: fire what is due, then apply the changes
        recorded to memberships and their history once the oldest of them has waited
        `apply_every` seconds (the longer, the more each round writes at once; where
        several processes run the job, the first to find them old enough applies them
        all). How many timers and changes that was."""
        fired = 0
        while done := self.fire_due():
            fired += done
        return fired + self.catch_up(waited=apply_every)

    def catch_up(self, *, waited: float = 0) -> int:
        """Apply the changes recorded to memberships and history
        (`SegmentMembers.catch_up`)."""
        return self.memberships.catch_up(waited=waited)

    # --- definitions ------------------------------------------------------------------------

    def list_segments(self) -> list[dict[str, Any]]:
        return self.definitions.list_segments()

    def get_segment(self, key: str) -> dict[str, Any]:
        return self.definitions.get_segment(key)

    def save_segment(
        self, name: Any, description: Any, condition: Any, *, key: str | None = None
    ) -> dict[str, Any]:
        return self.definitions.save_segment(name, description, condition, key=key)

    def delete_segment(self, key: str) -> None:
        self.definitions.delete_segment(key)

    def list_computed(self) -> list[dict[str, Any]]:
        return self.definitions.list_computed()

    def save_computed(
        self, name: Any, definition: Any, *, exists: bool | None = None
    ) -> dict[str, Any]:
        return self.definitions.save_computed(name, definition, exists=exists)

    def delete_computed(self, name: str) -> None:
        self.definitions.delete_computed(name)

    def apply(self, document: Any) -> dict[str, list[str]]:
        return self.as_code.apply(document)

    # --- reads ------------------------------------------------------------------------------

    def preview(self, condition: Any, sample: int = 20) -> dict[str, Any]:
        return self.memberships.preview(condition, sample)

    def members(self, key: str, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        return self.memberships.members(key, limit=limit, cursor=cursor)

    def all_members(self, key: str) -> Iterator[tuple[str, datetime]]:
        return self.memberships.all_members(key)

    def history(self, key: str, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        return self.memberships.history(key, limit=limit, cursor=cursor)

    def profile_view(self, conn: Connection, state: ProfileState, now: datetime) -> dict[str, Any]:
        return self.memberships.profile_view(conn, state, now)
