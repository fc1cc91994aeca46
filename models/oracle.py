"""The best achievable scores, from the generator's hidden truth: how close each model comes.

Read by evaluation only, never by training. Each function takes a model's held-out
predictions and the truth tables, scores the truth's own probabilities on exactly the
same rows, and returns the model's score, the oracle's, and their ratio.

Where the model's own features are given, a *feature ceiling* is scored too: a
LightGBM regressor fitted (cross-fitted) to the true value from those features. The
oracle knows hidden state that no feature carries; the ceiling says how much of the
oracle a model on these features can reach at all, so a gap is read as the model's or
the world's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd

from models import evaluation as ev
from models.recommendation import Interactions, Recommender
from models.tabular import FramePreparer, infer_schema

log = logging.getLogger("custintel.models")


def customer_persons(crosswalk: pd.DataFrame, source_records: pd.DataFrame) -> pd.Series:
    """customer_key -> true person, through the billing accounts (customers split or merged wrongly are left out)."""
    truth = source_records[source_records["source_table"] == "billing_accounts"]
    keys = truth["source_table"].astype(str) + ":" + truth["record_id"].astype(str)
    by_key = pd.Series(truth["person_id"].to_numpy(), index=keys.to_numpy())
    linked = crosswalk.assign(person_id=crosswalk["record_key"].map(by_key)).dropna(subset=["person_id"])
    persons = linked.groupby("customer_key")["person_id"].agg(["nunique", "first"])
    return persons.loc[persons["nunique"] == 1, "first"]


def _compare(name: str, model: float, oracle: float, rows: int) -> dict[str, float]:
    return {
        f"model_{name}": model,
        f"oracle_{name}": oracle,
        f"{name}_fraction_of_oracle": model / oracle if oracle else float("nan"),
        "oracle_rows": float(rows),
    }


def feature_ceiling(
    features: pd.DataFrame, target: np.ndarray, exclude: Sequence[str], seed: int = 0, folds: int = 5
) -> np.ndarray:
    """Each row's true value as predicted from its features by a regressor that did not see the row."""
    schema = infer_schema(features, exclude=list(exclude))
    fold = np.random.default_rng(seed).permutation(np.arange(len(features)) % folds)
    out = np.empty(len(features))
    for k in range(folds):
        # A minute on the demo's 20,000 customers: say where it is.
        log.info("oracle comparison: feature ceiling, fold %d/%d (%s rows)", k + 1, folds, f"{len(features):,}")
        fit, score = features[fold != k], features[fold == k]
        prep = FramePreparer(schema.numeric, schema.categorical).fit(fit)
        model = lgb.LGBMRegressor(
            n_estimators=400, learning_rate=0.03, num_leaves=15, min_child_samples=50, subsample=0.8,
            subsample_freq=1, random_state=seed, n_jobs=2, verbose=-1,
        ).fit(prep.transform(fit), target[fold != k])  # fmt: skip
        out[fold == k] = model.predict(prep.transform(score))
    return out


def _with_ceiling(
    scores: dict[str, float],
    name: str,
    rows: pd.DataFrame,
    truth_column: str,
    features: pd.DataFrame | None,
    exclude: Sequence[str],
    metric: Callable[[pd.DataFrame, np.ndarray], float],
) -> dict[str, float]:
    """Add the feature ceiling's score (`rows["_row"]` indexes `features`, aligned with the predictions)."""
    if features is None or len(rows) < 50:
        return scores
    frame = features.iloc[rows["_row"].to_numpy()].reset_index(drop=True)
    ceiling = metric(rows, feature_ceiling(frame, rows[truth_column].to_numpy(float), exclude))
    oracle = scores[f"oracle_{name}"]
    return {
        **scores,
        f"ceiling_{name}": ceiling,
        f"ceiling_{name}_fraction_of_oracle": ceiling / oracle if oracle else float("nan"),
        f"{name}_fraction_of_ceiling": scores[f"model_{name}"] / ceiling if ceiling else float("nan"),
    }


def _keyed(predictions: pd.DataFrame, persons: pd.Series) -> pd.DataFrame:
    """Predictions with their true person and their position (`_row`), customers without one left out."""
    rows = predictions.assign(_row=np.arange(len(predictions)), person_id=predictions["customer_key"].map(persons))
    return rows.dropna(subset=["person_id"])


def churn_oracle(
    predictions: pd.DataFrame,
    persons: pd.Series,
    churn_risk: pd.DataFrame,
    horizon_days: int,
    features: pd.DataFrame | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, float]:
    """AUC of the model against the true churn probability at each cutoff (given the true state then).

    `predictions`: customer_key, as_of, y, score. `churn_risk`: person_id, month,
    p_churn_1m, p_churn_3m (the month whose start is the cutoff). `features`: the test
    rows the predictions were made from (same order), for the feature ceiling.
    """
    column = "p_churn_1m" if horizon_days <= 45 else "p_churn_3m"
    risk = churn_risk.assign(month=pd.to_datetime(churn_risk["month"]).dt.date)
    rows = _keyed(predictions, persons)
    rows = rows.assign(month=pd.to_datetime(rows["as_of"]).dt.date)
    rows = rows.merge(risk[["person_id", "month", column]], on=["person_id", "month"], how="inner")

    def auc(r: pd.DataFrame, score: np.ndarray) -> float:
        return ev.classification_metrics(r["y"].to_numpy(), score)["auc"]

    scores = _compare("auc", auc(rows, rows["score"].to_numpy()), auc(rows, rows[column].to_numpy()), len(rows))
    return _with_ceiling(scores, "auc", rows, column, features, exclude, auc)


def propensity_oracle(
    predictions: pd.DataFrame, persons: pd.Series, affinity: pd.DataFrame, horizon_days: int
) -> dict[str, float]:
    """AUC of the model against the true probability of buying each product within the horizon.

    `predictions`: customer_key, product_id, y, score (and weight, for sampled rows).
    `affinity`: person_id, product_id, monthly_purchase_prob.
    """
    months = horizon_days / 30.0
    truth = affinity.assign(p_true=1 - (1 - affinity["monthly_purchase_prob"].astype(float)) ** months)
    rows = predictions.assign(person_id=predictions["customer_key"].map(persons)).dropna(subset=["person_id"])
    rows = rows.merge(truth[["person_id", "product_id", "p_true"]], on=["person_id", "product_id"], how="inner")
    w = rows["weight"].to_numpy(float) if "weight" in rows.columns else None  # sampled test rows
    model = ev.classification_metrics(rows["y"].to_numpy(), rows["score"].to_numpy(), w)["auc"]
    oracle = ev.classification_metrics(rows["y"].to_numpy(), rows["p_true"].to_numpy(), w)["auc"]
    return _compare("auc", model, oracle, len(rows))


def uplift_oracle(
    predictions: pd.DataFrame,
    persons: pd.Series,
    treatment_effect: pd.DataFrame,
    features: pd.DataFrame | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, float]:
    """Qini coefficient of the model's uplift against the true uplift's, on the same participants.

    `predictions`: customer_key, y (retained), treated, uplift. `treatment_effect`:
    person_id, true_uplift (reduction in churn probability = gain in retention).
    `features`: the participants the predictions were made for (same order).
    """
    rows = _keyed(predictions, persons)
    rows = rows.merge(treatment_effect[["person_id", "true_uplift"]], on="person_id", how="inner")

    def qini(r: pd.DataFrame, uplift: np.ndarray) -> float:
        return ev.qini_coefficient(r["y"].to_numpy(float), r["treated"].to_numpy(bool), uplift)

    scores = _compare(
        "qini", qini(rows, rows["uplift"].to_numpy(float)), qini(rows, rows["true_uplift"].to_numpy(float)), len(rows)
    )
    return _with_ceiling(scores, "qini", rows, "true_uplift", features, exclude, qini)


def recommendation_oracle(
    model: Recommender, test: Interactions, persons: pd.Series, affinity: pd.DataFrame, k: int
) -> dict[str, float]:
    """NDCG@k of the model against ranking by the true affinity, both under the same business rules."""
    relevant = {u: items for u, items in test.relevant().items() if u in persons.index}
    truth = affinity.dropna(subset=["affinity"])
    table = truth.pivot_table(index="person_id", columns="product_id", values="affinity", aggfunc="first")
    lists_model, lists_oracle = {}, {}
    items = np.array(model.items, dtype=object)
    columns = table.columns.get_indexer(pd.Index(items))
    for user in relevant:
        person = persons[user]
        if person not in table.index:
            continue
        lists_model[user] = [i for i, _, _ in model.recommend(user)][:k]
        row = table.loc[person].to_numpy(dtype=float)
        scores = np.where(columns >= 0, row[np.maximum(columns, 0)], np.nan)
        scores = np.where(np.isnan(scores), -np.inf, scores)  # NaN affinity: the product is not for this person
        ranked = [str(items[j]) for j in np.argsort(-scores, kind="stable")]
        blocked = model.held.get(user, set())
        lists_oracle[user] = [i for i in ranked if i not in blocked][:k]
    relevant = {u: relevant[u] for u in lists_model}
    m = ev.ranking_metrics(lists_model, relevant, k, len(items))[f"ndcg_at_{k}"]
    o = ev.ranking_metrics(lists_oracle, relevant, k, len(items))[f"ndcg_at_{k}"]
    return _compare(f"ndcg_at_{k}", m, o, len(relevant))
