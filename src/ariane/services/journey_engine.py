"""The journey engine: people enter, move from step to step, wait, and leave.

It is three handlers of the bus and a timer:

- on the events log (`on_events`): an event enters people in the journeys it starts,
  ends the waits it answers, takes people out of journeys it exits, and counts as the
  goal of those who entered within the goal's window;
- on the outbox's audience changes (`on_audiences`): entering a segment enters people,
  answers waits for it and counts as a goal; leaving one exits;
- every moment (`fire_due`): the enrollments whose delay ran out, whose wait timed out,
  or whose message was deferred past quiet hours move on. These timers are rows of
  `enrollments` with a due time, claimed like the segment timers: any number of
  processes share them, each row moved on by one of them, once.

A person moves through as many steps as they can in one transaction: up to a step that
waits (a delay, a wait, quiet hours) or the end. A send step makes a message due under
its deterministic send key (journey, version, enrollment, step, occurrence), in that same
transaction, and records `MessageQueued` for its channel's handler (`services.messaging`);
the holdout's messages are recorded `held`, with the moment they would have been sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ariane.domain.clock import parse_timestamp
from ariane.domain.conditions import Facts, compile_condition
from ariane.domain.consent import ConsentDecision, latest_decisions
from ariane.domain.definitions import keyed
from ariane.domain.errors import DomainError, NotFound
from ariane.domain.events import (
    AudienceChange,
    DomainEvent,
    MessageQueued,
    MessageSkipped,
    SegmentEntered,
    StoredEvent,
)
from ariane.domain.journeys import (
    EXIT,
    MAX_STEPS_AT_ONCE,
    Exit,
    Journey,
    Step,
    in_global_control,
    in_holdout,
    last_moment,
    send_key,
    variant_of,
)
from ariane.domain.local_time import (
    before_date,
    day_start,
    next_anniversary,
    next_time_of_day,
    zone_of,
)
from ariane.domain.messages import INTERNAL_SOURCE
from ariane.domain.predicates import lookup
from ariane.domain.profiles import ProfileState
from ariane.services.channels import Channels
from ariane.services.journeys import Journeys
from ariane.services.segments import SegmentService
from ariane.storage import bus as bus_store
from ariane.storage import consents as consent_store
from ariane.storage import journeys as store
from ariane.storage import messages as message_store
from ariane.storage import profiles as profile_store
from ariane.storage.bus import Entry
from ariane.storage.database import Connection, Database

log = logging.getLogger(__name__)

# Treated people are sent their messages; the holdout and the global control group
# follow the journey without being sent its marketing messages.
TREATED, HOLDOUT, CONTROL = "treated", "holdout", "control"


@dataclass(slots=True)
class _Person:
    """What steps read of a person, loaded once per transaction when first needed."""

    state: ProfileState
    consents: dict[str, ConsentDecision]


@dataclass(slots=True)
class _Round:
    """One transaction's work: the people read, the steps logged, what happened."""

    conn: Connection
    now: datetime
    people: dict[str, _Person | None] = field(default_factory=dict)
    # Each (journey, person, key)'s last entry and whether it is open, for the (journey,
    # person) pairs in `entries_read`: read for a whole batch at once, kept up to date
    # as people enter, read again from the database once one of theirs ends.
    entries: dict[tuple[str, str, str], tuple[datetime, bool]] = field(default_factory=dict)
    entries_read: set[tuple[str, str]] = field(default_factory=set)
    logged: list[dict[str, Any]] = field(default_factory=list)
    happened: list[DomainEvent] = field(default_factory=list)
    # Where each enrollment moved, by id, not written yet: written in one statement per
    # set of columns before anything reads enrollments again, and at the round's end.
    saves: dict[int, dict[str, Any]] = field(default_factory=dict)


class JourneyEngine:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        journeys: Journeys,
        channels: Channels,
        segments: SegmentService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.journeys = journeys
        self.channels = channels
        self.segments = segments
        # The latest scheduled moment each scheduled journey's members were entered at.
        self._scheduled: dict[str, datetime] = {}
        # The event names the journeys in use react to, and the journeys they are of.
        self._names_of: Mapping[tuple[str, int], Journey] | None = None
        self._names: frozenset[str] = frozenset()

    # --- the bus's handlers ----------------------------------------------------------------

    def asleep(self) -> bool:
        """Whether no journey is in use, as stored now: the dispatcher asks again after
        reading the log's head, so that a journey declared meanwhile is seen. With
        journeys in use it is awake, and each event is checked as it is read (`wants`)."""
        if self.journeys.in_use():
            return False
        self.journeys.fresh_for(self.clock())
        return not self.journeys.in_use()

    def wants(self, entry: Entry) -> bool:
        """Whether a stored event is one a journey in use reacts to, among the journeys
        declared up to when it was received."""
        event = entry.event
        if not (
            isinstance(event, StoredEvent)
            and event.type == "track"
            and event.source_id != INTERNAL_SOURCE
        ):
            return False
        self.journeys.fresh_for(event.received_at)
        return event.event in self._event_names()

    def _event_names(self) -> frozenset[str]:
        in_use = self.journeys.in_use()
        if self._names_of is not in_use:
            names: set[str] = set()
            for journey in in_use.values():
                names |= journey.events()
            self._names_of, self._names = in_use, frozenset(names)
        return self._names

    def on_events(self, entries: Sequence[Entry]) -> None:
        found = [
            entry.event
            for entry in entries
            if self.wants(entry) and isinstance(entry.event, StoredEvent)
        ]
        if found:
            self.db.write(lambda conn: self._events(conn, found))

    def on_audiences(self, entries: Sequence[Entry]) -> None:
        changes = [entry.event for entry in entries if isinstance(entry.event, AudienceChange)]
        if changes:
            self.journeys.fresh_for(max(change.at for change in changes))
        in_use = self.journeys.in_use()
        names: set[str] = set()
        for journey in in_use.values():
            names |= journey.segments()
        found = [
            entry.event
            for entry in entries
            if isinstance(entry.event, AudienceChange) and entry.event.segment in names
        ]
        if found:
            self.db.write(lambda conn: self._audiences(conn, found))

    def fire_due(self, limit: int = 200) -> int:
        """Move on the enrollments whose time has come; how many there were."""

        def work(conn: Connection) -> int:
            run = _Round(conn, self.clock())
            due = store.claim_due(conn, run.now, limit)
            for row in due:
                journey = self.journeys.version(row["journey_id"], row["version"])
                if journey is None:
                    continue
                if row["status"] == "waiting":
                    step = journey.step(row["step"])
                    if step is not None:
                        self._log(run, row, "timeout")
                        self._go(run, journey, row, journey.target(step, step.on_timeout))
                        continue
                self._advance(run, journey, row)
            self._finish(run)
            return len(due)

        return self.db.write(work)

    # --- entering on a schedule -----------------------------------------------------------

    def run_schedules(self, chunk: int = 500) -> int:
        """Enter the members of each scheduled journey's segment at its latest moment, if
        that has not been done: each moment is an entry key of its own, so a person enters
        once per moment, whatever the processes. How many entered."""
        entered = 0
        zone = zone_of(self.channels.policies().timezone, "UTC")
        now = self.clock()
        for journey in self.journeys.current().values():
            entry = journey.entry
            since = self.journeys.since(journey.id)
            if entry.kind != "schedule" or entry.segment is None or since is None:
                continue
            moment = last_moment(since, now, entry.every, entry.at, zone)
            if moment is None or self._scheduled.get(journey.id) == moment:
                continue
            key = moment.isoformat()
            members = [person for person, _ in self.segments.all_members(entry.segment)]
            for start in range(0, len(members), chunk):
                entered += self._enter_all(journey, members[start : start + chunk], key)
            self._scheduled[journey.id] = moment
        return entered

    def _enter_all(self, journey: Journey, people: Sequence[str], key: str) -> int:
        context: dict[str, Any] = {"name": None, "properties": {}, "scheduled_at": key}

        def work(conn: Connection) -> int:
            run = _Round(conn, self.clock())
            self._read_ahead(run, [(journey.id, person) for person in people])
            made = sum(
                self._enter(run, journey, person, key, f"schedule|{key}|{person}", context)
                is not None
                for person in people
            )
            self._finish(run)
            return made

        return self.db.write(work)

    # --- entering through the API ---------------------------------------------------------

    def enter(
        self,
        ident: str,
        profile_id: str,
        key: str = "",
        properties: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        journey = self.journeys.current().get(ident)
        if journey is None:
            raise NotFound(f"no enabled journey {ident!r}", field="journey")

        def work(conn: Connection) -> int | None:
            run = _Round(conn, self.clock())
            found = profile_store.resolve_profile_id(conn, profile_id)
            if found is None:
                raise NotFound(f"no profile {profile_id!r}", field="profile_id")
            made = self._enter(
                run,
                journey,
                found,
                key,
                f"api|{found}|{key}|{run.now.isoformat()}",
                {"name": None, "properties": dict(properties or {})},
            )
            self._finish(run)
            return made

        made = self.db.write(work)
        return {"journey": ident, "enrollment": made, "entered": made is not None}

    def enter_checked(self, ident: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """`enter` with the API's body: {profile_id, key, properties}."""
        node = keyed(body, "body", ("profile_id", "key", "properties"))
        person, key = node.get("profile_id"), node.get("key", "")
        properties = node.get("properties", {})
        if not isinstance(person, str) or not person:
            raise DomainError("needs the profile id to enter", field="profile_id")
        if not isinstance(key, str) or len(key) > 200:
            raise DomainError("needs text of at most 200 characters", field="key")
        if not isinstance(properties, Mapping):
            raise DomainError("needs an object", field="properties")
        return self.enter(ident, person, key, properties)

    def migrate_checked(self, ident: str, body: Mapping[str, Any]) -> dict[str, Any]:
        node = keyed(body, "body", ("from_version", "to_version"))
        versions = [node.get("from_version"), node.get("to_version")]
        for name, value in zip(("from_version", "to_version"), versions, strict=True):
            if value is None and name == "to_version":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DomainError("needs a version number", field=name)
        moved = self.migrate(ident, versions[0], versions[1])  # type: ignore[arg-type]
        return {"journey": ident, "moved": moved}

    # --- admin ----------------------------------------------------------------------------

    def move_on(self, enrollment: int) -> dict[str, Any]:
        """Move a waiting or delayed person on now, as if their time had come."""

        def work(conn: Connection) -> dict[str, Any]:
            run = _Round(conn, self.clock())
            rows = store.lock(conn, [enrollment])
            if not rows:
                raise NotFound(f"no open enrollment {enrollment}", field="enrollment")
            row = rows[0]
            journey = self._journey_of(row)
            step = journey.step(row["step"])
            self._log(run, row, "moved", "moved on by an admin")
            if step is None:
                self._end(run, row, "done", "moved on by an admin")
            else:
                where = step.on_timeout if row["status"] == "waiting" else step.next
                self._go(run, journey, row, journey.target(step, where), logged=True)
            self._finish(run)
            return _shown(row)

        return self.db.write(work)

    def take_out(self, enrollment: int) -> dict[str, Any]:
        def work(conn: Connection) -> dict[str, Any]:
            run = _Round(conn, self.clock())
            rows = store.lock(conn, [enrollment])
            if not rows:
                raise NotFound(f"no open enrollment {enrollment}", field="enrollment")
            self._log(run, rows[0], "exited", "taken out by an admin")
            self._end(run, rows[0], "exited", "taken out by an admin")
            self._finish(run)
            return _shown(rows[0])

        return self.db.write(work)

    def migrate(self, ident: str, from_version: int, to_version: int | None = None) -> int:
        """Move the people on `from_version` to `to_version` (the current one), each to
        the step of the same id; those whose step the new version has not are taken
        out. How many moved."""
        target = to_version or self.journeys.current_version(ident)
        if target is None:
            raise NotFound(f"no journey {ident!r}", field="journey")
        new = self.journeys.version(ident, target)
        if new is None:
            raise NotFound(f"no version {target} of {ident!r} in use", field="to_version")

        def work(conn: Connection) -> int:
            run = _Round(conn, self.clock())
            moved = 0
            after = 0
            while rows := store.at_step(conn, ident, None, after=after, limit=500):
                after = rows[-1]["id"]
                for row in store.lock(
                    conn, [r["id"] for r in rows if r["version"] == from_version]
                ):
                    if new.step(row["step"]) is None:
                        self._end(
                            run, row, "exited", f"step {row['step']} is not in version {target}"
                        )
                        continue
                    store.update(conn, row["id"], {"version": target, "updated_at": run.now})
                    moved += 1
            self._finish(run)
            return moved

        return self.db.write(work)

    def waiting(
        self, ident: str, step: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = store.at_step(conn, ident, step, after=after, limit=limit)
        return [_shown(row) for row in rows]

    def messages(
        self, ident: str, status: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The journey's messages (of one status: `unknown`, `failed`...), oldest first."""
        with self.db.read() as conn:
            rows = message_store.of_journey(conn, ident, status=status, after=after, limit=limit)
        return [_message_shown(row) for row in rows]

    def report(self, ident: str) -> dict[str, Any]:
        """Per step: who is there now, and what the step did to whom, with the reasons
        of the skips; per arm, who entered and converted."""
        with self.db.read() as conn:
            open_counts = store.open_counts(conn, ident)
            step_counts = store.step_counts(conn, ident)
            reasons = store.skip_reasons(conn, ident)
            ended = store.ended_counts(conn, ident)
            arms = store.arm_counts(conn, ident)
            conversions = store.conversion_counts(conn, ident)
            sent = message_store.status_counts(conn, ident)
        journey = self.journeys.current().get(ident) or next(
            (j for (i, _), j in sorted(self.journeys.in_use().items(), reverse=True) if i == ident),
            None,
        )
        if journey is None:
            raise NotFound(f"no journey {ident!r} in use", field="journey")
        steps = []
        for step in journey.steps:
            messages: dict[str, int] = {}
            for (name, status, _), count in sent.items():
                if name == step.id:
                    messages[status] = messages.get(status, 0) + count
            steps.append(
                {
                    "id": step.id,
                    "kind": step.kind,
                    "waiting": open_counts.get((step.id, "waiting"), 0)
                    + open_counts.get((step.id, "active"), 0),
                    "moved_on": step_counts.get((step.id, "moved"), 0),
                    "timed_out": step_counts.get((step.id, "timeout"), 0),
                    "exited": step_counts.get((step.id, "exited"), 0),
                    "skipped": step_counts.get((step.id, "skipped"), 0),
                    "skipped_because": {
                        reason: count
                        for (name, reason), count in reasons.items()
                        if name == step.id
                    },
                    "messages": messages,
                }
            )
        return {
            "journey": ident,
            "steps": steps,
            "ended": ended,
            "arms": {
                arm: {
                    "entered": count,
                    "converted": conversions.get(arm, (0, 0.0))[0],
                    "revenue": conversions.get(arm, (0, 0.0))[1],
                }
                for arm, count in sorted(arms.items())
            },
        }

    # --- reacting -------------------------------------------------------------------------

    def _events(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        run = _Round(conn, self.clock())
        owners = profile_store.resolve_profile_ids(conn, {e.profile_id for e in events})
        in_use = self.journeys.in_use()
        current = self.journeys.current()
        reacts = _Reacts.of(in_use.values())
        entering = [
            (journey.id, person)
            for event in events
            if (person := owners.get(event.profile_id)) is not None
            for journey in current.values()
            if journey.entry.event is not None and journey.entry.event.matches(event)
        ]
        self._read_ahead(run, entering)
        for event in events:
            person = owners.get(event.profile_id)
            if person is None:
                continue
            self._goals(run, person, in_use, event=event)
            exits = event.event in reacts.exit_events
            for row in store.open_of(self._written(run), [person]) if exits else ():
                journey = in_use.get((row["journey_id"], row["version"]))
                if journey is None:
                    continue
                reason = _exit_by_event(journey, row, event)
                if reason is not None:
                    self._log(run, row, "exited", reason)
                    self._end(run, row, "exited", reason)
            waits = [f"event:{event.event}"] if event.event in reacts.wait_events else []
            for row in store.waiting_for(self._written(run), [person], waits):
                journey = in_use.get((row["journey_id"], row["version"]))
                step = journey.step(row["step"]) if journey else None
                if journey is None or step is None or step.event is None:
                    continue
                if not step.event.matches(event):
                    continue
                if step.keyed and row["entry_key"] != journey.entry.key_of(event):
                    continue
                self._log(run, row, "moved")
                self._go(run, journey, row, journey.target(step, step.on_event), logged=True)
            for journey in current.values():
                entry = journey.entry
                if not self._after_start(journey, event.received_at):
                    continue
                if entry.kind == "event" and entry.event is not None and entry.event.matches(event):
                    context = {
                        "name": event.event,
                        "properties": dict(event.payload.get("properties") or {}),
                        "timezone": (event.payload.get("context") or {}).get("timezone"),
                        "timestamp": event.timestamp.isoformat(),
                    }
                    self._enter(run, journey, person, entry.key_of(event), event.event_id, context)
        self._finish(run)

    def _audiences(self, conn: Connection, changes: Sequence[AudienceChange]) -> None:
        run = _Round(conn, self.clock())
        owners = profile_store.resolve_profile_ids(
            conn, {c.profile_id for c in changes if c.profile_id}
        )
        in_use = self.journeys.in_use()
        current = self.journeys.current()
        reacts = _Reacts.of(in_use.values())
        entering = [
            (journey.id, person)
            for change in changes
            if isinstance(change, SegmentEntered)
            and (person := owners.get(change.profile_id or "")) is not None
            for journey in current.values()
            if journey.entry.kind == "segment" and journey.entry.segment == change.segment
        ]
        self._read_ahead(run, entering)
        for change in changes:
            person = owners.get(change.profile_id or "")
            if person is None:
                continue
            entered = isinstance(change, SegmentEntered)
            if entered:
                self._goals(run, person, in_use, segment=change.segment, at=change.at)
                waited = change.segment in reacts.wait_segments
                waits = [f"segment:{change.segment}"] if waited else []
                for row in store.waiting_for(self._written(run), [person], waits):
                    journey = in_use.get((row["journey_id"], row["version"]))
                    step = journey.step(row["step"]) if journey else None
                    if journey is None or step is None:
                        continue
                    self._log(run, row, "moved")
                    self._go(run, journey, row, journey.target(step, step.on_event), logged=True)
                for journey in current.values():
                    if not self._after_start(journey, change.at):
                        continue
                    if journey.entry.kind == "segment" and journey.entry.segment == change.segment:
                        entered_by: dict[str, Any] = {"segment": change.segment, "properties": {}}
                        self._enter(run, journey, person, "", change.event_id, entered_by)
            elif change.segment in reacts.exit_segments:
                for row in store.open_of(self._written(run), [person]):
                    journey = in_use.get((row["journey_id"], row["version"]))
                    if journey and any(e.left == change.segment for e in journey.exits):
                        reason = f"left segment {change.segment}"
                        self._log(run, row, "exited", reason)
                        self._end(run, row, "exited", reason)
        self._finish(run)

    def _after_start(self, journey: Journey, at: datetime) -> bool:
        since = self.journeys.since(journey.id)
        return since is not None and at >= since

    def _goals(
        self,
        run: _Round,
        person: str,
        in_use: Mapping[tuple[str, int], Journey],
        *,
        event: StoredEvent | None = None,
        segment: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Count the event (or the entry into `segment`) as the goal of the person's
        enrollments entered within their journey's goal window before it."""
        reached = {}
        for (ident, version), journey in in_use.items():
            goal = journey.goal
            if goal is None:
                continue
            by_event = event is not None and goal.event is not None and goal.event.matches(event)
            if by_event or (segment is not None and goal.segment == segment):
                reached[(ident, version)] = journey
        if not reached:
            return
        when = min(event.timestamp, event.received_at) if event else (at or run.now)
        widest = max(j.goal.within for j in reached.values() if j.goal)
        rows = store.converting(
            self._written(run), [person], {ident for ident, _ in reached}, when - widest
        )
        # An event converts one enrollment per journey: the one it names by the entry's
        # key (the order of that cart), else the latest entered; its revenue counts once.
        chosen: dict[str, dict[str, Any]] = {}
        for row in rows:
            goal_of = reached.get((row["journey_id"], row["version"]))
            if goal_of is None or goal_of.goal is None:
                continue
            if not row["entered_at"] <= when <= row["entered_at"] + goal_of.goal.within:
                continue
            named = event is not None and row["entry_key"] == goal_of.entry.key_of(event)
            best = chosen.get(row["journey_id"])
            if best is None or (named, row["entered_at"]) >= (best["named"], best["entered_at"]):
                chosen[row["journey_id"]] = {**row, "named": named}
        revenue = _revenue(event)
        for row in chosen.values():
            store.convert(
                run.conn,
                {
                    "enrollment_id": row["id"],
                    "journey_id": row["journey_id"],
                    "profile_id": person,
                    "arm": row["arm"],
                    "event_id": event.event_id if event else None,
                    "revenue": revenue,
                    "at": when,
                },
            )

    # --- moving people --------------------------------------------------------------------

    def _enter(
        self,
        run: _Round,
        journey: Journey,
        person: str,
        key: str,
        cause: str,
        context: Mapping[str, Any],
    ) -> int | None:
        last, active = self._last_entry(run, journey.id, person, key)
        if not journey.reentry.allows(last, active, run.now):
            return None
        version = self.journeys.live_version(journey.id) or 1
        arm = TREATED
        if in_global_control(person, self.channels.policies().global_control):
            arm = CONTROL
        elif in_holdout(person, journey.id, journey.holdout):
            arm = HOLDOUT
        row = {
            "journey_id": journey.id,
            "version": version,
            "profile_id": person,
            "entry_key": key,
            "active_key": store.active_key(journey.id, person, key),
            "entry_id": f"{journey.id}|{cause}",
            "arm": arm,
            "variants": {},
            "step": journey.first,
            "status": "active",
            "due_at": None,
            "waiting_for": None,
            "visits": {},
            "entry": dict(context),
            "entered_at": run.now,
            "updated_at": run.now,
        }
        made = store.enroll(run.conn, row)
        if made is None:
            return None
        row["id"] = made
        if (journey.id, person) in run.entries_read:
            run.entries[(journey.id, person, key)] = (run.now, True)
        self._log(run, row, "entered")
        self._advance(run, journey, row)
        return made

    def _go(
        self,
        run: _Round,
        journey: Journey,
        row: dict[str, Any],
        target: str,
        *,
        logged: bool = False,
    ) -> None:
        """Send the person to `target` and run from there."""
        if target == EXIT:
            self._end(run, row, "done", "reached the end")
            return
        row.update(step=target, status="active", due_at=None, waiting_for=None)
        self._advance(run, journey, row)

    def _advance(self, run: _Round, journey: Journey, row: dict[str, Any]) -> None:
        """Run the person's steps until one waits or the journey ends; save where."""
        for _ in range(MAX_STEPS_AT_ONCE):
            step = journey.step(row["step"])
            if step is None:
                self._end(run, row, "done", f"step {row['step']} is gone")
                return
            where = self._run_step(run, journey, row, step)
            if where is None:
                self._save(run, row)
                return
            visits = dict(row["visits"])
            visits[step.id] = visits.get(step.id, 0) + 1
            row["visits"] = visits
            target = journey.target(step, where)
            if target == EXIT:
                self._end(run, row, "done", "reached the end")
                return
            row.update(step=target, status="active", due_at=None, waiting_for=None)
        self._end(run, row, "exited", f"ran {MAX_STEPS_AT_ONCE} steps without waiting")

    def _run_step(
        self, run: _Round, journey: Journey, row: dict[str, Any], step: Step
    ) -> str | None:
        """Where the step sends the person (`next`, `exit`, a step id) once done; None
        while it waits (the row says until when, or for what)."""
        if step.kind == "exit":
            self._log(run, row, "moved")
            return EXIT
        if step.kind == "delay":
            if row["waiting_for"] == f"delay:{step.id}" and row["due_at"] <= run.now:
                self._log(run, row, "moved")
                return step.next
            until = self._delay_until(run, row, step)
            if until is None:
                self._log(run, row, "skipped", f"no date in {'.'.join(step.before_trait or ())}")
                return step.next
            if until <= run.now:
                self._log(run, row, "moved")
                return step.next
            row.update(status="active", due_at=until, waiting_for=f"delay:{step.id}")
            return None
        if step.kind == "wait":
            if step.segment is not None and self._in_segment(run, row["profile_id"], step.segment):
                self._log(run, row, "moved")
                return step.on_event
            assert step.timeout is not None
            what = f"segment:{step.segment}" if step.segment else f"event:{step.event.name}"  # type: ignore[union-attr]
            row.update(status="waiting", due_at=run.now + step.timeout, waiting_for=what)
            return None
        if step.kind == "split":
            assert step.condition is not None
            if self._holds(run, row["profile_id"], step):
                self._log(run, row, "moved", "then")
                return step.then
            self._log(run, row, "moved", "else")
            return step.otherwise
        if step.kind == "random":
            name, target = variant_of(row["profile_id"], journey.id, step)
            row["variants"] = {**row["variants"], step.id: name}
            self._log(run, row, "moved", f"variant {name}")
            return target
        return self._send(run, journey, row, step)

    def _send(self, run: _Round, journey: Journey, row: dict[str, Any], step: Step) -> str | None:
        occurrence = row["visits"].get(step.id, 0)
        key = send_key(journey.id, row["version"], row["id"], step.id, occurrence)
        held = row["arm"] != TREATED and step.category == "marketing"
        zone = self._zone(run, row)
        # The control arms meet quiet hours and caps as the treated do, so that the moment
        # and the count of what they would have been sent compare honestly.
        if journey.quiet is not None and step.category == "marketing":
            hours = journey.quiet.hours
            if hours.quiet(run.now, zone):
                if journey.quiet.then == "defer":
                    row.update(
                        status="active",
                        due_at=hours.next_allowed(run.now, zone),
                        waiting_for=f"quiet:{step.id}",
                    )
                    return None
                return self._skip(run, journey, row, step, key, "quiet hours")
        config = self.channels.config(step.channel)
        if config is None or not config.enabled:
            return self._skip(run, journey, row, step, key, f"channel {step.channel} is off")
        if step.category == "marketing":
            over = self._over_cap(run, row["profile_id"], step.channel, zone, held=held)
            if over is not None:
                return self._skip(run, journey, row, step, key, over)
        made = message_store.add(
            run.conn, self._message(run, journey, row, step, key, "held" if held else "queued")
        )
        if held:
            self._log(run, row, "moved", "held: the person is in the control group")
        elif made is not None:
            run.happened.append(
                MessageQueued(
                    event_id=f"queued-{key}",
                    profile_id=row["profile_id"],
                    at=run.now,
                    message=made,
                    channel=step.channel,
                )
            )
            self._log(run, row, "moved")
        return step.next

    def _skip(
        self, run: _Round, journey: Journey, row: dict[str, Any], step: Step, key: str, reason: str
    ) -> str:
        message = self._message(run, journey, row, step, key, "skipped")
        message["reason"] = reason
        if message_store.add(run.conn, message) is not None:
            run.happened.append(
                MessageSkipped(
                    event_id=f"skipped-{key}",
                    profile_id=row["profile_id"],
                    at=run.now,
                    properties=_message_properties(journey.id, step, key, reason=reason),
                )
            )
        self._log(run, row, "skipped", reason)
        return step.next

    def _message(
        self, run: _Round, journey: Journey, row: dict[str, Any], step: Step, key: str, status: str
    ) -> dict[str, Any]:
        return {
            "send_key": key,
            "journey_id": journey.id,
            "version": row["version"],
            "enrollment_id": row["id"],
            "step": step.id,
            "profile_id": row["profile_id"],
            "channel": step.channel,
            "template": step.template,
            "category": step.category,
            "arm": row["arm"],
            "variant": ",".join(f"{k}={v}" for k, v in sorted(row["variants"].items())) or None,
            "status": status,
            "reason": None,
            "attempts": 0,
            "provider_id": None,
            "context": {"entry": row["entry"], "variants": row["variants"], "journey": journey.id},
            "created_at": run.now,
            "updated_at": run.now,
            "sent_at": None,
        }

    def _over_cap(
        self, run: _Round, person: str, channel: str, zone: Any, *, held: bool
    ) -> str | None:
        """Why a marketing message on `channel` would break a frequency cap, if it would.
        A message held back counts what the person was sent and would have been sent."""
        caps = [c for c in self.channels.policies().caps if c.channel in (None, channel)]
        if not caps:
            return None
        starts = [day_start(run.now, zone, cap.days - 1) for cap in caps]
        counted = (*message_store.COUNTED, "held") if held else message_store.COUNTED
        recent = message_store.recent(run.conn, person, min(starts), counted)
        for cap, start in zip(caps, starts, strict=True):
            count = sum(
                1
                for sent_on, category, at in recent
                if category == "marketing" and at >= start and cap.channel in (None, sent_on)
            )
            if count >= cap.max:
                where = f" on {cap.channel}" if cap.channel else ""
                return f"frequency cap: {cap.max} in {cap.days} days{where}"
        return None

    # --- what steps read of the person ----------------------------------------------------

    def _person(self, run: _Round, profile_id: str) -> _Person | None:
        if profile_id not in run.people:
            self._read_people(run, [profile_id])
        return run.people[profile_id]

    def _read_people(self, run: _Round, profile_ids: Collection[str]) -> None:
        """Read the people not read yet in this round, in a few statements."""
        wanted = {person for person in profile_ids if person not in run.people}
        if not wanted:
            return
        states = profile_store.read_profiles(run.conn, wanted)
        histories = consent_store.histories(run.conn, list(states))
        for person in wanted:
            state = states.get(person)
            run.people[person] = (
                None if state is None else _Person(state, latest_decisions(histories[person]))
            )

    def _read_ahead(self, run: _Round, entering: Sequence[tuple[str, str]]) -> None:
        """Before a batch, read at once what entering these (journey, person) pairs
        needs: the people, and their last entries in those journeys."""
        if not entering:
            return
        people = {person for _, person in entering}
        self._read_people(run, people)
        run.entries.update(store.last_entries(run.conn, {j for j, _ in entering}, people))
        run.entries_read |= set(entering)

    def _last_entry(
        self, run: _Round, journey: str, person: str, key: str
    ) -> tuple[datetime | None, bool]:
        if (journey, person) in run.entries_read:
            return run.entries.get((journey, person, key), (None, False))
        return store.last_entry(self._written(run), journey, person, key)

    def _zone(self, run: _Round, row: Mapping[str, Any]) -> Any:
        """The person's time zone: their `timezone` trait, else the zone of the event
        that entered them, else the workspace's."""
        fallback = self.channels.policies().timezone
        person = self._person(run, row["profile_id"])
        trait = person.state.traits.get("timezone", {}).get("value") if person else None
        return zone_of(trait or row["entry"].get("timezone"), fallback)

    def _in_segment(self, run: _Round, profile_id: str, segment: str) -> bool:
        person = self._person(run, profile_id)
        if person is None:
            return False
        catalogue = self.segments.catalogue(run.conn)
        found = catalogue.segments.get(segment)
        members = person.state.computed.get("segments", {})
        return found is not None and found.id in members

    def _holds(self, run: _Round, profile_id: str, step: Step) -> bool:
        person = self._person(run, profile_id)
        if person is None or step.condition is None:
            return False
        catalogue = self.segments.catalogue(run.conn)
        members = person.state.computed.get("segments", {})
        facts = Facts(
            profile=person.state,
            now=run.now,
            computed=catalogue.computed,
            segments={s.name: s.id in members for s in catalogue.by_id.values()},
            consents=person.consents,
        )
        return compile_condition(step.condition, catalogue.computed)(facts)

    def _delay_until(self, run: _Round, row: Mapping[str, Any], step: Step) -> datetime | None:
        zone = self._zone(run, row)
        if step.wait_for is not None:
            return run.now + step.wait_for
        assert step.until is not None
        if step.before_trait is None:
            return next_time_of_day(run.now, zone, step.until, step.weekdays)
        person = self._person(run, row["profile_id"])
        if person is None:
            return None
        value = lookup(person.state.trait_values(), step.before_trait)
        day = _date(value)
        if day is None:
            return None
        if step.yearly:
            return next_anniversary(day, run.now, zone, step.days_before, step.until)
        return before_date(day, step.days_before, step.until, zone)

    # --- bookkeeping ----------------------------------------------------------------------

    def _journey_of(self, row: Mapping[str, Any]) -> Journey:
        journey = self.journeys.version(row["journey_id"], row["version"])
        if journey is None:
            raise DomainError(
                f"version {row['version']} of {row['journey_id']} cannot run", field="journey"
            )
        return journey

    def _log(
        self, run: _Round, row: Mapping[str, Any], outcome: str, reason: str | None = None
    ) -> None:
        run.logged.append(
            {
                "enrollment_id": row["id"],
                "journey_id": row["journey_id"],
                "version": row["version"],
                "profile_id": row["profile_id"],
                "step": row["step"],
                "outcome": outcome,
                "reason": reason,
                "at": run.now,
            }
        )

    def _end(self, run: _Round, row: dict[str, Any], status: str, reason: str) -> None:
        run.entries_read.discard((row["journey_id"], row["profile_id"]))
        row.update(
            status=status,
            due_at=None,
            waiting_for=None,
            active_key=None,
            ended_at=run.now,
            end_reason=reason,
        )
        self._save(run, row)

    def _save(self, run: _Round, row: Mapping[str, Any]) -> None:
        names = (
            "version", "step", "status", "due_at", "waiting_for", "visits", "variants",
            "active_key", "ended_at", "end_reason",
        )  # fmt: skip
        values = run.saves.setdefault(row["id"], {})
        values.update({name: row.get(name) for name in names if name in row})
        values["updated_at"] = run.now

    def _written(self, run: _Round) -> Connection:
        """The round's connection, once the enrollments moved are written: before a
        statement that reads them."""
        if run.saves:
            store.update_each(run.conn, run.saves)
            run.saves.clear()
        return run.conn

    def _finish(self, run: _Round) -> None:
        self._written(run)
        store.log_steps(run.conn, run.logged)
        bus_store.record(run.conn, run.happened)


@dataclass(frozen=True, slots=True)
class _Reacts:
    """What the journeys in use exit on or wait for: an event or an audience change
    that none names is not looked up in anyone's enrollments."""

    exit_events: frozenset[str]
    wait_events: frozenset[str]
    exit_segments: frozenset[str]
    wait_segments: frozenset[str]

    @classmethod
    def of(cls, journeys: Iterable[Journey]) -> _Reacts:
        exits: list[Exit] = []
        waits: list[Step] = []
        for journey in journeys:
            exits.extend(journey.exits)
            waits.extend(step for step in journey.steps if step.kind == "wait")
        return cls(
            frozenset(e.event.name for e in exits if e.event),
            frozenset(step.event.name for step in waits if step.event),
            frozenset(e.left for e in exits if e.left),
            frozenset(step.segment for step in waits if step.segment),
        )


def _exit_by_event(journey: Journey, row: Mapping[str, Any], event: StoredEvent) -> str | None:
    for rule in journey.exits:
        if rule.event is None or not rule.event.matches(event):
            continue
        if rule.keyed and row["entry_key"] != journey.entry.key_of(event):
            continue
        return f"exit event {event.event}"
    return None


def _revenue(event: StoredEvent | None) -> float | None:
    """A goal event's `revenue`, else its `value` property."""
    properties = (event.payload.get("properties") or {}) if event else {}
    for name in ("revenue", "value"):
        value = properties.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _date(value: Any) -> date | None:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            try:
                return parse_timestamp(value).date()
            except ValueError:
                return None
    return None


def _message_properties(journey: str, step: Step, key: str, **more: Any) -> dict[str, Any]:
    return {
        "journey": journey,
        "step": step.id,
        "channel": step.channel,
        "template": step.template,
        "category": step.category,
        "send_key": key,
        **more,
    }


def _message_shown(row: Mapping[str, Any]) -> dict[str, Any]:
    names = (
        "id", "send_key", "journey_id", "version", "enrollment_id", "step", "profile_id",
        "channel", "template", "category", "arm", "variant", "status", "reason", "attempts",
        "provider_id", "created_at", "updated_at", "sent_at",
    )  # fmt: skip
    return {name: row[name] for name in names}


def _shown(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "journey": row["journey_id"],
        "version": row["version"],
        "profile_id": row["profile_id"],
        "entry_key": row["entry_key"],
        "arm": row["arm"],
        "variants": row["variants"],
        "step": row["step"],
        "status": row["status"],
        "due_at": row["due_at"],
        "waiting_for": row["waiting_for"],
        "entered_at": row["entered_at"],
        "ended_at": row.get("ended_at"),
        "end_reason": row.get("end_reason"),
    }
