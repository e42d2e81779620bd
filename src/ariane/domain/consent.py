"""Consent per purpose: a history of decisions, the current one honouring expiry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ariane.domain.errors import DomainError

STATUSES = frozenset({"granted", "denied", "withdrawn"})
MAX_PURPOSE_LENGTH = 100


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    purpose: str
    status: str
    at: datetime
    source: str
    expires_at: datetime | None = None

    def status_at(self, now: datetime) -> str:
        """`expired` once the expiry has passed, otherwise the status decided."""
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return self.status


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise DomainError(
            f"status {status!r} is not one of {', '.join(sorted(STATUSES))}", field="status"
        )
    return status


def check_purpose(purpose: str) -> str:
    purpose = purpose.strip()
    if not purpose or len(purpose) > MAX_PURPOSE_LENGTH:
        raise DomainError(
            f"purpose must be 1 to {MAX_PURPOSE_LENGTH} characters, such as marketing_email",
            field="purpose",
        )
    return purpose


def latest_decisions(history: Iterable[ConsentDecision]) -> dict[str, ConsentDecision]:
    """The most recent decision for each purpose; on a tie, the one recorded last."""
    latest: dict[str, ConsentDecision] = {}
    for decision in history:
        known = latest.get(decision.purpose)
        if known is None or decision.at >= known.at:
            latest[decision.purpose] = decision
    return latest


def is_change(known: ConsentDecision | None, decision: ConsentDecision) -> bool:
    """Whether `decision` changes the status in force when it was made.

    Events repeat their consent preferences on every call, so a repeat is not history;
    an older decision arriving late does not override a newer one either. A grant that
    repeats one which had expired by then is a renewal, and so a change.
    """
    if known is None:
        return True
    if decision.at < known.at:
        return False
    if known.status_at(decision.at) != decision.status:
        return True
    return decision.expires_at is not None and decision.expires_at != known.expires_at


def current_consents(
    history: Iterable[ConsentDecision], now: datetime
) -> dict[str, dict[str, Any]]:
    """The status in force for each purpose: the latest decision, unless it has expired."""
    current: dict[str, dict[str, Any]] = {}
    for purpose, decision in sorted(latest_decisions(history).items()):
        status = decision.status_at(now)
        current[purpose] = {
            "status": status,
            "granted": status == "granted",
            "at": decision.at,
            "source": decision.source,
            "expires_at": decision.expires_at,
        }
    return current


def consents_from_message(
    context: dict[str, Any], at: datetime, source: str, *, received_at: datetime
) -> list[ConsentDecision]:
    """Segment's `context.consent.categoryPreferences`: {purpose: true|false}, decided at
    the event's time `at`, but never later than Ariane received it: dated ahead by a
    device clock, a decision would hold against every later one until that date.

    Purposes that are not booleans, or whose names do not fit, are ignored: consent is
    never inferred from a value that does not plainly say yes or no.
    """
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return []
    preferences = consent.get("categoryPreferences")
    if not isinstance(preferences, dict):
        return []
    at = min(at, received_at)
    return [
        ConsentDecision(str(purpose).strip(), "granted" if value else "denied", at, source)
        for purpose, value in preferences.items()
        if isinstance(value, bool) and 0 < len(str(purpose).strip()) <= MAX_PURPOSE_LENGTH
    ]
