"""Journeys as declared: as code (`ariane journeys apply FILE`) or through the API,
checked against the segments, computed traits, channels and templates that exist, and
versioned. The versions people are on are read back, parsed, and kept for the engine
(`services.journey_engine`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ariane.domain.conditions import Names
from ariane.domain.definitions import listed
from ariane.domain.errors import NotFound
from ariane.domain.journeys import Journey, parse_journey
from ariane.domain.predicates import InvalidDefinition
from ariane.services.channels import Channels
from ariane.services.segments import SegmentService
from ariane.storage import journeys as store
from ariane.storage.database import Database

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0


class Journeys:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        segments: SegmentService,
        channels: Channels,
    ) -> None:
        self.db = db
        self.clock = clock
        self.segments = segments
        self.channels = channels
        self._lock = threading.Lock()
        self._read_at = -1.0
        # `store.stamp` when the journeys were last read, and the clock's time just
        # before it was last looked at (`fresh_for`).
        self._stamp: tuple[Any, ...] | None = None
        self._known_at: datetime | None = None
        # The clock's time when the journeys kept were read.
        self._read_from: datetime | None = None
        self._versions: dict[tuple[str, int], Journey] = {}
        self._current: dict[str, Journey] = {}
        self._current_versions: dict[str, int] = {}
        self._since: dict[str, datetime] = {}

    # --- declared -------------------------------------------------------------------------

    def apply(self, document: Any) -> list[dict[str, Any]]:
        """Create or update every journey of `document` ({"journeys": [...]}), all
        checked before any is saved; the channels and templates it holds too."""
        if isinstance(document, Mapping) and ("channels" in document or "templates" in document):
            self.channels.apply({k: v for k, v in document.items() if k != "journeys"})
        items = document.get("journeys") if isinstance(document, Mapping) else document
        parsed = [
            self.check(item, f"journeys[{index}]")
            for index, item in enumerate(listed(items, "journeys"))
        ]
        names = [journey.id for journey in parsed]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise InvalidDefinition(f"{name!r} is given twice", field=f"journeys[{index}].id")
        return [self._save(journey) for journey in parsed]

    def put(self, ident: str, definition: Any) -> dict[str, Any]:
        if isinstance(definition, Mapping) and definition.get("id", ident) != ident:
            raise InvalidDefinition("differs from the id in the path", field="id")
        body = {**definition, "id": ident} if isinstance(definition, Mapping) else definition
        return self._save(self.check(body, "journey"))

    def check(self, raw: Any, path: str = "journey") -> Journey:
        """The journey parsed, with every channel and template it sends checked."""
        with self.db.read() as conn:
            catalogue = self.segments.catalogue(conn)
        names = Names(set(catalogue.segments), set(catalogue.computed))
        journey = parse_journey(raw, names, path)
        configs = self.channels.configs()
        for index, step in enumerate(journey.steps):
            if step.kind != "send":
                continue
            where = f"{path}.steps[{index}].send"
            if step.channel not in configs:
                raise InvalidDefinition(f"no channel {step.channel!r}", field=f"{where}.channel")
            if self.channels.template(step.template) is None:
                raise InvalidDefinition(f"no template {step.template!r}", field=f"{where}.template")
        return journey

    def _save(self, journey: Journey) -> dict[str, Any]:
        now = self.clock()
        change, version = self.db.write(
            lambda conn: store.save(conn, journey.id, journey.definition, journey.enabled, now)
        )
        self._read_at = -1.0
        log.info("journey %s %s (version %d)", journey.id, change, version)
        return {"id": journey.id, "change": change, "version": version}

    def delete(self, ident: str) -> None:
        if not self.db.write(lambda conn: store.delete(conn, ident)):
            raise NotFound(f"no journey {ident!r}", field="journey")
        self._read_at = -1.0

    def every(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = store.every(conn)
        return [_shown(row) for row in rows]

    def get(self, ident: str) -> dict[str, Any]:
        with self.db.read() as conn:
            rows = [row for row in store.every(conn) if row["id"] == ident]
        if not rows:
            raise NotFound(f"no journey {ident!r}", field="journey")
        return _shown(rows[0])

    # --- in force -------------------------------------------------------------------------

    def fresh_for(self, moment: datetime) -> None:
        """Make sure the journeys kept in memory include every journey declared up to
        `moment` (when an event was received, or an audience changed), whichever
        process declared it: otherwise a journey declared in another process less than
        `REFRESH_SECONDS` ago would not be entered by what follows it. One cheap read
        (`store.stamp`) for the first moment after the last look; the journeys are
        read again only if they changed."""
        with self._lock:
            if self._known_at is not None and moment < self._known_at:
                return
            known = self._stamp
        looked_at = self.clock()
        with self.db.read() as conn:
            changed = store.stamp(conn) != known
        if changed:
            self._refresh(force=True)
        with self._lock:
            if self._known_at is None or looked_at > self._known_at:
                self._known_at = looked_at

    def _refresh(self, *, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._read_at < REFRESH_SECONDS:
                return
        looked_at = self.clock()
        with self.db.read() as conn:
            stamp = store.stamp(conn)
            used = store.versions_in_use(conn)
            rows = store.every(conn)
            current = {row["id"]: (row["version"], row["enabled"]) for row in rows}
            since = {row["id"]: row["created_at"] for row in rows}
            catalogue = self.segments.catalogue(conn)
        if stamp != self._stamp:
            # A journey's channels and templates are declared before it (with it, in
            # one document): read again before the journeys are put in place, or, kept
            # as they were a second ago, its first sends would be skipped as sent on a
            # channel that is off.
            self.channels.read_again()
        names = Names(set(catalogue.segments), set(catalogue.computed))
        versions: dict[tuple[str, int], Journey] = {}
        for ident, version, definition in used:
            known = self._versions.get((ident, version))
            if known is not None and known.definition == definition:
                versions[(ident, version)] = known
                continue
            try:
                versions[(ident, version)] = parse_journey(definition, names)
            except InvalidDefinition as error:
                log.error("journey %s version %d cannot run: %s", ident, version, error)
        live = {
            ident: versions[(ident, version)]
            for ident, (version, enabled) in current.items()
            if enabled and (ident, version) in versions
        }
        live_versions = {ident: version for ident, (version, _) in current.items() if ident in live}
        with self._lock:
            if self._read_from is not None and looked_at < self._read_from:
                # Another thread's read, begun later, is in place already: this one's
                # may miss a journey that one has.
                return
            self._versions, self._current, self._since = versions, live, since
            self._current_versions = live_versions
            self._read_at = time.monotonic()
            self._read_from = looked_at
            self._stamp = stamp
            if self._known_at is None or looked_at > self._known_at:
                self._known_at = looked_at

    def version(self, ident: str, version: int) -> Journey | None:
        self._refresh()
        return self._versions.get((ident, version))

    def current(self) -> dict[str, Journey]:
        """The enabled journeys' current versions: those people enter."""
        self._refresh()
        return self._current

    def since(self, ident: str) -> datetime | None:
        """When the journey was first declared: what happened before enters nobody."""
        self._refresh()
        return self._since.get(ident)

    def live_version(self, ident: str) -> int | None:
        """The version of the journey `current` gives: the one people enter now."""
        self._refresh()
        return self._current_versions.get(ident)

    def current_version(self, ident: str) -> int | None:
        """The journey's latest version, as stored now (not as kept for a second)."""
        with self.db.read() as conn:
            rows = [row for row in store.every(conn) if row["id"] == ident]
        return rows[0]["version"] if rows else None

    def segments_read(self) -> frozenset[str]:
        """The segments some journey in use enters, waits, exits or converts on."""
        found: set[str] = set()
        for journey in self.in_use().values():
            found |= journey.segments()
        return frozenset(found)

    def in_use(self) -> dict[tuple[str, int], Journey]:
        self._refresh()
        return self._versions


def _shown(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "version": row["version"],
        "enabled": row["enabled"],
        "definition": row["definition"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
