"""Training configuration, time splits, schema inference and the evaluation metrics, on tiny frames."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import evaluation as ev
from models import oracle
from models.config import TimeSplit, TrainingConfigError, load_training_config
from models.splits import SplitError, stage_at_random, stage_by_cutoff, stage_by_time
from models.tabular import FramePreparer, TabularSchemaError, infer_schema

D = dt.date


def _config_text(**replace: str) -> str:
    text = (Path(__file__).parents[1] / "models" / "training.yaml").read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_the_shipped_config_is_valid_and_leak_free() -> None:
    config = load_training_config()
    assert config.churn.label == "churn_90d"
    config.churn.split.check_horizon(config.churn.horizon_days)
    assert config.propensity.uplift is not None
    assert config.recommendation.k == 10


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "experiment: custintel",
            "experiment: custintel\nexperimnet: typo",
            "experimnet: Extra inputs are not permitted",
        ),
        ("valid_as_of: [2025-02-01]", "valid_as_of: [2024-12-15]", "label horizon reaches past 2024-12-15"),
        ("test_as_of: [2025-06-01]", "test_as_of: [2025-01-01]", "must come before every test_as_of"),
        ("fixed: {subsample_freq: 1}", "fixed: {subsample_freq: 1, learning_rate: 0.1}", "both fixed and searched"),
        ("fixed: {subsample_freq: 1}", "fixed: {num_trees: 3}", "unknown LightGBM parameter(s) ['num_trees']"),
        ("learning_rate: {low: 0.01, high: 0.2, log: true}", "learning_rate: {low: 0.3, high: 0.2}", "must be below"),
        ("reg_lambda: {low: 0.001, high: 30, log: true}", "reg_lambda: {low: 0, high: 30, log: true}", "needs low > 0"),
        ("trials: 20, timeout_seconds: 600", "trials: 0, timeout_seconds: 600", "trials: Input should be greater"),
        ("calibration: sigmoid", "calibration: platt", "churn.calibration"),
        ("valid_as_of: 2025-03-01", "valid_as_of: 2025-05-01", "must not pass train_as_of"),
        ("iterations: {low: 5, high: 40, integer: true}", "epochs: {low: 5, high: 40}", "unknown ALS parameter"),
    ],
)
def test_config_errors_name_the_field_and_reason(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = tmp_path / "training.yaml"
    path.write_text(_config_text(**{old: new}))
    with pytest.raises(TrainingConfigError) as err:
        load_training_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_a_missing_or_shapeless_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingConfigError, match="does not exist"):
        load_training_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(TrainingConfigError, match="must hold a mapping"):
        load_training_config(tmp_path / "list.yaml")


def test_stages_follow_the_cutoffs_and_other_cutoffs_are_unused() -> None:
    split = TimeSplit(train_as_of=[D(2024, 1, 1)], valid_as_of=[D(2024, 6, 1)], test_as_of=[D(2024, 12, 1)])
    as_of = pd.Series(pd.to_datetime(["2024-01-01", "2024-06-01", "2024-12-01", "2024-03-01"]))
    assert stage_by_cutoff(as_of, split).tolist() == ["train", "valid", "test", "unused"]
    with pytest.raises(SplitError, match="no rows for test"):
        stage_by_cutoff(as_of[:2], split)


@settings(max_examples=60, deadline=None)
@given(
    starts=st.lists(st.integers(0, 900), min_size=3, max_size=8, unique=True),
    horizon=st.integers(1, 200),
)
def test_an_accepted_split_never_lets_a_label_window_reach_a_later_cutoff(starts: list[int], horizon: int) -> None:
    days = sorted(D(2023, 1, 1) + dt.timedelta(days=s) for s in starts)
    k = len(days) // 3
    split = TimeSplit(train_as_of=days[:k], valid_as_of=days[k : 2 * k], test_as_of=days[2 * k :])
    try:
        split.check_horizon(horizon)
    except ValueError:
        return  # refused: fine
    span = dt.timedelta(days=horizon)
    assert all(d + span <= min(split.valid_as_of) for d in split.train_as_of)
    assert all(d + span <= min(split.test_as_of) for d in split.valid_as_of)


def test_time_stages_keep_equal_times_together_and_need_readable_times() -> None:
    times = pd.Series(["2024-01-01"] * 6 + ["2024-02-01"] * 2 + ["2024-03-01"] * 2)
    stage = stage_by_time(times)
    assert set(stage[:6]) == {"train"} and set(stage[6:8]) == {"valid"} and set(stage[8:]) == {"test"}
    with pytest.raises(SplitError, match="no readable time"):
        stage_by_time(pd.Series(["2024-01-01", "soon"]))


def test_random_stages_are_stratified_and_reproducible() -> None:
    labels = pd.Series([True] * 50 + [False] * 450)
    a, b = stage_at_random(labels, seed=3), stage_at_random(labels, seed=3)
    assert a.equals(b)
    for stage in ("train", "valid", "test"):
        rate = labels[a == stage].mean()
        assert 0.08 < rate < 0.12


def test_schema_inference_gives_each_column_a_role_and_a_reason() -> None:
    n = 300
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(n)],
            "label": rng.random(n) < 0.3,
            "spend": rng.normal(size=n),
            "is_member": rng.random(n) < 0.5,
            "plan": rng.choice(["a", "b", "c"], n),
            "name": [f"person {i}" for i in range(n)],
            "signup": pd.date_range("2020-01-01", periods=n).astype(str),
            "constant": 1,
            "empty": [None] * n,
        }
    )
    schema = infer_schema(frame, exclude=["id", "label"], max_categories=50)
    assert schema.numeric == ["spend", "is_member"]
    assert schema.categorical == ["plan"]
    assert set(schema.dropped) == {"id", "label", "name", "signup", "constant", "empty"}
    assert "distinct values" in schema.dropped["name"] and "date" in schema.dropped["signup"]
    with pytest.raises(TabularSchemaError, match="no usable feature"):
        infer_schema(frame[["id", "label"]], exclude=["id", "label"])


def test_the_preparer_maps_unseen_categories_to_missing_and_fixes_column_order() -> None:
    train = pd.DataFrame({"x": [1, 2, None], "c": ["a", "b", None]})
    prep = FramePreparer(["x"], ["c"]).fit(train)
    out = prep.transform(pd.DataFrame({"c": ["b", "zzz"], "x": ["3", "oops"], "extra": [0, 0]}))
    assert list(out.columns) == ["x", "c"]
    assert out["x"].tolist()[0] == 3.0 and np.isnan(out["x"].tolist()[1])
    assert list(out["c"].cat.categories) == ["a", "b"]
    assert out["c"].tolist()[0] == "b" and pd.isna(out["c"].tolist()[1])
    with pytest.raises(TabularSchemaError, match=r"lacks column\(s\) \['c'\]"):
        prep.transform(pd.DataFrame({"x": [1]}))


def test_classification_metrics_on_a_known_case() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = ev.classification_metrics(y, p)
    assert m["auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["base_rate"] == 0.5
    with pytest.raises(ev.EvaluationError, match="one class"):
        ev.classification_metrics(np.array([1, 1]), np.array([0.2, 0.3]))


def test_capacity_threshold_contacts_exactly_the_capacity() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    t = ev.capacity_threshold(scores, 2)
    assert t == 0.7 and (scores >= t).sum() == 2
    assert ev.capacity_threshold(scores, 50) == 0.1
    m = ev.threshold_metrics(np.array([1, 0, 1, 0, 0]), scores, t)
    assert m == {"flagged": 2.0, "precision_at_threshold": 0.5, "recall_at_threshold": 0.5}


def test_ranking_metrics_by_hand() -> None:
    m = ev.ranking_metrics(
        {"u": ["a", "b", "c"], "v": ["x", "y", "z"]}, {"u": {"b"}, "v": {"q"}}, k=3, catalogue_size=10
    )
    assert m["precision_at_3"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["recall_at_3"] == pytest.approx(0.5)
    assert m["ndcg_at_3"] == pytest.approx((1 / np.log2(3)) / 2)
    assert m["coverage"] == pytest.approx(0.6)


def test_qini_rewards_ranking_the_persuadable_first() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    effect = rng.uniform(-0.1, 0.4, n)
    treated = rng.random(n) < 0.5
    y = (rng.random(n) < 0.3 + treated * effect).astype(float)
    good = ev.qini_coefficient(y, treated, effect)
    bad = ev.qini_coefficient(y, treated, -effect)
    rand = ev.qini_coefficient(y, treated, rng.random(n))
    assert good > abs(rand) * 3 and bad < 0
    table = ev.qini_table(y, treated, effect, points=10)
    assert table["share"].iloc[-1] == 1.0 and table["qini"].iloc[-1] == pytest.approx(table["random"].iloc[-1])
    with pytest.raises(ev.EvaluationError, match="both treated and control"):
        ev.qini_coefficient(y, np.ones(n, bool), effect)


def test_the_feature_ceiling_recovers_what_the_features_carry_and_nothing_more() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    seen, hidden = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame(
        {"key": np.arange(n), "seen": seen, "noise": rng.normal(size=n), "plan": rng.choice(["a", "b"], n)}
    )
    truth = seen + hidden  # half the variance is hidden state no feature carries
    predicted = oracle.feature_ceiling(frame, truth, exclude=["key"])
    assert np.corrcoef(predicted, seen)[0, 1] > 0.95
    assert 0.6 < np.corrcoef(predicted, truth)[0, 1] < 0.8  # ~ 1/sqrt(2): it cannot see `hidden`


def test_the_uplift_oracle_reports_the_ceiling_between_model_and_oracle() -> None:
    rng = np.random.default_rng(1)
    n = 10_000
    x, hidden = rng.normal(size=n), rng.normal(size=n)
    true_uplift = 0.5 / (1 + np.exp(-2 * (x + hidden)))
    treated = rng.random(n) < 0.5
    y = (rng.random(n) < 0.3 + treated * true_uplift).astype(float)
    keys = [f"c{i}" for i in range(n)]
    persons = pd.Series(np.arange(n), index=keys)
    predictions = pd.DataFrame({"customer_key": keys, "y": y, "treated": treated, "uplift": rng.normal(size=n)})
    effect = pd.DataFrame({"person_id": np.arange(n), "true_uplift": true_uplift})
    features = pd.DataFrame({"customer_key": keys, "x": x})
    scores = oracle.uplift_oracle(predictions, persons, effect, features, exclude=["customer_key"])
    assert scores["oracle_qini"] > scores["ceiling_qini"] > scores["model_qini"]
    assert scores["qini_fraction_of_ceiling"] == pytest.approx(scores["model_qini"] / scores["ceiling_qini"])
    assert "ceiling_qini" not in oracle.uplift_oracle(predictions, persons, effect)
