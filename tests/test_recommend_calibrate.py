"""EASE beside ALS and popularity (closed form, rules, choice on validation), per-user time splits of a user's
interactions, and churn calibration applied only when it improves the cross-fitted log loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV

from models.churn import calibrate, choose_calibration, cross_fitted_calibration
from models.config import RecommendationConfig, TuningConfig
from models.own_tables import OwnInteractions, TrainingInputError, own_interactions
from models.recommendation import (
    EASERecommender,
    Interactions,
    Recommender,
    ease_weights,
    fit_ease,
    train_recommendation,
    tune_ease,
)
from models.splits import stage_latest_per_group
from models.tuning import FitClock, create_study

# ---------------------------------------------------------------- EASE


def test_ease_weights_are_each_items_ridge_regression_on_the_others_with_a_zero_diagonal() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((30, 5)) < 0.4).astype(float)
    lam = 2.0
    b = ease_weights(x.T @ x, lam)
    assert np.allclose(np.diag(b), 0)
    for j in range(5):  # the closed form equals a ridge regression of column j on the other columns
        others = [i for i in range(5) if i != j]
        xo = x[:, others]
        ridge = np.linalg.solve(xo.T @ xo + lam * np.eye(4), xo.T @ x[:, j])
        assert np.allclose(b[others, j], ridge, atol=1e-10)


def _blocks(n_users: int = 40, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Two taste groups over eight items: users of a group buy from its four items (history and holdout)."""
    rng = np.random.default_rng(seed)
    history, valid_out, test_out = [], [], []
    for u in range(n_users):
        items = [f"i{j}" for j in (range(4) if u % 2 else range(4, 8))]
        order = rng.permutation(items)
        history += [(f"u{u}", i) for i in order[:2]]
        valid_out.append((f"u{u}", order[2]))
        test_out.append((f"u{u}", order[3]))
    # a few popular items everyone has, so popularity alone points at the wrong group half the time
    frame = pd.DataFrame(history, columns=["user", "item"]).assign(weight=1.0, held=True)
    catalogue = tuple(f"i{j}" for j in range(8))
    valid = Interactions(frame, pd.DataFrame(valid_out, columns=["user", "item"]), None, catalogue)
    later = pd.concat([frame, pd.DataFrame(valid_out, columns=["user", "item"]).assign(weight=1.0, held=True)])
    test = Interactions(later, pd.DataFrame(test_out, columns=["user", "item"]), None, catalogue)
    return valid, test


def test_ease_never_recommends_what_a_customer_has_and_falls_back_to_popularity() -> None:
    valid, _ = _blocks()
    model = fit_ease(valid, 1.0, 10, 1, FitClock())
    assert isinstance(model, EASERecommender) and np.allclose(np.diag(model.weights), 0)
    for user, items in valid.held().items():
        got = model.recommend(user)
        assert got and not {i for i, _, _ in got} & items and {s for _, _, s in got} == {"ease"}
    assert {s for _, _, s in model.recommend("a-stranger")} == {"popularity"}
    # it learnt the groups: a user's next item is from their own group
    top = model.recommend("u1")[0][0]
    assert top in {"i0", "i1", "i2", "i3"}


def test_ease_lambda_is_chosen_on_validation_from_the_grid() -> None:
    valid, _ = _blocks()
    lam, score, tried = tune_ease(valid, [100.0, 1.0, 10.0], 3, 1, FitClock())
    assert [t["lambda"] for t in tried] == [1.0, 10.0, 100.0]
    assert score == max(t["ndcg_at_3"] for t in tried) and lam in (1.0, 10.0, 100.0)


def _config(**update: object) -> RecommendationConfig:
    import datetime as dt

    base = RecommendationConfig(train_as_of=dt.date(2025, 6, 1), valid_as_of=dt.date(2025, 1, 1), k=3)
    return base.model_copy(update=update)


def test_the_candidate_with_the_best_validation_ndcg_is_served_and_every_candidate_is_logged() -> None:
    valid, test = _blocks()
    config = _config(ease_lambdas=[1.0, 10.0])
    tuning = TuningConfig(trials=1, timeout_seconds=60)
    result = train_recommendation(valid, test, config, tuning, create_study("r", tuning, None), FitClock(), 1)
    table = result.tables["candidates"]
    assert list(table["candidate"]) == ["popularity", "ease", "als"] and table["chosen"].sum() == 1
    best = table.loc[table["valid_ndcg_at_3"].idxmax(), "candidate"]
    assert result.params["recommender"] == best == result.info["chosen"]
    assert result.metrics["valid_ease_ndcg_at_3"] > result.metrics["valid_popularity_ndcg_at_3"]
    assert {"test_ease_ndcg_at_3", "test_als_ndcg_at_3", "test_popularity_ndcg_at_3"} <= set(result.metrics)
    model = result.primary.model
    assert isinstance(model, Recommender) and model.source == best
    out = model.predict(None, pd.DataFrame({"customer_key": ["u1", "nobody"]}))
    assert set(out[out["customer_key"] == "nobody"]["source"]) == {"popularity"}


def test_a_tie_goes_to_the_candidate_configured_first() -> None:
    valid, test = _blocks()
    # what was bought after the validation cutoff is outside the catalogue: every candidate scores 0 there
    valid = Interactions(valid.history, valid.holdout.assign(item="not-in-the-catalogue"), None, valid.catalogue)
    tuning = TuningConfig(trials=1)
    for order in (["popularity", "ease"], ["ease", "popularity"]):
        config = _config(candidates=order, ease_lambdas=[1.0])
        result = train_recommendation(valid, test, config, tuning, create_study("r", tuning, None), FitClock(), 1)
        assert list(result.tables["candidates"]["candidate"]) == order
        assert result.params["recommender"] == order[0]


def test_ease_is_skipped_above_the_item_limit_saying_so() -> None:
    valid, test = _blocks()
    config = _config(ease_max_items=5, candidates=["popularity", "ease"])
    tuning = TuningConfig(trials=1)
    result = train_recommendation(valid, test, config, tuning, create_study("r", tuning, None), FitClock(), 1)
    assert "8 items is above recommendation.ease_max_items (5" in result.info["ease"]["skipped"]
    assert list(result.tables["candidates"]["candidate"]) == ["popularity"]
    assert result.params["recommender"] == "popularity"
    with pytest.raises(ValueError, match="no recommender left to train.*EASE skipped: 8 items"):
        config = _config(ease_max_items=5, candidates=["ease"])
        train_recommendation(valid, test, config, tuning, create_study("r2", tuning, None), FitClock(), 1)


# ---------------------------------------------------------------- splits of a user's interactions


def test_per_user_time_split_holds_out_each_users_latest_interactions() -> None:
    users = pd.Series(["a"] * 10 + ["b"] * 20 + ["c"] * 2)
    times = pd.Series(list(range(10, 0, -1)) + list(range(20)) + [5, 5])
    stage = stage_latest_per_group(users, times, (0.8, 0.1, 0.1))
    a = stage[:10]
    assert a.iloc[0] == "test" and a.iloc[1] == "valid" and (a.iloc[2:] == "train").all()  # a's times run backwards
    b = stage[10:30]
    assert list(b.iloc[-2:]) == ["test", "test"] and list(b.iloc[-4:-2]) == ["valid", "valid"]
    assert (stage[30:] == "train").all()  # two rows: nothing held out
    with pytest.raises(ValueError, match="no readable time"):
        stage_latest_per_group(users, pd.Series([None] * len(users)))


def _log(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    start = 1_700_000_000
    rows = [(f"u{u}", f"i{rng.integers(12)}", start + u * 5_000 + t * 100) for u in range(30) for t in range(10)]
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("split", ["per-user", None])
def test_a_per_user_time_split_gives_every_user_a_history_and_a_holdout(tmp_path: Path, split: str | None) -> None:
    path = _log(tmp_path)
    valid, test = own_interactions(OwnInteractions(path, "user", "item", None, "ts", split=split), seed=0)  # type: ignore[arg-type]
    assert set(test.holdout["user"]) == set(test.history["user"]) == {f"u{u}" for u in range(30)}
    frame = pd.read_csv(path)
    last = frame.sort_values("ts").groupby("user").tail(1)
    assert set(zip(last["user"], last["item"], strict=True)) <= set(
        zip(test.holdout["user"], test.holdout["item"], strict=True)
    )
    assert len(valid.history) == 30 * 8 and len(test.history) == 30 * 9


def test_a_global_time_split_leaves_late_users_without_history(tmp_path: Path) -> None:
    valid, test = own_interactions(OwnInteractions(_log(tmp_path), "user", "item", None, "ts", split="global"), seed=0)
    assert set(test.holdout["user"]) - set(test.history["user"])  # users seen only after the cutoff


def test_a_time_split_without_a_time_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match="--split per-user needs --time"):
        own_interactions(OwnInteractions(_log(tmp_path), "user", "item", None, None, split="per-user"), seed=0)


# ---------------------------------------------------------------- calibration only when it improves


class ScoreColumn(ClassifierMixin, BaseEstimator):
    """A fitted 'model' whose probability is a column of the input, optionally distorted."""

    def __init__(self, power: float = 1.0) -> None:
        self.power = power

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> ScoreColumn:  # noqa: N803
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        p = X["p"].to_numpy(dtype=float) ** self.power
        return np.column_stack([1 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def _rows(n: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.6, n)
    return pd.DataFrame({"p": p}), (rng.random(n) < p).astype(int)


def test_a_calibrated_score_keeps_no_calibrator() -> None:
    rows, y = _rows()
    model = ScoreColumn().fit(rows, y)
    figures = cross_fitted_calibration(model, rows, y)
    assert set(figures) == {"none", "sigmoid", "isotonic"}
    assert choose_calibration(figures) == "none"
    served, method, _ = calibrate(model, rows, y, "auto", FitClock())  # type: ignore[arg-type]
    assert method == "none" and served is model


@pytest.mark.parametrize("power", [3.0, 0.3])
def test_a_distorted_score_gets_the_calibrator_with_the_lowest_cross_fitted_log_loss(power: float) -> None:
    rows, y = _rows()
    model = ScoreColumn(power).fit(rows, y)
    served, method, figures = calibrate(model, rows, y, "auto", FitClock())  # type: ignore[arg-type]
    assert method in ("sigmoid", "isotonic") and isinstance(served, CalibratedClassifierCV)
    assert figures[method]["log_loss"] == min(f["log_loss"] for f in figures.values()) < figures["none"]["log_loss"]
    assert figures[method]["brier"] < figures["none"]["brier"]


def test_a_named_calibration_is_applied_as_configured_and_too_few_positives_mean_none() -> None:
    rows, y = _rows()
    model = ScoreColumn().fit(rows, y)
    served, method, figures = calibrate(model, rows, y, "sigmoid", FitClock())  # type: ignore[arg-type]
    assert method == "sigmoid" and isinstance(served, CalibratedClassifierCV) and "none" in figures
    y_one = np.zeros(len(y), dtype=int)
    y_one[0] = 1
    served, method, figures = calibrate(model, rows, y_one, "auto", FitClock())  # type: ignore[arg-type]
    assert method == "none" and figures == {}
