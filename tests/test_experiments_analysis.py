"""Experiment analysis on hand-built data: intervals by hand, delta method vs bootstrap, CUPED, SRM, errors."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments.analysis import Metric, analyse
from experiments.errors import ExperimentError
from experiments.plots import plot_cumulative, plot_lift_over_time

HALF = {"control": 0.5, "treatment": 0.5}


def conversions(n_c: int, k_c: int, n_t: int, k_t: int, days: int = 1) -> pd.DataFrame:
    """Units of a two-arm test with k conversions out of n per arm, spread over ``days`` days."""
    start = dt.date(2026, 11, 1)
    rows = []
    for arm, n, k in (("control", n_c, k_c), ("treatment", n_t, k_t)):
        for i in range(n):
            rows.append({"arm": arm, "day": start + dt.timedelta(days=i % days), "converted": int(i < k)})
    return pd.DataFrame(rows)


CONVERSION = Metric("conversion", "proportion", "converted", primary=True)


def test_two_by_two_interval_by_hand() -> None:
    analysis = analyse(conversions(1000, 100, 1000, 130), [CONVERSION], expected_shares=HALF)
    r = analysis.results[0]
    v_c, v_t = 0.1 * 0.9 * 1000 / 999, 0.13 * 0.87 * 1000 / 999
    q_c, q_t = v_c / 1000, v_t / 1000
    se = math.sqrt(q_c + q_t)
    df = (q_c + q_t) ** 2 / (q_c**2 / 999 + q_t**2 / 999)
    t = stats.t.ppf(0.975, df)
    assert (r.n_control, r.n_arm) == (1000, 1000)
    assert (r.mean_control, r.mean_arm) == (pytest.approx(0.10), pytest.approx(0.13))
    assert r.difference == pytest.approx(0.03)
    assert r.ci_low == pytest.approx(0.03 - t * se, abs=1e-12)
    assert r.ci_high == pytest.approx(0.03 + t * se, abs=1e-12)
    # The textbook unpooled z interval (n, not n - 1): 0.03 +- 1.96 * 0.01420 = [0.0022, 0.0578].
    assert r.ci_low == pytest.approx(0.0022, abs=2e-4)
    assert r.ci_high == pytest.approx(0.0578, abs=2e-4)
    assert r.p_value == pytest.approx(2 * stats.t.sf(0.03 / se, df))
    assert r.p_value == pytest.approx(0.035, abs=1e-3)  # z = 2.11
    # Relative lift 30% by the delta method: var = q_t / m_c^2 + m_t^2 q_c / m_c^4.
    rel_se = math.sqrt(q_t / 0.1**2 + 0.13**2 * q_c / 0.1**4)
    assert r.relative_lift == pytest.approx(0.3)
    assert r.rel_ci_low == pytest.approx(0.3 - stats.norm.ppf(0.975) * rel_se)
    assert r.rel_ci_high == pytest.approx(0.3 + stats.norm.ppf(0.975) * rel_se)
    assert r.p_adjusted == pytest.approx(r.p_value)  # one comparison: Holm leaves it alone
    assert r.significant
    assert analysis.verdict == "significant"
    assert analysis.reasons == [
        "conversion: treatment vs control +0.03 (95% CI 0.002037 to 0.05796, adjusted p = 0.036): significant, better"
    ]
    assert not analysis.srm.blocked
    assert analysis.srm.p_value == pytest.approx(1.0)


def test_delta_method_ratio_matches_the_bootstrap() -> None:
    rng = np.random.default_rng(7)
    frames = []
    for arm, ctr in (("control", 0.10), ("treatment", 0.115)):
        sessions = rng.poisson(4.0, 3000) + 1
        # Per-user click propensity varies: clicks are over-dispersed, not binomial on all sessions pooled.
        users_ctr = np.clip(rng.normal(ctr, 0.05, 3000), 0.0, 1.0)
        clicks = rng.binomial(sessions, users_ctr)
        frames.append(pd.DataFrame({"arm": arm, "clicks": clicks, "sessions": sessions}))
    units = pd.concat(frames, ignore_index=True)
    metric = Metric("ctr", "ratio", "clicks", denominator="sessions")
    r = analyse(units, [metric], expected_shares=HALF).results[0]
    c, t = (units[units.arm == a] for a in ("control", "treatment"))
    assert r.mean_control == pytest.approx(c.clicks.sum() / c.sessions.sum())
    assert r.difference == pytest.approx(t.clicks.sum() / t.sessions.sum() - c.clicks.sum() / c.sessions.sum())
    delta_se = (r.ci_high - r.ci_low) / 2 / stats.t.ppf(0.975, 5000)
    boot = []
    arrays = {a: (g.clicks.to_numpy(), g.sessions.to_numpy()) for a, g in units.groupby("arm")}
    for _ in range(1000):
        ratios = []
        for a in ("control", "treatment"):
            num, den = arrays[a]
            pick = rng.integers(0, len(num), len(num))
            ratios.append(num[pick].sum() / den[pick].sum())
        boot.append(ratios[1] - ratios[0])
    boot_se = float(np.std(boot, ddof=1))
    assert delta_se == pytest.approx(boot_se, rel=0.10)


def test_cuped_reduces_variance_by_about_rho_squared() -> None:
    rng = np.random.default_rng(11)
    n, rho = 20_000, 0.7
    pre = rng.normal(0.0, 1.0, n)
    arm = np.where(rng.random(n) < 0.5, "control", "treatment")
    post = 5.0 + rho * pre + math.sqrt(1 - rho**2) * rng.normal(0.0, 1.0, n) + 0.05 * (arm == "treatment")
    units = pd.DataFrame({"arm": arm, "spend": post, "spend_pre": pre})
    raw, cuped = analyse(
        units,
        [Metric("raw", "mean", "spend"), Metric("cuped", "mean", "spend", covariate="spend_pre")],
        expected_shares=HALF,
        correction="none",
    ).results
    assert raw.variance_reduction is None
    assert cuped.variance_reduction == pytest.approx(rho**2, abs=0.02)
    width_raw, width_cuped = raw.ci_high - raw.ci_low, cuped.ci_high - cuped.ci_low
    assert width_cuped / width_raw == pytest.approx(math.sqrt(1 - rho**2), abs=0.02)
    assert cuped.ci_low < 0.05 < cuped.ci_high
    assert "CUPED" in (cuped.note or "")


def test_srm_blocks_the_verdict_but_keeps_the_results() -> None:
    analysis = analyse(conversions(5300, 530, 4700, 611), [CONVERSION], expected_shares=HALF)
    assert analysis.srm.counts == {"control": 5300, "treatment": 4700}
    assert analysis.srm.chi2 == pytest.approx(36.0)  # (300^2 + 300^2) / 5000
    assert analysis.srm.p_value < 1e-6
    assert analysis.srm.blocked
    assert analysis.verdict == "blocked"
    assert analysis.reasons[0].startswith("sample-ratio mismatch: p = 2e-09 < 0.001")
    assert analysis.results[0].difference == pytest.approx(0.13 - 0.10)
    # The same counts against a 53/47 split are what was expected: no block.
    fine = analyse(
        conversions(5300, 530, 4700, 611), [CONVERSION], expected_shares={"control": 0.53, "treatment": 0.47}
    )
    assert not fine.srm.blocked
    assert fine.verdict == "significant"


def test_holm_never_adjusts_more_than_bonferroni() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    arm = np.where(np.arange(n) % 2 == 0, "control", "treatment")
    treated = arm == "treatment"
    units = pd.DataFrame(
        {
            "arm": arm,
            "a": rng.normal(0, 1, n) + 0.12 * treated,
            "b": rng.normal(0, 1, n) + 0.08 * treated,
            "c": rng.normal(0, 1, n) + 0.02 * treated,
        }
    )
    metrics = [Metric(name, "mean", name) for name in "abc"]
    by = {c: analyse(units, metrics, expected_shares=HALF, correction=c).results for c in ("holm", "bonferroni")}
    p = np.array([r.p_value for r in by["holm"]])
    order = np.argsort(p)
    holm = np.array([r.p_adjusted for r in by["holm"]])
    bonferroni = np.array([r.p_adjusted for r in by["bonferroni"]])
    assert np.allclose(bonferroni, np.minimum(1.0, 3 * p))
    expected_holm = np.maximum.accumulate([min(1.0, (3 - k) * p[order[k]]) for k in range(3)])
    assert np.allclose(holm[order], expected_holm)
    assert (holm <= bonferroni + 1e-15).all()
    assert holm[order[1]] < bonferroni[order[1]]


def test_zero_conversions_are_not_an_error() -> None:
    none_in_treatment = analyse(conversions(500, 20, 500, 0), [CONVERSION], expected_shares=HALF).results[0]
    assert none_in_treatment.mean_arm == 0.0
    assert none_in_treatment.difference == pytest.approx(-0.04)
    assert none_in_treatment.relative_lift == pytest.approx(-1.0)
    assert "no conversions in 'treatment'" in (none_in_treatment.note or "")
    none_in_control = analyse(conversions(500, 0, 500, 20), [CONVERSION], expected_shares=HALF)
    r = none_in_control.results[0]
    assert r.difference == pytest.approx(0.04)
    assert math.isnan(r.relative_lift) and math.isnan(r.rel_ci_low)
    assert "control mean is 0: relative lift undefined" in (r.note or "")
    none_at_all = analyse(conversions(500, 0, 500, 0), [CONVERSION], expected_shares=HALF).results[0]
    assert none_at_all.p_value == 1.0 and not none_at_all.significant
    data = json.loads(json.dumps(none_in_control.as_dict(), allow_nan=False))
    assert data["results"][0]["relative_lift"] is None


def test_missing_values_are_dropped_and_counted() -> None:
    units = conversions(400, 40, 400, 60)
    units["spend"] = np.arange(len(units), dtype=float)
    units.loc[[0, 1, 500], "spend"] = np.nan
    spend, conversion = analyse(units, [Metric("spend", "mean", "spend"), CONVERSION], expected_shares=HALF).results
    assert (spend.n_control, spend.n_arm) == (398, 399)
    assert spend.note == "3 units with a missing value dropped"
    assert (conversion.n_control, conversion.n_arm) == (400, 400)


def test_sequential_mode_is_wider_and_reports_its_correction() -> None:
    units = conversions(3000, 300, 3000, 390, days=10)
    units["spend"] = np.where(units["converted"] == 1, 20.0, 0.0)
    metrics = [CONVERSION, Metric("spend", "mean", "spend")]
    fixed = analyse(units, metrics, expected_shares=HALF)
    sequential = analyse(units, metrics, expected_shares=HALF, mode="sequential", sequential_tuning=6000)
    assert sequential.correction == "bonferroni (sequential: alpha / 2 in the confidence sequence)"
    assert sequential.interval_alpha == pytest.approx(0.025)
    for f, s in zip(fixed.results, sequential.results, strict=True):
        assert s.difference == pytest.approx(f.difference)
        assert (s.ci_high - s.ci_low) > 1.4 * (f.ci_high - f.ci_low)
        assert s.significant == (s.ci_low > 0 or s.ci_high < 0)
        assert s.p_adjusted == pytest.approx(min(1.0, 2 * s.p_value))
    assert sequential.results[0].significant  # 10% -> 13% on 3,000 a side is clear even when peeking
    # The looks: one row per day and metric; the last look is the result.
    assert len(sequential.looks) == 20
    last = sequential.looks[(sequential.looks.metric == "conversion")].iloc[-1]
    assert last.ci_low == pytest.approx(sequential.results[0].ci_low)
    assert list(sequential.looks.n_control[sequential.looks.metric == "conversion"]) == list(range(300, 3001, 300))
    cumulative = sequential.cumulative[sequential.cumulative.metric == "conversion"]
    assert len(cumulative) == 20
    assert cumulative.iloc[9]["mean"] == pytest.approx(0.1)


def test_report_forms_and_plots(tmp_path: Path) -> None:
    units = conversions(600, 60, 600, 80, days=6)
    analysis = analyse(units, [CONVERSION], expected_shares=HALF, mode="sequential")
    table = analysis.table()
    assert list(table.columns[:3]) == ["metric", "kind", "arm"]
    assert len(table) == 1
    data = json.loads(json.dumps(analysis.as_dict(), allow_nan=False))
    assert data["looks"][0]["day"] == "2026-11-01"
    assert data["verdict"] == analysis.verdict == "not_significant"
    for plot in (plot_lift_over_time, plot_cumulative):
        path = plot(analysis, "conversion", tmp_path / f"{plot.__name__}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
    with pytest.raises(ExperimentError, match=r"^metric: 'revenue' is not in the analysis"):
        plot_cumulative(analysis, "revenue", tmp_path / "x.png")


SMALL = conversions(10, 1, 10, 1)
RATIO_N = Metric("r", "ratio", "converted", denominator="n")


@pytest.mark.parametrize(
    ("units", "metrics", "shares", "message"),
    [
        (pd.DataFrame(columns=["arm", "converted"]), [CONVERSION], HALF, "exposures: no exposed units"),
        (SMALL, [Metric("x", "mean", "revenue")], HALF, "metric 'x': column 'revenue' is not in the data"),
        (
            SMALL.assign(converted="yes"),
            [CONVERSION],
            HALF,
            "metric 'conversion': column 'converted' is not numeric",
        ),
        (SMALL.assign(converted=2), [CONVERSION], HALF, "metric 'conversion': column 'converted' must hold 0/1"),
        (SMALL, [Metric("r", "ratio", "converted")], HALF, "metric 'r': a ratio needs a denominator"),
        (SMALL, [Metric("m", "mean", "converted", covariate="pre")], HALF, "metric 'm': covariate column 'pre'"),
        (SMALL, [CONVERSION, CONVERSION], HALF, "metrics: names repeat"),
        (SMALL, [], HALF, "metrics: none given"),
        (
            SMALL,
            [CONVERSION],
            {"control": 0.5, "other": 0.5},
            "arm: 'treatment' (10 units) is not in expected_shares",
        ),
        (SMALL, [CONVERSION], {"control": 0.4, "treatment": 0.4, "b": 0.2}, "arm 'b': no exposed units"),
        (SMALL, [CONVERSION], {"control": 0.5, "treatment": 0.6}, "expected_shares: they sum to 1.1"),
        (SMALL, [CONVERSION], {"a": 0.5, "treatment": 0.5}, "control: 'control' is not an arm"),
        (SMALL.drop(columns="arm"), [CONVERSION], HALF, "units: column 'arm' is missing"),
        (SMALL.assign(n=0.0), [RATIO_N], HALF, "metric 'r': denominator 'n' sums to 0"),
        (SMALL.assign(day="soon"), [CONVERSION], HALF, "day: not dates"),
    ],
)
def test_bad_input_is_one_clear_error(
    units: pd.DataFrame, metrics: list[Metric], shares: dict[str, float], message: str
) -> None:
    with pytest.raises(ExperimentError) as caught:
        analyse(units, metrics, expected_shares=shares)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha:"),
        ({"mode": "bayesian"}, "mode:"),
        ({"correction": "sidak"}, "correction:"),
        ({"sequential_tuning": -5}, "sequential_tuning:"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, message: str) -> None:
    with pytest.raises(ExperimentError, match=f"^{message}"):
        analyse(conversions(10, 1, 10, 1), [CONVERSION], expected_shares=HALF, **kwargs)


def test_an_arm_without_values_gives_no_estimate_not_an_error() -> None:
    units = conversions(50, 5, 50, 7)
    units["spend"] = np.where(units["arm"] == "control", 10.0, np.nan)
    analysis = analyse(units, [CONVERSION, Metric("spend", "mean", "spend")], expected_shares=HALF)
    conversion, spend = analysis.results
    assert spend.n_arm == 0
    assert math.isnan(spend.difference) and math.isnan(spend.p_value) and math.isnan(spend.p_adjusted)
    assert not spend.significant
    assert spend.note == "50 units with a missing value dropped; fewer than 2 units with values in an arm: no interval"
    assert "spend: treatment vs control: no estimate (too few units with values)" in analysis.reasons
    # The other metric's correction counts only the comparisons that have a p-value.
    assert conversion.p_adjusted == pytest.approx(conversion.p_value)


def test_cuped_on_a_ratio_metric_narrows_its_interval() -> None:
    rng = np.random.default_rng(3)
    n = 6000
    arm = np.where(np.arange(n) % 2 == 0, "control", "treatment")
    appetite = rng.gamma(2.0, 1.0, n)  # a user's habit drives both periods' clicks
    sessions = rng.poisson(5.0, n) + 1
    clicks = rng.poisson(0.1 * sessions * appetite * np.where(arm == "treatment", 1.1, 1.0))
    clicks_pre = rng.poisson(3.0 * appetite)
    units = pd.DataFrame({"arm": arm, "clicks": clicks, "sessions": sessions, "clicks_pre": clicks_pre})
    plain, cuped = analyse(
        units,
        [
            Metric("ctr", "ratio", "clicks", denominator="sessions"),
            Metric("ctr_cuped", "ratio", "clicks", denominator="sessions", covariate="clicks_pre"),
        ],
        expected_shares=HALF,
        correction="none",
    ).results
    assert cuped.variance_reduction is not None and cuped.variance_reduction > 0.15
    assert (cuped.ci_high - cuped.ci_low) < (plain.ci_high - plain.ci_low)
    assert abs(cuped.difference - plain.difference) < (plain.ci_high - plain.ci_low) / 2
