"""The retention offer's analysis against the generator's truth: coverage of 200 resampled analyses, CUPED narrower."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from custintel.settings import Settings
from experiments.analysis import Metric, analyse
from experiments.errors import ExperimentError
from experiments.truth import (
    COVERAGE_TARGET,
    customer_persons,
    observed_against_truth,
    offer_truth,
    read_truth,
    resampled_coverage,
    true_effect,
)
from experiments.units import (
    OFFER_METRIC,
    offer_test_units,
    pre_period_features,
    read_crosswalk,
    read_offer_test,
    with_cupac,
)
from tests.conftest import World


def test_the_true_effect_lies_in_the_interval_and_cuped_narrows_it(featured: Settings, world: World) -> None:
    crosswalk = read_crosswalk(featured)
    units = offer_test_units(read_offer_test(featured), crosswalk)
    features, _ = pre_period_features(featured, units.frame["unit"].tolist(), dt.date(2025, 3, 1))
    covariate = with_cupac(units, features, OFFER_METRIC)
    effect, records = read_truth(world.truth)
    truth = offer_truth(units.frame, crosswalk, records, effect)
    assert len(truth) >= 0.95 * len(units)
    # the drop's arms are the truth's: the offer test was read and keyed right
    assert (truth["arm"] == np.where(truth["truly_treated"], "treatment", "control")).all()
    estimand = true_effect(truth)
    assert -0.03 < estimand < 0  # the offer lowers churn on average, by little (sleeping dogs offset persuadables)

    column = f"{OFFER_METRIC}_cupac"
    truth[column] = truth[f"cupac_{OFFER_METRIC}"]
    coverage = resampled_coverage(truth, column)
    assert coverage.simulations == 200 and coverage.units == len(truth)
    assert coverage.coverage >= COVERAGE_TARGET and coverage.coverage_cuped is not None
    assert coverage.coverage_cuped >= COVERAGE_TARGET
    assert coverage.mean_width_cuped is not None and coverage.mean_width_cuped < coverage.mean_width
    assert coverage.mean_variance_reduction is not None and coverage.mean_variance_reduction > 0
    # a perfect covariate could explain only a few percent of a rare binary outcome's variance
    assert coverage.mean_variance_reduction < coverage.oracle_variance_reduction < 0.2
    assert coverage.met and coverage.as_dict()["met"] is True
    assert covariate.correlation > 0.05

    # the observed test itself, analysed once, against the same estimand
    metric = Metric(OFFER_METRIC, "proportion", OFFER_METRIC, covariate=f"cupac_{OFFER_METRIC}", higher_is_better=False)
    observed = analyse(truth, [metric], expected_shares={"control": 0.5, "treatment": 0.5}, alpha=0.05)
    result = observed.results[0]
    line = observed_against_truth(truth, result.ci_low, result.ci_high, result.difference)
    assert line["covered"] and line["units"] == len(truth)
    assert "inside the interval" in line["line"]


def test_customers_merged_across_persons_have_no_truth() -> None:
    keys = ["crm_accounts:a", "billing_accounts:b", "crm_accounts:c", "crm_accounts:d"]
    crosswalk = pd.DataFrame({"record_key": keys, "customer_key": ["K1", "K1", "K2", "K2"]})
    records = pd.DataFrame({"source_table": ["crm_accounts", "billing_accounts", "crm_accounts", "crm_accounts"],
                            "record_id": ["a", "b", "c", "d"], "person_id": [1, 1, 2, 3]})  # fmt: skip
    assert customer_persons(crosswalk, records).to_dict() == {"K1": 1}
    effect = pd.DataFrame({"person_id": [1], "in_test": [True], "treated": [False], "p_churn_if_control": [0.2],
                           "p_churn_if_treated": [0.1], "true_uplift": [0.1]})  # fmt: skip
    units = pd.DataFrame({"unit": ["K1", "K2"], "arm": ["control", "control"]})
    truth = offer_truth(units, crosswalk, records, effect)
    assert truth["unit"].tolist() == ["K1"] and true_effect(truth) == pytest.approx(-0.1)
    with pytest.raises(ExperimentError, match="^truth: none of the offer test's customers"):
        offer_truth(units.iloc[1:], crosswalk, records, effect)
    with pytest.raises(ExperimentError, match="^covariate: column 'nope'"):
        resampled_coverage(truth, "nope")
