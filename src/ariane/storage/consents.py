"""Consent history rows: every decision is kept; nothing is updated in place."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.consent import ConsentDecision, is_change
from ariane.storage.dialect import chunked
from ariane.storage.tables import consents

# People a statement asks about at most: SQLite takes up to 32,766 parameters.
_CHUNK = 400


def _decision(row: Any) -> ConsentDecision:
    return ConsentDecision(row.purpose, row.status, row.at, row.source, row.expires_at)


def _row(profile_id: str, decision: ConsentDecision) -> dict[str, Any]:
    return {
        "profile_id": profile_id,
        "purpose": decision.purpose,
        "status": decision.status,
        "at": decision.at,
        "source": decision.source,
        "expires_at": decision.expires_at,
    }


def _ordered(profile_ids: Collection[str]) -> sa.Select[Any]:
    return (
        sa.select(consents)
        .where(consents.c.profile_id.in_(sorted(profile_ids)))
        .order_by(consents.c.at, consents.c.id)
    )


def history(conn: Connection, profile_id: str) -> list[ConsentDecision]:
    """Every decision about the person, oldest first."""
    return [_decision(row) for row in conn.execute(_ordered([profile_id]))]


def histories(conn: Connection, profile_ids: Collection[str]) -> dict[str, list[ConsentDecision]]:
    """`history` of each of these people (an empty one for those never asked), at once."""
    found: dict[str, list[ConsentDecision]] = {person: [] for person in profile_ids}
    for chunk in chunked(sorted(found), _CHUNK):
        for row in conn.execute(_ordered(chunk)):
            found[row.profile_id].append(_decision(row))
    return found


def insert(conn: Connection, profile_id: str, decision: ConsentDecision) -> Change:
    """Record a decision made through the API; the change it makes."""
    known = None
    for row in conn.execute(_ordered([profile_id]).where(consents.c.purpose == decision.purpose)):
        known = _decision(row)
    row_id = conn.execute(
        consents.insert().values(**_row(profile_id, decision)).returning(consents.c.id)
    ).scalar_one()
    return profile_id, decision, _status(known, decision), row_id


# A change of consent: the profile, the decision, the status in force before it, and
# the id of the decision's row.
Change = tuple[str, ConsentDecision, str | None, int]


def record_changes(
    conn: Connection, updates: Sequence[tuple[str, ConsentDecision]]
) -> list[Change]:
    """Record the decisions carried by events that change the status in force; those."""
    latest: dict[tuple[str, str], ConsentDecision] = {}
    for row in conn.execute(_ordered({p for p, _ in updates})):
        latest[(row.profile_id, row.purpose)] = _decision(row)
    made: list[tuple[str, ConsentDecision, str | None]] = []
    for profile_id, decision in sorted(updates, key=lambda u: u[1].at):
        key = (profile_id, decision.purpose)
        known = latest.get(key)
        if is_change(known, decision):
            latest[key] = decision
            made.append((profile_id, decision, _status(known, decision)))
    if not made:
        return []
    ids = conn.execute(
        consents.insert().returning(consents.c.id, sort_by_parameter_order=True),
        [_row(p, decision) for p, decision, _ in made],
    ).scalars()
    return [(*change, row_id) for change, row_id in zip(made, ids, strict=True)]


def _status(known: ConsentDecision | None, decision: ConsentDecision) -> str | None:
    return None if known is None else known.status_at(decision.at)
