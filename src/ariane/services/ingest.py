"""Ingestion: validate a batch, resolve each event to a person, fold it into the profile.

Everything a batch changes is written in one transaction, and the caller acknowledges
only after it commits. The batch is processed in bulk: one query finds every known
identifier, one locks every profile concerned, one statement writes each kind of row.
What each event does is worked out in memory first (`services.batch_plan`), ahead of
the turn to write where writers take turns (`services.ingest_turns`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ariane.domain.errors import InvalidEvent
from ariane.domain.identity import (
    Identifier,
    extract_identifiers,
    identifiers_of_rejected,
    no_identifier,
    previous_identifiers,
)
from ariane.domain.messages import check_batch, parse_message
from ariane.services.batch_plan import BatchPlan, BatchPlanner, PlannedEvent
from ariane.services.ingest_turns import Turns
from ariane.services.segments import SegmentService
from ariane.settings import Settings
from ariane.storage import bus as bus_store
from ariane.storage import events as event_store
from ariane.storage import profiles as profile_store
from ariane.storage.database import Connection, Database


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    merges: int = 0
    problems: list[InvalidEvent] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)


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
        self.planner = BatchPlanner(settings.identity, segments)
        self.turns = Turns(db, clock, segments, self.planner)

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
        planned: list[PlannedEvent] = []
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
            planned.append(PlannedEvent(message, identifiers, previous, profile_id=known))
        result.quarantined = len(rejected)
        rows = event_store.event_rows(self.db, source_id, [p.message for p in planned])
        for item, row in zip(planned, rows, strict=True):
            item.row = row

        # Where worker processes take turns to write (SQLite), the batch is first worked
        # out from a snapshot, outside the turn; the turn then checks that what it read
        # still holds and only writes. A batch that cannot be worked out beforehand, or
        # that another writer made stale meanwhile, is worked out in the turn.
        prepared = (
            self.turns.prepare(source_id, planned)
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
                stale = self.turns.stale(conn, prepared, now)
                if stale is not None and len(stale) < len(planned):
                    mended = self.turns.mend(conn, prepared, stale, now)
                    self._write(conn, source_id, mended, outcome)
                    return outcome
            # Resent events are the exception: the first attempt does not look for them,
            # and the event insert, which counts what it stored, sends a batch holding one
            # back here for a second attempt that does.
            self._apply(conn, source_id, planned, outcome, find_resent=attempts > 1)
            return outcome

        return self.db.write(work)

    def _apply(
        self,
        conn: Connection,
        source_id: str,
        planned: list[PlannedEvent],
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

        batch = self.planner.plan_in_turn(conn, source_id, planned, self.clock())
        self._write(conn, source_id, batch, result)

    def _write(
        self, conn: Connection, source_id: str, batch: BatchPlan, result: IngestResult
    ) -> None:
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
        bus_store.record(conn, batch.computed_changed)
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
