"""Quasi-experiments: synthetic control on California's Proposition 99 (published figures), DiD on simulated panels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.errors import ExperimentError
from experiments.quasi import convex_weights, diff_in_diff, long_to_wide, synthetic_control


def prop99() -> pd.DataFrame:
    """Per-capita cigarette sales (packs), 1970-2000, 39 states: the CSV inside CausalPy's wheel (read by path)."""
    spec = importlib.util.find_spec("causalpy")
    assert spec is not None and spec.submodule_search_locations, "causalpy is installed by `make install` (--no-deps)"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "california_prop99.csv"
    return pd.read_csv(path).set_index("Year")


@pytest.fixture(scope="module")
def california() -> object:
    return synthetic_control(prop99(), "California", 1989)


def test_prop99_gap_matches_the_published_estimate(california: object) -> None:
    # Abadie, Diamond & Hainmueller (2010), "Synthetic Control Methods for Comparative Case Studies: Estimating
    # the Effect of California's Tobacco Control Program", JASA 105(490), 493-505: "for the entire 1989-2000
    # period cigarette consumption was reduced by an average of almost 20 packs per capita" and "by the year
    # 2000 annual per-capita cigarette sales in California were about 26 packs lower than what they would have
    # been in the absence of Proposition 99". We fit on the outcomes only (no covariates, no nested V).
    result = california
    assert result.average_effect == pytest.approx(-20.0, rel=0.10)  # measured: -19.51
    assert result.final_effect == pytest.approx(-26.0, rel=0.10)  # measured: -26.60
    assert result.gap.loc[2000] == pytest.approx(result.final_effect)
    # a close pre-period fit (ADH report 1.76 with their covariates)
    assert result.pre_rmspe < 2.0
    # convex weights, mostly on the states ADH found (Utah, Nevada, Montana, Colorado, Connecticut)
    assert sum(result.weights.values()) == pytest.approx(1.0)
    assert min(result.weights.values()) >= 0
    assert {"Utah", "Nevada", "Montana", "Connecticut"} <= set(result.weights)
    assert result.weights["Utah"] > 0.3


def test_prop99_placebos_rank_california_first_and_the_interval_excludes_zero(california: object) -> None:
    result = california
    # ADH (with covariates) rank California first of 39 on the post/pre RMSPE ratio, p = 1/39; fitted on the
    # outcomes alone, Missouri and Virginia (pre-RMSPE 0.44, 0.82) rank above it: p = 3/39
    assert len(result.placebos) == 38
    assert result.p_value == pytest.approx(3 / 39)
    assert result.ci_low < result.average_effect < result.ci_high < 0
    assert "placebo-in-space" in result.interval_method
    assert result.placebo_gaps.shape == (31, 38)


def test_weights_agree_with_pysyncon() -> None:
    from pysyncon import Synth

    panel = prop99()
    pre = panel.index < 1989
    treated, donors = panel["California"], panel.drop(columns="California")
    ours = convex_weights(treated[pre].to_numpy(), donors[pre].to_numpy())
    # pysyncon scales each predictor by its sd across units; V = sd^2 undoes it: the same plain least squares
    sd = pd.concat([donors[pre], treated[pre]], axis=1).std(axis=1).to_numpy()
    synth = Synth()
    synth.fit(X0=donors[pre], X1=treated[pre], Z0=donors, Z1=treated, custom_V=sd**2)
    theirs = np.asarray(synth.W, dtype=float)
    assert np.abs(ours - theirs).max() < 1e-3
    gap_ours = float((treated - donors.to_numpy() @ ours).loc[2000])
    gap_theirs = float((treated - donors.to_numpy() @ theirs).loc[2000])
    assert gap_ours == pytest.approx(gap_theirs, abs=0.05)


def test_synthetic_control_recovers_a_planted_effect() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(30)
    donors = {f"d{i}": 50 + rng.normal(0, 5) + (0.5 + 0.1 * i) * t + rng.normal(0, 0.3, 30) for i in range(10)}
    panel = pd.DataFrame(donors, index=t)
    panel["treated"] = 0.5 * panel["d2"] + 0.5 * panel["d7"] + np.where(t >= 20, -8.0, 0.0)
    result = synthetic_control(panel, "treated", 20)
    assert result.average_effect == pytest.approx(-8.0, abs=0.5)
    assert result.weights.get("d2", 0) + result.weights.get("d7", 0) > 0.8
    assert result.p_value == pytest.approx(1 / 11)


def test_covariates_pick_the_donor_that_also_matches_them() -> None:
    # two donors with the same outcome path; only a covariate tells which one resembles the treated unit
    t = np.arange(12)
    panel = pd.DataFrame({"twin_a": 10 + t, "twin_b": 10.0 + t, "high": 20 + 2.0 * t, "low": 5 + 0.5 * t}, index=t)
    panel["treated"] = panel["twin_a"] + np.where(t >= 8, 3.0, 0.0)
    covariates = pd.DataFrame({"income": [1.0, 9.0, 5.0, 5.0, 1.0]},
                              index=["twin_a", "twin_b", "high", "low", "treated"])  # fmt: skip
    result = synthetic_control(panel, "treated", 8, covariates=covariates, placebos=False)
    assert result.weights == pytest.approx({"twin_a": 1.0}, abs=1e-4)
    assert result.average_effect == pytest.approx(3.0, abs=1e-3)
    with pytest.raises(ExperimentError, match="covariates: unit 'low' has no row"):
        synthetic_control(panel, "treated", 8, covariates=covariates.drop(index="low"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"treated": "Atlantis", "start": 1989}, "treated: unit 'Atlantis'"),
        ({"treated": "California", "start": 2050}, "start: 2050 is outside"),
        ({"treated": "California", "start": 1960}, "start: 1960 is outside"),
        ({"treated": "California", "start": 1972}, "start: only 2 pre-period(s)"),
        ({"treated": "California", "start": "x"}, "start: 'x' cannot be compared"),
    ],
)
def test_synthetic_control_bad_input_names_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ExperimentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        synthetic_control(prop99(), **kwargs)  # type: ignore[arg-type]


def test_synthetic_control_refuses_missing_outcomes() -> None:
    panel = prop99()
    panel.loc[1975, "Utah"] = np.nan
    with pytest.raises(ExperimentError, match="panel: 1 missing outcome"):
        synthetic_control(panel, "California", 1989)


def simulated_did(parallel: bool, effect: float = 3.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        treated = u < 30
        level = rng.normal(10, 3)
        for t in range(8):
            trend = 0.8 * t if (treated and not parallel) else 0.0
            y = level + 0.5 * t + trend + (effect if treated and t >= 5 else 0.0) + rng.normal(0, 1)
            rows.append({"unit": f"u{u}", "t": t, "y": y, "treated": int(treated), "post": int(t >= 5)})
    return pd.DataFrame(rows)


def test_did_recovers_the_effect_with_a_clean_pre_trend() -> None:
    result = diff_in_diff(simulated_did(True), unit="unit", time="t", outcome="y", treated="treated", post="post")
    assert result.ci_low < 3.0 < result.ci_high
    assert result.estimate == pytest.approx(3.0, abs=0.5)
    assert result.p_value < 1e-6
    assert result.pre_trend_p is not None and result.pre_trend_p > 0.05
    assert (result.n_units, result.n_treated, result.n_periods, result.n_obs) == (60, 30, 8, 480)
    assert len(result.leads) == 8
    assert result.leads.loc[result.leads["time"] == 4, "estimate"].item() == 0.0  # the reference period
    assert not result.notes


def test_did_flags_diverging_pre_trends() -> None:
    result = diff_in_diff(simulated_did(False), unit="unit", time="t", outcome="y", treated="treated", post="post")
    assert result.pre_trend_p is not None and result.pre_trend_p < 0.001
    assert any("pre-trend check failed" in note for note in result.notes)


def test_did_on_prop99_long_frame_agrees_in_sign() -> None:
    wide = prop99()
    long = wide.reset_index().melt(id_vars="Year", var_name="state", value_name="packs")
    long["treated"] = (long["state"] == "California").astype(int)
    long["post"] = (long["Year"] >= 1989).astype(int)
    result = diff_in_diff(long, unit="state", time="Year", outcome="packs", treated="treated", post="post")
    assert result.estimate < -15
    assert long_to_wide(long, unit="state", time="Year", outcome="packs").shape == (31, 39)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outcome": "nope"}, "outcome: column 'nope'"),
        ({"treated": "y"}, "treated: column 'y' must hold 0/1"),
    ],
)
def test_did_bad_input_names_the_field(change: dict[str, str], message: str) -> None:
    args = {"unit": "unit", "time": "t", "outcome": "y", "treated": "treated", "post": "post", **change}
    with pytest.raises(ExperimentError, match=message):
        diff_in_diff(simulated_did(True), **args)


def test_did_refuses_a_treatment_that_varies_within_a_unit() -> None:
    frame = simulated_did(True)
    frame.loc[0, "treated"] = 0
    with pytest.raises(ExperimentError, match="treated: column 'treated' must be constant"):
        diff_in_diff(frame, unit="unit", time="t", outcome="y", treated="treated", post="post")
