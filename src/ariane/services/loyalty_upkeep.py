"""Members' accounts kept in step with the points they hold: their tier reviewed, after a
movement and again when time makes it due (points leaving the tier window, a grace period
ending), and points written off the ledger once past their expiry. The reviews and
write-offs time makes due are a job of the bus (`EarnService.write_off_and_review`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ariane.domain.clock import iso
from ariane.domain.loyalty import expired, track
from ariane.domain.programmes import Programme
from ariane.domain.tiers import Standing, stand
from ariane.services import ledger
from ariane.services.programmes import ProgrammeService
from ariane.storage import loyalty as store
from ariane.storage.database import Connection, Database


def review_tier(
    conn: Connection,
    declared: Programme,
    member: str,
    current: Standing,
    now: datetime,
    cause: str,
    key: str,
) -> None:
    """Bring the member's tier from `current` to where their points earned put it,
    under their lock; a change is a `Tier Changed` event on their timeline."""
    tiers = declared.tiers
    if tiers is None:
        if current != Standing(None, None, None, None, 0):
            store.save_standing(conn, declared.id, member, Standing(None, None, None, None, 0))
        return
    entries = store.earned_entries(conn, declared.id, member, now - tiers.window)
    found = stand(tiers, current, entries, now)
    store.save_standing(conn, declared.id, member, found)
    if found.tier != current.tier:
        message_id = f"loyalty-tier-{key}"
        properties = {
            "programme": declared.id,
            "from": current.tier,
            "to": found.tier,
            "points": found.points,
            "cause": cause,
        }
        message = track("Tier Changed", message_id, now, properties)
        store.add_event(conn, message_id, member, message, now)


class LoyaltyUpkeep:
    def __init__(
        self, db: Database, clock: Callable[[], datetime], programmes: ProgrammeService
    ) -> None:
        self.db = db
        self.clock = clock
        self.programmes = programmes

    def expire_due(self, limit: int = 200) -> int:
        """Write off the ledger the points past their expiry still in a lot, as an
        `expire` entry per member (a `Points Expired` event); how many members."""
        now = self.clock()
        with self.db.read() as conn:
            due = store.expired_members(conn, now, limit)

        def write_off(conn: Connection, programme_id: str, member: str) -> None:
            live, _ = ledger.lock_member(conn, self.clock, programme_id, member)
            gone = expired(store.lots(conn, programme_id, live), now)
            if not gone:
                return
            key = f"expire:{live}:{iso(now)}"
            total = sum(points for _, points in gone)
            entry = ledger.record(conn, programme_id, live, "expire", -total, key, None, now)
            store.take_from_lots(conn, entry["id"], live, gone)
            ledger.put_on_timeline(conn, entry, "Points Expired")

        return self._one_write_each(due, write_off)

    def review_tiers(self, limit: int = 200) -> int:
        """Look again at the tiers due for it (points leaving the window, a grace period
        ending); how many there were."""
        now = self.clock()
        with self.db.read() as conn:
            due = store.tiers_due(conn, now, limit)

        def review(conn: Connection, programme_id: str, member: str) -> None:
            live, current = ledger.lock_member(conn, self.clock, programme_id, member)
            if live != member:
                return
            if current.review_at is None or current.review_at > now:
                return  # Looked at meanwhile by another process.
            declared = self.programmes.load(conn, programme_id)
            key = f"{programme_id}-{member}-{iso(now)}"
            review_tier(conn, declared, member, current, now, "window", key)

        return self._one_write_each(due, review)

    def _one_write_each(
        self, due: list[tuple[str, str]], work: Callable[[Connection, str, str], None]
    ) -> int:
        """`work` for each (programme, member) due, one transaction a member; how many."""
        for programme_id, member in due:

            def one(conn: Connection, at: str = programme_id, who: str = member) -> None:
                work(conn, at, who)

            self.db.write(one)
        return len(due)
