"""Consent decisions: the status in force, expiry, what counts as a change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ariane.domain.consent import (
    ConsentDecision,
    check_purpose,
    check_status,
    consents_from_message,
    current_consents,
    is_change,
)
from ariane.domain.errors import DomainError

T0 = datetime(2024, 6, 1, 12, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def decision(
    status: str, hours: float, expires: float | None = None, purpose: str = "marketing_email"
) -> ConsentDecision:
    return ConsentDecision(
        purpose, status, at(hours), "src", at(expires) if expires is not None else None
    )


def test_the_latest_decision_per_purpose_is_in_force_whatever_the_order_given() -> None:
    history = [
        decision("granted", 2),
        decision("denied", 1),
        decision("granted", 0, purpose="analytics"),
        decision("withdrawn", 3, purpose="analytics"),
    ]
    current = current_consents(history, at(10))
    assert current["marketing_email"]["status"] == "granted"
    assert current["marketing_email"]["at"] == at(2)
    assert current["analytics"] == {
        "status": "withdrawn",
        "granted": False,
        "at": at(3),
        "source": "src",
        "expires_at": None,
    }


def test_on_equal_times_the_decision_recorded_last_wins() -> None:
    current = current_consents([decision("granted", 1), decision("denied", 1)], at(2))
    assert current["marketing_email"]["status"] == "denied"


def test_a_grant_expires_at_its_expiry_exactly() -> None:
    history = [decision("granted", 0, expires=5)]
    before = current_consents(history, at(5) - timedelta(microseconds=1))["marketing_email"]
    assert before["granted"] is True and before["status"] == "granted"
    after = current_consents(history, at(5))["marketing_email"]
    assert after["granted"] is False and after["status"] == "expired"
    assert after["expires_at"] == at(5)


@pytest.mark.parametrize(
    ("known", "new", "changes"),
    [
        (None, decision("granted", 1), True),
        (decision("granted", 0), decision("granted", 1), False),
        (decision("granted", 0), decision("denied", 1), True),
        # Late: an older decision never overrides a newer one.
        (decision("granted", 2), decision("denied", 1), False),
        # A repeat of a grant that had expired by then renews it.
        (decision("granted", 0, expires=1), decision("granted", 2), True),
        # A repeat while the grant still runs leaves its expiry alone.
        (decision("granted", 0, expires=5), decision("granted", 2), False),
        # A new expiry is a change even with the same status.
        (decision("granted", 0, expires=5), decision("granted", 2, expires=9), True),
    ],
)
def test_what_counts_as_a_change(
    known: ConsentDecision | None, new: ConsentDecision, changes: bool
) -> None:
    assert is_change(known, new) is changes


def test_segment_category_preferences() -> None:
    context = {
        "consent": {
            "categoryPreferences": {
                "Advertising": True,
                " analytics ": False,
                "maybe": "yes",
                "x" * 101: True,
                "": True,
            }
        }
    }
    found = consents_from_message(context, T0, "web", received_at=T0)
    assert found == [
        ConsentDecision("Advertising", "granted", T0, "web"),
        ConsentDecision("analytics", "denied", T0, "web"),
    ]
    assert consents_from_message({}, T0, "web", received_at=T0) == []
    assert (
        consents_from_message({"consent": {"categoryPreferences": []}}, T0, "web", received_at=T0)
        == []
    )
    assert consents_from_message({"consent": "all"}, T0, "web", received_at=T0) == []


def test_status_and_purpose_errors_name_the_field() -> None:
    assert check_status("granted") == "granted"
    with pytest.raises(DomainError) as bad_status:
        check_status("yes")
    assert bad_status.value.field == "status"
    assert "denied, granted, withdrawn" in bad_status.value.message
    assert check_purpose("  sms ") == "sms"
    for bad in ("", "   ", "p" * 101):
        with pytest.raises(DomainError) as bad_purpose:
            check_purpose(bad)
        assert bad_purpose.value.field == "purpose"
