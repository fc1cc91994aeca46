"""A retention policy measured against the generator's truth: how many customers its offers really keep.

The synthetic world knows each customer's true response to the retention offer
(`true_uplift`: churn probability without the offer minus with it). With the same number of
offers (the capacity), targeting is compared four ways, plus the policy's own choice:

- best: the customers with the largest true uplift (the best any policy can do);
- uplift: the largest predicted uplift (the uplift champion: persuadable customers);
- churn risk: the largest predicted churn risk (the churn champion: merely risky customers);
- random: any customers (its expectation, capacity x the mean true uplift);
- ceiling: the largest true uplift as predicted from the uplift model's own inputs by a regressor fitted
  to the truth itself (cross-fitted; `models.oracle.feature_ceiling`): the best these inputs allow, so a
  gap to `best` is read as the world's (what no feature carries) or the model's (what it leaves of the ceiling);
- policy: the customers the decision policy actually gave the offer (when known).

Customers retained = the sum of the true uplift of those targeted. Pure: arrays in, a table out.
Read by evaluation only, never by a model or a policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

UPLIFT_OVER_CHURN_TARGET = 1.5  # issue 21: uplift targeting keeps >= 1.5x the customers per offer of churn risk's
FRACTION_OF_BEST_TARGET = 0.5  # ... and reaches >= half of the best policy's value
STRATEGIES = ("best", "ceiling", "uplift", "churn_risk", "random", "policy")


class TruthError(ValueError):
    """The truth comparison cannot be made as asked; the message names the argument."""


@dataclass(frozen=True)
class Targeting:
    """One way of choosing whom to give the offer, and what it really achieves."""

    strategy: str
    offers: int
    retained: float  # sum of the true uplift of those targeted
    per_offer: float
    fraction_of_best: float


@dataclass
class TruthComparison:
    """The strategies side by side at one capacity, over the customers whose true response is known."""

    customers: int
    capacity: int
    rows: list[Targeting] = field(default_factory=list)

    def row(self, strategy: str) -> Targeting | None:
        """The strategy's row (None when it was not measured)."""
        return next((r for r in self.rows if r.strategy == strategy), None)

    @property
    def uplift_over_churn(self) -> float:
        """Customers kept per offer, uplift targeting over churn-risk targeting (target >= 1.5)."""
        up, churn = self.row("uplift"), self.row("churn_risk")
        if up is None or churn is None or churn.retained <= 0:
            return float("nan")
        return up.retained / churn.retained

    @property
    def uplift_fraction_of_ceiling(self) -> float:
        """Uplift targeting's customers kept as a fraction of the feature ceiling's (what its inputs allow)."""
        up, ceiling = self.row("uplift"), self.row("ceiling")
        if up is None or ceiling is None or ceiling.retained <= 0:
            return float("nan")
        return up.retained / ceiling.retained

    @property
    def uplift_fraction_of_best(self) -> float:
        """Uplift targeting's customers kept as a fraction of the best policy's (target >= 0.5)."""
        up = self.row("uplift")
        return float("nan") if up is None else up.fraction_of_best

    def table(self) -> pd.DataFrame:
        """One row per strategy: offers, retained, retained per offer, fraction of the best."""
        return pd.DataFrame([r.__dict__ for r in self.rows])

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow (`truth.<strategy>.<figure>`, the two ratios and whether they meet the targets)."""
        out: dict[str, float] = {"truth.customers": float(self.customers), "truth.capacity": float(self.capacity)}
        for r in self.rows:
            out[f"truth.{r.strategy}.retained"] = r.retained
            out[f"truth.{r.strategy}.retained_per_offer"] = r.per_offer
            out[f"truth.{r.strategy}.fraction_of_best"] = r.fraction_of_best
        out["truth.uplift_over_churn_risk"] = self.uplift_over_churn
        out["truth.uplift_fraction_of_best"] = self.uplift_fraction_of_best
        out["truth.uplift_fraction_of_ceiling"] = self.uplift_fraction_of_ceiling
        out["truth.uplift_over_churn_risk_met"] = float(self.uplift_over_churn >= UPLIFT_OVER_CHURN_TARGET)
        out["truth.uplift_fraction_of_best_met"] = float(self.uplift_fraction_of_best >= FRACTION_OF_BEST_TARGET)
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def summary(self) -> list[str]:
        """The comparison in words (CLI, card)."""
        lines = [f"{self.capacity:,} retention offers among {self.customers:,} customers whose true response is known"]
        for r in self.rows:
            lines.append(
                f"{r.strategy}: {r.retained:,.1f} customers retained ({r.per_offer:.4f} per offer, "
                f"{r.fraction_of_best:.2f} of the best)"
            )
        lines.append(
            f"uplift / churn-risk targeting: {self.uplift_over_churn:.2f}x (target >= {UPLIFT_OVER_CHURN_TARGET}); "
            f"uplift / best: {self.uplift_fraction_of_best:.2f} (target >= {FRACTION_OF_BEST_TARGET})"
        )
        if self.row("ceiling") is not None:
            lines.append(f"uplift / feature ceiling: {self.uplift_fraction_of_ceiling:.2f}")
        return lines


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` largest scores (ties: the earlier row first; a missing score (NaN) never before a known)."""
    values = np.asarray(scores, dtype=float)
    keyed = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((np.arange(values.size), -keyed))  # by score descending, then by position
    return order[: max(0, min(k, values.size))]


def _row(strategy: str, true_uplift: np.ndarray, chosen: np.ndarray, best: float) -> Targeting:
    offers = int(chosen.size)
    retained = float(true_uplift[chosen].sum())
    return Targeting(
        strategy, offers, retained, retained / offers if offers else float("nan"), _fraction(retained, best)
    )


def _fraction(retained: float, best: float) -> float:
    return retained / best if best > 0 else float("nan")


def compare_targeting(
    true_uplift: np.ndarray,
    *,
    predicted_uplift: np.ndarray | None,
    churn_risk: np.ndarray | None,
    capacity: int,
    policy_targets: np.ndarray | None = None,
    ceiling: np.ndarray | None = None,
) -> TruthComparison:
    """Customers retained by each strategy with `capacity` offers; arrays aligned over the same customers.

    `policy_targets` is a boolean mask of the customers the policy gave the offer (its own count
    of offers, at most the capacity); `ceiling` the feature ceiling's predicted uplift. A champion
    that is missing (None) leaves its row out.
    """
    truth = np.asarray(true_uplift, dtype=float)
    n = truth.size
    if capacity < 1:
        raise TruthError(f"capacity: must be at least 1, got {capacity}")
    if np.isnan(truth).any():
        raise TruthError("true_uplift: has missing values (leave customers without a true response out)")
    given = {"predicted_uplift": predicted_uplift, "churn_risk": churn_risk, "policy_targets": policy_targets,
             "ceiling": ceiling}  # fmt: skip
    for name, values in given.items():
        if values is not None and np.asarray(values).size != n:
            raise TruthError(f"{name}: {np.asarray(values).size} values for {n} customers")
    k = min(capacity, n)
    best_rows = top(truth, k)
    best = float(truth[best_rows].sum())
    rows = [_row("best", truth, best_rows, best)]
    if ceiling is not None:
        rows.append(_row("ceiling", truth, top(np.asarray(ceiling, dtype=float), k), best))
    if predicted_uplift is not None:
        rows.append(_row("uplift", truth, top(np.asarray(predicted_uplift, dtype=float), k), best))
    if churn_risk is not None:
        rows.append(_row("churn_risk", truth, top(np.asarray(churn_risk, dtype=float), k), best))
    random_retained = k * float(truth.mean()) if n else 0.0  # the expectation of a random draw: no seed to pick
    rows.append(Targeting("random", k, random_retained, random_retained / k if k else float("nan"),
                          _fraction(random_retained, best)))  # fmt: skip
    if policy_targets is not None:
        chosen = np.flatnonzero(np.asarray(policy_targets, dtype=bool))
        rows.append(_row("policy", truth, chosen, float(truth[top(truth, chosen.size)].sum())))
    return TruthComparison(customers=n, capacity=k, rows=rows)


def capacity_curve(
    true_uplift: np.ndarray,
    predicted_uplift: np.ndarray,
    churn_risk: np.ndarray,
    shares: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
) -> pd.DataFrame:
    """Uplift over churn-risk targeting, and uplift's fraction of the best, at several capacities (shares of n).

    Says whether a shortfall at the policy's capacity is the capacity's (the two rankings meet
    as the capacity grows) or the uplift model's (it ranks no better at any capacity).
    """
    n = np.asarray(true_uplift).size
    out = []
    for share in shares:
        k = max(1, int(round(share * n)))
        c = compare_targeting(true_uplift, predicted_uplift=predicted_uplift, churn_risk=churn_risk, capacity=k)
        out.append({"share": share, "capacity": k, "uplift_over_churn_risk": c.uplift_over_churn,
                    "uplift_fraction_of_best": c.uplift_fraction_of_best,
                    "churn_risk_fraction_of_best": c.row("churn_risk").fraction_of_best})  # type: ignore[union-attr]  # fmt: skip
    return pd.DataFrame(out)
