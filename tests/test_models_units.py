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
from models.churn import churn_table, train_churn
from models.config import (
    ChurnConfig,
    LightGBMConfig,
    TimeSplit,
    TrainingConfigError,
    TuningConfig,
    load_training_config,
)
from models.splits import (
    CALIBRATION,
    LabelledTable,
    SplitError,
    hold_out_for_calibration,
    stage_at_random,
    stage_by_cutoff,
    stage_by_time,
)
from models.tabular import FramePreparer, TabularSchemaError, infer_schema
from models.tuning import FitClock, create_study

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
        ("calibration: auto", "calibration: platt", "churn.calibration"),
        ("calibrate_on: newest_cutoff", "calibrate_on: latest", "churn.calibrate_on: Input should be 'newest_cutoff'"),
        ("calibration_share: 0.3", "calibration_share: 1.0", "churn.calibration_share: Input should be less than 1"),
        ("calibration_salt: custintel-calibration", "calibration_salt: ''", "churn.calibration_salt"),
        ("valid_as_of: 2025-03-01", "valid_as_of: 2025-05-01", "must not pass train_as_of"),
        ("iterations: {low: 5, high: 40, integer: true}", "epochs: {low: 5, high: 40}", "unknown ALS parameter"),
        ("candidates: [popularity, ease, als]", "candidates: [popularity, slim]", "recommendation.candidates"),
        ("ease_max_items: 10000", "ease_max_items: 10000\n  ease_lambdas: [0, 10]", "ease_lambdas must be positive"),
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


def test_calibration_rows_are_a_hashed_share_of_the_test_customers_never_in_both() -> None:
    keys = [f"CK{i:05d}" for i in range(2000)]
    frame = pd.DataFrame({"customer_key": keys * 3, "as_of": ["2024-01-01"] * 2000 + ["2024-06-01"] * 4000})
    stage = pd.Series(["train"] * 2000 + ["valid"] * 2000 + ["test"] * 2000)
    frame.loc[4000:, "as_of"] = "2024-10-01"
    table = LabelledTable(frame, "customer_key", "y", stage, "as_of")
    held = hold_out_for_calibration(table, 0.3, "salt")
    assert held.stage[:4000].equals(stage[:4000])  # train and valid untouched: the horizon checks still hold
    calibrate, test = set(held.rows(CALIBRATION)["customer_key"]), set(held.rows("test")["customer_key"])
    assert not calibrate & test and len(calibrate | test) == 2000
    assert 0.27 < len(calibrate) / 2000 < 0.33
    # By key, not by position: the same customers whatever the row order, and again in the next training.
    shuffled = LabelledTable(frame.iloc[::-1].reset_index(drop=True), "customer_key", "y",
                             stage.iloc[::-1].reset_index(drop=True), "as_of")  # fmt: skip
    assert set(hold_out_for_calibration(shuffled, 0.3, "salt").rows(CALIBRATION)["customer_key"]) == calibrate
    assert set(hold_out_for_calibration(table, 0.3, "pepper").rows(CALIBRATION)["customer_key"]) != calibrate
    assert hold_out_for_calibration(held, 0.5, "other") is held  # already held out: kept as it is
    one = LabelledTable(frame.iloc[4000:4001], "customer_key", "y", stage.iloc[4000:4001], "as_of")
    with pytest.raises(SplitError, match="no rows for"):
        hold_out_for_calibration(one, 0.5, "salt")


def _drifting_churn(customers: int, seed: int) -> pd.DataFrame:
    """Monthly snapshots whose churn rate rises at the test cutoff (a base-rate shift, as after a drift)."""
    rng = np.random.default_rng(seed)
    frames = []
    for as_of, shift in (("2024-01-01", 0.0), ("2024-02-01", 0.0), ("2024-06-01", 0.0), ("2024-10-01", 0.8)):
        x1, x2 = rng.normal(size=customers), rng.normal(size=customers)
        risk = 1 / (1 + np.exp(-(-3.0 + 0.9 * x1 + 0.5 * x2 + shift)))
        frames.append(
            pd.DataFrame(
                {
                    "customer_key": [f"CK{i:05d}" for i in range(customers)],
                    "as_of": pd.Timestamp(as_of),
                    "x1": x1,
                    "x2": x2,
                    "plan": rng.choice(["basic", "plus"], customers),
                    "churn_90d": rng.random(customers) < risk,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _small_churn_config(calibrate_on: str) -> ChurnConfig:
    return ChurnConfig.model_validate(
        {
            "feature_sets": ["any@1"],
            "split": {"train_as_of": [D(2024, 1, 1), D(2024, 2, 1)], "valid_as_of": [D(2024, 6, 1)],
                      "test_as_of": [D(2024, 10, 1)]},
            "calibration": "sigmoid",
            "calibrate_on": calibrate_on,
            "survival": False,
            "lightgbm": LightGBMConfig(max_trees=60, early_stopping_rounds=10, threads=1,
                                       search={"num_leaves": {"low": 4, "high": 8, "integer": True}}),
            "tuning": TuningConfig(trials=1, timeout_seconds=60),
        }
    )  # fmt: skip


def test_a_model_is_calibrated_on_the_newest_cutoff_without_touching_its_test_rows() -> None:
    frame = _drifting_churn(4000, seed=2)
    results = {}
    for calibrate_on in ("newest_cutoff", "validation"):
        config = _small_churn_config(calibrate_on)
        data = churn_table(frame, config, ["churn_90d"])
        study = create_study(f"c-{calibrate_on}", config.tuning, None)
        results[calibrate_on] = (data, train_churn(data, config, 100, study, FitClock()))

    data, trained = results["newest_cutoff"]
    test_keys = set(trained.evaluation_set.frame["customer_key"]) if trained.evaluation_set is not None else set()
    calibration_keys = set(data.rows(CALIBRATION)["customer_key"])
    # The logged test rows (the gate re-scores them) are the test half only: no customer is in both.
    assert test_keys and calibration_keys and not test_keys & calibration_keys
    assert trained.metrics["rows_test"] == len(test_keys) and trained.metrics["rows_calibration"] == len(
        calibration_keys
    )
    assert trained.info["calibration"]["cutoffs"] == ["2024-10-01"] and trained.info["calibration"]["share"] == 0.3
    # Churn rose at the newest cutoff: calibrated there, the mean prediction on the test half matches it.
    assert trained.predictions is not None
    y, p = trained.predictions["y"].to_numpy(float), trained.predictions["score"].to_numpy(float)
    fit = ev.calibration_in_the_large(y, p)
    assert y.mean() > 1.5 * data.rows("valid")["churn_90d"].mean()
    assert abs(fit.observed - fit.predicted) < 3 * fit.se_gap, fit
    # Calibrated on the validation cutoff (the old recipe), the same model predicts the old, lower rate.
    _, old = results["validation"]
    assert old.predictions is not None
    stale = ev.calibration_in_the_large(old.predictions["y"].to_numpy(float), old.predictions["score"].to_numpy(float))
    assert stale.observed - stale.predicted > 3 * stale.se_gap and stale.ratio > 1.4
    assert old.metrics["rows_calibration"] == 0 and old.info["calibration"]["fitted_on"] == "the validation rows"
    # The contact threshold still takes the capacity's customers at the newest validation cutoff.
    valid = data.rows("valid")
    assert (trained.primary.model.predict_proba(valid)[:, 1] >= trained.metrics["threshold"]).sum() == 100
    assert trained.metrics["test_auc"] == pytest.approx(old.metrics["test_auc"], abs=0.03)  # same ranking, other rows


def test_a_config_holds_sections_only_for_the_families_it_trains(tmp_path: Path) -> None:
    from models.training import plan_units, shifted, with_budget

    text = _config_text()
    churn_only = text[: text.index("\npropensity:")] + "\n"
    path = tmp_path / "training.yaml"
    path.write_text(churn_only)
    config = load_training_config(path)
    assert config.families() == ["churn"] and config.propensity is None
    assert [u.name for u in plan_units(config, "all")] == ["churn"]
    assert shifted(with_budget(config, 2, None), 3).churn is not None  # absent sections stay absent
    with pytest.raises(
        TrainingConfigError, match="has no 'propensity' section: add one .* or train a configured family"
    ):
        plan_units(config, "propensity")
    # a family it does not train keeps the default registered name (promote, rollback, history still resolve it)
    assert config.registered_names()["recommendation"] == "custintel-recommendation"
    path.write_text("experiment: custintel\n")
    with pytest.raises(TrainingConfigError, match="no family is configured"):
        load_training_config(path)


def test_the_bgnbd_baseline_scores_non_contractual_rows_only() -> None:
    from models.clv import bgnbd_baseline

    rng = np.random.default_rng(0)
    n = 600
    repeat = rng.poisson(3, n).astype(float)
    age = rng.uniform(60, 400, n)
    t_x = np.where(repeat > 0, age * rng.uniform(0.1, 1.0, n), 0.0)
    frame = pd.DataFrame({"rfm_repeat_days": repeat, "rfm_t_x_days": t_x, "rfm_age_days": age})
    silent = (age - t_x) / age  # long silences relative to age churn more
    y = (rng.random(n) < 0.2 + 0.6 * silent).astype(int)
    found = bgnbd_baseline(frame.iloc[:300], frame.iloc[300:], y[300:], 90)
    assert found is not None
    metrics, params = found
    assert metrics["baseline_bgnbd_test_auc"] > 0.6 and set(params) == {"r", "alpha", "a", "b"}
    assert bgnbd_baseline(frame[["rfm_repeat_days"]], frame, y, 90) is None  # contractual labels: no histories


def test_auto_calibration_recalibrates_after_a_shift_and_logs_every_method() -> None:
    """Churn rose at the newest cutoff: the plain model under-predicts there, so a calibrator earns its place."""
    frame = _drifting_churn(4000, seed=2)
    config = _small_churn_config("newest_cutoff").model_copy(update={"calibration": "auto"})
    data = churn_table(frame, config, ["churn_90d"])
    trained = train_churn(data, config, 100, create_study("c-auto", config.tuning, None), FitClock())
    m = trained.metrics
    logged = {k: m[f"calibration_{k}_log_loss"] for k in ("none", "sigmoid", "isotonic")}
    assert trained.params["calibration"] in ("sigmoid", "isotonic") and trained.params["calibration_setting"] == "auto"
    assert logged[trained.params["calibration"]] == min(logged.values()) < logged["none"]
    assert all(f"calibration_{k}_brier" in m for k in logged)
    assert trained.info["calibration"]["summary"].startswith(f"calibration {trained.params['calibration']} (the lowest")
