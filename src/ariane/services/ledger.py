"""The loyalty ledger as a movement of points writes it, inside the movement's
transaction: the member's account found and locked, an entry recorded once under its
idempotency key (a retry answered with the first entry), lots of points given and taken,
an earn rule's limit checked, and each entry put on the member's timeline.

The movements themselves are `services.loyalty`'s, the rewards bought
`services.redemptions`', the write-offs time makes due `services.loyalty_upkeep`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ariane.domain.clock import format_duration, iso
from ariane.domain.earn_rules import Limit
from ariane.domain.errors import Conflict, DomainError, NotFound
from ariane.domain.loyalty import Lot, take, track
from ariane.domain.programmes import Programme
from ariane.domain.tiers import Standing
from ariane.storage import loyalty as store
from ariane.storage import profiles as profile_store
from ariane.storage import rewards as reward_store
from ariane.storage.database import Connection, RetryTransaction

KEY_WIDTH = 200
_NAME_WIDTH = 64
# How errors name the idempotency key: as the header of the API that carries it.
IDEMPOTENCY_KEY = "Idempotency-Key"


class LimitReached(Conflict):
    """An earn rule that gave a member as often as its limit allows."""

    code = "limit_reached"


def check_movement(programme: str, key: str, points: int) -> None:
    """The arguments every movement takes, checked before its transaction."""
    if not programme or len(programme) > _NAME_WIDTH:
        raise DomainError(
            f"programme needs a name of 1 to {_NAME_WIDTH} characters", field="programme"
        )
    if not key or len(key) > KEY_WIDTH:
        raise DomainError(
            f"an Idempotency-Key of 1 to {KEY_WIDTH} characters is needed, the same for"
            " every retry of one movement",
            field=IDEMPOTENCY_KEY,
        )
    if isinstance(points, bool) or not isinstance(points, int) or points <= 0:
        raise DomainError("points must be a whole number above 0", field="points")


def check_key_room(key: str, movement: str, room: int) -> None:
    """A key short enough to leave `room` characters for what `movement` appends to it
    (the keys of its several entries)."""
    if len(key) > KEY_WIDTH - room:
        raise DomainError(
            f"{movement}'s Idempotency-Key has at most {KEY_WIDTH - room} characters",
            field=IDEMPOTENCY_KEY,
        )


# --- the member's account ---------------------------------------------------------------


def live_member(conn: Connection, profile_id: str) -> str:
    """The profile id the member lives under now (a merge may have moved them)."""
    live = profile_store.resolve_profile_id(conn, profile_id)
    if live is None:
        raise NotFound(f"no profile {profile_id!r}", field="profile_id")
    return live


def begin_movement(
    conn: Connection,
    clock: Callable[[], datetime],
    programme: str,
    profile_id: str,
    key: str | None,
) -> tuple[str, Standing, dict[str, Any] | None]:
    """The member's live profile id, their account locked until commit, and their
    tier as it stands; and the entry already recorded under `key`, if any. A merge
    locks the accounts too: a member merged away while this waited is a race lost,
    run again (and found under the survivor)."""
    member = live_member(conn, profile_id)
    standing = store.lock_account(conn, programme, member, clock())
    live, found = store.still_live(conn, programme, member, key)
    if not live:
        raise RetryTransaction(f"member {member} was merged meanwhile")
    return member, standing, found


def lock_member(
    conn: Connection, clock: Callable[[], datetime], programme: str, profile_id: str
) -> tuple[str, Standing]:
    """`begin_movement` with no key to look up."""
    member, standing, _ = begin_movement(conn, clock, programme, profile_id, None)
    return member, standing


def check_limit(
    conn: Connection, programme: str, member: str, rule: str, limit: Limit, now: datetime
) -> None:
    """`LimitReached` if the earn rule gave the member as often as its limit allows;
    under the member's lock, so that concurrent awards cannot both pass."""
    since = None if limit.per is None else now - limit.per
    used = store.rule_uses(conn, programme, member, rule, since)
    if used >= limit.count:
        period = "" if limit.per is None else f" in {format_duration(limit.per)}"
        raise LimitReached(
            f"rule {rule!r} gave the member {used} time(s){period}, as often as it may",
            field="rule",
        )


# --- entries, once under their key ------------------------------------------------------


def key_reused(found: dict[str, Any], what: str) -> Conflict:
    """The refusal of a key already used by the entry `found`, which was `what`."""
    return Conflict(
        f"Idempotency-Key {found['idempotency_key']!r} was used at {iso(found['at'])} for"
        f" another movement ({what}); use a new key for a new movement",
        field=IDEMPOTENCY_KEY,
    )


def entry_reused(found: dict[str, Any]) -> Conflict:
    """`key_reused`, naming the entry `found` by its kind and points."""
    return key_reused(found, f"{found['kind']} of {abs(found['points'])} points")


def replay(
    conn: Connection, found: dict[str, Any], member: str, kind: str, points: int
) -> dict[str, Any]:
    """The first answer to a movement under the key of `found`: the entry, if it was
    this same movement (a reward bought is not a plain spend)."""
    bought = purchase_paid_by(conn, found)
    if bought is not None:
        raise key_reused(found, f"the purchase of reward {bought['reward']!r}")
    if (found["profile_id"], found["kind"], found["points"]) != (member, kind, points):
        raise entry_reused(found)
    return found


def purchase_paid_by(conn: Connection, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The redemption of a reward the entry paid for, if it is such a spend."""
    return reward_store.redemption_by_entry(conn, entry["id"]) if entry["kind"] == "spend" else None


def record(
    conn: Connection,
    programme: str,
    member: str,
    kind: str,
    points: int,
    key: str,
    reference: str | None,
    now: datetime,
    *,
    rule: str | None = None,
) -> dict[str, Any]:
    """The entry written to the ledger under `key`, refused if another movement took
    that key."""
    row = {
        "programme": programme,
        "profile_id": member,
        "kind": kind,
        "points": points,
        "idempotency_key": key,
        "reference": reference,
        "at": now,
        "rule": rule,
    }
    entry_id = store.insert_entry(conn, row)
    if entry_id is None:
        # Taken meanwhile by a movement of another member (one of this member's would
        # have waited for the lock and been found above).
        found = store.entry_by_key(conn, programme, key)
        assert found is not None
        raise entry_reused(found)
    return {"id": entry_id, **row}


# --- lots of points -----------------------------------------------------------------------


def give_lot(
    conn: Connection,
    declared: Programme,
    member: str,
    entry: dict[str, Any],
    now: datetime,
    *,
    pending: bool,
) -> tuple[datetime, datetime | None]:
    """The lot of points an entry brings: spendable after the programme's return window
    (`pending`, for what a sale earned) or at once, until its validity runs out. When it
    becomes spendable, and when it expires."""
    expiry = declared.expiry
    available = now + expiry.return_window if pending else now
    expires = None if expiry.validity is None else now + expiry.validity
    points = entry["points"]
    store.insert_lot(
        conn, declared.id, member, Lot(entry["id"], points, points, now, available, expires)
    )
    return available, expires


def spend(
    conn: Connection,
    programme: str,
    member: str,
    points: int,
    key: str,
    reference: str | None,
    now: datetime,
    *,
    rule: str | None = None,
    on_timeline: bool = True,
) -> dict[str, Any]:
    """Take `points` from the member's oldest lots; with `on_timeline`, put the spend on
    their timeline (else the caller does, with its own event)."""
    taken = take(store.lots(conn, programme, member), points, now) if points else []
    entry = record(conn, programme, member, "spend", -points, key, reference, now, rule=rule)
    store.take_from_lots(conn, entry["id"], member, taken)
    if points and on_timeline:
        put_on_timeline(conn, entry, "Points Spent")
    return entry


# --- the member's timeline ----------------------------------------------------------------


def put_on_timeline(conn: Connection, entry: dict[str, Any], name: str, **more: Any) -> None:
    """Put the entry on the member's timeline, once it commits."""
    store.add_events(conn, [timeline_event(entry, name, **more)])


def timeline_event(
    entry: dict[str, Any], name: str, **more: Any
) -> tuple[str, str, dict[str, Any], datetime]:
    """The timeline event `name` of the entry, for `store.add_events`."""
    message_id = f"loyalty-entry-{entry['id']}"
    properties = {
        "programme": entry["programme"],
        "points": abs(entry["points"]),
        "reference": entry["reference"],
        **more,
    }
    message = track(name, message_id, entry["at"], properties)
    return message_id, entry["profile_id"], message, entry["at"]
