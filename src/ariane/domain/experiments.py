"""How a strategy compares with doing nothing, in numbers a marketer can trust while
looking at them every hour.

Each journey assigns the people who enter it to arms (`domain.journeys`): the treated,
split into variants, and a holdout (and the workspace's global control group) that
follows the journey without being sent anything. An arm here is what those people did
within the goal's window: how many entered, how many converted, and the revenue their
conversions brought (its sum and sum of squares, per person, for the variance).

Two kinds of interval are given for each comparison with the holdout:

- **live**: an anytime-valid confidence sequence (the asymptotic confidence sequence of
  Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
  asymptotic confidence sequences", 2023), tuned to be tightest at the planned sample
  size. It holds at every look at once: stopping the first time it excludes zero keeps
  the error rate at `alpha`, however often one looks. Decisions are taken on it, with
  Holm's correction across the strategies compared with the same holdout.
- **fixed**: the usual fixed-horizon intervals (Newcombe's for the difference of two
  proportions, the log method for their ratio: `statsmodels`), narrower, valid only
  when read once, at the planned end.

A sample-ratio-mismatch check (chi-square) warns when the arms' sizes do not match their
planned shares: an assignment that went wrong makes every other number meaningless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    test_proportions_2indep,
)

ALPHA = 0.05
POWER = 0.8
# Below this p-value, the arms' sizes are called a mismatch: assignment is deterministic,
# so a real mismatch shows at once, and a stricter threshold keeps false alarms rare
# for those who check every hour.
SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class Arm:
    """What the people of one arm did within the goal's window."""

    people: int
    converted: int
    revenue: float = 0.0
    # The sum of each person's revenue squared, for the variance of revenue per person.
    revenue_squared: float = 0.0

    @property
    def rate(self) -> float:
        return self.converted / self.people if self.people else 0.0

    @property
    def revenue_per_person(self) -> float:
        return self.revenue / self.people if self.people else 0.0

    def revenue_variance(self) -> float:
        """The sample variance of revenue per person."""
        if self.people < 2:
            return 0.0
        mean = self.revenue_per_person
        spread = self.revenue_squared - self.people * mean * mean
        return max(0.0, spread / (self.people - 1))


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high

    def scaled(self, factor: float) -> Interval:
        ends = sorted((self.low * factor, self.high * factor))
        return Interval(ends[0], ends[1])

    def shown(self) -> list[float]:
        return [_round(self.low), _round(self.high)]


@dataclass(frozen=True, slots=True)
class Sequential:
    """The confidence sequence's tuning: tightest at `planned` people in the two arms
    compared, at level `alpha`."""

    planned: int
    alpha: float = ALPHA

    @property
    def rho2(self) -> float:
        """The mixture's variance, chosen so that the sequence is tightest near
        `planned` (the approximate optimum of Waudby-Smith et al., their eq. for rho)."""
        spent = -2 * math.log(self.alpha)
        return (spent + math.log(spent + 1)) / max(self.planned, 1)

    def half_width(self, variance: float, people: int) -> float:
        """Half the width of the sequence for an estimate of the given variance, after
        `people` observations in all."""
        if people <= 0 or variance <= 0:
            return math.inf if people <= 0 else 0.0
        rho2 = self.rho2
        grown = people * rho2 + 1
        margin = 2 * grown * math.log(math.sqrt(grown) / self.alpha) / (people**2 * rho2)
        return math.sqrt(variance * people * margin)

    def p_value(self, estimate: float, variance: float, people: int) -> float:
        """The always-valid p-value of zero: the smallest level at which the sequence,
        with this tuning, excludes it."""
        if people <= 0 or variance <= 0:
            return 1.0
        rho2 = self.rho2
        grown = people * rho2 + 1
        exponent = estimate * estimate * people * rho2 / (2 * grown * variance)
        return min(1.0, math.sqrt(grown) * math.exp(-exponent))


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treated arm (a variant, or all the treated) against the holdout."""

    name: str
    treated: Arm
    control: Arm
    difference: float
    relative: float | None
    live: Interval
    live_p: float
    fixed: Interval
    fixed_ratio: Interval | None
    fixed_p: float
    revenue_difference: float
    revenue_live: Interval
    revenue_fixed: Interval
    # Filled in by `compare_all`: the p-value after Holm's correction and the decision.
    adjusted_p: float = 1.0
    significant: bool = False

    @property
    def incremental_revenue(self) -> float:
        """Revenue the strategy brought beyond doing nothing, for its treated people."""
        return self.revenue_difference * self.treated.people

    def shown(self) -> dict[str, object]:
        return {
            "name": self.name,
            "treated": _arm(self.treated),
            "holdout": _arm(self.control),
            "conversion": {
                "difference": _round(self.difference),
                "relative": None if self.relative is None else _round(self.relative),
                "live_interval": self.live.shown(),
                "live_p_value": _round(self.live_p),
                "adjusted_p_value": _round(self.adjusted_p),
                "significant": self.significant,
                "fixed_interval": self.fixed.shown(),
                "fixed_relative_interval": (
                    None if self.fixed_ratio is None else self.fixed_ratio.shown()
                ),
                "fixed_p_value": _round(self.fixed_p),
            },
            "revenue_per_person": {
                "difference": _round(self.revenue_difference),
                "live_interval": self.revenue_live.shown(),
                "fixed_interval": self.revenue_fixed.shown(),
            },
            "incremental_revenue": {
                "value": _round(self.incremental_revenue),
                "live_interval": self.revenue_live.scaled(self.treated.people).shown(),
                "fixed_interval": self.revenue_fixed.scaled(self.treated.people).shown(),
            },
        }


def compare(name: str, treated: Arm, control: Arm, tuning: Sequential) -> Comparison:
    """The treated arm against the holdout: the difference of conversion rates (and
    their ratio, less one), of revenue per person, with live and fixed intervals."""
    difference = treated.rate - control.rate
    relative = difference / control.rate if control.rate > 0 else None
    people = treated.people + control.people
    variance = _proportions_variance(treated, control)
    half = tuning.half_width(variance, people)
    live = Interval(difference - half, difference + half)
    live_p = tuning.p_value(difference, variance, people)
    fixed, fixed_ratio, fixed_p = _fixed(treated, control, tuning.alpha)
    revenue_difference = treated.revenue_per_person - control.revenue_per_person
    revenue_variance = _means_variance(treated, control)
    revenue_half = tuning.half_width(revenue_variance, people)
    z = stats.norm.ppf(1 - tuning.alpha / 2)
    revenue_fixed_half = z * math.sqrt(revenue_variance)
    return Comparison(
        name=name,
        treated=treated,
        control=control,
        difference=difference,
        relative=relative,
        live=live,
        live_p=live_p,
        fixed=fixed,
        fixed_ratio=fixed_ratio,
        fixed_p=fixed_p,
        revenue_difference=revenue_difference,
        revenue_live=Interval(revenue_difference - revenue_half, revenue_difference + revenue_half),
        revenue_fixed=Interval(
            revenue_difference - revenue_fixed_half, revenue_difference + revenue_fixed_half
        ),
    )


def compare_all(treated: Mapping[str, Arm], control: Arm, tuning: Sequential) -> list[Comparison]:
    """Each treated arm against the one holdout, the decisions corrected for their
    number (Holm, on the always-valid p-values): the chance that any strategy is called
    better or worse than doing nothing when none is stays at `alpha`."""
    found = [compare(name, arm, control, tuning) for name, arm in treated.items()]
    if not found:
        return []
    adjusted = holm([c.live_p for c in found])
    return [
        replace(c, adjusted_p=p, significant=p < tuning.alpha)
        for c, p in zip(found, adjusted, strict=True)
    ]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: the k-th smallest is multiplied by the number
    of hypotheses not yet rejected, and none is smaller than the one before. Written
    here rather than taken from `statsmodels.stats.multitest.multipletests`, which runs
    the garbage collector on every call: a readout looked at every hour, and the A/A
    simulations of the tests, call it thousands of times."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True, slots=True)
class Mismatch:
    p_value: float
    expected: dict[str, float]

    @property
    def warning(self) -> bool:
        return self.p_value < SRM_THRESHOLD


def sample_ratio(observed: Mapping[str, int], shares: Mapping[str, float]) -> Mismatch | None:
    """Whether the arms' sizes match their planned shares (chi-square goodness of fit);
    None when there are too few people to tell, or a single arm."""
    names = [name for name in shares if shares[name] > 0]
    total = sum(observed.get(name, 0) for name in names)
    weight = sum(shares[name] for name in names)
    if len(names) < 2 or total < 20 or weight <= 0:
        return None
    expected = {name: total * shares[name] / weight for name in names}
    result = stats.chisquare(
        [observed.get(name, 0) for name in names], [expected[name] for name in names]
    )
    return Mismatch(float(result.pvalue), {k: _round(v) for k, v in expected.items()})


@dataclass(frozen=True, slots=True)
class Power:
    """When to stop waiting: the smallest difference of conversion rates the arms can
    show now (at `POWER`), and how many people each arm needs for a chosen one."""

    detectable_now: float | None
    needed_per_arm: int | None


def power(treated: Arm, control: Arm, effect: float | None, alpha: float = ALPHA) -> Power:
    """The minimum detectable effect reached so far (absolute, in conversion rate) and,
    for `effect` (absolute, over the holdout's rate), the people each arm needs."""
    baseline = control.rate
    analysis = NormalIndPower()
    detectable = None
    if treated.people >= 2 and control.people >= 2 and 0 < baseline < 1:
        h = analysis.solve_power(
            effect_size=None,
            nobs1=treated.people,
            alpha=alpha,
            power=POWER,
            ratio=control.people / treated.people,
        )
        lifted = math.sin(float(h) / 2 + math.asin(math.sqrt(baseline))) ** 2
        detectable = lifted - baseline
    needed = None
    if effect is not None and 0 < baseline < 1 and 0 < baseline + effect < 1 and effect:
        h = abs(float(proportion_effectsize(baseline + effect, baseline)))
        ratio = control.people / treated.people if treated.people else 1.0
        n = analysis.solve_power(
            effect_size=h, nobs1=None, alpha=alpha, power=POWER, ratio=ratio or 1.0
        )
        needed = math.ceil(float(n))
    return Power(detectable, needed)


def naive_p(treated: Arm, control: Arm) -> float:
    """The fixed-horizon two-proportion z-test's p-value: what a dashboard that looks
    every hour and stops at p < 0.05 wrongly relies on."""
    variance = _proportions_variance(treated, control, pooled=True)
    if variance <= 0:
        return 1.0
    z = (treated.rate - control.rate) / math.sqrt(variance)
    return float(2 * stats.norm.sf(abs(z)))


# --- the arithmetic ---------------------------------------------------------------------


def _proportions_variance(treated: Arm, control: Arm, pooled: bool = False) -> float:
    """The variance of the difference of the two rates (unpooled, unless asked)."""
    if treated.people == 0 or control.people == 0:
        return 0.0
    if pooled:
        p = (treated.converted + control.converted) / (treated.people + control.people)
        return p * (1 - p) * (1 / treated.people + 1 / control.people)
    return (
        treated.rate * (1 - treated.rate) / treated.people
        + control.rate * (1 - control.rate) / control.people
    )


def _means_variance(treated: Arm, control: Arm) -> float:
    if treated.people == 0 or control.people == 0:
        return 0.0
    return treated.revenue_variance() / treated.people + control.revenue_variance() / control.people


def _fixed(treated: Arm, control: Arm, alpha: float) -> tuple[Interval, Interval | None, float]:
    if treated.people == 0 or control.people == 0:
        return Interval(-1.0, 1.0), None, 1.0
    counts = (treated.converted, treated.people, control.converted, control.people)
    low, high = confint_proportions_2indep(*counts, method="newcomb", alpha=alpha)
    ratio = None
    if treated.converted > 0 and control.converted > 0:
        r_low, r_high = confint_proportions_2indep(
            *counts, method="log", compare="ratio", alpha=alpha
        )
        ratio = Interval(float(r_low) - 1, float(r_high) - 1)
    tested = test_proportions_2indep(*counts, method="wald", return_results=True)
    p = float(tested.pvalue)
    return Interval(float(low), float(high)), ratio, p if math.isfinite(p) else 1.0


def _arm(arm: Arm) -> dict[str, object]:
    return {
        "people": arm.people,
        "converted": arm.converted,
        "rate": _round(arm.rate),
        "revenue": _round(arm.revenue),
        "revenue_per_person": _round(arm.revenue_per_person),
    }


def _round(value: float) -> float:
    if not math.isfinite(value):
        return value
    return round(value, 6)
