"""Who is in a segment: its members and the history of their entries and exits, who a
condition would hold (a preview), and the segments of one profile.

The entries and exits are decided, and recorded, where a profile changes; `catch_up`
applies them to the memberships and history by segment, in bulk, before anything reads
those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from ariane.domain.clock import parse_timestamp
from ariane.domain.conditions import Names, check_size, parse_condition, to_json
from ariane.domain.errors import DomainError
from ariane.domain.profiles import ProfileState
from ariane.domain.segments import memberships
from ariane.services import paging
from ariane.services.segment_catalogue import Catalogues, require_segment
from ariane.storage import segment_sql
from ariane.storage import segments as store
from ariane.storage.database import Connection, Database

MAX_PAGE = 1000


class SegmentMembers:
    def __init__(self, db: Database, clock: Callable[[], datetime], catalogues: Catalogues) -> None:
        self.db = db
        self.clock = clock
        self.catalogues = catalogues

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

    def preview(self, condition: Any, sample: int = 20) -> dict[str, Any]:
        if not 0 <= sample <= 100:
            raise DomainError("sample must be between 0 and 100", field="sample")
        # Conditions on membership of other segments read their members.
        self.catch_up()
        with self.db.read() as conn:
            catalogue = self.catalogues.current(conn)
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
        _check_limit(limit)
        after = None if cursor is None else paging.decode_text(paging.SEGMENT_MEMBERS, cursor)
        self.catch_up()
        with self.db.read() as conn:
            row = require_segment(conn, key)
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
            row = require_segment(conn, key)
            while True:
                page = store.members_page(conn, row["id"], limit=MAX_PAGE, after=after)
                yield from page
                if len(page) < MAX_PAGE:
                    return
                after = page[-1][0]

    def history(self, key: str, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        _check_limit(limit)
        before = None if cursor is None else paging.decode_id(paging.SEGMENT_HISTORY, cursor)
        self.catch_up()
        with self.db.read() as conn:
            row = require_segment(conn, key)
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
        catalogue = self.catalogues.current(conn)
        values = dict(sorted(catalogue.computed_values(state, now).items()))
        # The profile holds its memberships as they are decided: no catching up.
        held = memberships(state)
        named = sorted((catalogue.by_id[sid].name, sid) for sid in held if sid in catalogue.by_id)
        segments = [
            {"id": sid, "name": name, "entered_at": parse_timestamp(held[sid])}
            for name, sid in named
        ]
        return {"segments": segments, "computed_traits": values}


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise DomainError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
