"""Segments and computed traits: definitions, live evaluation, timers and backfills.

Ingestion calls `fold` for each event and `settle` once per batch, inside its write
transaction; timers fire through `fire_due`, also one transaction per round. Every
membership change is recorded (in the profile, and as a row of `segment_changes`, which
is also its `Audience Entered/Exited` event) in the transaction that decides it, under
the lock of the profile, so that a change is recorded once even with several processes
at work. `catch_up` applies the recorded changes to the memberships and history by
segment, and puts their messages in the outbox, in bulk, before anything reads them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ariane.domain import computed as comp
from ariane.domain.clock import iso, parse_timestamp
from ariane.domain.computed import Feature, parse_feature
from ariane.domain.conditions import (
    Names,
    check_size,
    computed_references,
    evaluation_order,
    find_cycle,
    parse_condition,
    segment_references,
    to_json,
)
from ariane.domain.consent import ConsentDecision, latest_decisions
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.predicates import MISSING, InvalidDefinition
from ariane.domain.profiles import ProfileState
from ariane.domain.programmes import parse_programme
from ariane.domain.segments import (
    Catalogue,
    SegmentDefinition,
    Touch,
    Transition,
    due_at,
    memberships,
)
from ariane.services import paging
from ariane.storage import consents as consent_store
from ariane.storage import events as event_store
from ariane.storage import profiles as profile_store
from ariane.storage import rewards as reward_store
from ariane.storage import segment_sql
from ariane.storage import segments as store
from ariane.storage.database import Connection, Database

log = logging.getLogger(__name__)

MAX_PAGE = 1000
_NAME_LIMIT = 200
_BACKFILL_CHUNK = 500


@dataclass(slots=True)
class Settlement:
    transitions: list[Transition] = field(default_factory=list)
    # The profiles whose timer moved, and to when: written with them
    # (`profile_store.update_profiles`).
    dues: dict[str, datetime | None] = field(default_factory=dict)
    # The transitions' rows, when built before the write transaction (`prepare`).
    rows: store.TransitionRows | None = None


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_LIMIT:
        raise DomainError(f"{what} needs a name of 1 to {_NAME_LIMIT} characters", field="name")
    return name.strip()


class SegmentService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock
        self._cached: Catalogue | None = None
        self._lock = threading.Lock()

    # --- the catalogue ------------------------------------------------------------------------

    def catalogue(self, conn: Connection, *, hold: bool = False) -> Catalogue:
        """The definitions in force for this transaction, rebuilt only when they changed.

        With `hold`, a writer keeps them in force until it commits: a change of
        definitions (which locks the catalogue first, then the profiles it backfills)
        waits for the writer, or the writer for the change and then sees it. Writers
        take it before locking any profile, so the two never wait for each other in a
        circle.
        """
        if hold:
            store.hold_catalogue(conn)
        version = store.version(conn)
        cached = self._cached
        if cached is not None and cached.version == version:
            return cached
        built = self._build(conn, version)
        with self._lock:
            self._cached = built
        return built

    def _build(self, conn: Connection, version: int) -> Catalogue:
        computed = {
            row["name"]: parse_feature(row["definition"], f"computed_traits.{row['name']}")
            for row in store.computed_rows(conn)
        }
        rows = store.segment_rows(conn)
        names = Names(segments={r["name"] for r in rows}, computed=set(computed))
        definitions = [
            SegmentDefinition(
                r["id"], r["name"], r["description"], parse_condition(r["condition"], names)
            )
            for r in rows
        ]
        return Catalogue(version, definitions, computed)

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
        settlement.rows = store.transition_rows(self.db, settlement.transitions, now, cause)

    def record(self, conn: Connection, settlement: Settlement, now: datetime, cause: str) -> None:
        """Write the transitions; the timers go with the profiles (`Settlement.dues`)."""
        rows = settlement.rows
        if rows is None or (rows.at, rows.cause) != (now, cause):
            rows = store.transition_rows(self.db, settlement.transitions, now, cause)
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
        if not catalogue.uses_consent or not touched:
            return {}
        histories: dict[str, list[ConsentDecision]] = {}
        for profile_id in touched:
            histories[profile_id] = consent_store.history(conn, profile_id)
        return {p: latest_decisions(h) for p, h in histories.items()}

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
            rows = store.transition_rows(self.db, transitions, now, "time")
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
        """Apply the entries and exits recorded since the last time to memberships and
        their history (`storage.segments.catch_up`); how many there were. Everything that
        reads those tables calls it first. With `waited`, only once the oldest of them was
        recorded at least that many seconds ago."""
        with self.db.read() as conn:
            oldest = store.oldest_change(conn)
        if oldest is None or self.clock() - oldest < timedelta(seconds=waited):
            return 0
        return self.db.write(lambda conn: store.catch_up(conn))

    # --- definitions ------------------------------------------------------------------------

    def list_segments(self) -> list[dict[str, Any]]:
        self.catch_up()
        with self.db.read() as conn:
            rows = store.segment_rows(conn)
            return [{**self._public(r), "members": store.member_count(conn, r["id"])} for r in rows]

    def get_segment(self, key: str) -> dict[str, Any]:
        self.catch_up()
        with self.db.read() as conn:
            row = self._require(conn, key)
            return {**self._public(row), "members": store.member_count(conn, row["id"])}

    def save_segment(
        self, name: Any, description: Any, condition: Any, *, key: str | None = None
    ) -> dict[str, Any]:
        """Create (key None) or replace a segment, then backfill its members from history."""
        name = _check_name(name, "a segment")
        if description is not None and not isinstance(description, str):
            raise DomainError("description is text", field="description")

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            # Bumping first takes the catalogue's lock: changes to definitions queue here.
            version = store.bump_version(conn)
            old = self._build(conn, version - 1)
            existing = self._require(conn, key) if key is not None else None
            clash = store.segment_row(conn, name)
            if clash is not None and (existing is None or clash["id"] != existing["id"]):
                raise Conflict(f"a segment named {name!r} exists already", field="name")
            if existing is not None and existing["name"] != name:
                raise Conflict(
                    "renaming a segment is not supported: create the new one and delete the old",
                    field="name",
                )
            others = {s for s in old.segments if existing is None or s != existing["name"]}
            node = check_size(parse_condition(condition, Names(others | {name}, set(old.computed))))
            canonical = to_json(node)
            row = {
                "name": name,
                "description": description or "",
                "condition": canonical,
                "updated_at": now,
            }
            if existing is None:
                segment_id = uuid.uuid4().hex
                store.insert_segment(conn, {**row, "id": segment_id, "created_at": now})
            else:
                segment_id = existing["id"]
                store.update_segment(conn, segment_id, row)
            new = self._checked(conn, version)
            self._backfill(conn, old, new, [name], now)
            store.catch_up(conn)
            saved = store.segment_row(conn, segment_id)
            assert saved is not None
            return {**self._public(saved), "members": store.member_count(conn, segment_id)}

        return self.db.write(work)

    def delete_segment(self, key: str) -> None:
        def work(conn: Connection) -> None:
            version = store.bump_version(conn)
            row = self._require(conn, key)
            catalogue = self._build(conn, version)
            users = [
                s.name
                for s in catalogue.order
                if row["name"] in _segment_refs(s) and s.name != row["name"]
            ]
            if users:
                raise Conflict(
                    f"segment {row['name']!r} is used by {', '.join(users)}; change those first",
                    field="segment",
                )
            # Its changes still to apply would bring its members back.
            store.catch_up(conn)
            store.delete_segment(conn, row["id"])

        self.db.write(work)

    def list_computed(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [self._public_computed(r) for r in store.computed_rows(conn)]

    def save_computed(
        self, name: Any, definition: Any, *, exists: bool | None = None
    ) -> dict[str, Any]:
        """Create or replace a computed trait and compute it from history. With `exists`,
        the trait must (True) or must not (False) exist already, checked under the
        catalogue's lock so that two creations of one name cannot both succeed."""
        name = _check_name(name, "a computed trait")
        if not isinstance(definition, dict):
            raise DomainError("a computed trait is an object with kind and event", field="kind")
        body = {k: v for k, v in definition.items() if k not in ("name", "description")}
        feature = parse_feature(body, "definition")
        description = definition.get("description") or ""

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            version = store.bump_version(conn)
            old = self._build(conn, version - 1)
            if exists is False and name in old.computed:
                raise Conflict(f"a computed trait named {name!r} exists already", field="name")
            if exists is True and name not in old.computed:
                raise NotFound(f"no computed trait {name!r}", field="name")
            store.upsert_computed(
                conn,
                {
                    "id": uuid.uuid4().hex,
                    "name": name,
                    "description": description,
                    "definition": feature.to_json(),
                    "created_at": now,
                    "updated_at": now,
                },
            )
            new = self._checked(conn, version)
            users = [s.name for s in new.order if name in _computed_refs(s)]
            self._backfill(conn, old, new, users, now)
            return self._public_computed(
                next(r for r in store.computed_rows(conn) if r["name"] == name)
            )

        return self.db.write(work)

    def delete_computed(self, name: str) -> None:
        def work(conn: Connection) -> None:
            version = store.bump_version(conn)
            catalogue = self._build(conn, version)
            users = [s.name for s in catalogue.order if name in _computed_refs(s)]
            # An earn rule's condition reads it as a segment's does.
            programmes = [
                parse_programme(r["definition"]) for r in reward_store.programme_rows(conn)
            ]
            users += [
                f"earn rule {rule.id!r} of programme {programme.id!r}"
                for programme in programmes
                for rule in programme.earn_rules
                if rule.when is not None and name in computed_references(rule.when)
            ]
            if users:
                raise Conflict(
                    f"computed trait {name!r} is used by {', '.join(users)}; change those first",
                    field="name",
                )
            if not store.delete_computed(conn, name):
                raise NotFound(f"no computed trait {name!r}", field="name")

        self.db.write(work)

    def _checked(self, conn: Connection, version: int) -> Catalogue:
        """The catalogue as this transaction leaves it; a cycle is refused."""
        rows = store.segment_rows(conn)
        computed = {
            r["name"]: parse_feature(r["definition"], f"computed_traits.{r['name']}")
            for r in store.computed_rows(conn)
        }
        names = Names({r["name"] for r in rows}, set(computed))
        parsed = {r["name"]: (r, parse_condition(r["condition"], names)) for r in rows}
        graph = {n: segment_references(node) for n, (_, node) in parsed.items()}
        cycle = find_cycle(graph)
        if cycle:
            raise InvalidDefinition(
                f"segments would refer to each other in a cycle: {' → '.join(cycle)}",
                field="condition",
            )
        definitions = [
            SegmentDefinition(r["id"], r["name"], r["description"], node)
            for r, node in parsed.values()
        ]
        return Catalogue(version, definitions, computed)

    # --- backfill -----------------------------------------------------------------------------

    def _backfill(
        self,
        conn: Connection,
        old: Catalogue,
        new: Catalogue,
        changed: Sequence[str],
        now: datetime,
    ) -> None:
        """Bring every live profile to the new definitions: features new to the catalogue are
        folded from history, and the changed segments (and those that refer to them) are
        evaluated. Profiles are locked chunk by chunk, in id order, as ingestion does."""
        fresh = {k: f for k, f in new.features.items() if k not in old.features}
        reach = _dependents(new, set(changed))
        which = [s for s in new.order if s.name in reach]
        after: str | None = None
        while True:
            ids = profile_store.live_ids(conn, after=after, limit=_BACKFILL_CHUNK)
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
                self._fold_history(conn, states, fresh, now)
            touched = {pid: (states[pid], Touch()) for pid in sorted(states)}
            transitions: list[Transition] = []
            consents = self.consents(conn, new, touched)
            dues: dict[str, datetime | None] = {}
            for pid, (state, _) in touched.items():
                before = due_at(state)
                changes, due = new.settle(state, which, now, consents.get(pid))
                transitions += changes
                if due != before:
                    dues[pid] = due
            store.record_transitions(
                conn, store.transition_rows(self.db, transitions, now, "backfill")
            )
            profile_store.update_profiles(conn, list(states.values()), now, dues)

    def _fold_history(
        self,
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

    # --- definitions as code ----------------------------------------------------------------

    def apply(self, document: Any) -> dict[str, list[str]]:
        """Bring segments and computed traits to what a document declares; what is already
        as declared is left alone, so applying a file twice changes nothing the second time.
        Definitions the document does not mention are kept."""
        if not isinstance(document, dict) or not set(document) <= {"computed_traits", "segments"}:
            raise DomainError(
                "a definitions file holds computed_traits and segments lists", field="document"
            )
        traits = _items(document, "computed_traits")
        segments = _items(document, "segments")
        outcome: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
        with self.db.read() as conn:
            known_traits = {r["name"]: r for r in store.computed_rows(conn)}
            known_segments = {r["name"]: r for r in store.segment_rows(conn)}
        for index, item in enumerate(traits):
            name = _check_name(item.get("name"), f"computed_traits[{index}]")
            body = {k: v for k, v in item.items() if k not in ("name", "description")}
            feature = parse_feature(body, f"computed_traits[{index}]")
            row = known_traits.get(name)
            if (
                row is not None
                and row["definition"] == feature.to_json()
                and row["description"] == (item.get("description") or "")
            ):
                outcome["unchanged"].append(name)
                continue
            self.save_computed(name, item)
            outcome["updated" if row is not None else "created"].append(name)
        declared = {
            _check_name(item.get("name"), f"segments[{i}]"): item for i, item in enumerate(segments)
        }
        # Checked before anything is saved, so that a fault names its place in the file.
        names = Names(
            set(known_segments) | set(declared),
            set(known_traits) | {str(t.get("name")).strip() for t in traits},
        )
        for index, item in enumerate(segments):
            path = f"segments[{index}].condition"
            check_size(parse_condition(item.get("condition"), names, path), path)
        for name in _declaration_order(declared):
            item = declared[name]
            row = known_segments.get(name)
            if row is not None and self._same_segment(row, item):
                outcome["unchanged"].append(name)
                continue
            self.save_segment(
                name,
                item.get("description"),
                item.get("condition"),
                key=None if row is None else row["id"],
            )
            outcome["updated" if row is not None else "created"].append(name)
        return outcome

    def _same_segment(self, row: Mapping[str, Any], item: Mapping[str, Any]) -> bool:
        if row["description"] != (item.get("description") or ""):
            return False
        with self.db.read() as conn:
            catalogue = self.catalogue(conn)
        try:
            node = parse_condition(
                item.get("condition"), Names(set(catalogue.segments), set(catalogue.computed))
            )
        except DomainError:
            return False
        return bool(to_json(node) == row["condition"])

    # --- reads ------------------------------------------------------------------------------

    def preview(self, condition: Any, sample: int = 20) -> dict[str, Any]:
        if not 0 <= sample <= 100:
            raise DomainError("sample must be between 0 and 100", field="sample")
        # Conditions on membership of other segments read their members.
        self.catch_up()
        with self.db.read() as conn:
            catalogue = self.catalogue(conn)
            node = check_size(
                parse_condition(condition, Names(set(catalogue.segments), set(catalogue.computed)))
            )
            count, ids = segment_sql.preview(
                conn,
                node,
                now=self.clock(),
                computed=catalogue.computed,
                sample=sample,
            )
        return {"count": count, "sample": ids, "condition": to_json(node)}

    def members(self, key: str, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        if not 1 <= limit <= MAX_PAGE:
            raise DomainError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        after = None if cursor is None else paging.decode_text(paging.SEGMENT_MEMBERS, cursor)
        self.catch_up()
        with self.db.read() as conn:
            row = self._require(conn, key)
            page = store.members_page(conn, row["id"], limit=limit + 1, after=after)
            total = store.member_count(conn, row["id"])
        more = len(page) > limit
        page = page[:limit]
        return {
            "segment_id": row["id"],
            "total": total,
            "members": [{"profile_id": p, "entered_at": at} for p, at in page],
            "next_cursor": paging.encode(paging.SEGMENT_MEMBERS, page[-1][0]) if more else None,
        }

    def all_members(self, key: str) -> Iterator[tuple[str, datetime]]:
        after: str | None = None
        self.catch_up()
        with self.db.read() as conn:
            row = self._require(conn, key)
            while True:
                page = store.members_page(conn, row["id"], limit=MAX_PAGE, after=after)
                yield from page
                if len(page) < MAX_PAGE:
                    return
                after = page[-1][0]

    def history(self, key: str, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        if not 1 <= limit <= MAX_PAGE:
            raise DomainError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        before = None if cursor is None else paging.decode_id(paging.SEGMENT_HISTORY, cursor)
        self.catch_up()
        with self.db.read() as conn:
            row = self._require(conn, key)
            page = store.history_page(conn, row["id"], limit=limit + 1, before=before)
        more = len(page) > limit
        page = page[:limit]
        return {
            "segment_id": row["id"],
            "changes": [
                {
                    "id": h["id"],
                    "profile_id": h["profile_id"],
                    "change": h["change"],
                    "cause": h["cause"],
                    "at": h["at"],
                }
                for h in page
            ],
            "next_cursor": paging.encode(paging.SEGMENT_HISTORY, page[-1]["id"]) if more else None,
        }

    def profile_view(self, conn: Connection, state: ProfileState, now: datetime) -> dict[str, Any]:
        """Current segments and computed-trait values, for the 360° view."""
        catalogue = self.catalogue(conn)
        states = state.computed.get("features", {})
        values = {}
        for name, feature in sorted(catalogue.computed.items()):
            value = comp.value(feature, states.get(feature.key), now, state.first_seen)
            values[name] = None if value is MISSING else value
        # The profile holds its memberships as they are decided: no catching up.
        held = memberships(state)
        named = sorted((catalogue.by_id[sid].name, sid) for sid in held if sid in catalogue.by_id)
        segments = [
            {"id": sid, "name": name, "entered_at": parse_timestamp(held[sid])}
            for name, sid in named
        ]
        return {"segments": segments, "computed_traits": values}

    def _require(self, conn: Connection, key: str) -> dict[str, Any]:
        row = store.segment_row(conn, key)
        if row is None:
            raise NotFound(f"no segment {key!r}", field="segment")
        return row

    @staticmethod
    def _public(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "description": row["description"],
            "condition": row["condition"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    @staticmethod
    def _public_computed(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": row["name"],
            "description": row["description"],
            **row["definition"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }


def _segment_refs(segment: SegmentDefinition) -> set[str]:
    return segment_references(segment.condition)


def _computed_refs(segment: SegmentDefinition) -> set[str]:
    return computed_references(segment.condition)


def _items(document: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    items = document.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DomainError(f"{key} is a list of definitions", field=key)
    return items


def _declaration_order(declared: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Segments of one file, each after those of the file it refers to."""
    graph: dict[str, set[str]] = {}
    for name, item in declared.items():
        graph[name] = {r for r in _mentions(item.get("condition")) if r in declared}
    return evaluation_order(graph)


def _mentions(node: Any) -> set[str]:
    """Segment names a raw (not yet checked) condition refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("segment"), str):
            found.add(node["segment"])
        for value in node.values():
            found |= _mentions(value)
    elif isinstance(node, list):
        for value in node:
            found |= _mentions(value)
    return found


def _dependents(catalogue: Catalogue, names: set[str]) -> set[str]:
    reach = set(names)
    for segment in catalogue.order:
        if _segment_refs(segment) & reach:
            reach.add(segment.name)
    return reach
