"""Consent per purpose: a history of decisions, the current one honouring expiry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ariane.domain.errors import DomainError

STATUSES = frozenset({"granted", "denied", "withdrawn"})


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    purpose: str
    status: str
    at: datetime
    source: str
    expires_at: datetime | None = None


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise DomainError(
            f"status {status!r} is not one of {', '.join(sorted(STATUSES))}", field="status"
        )
    return status


def current_consents(
    history: Iterable[ConsentDecision], now: datetime
) -> dict[str, dict[str, Any]]:
    """The status in force for each purpose: the latest decision, unless it has expired."""
    latest: dict[str, ConsentDecision] = {}
    for decision in history:
        known = latest.get(decision.purpose)
        if known is None or decision.at >= known.at:
            latest[decision.purpose] = decision
    current: dict[str, dict[str, Any]] = {}
    for purpose, decision in sorted(latest.items()):
        expired = decision.expires_at is not None and decision.expires_at <= now
        current[purpose] = {
            "status": "expired" if expired else decision.status,
            "granted": decision.status == "granted" and not expired,
            "at": decision.at,
            "source": decision.source,
            "expires_at": decision.expires_at,
        }
    return current


def consents_from_message(
    context: dict[str, Any], at: datetime, source: str
) -> list[ConsentDecision]:
    """Segment's `context.consent.categoryPreferences`: {purpose: true|false}."""
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return []
    preferences = consent.get("categoryPreferences")
    if not isinstance(preferences, dict):
        return []
    return [
        ConsentDecision(str(purpose), "granted" if value else "denied", at, source)
        for purpose, value in preferences.items()
        if isinstance(value, bool)
    ]
