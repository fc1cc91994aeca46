"""Probability alive: the BG/NBD model (Fader, Hardie & Lee 2005), a baseline for non-contractual churn.

In a business where nobody closes an account, a customer's silence is ambiguous: gone, or
between purchases. BG/NBD reads it from three numbers per customer - repeat purchase
periods `x`, the last purchase's age since the first `t_x`, and the first's age at the
cutoff `T` - with purchases Poisson while alive (rates Gamma(r, alpha) across customers)
and a chance to drop out after each purchase (Beta(a, b)). It knows nothing else about
the customer, which is why it is the baseline a churn model with features must beat.

Checked against the paper's CDNOW estimates (r 0.243, alpha 4.414, a 0.793, b 2.426) in
the tests. Units are whatever `t_x` and `T` are given in (days here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln


class BGNBDFitError(ValueError):
    """The model cannot be fitted: no customer with history, or the optimiser did not converge."""


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters."""

    r: float
    alpha: float
    a: float
    b: float

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:  # noqa: N803 (the paper's T)
        """Probability each customer is still alive at the cutoff."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        ratio = np.log(self.a) - np.log(np.maximum(self.b + x - 1, 1e-12))
        ratio += (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        return np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(ratio, 700))), 1.0)

    def p_no_purchase(self, horizon: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:  # noqa: N803
        """Probability of no purchase within `horizon` after the cutoff: non-contractual churn.

        Dead customers never buy; a live one buys at rate lambda, whose posterior given the
        history is Gamma(r + x, alpha + T). Dropout happens only right after a purchase, so
        a window without purchases is one the customer was alive through or dead before.
        """
        x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
        alive = self.p_alive(x, t_x, T)
        silent = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + horizon)))
        return np.asarray(1.0 - alive + alive * silent)


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:  # noqa: N803
    """Each customer's log-likelihood under (r, alpha, a, b) (the paper's equation 6)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4))


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, penalizer: float = 0.0) -> BGNBD:  # noqa: N803
    """Maximum-likelihood parameters from customers' (x, t_x, T); customers with T <= 0 carry no information."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    keep = (T > 0) & np.isfinite(x) & np.isfinite(t_x) & np.isfinite(T)
    if not keep.any():
        raise BGNBDFitError("no customer has a purchase history before the cutoff")
    x, t_x, T = x[keep], t_x[keep], T[keep]
    t_x = np.minimum(t_x, T)
    scale = float(np.median(T)) or 1.0  # fit in units of the median age: the optimiser's scale is then ~1

    def objective(log_params: np.ndarray) -> float:
        params = np.exp(log_params)
        value = -float(np.mean(log_likelihood(params, x, t_x / scale, T / scale)))
        return value + penalizer * float(np.sum(params**2))

    best = minimize(
        objective, np.zeros(4), method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-9}
    )
    if not np.isfinite(best.fun):
        raise BGNBDFitError(f"BG/NBD did not converge: {best.message}")
    r, alpha, a, b = np.exp(best.x)
    return BGNBD(r=float(r), alpha=float(alpha * scale), a=float(a), b=float(b))


RFM_COLUMNS = ("rfm_repeat_days", "rfm_t_x_days", "rfm_age_days")  # the labels' BG/NBD inputs (non-contractual)


def bgnbd_baseline(
    train: pd.DataFrame, test: pd.DataFrame, y_test: np.ndarray, horizon_days: int
) -> tuple[dict[str, float], dict[str, float]] | None:
    """BG/NBD fitted on the training rows' histories, scored on the test rows as P(no purchase within the horizon).

    Returns (metrics prefixed `baseline_bgnbd_test_`, the fitted parameters), or None when the
    rows carry no purchase histories (contractual labels) or none can be fitted.
    """
    from models.evaluation import classification_metrics

    if not set(RFM_COLUMNS) <= set(train.columns) or len(np.unique(y_test)) < 2:
        return None

    def history(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, t_x, age = (pd.to_numeric(frame[c], errors="coerce").fillna(0).to_numpy(dtype=float) for c in RFM_COLUMNS)
        return x, t_x, age

    try:
        model = fit_bgnbd(*history(train))
    except BGNBDFitError:
        return None
    scores = model.p_no_purchase(float(horizon_days), *history(test))
    metrics = {f"baseline_bgnbd_test_{k}": v for k, v in classification_metrics(y_test, scores).items()
               if k in ("auc", "pr_auc", "brier", "log_loss")}  # fmt: skip
    return metrics, {"r": model.r, "alpha": model.alpha, "a": model.a, "b": model.b}
