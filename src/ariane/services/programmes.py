"""Loyalty programmes as code: declared in YAML or JSON, applied idempotently, read and
replaced through the API; and the coupon codes of their pools, generated or imported."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ariane.domain.conditions import Names, check_size
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.predicates import InvalidDefinition
from ariane.domain.programmes import Programme, check_code, check_id, parse_programme
from ariane.storage import rewards as store
from ariane.storage import segments as segment_store
from ariane.storage.database import Connection, Database

MAX_IMPORT = 100_000


class ProgrammeService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock
        self._cache: dict[str, tuple[int, Programme]] = {}
        self._all: tuple[int, tuple[Programme, ...], frozenset[str]] | None = None
        self._lock = threading.Lock()

    def load(self, conn: Connection, programme_id: str) -> Programme:
        """The programme in force, parsed once per version: its definition is read only
        when the version differs from the one parsed last."""
        with self._lock:
            cached = self._cache.get(programme_id)
        if cached is not None and store.programme_version(conn, programme_id) == cached[0]:
            return cached[1]
        row = store.programme_row(conn, programme_id)
        if row is None:
            raise NotFound(
                f"no loyalty programme {programme_id!r}; declare it with `ariane loyalty apply`"
                " or PUT /api/loyalty/programmes/{id}",
                field="programme",
            )
        programme = parse_programme(row["definition"])
        with self._lock:
            self._cache[programme_id] = (row["version"], programme)
        return programme

    def in_force(self, conn: Connection, version: int) -> tuple[Programme, ...]:
        """Every programme, as of the catalogue `version` (a programme's change bumps
        it), parsed once per version."""
        return self._in_force(conn, version)[0]

    def listened(self, conn: Connection, version: int) -> frozenset[str]:
        """The track events some earn rule reads, as of the catalogue `version`: asked by
        every ingestion batch, worked out once per version."""
        return self._in_force(conn, version)[1]

    def _in_force(
        self, conn: Connection, version: int
    ) -> tuple[tuple[Programme, ...], frozenset[str]]:
        with self._lock:
            cached = self._all
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        programmes = tuple(parse_programme(row["definition"]) for row in store.programme_rows(conn))
        events = {rule.event for programme in programmes for rule in programme.earn_rules}
        if any(r.points_per_unit is not None for p in programmes for r in p.earn_rules):
            # Refunds take back what purchases earned (`services.earning`).
            events.add("Order Refunded")
        listened = frozenset(events)
        with self._lock:
            self._all = (version, programmes, listened)
        return programmes, listened

    def all(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [_public(row) for row in store.programme_rows(conn)]

    def get(self, programme_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            self.load(conn, programme_id)
            row = store.programme_row(conn, programme_id)
            assert row is not None
            found = _public(row)
            found["stock_issued"] = store.stock_issued(conn, programme_id)
            found["coupon_pools"] = {
                pool["id"]: store.pool_counts(conn, programme_id, pool["id"])
                for pool in row["definition"]["coupon_pools"]
            }
        return found

    def save(self, programme_id: str, document: Any) -> dict[str, Any]:
        """Create or replace a programme (the body of PUT): what changed, as `apply`."""
        if isinstance(document, dict) and document.get("id", programme_id) != programme_id:
            raise InvalidDefinition(
                f"the id in the body, {document.get('id')!r}, is not the one in the path",
                field="id",
            )
        check_id(programme_id, "id")
        if isinstance(document, dict):
            document = {**document, "id": programme_id}
        try:
            programme = self._parse(document, "body", self._names())
        except InvalidDefinition as error:
            # Named as in the body: `rewards[0].cost`.
            field = (error.field or "").removeprefix("body").removeprefix(".") or "body"
            raise InvalidDefinition(error.message, field=field) from None
        return self._save(programme)

    def apply(self, document: Any) -> list[dict[str, Any]]:
        """Bring the programmes a document declares (one, or a list under `programmes`)
        to what it says, and their generated pools to their size. Applying it twice
        changes nothing the second time; programmes it does not mention are kept."""
        if isinstance(document, dict) and set(document) == {"programmes"}:
            items = document["programmes"]
            if not isinstance(items, list):
                raise InvalidDefinition("needs a list of programmes", field="programmes")
            paths = [f"programmes[{index}]" for index in range(len(items))]
        else:
            items, paths = [document], ["programme"]
        # All checked before any is saved, so that a fault names its place in the file.
        names = self._names()
        parsed = [self._parse(item, path, names) for item, path in zip(items, paths, strict=True)]
        ids = [programme.id for programme in parsed]
        if len(set(ids)) != len(ids):
            raise InvalidDefinition("a programme is declared twice", field="programmes")
        return [self._save(programme) for programme in parsed]

    def _parse(self, document: Any, path: str, names: Names) -> Programme:
        """A programme given now: its rules' conditions no larger than a condition given
        to a segment (`conditions.check_size`)."""
        programme = parse_programme(document, path, names)
        for index, rule in enumerate(programme.earn_rules):
            if rule.when is not None:
                check_size(rule.when, f"{path}.earn_rules[{index}].when")
        return programme

    def _names(self) -> Names:
        """The segments and computed traits a rule given now may name: those that exist.
        (A segment deleted later leaves the rule finding no one in it; a computed trait a
        rule reads cannot be deleted.)"""
        with self.db.read() as conn:
            return Names(
                segments={row["name"] for row in segment_store.segment_rows(conn)},
                computed={row["name"] for row in segment_store.computed_rows(conn)},
            )

    def _save(self, programme: Programme) -> dict[str, Any]:
        definition = programme.to_json()

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            change, version = store.save_programme(conn, programme.id, definition, now)
            if change != "unchanged":
                # Ingestion reads which events the earn rules listen to with the segment
                # definitions: a new version makes it read them again, and waits for the
                # batches under way.
                segment_store.bump_version(conn)
            generated = {
                pool.id: store.generate_codes(conn, programme.id, pool.id, pool.generate, now)
                for pool in programme.coupon_pools
                if pool.generate is not None
            }
            return {
                "id": programme.id,
                "change": change,
                "version": version,
                "codes_generated": generated,
            }

        return self.db.write(work)

    def import_codes(self, programme_id: str, pool_id: str, codes: Sequence[Any]) -> dict[str, Any]:
        """Add codes to a pool; a code another pool holds is refused, naming it, and
        nothing is added."""
        if not isinstance(codes, list | tuple) or not 1 <= len(codes) <= MAX_IMPORT:
            raise DomainError(f"needs a list of 1 to {MAX_IMPORT:,} codes", field="codes")
        checked = [check_code(code, f"codes[{index}]") for index, code in enumerate(codes)]

        def work(conn: Connection) -> dict[str, Any]:
            self.load(conn, programme_id).pool(pool_id)
            added, elsewhere = store.add_codes(conn, programme_id, pool_id, checked, self.clock())
            if elsewhere:
                shown = ", ".join(repr(code) for code in elsewhere[:5])
                raise Conflict(
                    f"{len(elsewhere)} code(s) belong to another pool already ({shown}); codes"
                    " are unique across programmes, so remove them and send the rest again",
                    field="codes",
                )
            return {
                "added": added,
                "already_there": len(set(checked)) - added,
                **store.pool_counts(conn, programme_id, pool_id),
            }

        return self.db.write(work)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "version": row["version"],
        "definition": row["definition"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
