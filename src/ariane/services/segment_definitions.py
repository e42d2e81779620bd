"""The definitions of segments and computed traits: listing, saving and deleting them.

A change of definitions bumps the catalogue's version first, which takes its lock, so
that changes queue one behind the other; the new definitions are checked (no cycle of
segments) and backfilled in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ariane.domain.computed import parse_feature
from ariane.domain.conditions import (
    Names,
    check_size,
    computed_references,
    parse_condition,
    segment_references,
    to_json,
)
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.programmes import parse_programme
from ariane.services import segment_backfill
from ariane.services.segment_catalogue import load, require_segment
from ariane.services.segment_members import SegmentMembers
from ariane.storage import rewards as reward_store
from ariane.storage import segments as store
from ariane.storage.database import Connection, Database

_NAME_LIMIT = 200


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_LIMIT:
        raise DomainError(f"{what} needs a name of 1 to {_NAME_LIMIT} characters", field="name")
    return name.strip()


class SegmentDefinitions:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], members: SegmentMembers
    ) -> None:
        self.db = db
        self.clock = clock
        self.members = members

    # --- segments -------------------------------------------------------------------------

    def list_segments(self) -> list[dict[str, Any]]:
        self.members.catch_up()
        with self.db.read() as conn:
            return [_counted(conn, r) for r in store.segment_rows(conn)]

    def get_segment(self, key: str) -> dict[str, Any]:
        self.members.catch_up()
        with self.db.read() as conn:
            return _counted(conn, require_segment(conn, key))

    def save_segment(
        self, name: Any, description: Any, condition: Any, *, key: str | None = None
    ) -> dict[str, Any]:
        """Create (key None) or replace a segment, then backfill its members from history."""
        name = check_name(name, "a segment")
        if description is not None and not isinstance(description, str):
            raise DomainError("description is text", field="description")

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            # Bumping first takes the catalogue's lock: changes to definitions queue here.
            version = store.bump_version(conn)
            old = load(conn, version - 1)
            existing = require_segment(conn, key) if key is not None else None
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
            new = load(conn, version, refuse_cycles=True)
            segment_backfill.backfill(self.db, conn, old, new, [name], now)
            store.catch_up(conn)
            saved = store.segment_row(conn, segment_id)
            assert saved is not None
            return _counted(conn, saved)

        return self.db.write(work)

    def delete_segment(self, key: str) -> None:
        def work(conn: Connection) -> None:
            version = store.bump_version(conn)
            row = require_segment(conn, key)
            catalogue = load(conn, version)
            users = [
                s.name
                for s in catalogue.order
                if row["name"] in segment_references(s.condition) and s.name != row["name"]
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

    # --- computed traits ------------------------------------------------------------------

    def list_computed(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [_public_computed(r) for r in store.computed_rows(conn)]

    def save_computed(
        self, name: Any, definition: Any, *, exists: bool | None = None
    ) -> dict[str, Any]:
        """Create or replace a computed trait and compute it from history. With `exists`,
        the trait must (True) or must not (False) exist already, checked under the
        catalogue's lock so that two creations of one name cannot both succeed."""
        name = check_name(name, "a computed trait")
        if not isinstance(definition, dict):
            raise DomainError("a computed trait is an object with kind and event", field="kind")
        body = {k: v for k, v in definition.items() if k not in ("name", "description")}
        feature = parse_feature(body, "definition")
        description = definition.get("description") or ""

        def work(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            version = store.bump_version(conn)
            old = load(conn, version - 1)
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
            new = load(conn, version, refuse_cycles=True)
            users = [s.name for s in new.order if name in computed_references(s.condition)]
            segment_backfill.backfill(self.db, conn, old, new, users, now)
            return _public_computed(next(r for r in store.computed_rows(conn) if r["name"] == name))

        return self.db.write(work)

    def delete_computed(self, name: str) -> None:
        def work(conn: Connection) -> None:
            version = store.bump_version(conn)
            catalogue = load(conn, version)
            users = [s.name for s in catalogue.order if name in computed_references(s.condition)]
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


def _counted(conn: Connection, row: Mapping[str, Any]) -> dict[str, Any]:
    """A segment as the API shows it, with its number of members."""
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "condition": row["condition"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "members": store.member_count(conn, row["id"]),
    }


def _public_computed(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "description": row["description"],
        **row["definition"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
