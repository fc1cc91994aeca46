"""Scores of a model on held-out data: classification, calibration, ranking and uplift.

Plain functions of arrays; the same ones score a model and its oracle (the generator's
truth), so "fraction of the oracle" compares like with like.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


class EvaluationError(ValueError):
    """Held-out data cannot be scored (one class only, no rows, mismatched lengths)."""


def _arrays(y: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ya, pa = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if ya.shape != pa.shape:
        raise EvaluationError(f"{ya.size} labels but {pa.size} scores")
    if ya.size == 0:
        raise EvaluationError("no rows to score")
    if np.unique(ya).size < 2:
        raise EvaluationError(f"the held-out labels hold one class only ({ya[0]:g}); AUC is undefined")
    return ya, pa


def _weights(w: np.ndarray | None, n: int) -> np.ndarray:
    """Row weights (all 1 when None): rows kept by sampling stand for 1 / their sampling rate."""
    return np.ones(n) if w is None else np.asarray(w, dtype=float)


def lift_at(y: np.ndarray, p: np.ndarray, share: float = 0.1, weights: np.ndarray | None = None) -> float:
    """Positive rate among the top `share` of scores (by weight), over the overall positive rate."""
    ya, pa = _arrays(y, p)
    wa = _weights(weights, ya.size)
    order = np.argsort(-pa, kind="stable")
    top = order[: max(1, int(np.searchsorted(np.cumsum(wa[order]), share * wa.sum(), side="right")))]
    return float(np.average(ya[top], weights=wa[top]) / np.average(ya, weights=wa))


def classification_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """AUC, PR-AUC (average precision), Brier score, log loss and lift in the top decile.

    With `weights` (e.g. undoing negative sampling) every figure is the population's.
    """
    ya, pa = _arrays(y, p)
    wa = _weights(weights, ya.size)
    clipped = np.clip(pa, 1e-7, 1 - 1e-7)
    return {
        "auc": float(roc_auc_score(ya, pa, sample_weight=wa)),
        "pr_auc": float(average_precision_score(ya, pa, sample_weight=wa)),
        "brier": float(brier_score_loss(ya, clipped, sample_weight=wa)),
        "log_loss": float(log_loss(ya, clipped, sample_weight=wa)),
        "lift_top_decile": lift_at(ya, pa, 0.1, wa),
        "base_rate": float(np.average(ya, weights=wa)),
        "rows": float(ya.size),
    }


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Mean predicted against observed rate in equal-count bins of the score."""
    ya, pa = _arrays(y, p)
    wa = _weights(weights, ya.size)
    order = np.argsort(pa, kind="stable")
    groups = np.array_split(order, min(bins, ya.size))
    return pd.DataFrame(
        {
            "mean_predicted": [float(np.average(pa[g], weights=wa[g])) for g in groups],
            "observed_rate": [float(np.average(ya[g], weights=wa[g])) for g in groups],
            "rows": [int(g.size) for g in groups],
        }
    )


@dataclass(frozen=True)
class CalibrationInTheLarge:
    """Observed rate against mean prediction over a set of rows, and the noise of that comparison.

    `ratio` is observed / predicted (O/E: 1.3 means 30% more outcomes than predicted);
    `gap` is observed - predicted. Their standard errors are those of a model whose
    outcomes follow its predictions scaled by `factor` (1: a calibrated model): each row
    a Bernoulli draw with probability min(factor * p, 1). That null uses the predictions,
    known for every row, so it does not collapse when a small group happens to have no
    outcomes, and for equal predictions it is the binomial standard error.
    """

    rows: int
    observed: float
    predicted: float
    ratio: float
    gap: float
    se_gap: float
    se_ratio: float


def calibration_in_the_large(
    y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None, factor: float = 1.0
) -> CalibrationInTheLarge:
    """Observed rate, mean prediction, their ratio and difference, with standard errors under `factor`.

    With `weights` (rows standing for 1 / their sampling rate) every figure is the
    population's, and the noise grows with the weights' spread (sum w^2 over (sum w)^2).
    """
    ya, pa = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if ya.shape != pa.shape:
        raise EvaluationError(f"{ya.size} labels but {pa.size} scores")
    if ya.size == 0:
        raise EvaluationError("no rows to score")
    wa = _weights(weights, ya.size)
    total = float(wa.sum())
    observed, predicted = float((wa * ya).sum() / total), float((wa * pa).sum() / total)
    q = np.clip((factor if np.isfinite(factor) else 1.0) * pa, 0.0, 1.0)
    se_gap = float(np.sqrt((wa**2 * q * (1 - q)).sum()) / total)
    ratio = observed / predicted if predicted > 0 else float("nan")
    se_ratio = se_gap / predicted if predicted > 0 else float("nan")
    return CalibrationInTheLarge(int(ya.size), observed, predicted, ratio, observed - predicted, se_gap, se_ratio)


def gain_table(y: np.ndarray, p: np.ndarray, bins: int = 10, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Cumulative share of positives captured by the top deciles of the score, and the lift there."""
    ya, pa = _arrays(y, p)
    wa = _weights(weights, ya.size)
    order = np.argsort(-pa, kind="stable")
    captured = np.cumsum(ya[order] * wa[order]) / (ya * wa).sum()
    reach = np.cumsum(wa[order]) / wa.sum()
    rows = []
    for i in range(1, bins + 1):
        n = max(1, int(np.searchsorted(reach, i / bins - 1e-12, side="left")) + 1)
        n = min(n, ya.size)
        rows.append(
            {
                "top_share": i / bins,
                "positives_captured": float(captured[n - 1]),
                "lift": float(captured[n - 1] / reach[n - 1]),
            }
        )
    return pd.DataFrame(rows)


def capacity_threshold(scores: np.ndarray, capacity: int) -> float:
    """The score of the `capacity`-th highest customer: contact everyone at or above it.

    With fewer customers than the capacity, everyone is contacted (the lowest score).
    """
    s = np.sort(np.asarray(scores, dtype=float))[::-1]
    if s.size == 0:
        raise EvaluationError("no scores to set a threshold from")
    return float(s[min(capacity, s.size) - 1])


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """What contacting everyone at or above `threshold` would have done on held-out data."""
    ya, pa = _arrays(y, p)
    flagged = pa >= threshold
    hits = float(ya[flagged].sum())
    return {
        "flagged": float(flagged.sum()),
        "precision_at_threshold": hits / max(float(flagged.sum()), 1.0),
        "recall_at_threshold": hits / float(ya.sum()),
    }


def ranking_metrics(
    recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], k: int, catalogue_size: int
) -> dict[str, float]:
    """precision@k, recall@k and NDCG@k averaged over users with something relevant, and catalogue coverage.

    Coverage is the share of the catalogue that appears in anyone's top k.
    """
    users = [u for u, items in relevant.items() if items]
    if not users:
        raise EvaluationError("no user has a held-out interaction")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    shown: set[str] = set()
    for u in users:
        top = list(recommended.get(u, ()))[:k]
        shown.update(top)
        hits = np.array([item in relevant[u] for item in top], dtype=float)
        precision.append(hits.sum() / k)
        recall.append(hits.sum() / len(relevant[u]))
        ideal = discounts[: min(len(relevant[u]), k)].sum()
        ndcg.append(float((hits * discounts[: hits.size]).sum() / ideal))
    return {
        f"precision_at_{k}": float(np.mean(precision)),
        f"recall_at_{k}": float(np.mean(recall)),
        f"ndcg_at_{k}": float(np.mean(ndcg)),
        "coverage": len(shown) / max(catalogue_size, 1),
        "users_evaluated": float(len(users)),
    }


def _qini_gain(y: np.ndarray, treatment: np.ndarray, uplift: np.ndarray) -> np.ndarray:
    """Incremental positives from targeting the top 1..n rows by predicted uplift.

    (treated positives) - (control positives) x (treated / control counts) among the targeted.
    """
    ya, ua = np.asarray(y, dtype=float), np.asarray(uplift, dtype=float)
    ta = np.asarray(treatment, dtype=bool)
    if not (ya.size == ua.size == ta.size) or ya.size == 0:
        raise EvaluationError("outcome, treatment and uplift must be equally long and not empty")
    if ta.all() or not ta.any():
        raise EvaluationError("the uplift sample needs both treated and control rows")
    order = np.argsort(-ua, kind="stable")
    yt = np.cumsum(ya[order] * ta[order])
    yc = np.cumsum(ya[order] * ~ta[order])
    nt = np.cumsum(ta[order]).astype(float)
    nc = np.cumsum(~ta[order]).astype(float)
    return yt - yc * np.divide(nt, nc, out=np.zeros_like(nt), where=nc > 0)


def qini_table(y: np.ndarray, treatment: np.ndarray, uplift: np.ndarray, points: int = 50) -> pd.DataFrame:
    """The Qini curve at `points` shares of the population, with the random-targeting line."""
    gain = _qini_gain(y, treatment, uplift)
    idx = np.unique(np.linspace(0, gain.size - 1, points + 1).round().astype(int))
    return pd.DataFrame({"share": (idx + 1) / gain.size, "qini": gain[idx], "random": gain[-1] * (idx + 1) / gain.size})


def qini_coefficient(y: np.ndarray, treatment: np.ndarray, uplift: np.ndarray) -> float:
    """Mean gap between the Qini curve and the random line, per row of the population.

    Positive when the ranking puts the persuadable first; about 0 for a random ranking.
    """
    gain = _qini_gain(y, treatment, uplift)
    random = gain[-1] * np.arange(1, gain.size + 1) / gain.size
    return float((gain - random).mean() / gain.size)


def data_profile(
    frame: pd.DataFrame, features: Sequence[str], label: str | None, keys: Sequence[str] = ()
) -> dict[str, float | str]:
    """What the promotion gate checks of a training set: size, positives, the emptiest column, duplicates."""
    rows = len(frame)
    missing = frame[list(features)].isna().mean() if features and rows else pd.Series(dtype=float)
    profile: dict[str, float | str] = {
        "rows": float(rows),
        "columns": float(len(features)),
        "max_missing_share": float(missing.max()) if len(missing) else 0.0,
        "max_missing_column": str(missing.idxmax()) if len(missing) else "",
    }
    if label is not None and rows:
        y = frame[label].dropna().astype(float)
        profile.update(positives=float(y.sum()), label_rate=float(y.mean()) if len(y) else float("nan"))
    present = [k for k in keys if k in frame.columns]
    if present and rows:
        profile["duplicate_share"] = float(frame.duplicated(subset=present).mean())
    return profile
