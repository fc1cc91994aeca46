"""Recommendation: implicit-feedback ALS, business rules, and a popularity fallback.

Interactions before a cutoff train the factors; purchases in the horizon after it are
held out. Rules apply to every list, whatever produced it: never a product the
customer already holds, and only products their segment is eligible for (where the
catalogue's eligibility is not known, a product counts as eligible for a segment once
enough of that segment's customers have bought it). Customers with too little
history get the most popular eligible products instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from mlflow.pyfunc import PythonModel
from threadpoolctl import threadpool_limits

from models import evaluation as ev
from models import plots
from models.config import RecommendationConfig, TuningConfig
from models.result import EvaluationSet, LoggedModel, TrainedModel
from models.tuning import FitClock, run_study, suggest

ALS_DEFAULTS = {"factors": 16, "regularization": 0.05, "alpha": 10.0, "iterations": 15}
_MIN_SEGMENT_BUYERS = 3


class RecommendationDataError(ValueError):
    """Interactions cannot be used: a column is missing, weights are negative, or nothing is held out."""


@dataclass(frozen=True)
class Interactions:
    """History before a cutoff, what was bought after it, and who is in which segment."""

    history: pd.DataFrame  # user, item, weight[, held]
    holdout: pd.DataFrame  # user, item: bought within the horizon after the cutoff
    segments: pd.Series | None = None  # user -> segment (eligibility); None when unknown
    catalogue: tuple[str, ...] = ()  # every recommendable item

    def relevant(self) -> dict[str, set[str]]:
        """Held-out items per user, without items the user already held (they cannot be recommended)."""
        held = self.held()
        out: dict[str, set[str]] = {}
        for user, item in zip(self.holdout["user"].astype(str), self.holdout["item"].astype(str), strict=True):
            if item not in held.get(user, ()):
                out.setdefault(user, set()).add(item)
        return out

    def held(self) -> dict[str, set[str]]:
        """Items each user holds at the cutoff (never recommended)."""
        if "held" not in self.history.columns:
            return {}
        rows = self.history[self.history["held"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
        out: dict[str, set[str]] = {}
        for user, item in zip(rows["user"].astype(str), rows["item"].astype(str), strict=True):
            out.setdefault(user, set()).add(item)
        return out


def check_interactions(frame: pd.DataFrame, user: str, item: str, weight: str | None) -> pd.DataFrame:
    """A user's interactions table as (user, item, weight), with clear errors for what cannot be used."""
    missing = [c for c in (user, item, weight) if c and c not in frame.columns]
    if missing:
        raise RecommendationDataError(
            f"column(s) {missing} not in the interactions table; it has {list(frame.columns)}"
        )
    out = pd.DataFrame({"user": frame[user].astype(str), "item": frame[item].astype(str)})
    if weight:
        w = pd.to_numeric(frame[weight], errors="coerce")
        if w.isna().any():
            raise RecommendationDataError(f"{weight}: {int(w.isna().sum())} value(s) are not numbers")
        if (w < 0).any():
            raise RecommendationDataError(f"{weight}: weights must not be negative ({int((w < 0).sum())} are)")
        out["weight"] = w.to_numpy(dtype="float64")
    else:
        out["weight"] = 1.0
    empty = frame[user].isna() | frame[item].isna()
    if empty.any():
        raise RecommendationDataError(f"{int(empty.sum())} row(s) have no {user} or no {item}")
    return out


class ALSRecommender(PythonModel):
    """Top-k products per customer: ALS scores (or popularity), minus held and ineligible products.

    Input: a frame with `customer_key`, and optionally `segment` and `exclude` (items to
    leave out, comma-separated: e.g. what the online store says the customer holds now).
    Output: one row per recommendation: customer_key, rank, product_id, score, source
    ('als' or 'popularity').
    """

    def __init__(
        self,
        users: Sequence[str],
        items: Sequence[str],
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        popularity: Mapping[str, float],
        held: Mapping[str, set[str]],
        segments: Mapping[str, str],
        eligible: Mapping[str, set[str]] | None,
        k: int,
    ) -> None:
        self.user_index = {u: i for i, u in enumerate(users)}
        self.items = list(items)
        self.user_factors = np.asarray(user_factors, dtype="float32")
        self.item_factors = np.asarray(item_factors, dtype="float32")
        self.popularity = np.array([popularity.get(i, 0.0) for i in self.items], dtype="float64")
        self.held = {u: set(v) for u, v in held.items()}
        self.segments = dict(segments)
        self.eligible = None if eligible is None else {s: set(v) for s, v in eligible.items()}
        self.k = k

    def recommend(
        self, user: str, segment: str | None = None, exclude: set[str] | None = None
    ) -> list[tuple[str, float, str]]:
        """(product, score, source) for one customer, best first."""
        idx = self.user_index.get(user)
        if idx is not None:
            scores, source = self.item_factors @ self.user_factors[idx], "als"
        else:
            scores, source = self.popularity.copy(), "popularity"
        blocked = set(self.held.get(user, ())) | (exclude or set())
        seg = segment if segment is not None else self.segments.get(user)
        allowed = None if self.eligible is None or seg is None else self.eligible.get(seg)
        order = np.argsort(-scores, kind="stable")
        out = []
        for j in order:
            item = self.items[j]
            if item in blocked or (allowed is not None and item not in allowed):
                continue
            out.append((item, float(scores[j]), source))
            if len(out) == self.k:
                break
        return out

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Recommendations for every row of `model_input` (see the class docstring)."""
        rows = []
        frame = pd.DataFrame(model_input)
        if "customer_key" not in frame.columns:
            raise RecommendationDataError("input needs a customer_key column")
        for rec in frame.to_dict("records"):
            user = str(rec["customer_key"])
            segment = rec.get("segment")
            raw = rec.get("exclude")
            exclude = {s.strip() for s in str(raw).split(",") if s.strip()} if isinstance(raw, str) else set()
            for rank, (item, score, source) in enumerate(
                self.recommend(user, segment if isinstance(segment, str) else None, exclude), start=1
            ):
                rows.append({"customer_key": user, "rank": rank, "product_id": item, "score": score, "source": source})
        return pd.DataFrame(rows, columns=["customer_key", "rank", "product_id", "score", "source"])


def popularity_scores(history: pd.DataFrame) -> dict[str, float]:
    """Each item's share of users who interacted with it."""
    users = history.groupby("item")["user"].nunique()
    total = max(history["user"].nunique(), 1)
    return {str(item): float(n) / total for item, n in users.items()}


def learn_eligibility(
    history: pd.DataFrame, segments: pd.Series | None, items: Sequence[str]
) -> dict[str, set[str]] | None:
    """Items each segment may be offered: those at least a few of the segment's customers have bought."""
    if segments is None:
        return None
    seg = history.assign(segment=history["user"].map(segments))
    buyers = seg.dropna(subset=["segment"]).groupby(["segment", "item"])["user"].nunique()
    out: dict[str, set[str]] = {str(s): set() for s in segments.dropna().unique()}
    wanted = set(items)
    for (s, item), n in zip(buyers.index.tolist(), buyers.to_numpy(), strict=True):
        if n >= _MIN_SEGMENT_BUYERS and str(item) in wanted:
            out.setdefault(str(s), set()).add(str(item))
    return out


def fit_als(
    data: Interactions, params: Mapping[str, Any], k: int, seed: int, threads: int, clock: FitClock
) -> ALSRecommender:
    """ALS factors of the history's user x item confidence matrix, wrapped with the rules and fallback."""
    items = list(data.catalogue) or sorted(data.history["item"].astype(str).unique())
    users = sorted(data.history["user"].astype(str).unique())
    u_idx = pd.Index(users).get_indexer(pd.Index(data.history["user"].astype(str)))
    i_idx = pd.Index(items).get_indexer(pd.Index(data.history["item"].astype(str)))
    keep = i_idx >= 0
    matrix = sp.csr_matrix(
        (data.history["weight"].to_numpy(dtype="float32")[keep], (u_idx[keep], i_idx[keep])),
        shape=(len(users), len(items)),
    )
    matrix.sum_duplicates()
    # implicit's own threads do the work; OpenBLAS threads underneath them only contend. The limit also covers
    # the model's construction, where implicit checks it (and warns on the console when it is not set).
    with clock.fitting(), threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=int(params["factors"]),
            regularization=float(params["regularization"]),
            alpha=float(params["alpha"]),
            iterations=int(params["iterations"]),
            random_state=seed,
            num_threads=threads,
        )
        model.fit(matrix, show_progress=False)
    segments = {} if data.segments is None else {str(u): str(s) for u, s in data.segments.dropna().items()}
    return ALSRecommender(
        users,
        items,
        np.asarray(model.user_factors),
        np.asarray(model.item_factors),
        popularity_scores(data.history),
        data.held(),
        segments,
        learn_eligibility(data.history, data.segments, items),
        k,
    )


def popularity_recommender(data: Interactions, k: int) -> ALSRecommender:
    """The baseline: the same rules, popularity for everyone."""
    items = list(data.catalogue) or sorted(data.history["item"].astype(str).unique())
    segments = {} if data.segments is None else {str(u): str(s) for u, s in data.segments.dropna().items()}
    return ALSRecommender(
        [], items, np.zeros((0, 1)), np.zeros((len(items), 1)), popularity_scores(data.history), data.held(),
        segments, learn_eligibility(data.history, data.segments, items), k,
    )  # fmt: skip


def score_recommender(model: ALSRecommender, data: Interactions, k: int) -> dict[str, float]:
    """Ranking metrics at k over users with held-out purchases."""
    relevant = data.relevant()
    lists = {u: [item for item, _, _ in model.recommend(u)][:k] for u in relevant}
    return ev.ranking_metrics(lists, relevant, k, len(model.items))


def recall_curve(model: ALSRecommender, data: Interactions, ks: Sequence[int]) -> dict[int, float]:
    """recall@k for several k (one recommendation pass at the largest k)."""
    relevant = data.relevant()
    saved, model.k = model.k, max(ks)
    try:
        lists = {u: [item for item, _, _ in model.recommend(u)] for u in relevant}
    finally:
        model.k = saved
    return {k: ev.ranking_metrics(lists, relevant, k, len(model.items))[f"recall_at_{k}"] for k in ks}


def train_recommendation(
    valid: Interactions,
    test: Interactions,
    config: RecommendationConfig,
    tuning: TuningConfig,
    study: optuna.Study,
    clock: FitClock,
    threads: int = 2,
) -> TrainedModel:
    """Tune ALS by NDCG@k on the validation cutoff, refit on the later history, score against popularity."""
    k = config.k
    if not valid.relevant() or not test.relevant():
        raise RecommendationDataError("no customer bought anything new after the validation or the test cutoff")

    def objective(trial: optuna.Trial) -> float:
        params = {**ALS_DEFAULTS, **suggest(trial, config.search)}
        model = fit_als(valid, params, k, tuning.seed, threads, clock)
        return score_recommender(model, valid, k)[f"ndcg_at_{k}"]

    summary = run_study(study, objective, tuning, "recommendation", f"NDCG@{k}")
    best = {**ALS_DEFAULTS, **summary.best_params}
    model = fit_als(test, best, k, tuning.seed, threads, clock)
    baseline = popularity_recommender(test, k)
    scores = score_recommender(model, test, k)
    base = score_recommender(baseline, test, k)
    metrics = {f"test_{m}": v for m, v in scores.items()}
    metrics.update({f"test_popularity_{m}": v for m, v in base.items()})
    metrics[f"test_ndcg_at_{k}_vs_popularity"] = scores[f"ndcg_at_{k}"] / max(base[f"ndcg_at_{k}"], 1e-12)
    metrics.update(summary.as_metrics())
    ks = sorted({1, 3, 5, k})
    curves = {"ALS + rules": recall_curve(model, test, ks), "popularity": recall_curve(baseline, test, ks)}
    example_users = sorted(test.relevant())[:3] + ["unknown-customer"]
    example = pd.DataFrame({"customer_key": example_users})
    return TrainedModel(
        family="recommendation",
        models=[LoggedModel("model", model, "pyfunc", example, "predict", registered_model=config.registered_model)],
        params={**best, "k": k, "min_history": config.min_history},
        metrics=metrics,
        figures={"recall_at_k": plots.recall_at_k_figure(curves)},
        tables={"recall_at_k": pd.DataFrame(curves).rename_axis("k").reset_index()},
        info={"study": summary.history, "eligibility": {s: sorted(v) for s, v in (model.eligible or {}).items()}},
        training_frame=test.history,
        evaluation_set=EvaluationSet(
            pd.DataFrame(
                {
                    "customer_key": list(test.relevant()),
                    "segment": [None if test.segments is None else test.segments.get(u) for u in test.relevant()],
                    "relevant": [sorted(items) for items in test.relevant().values()],
                }
            ),
            "ranking",
            ["customer_key", "segment"],
            k=k,
            items=len(model.items),
        ),
        data_quality={
            "rows": float(len(test.history)),
            "positives": float(test.history["user"].nunique()),
            "columns": 2.0,
            "max_missing_share": float(test.history[["user", "item"]].isna().mean().max()),
            "max_missing_column": "",
        },
        evaluation=(model, test),
        fit_seconds=clock.seconds,
    )
