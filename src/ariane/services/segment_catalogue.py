"""The catalogue: the segments and computed traits storage holds, parsed into the
definitions evaluation runs, and kept in memory while they are the ones in force."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ariane.domain.computed import parse_feature
from ariane.domain.conditions import Names, find_cycle, parse_condition, segment_references
from ariane.domain.consent import ConsentDecision, latest_decisions
from ariane.domain.errors import NotFound
from ariane.domain.predicates import InvalidDefinition
from ariane.domain.segments import Catalogue, SegmentDefinition
from ariane.storage import consents as consent_store
from ariane.storage import segments as store
from ariane.storage.database import Connection


class Catalogues:
    """The catalogue in force, rebuilt only when the definitions changed."""

    def __init__(self) -> None:
        self._cached: Catalogue | None = None
        self._lock = threading.Lock()

    def current(self, conn: Connection, *, hold: bool = False) -> Catalogue:
        """The definitions in force for this transaction.

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
        built = load(conn, version)
        with self._lock:
            self._cached = built
        return built


def load(conn: Connection, version: int, *, refuse_cycles: bool = False) -> Catalogue:
    """The catalogue as this transaction sees it. With `refuse_cycles`, segments that
    would refer to each other in a cycle are refused, naming the cycle."""
    computed = {
        row["name"]: parse_feature(row["definition"], f"computed_traits.{row['name']}")
        for row in store.computed_rows(conn)
    }
    rows = store.segment_rows(conn)
    names = Names(segments={r["name"] for r in rows}, computed=set(computed))
    parsed = {r["name"]: (r, parse_condition(r["condition"], names)) for r in rows}
    if refuse_cycles:
        cycle = find_cycle({n: segment_references(node) for n, (_, node) in parsed.items()})
        if cycle:
            raise InvalidDefinition(
                f"segments would refer to each other in a cycle: {' → '.join(cycle)}",
                field="condition",
            )
    definitions = [
        SegmentDefinition(r["id"], r["name"], r["description"], node) for r, node in parsed.values()
    ]
    return Catalogue(version, definitions, computed)


def require_segment(conn: Connection, key: str) -> dict[str, Any]:
    """The stored segment of a name or id."""
    row = store.segment_row(conn, key)
    if row is None:
        raise NotFound(f"no segment {key!r}", field="segment")
    return row


def latest_consents(
    conn: Connection,
    catalogue: Catalogue,
    touched: Mapping[str, Any],
) -> dict[str, dict[str, ConsentDecision]]:
    """The consent decisions in force for each touched profile, when some condition of
    the catalogue reads consent."""
    if not catalogue.uses_consent or not touched:
        return {}
    histories: dict[str, list[ConsentDecision]] = {}
    for profile_id in touched:
        histories[profile_id] = consent_store.history(conn, profile_id)
    return {p: latest_decisions(h) for p, h in histories.items()}
