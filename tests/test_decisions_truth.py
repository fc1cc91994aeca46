"""The retention offer against the generator's truth: hand-computed cases, errors, and the capacity curve."""

from __future__ import annotations

import numpy as np
import pytest

from decisions.truth import TruthError, capacity_curve, compare_targeting, top

TRUE = np.array([0.3, 0.1, 0.0, 0.2, -0.05])
PREDICTED = np.array([0.25, 0.0, 0.1, 0.3, 0.0])
CHURN = np.array([0.1, 0.9, 0.8, 0.2, 0.7])


def test_each_strategy_keeps_the_sum_of_the_true_uplift_of_those_it_targets() -> None:
    c = compare_targeting(
        TRUE, predicted_uplift=PREDICTED, churn_risk=CHURN, capacity=2, policy_targets=np.array([0, 1, 0, 1, 0], bool)
    )
    rows = {r.strategy: r for r in c.rows}
    # best: rows 0 and 3 (0.3 + 0.2); uplift: rows 3 and 0 (same); churn risk: rows 1 and 2 (0.1 + 0.0)
    assert rows["best"].retained == pytest.approx(0.5)
    assert rows["uplift"].retained == pytest.approx(0.5)
    assert rows["churn_risk"].retained == pytest.approx(0.1)
    assert rows["random"].retained == pytest.approx(2 * 0.55 / 5)  # the expectation: capacity x mean
    assert rows["policy"].retained == pytest.approx(0.3)  # rows 1 and 3
    assert rows["policy"].fraction_of_best == pytest.approx(0.3 / 0.5)
    assert rows["churn_risk"].per_offer == pytest.approx(0.05)
    assert c.uplift_over_churn == pytest.approx(5.0)
    assert c.uplift_fraction_of_best == pytest.approx(1.0)
    metrics = c.metrics()
    assert metrics["truth.uplift_over_churn_risk"] == pytest.approx(5.0)
    assert metrics["truth.uplift_over_churn_risk_met"] == 1.0 and metrics["truth.uplift_fraction_of_best_met"] == 1.0
    assert metrics["truth.churn_risk.retained"] == pytest.approx(0.1) and metrics["truth.capacity"] == 2
    assert any("5.00x" in line for line in c.summary())
    assert list(c.table()["strategy"]) == ["best", "uplift", "churn_risk", "random", "policy"]


def test_a_shortfall_is_reported_as_not_met() -> None:
    # the uplift model ranks backwards: it picks the two worst
    c = compare_targeting(TRUE, predicted_uplift=-TRUE, churn_risk=CHURN, capacity=2)
    assert c.row("uplift").retained == pytest.approx(-0.05)  # rows 4 and 2
    assert c.metrics()["truth.uplift_fraction_of_best_met"] == 0.0
    assert c.row("policy") is None


def test_a_missing_champion_leaves_its_row_out_and_capacity_is_capped_at_the_customers() -> None:
    c = compare_targeting(TRUE, predicted_uplift=None, churn_risk=CHURN, capacity=50)
    assert c.capacity == 5 and c.row("uplift") is None and np.isnan(c.uplift_over_churn)
    assert "truth.uplift_over_churn_risk" not in c.metrics()


def test_top_breaks_ties_by_position_and_puts_missing_scores_last() -> None:
    assert top(np.array([0.5, np.nan, 0.5, 0.9]), 3).tolist() == [3, 0, 2]
    assert top(np.array([np.nan, 0.1]), 2).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"capacity": 0}, "capacity"),
        ({"predicted_uplift": np.zeros(3)}, "predicted_uplift"),
        ({"churn_risk": np.zeros(6)}, "churn_risk"),
        ({"policy_targets": np.zeros(2, bool)}, "policy_targets"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, field: str) -> None:
    args = {"predicted_uplift": PREDICTED, "churn_risk": CHURN, "capacity": 2, **kwargs}
    with pytest.raises(TruthError, match=field):
        compare_targeting(TRUE, **args)


def test_missing_truth_is_refused() -> None:
    with pytest.raises(TruthError, match="true_uplift"):
        compare_targeting(np.array([0.1, np.nan]), predicted_uplift=None, churn_risk=None, capacity=1)


def test_the_capacity_curve_meets_at_full_capacity() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(0.05, 0.05, 1000)
    curve = capacity_curve(truth, truth + rng.normal(0, 0.02, 1000), rng.random(1000), shares=(0.1, 1.0))
    assert list(curve["capacity"]) == [100, 1000]
    assert curve["uplift_over_churn_risk"].iloc[0] > 1.5  # a good uplift model beats a random churn score
    assert curve["uplift_over_churn_risk"].iloc[-1] == pytest.approx(1.0)  # everyone targeted: the same customers


def test_the_feature_ceiling_row_says_what_the_inputs_allow() -> None:
    ceiling = np.array([0.2, 0.0, 0.0, 0.1, 0.3])  # picks rows 4 and 0: -0.05 + 0.3
    c = compare_targeting(TRUE, predicted_uplift=PREDICTED, churn_risk=CHURN, capacity=2, ceiling=ceiling)
    assert c.row("ceiling").retained == pytest.approx(0.25)
    assert c.uplift_fraction_of_ceiling == pytest.approx(0.5 / 0.25)
    assert c.metrics()["truth.uplift_fraction_of_ceiling"] == pytest.approx(2.0)
    assert list(c.table()["strategy"]) == ["best", "ceiling", "uplift", "churn_risk", "random"]
