"""Recommendation: implicit-feedback ALS, business rules, and a popularity fallback.

Interactions before a cutoff train the factors; purchases in the horizon after it are
held out. Rules apply to every list, whatever produced it: never a product the
customer already holds, and only products their segment is eligible for (where the
catalogue's eligibility is not known, a product counts as eligible for a segment once
enough of that segment's customers have bought it). Customers with too little
history get the most popular eligible products instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
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

log = logging.getLogger("custintel.models")

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


class Recommender(PythonModel):
    """Top-k products per customer: a model's scores (or popularity), minus held and ineligible products.

    The rules and the popularity fallback are shared; a subclass says how it scores a known
    customer (`user_scores`). Serving calls `recommend` on whichever model won, and may change `k`.
    Input: a frame with `customer_key`, and optionally `segment` and `exclude` (items to
    leave out, comma-separated: e.g. what the online store says the customer holds now).
    Output: one row per recommendation: customer_key, rank, product_id, score, source
    (the model's name, 'als' or 'ease', or 'popularity').
    """

    source = "popularity"

    def __init__(
        self,
        items: Sequence[str],
        popularity: Mapping[str, float],
        held: Mapping[str, set[str]],
        segments: Mapping[str, str],
        eligible: Mapping[str, set[str]] | None,
        k: int,
    ) -> None:
        self.user_index: dict[str, int] = {}
        self.items = list(items)
        self.popularity = np.array([popularity.get(i, 0.0) for i in self.items], dtype="float64")
        self.held = {u: set(v) for u, v in held.items()}
        self.segments = dict(segments)
        self.eligible = None if eligible is None else {s: set(v) for s, v in eligible.items()}
        self.k = k

    def user_scores(self, user: str) -> np.ndarray | None:
        """Every item's score for a known customer; None for one the model has no history of."""
        return None

    def recommend(
        self, user: str, segment: str | None = None, exclude: set[str] | None = None
    ) -> list[tuple[str, float, str]]:
        """(product, score, source) for one customer, best first."""
        scores = self.user_scores(user)
        if scores is not None:
            source = self.source
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


class ALSRecommender(Recommender):
    """Implicit-feedback ALS: a customer's score for an item is their factors' dot product."""

    source = "als"

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
        super().__init__(items, popularity, held, segments, eligible, k)
        self.user_index = {u: i for i, u in enumerate(users)}
        self.user_factors = np.asarray(user_factors, dtype="float32")
        self.item_factors = np.asarray(item_factors, dtype="float32")

    def user_scores(self, user: str) -> np.ndarray | None:
        """The item factors times the customer's factors."""
        idx = self.user_index.get(user)
        return None if idx is None else self.item_factors @ self.user_factors[idx]


class EASERecommender(Recommender):
    """EASE (Steck 2019): a customer's scores are their history row times an item-item weight matrix.

    The weights `B` are the closed-form ridge regression of each item on all others with a
    zero diagonal (`ease_weights`), so an item never recommends itself.
    """

    source = "ease"

    def __init__(
        self,
        users: Sequence[str],
        items: Sequence[str],
        history: sp.csr_matrix,
        weights: np.ndarray,
        popularity: Mapping[str, float],
        held: Mapping[str, set[str]],
        segments: Mapping[str, str],
        eligible: Mapping[str, set[str]] | None,
        k: int,
    ) -> None:
        super().__init__(items, popularity, held, segments, eligible, k)
        self.user_index = {u: i for i, u in enumerate(users)}
        self.history = sp.csr_matrix(history, dtype="float32")
        self.weights = np.asarray(weights, dtype="float32")

    def user_scores(self, user: str) -> np.ndarray | None:
        """The customer's (binary) history times B."""
        idx = self.user_index.get(user)
        if idx is None:
            return None
        row = self.history[idx]
        return np.asarray(row.data @ self.weights[row.indices], dtype="float64")


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


def _user_item_matrix(data: Interactions) -> tuple[list[str], list[str], sp.csr_matrix]:
    """(users, items, users x items matrix of summed weights) of the history; items outside the catalogue dropped."""
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
    return users, items, matrix


def _rules(data: Interactions, items: Sequence[str]) -> dict[str, Any]:
    """The business rules' arguments every recommender shares: popularity, held items, segments, eligibility."""
    segments = {} if data.segments is None else {str(u): str(s) for u, s in data.segments.dropna().items()}
    return {
        "popularity": popularity_scores(data.history),
        "held": data.held(),
        "segments": segments,
        "eligible": learn_eligibility(data.history, data.segments, items),
    }


def fit_als(
    data: Interactions, params: Mapping[str, Any], k: int, seed: int, threads: int, clock: FitClock
) -> ALSRecommender:
    """ALS factors of the history's user x item confidence matrix, wrapped with the rules and fallback."""
    users, items, matrix = _user_item_matrix(data)
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
    return ALSRecommender(
        users, items, np.asarray(model.user_factors), np.asarray(model.item_factors), k=k, **_rules(data, items)
    )


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item weights from the Gram matrix X'X: B = I - P / diag(P), P = (X'X + lambda I)^-1, diag(B) = 0."""
    regularised = np.array(gram, dtype="float64")
    regularised[np.diag_indices_from(regularised)] += lam
    inverse = np.linalg.inv(regularised)
    weights = -inverse / np.diag(inverse)[np.newaxis, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def _ease_inputs(data: Interactions) -> tuple[list[str], list[str], sp.csr_matrix, np.ndarray]:
    """(users, items, binary history, Gram matrix): EASE reads implicit feedback as bought or not."""
    users, items, matrix = _user_item_matrix(data)
    binary = (matrix > 0).astype("float32").tocsr()
    gram = (binary.T @ binary).toarray().astype("float64")
    return users, items, binary, gram


def fit_ease(data: Interactions, lam: float, k: int, threads: int, clock: FitClock) -> EASERecommender:
    """EASE on the history (one matrix inverse of items x items), wrapped with the rules and fallback."""
    users, items, binary, gram = _ease_inputs(data)
    with clock.fitting(), threadpool_limits(threads, "blas"):
        weights = ease_weights(gram, lam)
    return EASERecommender(users, items, binary, weights, k=k, **_rules(data, items))


def tune_ease(
    data: Interactions, lambdas: Sequence[float], k: int, threads: int, clock: FitClock
) -> tuple[float, float, list[dict[str, float]]]:
    """(best lambda, its NDCG@k, every lambda tried) on the validation cutoff: one Gram matrix, one inverse per value.

    A plain grid, evenly spaced in log lambda: refining around the validation optimum only fits
    the validation holdout's noise (on MovieLens-100k four halvings of the bracket lost on test).
    """
    users, items, binary, gram = _ease_inputs(data)
    rules = _rules(data, items)
    tried: dict[float, float] = {}

    def score(lam: float) -> float:
        if lam not in tried:
            with clock.fitting(), threadpool_limits(threads, "blas"):
                weights = ease_weights(gram, lam)
            model = EASERecommender(users, items, binary, weights, k=k, **rules)
            tried[lam] = score_recommender(model, data, k)[f"ndcg_at_{k}"]
        return tried[lam]

    for lam in sorted(set(float(x) for x in lambdas)):
        score(lam)
    best = max(sorted(tried), key=lambda lam: tried[lam])
    return best, tried[best], [{"lambda": lam, f"ndcg_at_{k}": v} for lam, v in sorted(tried.items())]


def popularity_recommender(data: Interactions, k: int) -> Recommender:
    """The baseline: the same rules, popularity for everyone."""
    items = list(data.catalogue) or sorted(data.history["item"].astype(str).unique())
    return Recommender(items, k=k, **_rules(data, items))


def score_recommender(model: Recommender, data: Interactions, k: int) -> dict[str, float]:
    """Ranking metrics at k over users with held-out purchases."""
    relevant = data.relevant()
    lists = {u: [item for item, _, _ in model.recommend(u)][:k] for u in relevant}
    return ev.ranking_metrics(lists, relevant, k, len(model.items))


def recall_curve(model: Recommender, data: Interactions, ks: Sequence[int]) -> dict[int, float]:
    """recall@k for several k (one recommendation pass at the largest k)."""
    relevant = data.relevant()
    saved, model.k = model.k, max(ks)
    try:
        lists = {u: [item for item, _, _ in model.recommend(u)] for u in relevant}
    finally:
        model.k = saved
    return {k: ev.ranking_metrics(lists, relevant, k, len(model.items))[f"recall_at_{k}"] for k in ks}


@dataclass
class Candidate:
    """One recommender tried: its settings, its validation score, and its refit on the later history."""

    name: str  # als | ease | popularity
    params: dict[str, Any]
    valid_ndcg: float
    fit: Callable[[Interactions], Recommender]  # refit on the test cutoff's history with the chosen settings


def recommendation_candidates(
    valid: Interactions,
    config: RecommendationConfig,
    tuning: TuningConfig,
    study: optuna.Study,
    clock: FitClock,
    threads: int = 2,
) -> tuple[list[Candidate], dict[str, Any]]:
    """Each configured recommender tuned on the validation cutoff, and what was tried (or skipped, and why)."""
    k = config.k
    found: list[Candidate] = []
    info: dict[str, Any] = {}
    if "popularity" in config.candidates:
        base = score_recommender(popularity_recommender(valid, k), valid, k)[f"ndcg_at_{k}"]
        found.append(Candidate("popularity", {}, base, lambda data: popularity_recommender(data, k)))
    if "ease" in config.candidates:
        n_items = len(valid.catalogue) or int(valid.history["item"].nunique())
        if n_items > config.ease_max_items:
            note = (
                f"EASE skipped: {n_items:,} items is above recommendation.ease_max_items "
                f"({config.ease_max_items:,}; its items x items matrix would not fit in memory)"
            )
            log.warning("recommendation: %s", note)
            info["ease"] = {"skipped": note}
        else:
            lam, score, tried = tune_ease(valid, config.ease_lambdas, k, threads, clock)
            log.info("recommendation: EASE best lambda %g, validation NDCG@%d %.4f", lam, k, score)
            info["ease"] = {"lambda": lam, "tried": tried}
            found.append(Candidate("ease", {"ease_lambda": lam}, score,
                                   lambda data: fit_ease(data, lam, k, threads, clock)))  # fmt: skip
    if "als" in config.candidates:

        def objective(trial: optuna.Trial) -> float:
            params = {**ALS_DEFAULTS, **suggest(trial, config.search)}
            model = fit_als(valid, params, k, tuning.seed, threads, clock)
            return score_recommender(model, valid, k)[f"ndcg_at_{k}"]

        summary = run_study(study, objective, tuning, "recommendation", f"NDCG@{k}")
        best = {**ALS_DEFAULTS, **summary.best_params}
        info["als"] = {"study": summary.history, "metrics": summary.as_metrics()}
        found.append(Candidate("als", best, summary.best_value,
                               lambda data: fit_als(data, best, k, tuning.seed, threads, clock)))  # fmt: skip
    order: list[str] = list(config.candidates)
    return sorted(found, key=lambda c: order.index(c.name)), info


def train_recommendation(
    valid: Interactions,
    test: Interactions,
    config: RecommendationConfig,
    tuning: TuningConfig,
    study: optuna.Study,
    clock: FitClock,
    threads: int = 2,
) -> TrainedModel:
    """Tune each candidate (ALS, EASE, popularity) on the validation cutoff; refit the best on the later history.

    The choice is by validation NDCG@k only; every candidate is also refit and scored on test
    so the run shows what the others would have scored (metrics `valid_<name>_...`,
    `test_<name>_...` and the `candidates` table).
    """
    k = config.k
    if not valid.relevant() or not test.relevant():
        raise RecommendationDataError("no customer bought anything new after the validation or the test cutoff")
    candidates, tried = recommendation_candidates(valid, config, tuning, study, clock, threads)
    if not candidates:
        raise RecommendationDataError(
            f"no recommender left to train: recommendation.candidates is {config.candidates} and "
            f"{tried.get('ease', {}).get('skipped', 'none was trained')}; add popularity or als"
        )
    # The first of equal scores wins, in the configured order (by default popularity, EASE, ALS: the simpler).
    chosen = max(candidates, key=lambda c: c.valid_ndcg)
    log.info(
        "recommendation: chose %s (validation NDCG@%d %.4f; %s)", chosen.name, k, chosen.valid_ndcg,
        ", ".join(f"{c.name} {c.valid_ndcg:.4f}" for c in candidates),
    )  # fmt: skip
    fitted = {c.name: c.fit(test) for c in candidates}
    if "popularity" not in fitted:
        fitted["popularity"] = popularity_recommender(test, k)
    model, baseline = fitted[chosen.name], fitted["popularity"]
    test_scores = {name: score_recommender(m, test, k) for name, m in fitted.items()}
    scores, base = test_scores[chosen.name], test_scores["popularity"]
    metrics = {f"test_{m}": v for m, v in scores.items()}
    metrics.update({f"test_popularity_{m}": v for m, v in base.items()})
    metrics[f"test_ndcg_at_{k}_vs_popularity"] = scores[f"ndcg_at_{k}"] / max(base[f"ndcg_at_{k}"], 1e-12)
    metrics[f"valid_ndcg_at_{k}"] = chosen.valid_ndcg
    for c in candidates:
        metrics[f"valid_{c.name}_ndcg_at_{k}"] = c.valid_ndcg
        metrics.update({f"test_{c.name}_{m}": v for m, v in test_scores[c.name].items() if c.name != "popularity"})
    if "als" in tried:
        metrics.update(tried["als"]["metrics"])
    table = pd.DataFrame(
        [
            {
                "candidate": c.name,
                "chosen": c.name == chosen.name,
                f"valid_ndcg_at_{k}": c.valid_ndcg,
                **{f"test_{m}": v for m, v in test_scores[c.name].items()},
                "params": ", ".join(f"{p}={v}" for p, v in c.params.items()),
            }
            for c in candidates
        ]
    )
    ks = sorted({1, 3, 5, k})
    curves = {
        f"{chosen.name.upper()} + rules": recall_curve(model, test, ks),
        "popularity": recall_curve(baseline, test, ks),
    }
    example_users = sorted(test.relevant())[:3] + ["unknown-customer"]
    example = pd.DataFrame({"customer_key": example_users})
    return TrainedModel(
        family="recommendation",
        models=[LoggedModel("model", model, "pyfunc", example, "predict", registered_model=config.registered_model)],
        params={
            "recommender": chosen.name,
            **chosen.params,
            "candidates": ",".join(c.name for c in candidates),
            "k": k,
            "min_history": config.min_history,
        },  # fmt: skip
        metrics=metrics,
        figures={"recall_at_k": plots.recall_at_k_figure(curves)},
        tables={"recall_at_k": pd.DataFrame(curves).rename_axis("k").reset_index(), "candidates": table},
        info={
            "chosen": chosen.name,
            "candidates": table.to_dict("records"),
            **tried,
            "eligibility": {s: sorted(v) for s, v in (model.eligible or {}).items()},
        },
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
