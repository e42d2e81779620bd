"""Consent history rows: every decision is kept; nothing is updated in place."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ariane.domain.consent import ConsentDecision
from ariane.storage.tables import consents


def history(conn: Connection, profile_id: str) -> list[ConsentDecision]:
    rows = conn.execute(
        sa.select(consents)
        .where(consents.c.profile_id == profile_id)
        .order_by(consents.c.at, consents.c.id)
    )
    return [ConsentDecision(r.purpose, r.status, r.at, r.source, r.expires_at) for r in rows]


def insert(conn: Connection, profile_id: str, decision: ConsentDecision) -> None:
    conn.execute(
        consents.insert().values(
            profile_id=profile_id,
            purpose=decision.purpose,
            status=decision.status,
            at=decision.at,
            source=decision.source,
            expires_at=decision.expires_at,
        )
    )


def record_changes(conn: Connection, updates: Sequence[tuple[str, ConsentDecision]]) -> None:
    """Record decisions carried by events, skipping those that repeat the status in force.

    Events repeat their consent preferences on every call; only a change is history.
    """
    profile_ids = sorted({p for p, _ in updates})
    latest: dict[tuple[str, str], ConsentDecision] = {}
    rows = conn.execute(
        sa.select(consents)
        .where(consents.c.profile_id.in_(profile_ids))
        .order_by(consents.c.at, consents.c.id)
    )
    for r in rows:
        latest[(r.profile_id, r.purpose)] = ConsentDecision(
            r.purpose, r.status, r.at, r.source, r.expires_at
        )
    new_rows = []
    for profile_id, decision in sorted(updates, key=lambda u: u[1].at):
        known = latest.get((profile_id, decision.purpose))
        if known is not None and (known.status == decision.status or known.at > decision.at):
            continue
        latest[(profile_id, decision.purpose)] = decision
        new_rows.append(
            {
                "profile_id": profile_id,
                "purpose": decision.purpose,
                "status": decision.status,
                "at": decision.at,
                "source": decision.source,
                "expires_at": decision.expires_at,
            }
        )
    if new_rows:
        conn.execute(consents.insert(), new_rows)
