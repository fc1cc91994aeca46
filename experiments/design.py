"""Experiment design: the units each arm needs to detect an effect, and the days that takes.

Proportions use Cohen's h (statsmodels' ``proportion_effectsize``) with ``NormalIndPower``; means use
``TTestIndPower`` with the effect ``mde / sd``; ratio metrics the same with the linearised (delta-method) sd the
caller gives. Unequal traffic shares enter as statsmodels' ``ratio``; with more than two arms, alpha is split
(Bonferroni) across the comparisons against control. A sequential design is sized for the always-valid
confidence sequence of `experiments.sequential`, tuned to be tightest at the planned total. Without traffic the
units are found in closed form (normal power with the sequence's boundary in place of the fixed-horizon critical
value: a crossing at the last look only, so on the safe side); with traffic, a look each day is simulated and the
smallest size that keeps the power is found (about 2x the fixed-horizon units at alpha 0.05, power 0.8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from experiments.errors import ExperimentError
from experiments.sequential import compare_arms, critical_z

MetricKind = Literal["proportion", "mean", "ratio"]
METRIC_KINDS: tuple[str, ...] = ("proportion", "mean", "ratio")


@dataclass(frozen=True)
class DesignResult:
    """A sized experiment: per-arm units, total, days at the given traffic, and how they were found."""

    kind: MetricKind
    baseline: float
    mde: float
    relative_mde: float
    alpha: float
    power: float
    sd: float | None
    arms: tuple[str, ...]
    shares: dict[str, float]
    n_per_arm: dict[str, int]
    total: int
    daily_traffic: float | None
    days: int | None
    sequential: bool
    method: str
    comparison_alpha: float = 0.0
    """Alpha of each comparison against control (``alpha / (arms - 1)``)."""
    sequential_tuning: int | None = None
    """Sequential designs: units (control plus one arm) at which the confidence sequence is tightest; pass it
    to `analyse(..., sequential_tuning=...)`."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (the experiment spec keeps this under ``design``)."""
        out = asdict(self)
        out["arms"] = list(self.arms)
        if not math.isfinite(self.relative_mde):
            out["relative_mde"] = None  # a zero baseline: JSON has no infinity
        return out


def _check_unit_interval(field: str, value: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ExperimentError(f"{field}: {value!r} is outside (0, 1)")
    return float(value)


def _check_shares(arms: Sequence[str], shares: Mapping[str, float] | None) -> dict[str, float]:
    if isinstance(arms, str) or len(arms) < 2:
        raise ExperimentError("arms: at least two arms are needed, the first is control")
    if len(set(arms)) != len(arms):
        raise ExperimentError(f"arms: names repeat in {list(arms)}")
    if any(not isinstance(a, str) or not a for a in arms):
        raise ExperimentError("arms: every arm needs a non-empty name")
    if shares is None:
        return {a: 1.0 / len(arms) for a in arms}
    if set(shares) != set(arms):
        raise ExperimentError(f"shares: arms {sorted(shares)} do not match arms {list(arms)}")
    for arm, share in shares.items():
        if not isinstance(share, int | float) or not math.isfinite(share) or share <= 0:
            raise ExperimentError(f"shares: arm {arm!r} has share {share!r}, must be > 0")
    total = float(sum(shares.values()))
    if abs(total - 1.0) > 1e-6:
        raise ExperimentError(f"shares: they sum to {total:g}, not 1")
    return {a: float(shares[a]) for a in arms}


def _normal_power(effect: float, n_control: float, ratio: float, crit: float) -> float:
    """Two-sided power of a normal test on a standardised effect with a given critical value."""
    shift = effect / math.sqrt(1.0 / n_control + 1.0 / (n_control * ratio))
    return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))


MAX_LOOKS = 200
"""Looks simulated for a sequential design's daily peeks (longer experiments: looks spread evenly)."""


def look_fractions(total: float, daily_traffic: float | None) -> np.ndarray:
    """Cumulative share of the planned units at each daily look (the last look is 1)."""
    if daily_traffic is None:
        return np.array([1.0])
    days = max(1, math.ceil(total / daily_traffic - 1e-9))
    looks = min(days, MAX_LOOKS)
    return np.minimum(1.0, np.arange(1, looks + 1) * (days / looks) * daily_traffic / total)


def _sequential_power(
    effect: float, n_control: float, ratio: float, alpha: float, fractions: np.ndarray, sims: int, seed: int
) -> float:
    """Power of the confidence sequence checked at each look (a crossing at any look counts), by simulation."""
    comparison_total = n_control * (1.0 + ratio)
    shift = effect / math.sqrt(1.0 / n_control + 1.0 / (n_control * ratio))
    steps = np.diff(np.concatenate([[0.0], fractions]))
    rng = np.random.default_rng([seed, len(fractions)])
    paths = np.cumsum(rng.standard_normal((sims, len(fractions))) * np.sqrt(steps), axis=1) + shift * fractions
    z = paths / np.sqrt(fractions)
    crit = critical_z(comparison_total * fractions, alpha, tuning=comparison_total)
    return float(np.mean((np.abs(z) > crit).any(axis=1)))


def _sequential_n_control(
    effect: float, ratio: float, alpha: float, power: float, daily_traffic: float | None, control_share: float
) -> tuple[float, float]:
    """Control units so the sequence, tightest at the planned total, reaches ``power``.

    Without traffic: closed form, a crossing at the last look only (conservative). With traffic: the daily looks
    are simulated (20,000 Brownian paths, common random numbers) and the smallest size reaching ``power`` found
    by bisection between the fixed-horizon size and the closed form.
    """

    def last_look_gap(n_control: float) -> float:
        total = n_control * (1.0 + ratio)
        crit = float(critical_z(total, alpha, tuning=total))
        return _normal_power(effect, n_control, ratio, crit) - power

    high = 10.0
    while last_look_gap(high) < 0:
        high *= 2.0
        if high > 1e13:
            raise ExperimentError("mde: too small to detect with any practical number of units")
    upper = float(optimize.brentq(last_look_gap, 2.0, high, xtol=1e-3))
    if daily_traffic is None:
        return upper, upper * (1.0 + ratio)
    lower = max(2.0, float(NormalIndPower().solve_power(effect, alpha=alpha, power=power, ratio=ratio)))
    for _ in range(30):
        if upper - lower < max(0.5, 0.001 * upper):
            break
        middle = (lower + upper) / 2.0
        fractions = look_fractions(middle / control_share, daily_traffic)
        if _sequential_power(effect, middle, ratio, alpha, fractions, sims=20_000, seed=0) >= power:
            upper = middle
        else:
            lower = middle
    return upper, upper * (1.0 + ratio)


def design(
    kind: MetricKind,
    baseline: float,
    mde: float,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    sd: float | None = None,
    arms: Sequence[str] = ("control", "treatment"),
    shares: Mapping[str, float] | None = None,
    daily_traffic: float | None = None,
    sequential: bool = False,
) -> DesignResult:
    """Size an experiment on one metric: units per arm to detect ``mde`` with ``power`` at ``alpha``.

    Args:
        kind: "proportion" (a rate), "mean" (per-unit value) or "ratio" (sum over sum, delta method).
        baseline: the control's expected value (a rate in (0, 1) for a proportion).
        mde: the smallest effect worth detecting, absolute unless ``relative`` (then a fraction of baseline).
        relative: read ``mde`` as relative to the baseline.
        alpha: two-sided false-positive rate over all comparisons against control.
        power: chance of detecting an effect of size ``mde`` in each comparison.
        sd: per-unit standard deviation (mean) or the linearised sd (ratio); not used for a proportion.
        arms: arm names, control first.
        shares: traffic share per arm (default equal), summing to 1.
        daily_traffic: units entering the experiment per day, to give the duration.
        sequential: size for the always-valid (peek-any-day) test instead of the fixed-horizon one.
    """
    if kind not in METRIC_KINDS:
        raise ExperimentError(f"kind: {kind!r} is not one of {', '.join(METRIC_KINDS)}")
    alpha = _check_unit_interval("alpha", alpha)
    power = _check_unit_interval("power", power)
    if not isinstance(baseline, int | float) or not math.isfinite(baseline):
        raise ExperimentError(f"baseline: {baseline!r} is not a number")
    if not isinstance(mde, int | float) or not math.isfinite(mde) or mde <= 0:
        raise ExperimentError(f"mde: {mde!r} must be a number > 0")
    baseline, mde = float(baseline), float(mde)
    if kind == "proportion":
        _check_unit_interval("baseline", baseline)
    elif relative and baseline == 0:
        raise ExperimentError("baseline: a relative mde needs a non-zero baseline")
    absolute = mde * abs(baseline) if relative else mde
    share_of = _check_shares(arms, shares)
    arm_names = tuple(arms)
    control = arm_names[0]
    comparisons = len(arm_names) - 1
    comparison_alpha = alpha / comparisons
    if daily_traffic is not None and (
        not isinstance(daily_traffic, int | float) or not math.isfinite(daily_traffic) or daily_traffic <= 0
    ):
        raise ExperimentError(f"daily_traffic: {daily_traffic!r} must be a number > 0")

    if kind == "proportion":
        if sd is not None:
            raise ExperimentError("sd: not used for a proportion (its variance follows from the baseline)")
        if not 0.0 < baseline + absolute < 1.0:
            raise ExperimentError(f"mde: baseline + mde = {baseline + absolute:g} is outside (0, 1)")
        effect = float(proportion_effectsize(baseline + absolute, baseline))
        solver: NormalIndPower | TTestIndPower = NormalIndPower()
        method = "statsmodels NormalIndPower, Cohen's h"
    else:
        if sd is None:
            raise ExperimentError(f"sd: a {kind} metric needs the per-unit standard deviation")
        if not isinstance(sd, int | float) or not math.isfinite(sd) or sd <= 0:
            raise ExperimentError(f"sd: {sd!r} must be a number > 0")
        effect = absolute / float(sd)
        solver = TTestIndPower()
        method = "statsmodels TTestIndPower, effect mde / sd"
        if kind == "ratio":
            method += " (linearised sd, delta method)"

    n_control = 0.0
    tuning = 0.0
    for arm in arm_names[1:]:
        ratio = share_of[arm] / share_of[control]
        if sequential:
            needed, comparison_total = _sequential_n_control(
                effect, ratio, comparison_alpha, power, daily_traffic, share_of[control]
            )
            tuning = max(tuning, comparison_total)
        else:
            needed = float(
                solver.solve_power(
                    effect_size=effect, alpha=comparison_alpha, power=power, ratio=ratio, alternative="two-sided"
                )
            )
        n_control = max(n_control, needed)
    if not math.isfinite(n_control) or n_control <= 0:
        raise ExperimentError("mde: no sample size reaches the power asked")
    n_per_arm = {a: math.ceil(n_control * share_of[a] / share_of[control] - 1e-9) for a in arm_names}
    total = sum(n_per_arm.values())
    if comparisons > 1:
        method += f"; Bonferroni: alpha {alpha:g} / {comparisons} comparisons against control"
    if sequential:
        method += "; sequential: normal-mixture confidence sequence tightest at the planned total, " + (
            "power with a look each day, by simulation" if daily_traffic else "power at the last look, closed form"
        )
    return DesignResult(
        kind=kind,
        baseline=baseline,
        mde=absolute,
        relative_mde=absolute / baseline if baseline else math.inf,
        alpha=alpha,
        power=power,
        sd=None if sd is None else float(sd),
        arms=arm_names,
        shares=share_of,
        n_per_arm=n_per_arm,
        total=total,
        daily_traffic=None if daily_traffic is None else float(daily_traffic),
        days=None if daily_traffic is None else math.ceil(total / daily_traffic),
        sequential=sequential,
        method=method,
        comparison_alpha=comparison_alpha,
        sequential_tuning=math.ceil(tuning) if sequential else None,
    )


def simulated_power(design: DesignResult, sims: int = 2000, seed: int = 0) -> float:
    """The share of simulated experiments of this design in which the test of `analyse()` finds the effect.

    Each arm gets its planned units; the control has the baseline, every other arm baseline + mde. A proportion
    is simulated as Bernoulli units (binomial counts per day), a mean or ratio as normal units with the design's
    sd (each day's sum and sum of squares drawn from their exact distributions). The test is
    `experiments.sequential.compare_arms` at the comparison alpha: fixed horizon at the end, or, for a
    sequential design, the confidence sequence at every daily look (a crossing at any look counts; at the last
    look only without traffic). Returns the mean over the comparisons against control.
    """
    if sims < 1:
        raise ExperimentError(f"sims: {sims!r} must be >= 1")
    rng = np.random.default_rng(seed)
    control = design.arms[0]
    fractions = look_fractions(design.total, design.daily_traffic) if design.sequential else np.array([1.0])

    def draw(mean: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (n, mean, variance) at each look, shape (sims, looks)."""
        cum_n = np.maximum(np.round(n * fractions), 2.0)
        cum_n[-1] = n
        day_n = np.diff(np.concatenate([[0.0], cum_n])).astype(int)
        if design.kind == "proportion":
            sums = rng.binomial(day_n, mean, size=(sims, len(day_n))).astype(float)
            squares = sums
        else:
            sd = float(design.sd or 0.0)
            sums = rng.normal(mean * day_n, sd * np.sqrt(day_n), size=(sims, len(day_n)))
            within = sd**2 * rng.chisquare(np.maximum(day_n - 1, 1), size=(sims, len(day_n)))
            squares = np.where(day_n > 1, within, 0.0) + sums**2 / np.maximum(day_n, 1)
        s1, s2 = np.cumsum(sums, axis=1), np.cumsum(squares, axis=1)
        means = s1 / cum_n
        variances = np.maximum(s2 - s1 * means, 0.0) / (cum_n - 1.0)
        return np.broadcast_to(cum_n, means.shape), means, variances

    n_c, m_c, v_c = draw(design.baseline, design.n_per_arm[control])
    rates = []
    for arm in design.arms[1:]:
        n_t, m_t, v_t = draw(design.baseline + design.mde, design.n_per_arm[arm])
        result = compare_arms(
            m_c,
            v_c,
            n_c,
            m_t,
            v_t,
            n_t,
            alpha=design.comparison_alpha or design.alpha,
            sequential=design.sequential,
            tuning=float(design.sequential_tuning or design.total),
        )
        crossed = (result.ci_low > 0) | (result.ci_high < 0)
        rates.append(float(np.mean(crossed.any(axis=1))))
    return float(np.mean(rates))
