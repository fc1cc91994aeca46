"""The best achievable scores, from the generator's hidden truth: how close each model comes.

Read by evaluation only, never by training. Each function takes a model's held-out
predictions and the truth tables, scores the truth's own probabilities on exactly the
same rows, and returns the model's score, the oracle's, and their ratio.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models import evaluation as ev
from models.recommendation import ALSRecommender, Interactions


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


def churn_oracle(
    predictions: pd.DataFrame, persons: pd.Series, churn_risk: pd.DataFrame, horizon_days: int
) -> dict[str, float]:
    """AUC of the model against the true churn probability at each cutoff (given the true state then).

    `predictions`: customer_key, as_of, y, score. `churn_risk`: person_id, month,
    p_churn_1m, p_churn_3m (the month whose start is the cutoff).
    """
    column = "p_churn_1m" if horizon_days <= 45 else "p_churn_3m"
    risk = churn_risk.assign(month=pd.to_datetime(churn_risk["month"]).dt.date)
    rows = predictions.assign(person_id=predictions["customer_key"].map(persons)).dropna(subset=["person_id"])
    rows = rows.assign(month=pd.to_datetime(rows["as_of"]).dt.date)
    rows = rows.merge(risk[["person_id", "month", column]], on=["person_id", "month"], how="inner")
    model = ev.classification_metrics(rows["y"].to_numpy(), rows["score"].to_numpy())["auc"]
    oracle = ev.classification_metrics(rows["y"].to_numpy(), rows[column].to_numpy())["auc"]
    return _compare("auc", model, oracle, len(rows))


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


def uplift_oracle(predictions: pd.DataFrame, persons: pd.Series, treatment_effect: pd.DataFrame) -> dict[str, float]:
    """Qini coefficient of the model's uplift against the true uplift's, on the same participants.

    `predictions`: customer_key, y (retained), treated, uplift. `treatment_effect`:
    person_id, true_uplift (reduction in churn probability = gain in retention).
    """
    rows = predictions.assign(person_id=predictions["customer_key"].map(persons)).dropna(subset=["person_id"])
    rows = rows.merge(treatment_effect[["person_id", "true_uplift"]], on="person_id", how="inner")
    y, t = rows["y"].to_numpy(float), rows["treated"].to_numpy(bool)
    model = ev.qini_coefficient(y, t, rows["uplift"].to_numpy(float))
    oracle = ev.qini_coefficient(y, t, rows["true_uplift"].to_numpy(float))
    return _compare("qini", model, oracle, len(rows))


def recommendation_oracle(
    model: ALSRecommender, test: Interactions, persons: pd.Series, affinity: pd.DataFrame, k: int
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
