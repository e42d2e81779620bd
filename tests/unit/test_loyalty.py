"""Lots of loyalty points: pending, spendable, expired; spends oldest first, never more
than the member has; returns taking back in proportion, never below zero."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ariane.domain.errors import DomainError
from ariane.domain.loyalty import (
    Lot,
    NotEnoughPoints,
    balance,
    expired,
    points_to_reverse,
    take,
    take_back,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def lot(
    lot_id: int,
    points: int,
    *,
    day: int = 0,
    remaining: int | None = None,
    pending_days: int = 0,
    expires_days: int | None = None,
) -> Lot:
    earned = T0 + timedelta(days=day)
    return Lot(
        id=lot_id,
        points=points,
        remaining=points if remaining is None else remaining,
        earned_at=earned,
        available_at=earned + timedelta(days=pending_days),
        expires_at=None if expires_days is None else earned + timedelta(days=expires_days),
    )


def test_a_lot_is_pending_through_the_return_window_then_spendable_until_it_expires() -> None:
    bought = lot(1, 100, pending_days=14, expires_days=365)
    assert bought.state(T0) == "pending"
    assert bought.state(T0 + timedelta(days=14) - timedelta(microseconds=1)) == "pending"
    assert bought.state(T0 + timedelta(days=14)) == "available"
    assert bought.state(T0 + timedelta(days=365)) == "expired"
    assert lot(2, 100, remaining=0).state(T0) == "used"


def test_the_balance_counts_spendable_points_and_shows_pending_and_the_next_expiry() -> None:
    lots = [
        lot(1, 50, expires_days=30),
        lot(2, 70, day=1, expires_days=30),
        lot(3, 40, day=2, pending_days=14),
        lot(4, 10, day=3, expires_days=2),
    ]
    now = T0 + timedelta(days=5)
    assert balance(lots, now).available == 120
    assert balance(lots, now).pending == 40
    assert (balance(lots, now).next_expiry, balance(lots, now).expiring) == (
        T0 + timedelta(days=30),
        50,
    )
    assert expired(lots, now) == [(4, 10)]


def test_a_spend_takes_the_oldest_lots_first() -> None:
    lots = [lot(2, 70, day=1), lot(1, 50), lot(3, 40, day=2)]
    assert take(lots, 100, T0 + timedelta(days=3)) == [(1, 50), (2, 50)]


def test_a_spend_beyond_what_can_be_spent_now_is_refused_whole() -> None:
    lots = [lot(1, 50), lot(2, 500, pending_days=14), lot(3, 80, expires_days=1)]
    with pytest.raises(NotEnoughPoints) as refused:
        take(lots, 60, T0 + timedelta(days=2))
    assert refused.value.field == "points"
    assert "can spend 50 points now, not 60" in refused.value.message
    with pytest.raises(DomainError):
        take(lots, 0, T0)


@st.composite
def member_lots(draw: st.DrawFn) -> list[Lot]:
    lots = []
    for lot_id in range(1, draw(st.integers(0, 8)) + 1):
        points = draw(st.integers(1, 500))
        lots.append(
            lot(
                lot_id,
                points,
                day=draw(st.integers(0, 60)),
                remaining=draw(st.integers(0, points)),
                pending_days=draw(st.integers(0, 30)),
                expires_days=draw(st.none() | st.integers(1, 120)),
            )
        )
    return lots


@given(member_lots(), st.integers(1, 2000), st.integers(0, 200))
@settings(max_examples=500, deadline=None)
def test_a_spend_takes_exactly_its_points_oldest_first_or_nothing(
    lots: list[Lot], points: int, day: int
) -> None:
    now = T0 + timedelta(days=day)
    can = balance(lots, now).available
    if points > can:
        with pytest.raises(NotEnoughPoints):
            take(lots, points, now)
        return
    taken = take(lots, points, now)
    assert sum(part for _, part in taken) == points
    by_id = {x.id: x for x in lots}
    assert all(
        0 < part <= by_id[i].remaining and by_id[i].state(now) == "available" for i, part in taken
    )
    # Oldest first: every lot before the last one touched is emptied.
    order = [
        x.id for x in sorted(lots, key=lambda x: (x.earned_at, x.id)) if x.state(now) == "available"
    ]
    touched = [i for i, _ in taken]
    assert touched == order[: len(touched)]
    assert all(part == by_id[i].remaining for i, part in taken[:-1])


@given(
    st.integers(0, 10_000),
    st.integers(1, 100_000),
    st.lists(st.integers(1, 100), min_size=1, max_size=10),
)
def test_returning_everything_in_parts_takes_back_exactly_what_was_earned(
    earned: int, eligible: int, weights: list[int]
) -> None:
    # Cut `eligible` into parts in proportion to the weights.
    cuts = sorted({eligible * sum(weights[:i]) // sum(weights) for i in range(1, len(weights))})
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, eligible], strict=True)]
    before, reversed_points = 0, []
    for part in parts:
        reversed_points.append(points_to_reverse(earned, eligible, before, part))
        before += part
    assert all(p >= 0 for p in reversed_points)
    assert sum(reversed_points) == earned
    # Never more, at any point, than the share of what came back.
    running = 0
    for index, points in enumerate(reversed_points):
        running += points
        assert running <= earned * sum(parts[: index + 1]) / eligible


def test_a_return_of_more_than_was_bought_is_refused() -> None:
    with pytest.raises(DomainError) as refused:
        points_to_reverse(100, 5_000, 4_000, 2_000)
    assert refused.value.field == "items"


def test_a_return_takes_back_from_its_own_lot_first_then_the_oldest() -> None:
    lots = [
        lot(1, 50),
        lot(2, 100, day=1, remaining=30),  # the returned order's lot, 70 spent already
        lot(3, 20, day=2),
    ]
    assert take_back(lots, 2, 90, T0 + timedelta(days=3)) == ([(2, 30), (1, 50), (3, 10)], 0)


def test_a_return_never_takes_the_balance_below_zero() -> None:
    lots = [lot(1, 100, remaining=10), lot(2, 5, day=1)]
    taken, short = take_back(lots, 1, 100, T0 + timedelta(days=2))
    assert taken == [(1, 10), (2, 5)]
    assert short == 85


def test_a_return_in_the_window_takes_back_its_pending_points() -> None:
    lots = [lot(1, 100, pending_days=14), lot(2, 40, pending_days=14, day=1)]
    taken, short = take_back(lots, 1, 60, T0 + timedelta(days=3))
    # Only its own lot: the other one is pending too, so not spendable.
    assert (taken, short) == ([(1, 60)], 0)
