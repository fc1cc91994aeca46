"""Each trainer on the tiny generated world, the recommender's business rules, and tuning budgets."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custintel.settings import Settings
from features.featurestore.offline import read_offline
from models.churn import train_churn
from models.config import TuningConfig, load_training_config
from models.propensity import train_propensity, train_uplift
from models.recommendation import ALSRecommender, Recommender, train_recommendation
from models.training import load_churn, load_interactions, load_propensity, load_uplift
from models.tuning import FitClock, create_study, run_study

pytestmark = pytest.mark.slow


def _config(featured: Settings):
    return load_training_config(featured.training_config)


def test_churn_trains_calibrates_sets_a_threshold_and_fits_the_survival_model(featured: Settings) -> None:
    config = _config(featured)
    data = load_churn(featured, config)
    stages = {s: sorted(set(pd.to_datetime(data.rows(s)["as_of"]).dt.date)) for s in ("train", "valid", "test")}
    assert stages["train"] == config.churn.split.train_as_of and stages["test"] == config.churn.split.test_as_of
    # No training label window reaches the validation cutoff, nor a validation window the test cutoff.
    horizon = dt.timedelta(days=config.churn.horizon_days)
    assert max(stages["train"]) + horizon <= min(stages["valid"])
    assert max(stages["valid"]) + horizon <= min(stages["test"])
    assert "churn_90d" not in data.frame.columns.difference(data.excluded).tolist()

    clock = FitClock()
    result = train_churn(data, config.churn, 40, create_study("t", config.churn.tuning, None), clock)
    m = result.metrics
    assert 0.5 < m["test_auc"] <= 1 and m["test_concordance"] > 0.5
    assert m["tuning_trials"] == 2 and 0 < clock.seconds == result.fit_seconds
    # Calibrated on half the test cutoff's customers (the newest labelled data), tested on the other half:
    # the mean predicted probability is near the observed churn rate, and no customer is in both halves.
    assert result.predictions is not None
    assert result.predictions["score"].mean() == pytest.approx(m["test_base_rate"], abs=0.03)
    calibrated_on = set(data.rows("calibration")["customer_key"])
    assert result.evaluation_set is not None
    tested_on = set(result.evaluation_set.frame["customer_key"])
    assert calibrated_on and tested_on and not calibrated_on & tested_on
    assert result.info["calibration"]["cutoffs"] == [str(d) for d in config.churn.split.test_as_of]
    assert m["rows_test"] == len(result.evaluation_set.frame) == len(result.predictions)
    assert result.info["threshold"]["weekly_capacity"] == 40 and m["threshold"] > 0
    assert {"roc", "precision_recall", "calibration", "gains", "importance"} <= set(result.figures)
    names = [lm.name for lm in result.models]
    assert names == ["model", "survival"] and result.primary.registered_model == "custintel-churn"
    # The logged model takes raw feature columns: preprocessing travels with it.
    p = result.primary.model.predict_proba(data.rows("test").head(20))[:, 1]
    assert p.shape == (20,) and np.all((p >= 0) & (p <= 1))


def test_propensity_leaves_out_held_products_and_scores_each_product(featured: Settings) -> None:
    config = _config(featured)
    data = load_propensity(featured, config)
    held = read_offline(featured.features_dir / "offline", "interactions@1").to_pandas()
    held = held[held["holds"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    pairs = data.frame.merge(held[["customer_key", "as_of", "product_id"]], on=["customer_key", "as_of", "product_id"])
    assert len(held) > 0 and pairs.empty and "holds" not in data.frame.columns
    # Non-buyers are sampled and weighted back (defaults: 0.1 for train and valid, 0.3 for test).
    negatives = data.frame[~data.frame["bought"].astype(bool)]
    assert set(negatives["_sample_weight"].round(6)) == {10.0, round(1 / 0.3, 6)}
    assert set(data.frame.loc[data.frame["bought"].astype(bool), "_sample_weight"]) == {1.0}
    result = train_propensity(data, config.propensity, create_study("p", config.propensity.tuning, None), FitClock())
    assert 0.5 < result.metrics["test_auc"] <= 1
    per_product = result.info["per_product_auc"]
    assert set(per_product) == set(data.frame["product_id"].astype(str))
    pipeline = result.primary.model
    assert "product_id" in pipeline.named_steps["prepare"].categorical


def test_uplift_is_cross_fitted_over_the_whole_experiment(featured: Settings) -> None:
    config = _config(featured)
    data = load_uplift(featured, config)
    assert set(data.frame["offer_group"]) == {"treatment", "control"}
    assert config.propensity.uplift is not None
    result = train_uplift(data, config.propensity.uplift, FitClock(), folds=3)
    assert result.predictions is not None and len(result.predictions) == len(data.frame)
    assert np.isfinite(result.metrics["crossfit_qini"]) and np.isfinite(result.metrics["test_qini"])
    uplift = result.primary.model.predict(data.rows("test").head(10))
    assert uplift.shape == (10,) and np.all(np.abs(uplift) <= 1)


def test_recommendation_keeps_its_business_rules_and_falls_back_to_popularity(featured: Settings) -> None:
    config = _config(featured)
    r = config.recommendation
    valid, test = load_interactions(featured, r.valid_as_of), load_interactions(featured, r.train_as_of)
    result = train_recommendation(valid, test, r, r.tuning, create_study("r", r.tuning, None), FitClock())
    m = result.metrics
    assert 0 < m["test_ndcg_at_10"] <= 1 and 0 < m["test_popularity_ndcg_at_10"] <= 1
    model: Recommender = result.primary.model
    held = test.held()
    assert held, "the tiny world has customers holding products"
    for user, items in list(held.items())[:200]:
        recommended = {i for i, _, _ in model.recommend(user)}
        assert not recommended & items
        segment = model.segments.get(user)
        if model.eligible is not None and segment is not None:
            assert recommended <= model.eligible[segment]
    out = model.predict(None, pd.DataFrame({"customer_key": ["nobody-at-all"]}))
    assert set(out["source"]) == {"popularity"} and out["rank"].tolist() == list(range(1, len(out) + 1))


@settings(max_examples=40, deadline=None)
@given(
    n_users=st.integers(1, 6),
    n_items=st.integers(1, 12),
    k=st.integers(1, 12),
    seed=st.integers(0, 1000),
    exclude_share=st.floats(0, 1),
)
def test_recommendations_never_include_held_excluded_or_ineligible_items(
    n_users: int, n_items: int, k: int, seed: int, exclude_share: float
) -> None:
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in range(n_users)]
    items = [f"i{j}" for j in range(n_items)]
    held = {u: {i for i in items if rng.random() < 0.3} for u in users}
    eligible = {"a": {i for i in items if rng.random() < 0.7}, "b": set(items)}
    segments = {u: rng.choice(["a", "b"]) for u in users}
    model = ALSRecommender(users, items, rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3)),
                           {i: rng.random() for i in items}, held, segments, eligible, k)  # fmt: skip
    for u in [*users, "stranger"]:
        exclude = {i for i in items if rng.random() < exclude_share}
        got = [i for i, _, _ in model.recommend(u, exclude=exclude)]
        blocked = held.get(u, set()) | exclude
        allowed = eligible[segments[u]] if u in segments else set(items)
        assert len(got) == len(set(got)) <= k
        assert not set(got) & blocked and set(got) <= allowed
        assert len(got) == min(k, len(allowed - blocked))


def test_tuning_stops_at_the_trial_count_or_the_time_budget() -> None:
    def slow(trial) -> float:
        time.sleep(0.25)
        return trial.suggest_float("x", 0, 1)

    by_count = run_study(create_study("n", TuningConfig(trials=3), None), slow, TuningConfig(trials=3))
    assert by_count.trials == 3 and by_count.completed == 3
    budget = TuningConfig(trials=1000, timeout_seconds=1.0)
    start = time.perf_counter()
    by_time = run_study(create_study("t", budget, None), slow, budget)
    assert 2 <= by_time.trials <= 6 and time.perf_counter() - start < 3
