"""Experiment design: sample sizes against statsmodels and the textbook formula, power by simulation, errors."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from experiments.design import design, simulated_power
from experiments.errors import ExperimentError


def test_proportion_matches_the_arcsine_formula() -> None:
    # 10% -> 12%: n = 2 ((z_0.975 + z_0.8) / h)^2 with Cohen's h = 2 asin(sqrt(.12)) - 2 asin(sqrt(.10)).
    result = design("proportion", 0.10, 0.02)
    h = 2 * math.asin(math.sqrt(0.12)) - 2 * math.asin(math.sqrt(0.10))
    by_hand = 2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / h) ** 2
    assert result.n_per_arm == {"control": math.ceil(by_hand), "treatment": math.ceil(by_hand)}
    assert result.n_per_arm["control"] == 3835
    assert result.total == 7670
    assert result.relative_mde == pytest.approx(0.2)
    assert result.sd is None
    assert "Cohen's h" in result.method


def test_relative_mde_and_duration() -> None:
    result = design("proportion", 0.10, 0.2, relative=True, daily_traffic=1000)
    assert result.mde == pytest.approx(0.02)
    assert result.n_per_arm["control"] == 3835
    assert result.days == math.ceil(7670 / 1000) == 8


def test_mean_uses_the_t_test_power() -> None:
    result = design("mean", 50.0, 2.5, sd=20.0)
    # effect 0.125: the normal approximation gives 1004.7; the t test a unit more.
    assert result.n_per_arm["control"] == 1006
    assert result.sd == 20.0
    assert "TTestIndPower" in result.method


def test_unequal_shares_size_the_smaller_arm() -> None:
    equal = design("mean", 0.0, 1.0, sd=10.0)
    skewed = design("mean", 0.0, 1.0, sd=10.0, shares={"control": 0.2, "treatment": 0.8})
    # With ratio k = 4, the control needs (1 + 1/k) / 2 = 0.625 of the equal design's total per arm.
    assert skewed.n_per_arm["control"] == pytest.approx(equal.n_per_arm["control"] * 0.625, abs=2)
    assert skewed.n_per_arm["treatment"] == pytest.approx(4 * skewed.n_per_arm["control"], abs=4)
    assert skewed.total > equal.total


def test_more_arms_split_alpha() -> None:
    three = design("proportion", 0.3, 0.03, arms=("control", "a", "b"))
    two = design("proportion", 0.3, 0.03, alpha=0.025)
    assert three.comparison_alpha == pytest.approx(0.025)
    assert three.n_per_arm["a"] == two.n_per_arm["treatment"]
    assert three.total == 3 * two.n_per_arm["treatment"]
    assert "Bonferroni" in three.method


def test_sequential_design_costs_about_double() -> None:
    fixed = design("proportion", 0.10, 0.02)
    sequential = design("proportion", 0.10, 0.02, sequential=True)
    ratio = sequential.n_per_arm["control"] / fixed.n_per_arm["control"]
    assert 1.8 < ratio < 2.0  # closed form, crossing at the last look
    daily = design("proportion", 0.10, 0.02, sequential=True, daily_traffic=1000)
    # A look every day adds chances to cross: fewer units for the same power.
    assert fixed.n_per_arm["control"] < daily.n_per_arm["control"] < sequential.n_per_arm["control"]
    assert daily.sequential_tuning == pytest.approx(2 * daily.n_per_arm["control"], abs=2)
    assert "simulation" in daily.method


@pytest.mark.parametrize(
    ("kind", "baseline", "mde", "kwargs"),
    [
        ("proportion", 0.10, 0.02, {}),
        ("proportion", 0.05, 0.01, {"shares": {"control": 0.2, "treatment": 0.8}}),
        ("mean", 10.0, 1.0, {"sd": 5.0}),
        ("ratio", 2.0, 0.1, {"sd": 1.5}),
        ("proportion", 0.30, 0.10, {"relative": True, "arms": ("control", "a", "b")}),
        ("mean", 10.0, 1.0, {"sd": 5.0, "sequential": True}),
        ("mean", 10.0, 1.0, {"sd": 5.0, "sequential": True, "daily_traffic": 100}),
        ("proportion", 0.10, 0.02, {"sequential": True, "daily_traffic": 1000}),
    ],
)
def test_simulated_power_within_two_points(kind: str, baseline: float, mde: float, kwargs: dict) -> None:
    planned = design(kind, baseline, mde, **kwargs)  # type: ignore[arg-type]
    achieved = simulated_power(planned, sims=10_000, seed=3)
    assert abs(achieved - planned.power) <= 0.02, (achieved, planned.method)


def test_as_dict_is_json() -> None:
    result = design("proportion", 0.1, 0.02, daily_traffic=500, sequential=True)
    data = json.loads(json.dumps(result.as_dict()))
    assert data["arms"] == ["control", "treatment"]
    assert data["total"] == result.total
    assert data["days"] == result.days
    from_zero = design("mean", 0.0, 1.0, sd=4.0).as_dict()
    assert from_zero["relative_mde"] is None
    json.dumps(from_zero, allow_nan=False)


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("proportion", 1.2, 0.01), {}, "baseline"),
        (("proportion", 0.0, 0.01), {}, "baseline"),
        (("proportion", 0.1, 0.0), {}, "mde"),
        (("proportion", 0.1, -0.02), {}, "mde"),
        (("proportion", 0.95, 0.1), {}, "mde"),
        (("proportion", 0.1, 0.02), {"alpha": 1.5}, "alpha"),
        (("proportion", 0.1, 0.02), {"power": 0.0}, "power"),
        (("proportion", 0.1, 0.02), {"sd": 3.0}, "sd"),
        (("mean", 10.0, 1.0), {}, "sd"),
        (("ratio", 10.0, 1.0), {"sd": -1.0}, "sd"),
        (("median", 10.0, 1.0), {"sd": 1.0}, "kind"),
        (("proportion", 0.1, 0.02), {"shares": {"control": 0.5, "treatment": 0.6}}, "shares"),
        (("proportion", 0.1, 0.02), {"shares": {"control": 0.5, "other": 0.5}}, "shares"),
        (("proportion", 0.1, 0.02), {"arms": ("control",)}, "arms"),
        (("proportion", 0.1, 0.02), {"arms": ("a", "a")}, "arms"),
        (("proportion", 0.1, 0.02), {"daily_traffic": 0}, "daily_traffic"),
        (("mean", 0.0, 0.1), {"relative": True, "sd": 1.0}, "baseline"),
    ],
)
def test_bad_input_names_the_field(args: tuple, kwargs: dict, field: str) -> None:
    with pytest.raises(ExperimentError, match=rf"^{field}\b"):
        design(*args, **kwargs)
