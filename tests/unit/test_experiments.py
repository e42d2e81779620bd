"""The readout's statistics: live intervals that stay honest under peeking, fixed ones
beside them, Holm across strategies, the sample-ratio check, power."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ariane.domain.experiments import (
    Arm,
    Sequential,
    compare,
    compare_all,
    holm,
    naive_p,
    power,
    sample_ratio,
)

PEEKS = 20
PER_ARM = 4_000


def peeked(rate: float, runs: int, seed: int, strategies: int = 1) -> tuple[float, float]:
    """A/A experiments (every arm converts at `rate`), each looked at `PEEKS` times as
    people come in: how often the live rule, and the naive z-test, ever call a
    difference (any strategy against the holdout, with Holm for the live rule)."""
    rng = np.random.default_rng(seed)
    tuning = Sequential(planned=PER_ARM * (strategies + 1))
    looks = np.linspace(PER_ARM / PEEKS, PER_ARM, PEEKS).astype(int)
    live_alarms = naive_alarms = 0
    for _ in range(runs):
        # Each arm's conversions, person by person, counted at each look.
        counts = rng.binomial(1, rate, size=(strategies + 1, PER_ARM)).cumsum(axis=1)
        live = naive = False
        for n in looks:
            control = Arm(int(n), int(counts[0, n - 1]))
            treated = {
                f"s{i}": Arm(int(n), int(counts[i, n - 1])) for i in range(1, strategies + 1)
            }
            if strategies == 1:
                found = compare("s1", treated["s1"], control, tuning)
                live = live or found.live.excludes(0.0)
            else:
                live = live or any(c.significant for c in compare_all(treated, control, tuning))
            naive = naive or any(naive_p(arm, control) < 0.05 for arm in treated.values())
        live_alarms += live
        naive_alarms += naive
    return live_alarms / runs, naive_alarms / runs


def test_peeking_20_times_at_the_live_interval_keeps_false_alarms_at_five_percent() -> None:
    live, naive = peeked(rate=0.1, runs=1_000, seed=7)
    assert live <= 0.05
    # The naive test, read at every look, calls a difference in about a quarter of them.
    assert 0.15 <= naive <= 0.32


def test_three_strategies_against_one_holdout_keep_the_family_wise_rate() -> None:
    live, naive = peeked(rate=0.2, runs=400, seed=11, strategies=3)
    assert live <= 0.05
    assert naive >= 0.3


def test_a_real_uplift_is_found_by_the_live_rule_and_covered_by_both_intervals() -> None:
    rng = np.random.default_rng(3)
    control = Arm(10_000, int(rng.binomial(10_000, 0.10)))
    treated = Arm(10_000, int(rng.binomial(10_000, 0.13)))
    found = compare("nudge", treated, control, Sequential(planned=20_000))
    assert found.live.excludes(0.0) and found.fixed.excludes(0.0)
    assert found.live.low <= 0.03 <= found.live.high
    assert found.fixed.low <= 0.03 <= found.fixed.high
    # The live interval pays for being valid at every look: it is wider.
    assert found.live.high - found.live.low > found.fixed.high - found.fixed.low
    assert found.relative is not None and 0.15 < found.relative < 0.45
    assert found.fixed_ratio is not None and found.fixed_ratio.low > 0


def test_the_always_valid_p_value_crosses_alpha_where_the_interval_leaves_zero() -> None:
    tuning = Sequential(planned=5_000)
    for converted in range(100, 200, 7):
        found = compare("x", Arm(2_500, converted), Arm(2_500, 125), tuning)
        assert (found.live_p < tuning.alpha) == found.live.excludes(0.0)


def test_revenue_per_person_and_incremental_revenue_with_intervals() -> None:
    # Treated: 300 of 2,000 bought for 50 each; holdout: 200 of 2,000.
    treated = Arm(2_000, 300, revenue=300 * 50.0, revenue_squared=300 * 50.0**2)
    control = Arm(2_000, 200, revenue=200 * 50.0, revenue_squared=200 * 50.0**2)
    found = compare("cart", treated, control, Sequential(planned=4_000))
    assert found.revenue_difference == pytest.approx(2.5)
    assert found.incremental_revenue == pytest.approx(5_000.0)
    assert found.revenue_fixed.low < 2.5 < found.revenue_fixed.high
    assert found.revenue_live.low < found.revenue_fixed.low
    shown = found.shown()
    assert shown["incremental_revenue"]["value"] == 5_000.0  # type: ignore[index]


def test_a_sample_ratio_mismatch_is_told_and_a_fair_split_is_not() -> None:
    fair = sample_ratio({"treated": 9_020, "holdout": 980}, {"treated": 0.9, "holdout": 0.1})
    assert fair is not None and not fair.warning
    broken = sample_ratio({"treated": 9_400, "holdout": 600}, {"treated": 0.9, "holdout": 0.1})
    assert broken is not None and broken.warning
    assert sample_ratio({"treated": 5}, {"treated": 1.0}) is None


def test_power_tells_the_smallest_effect_seen_now_and_the_people_needed() -> None:
    found = power(Arm(5_000, 600), Arm(5_000, 500), effect=0.01)
    assert found.detectable_now is not None and 0.01 < found.detectable_now < 0.025
    assert found.needed_per_arm is not None
    # About 14,700 a arm to see 10% -> 11% at 80% power: a classic figure.
    assert 13_000 < found.needed_per_arm < 16_500
    # More people, smaller effects.
    later = power(Arm(50_000, 6_000), Arm(50_000, 5_000), effect=None)
    assert later.detectable_now is not None and later.detectable_now < found.detectable_now


def test_empty_arms_give_no_number_rather_than_an_error() -> None:
    found = compare("none", Arm(0, 0), Arm(0, 0), Sequential(planned=100))
    assert found.difference == 0 and found.relative is None
    assert math.isinf(found.live.high)
    assert power(Arm(0, 0), Arm(0, 0), effect=0.01) == power(Arm(0, 0), Arm(0, 0), None)


def test_holm_adjusts_as_statsmodels_does() -> None:
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(5)
    for size in (1, 2, 3, 7):
        p = list(rng.uniform(0, 0.2, size))
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
