"""Experiment units: the world's offer test through the crosswalk, CUPAC covariates, the logs, a user's file."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custintel.settings import Settings
from experiments.errors import ExperimentError
from experiments.units import (
    OFFER_METRIC,
    cupac_covariate,
    file_units,
    log_units,
    offer_test_units,
    pre_period_features,
    read_crosswalk,
    read_offer_test,
    read_units_file,
    with_cupac,
)
from tests.conftest import World


@dataclass
class M:
    """A metric as a spec gives it."""

    name: str
    kind: str
    event: str | None = None
    column: str | None = None
    denominator: str | None = None


def test_offer_test_units_match_the_drop(featured: Settings, world: World) -> None:
    offer = read_offer_test(featured)
    units = offer_test_units(offer, read_crosswalk(featured))
    frame = units.frame
    assert list(frame.columns[:3]) == ["unit", "arm", "day"]
    assert frame["unit"].is_unique and set(frame["arm"]) == {"control", "treatment"}
    assert set(frame[OFFER_METRIC].unique()) <= {0.0, 1.0}
    assert frame["day"].unique().tolist() == [dt.date(2025, 3, 1)]
    # every person of the truth's test is in the drop; almost all reach the units (malformed rows, merges aside)
    truth = world.truth_frame("treatment_effect")
    in_test = int(truth["in_test"].sum())
    assert 0.85 * in_test <= len(frame) <= in_test
    shares = frame["arm"].value_counts(normalize=True)
    assert abs(shares["treatment"] - 0.5) < 0.05
    # churn within the three-month window, in both arms
    rates = frame.groupby("arm")[OFFER_METRIC].mean()
    assert 0.02 < rates["treatment"] < 0.15 and 0.02 < rates["control"] < 0.15


def test_offer_rows_unknown_to_the_crosswalk_and_mixed_arms_are_left_out() -> None:
    offer = pd.DataFrame({
        "crm_id": ["C1", "C2", "C3", "C4", "C5"],
        "group": ["control", "treatment", "control", "control", "control"],
        "assigned_at": pd.to_datetime(["2025-03-01"] * 5),
        "outcome_window_end": pd.to_datetime(["2025-06-01"] * 5),
        OFFER_METRIC: [1, 0, 0, 1, 0],
    })  # fmt: skip
    crosswalk = pd.DataFrame({
        "record_key": ["crm_accounts:C1", "crm_accounts:C2", "crm_accounts:C3", "crm_accounts:C4"],
        "customer_key": ["K1", "K2", "K3", "K2"],
    })  # fmt: skip
    units = offer_test_units(offer, crosswalk)
    assert units.frame["unit"].tolist() == ["K1", "K3"]
    assert any("1 offer-test rows match no customer key" in n for n in units.notes)
    assert any("1 customers have records in both arms" in n for n in units.notes)
    with pytest.raises(ExperimentError, match="^exposures: no offer-test row"):
        offer_test_units(offer, crosswalk.iloc[:0])


def test_cupac_covariate_is_cross_fitted_and_predictive(featured: Settings) -> None:
    units = offer_test_units(read_offer_test(featured), read_crosswalk(featured))
    features, cutoff = pre_period_features(featured, units.frame["unit"].tolist(), dt.date(2025, 3, 1))
    assert cutoff <= dt.date(2025, 3, 1) and len(features) == len(units)
    assert features.notna().any(axis=1).mean() > 0.9  # customers on the feature spine at the cutoff
    covariate = with_cupac(units, features, OFFER_METRIC)
    assert len(covariate.features) >= 10
    # pre-period behaviour predicts churn in the window: a real, positive correlation
    assert covariate.correlation > 0.1
    # cross-fitting: a model that sees a unit's own outcome would correlate far more with pure noise
    rng = np.random.default_rng(1)
    noise = rng.random(len(units)) < 0.2
    on_noise = cupac_covariate(features.reindex(units.frame["unit"]), noise.astype(float))
    assert abs(on_noise.correlation) < 0.1
    with pytest.raises(ExperimentError, match="^covariate: no feature set has a cutoff"):
        pre_period_features(featured, ["x"], dt.date(2000, 1, 1))


def test_log_units_one_row_per_exposed_customer() -> None:
    t0 = pd.Timestamp("2026-01-05T10:00:00Z")
    exposures = pd.DataFrame({
        "experiment": ["e"] * 5 + ["other"],
        "version": [1] * 6,
        "arm": ["control", "treatment", "treatment", "control", "treatment", "control"],
        "customer_key": ["A", "B", "B", "C", "D", "E"],
        "decision_id": ["d1", "d2", "d3", "d4", "d5", "d6"],
        "exposed_at": [t0, t0, t0 + pd.Timedelta(days=2), t0 + pd.Timedelta(days=1), t0, t0],
    })  # fmt: skip
    decisions = pd.DataFrame({"decision_id": ["d1", "d2", "d3", "d4", "d5", "d9"],
                              "customer_key": ["A", "B", "B", "C", "D", "A"]})  # fmt: skip
    outcomes = pd.DataFrame({
        "decision_id": ["d1", "d3", "d3", "d9", "d4", "d5"],
        "customer_key": ["A", "B", "B", "A", "C", "D"],
        "event": ["conversion", "click", "conversion", "conversion", "conversion", "click"],
        "at": [t0 + pd.Timedelta(hours=1), t0 + pd.Timedelta(days=3), t0 + pd.Timedelta(days=3),
               t0 + pd.Timedelta(hours=2), t0 - pd.Timedelta(days=1), t0],
    })  # fmt: skip
    metrics = [M("converted", "proportion", event="conversion"), M("clicks", "mean", event="click")]
    units = log_units(exposures, decisions, outcomes, metrics, experiment="e")
    frame = units.frame.set_index("unit")
    assert frame.index.tolist() == ["A", "B", "C", "D"]
    assert frame["arm"].tolist() == ["control", "treatment", "control", "treatment"]
    assert frame.loc["B", "day"] == dt.date(2026, 1, 5)
    # A converted twice (two decisions): still 1; C's conversion came before exposure: 0
    assert frame["converted"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert frame["clicks"].tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ExperimentError, match="^exposures: no exposed units"):
        log_units(exposures, decisions, outcomes, metrics, experiment="nothing")
    with pytest.raises(ExperimentError, match="^metric 'x': names no outcome event"):
        log_units(exposures, decisions, outcomes, [M("x", "proportion", column="x")], experiment="e")


def test_a_users_file_is_validated_column_by_column(tmp_path: Path) -> None:
    table = pd.DataFrame({"unit": ["u1", "u2", "u3", "u4"], "arm": ["control", "treatment", "control", "treatment"],
                          "day": ["2026-01-01", "2026-01-01", "2026-01-02", "2026-01-02"],
                          "bought": [0, 1, 1, 1], "revenue": [0.0, 5.0, 2.5, 7.5], "sessions": [1, 2, 2, 3],
                          "pre": [1.0, 2.0, 3.0, 4.0]})  # fmt: skip
    path = tmp_path / "units.csv"
    table.to_csv(path, index=False)
    metrics = [M("bought", "proportion"), M("rps", "ratio", column="revenue", denominator="sessions")]
    units = file_units(read_units_file(path), metrics, arms=["control", "treatment"], covariates=["pre"])
    assert units.frame["rps"].tolist() == [0.0, 5.0, 2.5, 7.5]
    assert units.frame["rps__denominator"].tolist() == [1.0, 2.0, 2.0, 3.0]
    assert units.frame["pre"].tolist() == [1.0, 2.0, 3.0, 4.0]
    cases = {
        "^metric 'nope': column 'nope' is not in the data": (table, [M("nope", "mean")], None),
        "^units: column 'arm' has \\['b'\\]": (table.assign(arm=["control", "b", "control", "treatment"]), metrics,
                                                ["control", "treatment"]),
        "^units: column 'day' has 'soon'": (table.assign(day=["soon"] * 4), metrics, None),
        "^units: column 'bought' of proportion metric 'bought' holds values other than 0/1": (
            table.assign(bought=[0, 2, 1, 1]), metrics, None),
        "^units: column 'unit' lists 'u1' more than once": (table.assign(unit=["u1", "u1", "u2", "u3"]), metrics, None),
        "^units: column 'revenue' has 'x', which is not a number": (
            table.assign(revenue=["x", 1, 2, 3]), metrics, None),
    }  # fmt: skip
    for message, (frame, ms, arms) in cases.items():
        with pytest.raises(ExperimentError, match=message):
            file_units(frame, ms, arms=arms)
    with pytest.raises(ExperimentError, match="^units: column 'arm' is missing"):
        file_units(table.drop(columns=["arm"]), metrics)
    with pytest.raises(ExperimentError, match="^units: no file at"):
        read_units_file(tmp_path / "missing.csv")
